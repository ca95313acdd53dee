"""DeepSeek-VL's SAM + SigLIP hybrid encoder and its aligner: golden parity, the 1.3B manifest, config and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unimm.aligners.hybrid_split import HybridSplitAligner, convert_hybrid_split_aligner
from unimm.aligners.hybrid_split import from_released_params as aligner_from_released
from unimm.encoders.hybrid import HybridEncoder, convert_deepseek_vl_vision, from_released_config
from unimm.encoders.sam import SAMEncoder
from unimm.encoders.siglip import SigLIPEncoder
from unimm.registry import ALIGNERS, ENCODERS, CheckpointError, ConfigError, InputError

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
SAM_SIGLIP_CASES = [
    p.parent for p in sorted(GOLDEN.glob("*/cases.json")) if json.loads(p.read_text())["kind"] == "sam_siglip"
]
OFFICIAL = GOLDEN / "official" / "DeepSeek-VL-1.3B-hybrid-vision"


def hybrid_config(case: dict) -> dict:
    """``sam_siglip`` encoder config for a golden case: released variants with the case's sizes winning."""
    s, high, low = case["settings"], case["high_res_cfg"], case["low_res_cfg"]
    return {
        "type": "sam_siglip",
        "high": dict(variant="sam_b_downsample", image_size=high["image_size"], width=s["sam_w"], layers=s["sam_l"],
                     heads=s["sam_h"], global_attn_indexes=s["glob"], neck_dim=s["neck"],
                     downsample_channels=s["down"], pixel_mean=high["pixel_mean"], pixel_std=high["pixel_std"]),
        "low": dict(variant="siglip_large_patch16_384", image_size=low["image_size"], width=s["low_w"],
                    layers=s["low_l"], heads=s["low_h"], select_layer=low["select_layer"],
                    pixel_mean=low["pixel_mean"], pixel_std=low["pixel_std"]),
    }


