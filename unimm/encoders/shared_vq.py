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

from typing import Any

import torch
from torch import nn

from ..devices import module_dtype
from ..generation.autoencoder import DiscreteAutoencoder
from ..registry import AUTOENCODERS, ENCODERS, ConfigError, InputError
from .base import UnderstandingEncoder

FEATURES = ("quant", "codes")


# ---------------------------------------------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------------------------------------------
@ENCODERS.register("shared_vq")
class SharedVQEncoder(UnderstandingEncoder):
    """Understanding features from a frozen VQ tokenizer: its quantised latents, or an embedding of its codes.

    Args:
        autoencoder: the tokenizer, a built :class:`~unimm.generation.autoencoder.DiscreteAutoencoder`. From a
            config: leave ``autoencoder`` out to use the generation path's own tokenizer, one module tied between
            the two paths as in the Janus ablation (the model passes it as ``generation_autoencoder``); give an
            ``AUTOENCODERS`` slot (``{"type": "llamagen_vq", "variant": "vq_16"}``) to keep a separate copy.
        image_size: input side in pixels (Janus: 384); a multiple of the tokenizer's downsampling factor.
        features: ``"quant"`` (the quantised latents) or ``"codes"`` (a learned embedding of the codes).
        code_dim: width of the code embedding for ``features="codes"`` (default: the codebook width).

    Input: (B, 3, image_size, image_size) pixels in [-1, 1]. Output: (B, num_tokens, out_dim).
    """

    frozen_children = ("tokenizer",)
    config_defaults = {"autoencoder": None}  # left out: share the generation path's tokenizer

    def __init__(
        self,
        autoencoder: DiscreteAutoencoder,
        image_size: int,
        features: str = "quant",
        code_dim: int | None = None,
        *,
        where: str = "model.und_encoder",
    ):
        super().__init__()
        if features not in FEATURES:
            raise ConfigError(
                f"{where}.features: '{features}' is not one of {', '.join(FEATURES)} ('quant' reads the "
                f"quantised latents, 'codes' a learned embedding of the code ids)"
            )
        if code_dim is not None and features != "codes":
            raise ConfigError(f"{where}.code_dim only applies to features: codes; remove it or switch")
        tokenizer = autoencoder
        if not isinstance(tokenizer, DiscreteAutoencoder):
            raise ConfigError(
                f"{where}.autoencoder: {type(tokenizer).__name__} has no codebook; the shared VQ encoder needs a "
                f"discrete autoencoder such as llamagen_vq"
            )
        if image_size % tokenizer.downsample:
            raise ConfigError(
                f"{where}.image_size {image_size} is not a multiple of the tokenizer's downsampling "
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
        # The tokenizer reads pixels in [-1, 1]: the contract's default 0.5 / 0.5 normalisation.

    @classmethod
    def needs_generation_autoencoder(cls, kwargs: dict[str, Any]) -> bool:
        """True when the slot gives no ``autoencoder``: the encoder then shares the generation path's."""
        return kwargs.get("autoencoder") is None

    @classmethod
    def from_config(
        cls, kwargs: dict[str, Any], *, where: str, generation_autoencoder: Any = None
    ) -> SharedVQEncoder:
        """Build the slot's own tokenizer, or take ``generation_autoencoder`` (tied) when the slot has none."""
        kwargs = dict(kwargs)
        shared = generation_autoencoder
        if kwargs.get("autoencoder") is not None:
            kwargs["autoencoder"] = AUTOENCODERS.build(kwargs["autoencoder"], where=f"{where}.autoencoder")
        elif shared is not None:
            kwargs["autoencoder"] = shared
        else:
            raise ConfigError(
                f"{where}.autoencoder: no tokenizer to share (the generation path has no discrete autoencoder); give "
                f"the encoder its own, e.g. autoencoder: {{type: llamagen_vq, variant: vq_16}}"
            )
        return cls(**kwargs, where=where)

    @property
    def out_dim(self) -> int:
        """Width of each token: the codebook width (quant) or the code-embedding width (codes)."""
        return self.code_embed.embedding_dim if self.code_embed is not None else self.tokenizer.embed_dim

    @property
    def num_tokens(self) -> int:
        """Latent cells per image: (image_size / downsample)^2."""
        return (self.image_size // self.tokenizer.downsample) ** 2

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
        with torch.no_grad():  # the tokenizer may be kept float32 in a bfloat16 model (unimm.devices.place)
            quant, codes = self.tokenizer.quantize_images(images.to(module_dtype(self.tokenizer)))
        if self.code_embed is not None:
            return self.code_embed(codes)
        return quant.flatten(2).transpose(1, 2)

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or restart) gradients to the trainable parts; the tokenizer is always frozen."""
        if self.code_embed is not None:
            self.code_embed.requires_grad_(not frozen)
