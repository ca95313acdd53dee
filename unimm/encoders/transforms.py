"""Image transforms that turn a user's picture into an encoder's input tensor.

Janus's understanding transform: convert to RGB, resize so the long side is ``image_size`` (bicubic, antialiased,
each side at least ``min_size``), pad to a square with the mean colour, scale to [0, 1], normalise. It reproduces
the reference ``VLMImageProcessor`` to float precision, and it refuses or repairs odd inputs with a clear message.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..registry import InputError

# Largest image (in pixels) we decode; larger JPEGs are shrunk while decoding (PIL's draft) and other larger files
# refused, so a huge photo does not take gigabytes of memory before being resized to a few hundred pixels anyway.
MAX_DECODE_PIXELS = 64_000_000


def load_image(source: str | Path | bytes | Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    """Open ``source`` (path, file bytes, PIL image, HxW(xC) array, or (C, H, W) tensor) as an RGB PIL image.

    The one image loader: inference (the processor), training data (:mod:`unimm.data`) and the benchmark use it.

    Arrays may be uint8, 16-bit, or float in [0, 1] (float arrays above 1 are read as 0-255); float tensors are
    clamped to [0, 1], uint8 tensors taken as 0-255. Grayscale, palette, CMYK and 16-bit images are converted to
    RGB; transparent pixels (RGBA, LA, palette with transparency) are composited onto white, the way viewers
    show them. Files over ``MAX_DECODE_PIXELS`` are shrunk while decoding (JPEG) or refused.

    Raises:
        InputError: the file is missing, unreadable or too large, the array has an unsupported shape, or the
            values are not finite.
    """
    if isinstance(source, (str, Path, bytes, bytearray)):
        path = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source)  # bytes: a shard member
        if isinstance(path, Path) and not path.is_file():
            raise InputError(f"image file not found: {path}")
        try:
            image = _open_bounded(path)
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
        image = Image.fromarray(_to_uint8(array))
    elif isinstance(source, torch.Tensor):
        tensor = source.detach().cpu()
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
            raise InputError(f"image tensor must be (3, H, W) or (1, H, W) in [0, 1], got shape {tuple(tensor.shape)}")
        if tensor.is_floating_point():
            if not torch.isfinite(tensor).all():
                raise InputError("image tensor has NaN or infinite values")
            tensor = (tensor.float().clamp(0, 1) * 255).round().to(torch.uint8)
        image = Image.fromarray(_to_uint8(tensor.expand(3, -1, -1).permute(1, 2, 0).contiguous().numpy()))
    else:
        raise InputError(f"unsupported image type {type(source).__name__}; give a path, PIL image, array or tensor")
    if image.width < 1 or image.height < 1:
        raise InputError(f"image has no pixels ({image.width}x{image.height})")
    return to_rgb(image)


def _open_bounded(path: Path | io.BytesIO) -> Image.Image:
    """Open ``path`` lazily; shrink images over ``MAX_DECODE_PIXELS`` while decoding (JPEG) or refuse them."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # PIL's bomb check would refuse big JPEGs that draft() decodes cheaply
    try:
        image = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = previous  # never leave PIL's global guard disabled for the caller
    if image.width * image.height > MAX_DECODE_PIXELS:
        width, height = image.size
        # JPEG decodes at 1/2 .. 1/8 scale, the strongest reduction that stays at least this big (so under the
        # limit: one more halving would go below it); other formats ignore draft().
        scale = math.sqrt(MAX_DECODE_PIXELS / (width * height)) / 2
        image.draft("RGB", (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
        if image.width * image.height > MAX_DECODE_PIXELS:
            raise InputError(
                f"image {path} is {width}x{height} pixels, more than the {MAX_DECODE_PIXELS / 1e6:.0f} megapixels "
                f"unimm decodes (only JPEG files are shrunk while decoding); downscale it first"
            )
    return image


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """An HxWxC array of any numeric dtype -> uint8: floats in [0, 1] (or [0, 255]) and 16-bit values are scaled."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError("image array has NaN or infinite values")
        array = array * 255.0 if array.size and array.max() <= 1.0 else array
    elif array.dtype == np.uint16 or (array.size and array.max() > 255):
        array = array / 257.0  # 16-bit samples: 65535 -> 255
    return np.clip(np.round(array), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB, compositing transparency onto white; 16-bit and float modes are rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # PIL's convert("RGB") clips these to 0..255, which turns a 16-bit picture white.
        array = np.asarray(image)
        if image.mode.startswith("I;16"):
            array = array.astype(np.uint16)
        return Image.fromarray(_to_uint8(array)[..., None].repeat(3, axis=-1))
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
        self.min_size = min(min_size, self.image_size)  # tiny encoders: never larger than the output

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


class TransformersJanusTransform:
    """transformers' own ``JanusImageProcessor`` behind :class:`PadToSquare`'s interface, for models loaded from
    transformers' Janus layout, so their pixels are the ones ``JanusProcessor`` gives.

    It is not re-implemented here because it differs from the reference in details that matter at the last bit:
    the short side is ``round``-ed (the reference truncates) and the resize runs on tensors (the reference resizes
    a PIL image). Pictures are opened with :func:`load_image` first, so every input unimm accepts works.

    Call: image -> float tensor (3, image_size, image_size).
    """

    def __init__(self, image_size: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), min_size: int = 14):
        from transformers import JanusImageProcessor

        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.processor = JanusImageProcessor(size={"height": self.image_size, "width": self.image_size},
                                             image_mean=list(mean), image_std=list(std),
                                             min_size=min(min_size, self.image_size))

    def __call__(self, image) -> torch.Tensor:
        """Image -> normalised tensor (3, image_size, image_size), float32."""
        return self.processor(load_image(image), return_tensors="pt")["pixel_values"][0].float()

    def __repr__(self) -> str:
        return f"TransformersJanusTransform(image_size={self.image_size}, mean={list(self.mean)}, std={list(self.std)})"
