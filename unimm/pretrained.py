"""Load and save whole models: released deepseek-ai folders and unimm's own format.

unimm's format is a folder with ``config.yaml`` (the resolved config), ``model.safetensors`` (every weight, VAE
included) and the tokenizer files. ``load_pretrained`` also reads released Janus / Janus-Pro / JanusFlow folders
(``config.json`` of type ``multi_modality`` with ``model.safetensors``, ``pytorch_model.bin`` or sharded ``.bin``
files and an index), converting names with the tested converters in :mod:`unimm.checkpoint`, and folders in
transformers' own Janus layout (``model_type: "janus"``, :mod:`unimm.checkpoint.hf_janus`).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .build import build_model, build_processor
from .backbones.base import Backbone
from .checkpoint.io import load_into, load_weights, tied_aliases
from .checkpoint.skeleton import skeleton
from .encoders.base import UnderstandingEncoder
from .generation.autoencoder import ImageAutoencoder
from .checkpoint.released import config_from_released, convert_released, released_kind
from .config import apply_overrides, load_config, validate_sections
from .model import UnifiedModel
from .processor import Processor
from .registry import CheckpointError

#: The small Janus-style model trained on the shapes benchmark by ``unimm reproduce``, shipped in the package so
#: that ``unimm generate`` / ``unimm understand`` work with no download (README: its measured scores).
DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "models" / "shapes-janus"


@dataclass
class Pretrained:
    """A loaded model with what belongs to it: ``model``, ``processor`` and the resolved ``config``."""

    model: UnifiedModel
    processor: Processor
    config: DictConfig

    def __iter__(self):  # allows `model, processor, cfg = load_pretrained(path)`
        return iter((self.model, self.processor, self.config))


def folded_parts(model: UnifiedModel) -> list[tuple[str, torch.nn.Module, dict]]:
    """(module name, module, slot arguments) of every part loaded from a folder of its own (``path``: a diffusers
    VAE, a trained VQ tokenizer, a pre-trained encoder, a pretrained language model): what each part's contract
    method ``folded_config`` reports."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (UnderstandingEncoder, ImageAutoencoder, Backbone)):
            folded = module.folded_config()
            if folded is not None:
                found.append((name, module, folded))
    return found


def released_config(folder: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> DictConfig:
    """The unimm config for a released folder, with ``overrides`` applied."""
    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    cfg = apply_overrides(OmegaConf.create(config_from_released(raw, folder)), overrides)
    validate_sections(cfg)
    return cfg


def load_pretrained(
    path: str | Path, overrides: tuple[str, ...] | list[str] = (), device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto", lean: bool = True,
) -> Pretrained:
    """Load a model folder (released Janus / Janus-Pro / JanusFlow layout, transformers' Janus layout, or unimm's)
    with its processor. A folder of LoRA adapters (``adapter_config.json``, written by a ``train.lora`` run) loads
    its base model folder and applies the adapters (:mod:`unimm.train.lora`).

    The model is built as a skeleton (:mod:`unimm.checkpoint.skeleton`: parameters on the meta device, buffers
    real, parts with folders of their own loaded from them) and the checkpoint's memory-mapped tensors become its
    parameters, cast one at a time: no random initialisation and no second copy of the weights
    (docs/performance.md has the figures).

    Args:
        path: the folder.
        overrides: dotlist config overrides applied before building (``model.generator.image_size=256``).
        device: ``"auto"`` (cuda, else mps, else cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a
            ``torch.device``.
        dtype: ``"auto"`` (bfloat16 on a GPU that has it, float16 on mps, float32 on cpu), ``"bfloat16"``,
            ``"float16"``, ``"float32"`` or a ``torch.dtype``; the image autoencoder stays float32
            (:mod:`unimm.devices`).
        lean: False builds the model with random weights first and copies the checkpoint in (slower, twice the
            memory); for a part of your own whose ``__init__`` computes from its parameters.

    Raises:
        CheckpointError: not a model folder, unreadable weights, or keys that do not match (all listed).
        InputError: a device this machine does not have, or an unknown dtype (checked before anything is read).
    """
    from .devices import float32_prefixes, place, resolve_device, resolve_dtype

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"model folder not found: {folder}")
    if (folder / "adapter_config.json").is_file():  # LoRA adapters saved by a train.lora run: base + adapters
        from .train.lora import load_adapted

        return load_adapted(folder, overrides=overrides, device=device, dtype=dtype, lean=lean)
    num_tokens = None  # image tokens the folder's own processor writes (transformers' layout)
    if (folder / "config.yaml").is_file():
        cfg = load_config(folder / "config.yaml", overrides)
        state = load_weights(folder)
        source = f"unimm checkpoint {folder}"
    elif (folder / "config.json").is_file() and _model_type(folder) == "janus":
        cfg, state, num_tokens = _hf_janus_folder(folder, overrides)
        source = f"transformers Janus checkpoint {folder}"
    elif (folder / "config.json").is_file():
        kind = released_kind(json.loads((folder / "config.json").read_text()))
        cfg = released_config(folder, overrides)
        state = convert_released(load_weights(folder), kind)
        source = f"released {kind} checkpoint {folder}"
    else:
        raise CheckpointError(f"{folder} has neither config.yaml (unimm) nor config.json (released Janus layout)")
    with skeleton() if lean else nullcontext():
        model = build_model(cfg)
    # Outside the skeleton: a grown embedding table stays where the old one is (meta, or a part's real weights).
    processor = build_processor(cfg, model)
    if num_tokens is not None and processor.num_image_tokens != num_tokens:
        raise CheckpointError(f"{folder}/processor_config.json: num_image_tokens = {num_tokens}, but the vision "
                              f"config gives {processor.num_image_tokens} patch tokens per image")
    # Parts loaded from their own folder already hold their weights; a checkpoint may leave them out.
    external = tuple(f"{name}." for name, _, _ in folded_parts(model))
    for name, module in model.named_modules():
        if isinstance(module, UnderstandingEncoder):  # e.g. position embeddings saved at another image size
            state = module.adapt_checkpoint(state, f"{name}.")
    load_into(model, state, source=source, ignore_missing=external, dtype=dtype, device=device,
              keep_dtype=float32_prefixes(model))
    place(model, device, dtype).eval()  # buffers and folder parts; the loaded weights are there already
    return Pretrained(model, processor, cfg)


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as err:
        raise CheckpointError(f"{folder}/config.json is not a JSON object: {err}") from None


