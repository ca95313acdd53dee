"""The backbone contract: the protocol the unified model and the generation paths use to drive a causal LM.

A backbone is the language model that reads the interleaved sequence. Everything in unimm talks to it through
these members only, so any causal LM that provides them can stand in (:class:`~unimm.backbones.causal_lm.
CausalLMBackbone` wraps a ``transformers`` causal LM, built by unimm or given ready-made):

=================================  ===================================================================================
member                             meaning
=================================  ===================================================================================
``hidden_size``                    width D of embeddings and hidden states
``vocab_size``                     rows of the text embedding table (and of the LM head)
``num_layers``                     decoder layers (``all_hidden_states`` has ``num_layers + 1`` entries)
``max_positions``                  the longest sequence it can read (None when unbounded)
``embed(ids)``                     (B, T) long -> (B, T, D) text embeddings
``forward(inputs_embeds, ...)``    (B, T, D) -> :class:`BackboneOutput`; ``attention_mask`` (B, T_past + T) with 1 for
                                   real tokens, ``position_ids`` (B, T), ``past_key_values`` a cache from an earlier
                                   call with ``use_cache=True``, ``output_hidden_states`` for every layer's output
``logits(hidden)``                 (..., D) -> (..., V) text logits
``resize_vocab(n)``                grow the embedding table and LM head to ``n`` rows (new image tags)
``set_grad_checkpointing(on)``     recompute layer activations in the backward pass
``folded_config()``                the slot arguments that rebuild it without its pretrained folder (or None)
``tokenizer_folder()``             the tokenizer that comes with its weights, when the config names none (or None)
``fsdp_units()``                   the submodules that are FSDP units (default: the whole backbone as one)
=================================  ===================================================================================

Positions follow the left-padding convention of the processor: :func:`positions_from_mask` gives 0 at each row's
first real token.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: 0 at each row's first real token (pads get 0 too). (B, T) -> (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class BackboneOutput:
    """What one backbone call returns.

    Attributes:
        hidden_states: (B, T, D) after the final norm.
        past_key_values: the KV cache (a transformers ``Cache``) when ``use_cache`` was set, else None.
        all_hidden_states: tuple of (B, T, D), the embeddings then each layer's output, when asked for.
    """

    hidden_states: torch.Tensor
    past_key_values: Any = None
    all_hidden_states: tuple[torch.Tensor, ...] | None = None


class Backbone(nn.Module, ABC):
    """Base class of backbones (see the module docstring for the protocol)."""

    @property
    @abstractmethod
    def hidden_size(self) -> int:
        """Width of embeddings and hidden states."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Rows of the text embedding table."""

    @property
    @abstractmethod
    def num_layers(self) -> int:
        """Number of decoder layers."""

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the backbone can read, or None when it has no fixed limit."""
        return None

    @abstractmethod
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings, (B, T) -> (B, T, D)."""

    @abstractmethod
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        """Run the decoder on embeddings (B, T, D)."""

    @abstractmethod
    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Text logits, (..., D) -> (..., V)."""

    @abstractmethod
    def resize_vocab(self, vocab_size: int) -> None:
        """Grow (or shrink) the input embeddings and LM head to ``vocab_size`` rows."""

    def tokenizer_folder(self) -> Path | None:
        """The folder of the tokenizer that belongs with these weights (a pretrained transformers folder), used
        when the config names no ``processor.tokenizer``; None when there is none."""
        return None

    def folded_config(self) -> dict | None:
        """Slot arguments that rebuild this backbone without the folder it was loaded from (``path`` /
        ``pretrained`` are dropped by the saver), so a saved model is self-contained; None when not loaded from one."""
        return None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn activation checkpointing on or off; a backbone without it ignores the call."""

    def fsdp_units(self) -> list[nn.Module]:
        """Submodules that FSDP shards as one unit each (:mod:`unimm.train.sharding`): gathered together in the
        forward pass, freed after. Default: the backbone itself; a layered backbone names its layers."""
        return [self]


__all__ = ["Backbone", "BackboneOutput", "positions_from_mask"]
