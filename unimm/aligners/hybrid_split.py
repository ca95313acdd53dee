"""DeepSeek-VL's ``low_high_hybrid_split_mlp_gelu`` aligner: fuse the hybrid encoder's two token sequences.

Lu et al., "DeepSeek-VL: Towards Real-World Vision-Language Understanding" (2024), section 2.1. The high-resolution
(SAM) and low-resolution (SigLIP) tokens are each projected to half the language model's width
(``high_up_proj``, ``low_up_proj``), concatenated along the channels, then passed through (GELU, Linear) repeated
``depth - 1`` times (``layers``; the released model has depth 2, so ``layers.1`` is its only Linear).

Shapes: ``forward((high, low))`` two (B, N, in_dim) -> (B, N, out_dim).
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import ALIGNERS, CheckpointError, ConfigError, InputError
from .base import Aligner


# ---------------------------------------------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------------------------------------------
@ALIGNERS.register("low_high_hybrid_split_mlp_gelu")
class HybridSplitAligner(Aligner):
    """Project high and low tokens to ``out_dim // 2`` each, concatenate, then (GELU, Linear) x (depth - 1).

    Args:
        in_dim: width of each input sequence (the hybrid encoder's ``out_dim``).
        out_dim: output width (the language model's hidden size); must be even.
        depth: 1 + the number of (GELU, Linear) pairs after the concatenation (released 2).

    Input: a tuple ``(high, low)`` of (B, N, in_dim). Output: (B, N, out_dim).
    """

    input_form = "pair"

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2):
        super().__init__()
        if out_dim % 2:
            raise ConfigError(
                f"model.und_aligner.out_dim {out_dim} must be even: the high and low halves are out_dim // 2 each"
            )
        if depth < 1:
            raise ConfigError(f"model.und_aligner.depth {depth} must be at least 1")
        self.in_dim, self.out_dim, self.depth = in_dim, out_dim, depth
        self.high_up_proj = nn.Linear(in_dim, out_dim // 2)
        self.low_up_proj = nn.Linear(in_dim, out_dim // 2)
        modules: list[nn.Module] = []
        for _ in range(depth - 1):
            modules += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.layers = nn.Sequential(*modules)

    def forward(self, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(high (B, N, in_dim), low (B, N, in_dim)) -> (B, N, out_dim)."""
        if not isinstance(features, (tuple, list)) or len(features) != 2:
            raise InputError(
                "the hybrid split aligner takes the pair (high, low) that the sam_siglip encoder returns, got "
                f"{type(features).__name__}; use an mlp aligner for a single feature tensor"
            )
        high, low = features
        if high.shape[:-1] != low.shape[:-1]:
            raise InputError(
                f"high and low features must have the same batch and token count, got {tuple(high.shape)} and "
                f"{tuple(low.shape)}"
            )
        x = torch.cat([self.high_up_proj(high), self.low_up_proj(low)], dim=-1)
        return self.layers(x)


# ---------------------------------------------------------------------------------------------------------------
# converter
# ---------------------------------------------------------------------------------------------------------------
def convert_hybrid_split_aligner(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released ``aligner.*`` names, minus the ``aligner.`` prefix -> :class:`HybridSplitAligner` names.

    The names are the same (``high_up_proj``, ``low_up_proj``, ``layers.<i>``); this checks that nothing else is
    there.

    Raises:
        CheckpointError: listing every key that is not a hybrid split aligner key.
    """
    unexpected = [k for k in state_dict if not k.startswith(("high_up_proj.", "low_up_proj.", "layers."))]
    if unexpected:
        raise CheckpointError(
            "not low_high_hybrid_split_mlp_gelu aligner keys (expected high_up_proj., low_up_proj. or layers., with "
            f"the 'aligner.' prefix removed): {', '.join(sorted(unexpected))}"
        )
    return dict(state_dict)


def from_released_params(params: dict) -> dict:
    """Map a released DeepSeek-VL ``aligner_config.params`` dict to :class:`HybridSplitAligner` kwargs."""
    kind = params.get("projector_type", "low_high_hybrid_split_mlp_gelu")
    if kind != "low_high_hybrid_split_mlp_gelu":
        raise CheckpointError(f"aligner projector_type '{kind}' is not low_high_hybrid_split_mlp_gelu")
    return dict(in_dim=int(params["input_dim"]), out_dim=int(params["n_embed"]), depth=int(params.get("depth", 1)))
