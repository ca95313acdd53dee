"""Reading and writing weights: released layouts (safetensors, .bin, sharded with an index) and strict loading.

``load_weights(folder)`` reads whichever layout the folder has; ``load_into(model, state_dict)`` loads strictly and,
when names or shapes disagree, raises one :class:`CheckpointError` that lists every missing, unexpected and
misshapen key (the first 20 of each, with counts), so a wrong converter or config is found in one run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..registry import CheckpointError, ConfigError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, memory-mapped: their bytes are read from the file (or the page cache) when first used
    and are never copied, so tensors that become a model's parameters as they are cost no memory of their own."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:  # a file in torch's legacy (pre-zip) format cannot be mapped: read it whole
        if "mmap" not in str(err):
            raise
        return torch.load(str(path), map_location="cpu", weights_only=True)


def load_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in ``folder``: ``model.safetensors``, ``pytorch_model.bin`` or their sharded
    forms with an ``*.index.json``.

    Raises:
        CheckpointError: no weight file, a shard listed in the index is missing, or a file cannot be read.
    """
    folder = Path(folder)
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".index.json"):
                index = json.loads(path.read_text())["weight_map"]
                state: dict[str, torch.Tensor] = {}
                for shard in sorted(set(index.values())):
                    shard_path = folder / shard
                    if not shard_path.is_file():
                        raise CheckpointError(f"{path} lists shard {shard}, which is not in {folder}")
                    state.update(_read_file(shard_path))
                missing = sorted(set(index) - set(state))
                if missing:
                    raise CheckpointError(f"{path} names {len(missing)} tensors that no shard holds: {missing[:10]}")
                return state
            return _read_file(path)
        except CheckpointError:
            raise
        except Exception as err:  # corrupt or truncated files
            raise CheckpointError(f"cannot read {path}: {err}") from err
    raise CheckpointError(f"no weights in {folder}: expected one of {', '.join(WEIGHT_FILES)}")


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
    return f"\n  {title} ({len(keys)}): {shown}"


def tied_aliases(model: nn.Module) -> set[str]:
    """State-dict keys that name a tensor an earlier key already names (a module shared by two parts, like the
    shared-VQ encoder's tokenizer tied to the generation path's): saved once, loaded through the first name."""
    return set(tied_sources(model))


def tied_sources(model: nn.Module) -> dict[str, str]:
    """Each tied alias (:func:`tied_aliases`) -> the first key naming the same tensor."""
    first: dict[int, str] = {}
    sources = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            sources[key] = first[id(tensor)]
        else:
            first[id(tensor)] = key
    return sources


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str = "checkpoint",
              ignore_missing: tuple[str, ...] = (), dtype: torch.dtype | None = None,
              device: str | torch.device | None = None, keep_dtype: tuple[str, ...] = ()) -> None:
    """Load ``state_dict`` into ``model`` strictly, with one error that lists every problem.

    A model with parameters on the meta device (built in :func:`unimm.checkpoint.skeleton.skeleton`) takes the
    checkpoint's tensors themselves as its parameters (``assign``), each moved to ``device`` and cast to ``dtype``
    (floating-point tensors; default: the parameter's own) one at a time, so a checkpoint already in that device
    and precision is used without a copy. Tied aliases are loaded once and tied again afterwards.

    Args:
        ignore_missing: key prefixes that may be absent (e.g. a VAE that lives in a separate folder). Tied
            aliases (:func:`tied_aliases`) may always be absent.
        dtype, device: for a meta-device model only (a built model keeps its own, as ``copy_`` does).
        keep_dtype: key prefixes that load in the dtype the part was built with, not ``dtype`` (the image
            autoencoders, which stay float32: :func:`unimm.devices.float32_prefixes`).

    Raises:
        CheckpointError: missing, unexpected or misshapen keys (all listed), or a meta-device tensor that the
            checkpoint leaves without a value.
    """
    expected = model.state_dict(keep_vars=True)
    aliases = tied_sources(model)
    missing = sorted(k for k in expected
                     if k not in state_dict and k not in aliases and not k.startswith(ignore_missing))
    unexpected = sorted(k for k in state_dict if k not in expected)
    misshapen = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state_dict if k in expected and state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or misshapen:
        message = f"{source} does not match the model:"
        if missing:
            message += _listing("missing keys", missing)
        if unexpected:
            message += _listing("unexpected keys", unexpected)
        if misshapen:
            message += _listing("shape mismatches", misshapen)
        raise CheckpointError(message + "\n  Check that the config matches the checkpoint's sizes.")
    if not any(p.is_meta for p in model.parameters()):
        model.load_state_dict(state_dict, strict=False)
        return
    _assign(model, state_dict, expected, aliases, dtype, device, source, keep_dtype)


