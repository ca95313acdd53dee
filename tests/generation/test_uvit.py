"""The shallow U-ViT encoder / decoder of JanusFlow: shapes, the time embedding, the ConvNeXt block's arithmetic."""

import math

import pytest
import torch
import torch.nn.functional as F

from unimm.generation.uvit import ConvNeXtBlock, ShallowUViTDecoder, ShallowUViTEncoder
from unimm.registry import ConfigError


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter random values (the global response norm starts at zero, which would hide it)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def test_encoder_decoder_shapes_and_skip():
    enc = ShallowUViTEncoder(input_channels=4, stride=2, kernel_size=2, block_out_channels=[16], hidden_size=24,
                             layers_in_middle=1)  # fmt: skip
    dec = ShallowUViTDecoder(in_channels=8, out_channels=4, block_out_channels=[16], upsamples=1, hidden_size=24,
                             layers_in_middle=1)  # fmt: skip
    z = torch.randn(3, 4, 12, 12)
    tokens, t_emb, skip = enc(z, torch.tensor([0.0, 500.0, 999.0]))
    assert tokens.shape == (3, 16, 6, 6) and t_emb.shape == (3, 24) and skip.shape == (3, 16, 6, 6)
    assert enc.grid_size(12) == 6
    v = dec(torch.randn(3, 8, 6, 6), skip, t_emb)
    assert v.shape == (3, 4, 12, 12)
    two_stage = ShallowUViTDecoder(in_channels=8, out_channels=4, block_out_channels=[16], upsamples=2, hidden_size=24)
    assert two_stage(torch.randn(3, 8, 6, 6), skip, t_emb).shape == (3, 4, 24, 24)


def test_time_embedding_uses_cos_first_sinusoid_without_shift():
    """Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0): [cos(t f_i), sin(t f_i)], f_i = 1e4^(-i/half)."""
    enc = ShallowUViTEncoder(block_out_channels=[8], hidden_size=16, layers_in_middle=0)
    t = torch.tensor([0.0, 250.0, 1000.0])
    half = 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    expected = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=-1)
    torch.testing.assert_close(enc.time_proj(t), expected)
    assert [n for n, _ in enc.time_embed.named_parameters()] == [
        "linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"
    ]  # fmt: skip


def test_convnext_block_matches_the_released_arithmetic():
    """timm's global response norm and the FiLM conditioning reproduce the released block's formula."""
    block = ConvNeXtBlock(channels=8, cond_dim=6)
    _randomize(block)
    x, cond = torch.randn(2, 8, 5, 5), torch.randn(2, 6)

    h = block.depthwise(x).permute(0, 2, 3, 1)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * block.norm.weight
    h = F.gelu(block.channelwise_linear_1(h))
    gx = torch.norm(h, p=2, dim=(1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
    w, b = block.channelwise_norm.weight.view(1, 1, 1, -1), block.channelwise_norm.bias.view(1, 1, 1, -1)
    h = b + (w * nx + 1) * h  # the released GlobalResponseNorm
    h = block.channelwise_linear_2(h).permute(0, 3, 1, 2) + x
    scale, shift = block.cond_embeds_mapper(F.silu(cond)).chunk(2, dim=1)
    expected = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    torch.testing.assert_close(block(x, cond), expected, rtol=1e-5, atol=1e-5)


def test_decoder_uses_skip_and_time():
    dec = ShallowUViTDecoder(in_channels=8, out_channels=4, block_out_channels=[8], hidden_size=6, layers_in_middle=1)
    _randomize(dec)
    x, skip, t = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 4, 4), torch.randn(1, 6)
    out = dec(x, skip, t)
    assert not torch.allclose(out, dec(x, torch.zeros_like(skip), t))
    assert not torch.allclose(out, dec(x, skip, t + 1))


def test_bad_configs_are_explained():
    with pytest.raises(ConfigError, match="single resolution level"):
        ShallowUViTEncoder(block_out_channels=[64, 128])
    with pytest.raises(ConfigError, match="elementwise_affine"):
        ShallowUViTDecoder(elementwise_affine=False)
    with pytest.raises(ConfigError, match="upsamples"):
        ShallowUViTDecoder(upsamples=0)
