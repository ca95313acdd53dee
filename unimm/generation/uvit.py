"""The shallow U-ViT generation encoder and decoder of JanusFlow (Ma et al. 2024, arXiv 2411.07975).

JanusFlow generates images by rectified flow in the latent space of a VAE. Around the language model sit two small
convolutional networks:

* ``ShallowUViTEncoder`` (the paper's g_enc): a patchify convolution turns the noisy latent z_t into a grid of
  tokens, ConvNeXt blocks conditioned on the time t refine them. It also embeds t itself (sinusoid + MLP), which the
  language model receives as one extra token, and hands its output to the decoder as a skip connection.
* ``ShallowUViTDecoder`` (g_dec): the language model's hidden states at the image positions, concatenated with the
  skip, go through ConvNeXt blocks conditioned on t and a pixel-shuffle "unpatchify" back to the latent grid; the
  output is the velocity v(z_t, t).

The ConvNeXt blocks are ConvNeXt-V2 blocks (Woo et al. 2023: depthwise 7x7, norm, 4x MLP with global response norm)
with RMSNorm instead of LayerNorm and a FiLM-style time conditioning (``cond_embeds_mapper``: scale and shift from
SiLU(t_emb)). timm's ConvNeXt blocks have neither, so the block is written here from timm's global response norm,
transformers' RMSNorm and diffusers' time embedding.

Attribute names equal those of the released checkpoints (``in_conv``, ``mid_block.res_blocks.N.depthwise``,
``time_embed.linear_1`` ...), so loading them only moves prefixes; the one exception is the global response norm,
whose released weights are (1, 1, 1, C) and timm's are (C,) (see ``convert_janusflow_gen`` in ``flow_path``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from timm.layers.grn import GlobalResponseNorm
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from ..registry import ConfigError


def _channels_last_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a norm over the channels of a (B, C, H, W) map."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _single_width(block_out_channels: Sequence[int], where: str) -> int:
    """The shallow U-ViT has one resolution level; return its width or explain the mistake."""
    widths = list(block_out_channels)
    if len(widths) != 1:
        raise ConfigError(
            f"{where}.block_out_channels = {widths}: the shallow U-ViT has a single resolution level, "
            f"give one width, e.g. [{widths[-1] if widths else 768}]"
        )
    return int(widths[0])


def _check_affine(elementwise_affine: bool, where: str) -> None:
    # The released configs carry this flag, but every norm of the released model has a weight.
    if not elementwise_affine:
        raise ConfigError(f"{where}.elementwise_affine = False is not supported: the RMSNorms always have a weight")


# -- blocks -------------------------------------------------------------------------------------------------------
class ConvNeXtBlock(nn.Module):
    """ConvNeXt-V2 block with RMSNorm and time conditioning.

    ``x + MLP(RMSNorm(depthwise7x7(x)))`` with a GELU and a global response norm inside the 4x MLP, then
    ``x * (1 + scale) + shift`` where ``(scale, shift) = Linear(SiLU(cond))``.

    Shapes: x (B, C, H, W), cond (B, cond_dim) -> (B, C, H, W).
    """

    def __init__(
        self,
        channels: int,
        cond_dim: int,
        norm_eps: float = 1e-6,
        use_bias: bool = True,
        dropout: float = 0.0,
        ffn_factor: int = 4,
    ):
        super().__init__()
        inner = channels * ffn_factor
        self.depthwise = nn.Conv2d(channels, channels, kernel_size=7, padding=3, groups=channels, bias=use_bias)
        self.norm = LlamaRMSNorm(channels, eps=norm_eps)
        self.channelwise_linear_1 = nn.Linear(channels, inner, bias=use_bias)
        self.channelwise_act = nn.GELU()
        self.channelwise_norm = GlobalResponseNorm(inner, eps=1e-6, channels_last=True)
        self.channelwise_linear_2 = nn.Linear(inner, channels, bias=use_bias)
        self.channelwise_dropout = nn.Dropout(dropout)
        self.cond_embeds_mapper = nn.Linear(cond_dim, channels * 2, bias=use_bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(x).permute(0, 2, 3, 1)
        h = self.channelwise_linear_1(self.norm(h))
        h = self.channelwise_norm(self.channelwise_act(h))
        h = self.channelwise_dropout(self.channelwise_linear_2(h))
        x = x + h.permute(0, 3, 1, 2)
        scale, shift = self.cond_embeds_mapper(F.silu(cond)).chunk(2, dim=1)
        return torch.addcmul(shift[:, :, None, None], x, 1 + scale[:, :, None, None])


class ConvNeXtStage(nn.Module):
    """A stack of time-conditioned ConvNeXt blocks at one resolution (the released ``mid_block``).

    Shapes: x (B, C, H, W), cond (B, cond_dim) -> (B, C, H, W).
    """

    def __init__(self, channels: int, cond_dim: int, depth: int, norm_eps: float, use_bias: bool, dropout: float):
        super().__init__()
        self.res_blocks = nn.ModuleList(
            ConvNeXtBlock(channels, cond_dim, norm_eps=norm_eps, use_bias=use_bias, dropout=dropout)
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x, cond)
        return x


class Unpatchify(nn.Module):
    """RMSNorm, 1x1 convolution to ``out_channels * 4`` and a 2x pixel shuffle.

    Shapes: (B, C_in, H, W) -> (B, C_out, 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int, norm_eps: float, use_bias: bool, factor: int = 2):
        super().__init__()
        self.norm = LlamaRMSNorm(in_channels, eps=norm_eps)
        self.unpatch_conv = nn.Conv2d(in_channels, out_channels * factor * factor, kernel_size=1, bias=use_bias)
        self.pixel_shuffle = nn.PixelShuffle(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel_shuffle(self.unpatch_conv(_channels_last_norm(self.norm, x)))


# -- modules ------------------------------------------------------------------------------------------------------
class ShallowUViTEncoder(nn.Module):
    """JanusFlow's generation encoder g_enc: noisy latent and time -> token grid, time embedding, skip.

    Args:
        input_channels: latent channels of the VAE (4 for the SDXL VAE).
        stride: patch stride of the patchify convolution (2: a 48x48 latent gives 24x24 tokens).
        kernel_size: patchify kernel size.
        padding: patchify padding; None means ``max(kernel_size - stride, 0)`` (the released code: ``ceil(k - s)``).
        block_out_channels: one width, the token width (768 in JanusFlow-1.3B).
        layers_in_middle: ConvNeXt blocks after the patchify convolution.
        hidden_size: width of the time embedding; it enters the language model as a token, so it equals the
            language model's width (2048 in JanusFlow-1.3B).
        elementwise_affine: must be True (kept because the released configs carry it).
        use_bias: biases in the ConvNeXt blocks and the time MLP.
        norm_eps: RMSNorm epsilon.
        dropout: dropout inside the ConvNeXt MLPs.
        use_mid_block: run the ConvNeXt blocks at all.

    Time embedding: diffusers ``Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)`` then
    ``TimestepEmbedding(width, hidden_size)`` (Linear, SiLU, Linear), as in the released model. Timesteps are
    expected on the 0..1000 scale (t * 1000).

    Shapes: ``forward(x (B, input_channels, H, W), timesteps (B,))`` ->
    ``(tokens (B, C, H/stride, W/stride), t_emb (B, hidden_size), skip (B, C, H/stride, W/stride))``.
    """

    def __init__(
        self,
        input_channels: int = 4,
        stride: int = 2,
        kernel_size: int = 2,
        padding: int | None = 0,
        block_out_channels: Sequence[int] = (768,),
        layers_in_middle: int = 2,
        hidden_size: int = 2048,
        elementwise_affine: bool = True,
        use_bias: bool = True,
        norm_eps: float = 1e-6,
        dropout: float = 0.0,
        use_mid_block: bool = True,
    ):
        super().__init__()
        _check_affine(elementwise_affine, "encoder")
        width = _single_width(block_out_channels, "encoder")
        if padding is None:
            padding = max(kernel_size - stride, 0)
        self.input_channels = input_channels
        self.out_channels = width
        self.hidden_size = hidden_size
        self.stride, self.kernel_size, self.padding = stride, kernel_size, padding

        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(width, hidden_size, sample_proj_bias=use_bias)
        self.in_conv = nn.Conv2d(input_channels, width, kernel_size=kernel_size, stride=stride, padding=padding)
        self.mid_block = (
            ConvNeXtStage(width, hidden_size, layers_in_middle, norm_eps, use_bias, dropout) if use_mid_block else None
        )

    def grid_size(self, latent_size: int) -> int:
        """Token grid side for a latent of side ``latent_size``."""
        return (latent_size + 2 * self.padding - self.kernel_size) // self.stride + 1

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t_emb = self.time_proj(timesteps.reshape(-1)).to(x.dtype)
        t_emb = self.time_embed(t_emb)
        tokens = self.in_conv(x)
        if self.mid_block is not None:
            tokens = self.mid_block(tokens, t_emb)
        return tokens, t_emb, tokens


class ShallowUViTDecoder(nn.Module):
    """JanusFlow's generation decoder g_dec: LLM features, encoder skip and time embedding -> velocity.

    Args:
        in_channels: width of the features coming from the language model (after the decoder aligner).
        out_channels: latent channels of the VAE (the velocity has the latent's shape).
        block_out_channels: one width, the encoder's token width (the skip connection's width).
        upsamples: number of 2x unpatchify stages (1: a 24x24 grid gives a 48x48 latent).
        layers_in_middle: ConvNeXt blocks on the concatenation ``[features, skip]``.
        hidden_size: width of the time embedding (the language model's width).
        elementwise_affine: must be True (kept because the released configs carry it).
        norm_eps: RMSNorm epsilon.
        use_bias: biases in the ConvNeXt blocks and the unpatchify convolutions.
        dropout: dropout inside the ConvNeXt MLPs.
        use_mid_block: run the ConvNeXt blocks at all.

    Shapes: ``forward(x (B, in_channels, h, w), skip (B, C_skip, h, w), t_emb (B, hidden_size))`` ->
    ``(B, out_channels, h * 2**upsamples, w * 2**upsamples)``.
    """

    def __init__(
        self,
        in_channels: int = 768,
        out_channels: int = 4,
        block_out_channels: Sequence[int] = (768,),
        upsamples: int = 1,
        layers_in_middle: int = 2,
        hidden_size: int = 2048,
        elementwise_affine: bool = True,
        norm_eps: float = 1e-6,
        use_bias: bool = True,
        dropout: float = 0.0,
        use_mid_block: bool = True,
    ):
        super().__init__()
        _check_affine(elementwise_affine, "decoder")
        skip_width = _single_width(block_out_channels, "decoder")
        if upsamples < 1:
            raise ConfigError(f"decoder.upsamples = {upsamples}: need at least one unpatchify stage")
        self.in_channels, self.out_channels, self.skip_channels = in_channels, out_channels, skip_width
        self.hidden_size = hidden_size
        self.upsamples = upsamples

        self.input_norm = LlamaRMSNorm(in_channels, eps=norm_eps)
        merged = in_channels + skip_width
        self.mid_block = (
            ConvNeXtStage(merged, hidden_size, layers_in_middle, norm_eps, use_bias, dropout) if use_mid_block else None
        )
        stages = []
        for rank in range(upsamples):
            stage_in = merged if rank == 0 else skip_width
            stage_out = out_channels if rank == upsamples - 1 else skip_width
            stages.append(Unpatchify(stage_in, stage_out, norm_eps=norm_eps, use_bias=use_bias))
        self.out_convs = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        x = torch.cat([_channels_last_norm(self.input_norm, x), skip], dim=1)
        if self.mid_block is not None:
            x = self.mid_block(x, t_emb)
        for stage in self.out_convs:
            x = stage(x)
        return x
