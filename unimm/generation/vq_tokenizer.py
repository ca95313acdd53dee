"""The LlamaGen VQ image tokenizer that Janus and Janus-Pro generate with.

Sun et al., "Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation" (LlamaGen, 2024), VQ-16:
a VQGAN-style convolutional encoder downsamples an image 16x, a 1x1 convolution projects it to 8 channels, each
8-vector is replaced by its nearest entry of an l2-normalised codebook (16384 codes), and a mirrored decoder turns
the quantised grid back into pixels. Janus (Wu et al., 2024) and Janus-Pro (Chen et al., 2025) use it unchanged
to turn 384x384 images into 24x24 = 576 discrete tokens for the language model to predict.

The encoder and decoder are taming-transformers' ``Encoder`` / ``Decoder`` (the same architecture, with
attention only at the lowest resolution); only the quantiser and the two 1x1 convolutions are written here,
because taming's quantisers use unnormalised Euclidean codebooks. ``convert_janus_vq`` maps the released
``gen_vision_model.*`` names onto this module.

Shapes: images (B, 3, H, W) in [-1, 1]; latents (B, C, H/16, W/16) with C = ``embed_dim``; codes (B, h*w) long,
row-major over the latent grid.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from taming.modules.diffusionmodules.model import Decoder, Encoder
from torch import nn

from ..registry import AUTOENCODERS, CheckpointError, ConfigError, InputError
from ..registry.variants import resolve_sizes
from .autoencoder import DiscreteAutoencoder, check_images


@dataclass
class VQLoss:
    """Quantiser losses of one forward pass (VQ-VAE, van den Oord et al. 2017).

    Attributes:
        loss: ``codebook + commitment``, the term to add to the reconstruction loss.
        codebook: mean ||z_q - sg(z)||^2, moves the codes toward the encoder outputs.
        commitment: beta * mean ||sg(z_q) - z||^2, keeps the encoder close to its codes (beta included).
    """

    loss: torch.Tensor
    codebook: torch.Tensor
    commitment: torch.Tensor


# -- blocks ------------------------------------------------------------------------------------------------------
class VectorQuantizerL2(nn.Module):
    """Nearest-code quantiser over an l2-normalised codebook (cosine similarity), with a straight-through gradient.

    Both the latent vectors and the codebook rows are normalised to unit length, so the nearest code in
    Euclidean distance is the one with the largest cosine similarity.

    Args:
        codebook_size: number of codes K.
        embed_dim: code width C.
        beta: weight of the commitment loss.

    Shapes: ``forward(z)`` z (B, C, h, w) -> (z_q (B, C, h, w), codes (B, h*w), VQLoss);
    ``lookup(codes (B, N), grid=(h, w))`` -> (B, C, h, w).
    """

    def __init__(self, codebook_size: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.beta = beta
        self.embedding = nn.Embedding(codebook_size, embed_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)

    def codebook(self) -> torch.Tensor:
        """The normalised codebook, (K, C)."""
        return F.normalize(self.embedding.weight, p=2, dim=-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, VQLoss]:
        b, c, h, w = z.shape
        z = F.normalize(z.permute(0, 2, 3, 1), p=2, dim=-1)  # (B, h, w, C)
        codebook = self.codebook()
        codes = (z.reshape(-1, c) @ codebook.t()).argmax(dim=-1)
        z_q = codebook[codes].view_as(z)
        codebook_loss = torch.mean((z_q - z.detach()) ** 2)
        commitment = self.beta * torch.mean((z_q.detach() - z) ** 2)
        z_q = z + (z_q - z).detach()  # straight-through: the decoder's gradient reaches the encoder unchanged
        loss = VQLoss(codebook_loss + commitment, codebook_loss, commitment)
        return z_q.permute(0, 3, 1, 2).contiguous(), codes.view(b, h * w), loss

    def lookup(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        h, w = grid
        z_q = self.codebook()[codes]  # (B, N, C)
        return z_q.view(codes.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()


# -- module ------------------------------------------------------------------------------------------------------
class VQTokenizer(DiscreteAutoencoder):
    """LlamaGen VQ image tokenizer: taming encoder -> 1x1 conv -> l2 codebook -> 1x1 conv -> taming decoder.

    Args:
        ch: base channel width of encoder and decoder.
        ch_mult: channel multiplier per resolution level; ``len(ch_mult) - 1`` 2x downsamplings.
        z_channels: width of the encoder output / decoder input.
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        codebook_size: number of codes.
        codebook_embed_dim: width of a code.
        image_size: nominal image size in pixels (the model is fully convolutional; this only sets
            ``num_tokens``).
        beta: commitment-loss weight.

    Shapes: ``encode`` (B, 3, H, W) -> (quant (B, C, H/d, W/d), codes (B, H/d * W/d)) with d = ``downsample``;
    ``decode`` quant -> (B, 3, H, W); ``decode_codes(codes, grid)`` -> (B, 3, h*d, w*d);
    ``forward`` images -> (reconstruction, VQLoss).
    """

    def __init__(
        self,
        ch: int,
        ch_mult: list[int] | tuple[int, ...],
        z_channels: int,
        codebook_size: int,
        codebook_embed_dim: int,
        num_res_blocks: int = 2,
        image_size: int = 384,
        beta: float = 0.25,
    ):
        super().__init__()
        self.image_size = image_size
        self.architecture = dict(ch=ch, ch_mult=list(ch_mult), z_channels=z_channels, codebook_size=codebook_size,
                                 codebook_embed_dim=codebook_embed_dim, num_res_blocks=num_res_blocks,
                                 image_size=image_size, beta=beta)
        levels = len(ch_mult)
        # taming places attention blocks where the running resolution is in ``attn_resolutions``. LlamaGen has
        # attention only at the lowest level; a nominal resolution of 2**(levels-1) makes that level exactly 1,
        # whatever the real image size (the convolutions do not depend on it).
        common = dict(
            ch=ch,
            out_ch=3,
            ch_mult=tuple(ch_mult),
            num_res_blocks=num_res_blocks,
            attn_resolutions=[1],
            dropout=0.0,
            in_channels=3,
            resolution=2 ** (levels - 1),
            z_channels=z_channels,
        )
        self.encoder = Encoder(double_z=False, **common)
        with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints the latent shape
            self.decoder = Decoder(**common)
        self.quant_conv = nn.Conv2d(z_channels, codebook_embed_dim, 1)
        self.quantize = VectorQuantizerL2(codebook_size, codebook_embed_dim, beta)
        self.post_quant_conv = nn.Conv2d(codebook_embed_dim, z_channels, 1)

    # -- sizes ---------------------------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        return self.quantize.embedding.num_embeddings

    @property
    def embed_dim(self) -> int:
        return self.quantize.embedding.embedding_dim

    @property
    def downsample(self) -> int:
        """Pixels per latent cell along each side (16 for VQ-16)."""
        return 2 ** (self.encoder.num_resolutions - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of the quantised latents: the code width."""
        return self.embed_dim

    @property
    def num_tokens(self) -> int:
        """Codes per image at the nominal ``image_size``."""
        return self.latent_grid(self.image_size) ** 2

    # -- compute -------------------------------------------------------------------------------------------------
    def _quantize(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, VQLoss]:
        check_images(images, self.downsample, "the VQ tokenizer")
        return self.quantize(self.quant_conv(self.encoder(images)))

    def quantize_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> (quantised latents (B, C, h, w), codes (B, h*w) row-major)."""
        quant, codes, _ = self._quantize(images)
        return quant, codes

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Quantised latents (B, C, h, w) -> images (B, 3, h*d, w*d)."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_codes(self, codes: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Codes (B, N) -> images (B, 3, h*d, w*d). ``grid`` = (h, w) with h*w = N; default square."""
        if codes.ndim != 2:
            raise InputError(f"expected codes of shape (B, N), got {tuple(codes.shape)}")
        n = codes.shape[1]
        if grid is None:
            side = int(round(n**0.5))
            if side * side != n:
                raise InputError(f"{n} codes do not form a square grid; pass grid=(h, w) with h * w = {n}")
            grid = (side, side)
        if grid[0] * grid[1] != n:
            raise InputError(f"grid {tuple(grid)} holds {grid[0] * grid[1]} codes but {n} were given")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise InputError(
                f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]"
            )
        return self.decode(self.quantize.lookup(codes, tuple(grid)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, VQLoss]:
        """Reconstruct images (B, 3, H, W) through the codebook; returns (reconstruction, VQLoss)."""
        quant, _, loss = self._quantize(images)
        return self.decode(quant), loss

    def reconstruction_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L1 + L2 reconstruction plus the codebook and commitment terms (VQ-VAE). LlamaGen adds a perceptual and
        a GAN loss for natural images; flat synthetic shapes do not need them."""
        recon, vq = self(images)
        rec = F.l1_loss(recon, images) + F.mse_loss(recon, images)
        return rec + vq.loss, {"reconstruction": rec.detach(), "codebook": vq.codebook.detach(),
                               "commitment": vq.commitment.detach()}

    def folded_config(self) -> dict | None:
        """The sizes in :attr:`architecture` when loaded from a folder (``path``), else None."""
        return dict(self.architecture) if self.source_path is not None else None

    # -- files ---------------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` (the sizes) and ``model.safetensors``; ``llamagen_vq(path=folder)`` reads them."""
        from ..checkpoint.io import save_part

        return save_part(self, self.architecture, folder)


# -- converter ---------------------------------------------------------------------------------------------------
# The released LlamaGen / Janus VQ model stores a usage counter ``quantize.codebook_used`` (65536 floats, filled
# only during LlamaGen training and never read at inference). It is dropped here: unimm has no such buffer, and
# ``to_janus_vq`` writes back zeros so the reference code still loads strictly.
_CODEBOOK_USED = "quantize.codebook_used"
_CODEBOOK_USED_SIZE = 65536

_PLAIN = re.compile(r"(quant_conv|post_quant_conv|quantize\.embedding)\.(weight|bias)$")
_ENDS = re.compile(r"(encoder|decoder)\.(conv_in|norm_out|conv_out)\..+$")
_MID = {"0": "block_1", "1": "attn_1", "2": "block_2"}
_RELEASED_MID = re.compile(r"(encoder|decoder)\.mid\.([012])\.(.+)$")
_RELEASED_LEVEL = re.compile(r"(encoder|decoder)\.conv_blocks\.(\d+)\.(res|attn|downsample|upsample)\.(.+)$")
_UNIMM_MID = re.compile(r"(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.(.+)$")
_UNIMM_LEVEL = re.compile(r"(encoder|decoder)\.(down|up)\.(\d+)\.(block|attn|downsample|upsample)\.(.+)$")


def _num_decoder_levels(keys, pattern: re.Pattern, group: int) -> int:
    levels = {int(m.group(group)) for k in keys if (m := pattern.match(k)) and m.group(1) == "decoder"}
    return max(levels) + 1 if levels else 0


def convert_janus_vq(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released LlamaGen / Janus VQ names (``gen_vision_model.`` prefix already removed) -> ``VQTokenizer`` names.

    ``encoder.conv_blocks.i.res.j`` -> ``encoder.down.i.block.j``; ``mid.0/1/2`` -> ``mid.block_1/attn_1/block_2``;
    the decoder's ``conv_blocks`` run from the lowest resolution up, so ``decoder.conv_blocks.i`` ->
    ``decoder.up.(L-1-i)``. ``quantize.codebook_used`` is dropped (see above).

    Raises:
        CheckpointError: listing every key that is not a released VQ name.
    """
    levels = _num_decoder_levels(state_dict, _RELEASED_LEVEL, 2)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key == _CODEBOOK_USED:
            continue
        if _PLAIN.match(key) or _ENDS.match(key):
            out[key] = value
        elif m := _RELEASED_MID.match(key):
            out[f"{m.group(1)}.mid.{_MID[m.group(2)]}.{m.group(3)}"] = value
        elif m := _RELEASED_LEVEL.match(key):
            part, level, kind, rest = m.groups()
            if part == "encoder":
                out[f"encoder.down.{level}.{'block' if kind == 'res' else kind}.{rest}"] = value
            else:
                out[f"decoder.up.{levels - 1 - int(level)}.{'block' if kind == 'res' else kind}.{rest}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"convert_janus_vq: {len(unknown)} key(s) are not LlamaGen VQ names: {', '.join(sorted(unknown))}. "
            "Pass only the gen_vision_model.* entries with that prefix removed"
        )
    return out


def to_janus_vq(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_janus_vq`: ``VQTokenizer`` names -> released names (with a zero usage counter)."""
    levels = _num_decoder_levels(state_dict, _UNIMM_LEVEL, 3)
    inverse_mid = {v: k for k, v in _MID.items()}
    out: dict[str, torch.Tensor] = {}
    unknown = []
    reference = None
    for key, value in state_dict.items():
        reference = value
        if _PLAIN.match(key) or _ENDS.match(key):
            out[key] = value
        elif m := _UNIMM_MID.match(key):
            out[f"{m.group(1)}.mid.{inverse_mid[m.group(2)]}.{m.group(3)}"] = value
        elif m := _UNIMM_LEVEL.match(key):
            part, _, level, kind, rest = m.groups()
            kind = "res" if kind == "block" else kind
            index = int(level) if part == "encoder" else levels - 1 - int(level)
            out[f"{part}.conv_blocks.{index}.{kind}.{rest}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"to_janus_vq: {len(unknown)} key(s) are not VQTokenizer names: {', '.join(sorted(unknown))}"
        )
    if reference is not None:
        out[_CODEBOOK_USED] = torch.zeros(_CODEBOOK_USED_SIZE, dtype=reference.dtype, device=reference.device)
    return out


# -- registered variants -----------------------------------------------------------------------------------------
VQ_VARIANTS: dict[str, dict] = {
    # Janus, Janus-Pro: LlamaGen VQ-16 (released name "VQ-16"), 384 px -> 24x24 codes.
    "vq_16": dict(
        ch=128,
        ch_mult=[1, 1, 2, 2, 4],
        z_channels=256,
        num_res_blocks=2,
        codebook_size=16384,
        codebook_embed_dim=8,
        image_size=384,
    ),
}
_VARIANT_ALIASES = {"VQ-16": "vq_16"}


@AUTOENCODERS.register("llamagen_vq")
def llamagen_vq(
    variant: str | None = None,
    ch: int | None = None,
    ch_mult: list | None = None,
    z_channels: int | None = None,
    num_res_blocks: int | None = None,
    codebook_size: int | None = None,
    codebook_embed_dim: int | None = None,
    image_size: int | None = None,
    beta: float = 0.25,
    path: str | None = None,
) -> VQTokenizer:
    """LlamaGen VQ tokenizer (Janus, Janus-Pro). ``variant`` "vq_16" gives the released one; explicit sizes win.

    ``path``: a folder written by :meth:`VQTokenizer.save` (e.g. by :func:`unimm.train.autoencoder.train_autoencoder`);
    its ``config.json`` gives the sizes (explicit ones must agree) and its weights are loaded.
    """
    if path is not None:
        return _load_vq_folder(path, dict(variant=variant, ch=ch, ch_mult=ch_mult, z_channels=z_channels,
                                          num_res_blocks=num_res_blocks, codebook_size=codebook_size,
                                          codebook_embed_dim=codebook_embed_dim), image_size, beta)
    sizes = resolve_sizes(
        dict(ch=ch, ch_mult=ch_mult, z_channels=z_channels, num_res_blocks=num_res_blocks,
             codebook_size=codebook_size, codebook_embed_dim=codebook_embed_dim, image_size=image_size),
        variant, VQ_VARIANTS, family="LlamaGen VQ", where="model.generator.autoencoder",
        defaults={"num_res_blocks": 2, "image_size": 384}, aliases=_VARIANT_ALIASES,
    )
    narrow = [sizes["ch"] * m for m in sizes["ch_mult"] if (sizes["ch"] * m) % 32]
    if narrow:
        raise ConfigError(
            f"model.generator.autoencoder.ch = {sizes['ch']} with ch_mult {list(sizes['ch_mult'])} gives widths "
            f"{narrow} that are not multiples of 32, but taming's blocks normalise with GroupNorm(32 groups); "
            f"use ch = 32 or a multiple of it"
        )
    return VQTokenizer(beta=beta, **sizes)


def _load_vq_folder(path: str, given: dict, image_size: int | None, beta: float) -> VQTokenizer:
    """A tokenizer saved by :meth:`VQTokenizer.save`; sizes in the slot that contradict its config.json fail."""
    from ..checkpoint.io import load_into, load_weights, read_part_config

    if given.pop("variant") is not None:
        raise ConfigError("model.generator.autoencoder: give either 'variant' or 'path', not both")
    saved = read_part_config(path, given, "model.generator.autoencoder",
                             ("ch", "ch_mult", "z_channels", "num_res_blocks", "codebook_size", "codebook_embed_dim",
                              "image_size"))
    saved["beta"] = beta
    if image_size is not None:
        saved["image_size"] = image_size
    model = VQTokenizer(**saved)
    load_into(model, load_weights(path), source=str(path))
    model.source_path = str(path)
    return model
