"""The shared-VQ understanding encoder (Janus's single-tokenizer ablation): features, freezing, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unimm.encoders.shared_vq import SharedVQEncoder
from unimm.registry import AUTOENCODERS, ENCODERS, ConfigError, InputError

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
JANUS_CASES = [p.parent for p in sorted(GOLDEN.glob("*/cases.json")) if json.loads(p.read_text())["kind"] == "janus"]
TINY_VQ = {"type": "llamagen_vq", "ch": 32, "ch_mult": [1, 2], "z_channels": 8, "codebook_size": 16,
           "codebook_embed_dim": 4, "num_res_blocks": 1, "image_size": 16}


def shared_vq(autoencoder, **kwargs) -> SharedVQEncoder:
    """The encoder built from its config slot, with its own tokenizer ``autoencoder``."""
    return ENCODERS.build({"type": "shared_vq", "autoencoder": autoencoder, **kwargs}, where="model.und_encoder")


def test_quant_features_are_the_tokenizers_latents():
    encoder = ENCODERS.build({"type": "shared_vq", "autoencoder": TINY_VQ, "image_size": 16}, where="model.und_encoder")
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    out = encoder(images)
    quant, _ = encoder.tokenizer.quantize_images(images)
    assert out.shape == (2, encoder.num_tokens, encoder.out_dim) == (2, 64, 4)
    torch.testing.assert_close(out, quant.flatten(2).transpose(1, 2))
    assert encoder.pixel_mean == (0.5, 0.5, 0.5) and encoder.transform()(torch.rand(3, 8, 12)).min() >= -1


def test_codes_features_embed_the_codes_and_only_the_embedding_learns():
    encoder = shared_vq(TINY_VQ, image_size=16, features="codes", code_dim=12)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    out = encoder(images)
    _, codes = encoder.tokenizer.quantize_images(images)
    assert out.shape == (2, 64, 12) and encoder.out_dim == 12
    torch.testing.assert_close(out, encoder.code_embed(codes))
    out.square().sum().backward()
    assert encoder.code_embed.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in encoder.tokenizer.parameters())


def test_tokenizer_stays_frozen_and_in_eval_mode():
    tokenizer = AUTOENCODERS.build(TINY_VQ, where="test")
    encoder = SharedVQEncoder(tokenizer, image_size=32)  # a built tokenizer is shared, not copied
    assert encoder.tokenizer is tokenizer
    encoder.train()
    assert encoder.training and not encoder.tokenizer.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.num_tokens == (32 // tokenizer.downsample) ** 2


@pytest.mark.parity
@pytest.mark.parametrize("folder", JANUS_CASES, ids=lambda p: p.name)
def test_quant_matches_reference_vq(folder: Path):
    """On a golden Janus case, the features are the reference VQ model's quantised latents."""
    from safetensors.torch import load_file

    from unimm.generation.vq_tokenizer import convert_janus_vq

    params = json.loads((folder / "config.json").read_text())["gen_vision_config"]["params"]
    size = json.loads((folder / "cases.json").read_text())["settings"]["gen_size"]
    cfg = {"type": "llamagen_vq", **{k: params[k] for k in ("ch", "ch_mult", "z_channels", "num_res_blocks",
                                                            "codebook_size", "codebook_embed_dim")}}
    encoder = shared_vq(cfg, image_size=size)
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())["weight_map"]
    shards = sorted({shard for key, shard in index.items() if key.startswith("gen_vision_model.")})
    state = {}
    for shard in shards:
        state.update(torch.load(folder / shard, map_location="cpu", weights_only=True))
    vq = {k[len("gen_vision_model."):]: v for k, v in state.items() if k.startswith("gen_vision_model.")}
    encoder.tokenizer.load_state_dict(convert_janus_vq(vq), strict=True)
    cases = load_file(folder / "cases.safetensors")
    with torch.no_grad():
        out = encoder(cases["vq.input"])
    torch.testing.assert_close(out, cases["vq.quant"].flatten(2).transpose(1, 2), rtol=1e-4, atol=1e-4)


def test_errors():
    with pytest.raises(ConfigError, match="features: 'latents' is not one of quant, codes"):
        shared_vq(TINY_VQ, image_size=16, features="latents")
    with pytest.raises(ConfigError, match="code_dim only applies to features: codes"):
        shared_vq(TINY_VQ, image_size=16, code_dim=8)
    with pytest.raises(ConfigError, match="image_size 21 is not a multiple of the tokenizer's downsampling factor 2"):
        shared_vq(TINY_VQ, image_size=21)
    with pytest.raises(ConfigError, match=r"autoencoder\.type: unknown image autoencoder 'llamagen'"):
        shared_vq({"type": "llamagen"}, image_size=16)
    with pytest.raises(ConfigError, match="Linear has no codebook"):
        SharedVQEncoder(torch.nn.Linear(2, 2), image_size=16)
    encoder = shared_vq(TINY_VQ, image_size=16)
    with pytest.raises(InputError, match=r"takes images \(B, 3, 16, 16\) in \[-1, 1\], got \(1, 3, 32, 32\)"):
        encoder(torch.zeros(1, 3, 32, 32))
