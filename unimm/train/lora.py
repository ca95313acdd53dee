"""LoRA fine-tuning with peft: low-rank adapters on named parts, saved apart from the base model, merged on demand.

LoRA (Hu et al. 2021) keeps a linear layer's weight ``W`` (out, in) frozen and learns ``B @ A`` (``A``: (r, in),
``B``: (out, r), ``B`` starting at zero) so the layer computes ``W x + (alpha / r) B A x``. The adapters are
peft's: ``inject_adapter_in_model`` on each named part (a submodule), which swaps each target ``nn.Linear`` for a
peft layer holding it as ``base_layer``; the rest of unimm's module tree and its names stay as they are.

``train.lora`` (checked by :data:`~unimm.train.schema.LORA_SCHEMA`)::

    lora: {parts: [backbone, generator.head], r: 8, alpha: 16, dropout: 0.05,
           target_modules: null,   # null: q/k/v/o projections in a transformers part, else every Linear;
                                   # a list for every part, or {part: [names]} per part
           base_dtype: float32}    # bfloat16: train.init_from is loaded in bfloat16 (half the memory)

A module name matches a target when it is the target or ends with ``.target`` (peft's rule). In a LoRA run a stage
trains the adapters plus whatever its ``trainable`` names (``trainable: []`` for adapters only); a layer that has
an adapter never trains its base weight. Adapters, and whatever else trains, are float32 whatever the base's dtype.

The saved folder (:func:`save_adapters`) holds ``adapter_config.json`` (the base model's folder, each part's
settings, the names of fully trained tensors), ``adapter_model.safetensors`` (peft's adapter state dict of each
part, keys prefixed with the part path) and, when a stage trained whole tensors too, ``trained.safetensors``.
``unimm.load_pretrained(folder)`` loads the base and applies them (:func:`load_adapted`); :func:`merge_adapters`
folds them into the base weights (``unimm merge-lora SRC DST``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..registry import CheckpointError, ConfigError
from .freeze import _under, apply_stage, resolve

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINED_WEIGHTS = "trained.safetensors"
FORMAT = "unimm-lora"
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None,
                                 "base_dtype": "float32"}
#: The default targets in a part that holds a transformers model (Llama's names, also Qwen2's, Mistral's ...).
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def adaptable() -> tuple[type, ...]:
    """Layer types peft's LoRA adapts (transformers' GPT-2 ``Conv1D`` is a Linear with its weight transposed)."""
    from transformers.pytorch_utils import Conv1D

    return nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _holds_transformers_model(part: nn.Module) -> bool:
    from transformers import PreTrainedModel

    return any(isinstance(m, PreTrainedModel) for m in part.modules())


def linear_names(part: nn.Module) -> list[str]:
    """What ``target_modules`` can name in ``part``: the distinct last names of its Linear layers in a transformers
    model (``q_proj``, ...: one per kind of layer), else each Linear layer's path inside ``part`` (``layers.0``)."""
    paths = [name for name, m in part.named_modules() if isinstance(m, nn.Linear) and name]
    return sorted({p.rsplit(".", 1)[-1] for p in paths}) if _holds_transformers_model(part) else paths


def default_targets(part: nn.Module) -> list[str]:
    """q/k/v/o projections when ``part`` holds a transformers model that has them, else every Linear layer (by
    path: a last name such as ``0`` would also match a ``down.0`` elsewhere in the part)."""
    if _holds_transformers_model(part):
        found = [n for n in ATTENTION_PROJECTIONS if n in linear_names(part)]
        if found:
            return found
    return [name for name, m in part.named_modules() if isinstance(m, nn.Linear) and name]


def _part_targets(spec: Mapping[str, Any], path: str, part: nn.Module, where: str, error: type) -> list[str]:
    targets = spec.get("target_modules")
    if isinstance(targets, Mapping):
        targets = targets.get(path)
    targets = list(targets) if targets else default_targets(part)
    candidates = f"its Linear layers: {', '.join(linear_names(part)) or 'none'}"
    modules = [(n, m) for n, m in part.named_modules() if n]
    for target in targets:
        matched = [(n, m) for n, m in modules if _matches(n, target)]
        if not matched:
            raise error(f"{where}.target_modules: '{target}' matches no module in part '{path}'; {candidates}")
        for name, module in matched:  # peft would fail on these with a message that prints the whole module
            if not isinstance(module, adaptable()):
                raise error(f"{where}.target_modules: '{target}' matches '{path}.{name}', a "
                            f"{type(module).__name__}, which LoRA cannot adapt; {candidates}")
    if not targets:
        raise error(f"{where}: part '{path}' has no Linear layer to adapt; name another part")
    return targets


