"""SigLIP vision transformer: the understanding encoder of Janus, Janus-Pro and JanusFlow.

Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (2023). Janus uses SigLIP-Large/16 at 384 px: 24 blocks
of width 1024, 16 heads, MLP ratio 4, no class token, a learned-latent attention-pool head (kept in the checkpoint,
unused), giving 24 x 24 = 576 patch tokens. The network is timm's ``VisionTransformer`` unchanged; this module only
chooses its sizes, truncates it at ``select_layer`` the way the reference does, and owns the image transform.

Shapes: ``forward(pixel_values)`` (B, 3, S, S), normalised -> (B, (S / patch)^2, width).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..registry import ENCODERS, CheckpointError, ConfigError
from ..registry.variants import resolve_sizes
from .base import UnderstandingEncoder

#: The image processors a SigLIP encoder's transform can follow (``image_processor``).
IMAGE_PROCESSORS = ("reference", "transformers")

# Released SigLIP towers, as named in the Janus / DeepSeek-VL configs.
SIGLIP_VARIANTS: dict[str, dict] = {
    "siglip_large_patch16_384": dict(image_size=384, patch_size=16, width=1024, layers=24, heads=16, mlp_ratio=4.0),
    "siglip_so400m_patch14_384": dict(image_size=384, patch_size=14, width=1152, layers=27, heads=16, mlp_ratio=3.7362),
}


@ENCODERS.register("siglip")
class SigLIPEncoder(UnderstandingEncoder):
    """SigLIP ViT returning patch tokens (no class token), built on timm's ``VisionTransformer``.

    Args:
        variant: a released name from ``SIGLIP_VARIANTS``, or None to give every size explicitly. Explicit sizes
            override the variant's.
        image_size, patch_size, width, layers, heads, mlp_ratio: architecture.
        select_layer: which block's output to return; -1 is the last. The network is truncated there (the
            reference does the same), so ``layers + select_layer + 1`` blocks are built for negative values.
        pixel_mean, pixel_std: the normalisation the image transform applies (SigLIP: 0.5 / 0.5).
        path: a folder written by :meth:`save` (e.g. by :func:`unimm.train.encoder.pretrain_encoder`): its
            ``config.json`` gives the sizes (sizes written here must agree; ``variant`` is not read) and its
            weights are loaded.
        attention_pool: keep SigLIP's attention-pool ("MAP") head. The released checkpoints hold it (Janus never
            reads it); transformers' ``JanusVisionModel`` has none, so folders in its layout build without it.
        image_processor: how :meth:`transform` prepares pictures. ``"reference"``: the released
            ``VLMImageProcessor`` (PIL resize of the long side with truncated sizes, pad, normalise);
            ``"transformers"``: transformers' own ``JanusImageProcessor`` (tensor resize with rounded sizes), which
            folders in transformers' Janus layout use. The two differ by a pixel of size or a level of colour.
        position_codes: add fixed 2-D sin-cos codes of each patch's row and column (timm's
            ``build_sincos2d_pos_embed``, as MAE's) to the output tokens. Off for the released models, whose
            SigLIP tokens carry where they are; a small ViT pre-trained to pool object labels
            (:mod:`unimm.train.encoder`) keeps almost none of that, and the LLM then cannot tell left from right.
            The codes are not weights: a checkpoint loads the same with or without them.

    Input: (B, 3, image_size, image_size) normalised pixels. Output: (B, num_tokens, out_dim).
    """

    def __init__(
        self,
        variant: str | None = "siglip_large_patch16_384",
        image_size: int | None = None,
        patch_size: int | None = None,
        width: int | None = None,
        layers: int | None = None,
        heads: int | None = None,
        mlp_ratio: float | None = None,
        select_layer: int = -1,
        pixel_mean: Sequence[float] = (0.5, 0.5, 0.5),
        pixel_std: Sequence[float] = (0.5, 0.5, 0.5),
        path: str | None = None,
        attention_pool: bool = True,
        image_processor: str = "reference",
        position_codes: bool = False,
        *,
        where: str = "model.und_encoder",
    ):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        given = dict(image_size=image_size, patch_size=patch_size, width=width, layers=layers, heads=heads,
                     mlp_ratio=mlp_ratio)
        if path is not None:
            from ..checkpoint.io import read_part_config

            if select_layer != -1:
                raise ConfigError(f"{where}: a saved encoder (path) is used whole; drop select_layer")
            sizes = read_part_config(path, given, where, (*given, "pixel_mean", "pixel_std"))
            pixel_mean, pixel_std = sizes.pop("pixel_mean", pixel_mean), sizes.pop("pixel_std", pixel_std)
        else:
            sizes = resolve_sizes(given, variant, SIGLIP_VARIANTS, family="SigLIP", where=where)
        if image_processor not in IMAGE_PROCESSORS:
            raise ConfigError(f"{where}.image_processor = {image_processor!r}: use one of "
                              f"{', '.join(IMAGE_PROCESSORS)}")
        if sizes["image_size"] % sizes["patch_size"]:
            raise ConfigError(
                f"{where}: image_size {sizes['image_size']} is not a multiple of patch_size "
                f"{sizes['patch_size']}"
            )
        depth = sizes["layers"] + select_layer + 1 if select_layer < 0 else select_layer
        if not 1 <= depth <= sizes["layers"]:
            raise ConfigError(f"{where}.select_layer {select_layer} is outside 1..{sizes['layers']} blocks")

        self.variant = None if path is not None else variant
        self.image_size = int(sizes["image_size"])
        self.patch_size = int(sizes["patch_size"])
        self.pixel_mean = tuple(pixel_mean)
        self.pixel_std = tuple(pixel_std)
        self.image_processor = image_processor
        self.vit = VisionTransformer(
            img_size=self.image_size,
            patch_size=self.patch_size,
            embed_dim=int(sizes["width"]),
            depth=depth,
            num_heads=int(sizes["heads"]),
            mlp_ratio=float(sizes["mlp_ratio"]),
            class_token=False,
            global_pool="map" if attention_pool else "",
            num_classes=0,
        )
        #: The sizes as built (``layers`` counts the blocks kept): what :meth:`save` writes and ``path`` reads.
        self.architecture = dict(image_size=self.image_size, patch_size=self.patch_size, width=int(sizes["width"]),
                                 layers=depth, heads=int(sizes["heads"]), mlp_ratio=float(sizes["mlp_ratio"]),
                                 pixel_mean=list(self.pixel_mean), pixel_std=list(self.pixel_std))
        self.position_codes = bool(position_codes)
        if self.position_codes:
            from timm.layers import build_sincos2d_pos_embed

            side = self.image_size // self.patch_size
            if self.vit.embed_dim % 4:
                raise ConfigError(f"{where}.position_codes needs a width divisible by 4, got {self.vit.embed_dim}")
            codes = build_sincos2d_pos_embed([side, side], dim=self.vit.embed_dim)  # (side * side, width), row-major
            self.register_buffer("grid_codes", codes.unsqueeze(0), persistent=False)
        if path is not None:
            from ..checkpoint.io import load_into, load_weights

            load_into(self, load_weights(path), source=str(path))
            self.source_path = str(path)

    @property
    def out_dim(self) -> int:
        """Width of each output token."""
        return self.vit.embed_dim

    @property
    def num_tokens(self) -> int:
        """Tokens per image: (image_size / patch_size)^2."""
        return (self.image_size // self.patch_size) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, num_tokens, out_dim) patch features after the final norm (plus
        the grid's codes with ``position_codes``)."""
        tokens = self.vit.forward_features(pixel_values)
        return tokens + self.grid_codes.to(tokens.dtype) if self.position_codes else tokens

    def adapt_checkpoint(self, state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """Position embeddings saved for another image size are resampled to this one (bicubic, timm's own
        ``resample_abs_pos_embed``), so a model trained at 384 px can read 512 px images or be fine-tuned there."""
        key = f"{prefix}vit.pos_embed"
        saved = state.get(key)
        if saved is None or saved.shape == self.vit.pos_embed.shape:
            return state
        from timm.layers import resample_abs_pos_embed

        side = self.image_size // self.patch_size
        return {**state, key: resample_abs_pos_embed(saved, new_size=[side, side], num_prefix_tokens=0)}

    def transform(self):
        """The image transform :attr:`image_processor` names (see the class docstring)."""
        if self.image_processor == "transformers":
            from .transforms import TransformersJanusTransform

            return TransformersJanusTransform(self.image_size, self.pixel_mean, self.pixel_std)
        return super().transform()

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, num_tokens, width) tokens from :meth:`forward` -> (B, width): one embedding per image from SigLIP's
        attention-pool ("MAP") head, the pooling its image-text pre-training uses (Janus keeps the head in the
        checkpoint but reads patch tokens)."""
        if self.vit.attn_pool is None:
            raise ConfigError("model.und_encoder: this SigLIP encoder has no attention-pool head "
                              "(attention_pool: false); pool its patch tokens yourself")
        return self.vit.forward_head(tokens)

    def save(self, folder: str | Path, notes: dict | None = None) -> Path:
        """Write ``config.json`` (:attr:`architecture` plus ``notes``) and ``model.safetensors``;
        ``siglip(path=folder)`` reads them."""
        from ..checkpoint.io import save_part

        return save_part(self, self.architecture, folder, extra=notes)

    def fsdp_units(self) -> list[nn.Module]:
        """Each transformer block (timm's ``Block``), then the encoder (patch embedding, norm, pool)."""
        return [*self.vit.blocks, self]

    def folded_config(self) -> dict | None:
        """:attr:`architecture` when loaded from a folder (``path``), else None."""
        return dict(self.architecture) if self.source_path is not None else None


def convert_siglip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released ``vision_tower.*`` names (Janus ``vision_model.vision_tower.*`` minus the prefix) -> ``vit.*``."""
    out = {}
    for key, value in state_dict.items():
        if not key.startswith("vision_tower."):
            raise CheckpointError(f"unexpected SigLIP key '{key}': released SigLIP keys start with 'vision_tower.'")
        out["vit." + key[len("vision_tower."):]] = value
    return out


def from_released_params(params: dict) -> dict:
    """Map a released ``CLIPVisionTower`` params dict (Janus config.json) to :class:`SigLIPEncoder` kwargs.

    Released names (``siglip_large_patch16_384``) pick a variant; tiny test configs name an unknown model and
    carry ``width``/``layers``/``heads``/``mlp_ratio``/``patch_size`` explicitly, which win.
    """
    name = params.get("model_name", "siglip_large_patch16_384")
    if not name.startswith("siglip"):
        raise CheckpointError(f"understanding tower '{name}' is not a SigLIP model; unimm loads SigLIP towers here")
    kwargs = dict(variant=name if name in SIGLIP_VARIANTS else None, image_size=params.get("image_size"),
                  select_layer=params.get("select_layer", -1))
    for key in ("patch_size", "width", "layers", "heads", "mlp_ratio"):
        if key in params:
            kwargs[key] = params[key]
    return kwargs