def split(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def tiny_encoder(**low_overrides) -> HybridEncoder:
    high = dict(variant=None, image_size=64, patch_size=16, width=16, layers=2, heads=2, global_attn_indexes=[1],
                window_size=3, neck_dim=8, downsample_channels=[12, 16], resample_size=16)
    low = dict(variant=None, image_size=32, patch_size=8, width=16, layers=1, heads=2, mlp_ratio=2.0)
    low.update(low_overrides)
    encoder = HybridEncoder(high=SAMEncoder(**high), low=SigLIPEncoder(**low))
    # SigLIPEncoder builds timm's ViT with weight_init="skip", which leaves pos_embed uninitialised memory.
    torch.nn.init.normal_(encoder.vision_tower_low.vit.pos_embed, std=0.02)
    return encoder


# -- parity --------------------------------------------------------------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize("folder", SAM_SIGLIP_CASES, ids=lambda p: p.name)
def test_matches_reference(folder: Path):
    case = json.loads((folder / "cases.json").read_text())
    assert case["concat_type"] == "tuple"
    tensors = load_file(folder / "cases.safetensors")
    weights = load_file(folder / "model.safetensors")
    encoder = ENCODERS.build(hybrid_config(case), where="model.und_encoder").eval()
    aligner = ALIGNERS.build(
        {"type": case["aligner"]["projector_type"], "depth": case["aligner"]["depth"]},
        where="model.und_aligner", inferred={"in_dim": encoder.out_dim, "out_dim": case["aligner"]["n_embed"]},
    ).eval()
    assert encoder.out_dim == case["aligner"]["input_dim"]
    encoder.load_state_dict(convert_deepseek_vl_vision(split(weights, "vision_model.")), strict=True)
    aligner.load_state_dict(convert_hybrid_split_aligner(split(weights, "aligner.")), strict=True)

    images = tensors["images"]
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.shape[-1] == encoder.image_size
    with torch.no_grad():
        high, low = encoder(images)
        aligned = aligner((high, low))
    assert high.shape == low.shape == (images.shape[0], encoder.num_tokens, encoder.out_dim)
    torch.testing.assert_close(high, tensors["high_features"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(low, tensors["low_features"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(aligned, tensors["aligned"], rtol=1e-4, atol=1e-4)

    # The reference never applies high/low_layer_norm; the case's norms are not identities, so applying them
    # would have failed the comparison above.
    assert not torch.allclose(encoder.high_layer_norm(high), high, atol=1e-3)
    assert not torch.allclose(encoder.low_layer_norm(low), low, atol=1e-3)


# -- the released 1.3B hybrid, on the meta device ------------------------------------------------------------------
def test_released_manifest():
    config = json.loads((OFFICIAL / "config.json").read_text())
    manifest = json.loads((OFFICIAL / "manifest.json").read_text())
    with torch.device("meta"):
        encoder = ENCODERS.build({"type": "sam_siglip", **from_released_config(config)}, where="model.und_encoder")
        aligner = HybridSplitAligner(**aligner_from_released(config["aligner"]))
    released = {k: torch.empty(shape, device="meta") for k, shape in manifest["state_dict"].items()}
    expected_vision = convert_deepseek_vl_vision(split(released, "vision_model."))
    expected_aligner = convert_hybrid_split_aligner(split(released, "aligner."))
    assert len(expected_vision) + len(expected_aligner) == len(released)
    for module, expected in ((encoder, expected_vision), (aligner, expected_aligner)):
        state = module.state_dict()
        assert sorted(state) == sorted(expected)
        assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    total = sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in aligner.parameters())
    assert total == manifest["params"] == 418_940_161
    assert manifest["buffers_in_state_dict"] == []
    assert (encoder.image_size, encoder.low_image_size, encoder.num_tokens, encoder.out_dim) == (1024, 384, 576, 1024)
    assert aligner.out_dim == 2048


def test_default_is_released_layout():
    with torch.device("meta"):
        encoder = ENCODERS.build({"type": "sam_siglip"}, where="model.und_encoder")
    assert encoder.vision_tower_high.variant == "sam_b_downsample"
    assert encoder.vision_tower_low.variant == "siglip_large_patch16_384"


def test_from_released_config_rejects_other_concat():
    config = json.loads((OFFICIAL / "config.json").read_text())
    with pytest.raises(CheckpointError, match="concat_type 'feature' is not supported"):
        from_released_config({**config, "concat_type": "feature"})


# -- behaviour -----------------------------------------------------------------------------------------------------
def test_towers_normalise_themselves_and_low_tower_sees_resized_image():
    import torchvision.transforms.functional as TF

    encoder = tiny_encoder().eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        high, low = encoder(images)
        mean = torch.tensor(encoder.vision_tower_high.pixel_mean).view(1, 3, 1, 1)
        std = torch.tensor(encoder.vision_tower_high.pixel_std).view(1, 3, 1, 1)
        expected_high = encoder.vision_tower_high((images - mean) / std)
        low_images = TF.resize(images, [32, 32], antialias=True)
        expected_low = encoder.vision_tower_low((low_images - 0.5) / 0.5)
    torch.testing.assert_close(high, expected_high)
    torch.testing.assert_close(low, expected_low)
    assert encoder.pixel_mean == (0.0, 0.0, 0.0) and encoder.pixel_std == (1.0, 1.0, 1.0)
    assert not any("mean" in k or "std" in k for k in encoder.state_dict())


def test_transform_keeps_unit_range_and_pads_with_sam_mean():
    from PIL import Image

    encoder = tiny_encoder()
    pixels = encoder.transform()(Image.new("RGB", (64, 16), (255, 255, 255)))
    assert pixels.shape == (3, 64, 64)
    assert pixels.max().item() == 1.0
    torch.testing.assert_close(pixels[:, 0, 0], torch.tensor([122, 116, 104]) / 255.0)


def test_freeze():
    encoder = tiny_encoder()
    encoder.freeze()
    assert not any(p.requires_grad for p in encoder.parameters())


# -- errors --------------------------------------------------------------------------------------------------------
def test_wrong_input_shape():
    encoder = tiny_encoder()
    with pytest.raises(InputError, match=r"takes images \(B, 3, 64, 64\) in \[0, 1\], got \(2, 3, 32, 32\)"):
        encoder(torch.rand(2, 3, 32, 32))


def test_towers_must_agree():
    with pytest.raises(ConfigError, match="SAM tower gives 16 tokens of width 16 but the SigLIP tower 16 of width 32"):
        tiny_encoder(width=32)


def test_converter_lists_unexpected_keys():
    with pytest.raises(CheckpointError, match=r"image_norm\.weight, vision_tower\.pos_embed"):
        convert_deepseek_vl_vision({"vision_tower.pos_embed": torch.zeros(1), "image_norm.weight": torch.zeros(1),
                                    "high_layer_norm.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"vision_tower_low\.: .*'blocks\.0\.norm1\.weight'"):  # via SigLIP's
        convert_deepseek_vl_vision({"vision_tower_low.blocks.0.norm1.weight": torch.zeros(1)})


def test_bfloat16_towers_get_pixels_normalised_in_float32():
    """A bfloat16 model (``load_pretrained(dtype="bfloat16")``) must not round SAM's mean 0.485 or SigLIP's std
    through bfloat16 before normalising: each tower gets exactly the float32 normalisation, cast once."""
    from unimm.devices import place

    encoder = place(tiny_encoder().eval(), torch.device("cpu"), torch.bfloat16)
    seen = {}
    for name in ("vision_tower_high", "vision_tower_low"):
        getattr(encoder, name).register_forward_pre_hook(lambda module, args, name=name: seen.update({name: args[0]}))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.no_grad():
        high, low = encoder(images)
    assert high.dtype == low.dtype == torch.bfloat16 and torch.isfinite(high).all() and torch.isfinite(low).all()
    tower = encoder.vision_tower_high
    mean = torch.tensor(tower.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(tower.pixel_std).view(1, 3, 1, 1)
    assert torch.equal(seen["vision_tower_high"], ((images.float() - mean) / std).to(torch.bfloat16))
    rounded = (images - mean.to(torch.bfloat16)) / std.to(torch.bfloat16)  # what bfloat16 buffers would give
    assert not torch.equal(seen["vision_tower_high"], rounded)