def add_adapters(model: nn.Module, spec: Mapping[str, Any], where: str = "train.lora",
                 error: type = ConfigError) -> dict[str, dict[str, Any]]:
    """Inject peft LoRA adapters into the parts ``spec["parts"]`` names; returns each part's settings.

    The settings (``r``, ``alpha``, ``dropout``, ``target_modules``) are also kept as ``model.lora_parts``, which
    :func:`save_adapters` writes. Raises ``error`` for an unknown part, overlapping parts, or a target that
    matches nothing (naming the part and its Linear layers).
    """
    from peft import LoraConfig
    from peft.functional import cast_adapter_dtype, inject_adapter_in_model

    spec = {**LORA_DEFAULTS, **spec}
    parts = list(spec.get("parts") or [])
    if not parts:
        raise error(f"{where}.parts: name the parts to adapt, e.g. [backbone, generator.head]")
    targets = spec.get("target_modules")
    if isinstance(targets, Mapping):
        for path in targets:
            if path not in parts:
                raise error(f"{where}.target_modules.{path}: not one of {where}.parts ({', '.join(parts)})")
    modules = {n for n, _ in model.named_modules()}
    settings: dict[str, dict[str, Any]] = {}
    for i, path in enumerate(parts):  # everything is checked before the first adapter goes in
        try:
            resolve(model, path, where=f"{where}.parts")
        except ConfigError as err:
            raise error(str(err)) from None
        if path not in modules:
            raise error(f"{where}.parts: '{path}' is a parameter, not a part; name the module that holds it")
        for other in parts[:i]:
            if _under(path, other) or _under(other, path):
                raise error(f"{where}.parts: '{path}' and '{other}' overlap; name only one of them")
        settings[path] = {"r": int(spec["r"]), "alpha": float(spec["alpha"]), "dropout": float(spec["dropout"]),
                          "target_modules": _part_targets(spec, path, model.get_submodule(path), where, error)}
    for path, part_settings in settings.items():
        part = model.get_submodule(path)
        config = LoraConfig(r=part_settings["r"], lora_alpha=part_settings["alpha"],
                            lora_dropout=part_settings["dropout"], target_modules=part_settings["target_modules"])
        inject_adapter_in_model(config, part)
        cast_adapter_dtype(part, "default", autocast_adapter_dtype=True)  # float32 adapters on a bfloat16 base
    model.lora_parts = {**getattr(model, "lora_parts", {}), **settings}
    return settings


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every peft LoRA layer in ``model``."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def _is_adapter(name: str) -> bool:
    return ".lora_" in name


def apply_lora_stage(model: nn.Module, stage: Mapping[str, Any]) -> list[str]:
    """:func:`~unimm.train.freeze.apply_stage` for a LoRA run: the adapters train, plus what ``trainable`` names
    (may be empty), never the base weight of an adapted layer. Returns the trainable parameter names."""
    if stage.get("trainable"):
        apply_stage(model, stage)
    else:
        model.requires_grad_(False)
    base = {f"{n}.base_layer." for n, _ in lora_layers(model)}
    names = []
    for name, param in model.named_parameters():
        train = _is_adapter(name) or (param.requires_grad and not any(name.startswith(b) for b in base))
        param.requires_grad_(train)
        if train:
            names.append(name)
            if param.dtype != torch.float32:  # a part of a bfloat16 base that a stage trains in full
                param.data = param.data.float()
    return names


