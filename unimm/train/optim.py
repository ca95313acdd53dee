"""AdamW with per-part learning rates, and the warm-up + cosine / constant schedule.

Janus trains its adaptors at a higher rate than the pre-trained LLM; a stage says so with ``lr_scale``::

    lr: 1.0e-4
    lr_scale: {backbone: 0.1}        # the backbone learns at 1e-5, the rest at 1e-4
    weight_decay: 0.0

Parameter groups are formed per (scale, decay): 1-D parameters (biases, norm gains) get no weight decay. The
schedule multiplies every group's rate by the same factor: linear warm-up from 0 over ``warmup_steps``, then
``constant``, or ``cosine`` decay to ``min_lr_ratio`` at ``steps``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..registry import ConfigError
from .freeze import _under, resolve

SCHEDULES = ("constant", "cosine")


def param_groups(
    model: nn.Module, lr: float, weight_decay: float = 0.0, lr_scale: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Trainable parameters of ``model`` split into AdamW groups by learning-rate scale and weight decay.

    The longest path in ``lr_scale`` that contains a parameter sets its scale (default 1). Each group carries
    ``lr``, ``weight_decay``, ``lr_scale`` and ``names`` (for logging and tests).
    """
    scales = dict(lr_scale or {})
    for path, value in scales.items():
        resolve(model, path, where="lr_scale")
        if not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"lr_scale.{path} must be a number >= 0, got {value!r}")
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        matching = [p for p in scales if _under(name, p)]
        scale = float(scales[max(matching, key=len)]) if matching else 1.0
        decay = 0.0 if param.ndim <= 1 else float(weight_decay)
        group = groups.setdefault(
            (scale, decay), {"params": [], "names": [], "lr": lr * scale, "weight_decay": decay, "lr_scale": scale}
        )
        group["params"].append(param)
        group["names"].append(name)
    if not groups:
        raise ConfigError("no trainable parameters: apply a stage before building the optimiser")
    return list(groups.values())


def build_optimizer(model: nn.Module, stage: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (stage keys ``lr``, ``lr_scale``, ``betas``, ``eps``, ``weight_decay``)."""
    lr = float(stage["lr"])
    groups = param_groups(model, lr, float(stage.get("weight_decay", 0.0)), stage.get("lr_scale"))
    betas = tuple(float(b) for b in stage.get("betas", (0.9, 0.95)))
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=float(stage.get("eps", 1e-8)))


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "constant",
              min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base rate after ``step`` optimiser steps."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, stage: Mapping[str, Any]) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with :func:`lr_factor` for the stage's ``steps``, ``warmup_steps``, ``schedule``, ``min_lr_ratio``."""
    total = int(stage["steps"])
    warmup = int(stage.get("warmup_steps", 0))
    schedule = str(stage.get("schedule", "constant"))
    floor = float(stage.get("min_lr_ratio", 0.0))
    lr_factor(0, total, warmup, schedule, floor)  # validate now
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, schedule, floor))


# -- the single-part trainers (unimm.train.autoencoder, unimm.train.encoder) --------------------------------------


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5% of ``steps``, multiplied by a cosine decay to 0 over all ``steps``."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def shuffled_batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """``steps`` batches of indices into ``range(n)``: each pass over the data is a new permutation (seeded), and a
    pass ends when fewer than ``batch_size`` unseen indices are left."""
    generator = torch.Generator().manual_seed(seed)
    order, cursor = torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(n, generator=generator), 0
        yield order[cursor:cursor + batch_size]
        cursor += batch_size
