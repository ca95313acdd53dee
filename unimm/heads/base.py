"""The contract every output head meets: LLM hidden states -> logits over a vocabulary of image codes.

The generation path reads only ``hidden_size``, ``codebook_size`` and ``forward``:
(..., hidden_size) -> (..., codebook_size). Sharded training reads ``fsdp_units()`` (default: the head itself).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class ImageHead(nn.Module, ABC):
    """Base class of image-token heads."""

    @property
    @abstractmethod
    def hidden_size(self) -> int:
        """Width of the hidden states read."""

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """Number of logits per position."""

    @abstractmethod
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., hidden_size) -> (..., codebook_size)."""

    def fsdp_units(self) -> list[nn.Module]:
        """Submodules FSDP shards as one unit each (:mod:`unimm.train.sharding`): the head is one."""
        return [self]


__all__ = ["ImageHead"]
