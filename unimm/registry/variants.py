"""Sizes of a part named by a released variant, explicit sizes, or both (explicit values win)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ConfigError


def resolve_sizes(
    explicit: Mapping[str, Any],
    variant: str | None,
    variants: Mapping[str, Mapping[str, Any]],
    *,
    family: str,
    where: str,
    defaults: Mapping[str, Any] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Merge a released variant's sizes with explicit ones and check that every size is known.

    Args:
        explicit: every size the part takes, None where the config leaves it out.
        variant: a name from ``variants`` (or an alias), or None to give every size explicitly.
        family: what the part is, for messages ("SigLIP").
        where: the config path of the part ("model.und_encoder").
        defaults: values for sizes that neither the variant nor the config gives.

    Raises:
        ConfigError: an unknown variant (with the choices), or sizes still unknown (naming them).
    """
    sizes = dict(explicit)
    if variant is not None:
        name = (aliases or {}).get(variant, variant)
        if name not in variants:
            raise ConfigError(
                f"{where}.variant: unknown {family} variant '{variant}'. "
                f"Choices: {', '.join(variants)}, or variant: null with explicit sizes"
            )
        sizes = {**sizes, **{k: v for k, v in variants[name].items() if sizes.get(k) is None}}
    for key, value in (defaults or {}).items():
        if sizes.get(key) is None:
            sizes[key] = value
    missing = [k for k, v in sizes.items() if v is None]
    if missing:
        raise ConfigError(
            f"{where}: {family} needs {', '.join(missing)}; give them or set variant to one of {', '.join(variants)}"
        )
    return sizes
