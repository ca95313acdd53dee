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

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
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
    seen: set[int] = set()
    aliases = set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            aliases.add(key)
        seen.add(id(tensor))
    return aliases


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str = "checkpoint",
              ignore_missing: tuple[str, ...] = ()) -> None:
    """Load ``state_dict`` into ``model`` strictly, with one error that lists every problem.

    Args:
        ignore_missing: key prefixes that may be absent (e.g. a VAE that lives in a separate folder). Tied
            aliases (:func:`tied_aliases`) may always be absent.
    """
    expected = model.state_dict()
    aliases = tied_aliases(model)
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
    model.load_state_dict(state_dict, strict=False, assign=any(p.is_meta for p in model.parameters()))


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
