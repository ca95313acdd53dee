"""The low_high_hybrid_split_mlp_gelu aligner: golden parity, structure and released names, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unimm.aligners.hybrid_split import HybridSplitAligner, convert_hybrid_split_aligner, from_released_params
from unimm.registry import ALIGNERS, CheckpointError, ConfigError, InputError

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
SAM_SIGLIP_CASES = [
    p.parent for p in sorted(GOLDEN.glob("*/cases.json")) if json.loads(p.read_text())["kind"] == "sam_siglip"
]


@pytest.mark.parity
@pytest.mark.parametrize("folder", SAM_SIGLIP_CASES, ids=lambda p: p.name)
def test_matches_reference(folder: Path):
    params = json.loads((folder / "cases.json").read_text())["aligner"]
    tensors = load_file(folder / "cases.safetensors")
    aligner = HybridSplitAligner(**from_released_params(params))
    released = {k[len("aligner."):]: v for k, v in load_file(folder / "model.safetensors").items()
                if k.startswith("aligner.")}
    aligner.load_state_dict(convert_hybrid_split_aligner(released), strict=True)
    with torch.no_grad():
        out = aligner((tensors["high_features"], tensors["low_features"]))
    torch.testing.assert_close(out, tensors["aligned"], rtol=1e-4, atol=1e-4)


def test_released_names_and_shapes():
    aligner = HybridSplitAligner(in_dim=1024, out_dim=2048, depth=2)
    assert {k: tuple(v.shape) for k, v in aligner.state_dict().items()} == {
        "high_up_proj.weight": (1024, 1024), "high_up_proj.bias": (1024,),
        "low_up_proj.weight": (1024, 1024), "low_up_proj.bias": (1024,),
        "layers.1.weight": (2048, 2048), "layers.1.bias": (2048,),
    }


def test_depth_one_is_split_projection_and_concat():
    aligner = HybridSplitAligner(in_dim=6, out_dim=8, depth=1)
    assert len(aligner.layers) == 0
    high, low = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    out = aligner((high, low))
    torch.testing.assert_close(out[..., :4], aligner.high_up_proj(high))
    torch.testing.assert_close(out[..., 4:], aligner.low_up_proj(low))


def test_depth_three_alternates_gelu_and_linear():
    aligner = HybridSplitAligner(in_dim=6, out_dim=8, depth=3)
    assert [type(m).__name__ for m in aligner.layers] == ["GELU", "Linear", "GELU", "Linear"]
    assert aligner((torch.randn(1, 3, 6), torch.randn(1, 3, 6))).shape == (1, 3, 8)


def test_registry_infers_widths():
    aligner = ALIGNERS.build({"type": "low_high_hybrid_split_mlp_gelu"}, where="model.und_aligner",
                             inferred={"in_dim": 16, "out_dim": 32})
    assert (aligner.in_dim, aligner.out_dim, aligner.depth) == (16, 32, 2)


def test_errors():
    with pytest.raises(ConfigError, match="out_dim 7 must be even"):
        HybridSplitAligner(4, 7)
    with pytest.raises(ConfigError, match="depth 0 must be at least 1"):
        HybridSplitAligner(4, 8, depth=0)
    aligner = HybridSplitAligner(4, 8)
    with pytest.raises(InputError, match=r"takes the pair \(high, low\).*got Tensor"):
        aligner(torch.randn(1, 3, 4))
    with pytest.raises(InputError, match=r"same batch and token count, got \(1, 3, 4\) and \(1, 2, 4\)"):
        aligner((torch.randn(1, 3, 4), torch.randn(1, 2, 4)))
    with pytest.raises(CheckpointError, match=r"aligner\.layers\.1\.weight, proj\.weight"):
        convert_hybrid_split_aligner({"aligner.layers.1.weight": torch.zeros(1), "proj.weight": torch.zeros(1),
                                      "layers.1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="'mlp_gelu' is not low_high_hybrid_split_mlp_gelu"):
        from_released_params({"projector_type": "mlp_gelu", "input_dim": 4, "n_embed": 8})
