"""Parts from outside unimm: your own modules and installed packages.

A part of your own is a class (or builder function) registered with a registry's decorator, e.g.
``@ALIGNERS.register("my_aligner")`` on a subclass of ``unimm.aligners.base.Aligner``, in a module of yours.
Importing that module registers it; unimm imports it for you in three ways, all through this file:

* ``imports: [my_parts]`` at the top of a config (or the override ``imports=[my_parts]``): imported when the
  config is loaded or built. ``save_pretrained`` keeps the list in ``config.yaml``, so ``load_pretrained``
  imports the same modules again.
* ``--import my_parts`` (repeatable) on every command that builds or loads a model; the command records the
  modules in the config it saves.
* an entry point in the group ``unimm.parts`` of an installed package (``[project.entry-points."unimm.parts"]``
  ``my_parts = "my_package.parts"``): loaded once, before the first registry lookup.

The folder you run from is importable (it is put on ``sys.path``, as ``python -m`` does), so a ``my_parts.py``
beside your configs needs no installing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError

ENTRY_POINT_GROUP = "unimm.parts"

_entry_points_loaded = False


def module_names(value: Any, *, where: str = "imports") -> list[str]:
    """The module names of an ``imports`` value (a list of strings; None means none).

    Raises:
        ConfigError: the value is not a list of non-empty strings.
    """
    if value is not None and not isinstance(value, (list, tuple, str)):
        from omegaconf import OmegaConf

        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where} must be a list of module names, e.g. imports=[my_parts], got {value!r}")
    return [v.strip() for v in value]


def import_modules(names: Any, *, where: str = "imports") -> list[str]:
    """Import each module of ``names`` (a list of dotted names), so that its registrations run.

    The current directory is put on ``sys.path`` first. Importing a module twice is harmless (Python keeps it);
    an exception raised by the module's own code other than an import error propagates unchanged, so a bug in
    a user's part shows its traceback.

    Returns:
        the names imported.

    Raises:
        ConfigError: a module (or a module it imports) cannot be found or imported, in one line.
    """
    names = module_names(names, where=where)
    if names:
        _current_directory_on_path()
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(
                f"{where}: cannot import {name!r} ({reason}); check the name and that its folder is on PYTHONPATH"
            ) from err
    return names


def import_config_modules(cfg: Any) -> list[str]:
    """Import the modules a config's top-level ``imports`` names (a DictConfig or a dict)."""
    return import_modules(cfg.get("imports") if hasattr(cfg, "get") else None, where="imports")


def record_imports(cfg: Any, names: Iterable[str]) -> None:
    """Add ``names`` (e.g. from ``--import``) to ``cfg.imports``, keeping order and dropping repeats, so a model
    saved from ``cfg`` imports them again when it is loaded."""
    names = list(names)
    if not names:
        return
    current = module_names(cfg.get("imports"), where="imports")
    cfg.imports = list(dict.fromkeys([*current, *names]))


def load_entry_points() -> None:
    """Load every entry point of the group ``unimm.parts`` once (later calls return at once).

    Raises:
        ConfigError: an entry point fails to load; the message names it and its distribution.
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # set first: a plugin that looks a part up while loading must not recurse
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as err:  # any failure in a third-party package: name the package, not a traceback
            dist = entry_point.dist.name if entry_point.dist is not None else "unknown distribution"
            reason = str(err).splitlines()[0] if str(err) else ""
            raise ConfigError(
                f"entry point '{entry_point.name} = {entry_point.value}' (group {ENTRY_POINT_GROUP}) of the "
                f"installed package '{dist}' failed to load ({type(err).__name__}: {reason}); fix or reinstall "
                f"'{dist}', or uninstall it (pip uninstall {dist})"
            ) from err


def _current_directory_on_path() -> None:
    """Put the working directory first on ``sys.path``, as ``python -m`` does (a console script does not)."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
