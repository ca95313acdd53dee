"""The SAM-B high-resolution tower of DeepSeek-VL: parity with the reference, converter, sizes and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unimm.encoders.sam import SAM_VARIANTS, SAMEncoder, convert_sam, from_released_params
from unimm.registry import ENCODERS, CheckpointError, ConfigError

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
SAM_SIGLIP_CASES = [
    p.parent for p in sorted(GOLDEN.glob("*/cases.json")) if json.loads(p.read_text())["kind"] == "sam_siglip"
]


def sam_kwargs(case: dict) -> dict:
    """SAMEncoder arguments for a golden case: the released variant with the case's sizes (cases.json) winning."""
    s = case["settings"]
    return dict(
        variant="sam_b_downsample", image_size=case["high_res_cfg"]["image_size"], width=s["sam_w"],
        layers=s["sam_l"], heads=s["sam_h"], global_attn_indexes=s["glob"], neck_dim=s["neck"],
        downsample_channels=s["down"], pixel_mean=case["high_res_cfg"]["pixel_mean"],
        pixel_std=case["high_res_cfg"]["pixel_std"],
    )


def high_tower_weights(folder: Path) -> dict[str, torch.Tensor]:
    prefix = "vision_model.vision_tower_high."
    return {k[len(prefix):]: v for k, v in load_file(folder / "model.safetensors").items() if k.startswith(prefix)}


def tiny(**overrides) -> SAMEncoder:
    kwargs = dict(variant=None, image_size=64, patch_size=16, width=16, layers=2, heads=2, global_attn_indexes=[1],
                  window_size=3, neck_dim=8, downsample_channels=[12, 16], resample_size=16)
    kwargs.update(overrides)
    return SAMEncoder(**kwargs)


