"""Lazy package attributes, so that ``import unimm`` (or one of its packages) imports no torch until it is used.

A package lists what it exports and the submodule each name lives in; the first access imports that submodule::

    __getattr__, __dir__ = lazy_exports(__name__, {"SigLIPEncoder": ".siglip", "PadToSquare": ".transforms"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package``: ``name -> ".submodule"`` (relative)."""
    table = dict(exports)

    def __getattr__(name: str) -> object:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(table[name], package), name)

    def __dir__() -> list[str]:
        return sorted(set(table) | set(vars(importlib.import_module(package))))

    return __getattr__, __dir__
