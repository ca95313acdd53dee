"""One registry per kind of part, and the config-driven builder that uses them.

A registry maps a short name (``siglip``, ``mlp_gelu``, ``vq``) to a builder: a class or a function whose
keyword arguments are the part's knobs. ``Registry.build(cfg, where=...)`` takes a mapping with a ``type`` key
and the builder's arguments, checks every key against the builder's signature *before* anything is built, and
reports mistakes with the config path, the closest valid name and the full list of choices::

    ENCODERS = Registry("understanding encoder")

    @ENCODERS.register("siglip")
    class SigLIPEncoder(nn.Module): ...

    ENCODERS.build({"type": "siglip", "variant": "siglip_large_patch16_384"}, where="model.und_encoder")

Built-in parts are declared lazily (:meth:`Registry.register_lazy`, ``"module:attribute"``): the registry knows
their names without importing them, and the first lookup of a name imports its module, whose ``@register`` fills
the entry. So importing one part (or the registry) does not pull in every part's dependencies.

Sizes that follow from a neighbouring part (an aligner's input width is the encoder's output width) are passed
as ``inferred=``: they fill in missing keys, and a config value that contradicts them fails with both numbers.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import typing
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from . import plugins
from .errors import ConfigError

#: True while :func:`unimm.checkpoint.skeleton.skeleton` builds a model with its parameters on the meta device.
#: :meth:`Registry.build` clears it while it builds a part that loads a folder of its own (a slot with one of
#: ``FOLDER_KEYS`` set), so that part gets its folder's weights, not a skeleton.
SKELETON: ContextVar[bool] = ContextVar("unimm_skeleton", default=False)
#: The slot keys that name a folder a part loads its weights from (``save_pretrained`` folds them away too).
FOLDER_KEYS = ("path", "pretrained")


def _closest(name: str, choices: list[str]) -> str:
    """:func:`~unimm.registry.errors.did_you_mean` with a looser cutoff: part and key names are short."""
    from .errors import did_you_mean

    return did_you_mean(name, choices, cutoff=0.5)


class Registry:
    """A named table of builders for one kind of part.

    Args:
        kind: what the registered parts are, used in error messages ("understanding encoder").
        contract: ``"module:Class"`` of the base class every built part must be an instance of (imported only
            when a part is built, so that importing the registries stays cheap).

    Builders receive two things besides the config's keys when they ask for them: ``where`` (the part's config
    path, for error messages) as a keyword-only parameter, and, for composite parts, a classmethod
    ``from_config(cls, kwargs, *, where)`` that builds the part's children through their own registries and hands
    the built modules to ``__init__``. Composite parts may also declare ``child_slots`` (key -> the registry of that
    child, so :meth:`check` checks nested slots before anything is built) and ``config_defaults`` (key -> the child
    config used when the slot leaves it out).
    """

    def __init__(self, kind: str, contract: str | None = None):
        self.kind = kind
        self.contract = contract
        self._builders: dict[str, Callable[..., Any]] = {}
        self._aliases: dict[str, str] = {}
        self._lazy: dict[str, str] = {}  # name -> "module:attribute", imported on first lookup

    # -- registration -------------------------------------------------------------------------------------
    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable:
        """Decorator that registers a class or builder function under ``name`` (and ``aliases``).

        Raises:
            ConfigError: the name or an alias is taken by another class (registering the same class again, as
                when its module is imported a second time, is fine).
        """

        def decorator(builder: Callable) -> Callable:
            self._claim_lazy_entry(name, aliases, builder)
            for key in (name, *aliases):
                taken = self._builders.get(self._aliases.get(key, key))
                if taken is not None and _definition(taken) != _definition(builder):
                    raise ConfigError(
                        f"{self.kind} '{key}' is registered twice: {_dotted(taken)} has it, so "
                        f"{_dotted(builder)} cannot take it; register yours under another name"
                    )
            # The same class again (its module imported under a second name, or reloaded): the newest wins.
            self._builders[name] = builder
            for alias in aliases:
                self._aliases[alias] = name
            return builder

        return decorator

    def register_lazy(self, name: str, target: str, *, aliases: tuple[str, ...] = ()) -> None:
        """Declare the part ``target`` (``"package.module:attribute"``) as ``name`` without importing it.

        The first :meth:`get` of ``name`` (or an alias) imports the module, whose own ``@register(name)`` fills
        the entry; that registration must come from the same module and give the same aliases.
        """
        module, _, attribute = target.partition(":")
        if not module or not attribute:
            raise ValueError(f"{self.kind} '{name}': a lazy target looks like 'module:attribute', not {target!r}")
        for key in (name, *aliases):  # not ``key in self``: that loads the entry points, whose parts import ours
            if key in self._builders or key in self._lazy or key in self._aliases:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
        self._lazy[name] = target
        for alias in aliases:
            self._aliases[alias] = name

    def load_all(self) -> None:
        """Import every lazily declared part (for listing them with their descriptions)."""
        for name in list(self._lazy):
            if name in self._lazy:  # one module may register several names
                self._load(name)

    def _claim_lazy_entry(self, name: str, aliases: tuple[str, ...], builder: Callable) -> None:
        """Before ``register(name, aliases)`` of ``builder``: drop the lazy entry it fills (same module, same aliases),
        so that it registers as usual; a lazily declared name or alias stays taken for any other registration."""
        announced = self._lazy.get(name)
        declared_aliases = {a for a, n in self._aliases.items() if n == name} if announced else set()
        if announced and builder.__module__ == announced.partition(":")[0] and set(aliases) == declared_aliases:
            del self._lazy[name]
            for alias in declared_aliases:
                del self._aliases[alias]
            return
        for key in (name, *aliases):
            if self._aliases.get(key, key) in self._lazy:
                raise ValueError(f"{self.kind} '{key}' is registered twice")

    def _load(self, name: str) -> None:
        """Import the module of lazy entry ``name`` and check that it registered ``name`` as announced."""
        target = self._lazy[name]
        module, _, attribute = target.partition(":")
        imported = importlib.import_module(module)
        if name in self._lazy or getattr(imported, attribute, None) is not self._builders.get(name):
            raise RuntimeError(f"{self.kind} '{name}': importing {module} did not register {target} as '{name}'")

    # -- lookup -------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Registered names, sorted (aliases not included; lazy entries included, not imported)."""
        plugins.load_entry_points()
        return sorted([*self._builders, *self._lazy])

    def __contains__(self, name: str) -> bool:
        plugins.load_entry_points()
        return name in self._builders or name in self._lazy or name in self._aliases

    def get(self, name: str, *, where: str = "") -> Callable[..., Any]:
        """The class (or builder function) registered as ``name``; never returns None. Subclass it to extend a part.

        Raises:
            ConfigError: naming ``where`` in the config, the closest registered name and all choices.
        """
        plugins.load_entry_points()  # installed packages' parts (group unimm.parts), once
        if not isinstance(name, str):
            raise ConfigError(f"{where or self.kind}.type must be a string naming a {self.kind}, got {name!r}")
        canonical = self._aliases.get(name, name)
        if canonical in self._lazy:
            self._load(canonical)
        if canonical not in self._builders:
            choices = self.names() + sorted(self._aliases)
            location = f"{where}.type" if where else "type"
            raise ConfigError(
                f"{location}: unknown {self.kind} '{name}'.{_closest(name, choices)} "
                f"Choices: {', '.join(self.names())}"
            )
        return self._builders[canonical]

    def describe(self, name: str) -> str:
        """First line of the registered builder's docstring."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.splitlines()[0] if doc else ""

    # -- building -----------------------------------------------------------------------------------------
    def build(
        self,
        cfg: Mapping[str, Any],
        *,
        where: str = "",
        inferred: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Any:
        """Build the part described by ``cfg`` (a mapping with ``type`` plus the builder's arguments).

        Args:
            cfg: ``{"type": name, **kwargs}``; an OmegaConf node is accepted and resolved.
            where: the config path of this slot, for error messages ("model.und_aligner").
            inferred: values that follow from neighbouring parts. They fill keys the config leaves out; a
                config value that differs raises. Keys the builder does not accept are ignored.
            context: built modules the library offers a composite part (the generation path's autoencoder, for
                an encoder that shares it): passed to ``from_config`` when it takes them, never config keys.

        Inside a skeleton build (:data:`SKELETON`), a part whose slot sets ``path`` or ``pretrained`` is built for
        real, children included, so that it holds its folder's weights.

        Raises:
            ConfigError: unknown type, unknown or misspelled keys, missing required keys, wrong value types,
                or a config value that contradicts an inferred one.
        """
        builder, kwargs = self._checked(cfg, where, inferred, require=True)
        if inspect.isclass(builder):  # a registered class is checked before anything is built
            self._check_contract(builder, cfg, where)
        from_config = getattr(builder, "from_config", None) if inspect.isclass(builder) else None
        if from_config is None and "where" in inspect.signature(builder).parameters:
            kwargs["where"] = where
        own_folder = SKELETON.get() and any(kwargs.get(key) is not None for key in FOLDER_KEYS)
        token = SKELETON.set(False) if own_folder else None  # built for real inside a skeleton build
        try:
            if from_config is not None:
                offered = inspect.signature(from_config).parameters
                extra = {k: v for k, v in (context or {}).items() if k in offered}
                part = from_config(kwargs, where=where, **extra)
            else:
                part = builder(**kwargs)
        finally:
            if token is not None:
                SKELETON.reset(token)
        self._check_contract(type(part), cfg, where)  # what a builder function returned
        part.config_path = where  # where the part sits in the config: save_pretrained folds parts back there
        return part

    def contract_class(self) -> type | None:
        """The base class of this kind of part (imported on first use), or None."""
        if self.contract is None:
            return None
        import importlib

        module, _, name = self.contract.partition(":")
        return getattr(importlib.import_module(module), name)

    def _check_contract(self, part_class: type, cfg: Any, where: str) -> None:
        """A part's class must subclass this kind's contract."""
        base = self.contract_class()
        if base is not None and not issubclass(part_class, base):
            name = to_plain(cfg).get("type")
            raise ConfigError(
                f"{where}.type: {self.kind} '{name}' is a {part_class.__name__}, which does not meet the "
                f"{self.kind} contract; make it a subclass of {base.__module__}.{base.__name__}"
            )

    def check(self, cfg: Mapping[str, Any], *, where: str = "") -> None:
        """Check ``cfg`` as :meth:`build` would (type name, unknown keys, value types) without building anything.

        Required keys are not checked here: values inferred from neighbouring parts may still fill them.

        Raises:
            ConfigError: as :meth:`build`.
        """
        builder, kwargs = self._checked(cfg, where, None, require=False)
        if inspect.isclass(builder):
            self._check_contract(builder, cfg, where)
        # Composite parts name the registries of their children (``child_slots``): check those slots too.
        for key, registry in getattr(builder, "child_slots", {}).items():
            if isinstance(kwargs.get(key), dict):
                registry.check(kwargs[key], where=f"{where}.{key}")

    def _checked(
        self, cfg: Any, where: str, inferred: Mapping[str, Any] | None, require: bool
    ) -> tuple[Callable[..., Any], dict[str, Any]]:
        """The builder and its keyword arguments for ``cfg``, after every check."""
        cfg = to_plain(cfg)
        if not isinstance(cfg, dict):
            raise ConfigError(f"{where or self.kind} must be a mapping with a 'type' key, got {cfg!r}")
        if "type" not in cfg:
            raise ConfigError(
                f"{where or self.kind}: missing 'type'. Choose a {self.kind}: {', '.join(self.names())}"
            )
        kwargs = dict(cfg)
        builder = self.get(kwargs.pop("type"), where=where)
        # A composite part may declare configs for children its config can leave out (JanusFlow's released ones).
        for key, default in getattr(builder, "config_defaults", {}).items():
            if kwargs.get(key) is None:
                kwargs[key] = default
        label = f"{self.kind} '{cfg['type']}'"
        return builder, checked_kwargs(builder, kwargs, where=where, label=label, inferred=inferred, require=require)


def checked_kwargs(
    builder: Callable[..., Any],
    kwargs: Mapping[str, Any],
    *,
    where: str,
    label: str,
    inferred: Mapping[str, Any] | None = None,
    require: bool = True,
) -> dict[str, Any]:
    """Check ``kwargs`` against ``builder``'s signature and fill in ``inferred`` values.

    Used by registries and by composite parts for children that are plain classes rather than registered parts
    (the hybrid encoder's towers, JanusFlow's U-ViT encoder and decoder).

    Args:
        builder: a class or function.
        kwargs: the config's keys for it.
        where: its config path, for messages.
        label: what it is, for messages ("understanding encoder 'siglip'").
        inferred: values that follow from neighbouring parts (fill missing keys; contradictions fail).
        require: also fail on missing required keys.

    Raises:
        ConfigError: unknown keys (with the closest valid one), contradictions, missing keys, wrong value types.
    """
    kwargs = dict(to_plain(kwargs))
    params = _parameters(builder)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in kwargs:
        if key not in params and not accepts_any:
            raise ConfigError(
                f"{where}.{key}: unknown key for {label}.{_closest(key, list(params))} "
                f"Valid keys: {', '.join(params) or '(none)'}"
            )
    for key, value in (inferred or {}).items():
        if key not in params and not accepts_any:
            continue
        if key in kwargs and kwargs[key] is not None and kwargs[key] != value:
            raise ConfigError(
                f"{where}.{key} = {kwargs[key]!r} contradicts the value {value!r} that follows from the "
                f"neighbouring parts; remove the key to infer it, or change the neighbouring part"
            )
        kwargs[key] = value
    for name, param in params.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if require and param.default is inspect.Parameter.empty and name not in kwargs:
            raise ConfigError(f"{where}.{name}: required by {label} but not given")
        if name in kwargs:
            _check_type(builder, name, kwargs[name], f"{where}.{name}")
    return kwargs


def build_child(
    builder: Callable[..., Any], kwargs: Mapping[str, Any] | None, *, where: str, label: str,
    inferred: Mapping[str, Any] | None = None,
) -> Any:
    """Build a plain (unregistered) child part from its config keys, checked as :func:`checked_kwargs` does; the
    child gets ``where`` when its signature takes it."""
    kwargs = checked_kwargs(builder, kwargs or {}, where=where, label=label, inferred=inferred)
    if "where" in inspect.signature(builder).parameters:
        kwargs["where"] = where
    part = builder(**kwargs)
    part.config_path = where
    return part


def _definition(builder: Callable) -> tuple[str, str]:
    """(source file or module, qualified name) of a builder: equal for one class imported under two module names."""
    module = sys.modules.get(getattr(builder, "__module__", ""))
    where = getattr(module, "__file__", None) or getattr(builder, "__module__", "?")
    return str(where), getattr(builder, "__qualname__", repr(builder))


def _dotted(builder: Callable) -> str:
    return f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', repr(builder))}"


def _parameters(builder: Callable) -> dict[str, inspect.Parameter]:
    """Keyword parameters of a class's ``__init__`` or of a function (``self`` and ``*args`` excluded)."""
    signature = inspect.signature(builder)
    return {
        name: p
        for name, p in signature.parameters.items()
        if name != "where"  # the library passes the config path; it is never a config key
        and (p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
             or p.kind is inspect.Parameter.VAR_KEYWORD)
    }


_SIMPLE_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,), list: (list, tuple), dict: (dict,)}


def _check_type(builder: Callable, name: str, value: Any, where: str) -> None:
    """Check ``value`` against the annotation of parameter ``name`` when it is a simple type (or Optional)."""
    try:
        hints = typing.get_type_hints(builder.__init__ if inspect.isclass(builder) else builder)
    except Exception:  # unresolvable forward references: skip the check rather than fail the build
        return
    hint = hints.get(name)
    if hint is None or value is None:
        return
    origin = typing.get_origin(hint)
    allowed: tuple[type, ...] = ()
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in typing.get_args(hint):
            allowed += _SIMPLE_TYPES.get(typing.get_origin(arg) or arg, ())
        if any((typing.get_origin(a) or a) not in _SIMPLE_TYPES and a is not type(None) for a in typing.get_args(hint)):
            return
    else:
        allowed = _SIMPLE_TYPES.get(origin or hint, ())
        if not allowed:
            return
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    else:
        ok = isinstance(value, allowed)
    if not ok:
        expected = " or ".join(sorted({t.__name__ for t in allowed}))
        raise ConfigError(f"{where}: expected {expected}, got {type(value).__name__} {value!r}")


def to_plain(cfg: Any) -> Any:
    """Turn an OmegaConf node (or anything else) into plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a hard dependency
        return cfg
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
