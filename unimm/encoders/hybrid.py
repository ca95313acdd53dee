"""DeepSeek-VL's hybrid understanding encoder: a high-resolution SAM tower beside a low-resolution SigLIP tower.

Lu et al., "DeepSeek-VL: Towards Real-World Vision-Language Understanding" (2024), section 2.1. One image in [0, 1]
at 1024 px feeds both towers: the SAM-B tower (:class:`~unimm.encoders.sam.SAMEncoder`, CLIP normalisation) sees
it at full size and yields a 24 x 24 map of 1024 channels, flattened to 576 tokens; the SigLIP-L tower
(:class:`~unimm.encoders.siglip.SigLIPEncoder`, 0.5 / 0.5 normalisation) sees it resized to 384 px (torchvision's
antialiased bilinear resize, as the reference) and yields 24 x 24 tokens of 1024 channels. The two token sequences
are returned as a tuple; the ``low_high_hybrid_split_mlp_gelu`` aligner
(:class:`~unimm.aligners.hybrid_split.HybridSplitAligner`) fuses them.

The released checkpoint also holds ``high_layer_norm`` / ``low_layer_norm``. The reference builds them but never
applies them (its forward returns the raw tower outputs; the golden ``high_features`` / ``low_features`` confirm it),
so they are kept here only so the checkpoint loads and the parameter count matches, and are not used.

Each tower normalises its own input, so this encoder takes pixels in [0, 1]: its ``pixel_mean`` is (0, 0, 0) and its
``pixel_std`` is (1, 1, 1), and :meth:`HybridEncoder.transform` pads with the SAM tower's mean colour.

Shapes: ``forward(images)`` (B, 3, S, S) in [0, 1] -> ``(high, low)``, each (B, num_tokens, out_dim).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..registry import ENCODERS, CheckpointError, ConfigError, InputError
from ..registry.registry import build_child
from .base import UnderstandingEncoder
from . import sam as sam_module
from . import siglip as siglip_module
from .sam import SAMEncoder, convert_sam
from .siglip import SigLIPEncoder, convert_siglip
from .transforms import PadToSquare

RELEASED_HIGH = {"variant": "sam_b_downsample"}
RELEASED_LOW = {"variant": "siglip_large_patch16_384"}


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, 3, H, W) -> (images - mean) / std per channel, computed in float32 (the constants are not buffers, so a
    bfloat16 model keeps them exact) and returned in the images' dtype."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return ((images.float() - mean) / std).to(images.dtype)


# ---------------------------------------------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------------------------------------------
@ENCODERS.register("sam_siglip")
class HybridEncoder(UnderstandingEncoder):
    """SAM (high resolution) + SigLIP (low resolution) towers on the same image, returning both token sequences.

    Args:
        high: the SAM tower, a built :class:`SAMEncoder` (config: its keyword arguments under ``high``; default
            the released ``sam_b_downsample`` at 1024 px).
        low: the SigLIP tower, a built :class:`SigLIPEncoder` (config: its keyword arguments under ``low``;
            default the released ``siglip_large_patch16_384``). Its ``image_size`` is the size the image is
            resized to.

    Input: (B, 3, S, S) pixels in [0, 1], S = ``image_size`` (the SAM tower's). Output: a tuple
    ``(high, low)`` of (B, num_tokens, out_dim) tensors (released: two (B, 576, 1024)).
    """

    output_form = "pair"
    config_defaults = {"high": RELEASED_HIGH, "low": RELEASED_LOW}

    def __init__(self, high: SAMEncoder, low: SigLIPEncoder, *, where: str = "model.und_encoder"):
        super().__init__()
        self.vision_tower_high, self.vision_tower_low = high, low
        h, lo = self.vision_tower_high, self.vision_tower_low
        if h.out_dim != lo.out_dim or h.num_tokens != lo.num_tokens:
            raise ConfigError(
                f"{where}: the SAM tower gives {h.num_tokens} tokens of width {h.out_dim} but the SigLIP "
                f"tower {lo.num_tokens} of width {lo.out_dim}; the hybrid aligner needs both equal (change "
                f"downsample_channels / resample_size or the SigLIP width / image_size)"
            )
        # Present in the released checkpoint, never applied by the reference (see the module docstring).
        self.high_layer_norm = nn.LayerNorm(h.out_dim)
        self.low_layer_norm = nn.LayerNorm(lo.out_dim)

        # Input range this encoder expects from the image transform: raw [0, 1] pixels.
        self.pixel_mean = (0.0, 0.0, 0.0)
        self.pixel_std = (1.0, 1.0, 1.0)

    @classmethod
    def from_config(cls, kwargs: dict[str, Any], *, where: str) -> HybridEncoder:
        """Build the two towers from their keyword arguments (``high``, ``low``; released ones by default)."""
        high = build_child(SAMEncoder, kwargs["high"], where=f"{where}.high", label="SAM tower")
        low = build_child(SigLIPEncoder, kwargs["low"], where=f"{where}.low", label="SigLIP tower")
        return cls(high, low, where=where)

    @property
    def image_size(self) -> int:
        """Input side in pixels: the SAM tower's (released 1024)."""
        return self.vision_tower_high.image_size

    @property
    def low_image_size(self) -> int:
        """Side the SigLIP tower sees after resizing (released 384)."""
        return self.vision_tower_low.image_size

    @property
    def out_dim(self) -> int:
        """Width of each tower's tokens (both equal)."""
        return self.vision_tower_high.out_dim

    @property
    def num_tokens(self) -> int:
        """Tokens per image in each of the two sequences (both equal; released 576)."""
        return self.vision_tower_high.num_tokens

    def transform(self) -> PadToSquare:
        """The image transform: pad to a square of ``image_size`` with the SAM mean colour, keep pixels in [0, 1]."""
        background = tuple(int(m * 255) for m in self.vision_tower_high.pixel_mean)
        return PadToSquare(self.image_size, self.pixel_mean, self.pixel_std, background=background)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) pixels in [0, 1] -> (high (B, N, C), low (B, N, C))."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.image_size, self.image_size):
            raise InputError(
                f"the SAM+SigLIP encoder takes images (B, 3, {self.image_size}, {self.image_size}) in [0, 1], got "
                f"{tuple(images.shape)}; use encoder.transform() to prepare them"
            )
        import torchvision.transforms.functional as TF

        low_images = TF.resize(
            images, [self.low_image_size, self.low_image_size],
            interpolation=TF.InterpolationMode.BILINEAR, antialias=True,
        )
        high_tower, low_tower = self.vision_tower_high, self.vision_tower_low
        high = high_tower(_normalise(images, high_tower.pixel_mean, high_tower.pixel_std))
        low = low_tower(_normalise(low_images, low_tower.pixel_mean, low_tower.pixel_std))
        return high, low



