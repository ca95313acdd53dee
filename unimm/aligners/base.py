"""The contract every aligner meets: a projection from one part's width into another's.

An aligner sits between two parts (understanding encoder -> language model, code embedding -> language model). The
library reads only:

* ``in_dim`` / ``out_dim``: the widths, inferred from the neighbouring parts when built from a config;
* ``input_form``: ``"sequence"`` for one (B, N, in_dim) tensor, ``"pair"`` for the (high, low) pair a pair encoder
  (DeepSeek-VL's hybrid, ``output_form == "pair"``) gives. The unified model pairs encoders and aligners by it;
* ``fsdp_units()``: the submodules FSDP shards as one unit each (default: the aligner itself).

Shapes: (..., in_dim) -> (..., out_dim) (a pair aligner: ((B, N, in_dim), (B, N, in_dim)) -> (B, N, out_dim)).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from torch import nn


class Aligner(nn.Module):
    """Base class of aligners: set ``in_dim`` and ``out_dim``; pair aligners set ``input_form = "pair"``."""

    input_form: ClassVar[Literal["sequence", "pair"]] = "sequence"
    in_dim: int
    out_dim: int

    def fsdp_units(self) -> list[nn.Module]:
        """Submodules FSDP shards as one unit each (:mod:`unimm.train.sharding`): the aligner is one."""
        return [self]


__all__ = ["Aligner"]