def fully_trained(model: nn.Module, stages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of the whole tensors (not adapters) that any of ``stages`` trains: saved beside the adapters."""
    names: set[str] = set()
    for stage in stages:
        names.update(n for n in apply_lora_stage(model, stage) if not _is_adapter(n))
    return sorted(names)


def save_adapters(model: nn.Module, folder: str | Path, base_model: str | Path, trained: Sequence[str] = ()) -> Path:
    """Write the adapters of ``model`` (and the tensors named in ``trained``) with the base model's folder.

    Layout: ``adapter_config.json`` (``{"format", "base_model", "parts": {part: settings}, "trained": [...]}``),
    ``adapter_model.safetensors`` (``<part>.<peft key>``) and ``trained.safetensors`` when ``trained`` is not empty.
    """
    from peft.functional import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = getattr(model, "lora_parts", None)
    if not parts:
        raise ConfigError("save_adapters: the model has no LoRA adapters (add them with train.lora)")
    adapters = {f"{path}.{k}": v.detach().contiguous().cpu()
                for path in parts for k, v in get_peft_model_state_dict(model.get_submodule(path)).items()}
    save_file(adapters, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    params = dict(model.named_parameters())
    if trained:
        save_file({n: params[n].detach().contiguous().cpu() for n in trained}, str(folder / TRAINED_WEIGHTS),
                  metadata={"format": "pt"})
    record = {"format": FORMAT, "base_model": str(Path(base_model).resolve()), "parts": parts,
              "trained": list(trained)}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def load_adapted(folder: str | Path, **load_args: Any):
    """Load the base model named in ``folder/adapter_config.json`` and apply the adapters (and trained tensors).

    ``load_args`` go to :func:`unimm.load_pretrained` for the base. Returns its :class:`~unimm.pretrained.
    Pretrained` with the adapted model (in eval mode).

    Raises:
        CheckpointError: the base folder is gone, or the adapters name parts or layers the base lacks.
    """
    from peft.functional import set_peft_model_state_dict
    from safetensors.torch import load_file

    from ..pretrained import load_pretrained

    folder = Path(folder)
    where = f"{folder / ADAPTER_CONFIG}"
    try:
        record = json.loads((folder / ADAPTER_CONFIG).read_text())
        base, parts = Path(record["base_model"]), dict(record["parts"])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{where} is not a unimm LoRA adapter config ({err!r}); save it with "
                              "unimm.train.lora.save_adapters") from None
    if not base.is_dir():
        raise CheckpointError(f"{where}: the base model folder {base} is gone; put it back or set base_model "
                              "there to the folder the adapters were trained on")
    loaded = load_pretrained(base, **load_args)
    model = loaded.model
    for path, settings in parts.items():
        add_adapters(model, {"parts": [path], "r": settings["r"], "alpha": settings["alpha"], "dropout":
                             settings["dropout"], "target_modules": settings["target_modules"]},
                     where=f"{where} (base {base})", error=CheckpointError)
    state = load_file(str(folder / ADAPTER_WEIGHTS))
    for path in parts:
        own = {k[len(path) + 1:]: v for k, v in state.items() if k.startswith(path + ".")}
        result = set_peft_model_state_dict(model.get_submodule(path), own)
        if result.unexpected_keys:
            raise CheckpointError(f"{folder / ADAPTER_WEIGHTS}: adapter tensors the base model's part '{path}' "
                                  f"has no layer for: {', '.join(sorted(result.unexpected_keys)[:5])}")
    unclaimed = [k for k in state if not any(k.startswith(p + ".") for p in parts)]
    if unclaimed:
        raise CheckpointError(f"{folder / ADAPTER_WEIGHTS}: tensors of parts not in {where}: {unclaimed[:5]}")
    if record.get("trained"):
        result = model.load_state_dict(load_file(str(folder / TRAINED_WEIGHTS)), strict=False)
        if result.unexpected_keys:
            raise CheckpointError(f"{folder / TRAINED_WEIGHTS}: tensors the base model {base} lacks: "
                                  f"{', '.join(result.unexpected_keys[:5])}")
    model.eval()
    return loaded


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base weight (``W + (alpha / r) B A``) and put the plain layer back, so the
    model has its original module tree and state-dict names. In place; returns ``model``.

    Written here because peft's merge-and-unload lives on its ``PeftModel`` / ``LoraModel`` wrappers, which this
    module does not use; each layer's own ``merge`` and ``get_base_layer`` do the work.
    """
    for name, layer in lora_layers(model):
        layer.merge(safe_merge=True)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    model.lora_parts = {}
    return model


__all__ = ["ADAPTER_CONFIG", "add_adapters", "apply_lora_stage", "default_targets", "fully_trained",
           "linear_names", "load_adapted", "lora_layers", "merge_adapters", "save_adapters"]
