"""The image-token head of Janus / Janus-Pro: LLM hidden states -> logits over the VQ codebook.

Janus (Wu et al., "Janus: Decoupling Visual Encoding for Unified Multimodal Understanding and Generation", 2024)
predicts image tokens with a separate head instead of the language-model head: a two-layer MLP with GELU from
the LLM width to the codebook size. The attribute names are the released ones (``gen_head.output_mlp_projector``,
``gen_head.vision_head``), so a released ``gen_head.*`` state dict loads with the prefix removed and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import HEADS
from .base import ImageHead


@HEADS.register("vq_image_head")
class VQImageHead(ImageHead):
    """Janus image-token head: Linear(hidden, embed) -> GELU -> Linear(embed, codebook_size).

    Args:
        hidden_size: LLM width (inferred from the backbone when built from a config).
        codebook_size: number of VQ codes (inferred from the tokenizer when built from a config).
        embed_dim: width of the hidden layer; defaults to ``hidden_size`` (as in every released model).

    Shapes: (..., hidden_size) -> (..., codebook_size).
    """

    def __init__(self, hidden_size: int, codebook_size: int, embed_dim: int | None = None):
        super().__init__()
        embed_dim = hidden_size if embed_dim is None else embed_dim
        self.output_mlp_projector = nn.Linear(hidden_size, embed_dim)
        self.vision_activation = nn.GELU()
        self.vision_head = nn.Linear(embed_dim, codebook_size)

    @property
    def hidden_size(self) -> int:
        return self.output_mlp_projector.in_features

    @property
    def codebook_size(self) -> int:
        return self.vision_head.out_features

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.vision_head(self.vision_activation(self.output_mlp_projector(hidden_states)))

