"""Training images: opened by the one image loader, prepared per path.

* Opening: :func:`load_record_image` is :func:`unimm.encoders.transforms.load_image` (the loader inference uses:
  any PIL mode to RGB, transparency composited onto white, 16-bit rescaled) that skips a bad record instead of
  stopping the run: it raises :class:`~unimm.data.records.SkipRecord` (``missing_image`` / ``corrupt_image``).
* Understanding: the RGB image is handed to the processor, which pads it to a square and resizes it to the
  encoder's size (the Janus / DeepSeek-VL convention), so nothing is cropped away from a question's subject.
* Generation: the short side is resized to the generator's ``image_size`` and the centre is cropped, then scaled
  to [-1, 1] - the target the VQ tokenizer or VAE encodes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2 as T

from ..encoders.transforms import load_image
from .records import CORRUPT_IMAGE, MISSING_IMAGE, SkipRecord


def load_record_image(location: Any) -> Image.Image:
    """A training record's image (a path, or the file's bytes from a shard) as RGB, fully decoded.

    Raises:
        SkipRecord: ``missing_image`` if the file does not exist, ``corrupt_image`` if it cannot be decoded.
    """
    if isinstance(location, (str, os.PathLike)) and not os.path.isfile(location):
        raise SkipRecord(MISSING_IMAGE, str(location))
    if not isinstance(location, (str, os.PathLike, bytes, bytearray)):
        raise SkipRecord(MISSING_IMAGE, f"not a path or bytes: {type(location).__name__}")
    try:
        return load_image(location)
    except ValueError as err:  # InputError (unreadable, too large) or a decoder's own complaint
        raise SkipRecord(CORRUPT_IMAGE, str(err)) from None


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