# ---------------------------------------------------------------------------------------------------------------
# converter
# ---------------------------------------------------------------------------------------------------------------
def convert_deepseek_vl_vision(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released DeepSeek-VL ``vision_model.*`` names, minus the ``vision_model.`` prefix -> :class:`HybridEncoder`.

    ``vision_tower_high.vision_tower.*`` goes through :func:`~unimm.encoders.sam.convert_sam`,
    ``vision_tower_low.vision_tower.*`` through :func:`~unimm.encoders.siglip.convert_siglip`, and the two unused
    layer norms keep their names.

    Raises:
        CheckpointError: listing every key that belongs to none of these.
    """
    high, low, out, unexpected = {}, {}, {}, []
    for key, value in state_dict.items():
        if key.startswith("vision_tower_high."):
            high[key[len("vision_tower_high."):]] = value
        elif key.startswith("vision_tower_low."):
            low[key[len("vision_tower_low."):]] = value
        elif key.startswith(("high_layer_norm.", "low_layer_norm.")):
            out[key] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointError(
            "not DeepSeek-VL hybrid vision keys (expected vision_tower_high., vision_tower_low., high_layer_norm. or "
            f"low_layer_norm., with the 'vision_model.' prefix removed): {', '.join(sorted(unexpected))}"
        )
    towers = (("vision_tower_high.", convert_sam, high), ("vision_tower_low.", convert_siglip, low))
    for prefix, convert, part in towers:
        try:
            out.update({prefix + k: v for k, v in convert(part).items()})
        except CheckpointError as err:
            raise CheckpointError(f"under {prefix}: {err}") from err
    return out


def from_released_config(vision_params: Mapping) -> dict:
    """Map a released DeepSeek-VL ``vision_config.params`` dict (``high_res_cfg``, ``low_res_cfg``,
    ``concat_type``) to :class:`HybridEncoder` kwargs.

    Raises:
        CheckpointError: a ``concat_type`` other than ``tuple`` (the only one the released models use).
    """
    concat = vision_params.get("concat_type", "tuple")
    if concat != "tuple":
        raise CheckpointError(
            f"DeepSeek-VL concat_type '{concat}' is not supported: unimm's hybrid encoder returns the two towers as "
            f"a tuple for the low_high_hybrid_split_mlp_gelu aligner (concat_type 'tuple')"
        )
    high_cfg = dict(vision_params["high_res_cfg"])
    low_cfg = dict(vision_params["low_res_cfg"])
    low = siglip_module.from_released_params(low_cfg)
    for key in ("pixel_mean", "pixel_std"):
        if low_cfg.get(key) is not None:
            low[key] = tuple(low_cfg[key])
    return dict(high=sam_module.from_released_params(high_cfg), low=low)
