"""Turning model outputs into image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> RGB PIL images (values clipped)."""
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(np.ascontiguousarray(a.permute(1, 2, 0).cpu().numpy())) for a in array]


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "image") -> list[Path]:
    """Write (B, 3, H, W) images in [-1, 1] as ``{prefix}_{i}.png`` into ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(to_pil(images)):
        path = folder / f"{prefix}_{i:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, scale: int = 4) -> Path:
    """Write (B, 3, H, W) images in [-1, 1] as one PNG grid of ``nrow`` per row, upscaled ``scale`` x (nearest)."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    big = torch.nn.functional.interpolate(images.detach().float().cpu(), scale_factor=scale, mode="nearest")
    save_image((big.clamp(-1, 1) + 1) / 2, str(path), nrow=nrow, padding=2, pad_value=1.0)
    return path
