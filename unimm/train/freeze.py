"""Which parts train in a stage: freeze everything, then unfreeze the part paths a stage names.

Part paths are attribute paths on the unified model (``und_aligner``, ``generator.head``, ``backbone``,
``und_start_embed``), so the recipes read like the papers:

=============================  ====================================================================
stage                          ``trainable``
=============================  ====================================================================
I   (adaptors and heads)       ``[und_aligner, generator.embed, generator.aligner, generator.head]``
II  (unified pre-training)     ``[und_aligner, backbone, generator]``
III (supervised fine-tuning)   ``[und_encoder, und_aligner, backbone, generator]``
=============================  ====================================================================

Submodules that a part's contract declares ``frozen_children`` (the generation path's autoencoder, the shared-VQ
encoder's tokenizer) stay frozen even under their parent unless a stage names them (or a part of them) itself;
``frozen: [...]`` freezes more paths inside trained ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..encoders.base import UnderstandingEncoder
from ..generation.base import GenerationPath
from ..registry import ConfigError


def always_frozen(model: nn.Module) -> list[str]:
    """Module paths that parts declare frozen unless named (``frozen_children`` of encoders and generation paths)."""
    return [f"{name}.{child}" if name else child
            for name, module in model.named_modules(remove_duplicate=False)
            if isinstance(module, (UnderstandingEncoder, GenerationPath))
            for child in module.frozen_children]


def _under(name: str, path: str) -> bool:
    return name == path or name.startswith(path + ".")


def part_paths(model: nn.Module, depth: int = 2) -> list[str]:
    """Module and parameter paths of ``model`` up to ``depth`` levels (what a stage may name)."""
    names = [n for n, _ in model.named_modules() if n and n.count(".") < depth]
    names += [n for n, _ in model.named_parameters() if n.count(".") < depth]
    return sorted(set(names))


def resolve(model: nn.Module, path: str, *, where: str = "trainable") -> str:
    """Check that ``path`` names a submodule or parameter of ``model``; raise a ConfigError naming the choices."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: part paths are strings like 'generator.head', got {path!r}")
    names = ({n for n, _ in model.named_modules(remove_duplicate=False)}
             | {n for n, _ in model.named_parameters(remove_duplicate=False)})
    if path in names:
        return path
    choices = part_paths(model)
    from ..registry.errors import did_you_mean

    hint = did_you_mean(path, choices)
    top = sorted({c for c in choices if "." not in c})
    raise ConfigError(
        f"{where}: the model has no part '{path}'.{hint} Parts: {', '.join(top)} "
        f"(and their children, e.g. {', '.join(c for c in choices if '.' in c)[:200]})"
    )


def _paths(stage_cfg: Mapping[str, Any], key: str) -> list[str]:
    value = stage_cfg.get(key) or []
    if isinstance(value, str):
        value = [value]
    return list(value)


def apply_stage(model: nn.Module, stage_cfg: Mapping[str, Any]) -> list[str]:
    """Set ``requires_grad`` for one stage and return the names of the trainable parameters.

    Args:
        model: the unified model (unwrapped).
        stage_cfg: a stage of ``train.stages`` with ``trainable`` (part paths) and optionally ``frozen``.

    Raises:
        ConfigError: for an unknown part path (with the closest name), or a stage that trains nothing.
    """
    name = stage_cfg.get("name", "stage")
    trainable = [resolve(model, p, where=f"train.stages[{name}].trainable") for p in _paths(stage_cfg, "trainable")]
    frozen = [resolve(model, p, where=f"train.stages[{name}].frozen") for p in _paths(stage_cfg, "frozen")]
    # Autoencoders stay frozen unless a stage names them (or something inside them) explicitly.
    for path in always_frozen(model):
        if not any(_under(t, path) for t in trainable):
            frozen.append(path)
    names = []
    for param_name, param in model.named_parameters():
        train = any(_under(param_name, p) for p in trainable) and not any(_under(param_name, p) for p in frozen)
        param.requires_grad_(train)
        if train:
            names.append(param_name)
    if not names:
        raise ConfigError(
            f"train.stages[{name}] trains no parameter (trainable: {trainable}, frozen: {frozen}); "
            f"name at least one part, e.g. 'und_aligner'"
        )
    return names


def frozen_parts_to_eval(model: nn.Module) -> list[str]:
    """Put every submodule without a trainable parameter in eval mode (no dropout, fixed norm statistics).

    Call after ``model.train()``. Returns the names of the top-most modules switched.
    """
    switched: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
            switched.append(prefix)
            return
        for child_name, child in module.named_children():
            visit(child, f"{prefix}.{child_name}" if prefix else child_name)

    for child_name, child in model.named_children():
        visit(child, child_name)
    return switched


from ..build import count_parameters  # noqa: E402  (defined once, in unimm.build; re-exported for old imports)

__all__: Sequence[str] = ["always_frozen", "apply_stage", "count_parameters", "frozen_parts_to_eval", "part_paths",
                          "resolve"]
