"""Shared-encoder baseline: understand images through the generation path's own VQ tokenizer.

Wu et al., "Janus: Decoupling Visual Encoding for Unified Multimodal Understanding and Generation" (2024),
ablation studies: the experiment that motivates Janus compares decoupled encoders (SigLIP for understanding, a VQ
tokenizer for generation) with a single VQ tokenizer used for both, as Chameleon-style models do. This module is
that single-tokenizer understanding encoder: the image goes through the (frozen) LlamaGen VQ tokenizer registered
as ``llamagen_vq`` in ``AUTOENCODERS``, and the language model reads either

* ``features="quant"``: the quantised latents themselves, one code vector per latent cell (width
  ``codebook_embed_dim``, 8 for VQ-16), or
* ``features="codes"``: the discrete codes, looked up in a learned embedding of width ``code_dim`` (trainable).

An aligner after it maps that width to the language model's. The tokenizer is frozen (no gradients, always in eval
mode), as in the paper's setting where only the aligner and the language model learn.

Shapes: ``forward(images)`` (B, 3, S, S) in [-1, 1] -> (B, (S / 16)^2, out_dim) for VQ-16.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..registry import AUTOENCODERS, ENCODERS, ConfigError, InputError
from .transforms import PadToSquare

FEATURES = ("quant", "codes")


# ---------------------------------------------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------------------------------------------
@ENCODERS.register("shared_vq")
class SharedVQEncoder(nn.Module):
    """Understanding features from a frozen VQ tokenizer: its quantised latents, or an embedding of its codes.

    Args:
        autoencoder: the tokenizer: a config for ``AUTOENCODERS.build`` (``{"type": "llamagen_vq", "variant":
            "vq_16"}``), or an already built one (e.g. the generation path's own, to share its weights). It must
            offer ``encode(images) -> (quant (B, C, h, w), codes (B, h*w))``, ``embed_dim``, ``codebook_size`` and
            ``downsample``.
        image_size: input side in pixels (Janus: 384); a multiple of the tokenizer's downsampling factor.
        features: ``"quant"`` (the quantised latents) or ``"codes"`` (a learned embedding of the codes).
        code_dim: width of the code embedding for ``features="codes"`` (default: the codebook width).

    Input: (B, 3, image_size, image_size) pixels in [-1, 1]. Output: (B, num_tokens, out_dim).
    """

    def __init__(
        self,
        autoencoder: Mapping | nn.Module,
        image_size: int,
        features: str = "quant",
        code_dim: int | None = None,
    ):
        super().__init__()
        if features not in FEATURES:
            raise ConfigError(
                f"model.und_encoder.features: '{features}' is not one of {', '.join(FEATURES)} ('quant' reads the "
                f"quantised latents, 'codes' a learned embedding of the code ids)"
            )
        if code_dim is not None and features != "codes":
            raise ConfigError("model.und_encoder.code_dim only applies to features: codes; remove it or switch")
        tokenizer = (
            autoencoder if isinstance(autoencoder, nn.Module)
            else AUTOENCODERS.build(autoencoder, where="model.und_encoder.autoencoder")
        )
        for needed in ("encode", "embed_dim", "codebook_size", "downsample"):
            if not hasattr(tokenizer, needed):
                raise ConfigError(
                    f"model.und_encoder.autoencoder: {type(tokenizer).__name__} has no '{needed}'; the shared VQ "
                    f"encoder needs a VQ tokenizer such as llamagen_vq"
                )
        if image_size % tokenizer.downsample:
            raise ConfigError(
                f"model.und_encoder.image_size {image_size} is not a multiple of the tokenizer's downsampling "
                f"factor {tokenizer.downsample}"
            )
        self.tokenizer = tokenizer
        self.tokenizer.requires_grad_(False)
        self.tokenizer.eval()
        self.image_size = int(image_size)
        self.features = features
        self.code_embed = (
            nn.Embedding(tokenizer.codebook_size, code_dim or tokenizer.embed_dim) if features == "codes" else None
        )
        # The tokenizer reads pixels in [-1, 1].
        self.pixel_mean = (0.5, 0.5, 0.5)
        self.pixel_std = (0.5, 0.5, 0.5)

    @property
    def out_dim(self) -> int:
        """Width of each token: the codebook width (quant) or the code-embedding width (codes)."""
        return self.code_embed.embedding_dim if self.code_embed is not None else self.tokenizer.embed_dim

    @property
    def num_tokens(self) -> int:
        """Latent cells per image: (image_size / downsample)^2."""
        return (self.image_size // self.tokenizer.downsample) ** 2

    def transform(self) -> PadToSquare:
        """The image transform: pad to a square of ``image_size`` (grey), map pixels to [-1, 1]."""
        return PadToSquare(self.image_size, self.pixel_mean, self.pixel_std)

    def train(self, mode: bool = True) -> SharedVQEncoder:
        """Switch the trainable parts; the frozen tokenizer stays in eval mode."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels in [-1, 1] -> (B, num_tokens, out_dim)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.image_size, self.image_size):
            raise InputError(
                f"the shared VQ encoder takes images (B, 3, {self.image_size}, {self.image_size}) in [-1, 1], got "
                f"{tuple(images.shape)}; use encoder.transform() to prepare them"
            )
        with torch.no_grad():
            quant, codes = self.tokenizer.encode(images)
        if self.code_embed is not None:
            return self.code_embed(codes)
        return quant.flatten(2).transpose(1, 2)

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or restart) gradients to the trainable parts; the tokenizer is always frozen."""
        if self.code_embed is not None:
            self.code_embed.requires_grad_(not frozen)
