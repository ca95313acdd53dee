"""The Janus image-token head: shapes, registry sizes, and the released weights loading without conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import golden_cases

from unimm.checkpoint.io import load_weights
from unimm.heads.image_head import VQImageHead
from unimm.registry import HEADS, ConfigError

JANUS_CASES = golden_cases("janus")


def test_shapes_and_default_width():
    head = VQImageHead(hidden_size=16, codebook_size=40)
    assert head.output_mlp_projector.out_features == 16  # embed_dim defaults to hidden_size
    assert head(torch.randn(2, 5, 16)).shape == (2, 5, 40)
    assert (head.hidden_size, head.codebook_size) == (16, 40)
    x = torch.randn(3, 16)
    manual = head.vision_head(torch.nn.functional.gelu(head.output_mlp_projector(x)))
    torch.testing.assert_close(head(x), manual)


def test_registry_infers_sizes_and_rejects_contradictions():
    head = HEADS.build({"type": "vq_image_head", "embed_dim": 8}, where="model.generator.head",
                       inferred={"hidden_size": 16, "codebook_size": 40})
    assert (head.hidden_size, head.output_mlp_projector.out_features, head.codebook_size) == (16, 8, 40)
    with pytest.raises(ConfigError, match="codebook_size = 41 contradicts the value 40"):
        HEADS.build({"type": "vq_image_head", "codebook_size": 41}, where="model.generator.head",
                    inferred={"hidden_size": 16, "codebook_size": 40})


@pytest.mark.parametrize("folder", JANUS_CASES)
def test_released_gen_head_loads_without_conversion(folder: Path):
    config = json.loads((folder / "config.json").read_text())["gen_head_config"]["params"]
    state = {k[len("gen_head.") :]: v for k, v in load_weights(folder).items() if k.startswith("gen_head.")}
    head = VQImageHead(config["n_embed"], config["image_token_size"], config["image_token_embed"])
    head.load_state_dict(state, strict=True)
    assert head(torch.zeros(1, config["n_embed"])).shape == (1, config["image_token_size"])
