"""What a loaded model is, as plain JSON-ready data: the demo's header and the API's ``GET /v1/model``.

:func:`describe_model` reads only the part contracts (slots of :class:`~unimm.model.UnifiedModel`, the generation
path's ``image_size`` / ``num_image_tokens`` / ``sample_options``) and the config's ``name`` and ``sample:``
defaults, so it works for any model unimm builds, including parts registered by plugins.
"""

from __future__ import annotations

from typing import Any

from ..build import count_parameters

SLOTS = ("und_encoder", "und_aligner", "backbone", "generator")


def describe_model(model, cfg) -> dict[str, Any]:
    """The model's name, parts, size, generation path and sampling options.

    Returns:
        ``{"name": str, "parameters": int, "parts": [{"slot", "type", "parameters"}...],
        "understanding_image_size": int, "generation_path": str | None, "image_size": int | None,
        "num_image_tokens": int | None, "sample_options": {name: {"type", "default", "min", "max", "optional",
        "help"}}}``; an option's ``default`` is the config's ``sample:`` value when it sets one, else the path's.
    """
    parts = [{"slot": slot, "type": type(part).__name__, "parameters": count_parameters(part)}
             for slot in SLOTS if (part := getattr(model, slot)) is not None]
    path = model.generator
    defaults = dict(cfg.get("sample") or {}) if cfg is not None else {}
    options = {}
    for name, option in (path.sample_options.items() if path is not None else ()):
        options[name] = {"type": option.type.__name__, "default": defaults.get(name, option.default),
                         "min": option.min, "max": option.max, "optional": option.optional, "help": option.help}
    return {
        "name": (cfg.get("name") if cfg is not None else None) or type(model).__name__,
        "parameters": count_parameters(model),
        "parts": parts,
        "understanding_image_size": model.und_encoder.image_size,
        "generation_path": type(path).__name__ if path is not None else None,
        "image_size": path.image_size if path is not None else None,
        "num_image_tokens": path.num_image_tokens if path is not None else None,
        "sample_options": options,
    }


def format_parameters(count: int) -> str:
    """``1234567`` -> ``"1.23 M"`` (B above a billion, K below a million)."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return str(count)
