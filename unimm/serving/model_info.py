"""What a loaded model is, as plain JSON-ready data: the API's ``GET /v1/model`` and the demo's header.

:func:`describe` reads only the part contracts (``unimm/*/base.py``): each slot's class and parameter count, the
generation path's image size and its declared :class:`~unimm.generation.base.SampleOption` s (type, default,
range, help), with the model config's ``sample:`` values as the defaults where it sets them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SLOTS = ("und_encoder", "und_aligner", "backbone", "generator")


def describe(model, processor, cfg=None, name: str | None = None) -> dict[str, Any]:
    """A JSON-ready description of ``model``.

    Args:
        model: a :class:`~unimm.model.UnifiedModel`.
        processor: its :class:`~unimm.processor.Processor` (the understanding image size).
        cfg: the resolved config (its ``name`` and ``sample:`` defaults), or None.
        name: the model's name; default the config's ``name``.

    Returns:
        ``{"name", "parameters", "device", "dtype", "parts": {slot: {"type", "parameters"}},
        "understanding": {"image_size"}, "generation": None or {"type", "image_size", "num_image_tokens",
        "options": {option: {"type", "default", "min", "max", "min_exclusive", "optional", "help"}}}}``.
    """
    parts = {}
    for slot in SLOTS:
        part = getattr(model, slot, None)
        if part is not None:
            parts[slot] = {"type": type(part).__name__, "parameters": _count(part)}
    backbone_weight = next(model.backbone.parameters())
    return {
        "name": name or _config_value(cfg, "name") or "unnamed",
        "parameters": _count(model),
        "device": str(backbone_weight.device),
        "dtype": str(backbone_weight.dtype).removeprefix("torch."),
        "parts": parts,
        "understanding": {"image_size": processor.image_size},
        "generation": generation_info(model, cfg),
    }


def generation_info(model, cfg=None) -> dict[str, Any] | None:
    """The generation path's ``type``, ``image_size``, ``num_image_tokens`` and sampling ``options``; None for an
    understanding-only model."""
    path = model.generator
    if path is None:
        return None
    defaults = _config_value(cfg, "sample") or {}
    options = {}
    for option, spec in path.sample_options.items():
        options[option] = {
            "type": spec.type.__name__, "default": defaults.get(option, spec.default), "min": spec.min,
            "max": spec.max, "min_exclusive": spec.min_exclusive, "optional": spec.optional, "help": spec.help,
        }
    return {"type": type(path).__name__, "image_size": path.image_size, "num_image_tokens": path.num_image_tokens,
            "options": options}


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _config_value(cfg, key: str) -> Any:
    """``cfg[key]`` as plain Python (omegaconf containers resolved), or None."""
    if cfg is None or key not in cfg:
        return None
    from omegaconf import OmegaConf

    value = cfg[key]
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def model_name(folder: str | Path | None, cfg=None) -> str:
    """The name to show: the config's ``name``, else the model folder's name."""
    return _config_value(cfg, "name") or (Path(folder).name if folder else "unnamed")