# -- parity --------------------------------------------------------------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize("folder", SAM_SIGLIP_CASES, ids=lambda p: p.name)
def test_high_tower_matches_reference(folder: Path):
    case = json.loads((folder / "cases.json").read_text())
    tensors = load_file(folder / "cases.safetensors")
    sam = SAMEncoder(**sam_kwargs(case)).eval()
    weights = high_tower_weights(folder)
    sam.load_state_dict(convert_sam(weights), strict=True)
    mean = torch.tensor(sam.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(sam.pixel_std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = sam((tensors["images"] - mean) / std)
    assert out.shape[1:] == (sam.num_tokens, sam.out_dim) == (sam.grid_size ** 2, sam.out_dim)
    torch.testing.assert_close(out, tensors["high_features"], rtol=1e-4, atol=1e-4)

    # The case exercises the SAM-HD branch: without it the output would differ.
    assert weights["vision_tower.hd_alpha_downsamples"].abs().item() > 0
    with torch.no_grad():
        sam.hd_alpha_downsamples.zero_()
        assert not torch.allclose(sam((tensors["images"] - mean) / std), out, atol=1e-3)


# -- converter -----------------------------------------------------------------------------------------------------
def test_converter_renames_mlp_and_keeps_hd_names():
    t = torch.zeros(1)
    out = convert_sam({
        "vision_tower.blocks.3.mlp.lin1.weight": t, "vision_tower.blocks.3.mlp.lin2.bias": t,
        "vision_tower.pos_embed": t, "vision_tower.neck.1.weight": t, "vision_tower.neck_hd.0.weight": t,
        "vision_tower.downsamples.1.weight": t, "vision_tower.hd_alpha_downsamples": t,
    })
    assert set(out) == {
        "vit.blocks.3.mlp.fc1.weight", "vit.blocks.3.mlp.fc2.bias", "vit.pos_embed", "vit.neck.1.weight",
        "neck_hd.0.weight", "downsamples.1.weight", "hd_alpha_downsamples",
    }


def test_converter_output_loads_strictly_into_tiny_tower():
    sam = tiny()
    released = {}
    for key, value in sam.state_dict().items():  # write the module's weights under the released names
        key = key.removeprefix("vit.").replace(".mlp.fc1.", ".mlp.lin1.").replace(".mlp.fc2.", ".mlp.lin2.")
        released["vision_tower." + key] = value
    assert any(".mlp.lin1." in k for k in released)
    sam.load_state_dict(convert_sam(released), strict=True)


def test_converter_lists_unexpected_keys():
    with pytest.raises(CheckpointError, match=r"vision_tower\.head\.weight, vision_tower_high\.pos_embed"):
        convert_sam({"vision_tower.head.weight": torch.zeros(1), "vision_tower_high.pos_embed": torch.zeros(1),
                     "vision_tower.pos_embed": torch.zeros(1)})


def test_from_released_params():
    assert from_released_params({"model_name": "sam_b_downsample", "image_size": 1024, "select_layer": -1}) == dict(
        variant="sam_b_downsample", image_size=1024)
    tiny_params = from_released_params({"model_name": "sam_tiny", "image_size": 64, "width": 16})
    assert tiny_params["variant"] is None and tiny_params["width"] == 16
    with pytest.raises(CheckpointError, match="not a SAM model"):
        from_released_params({"model_name": "siglip_large_patch16_384"})
    with pytest.raises(CheckpointError, match="select_layer -2"):
        from_released_params({"model_name": "sam_b_downsample", "select_layer": -2})


# -- sizes ---------------------------------------------------------------------------------------------------------
def test_released_variant_sizes_on_meta():
    with torch.device("meta"):
        sam = ENCODERS.build({"type": "sam", "variant": "sam_b_downsample"}, where="model.und_encoder")
    assert (sam.image_size, sam.out_dim, sam.grid_size, sam.num_tokens) == (1024, 1024, 24, 576)
    cfg = SAM_VARIANTS["sam_b_downsample"]
    for i, block in enumerate(sam.vit.blocks):
        side = 1024 // 16 if i in cfg["global_attn_indexes"] else cfg["window_size"]
        assert block.attn.rel_pos_h.shape == (2 * side - 1, 768 // 12)
    assert sam.neck_hd[0].weight.shape == (256, 768, 1, 1)
    assert [c.out_channels for c in sam.downsamples] == [512, 1024]


def test_tiny_forward_shape_and_grad():
    sam = tiny(downsample_channels=[12], resample_size=10)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = sam.forward_map(x)
    assert out.shape == (2, 12, 5, 5) and sam.num_tokens == 25
    torch.testing.assert_close(sam(x), out.flatten(2).transpose(1, 2))  # tokens are the map, row-major
    out.sum().backward()
    assert x.grad is not None and sam.neck_hd[0].weight.grad is not None


def test_freeze():
    sam = tiny()
    sam.freeze()
    assert not any(p.requires_grad for p in sam.parameters())
    sam.freeze(False)
    assert all(p.requires_grad for p in sam.parameters())


# -- errors --------------------------------------------------------------------------------------------------------
def test_unknown_variant_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown SAM variant 'sam_b'.*sam_b_downsample"):
        SAMEncoder(variant="sam_b")


def test_missing_sizes_are_named():
    with pytest.raises(ConfigError, match="needs image_size, patch_size, width"):
        SAMEncoder(variant=None, layers=2, heads=2, global_attn_indexes=[1], neck_dim=8, downsample_channels=[8])


def test_bad_sizes():
    with pytest.raises(ConfigError, match="image_size 70 is not a multiple of patch_size 16"):
        tiny(image_size=70)
    with pytest.raises(ConfigError, match=r"global_attn_indexes \[\] must name at least one block in 0..1"):
        tiny(global_attn_indexes=[])
    with pytest.raises(ConfigError, match=r"global_attn_indexes \[2\]"):
        tiny(global_attn_indexes=[2])
    with pytest.raises(ConfigError, match="window_size 0 must be at least 1"):
        tiny(window_size=0)
    with pytest.raises(ConfigError, match="resample_size 10 must be divisible by 2\\*\\*2"):
        tiny(resample_size=10)
