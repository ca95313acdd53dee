"""Loading training images and preparing them per path.

* Understanding: the image is loaded as RGB and handed to the processor, which pads it to a square and resizes it
  to the encoder's size (the Janus / DeepSeek-VL convention), so nothing is cropped away from a question's subject.
* Generation: the short side is resized to the generator's ``image_size`` and the centre is cropped, then scaled
  to [-1, 1] - the target the VQ tokenizer or VAE encodes.

Both raise :class:`~unimm.data.records.SkipRecord` (``missing_image`` / ``corrupt_image``) instead of crashing.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2 as T

from .records import CORRUPT_IMAGE, MISSING_IMAGE, SkipRecord


def load_image(location: Any) -> Image.Image:
    """Open an image from a path or raw bytes, fully decoded, as RGB.

    Raises:
        SkipRecord: ``missing_image`` if the file does not exist, ``corrupt_image`` if it cannot be decoded.
    """
    if isinstance(location, (str, os.PathLike)):
        if not os.path.isfile(location):
            raise SkipRecord(MISSING_IMAGE, str(location))
        source, name = location, str(location)
    elif isinstance(location, (bytes, bytearray)):
        source, name = io.BytesIO(location), "<bytes>"
    else:
        raise SkipRecord(MISSING_IMAGE, f"not a path or bytes: {type(location).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()  # decode now: a truncated file fails here, not later inside a batch
                return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise SkipRecord(CORRUPT_IMAGE, f"{name}: {err}") from None


class GenerationImageTransform:
    """Resize the short side to ``size``, centre-crop ``size`` x ``size``, scale to [-1, 1].

    PIL image (any size, RGB) -> tensor (3, size, size) float32 in [-1, 1].
    """

    def __init__(self, size: int):
        self.size = int(size)
        self._transform = T.Compose([
            T.ToImage(),
            T.Resize(self.size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(self.size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        ])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self._transform(image).clamp_(-1.0, 1.0)

    def __repr__(self) -> str:
        return f"GenerationImageTransform(size={self.size})"
