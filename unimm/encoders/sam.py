"""SAM-B high-resolution vision tower of DeepSeek-VL (``sam_b_downsample``).

Kirillov et al., "Segment Anything" (2023) gives the image encoder: a plain ViT-B/16 at 1024 px with absolute
position embeddings, 14 x 14 windowed attention in most blocks and global attention in a few, both with decomposed
relative positions (Li et al., "MViTv2", 2022), then a "neck" (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) to 256
channels. Lu et al., "DeepSeek-VL: Towards Real-World Vision-Language Understanding" (2024) use it as the
high-resolution half of their hybrid encoder and add:

* the SAM-HD branch: the output of the *first* global-attention block goes through its own neck (``neck_hd``);
* both necks' maps are resized to 96 x 96 (bilinear, no antialias) and pass through the same two 3x3 stride-2
  convolutions (``downsamples``, 256 -> 512 -> 1024 channels), giving a 24 x 24 grid;
* the HD map is added to the main one, scaled by a learned scalar ``hd_alpha_downsamples`` (initialised to 0).

The trunk (patch embedding, position embedding, blocks, neck) is timm's ``VisionTransformerSAM`` unchanged: its
``Block``/``Attention`` compute exactly the DeepSeek-VL math (pre-norm block, windowed attention with zero padding,
``get_rel_pos`` / decomposed rel-pos bias added to the scaled logits - timm passes the bias as the ``attn_mask`` of
``scaled_dot_product_attention``, which is the same sum), LayerNorm eps 1e-6, exact GELU. Only two names differ from
the released checkpoint (the MLP's ``lin1``/``lin2`` are timm's ``fc1``/``fc2``), which :func:`convert_sam` maps.
The SAM-HD branch, the resampling and the downsampling convolutions exist in no library, so they are written here.

Shapes: ``forward(pixel_values)`` (B, 3, S, S) normalised -> (B, G*G, C) tokens (the G x G map flattened row-major,
as the reference's hybrid tower does), C the last downsample width, G = resample_size / 2**len(downsample_channels)
(released: (B, 576, 1024)); ``forward_map`` gives the (B, C, G, G) map itself.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import ENCODERS, CheckpointError, ConfigError
from ..registry.variants import resolve_sizes
from .base import UnderstandingEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Released SAM towers, as named in the DeepSeek-VL configs. The reference fixes window_size = 14, the neck width
# (its ``prompt_embed_dim``) at 256 and the resampled grid at 96 for every variant.
SAM_VARIANTS: dict[str, dict] = {
    "sam_b_downsample": dict(
        image_size=1024, patch_size=16, width=768, layers=12, heads=12, mlp_ratio=4.0,
        global_attn_indexes=(2, 5, 8, 11), window_size=14, neck_dim=256, downsample_channels=(512, 1024),
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------------------------------------------
@ENCODERS.register("sam")
class SAMEncoder(UnderstandingEncoder):
    """SAM ViT with the DeepSeek-VL SAM-HD branch and stride-2 downsampling, returning a feature map.

    Args:
        variant: a released name from ``SAM_VARIANTS`` (``sam_b_downsample``), or None to give every size. Explicit
            sizes override the variant's.
        image_size: input side in pixels (released 1024).
        patch_size, width, layers, heads, mlp_ratio: ViT trunk.
        global_attn_indexes: blocks with global attention; the others attend within windows. The first one feeds the
            SAM-HD branch, so at least one is needed.
        window_size: side of the attention windows (the reference always uses 14).
        neck_dim: channels of both necks (released 256).
        downsample_channels: output channels of the stride-2 3x3 convolutions (released (512, 1024)).
        resample_size: side the neck maps are resized to before downsampling (the reference fixes 96).
        pixel_mean, pixel_std: the normalisation this tower expects its input to have had (CLIP's).

    Input: (B, 3, image_size, image_size) normalised pixels. Output: (B, num_tokens, out_dim) tokens, row-major
    over the (grid_size x grid_size) map that :meth:`forward_map` returns.
    """

    def __init__(
        self,
        variant: str | None = "sam_b_downsample",
        image_size: int | None = None,
        patch_size: int | None = None,
        width: int | None = None,
        layers: int | None = None,
        heads: int | None = None,
        mlp_ratio: float | None = None,
        global_attn_indexes: Sequence[int] | None = None,
        window_size: int | None = None,
        neck_dim: int | None = None,
        downsample_channels: Sequence[int] | None = None,
        resample_size: int = 96,
        pixel_mean: Sequence[float] = CLIP_MEAN,
        pixel_std: Sequence[float] = CLIP_STD,
        *,
        where: str = "model.und_encoder",
    ):
        super().__init__()
        from timm.models.vision_transformer_sam import VisionTransformerSAM

        sizes = resolve_sizes(
            dict(image_size=image_size, patch_size=patch_size, width=width, layers=layers, heads=heads,
                 mlp_ratio=mlp_ratio, global_attn_indexes=global_attn_indexes, window_size=window_size,
                 neck_dim=neck_dim, downsample_channels=downsample_channels),
            variant, SAM_VARIANTS, family="SAM", where=where,
            defaults={"window_size": 14, "mlp_ratio": 4.0},  # the reference fixes these for every SAM tower
        )
        if sizes["image_size"] % sizes["patch_size"]:
            raise ConfigError(
                f"{where}: SAM image_size {sizes['image_size']} is not a multiple of patch_size "
                f"{sizes['patch_size']}"
            )
        globals_ = sorted(int(i) for i in sizes["global_attn_indexes"])
        if not globals_ or globals_[0] < 0 or globals_[-1] >= sizes["layers"]:
            raise ConfigError(
                f"{where}.global_attn_indexes {list(sizes['global_attn_indexes'])} must name at least one "
                f"block in 0..{sizes['layers'] - 1} (the first global block feeds the SAM-HD branch)"
            )
        if sizes["window_size"] < 1:
            raise ConfigError(
                f"{where}.window_size {sizes['window_size']} must be at least 1: the blocks outside "
                f"global_attn_indexes attend within windows"
            )
        n_down = len(sizes["downsample_channels"])
        if resample_size % (2 ** n_down):
            raise ConfigError(
                f"{where}.resample_size {resample_size} must be divisible by 2**{n_down} "
                f"(one halving per downsample convolution)"
            )

        self.variant = variant
        self.image_size = int(sizes["image_size"])
        self.patch_size = int(sizes["patch_size"])
        self.global_attn_indexes = tuple(globals_)
        self.resample_size = int(resample_size)
        self.pixel_mean = tuple(pixel_mean)
        self.pixel_std = tuple(pixel_std)
        neck_dim = int(sizes["neck_dim"])

        # Trunk + neck: timm's SAM ViT (classifier head disabled, no parameters in it).
        self.vit = VisionTransformerSAM(
            img_size=self.image_size,
            patch_size=self.patch_size,
            num_classes=0,
            embed_dim=int(sizes["width"]),
            depth=int(sizes["layers"]),
            num_heads=int(sizes["heads"]),
            mlp_ratio=float(sizes["mlp_ratio"]),
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            act_layer=nn.GELU,
            use_abs_pos=True,
            use_rel_pos=True,
            window_size=int(sizes["window_size"]),
            global_attn_indexes=self.global_attn_indexes,
            neck_chans=neck_dim,
            weight_init="skip",
        )
        # SAM-HD branch: a second neck of the same form on the first global block's output.
        self.neck_hd = copy.deepcopy(self.vit.neck)
        convs, channels = [], neck_dim
        for out_channels in sizes["downsample_channels"]:
            convs.append(nn.Conv2d(channels, int(out_channels), kernel_size=3, stride=2, padding=1, bias=False))
            channels = int(out_channels)
        self.downsamples = nn.Sequential(*convs)
        self.hd_alpha_downsamples = nn.Parameter(torch.zeros(1))
        self._out_dim = channels

    @property
    def out_dim(self) -> int:
        """Width of each token (channels of the map)."""
        return self._out_dim

    @property
    def grid_size(self) -> int:
        """Side of the output map."""
        return self.resample_size // (2 ** len(self.downsamples))

    @property
    def num_tokens(self) -> int:
        """Cells of the output map, i.e. tokens once flattened (released 576)."""
        return self.grid_size ** 2

    def _resample_and_downsample(self, x: torch.Tensor) -> torch.Tensor:
        # The reference resizes in float32 whatever the compute dtype, then casts back.
        size = (self.resample_size, self.resample_size)
        x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False).to(x.dtype)
        return self.downsamples(x)

    def forward_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> feature map (B, out_dim, grid_size, grid_size)."""
        neck, (first_global,) = self.vit.forward_intermediates(
            pixel_values, indices=[self.global_attn_indexes[0]], norm=False, output_fmt="NCHW"
        )
        main = self._resample_and_downsample(neck)
        hd = self._resample_and_downsample(self.neck_hd(first_global))
        return main + hd * self.hd_alpha_downsamples

    def fsdp_units(self) -> list[nn.Module]:
        """Each of timm's ``VisionTransformerSAM`` blocks, then the encoder (embeddings, necks, downsamples)."""
        return [*self.vit.blocks, self]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, num_tokens, out_dim), the map flattened row-major."""
        return self.forward_map(pixel_values).flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------
# converter
# ---------------------------------------------------------------------------------------------------------------
_TRUNK_PREFIXES = ("pos_embed", "patch_embed.", "blocks.", "neck.")
_OWN_PREFIXES = ("neck_hd.", "downsamples.", "hd_alpha_downsamples")


def convert_sam(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released ``vision_tower.*`` names (DeepSeek-VL ``vision_model.vision_tower_high.vision_tower.*`` minus
    ``vision_model.vision_tower_high.``) -> :class:`SAMEncoder` names.

    Trunk and neck go under ``vit.`` with the MLP's ``lin1``/``lin2`` renamed to timm's ``fc1``/``fc2``; the SAM-HD
    neck, the downsample convolutions and the HD scale keep their names.

    Raises:
        CheckpointError: listing every key that is not a released SAM-tower key.
    """
    out, unexpected = {}, []
    for key, value in state_dict.items():
        if not key.startswith("vision_tower."):
            unexpected.append(key)
            continue
        name = key[len("vision_tower."):]
        if name.startswith(_OWN_PREFIXES):
            out[name] = value
        elif name.startswith(_TRUNK_PREFIXES):
            name = name.replace(".mlp.lin1.", ".mlp.fc1.").replace(".mlp.lin2.", ".mlp.fc2.")
            out["vit." + name] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise CheckpointError(
            f"not released SAM-tower keys (expected 'vision_tower.' followed by pos_embed, patch_embed, blocks, "
            f"neck, neck_hd, downsamples or hd_alpha_downsamples): {', '.join(sorted(unexpected))}"
        )
    return out


def from_released_params(params: dict) -> dict:
    """Map a released DeepSeek-VL ``high_res_cfg`` dict to :class:`SAMEncoder` kwargs.

    Released names (``sam_b_downsample``) pick a variant; explicit sizes in ``params`` (any of the constructor's size
    arguments) win, so tiny test towers can be described in the same dict.
    """
    name = params.get("model_name", "sam_b_downsample")
    if not name.startswith("sam"):
        raise CheckpointError(f"high-resolution tower '{name}' is not a SAM model; unimm loads SAM towers here")
    kwargs = dict(variant=name if name in SAM_VARIANTS else None, image_size=params.get("image_size"))
    for key in ("patch_size", "width", "layers", "heads", "mlp_ratio", "global_attn_indexes", "window_size",
                "neck_dim", "downsample_channels", "pixel_mean", "pixel_std"):
        if params.get(key) is not None:
            kwargs[key] = params[key]
    if params.get("select_layer", -1) != -1:
        raise CheckpointError(
            f"SAM tower select_layer {params['select_layer']}: the reference ignores it and always returns the "
            f"downsampled neck output; remove it or set it to -1"
        )
    return kwargs
