"""MLP aligners: project one part's features into another part's width.

Janus uses ``mlp_gelu`` with depth 2 (Linear, GELU, Linear) both to bring SigLIP features into the LLM
(``aligner``) and to bring VQ code embeddings into the LLM (``gen_aligner``); JanusFlow uses single ``linear``
layers. ``identity`` is there for ablations where the widths already agree.

Shapes: (..., in_dim) -> (..., out_dim).
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import ALIGNERS, ConfigError
from .base import Aligner


class MLPAligner(Aligner):
    """Linear layers with GELU between them, kept in ``layers`` so released names load unchanged.

    Args:
        in_dim: input width (inferred from the part before it).
        out_dim: output width (inferred from the part after it).
        depth: number of Linear layers; 1 is a single Linear. The first maps in_dim -> out_dim, the rest
            out_dim -> out_dim, with GELU between consecutive layers.
        as_sequential: keep ``layers`` an ``nn.Sequential`` even for depth 1 (Janus's ``mlp_gelu`` does;
            its ``linear`` type stores a bare Linear).
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2, as_sequential: bool = True):
        super().__init__()
        if depth < 1:
            raise ConfigError(f"aligner depth must be at least 1, got {depth}")
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(1, depth):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.layers = nn.Sequential(*layers) if (as_sequential or depth > 1) else layers[0]
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        return self.layers(x)


@ALIGNERS.register("mlp_gelu")
def mlp_gelu(in_dim: int, out_dim: int, depth: int = 2) -> MLPAligner:
    """Linear, then (GELU, Linear) x (depth - 1): Janus's understanding and generation aligners."""
    return MLPAligner(in_dim, out_dim, depth)


@ALIGNERS.register("linear")
def linear(in_dim: int, out_dim: int) -> MLPAligner:
    """A single Linear layer (JanusFlow's aligners; Janus's ``linear`` projector type)."""
    return MLPAligner(in_dim, out_dim, depth=1, as_sequential=False)


class IdentityAligner(Aligner):
    """Passes features through; only valid when the widths agree."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        if in_dim != out_dim:
            raise ConfigError(
                f"identity aligner needs equal widths, but the input has {in_dim} and the output needs {out_dim}; "
                f"use type: linear or mlp_gelu"
            )
        self.in_dim = self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> the same tensor."""
        return x


ALIGNERS.register("identity")(IdentityAligner)