def _assign(model: nn.Module, state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
            aliases: dict[str, str], dtype: torch.dtype | None, device: str | torch.device | None,
            source: str, keep_dtype: tuple[str, ...] = ()) -> None:
    """Make the checkpoint's tensors the model's parameters and buffers (checked by :func:`load_into`)."""
    state = {}
    for key, value in state_dict.items():
        if key in aliases:  # the first name's tensor is tied back in below
            continue
        target = expected[key]
        cast = dtype is not None and target.is_floating_point() and not key.startswith(keep_dtype)
        wanted = dtype if cast else target.dtype
        state[key] = value.to(device=device, dtype=wanted)
    model.load_state_dict(state, strict=False, assign=True)
    for alias, first in aliases.items():
        owner, _, name = alias.rpartition(".")
        setattr(model.get_submodule(owner), name, _tensor(model, first))
    empty = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if empty:
        raise CheckpointError(f"{source}: {len(empty)} tensor(s) of the model have no value after loading (e.g. "
                              f"{empty[0]}, a buffer made from weights while building?); load with "
                              "load_pretrained(..., lean=False)")


def _tensor(model: nn.Module, key: str) -> torch.Tensor:
    """The parameter or buffer a state-dict key names."""
    try:
        return model.get_parameter(key)
    except AttributeError:
        return model.get_buffer(key)


# -- part folders ------------------------------------------------------------------------------------------------
# A part trained on its own (a VQ tokenizer, a pre-trained understanding encoder) is saved as a folder with
# ``config.json`` (its sizes) and ``model.safetensors``; its config slot loads it with ``path: folder``.


def save_part(module: nn.Module, architecture: dict, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``config.json`` (``architecture`` plus ``extra`` notes) and ``model.safetensors`` into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**architecture, **(extra or {})}, indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
              str(folder / "model.safetensors"))
    return folder


def read_part_config(path: str | Path, given: dict, where: str, keys: tuple[str, ...] | list[str]) -> dict:
    """The sizes ``keys`` saved in ``path/config.json`` by :func:`save_part`, checked against the slot's own.

    Args:
        given: sizes written in the config slot; ``None`` means "not given". Any other value must equal the saved
            one, else the slot and the folder disagree about the architecture.
        where: the slot's config path, for messages (``model.und_encoder``).

    Raises:
        ConfigError: no ``config.json`` in ``path``, or a given size contradicts it.
    """
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ConfigError(
            f"{where}.path = {str(path)!r}: no config.json there; point it at a folder saved by this part's "
            "trainer, or remove 'path' and give the sizes"
        )
    saved = json.loads(config_file.read_text())
    clashes = [f"{k}={v!r} (saved: {saved.get(k)!r})" for k, v in given.items()
               if v is not None and (list(v) if isinstance(v, (list, tuple)) else v) != saved.get(k)]
    if clashes:
        raise ConfigError(f"{where}: {', '.join(clashes)} contradict {config_file}; drop them")
    return {k: saved[k] for k in keys if k in saved}