def _hf_janus_folder(folder: Path, overrides) -> tuple[DictConfig, dict, int]:
    """Config, unimm-named weights and ``num_image_tokens`` of a folder in transformers' Janus layout."""
    from .checkpoint.hf_janus import config_from_hf, from_hf, processor_from_hf

    model = config_from_hf(json.loads((folder / "config.json").read_text()))
    processor, images = processor_from_hf(folder)
    encoder = model["und_encoder"]
    if images["image_size"] != encoder["image_size"]:
        raise CheckpointError(f"{folder}: the image processor's size {images['image_size']} is not the vision "
                              f"config's image_size {encoder['image_size']}")
    encoder.update(pixel_mean=images["pixel_mean"], pixel_std=images["pixel_std"])
    num_tokens = images["num_image_tokens"]
    cfg = apply_overrides(OmegaConf.create({"name": folder.name, "model": model, "processor": processor}), overrides)
    validate_sections(cfg)
    return cfg, from_hf(load_weights(folder)), num_tokens


def without_run(cfg: DictConfig) -> DictConfig:
    """``cfg`` without its ``train:`` section: what a model folder made from a run's ``final/`` keeps (``unimm
    convert``, ``unimm merge-lora``). That section is the run's recipe, with its data and output paths on the
    machine that trained it; a model needs only ``name``, ``model``, ``processor``, ``sample`` and ``imports``."""
    return OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "train"})


def save_pretrained(model: UnifiedModel, processor: Processor, cfg: DictConfig, path: str | Path,
                    state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` in unimm's format: ``config.yaml``, ``model.safetensors`` and the tokenizer files.

    A part loaded from a folder of its own (``path``: a diffusers VAE, a trained VQ tokenizer, a pre-trained
    encoder) is saved with the rest, so the folder no longer depends on that one; its architecture is written into
    the config instead of the path. The same holds for a backbone loaded from a transformers folder
    (``pretrained:``). Each such part says what to write through its contract's ``folded_config()``. A module
    shared by two parts (tied weights) is written once, under its first name. ``state_dict`` replaces
    ``model.state_dict()`` for a model whose weights are elsewhere (gathered from FSDP shards).
    """
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for _, part, folded in folded_parts(model):
        slot = OmegaConf.select(cfg, part.config_path)
        if slot is not None:
            for key in ("path", "pretrained"):  # the folder the part came from is no longer needed
                if key in slot:
                    slot[key] = None
            slot.update(folded)
    cfg.processor = {**OmegaConf.to_container(cfg.get("processor") or {}), **processor.settings(), "tokenizer": "."}
    processor.tokenizer.save_pretrained(str(folder))
    aliases = tied_aliases(model)  # a shared module is saved once, under its first name
    state = state_dict if state_dict is not None else model.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in state.items() if k not in aliases}
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "model.safetensors")
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return folder

