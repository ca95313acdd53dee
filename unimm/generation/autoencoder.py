"""The contract every image autoencoder meets (LlamaGen's VQ tokenizer, the SDXL VAE, a part of your own).

A generation path works in an autoencoder's latent space. The library reads only:

=============================  =====================================================================================
member                         meaning
=============================  =====================================================================================
``downsample``                 pixels per latent cell along each side (16 for VQ-16, 8 for the SDXL VAE)
``latent_channels``            channels of the latents
``latent_grid(image_size)``    latent cells per side for a square image (an error if it does not divide)
``encode(images)``             (B, 3, H, W) in [-1, 1] -> latents (B, latent_channels, H/d, W/d)
``decode(latents)``            the inverse, images roughly in [-1, 1] (not clamped)
``reconstruction_loss(x)``     (total, {name: detached scalar}) for training the autoencoder itself
``calibrate(images)``          set data-dependent constants after training (a VAE's latent scale); default: none
``save(folder)``               write a folder that the part's ``path:`` argument loads back
``folded_config()``            the config that rebuilds the part without its folder, when it was loaded from one
=============================  =====================================================================================

Discrete autoencoders (:class:`DiscreteAutoencoder`, the VQ tokenizer) add ``codebook_size``, ``embed_dim``,
``quantize_images`` (latents and codes), ``tokenize`` (codes only) and ``decode_codes``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from ..registry import InputError


class ImageAutoencoder(nn.Module, ABC):
    """Base class of image autoencoders (see the module docstring for the members the library reads)."""

    #: The folder the weights were loaded from (``path:``), or None for a part built from sizes.
    source_path: str | None = None
    #: :func:`unimm.devices.place` leaves it float32 when the rest of the model runs in bfloat16 / float16: it writes
    #: the pixels, is small next to the language model, and the paths cast latents to its dtype where they hand them
    #: over. A subclass may set it to False.
    keep_float32: bool = True

    @property
    @abstractmethod
    def downsample(self) -> int:
        """Pixels per latent cell along each side."""

    @property
    @abstractmethod
    def latent_channels(self) -> int:
        """Channels of the latents."""

    def latent_grid(self, image_size: int) -> int:
        """Latent cells per side for a square image of ``image_size`` pixels.

        Raises:
            InputError: ``image_size`` is not a multiple of :attr:`downsample`.
        """
        if image_size <= 0 or image_size % self.downsample:
            raise InputError(
                f"image size {image_size} is not a positive multiple of the autoencoder's downsampling factor "
                f"{self.downsample}; use a multiple of {self.downsample}"
            )
        return image_size // self.downsample

    @abstractmethod
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> latents (B, latent_channels, H / downsample, W / downsample); ``generator`` is
        the random source of a stochastic encoder (a VAE that samples its posterior)."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent_channels, h, w) -> images (B, 3, h * downsample, w * downsample)."""

    @abstractmethod
    def reconstruction_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of the autoencoder on images (B, 3, H, W) in [-1, 1]: (total, named detached terms)."""

    def calibrate(self, images: torch.Tensor) -> None:
        """Set data-dependent constants from training images after training; most autoencoders have none."""

    @abstractmethod
    def save(self, folder: str | Path) -> Path:
        """Write the part to ``folder`` so that its ``path:`` argument loads it back; returns the folder."""

    def folded_config(self) -> dict | None:
        """Slot arguments that rebuild this part's architecture without its folder (``path`` is dropped by the
        saver), so a model saved with it is self-contained; None when it was not loaded from a folder."""
        return None


class DiscreteAutoencoder(ImageAutoencoder):
    """An autoencoder with a codebook: latents are quantised to one of ``codebook_size`` codes per cell."""

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """Number of codes."""

    @property
    @abstractmethod
    def embed_dim(self) -> int:
        """Width of one code vector."""

    @abstractmethod
    def quantize_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> (quantised latents (B, C, h, w), codes (B, h * w) in raster order)."""

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> codes (B, h * w), without gradients."""
        with torch.no_grad():
            return self.quantize_images(images)[1]

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> quantised latents (B, C, h, w) (deterministic: ``generator`` is unused)."""
        return self.quantize_images(images)[0]

    @abstractmethod
    def decode_codes(self, codes: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Codes (B, N) -> images (B, 3, h * d, w * d); ``grid`` = (h, w), square by default."""


def check_images(images: torch.Tensor, downsample: int, what: str) -> None:
    """Images must be (B, 3, H, W) with sides divisible by ``downsample``; ``what`` names the part in the message."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"{what} takes images (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    if images.shape[-1] % downsample or images.shape[-2] % downsample:
        raise InputError(
            f"{what}: image sides {tuple(images.shape[-2:])} must be multiples of {downsample}, its downsampling "
            f"factor; resize or crop the images"
        )


__all__ = ["DiscreteAutoencoder", "ImageAutoencoder", "check_images"]
