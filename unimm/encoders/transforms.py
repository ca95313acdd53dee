"""Image transforms that turn a user's picture into an encoder's input tensor.

Janus's understanding transform: convert to RGB, resize so the long side is ``image_size`` (bicubic, antialiased,
each side at least ``min_size``), pad to a square with the mean colour, scale to [0, 1], normalise. It reproduces
the reference ``VLMImageProcessor`` to float precision, and it refuses or repairs odd inputs with a clear message.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..registry import InputError

# Largest image (in pixels) we decode at full size; larger ones are first shrunk with PIL's draft/thumbnail so a
# huge photo does not take gigabytes of memory before being resized to a few hundred pixels anyway.
MAX_DECODE_PIXELS = 64_000_000


def load_image(source: str | Path | Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    """Open ``source`` (path, PIL image, HWC uint8 array or CHW float tensor in [0, 1]) as an RGB PIL image.

    Grayscale, palette and CMYK images are converted to RGB; transparent pixels (RGBA, LA, palette with
    transparency) are composited onto white, the way viewers show them.

    Raises:
        InputError: the file is missing or unreadable, or the array has an unsupported shape.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"image file not found: {path}")
        try:
            Image.MAX_IMAGE_PIXELS = None  # we guard size ourselves below
            image = Image.open(path)
            if image.width * image.height > MAX_DECODE_PIXELS:
                image.draft("RGB", (4096, 4096))
                image.thumbnail((4096, 4096))
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise InputError(f"cannot read image {path}: {err}. Is it a PNG/JPEG/WebP file?") from err
    elif isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        array = source
        if array.ndim == 2:
            array = array[..., None].repeat(3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            raise InputError(f"image array must be HxW, HxWx3 or HxWx4 uint8, got shape {array.shape}")
        if array.shape[-1] == 1:
            array = array.repeat(3, axis=-1)
        if array.dtype != np.uint8:
            array = np.clip(array * 255.0 if array.max() <= 1.0 else array, 0, 255).astype(np.uint8)
        image = Image.fromarray(array)
    elif isinstance(source, torch.Tensor):
        tensor = source.detach().cpu()
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
            raise InputError(f"image tensor must be (3, H, W) or (1, H, W) in [0, 1], got shape {tuple(tensor.shape)}")
        array = (tensor.clamp(0, 1).expand(3, -1, -1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        image = Image.fromarray(array)
    else:
        raise InputError(f"unsupported image type {type(source).__name__}; give a path, PIL image, array or tensor")
    if image.width < 1 or image.height < 1:
        raise InputError(f"image has no pixels ({image.width}x{image.height})")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB, compositing transparency onto white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class PadToSquare:
    """Resize the long side to ``image_size``, pad to square with the mean colour, normalise.

    Call it on an image (anything :func:`load_image` accepts) to get a float tensor (3, image_size, image_size).

    Args:
        image_size: output side in pixels.
        mean, std: per-channel normalisation applied after scaling to [0, 1]; mean (0,0,0) and std (1,1,1) leave
            pixels in [0, 1] (for encoders that normalise internally).
        background: padding colour (RGB 0-255); defaults to the mean colour, as the reference does.
        min_size: smallest side after resizing (Janus: 14), so a 1-pixel-tall strip still yields a valid image.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        background: Sequence[int] | None = None,
        min_size: int = 14,
    ):
        self.image_size = int(image_size)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self.background = tuple(background) if background is not None else tuple(int(m * 255) for m in mean)
        self.min_size = min_size

    def resize(self, image: Image.Image) -> Image.Image:
        """Resize so the long side is ``image_size`` and pad to a square; returns an RGB PIL image."""
        import torchvision.transforms.functional as TF

        width, height = image.size
        longest = max(width, height)
        size = [
            max(int(height / longest * self.image_size), self.min_size),
            max(int(width / longest * self.image_size), self.min_size),
        ]
        image = TF.resize(image, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        width, height = image.size
        if width == height:
            return image
        side = max(width, height)
        square = Image.new(image.mode, (side, side), self.background)
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        return square

    def __call__(self, image) -> torch.Tensor:
        """Image -> normalised tensor (3, image_size, image_size), float32."""
        image = self.resize(load_image(image))
        array = np.asarray(image, dtype=np.float64).transpose(2, 0, 1) * (1.0 / 255.0)
        array = (array.astype(np.float32) - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def __repr__(self) -> str:
        return (
            f"PadToSquare(image_size={self.image_size}, mean={self.mean.ravel().tolist()}, "
            f"std={self.std.ravel().tolist()}, background={self.background})"
        )
