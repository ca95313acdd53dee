"""The VAE that JanusFlow's rectified flow runs in: a diffusers ``AutoencoderKL`` behind a small interface.

JanusFlow (Ma et al. 2024, arXiv 2411.07975) generates in the latent space of the SDXL VAE (Podell et al. 2023):
4 latent channels, 8x downsampling, latents multiplied by the scaling factor 0.13025 so that they have roughly unit
variance. The VAE is not part of the released JanusFlow checkpoint; it is a separate diffusers folder
(``stabilityai/sdxl-vae``). diffusers implements the network; this wrapper only fixes the conventions
(scaling, mean or sampled posterior, frozen by default) and exposes the sizes the flow path derives its own from.

Shapes: ``encode(images (B, 3, H, W) in [-1, 1])`` -> ``(B, latent_channels, H/downsample, W/downsample)``;
``decode`` is the inverse.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from ..registry import AUTOENCODERS, ConfigError, InputError
from .autoencoder import ImageAutoencoder

#: The SDXL VAE architecture (stabilityai/sdxl-vae config.json), the default of ``KLAutoencoder``.
SDXL_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}


def _autoencoder_kl_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """SDXL defaults updated by ``overrides``, checked against ``AutoencoderKL``'s arguments."""
    known = [n for n in inspect.signature(AutoencoderKL.__init__).parameters if n != "self"]
    overrides = {k: v for k, v in overrides.items() if not k.startswith("_")}  # "_class_name", "_diffusers_version"
    for key in overrides:
        if key not in known:
            raise ConfigError(
                f"autoencoder.config.{key}: not an argument of diffusers' AutoencoderKL. Valid keys: {', '.join(known)}"
            )
    config = {**SDXL_VAE_CONFIG, **overrides}
    levels = len(config["block_out_channels"])
    # A config that changes the number of levels but not the block types means one block type per level.
    for key, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if key not in overrides:
            config[key] = [block] * levels
    return config


class KLAutoencoder(ImageAutoencoder):
    """A diffusers ``AutoencoderKL`` with scaled latents, frozen unless asked otherwise.

    Args:
        path: a local diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``); nothing is
            downloaded. Leave None to build the architecture from ``config`` with random weights.
        config: ``AutoencoderKL`` arguments that override the SDXL VAE configuration (only with ``path=None``).
        trainable: if False (default) the weights are frozen, the module stays in eval mode and ``encode`` runs
            without gradients.
        sample_posterior: ``encode`` returns a sample of the posterior instead of its mean.
        kl_weight: weight of the per-pixel KL term in :meth:`reconstruction_loss` (training the VAE itself).

    Shapes: ``encode`` (B, 3, H, W) -> (B, C, H/d, W/d) scaled latents; ``decode`` the reverse, with
    C = ``latent_channels`` and d = ``downsample``.
    """

    def __init__(
        self,
        path: str | None = None,
        config: dict | None = None,
        trainable: bool = False,
        sample_posterior: bool = False,
        kl_weight: float = 1e-4,
    ):
        super().__init__()
        if path is not None:
            if config:
                raise ConfigError("autoencoder: give either 'path' (a diffusers folder) or 'config', not both")
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise ConfigError(
                    f"autoencoder.path = {path!r}: no diffusers VAE there (config.json missing). Download the VAE "
                    f"(e.g. stabilityai/sdxl-vae) to a local folder and point 'path' at it"
                )
            self.vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
            self.source_path = str(path)
        else:
            self.vae = AutoencoderKL(**_autoencoder_kl_config(dict(config or {})))
        self.trainable = trainable
        self.sample_posterior = sample_posterior
        self.kl_weight = kl_weight
        if not trainable:
            self.vae.requires_grad_(False)
            self.vae.eval()

    # -- sizes ----------------------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample(self) -> int:
        """Pixels per latent cell along one side (8 for the SDXL VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(self.vae.config.shift_factor or 0.0)

    def train(self, mode: bool = True) -> KLAutoencoder:
        super().train(mode)
        if not self.trainable:
            self.vae.eval()
        return self

    # -- compute --------------------------------------------------------------------------------------------
    def posterior(self, images: torch.Tensor):
        """The diffusers ``DiagonalGaussianDistribution`` of unscaled latents for images in [-1, 1]."""
        if images.ndim != 4 or images.shape[1] != self.vae.config.in_channels:
            raise InputError(
                f"VAE input must be (B, {self.vae.config.in_channels}, H, W) images in [-1, 1], "
                f"got shape {tuple(images.shape)}"
            )
        if images.shape[-1] % self.downsample or images.shape[-2] % self.downsample:
            raise InputError(
                f"VAE input side {tuple(images.shape[-2:])} must be divisible by the downsampling {self.downsample}"
            )
        return self.vae.encode(images).latent_dist

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> scaled latents ``(mean or sample - shift) * scaling_factor``."""
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            dist = self.posterior(images)
            latents = dist.sample(generator=generator) if self.sample_posterior else dist.mean
        return (latents - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> images (B, 3, h*d, w*d), roughly in [-1, 1] (not clamped)."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise InputError(
                f"VAE latents must be (B, {self.latent_channels}, h, w), got shape {tuple(latents.shape)}"
            )
        return self.vae.decode(latents / self.scaling_factor + self.shift_factor).sample

    # -- training and files ---------------------------------------------------------------------------------
    def reconstruction_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L1 + L2 reconstruction of a posterior sample plus ``kl_weight`` x the per-pixel KL from N(0, I)."""
        posterior = self.posterior(images)
        recon = self.vae.decode(posterior.sample()).sample
        rec = F.l1_loss(recon, images) + F.mse_loss(recon, images)
        kl = posterior.kl().mean() / images[0].numel()
        return rec + self.kl_weight * kl, {"reconstruction": rec.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor) -> None:
        """Scale the latents to unit standard deviation over (up to 1024 of) ``images``, as SD / SDXL did."""
        latents = self.posterior(images[:1024]).mean
        self.vae.register_to_config(scaling_factor=float(1.0 / latents.std()))

    def save(self, folder: str | Path) -> Path:
        """Write a diffusers folder (``config.json`` + weights) that ``autoencoder_kl(path=folder)`` loads."""
        self.vae.save_pretrained(str(folder))
        return Path(folder)

    def folded_config(self) -> dict | None:
        """``{"config": <the diffusers config>}`` when loaded from a folder, else None."""
        if self.source_path is None:
            return None
        return {"config": {k: v for k, v in dict(self.vae.config).items() if not k.startswith("_")}}


@AUTOENCODERS.register("autoencoder_kl", aliases=("sdxl_vae",))
def autoencoder_kl(
    path: str | None = None, config: dict | None = None, trainable: bool = False, sample_posterior: bool = False,
    kl_weight: float = 1e-4,
) -> KLAutoencoder:
    """diffusers AutoencoderKL (default: the SDXL VAE architecture, scaling factor 0.13025), frozen by default."""
    return KLAutoencoder(path=path, config=config, trainable=trainable, sample_posterior=sample_posterior,
                         kl_weight=kl_weight)
