"""The contract every understanding encoder meets: what the unified model, the processor and REPA rely on.

An understanding encoder turns prepared images into a token sequence for the language model (through an aligner).
The rest of unimm reads nothing from an encoder but the members below:

==========================  ==========================================================================================
member                      meaning
==========================  ==========================================================================================
``image_size``              side in pixels of the square input (SigLIP-L/16 in Janus: 384)
``num_tokens``              tokens per image (576 for SigLIP-L/16 at 384): the processor writes this many placeholders
``out_dim``                 width of each token (1024 for SigLIP-L)
``pixel_mean/pixel_std``    the normalisation :meth:`transform` applies after scaling to [0, 1]
``output_form``             ``"sequence"``: ``forward`` gives (B, N, C); ``"pair"``: a (high, low) tuple of two
                            (B, N, C) sequences, which only a pair aligner (``low_high_hybrid_split_mlp_gelu``) reads
``forward(pixels)``         (B, 3, S, S) prepared pixels -> (B, N, C) (or the pair)
``transform()``             the callable that turns one image (path, PIL, array) into (3, S, S) prepared pixels
``alignment_features(x)``   generation images (B, 3, H, W) in [-1, 1] -> (B, N, C) target features for REPA
``freeze(frozen)``          stop (or restart) gradients to every trainable parameter
``needs_generation_autoencoder``  (classmethod) whether a slot shares the generation path's autoencoder
``adapt_checkpoint(s, p)``  fit a checkpoint to this encoder before loading (position embeddings at another size)
``folded_config()``         the slot arguments that rebuild it without the folder it was loaded from (or None)
``frozen_children``         names of submodules that stay frozen in training unless a stage names them
``fsdp_units()``            submodules FSDP shards as one unit each (default: the frozen children, then itself)
==========================  ==========================================================================================

Subclasses implement ``forward``, ``out_dim`` and ``num_tokens`` and set ``image_size``, ``pixel_mean`` and
``pixel_std`` (attributes or properties); the rest has working defaults here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from .transforms import PadToSquare

OutputForm = Literal["sequence", "pair"]


class UnderstandingEncoder(nn.Module, ABC):
    """Base class of understanding encoders (see the module docstring for the members the library reads).

    Input: (B, 3, image_size, image_size) pixels prepared by :meth:`transform`. Output: (B, num_tokens, out_dim),
    or a (high, low) pair of them when ``output_form == "pair"``.
    """

    #: ``"sequence"`` (one (B, N, C) tensor) or ``"pair"`` (a (high, low) tuple, DeepSeek-VL's hybrid).
    output_form: ClassVar[OutputForm] = "sequence"
    #: Submodules frozen in training unless a stage names them (the shared-VQ encoder's tokenizer).
    frozen_children: ClassVar[tuple[str, ...]] = ()
    image_size: int
    #: The folder the weights were loaded from (``path:``), or None.
    source_path: str | None = None
    pixel_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pixel_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    @abstractmethod
    def out_dim(self) -> int:
        """Width of each output token."""

    @property
    @abstractmethod
    def num_tokens(self) -> int:
        """Tokens per image."""

    @abstractmethod
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) prepared pixels -> (B, num_tokens, out_dim), or (high, low) for ``output_form == "pair"``."""

    @classmethod
    def needs_generation_autoencoder(cls, kwargs: dict[str, Any]) -> bool:
        """Whether the slot ``kwargs`` ask to share the generation path's autoencoder (then the model builds the
        generation path first and offers it to ``from_config`` as ``generation_autoencoder``)."""
        return False

    def transform(self) -> PadToSquare:
        """The image transform this encoder expects: resize and pad to a square of ``image_size`` with the mean
        colour, scale to [0, 1], normalise with ``pixel_mean`` / ``pixel_std``."""
        return PadToSquare(self.image_size, self.pixel_mean, self.pixel_std)

    def alignment_features(self, images: torch.Tensor) -> torch.Tensor:
        """Features of generation images for representation alignment (REPA): (B, 3, H, W) in [-1, 1] -> (B, N, C).

        The images are mapped to [0, 1], resized (bicubic) to ``image_size`` and normalised the way
        :meth:`transform` would; a pair encoder gives its second (low-resolution, semantic) sequence.
        """
        x = (images + 1) / 2
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
            x = x.clamp(0, 1)
        mean = torch.tensor(self.pixel_mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        dtype = next((p.dtype for p in self.parameters()), x.dtype)
        out = self(((x - mean) / std).to(dtype))
        return out[1] if self.output_form == "pair" else out

    def adapt_checkpoint(self, state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """Fit a checkpoint's tensors under ``prefix`` to this encoder before strict loading, e.g. resample position
        embeddings saved at another image size; the default changes nothing."""
        return state

    def folded_config(self) -> dict | None:
        """Slot arguments that rebuild this encoder without the folder it was loaded from (``path`` is dropped by
        the saver), so a saved model is self-contained; None when it was not loaded from a folder."""
        return None

    def fsdp_units(self) -> list[nn.Module]:
        """Submodules that FSDP shards as one unit each (:mod:`unimm.train.sharding`), innermost first. Default:
        each of :attr:`frozen_children` (so a frozen tokenizer never shares a unit with trained weights), then
        the encoder itself; a ViT names its blocks too."""
        children = [getattr(self, name) for name in self.frozen_children]
        return [m for m in children if isinstance(m, nn.Module)] + [self]

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or restart) gradients to every parameter."""
        for p in self.parameters():
            p.requires_grad_(not frozen)


@runtime_checkable
class PretrainableEncoder(Protocol):
    """An encoder :func:`unimm.train.encoder.pretrain_encoder` can pre-train on labelled images (SigLIP does)."""

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, num_tokens, out_dim) patch tokens from ``forward`` -> (B, out_dim): one embedding per image."""

    def save(self, folder, notes: dict | None = None):
        """Write a folder that the encoder's ``path:`` argument loads back."""


__all__ = ["OutputForm", "PretrainableEncoder", "UnderstandingEncoder"]
