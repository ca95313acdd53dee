"""Full-size models on the meta device: names, shapes and parameter totals equal the released checkpoints'.

For each released ``config.json`` in ``tests/fixtures/golden/official`` the model is built on the meta device
(no memory, no download), the manifest's names are converted to unimm's with the same converters that load real
checkpoints, and the two sets of names and shapes must be identical. The shipped YAML configs must build the
very same model.
"""

import json

import pytest
import torch

import unimm
from unimm.checkpoint.released import config_from_released, convert_released, released_kind
from conftest import OFFICIAL

RELEASED = {
    "Janus-1.3B": "janus_1.3b",
    "Janus-Pro-1B": "janus_pro_1b",
    "Janus-Pro-7B": "janus_pro_7b",
    "JanusFlow-1.3B": "janusflow_1.3b",
}


def shapes(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def released_shapes(name: str) -> tuple[dict[str, tuple], int, str]:
    manifest = json.loads((OFFICIAL / name / "manifest.json").read_text())
    config = json.loads((OFFICIAL / name / "config.json").read_text())
    kind = released_kind(config)
    buffers = set(manifest["buffers_in_state_dict"])
    fake = {k: torch.empty(v, device="meta") for k, v in manifest["state_dict"].items() if k not in buffers}
    converted = {k: tuple(v.shape) for k, v in convert_released(fake, kind).items()}
    assert sum(torch.Size(v).numel() for v in converted.values()) == manifest["params"]
    return converted, manifest["params"], kind


def trainable_shapes(model: torch.nn.Module) -> dict[str, tuple]:
    """Parameter shapes, leaving out the VAE (a separate diffusers folder, not in the released checkpoints)."""
    return {k: tuple(p.shape) for k, p in model.named_parameters() if not k.startswith("generator.autoencoder.vae.")}


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_config_builds_the_released_model(name):
    expected, total, kind = released_shapes(name)
    config = json.loads((OFFICIAL / name / "config.json").read_text())
    with torch.device("meta"):
        model = unimm.build_model(config_from_released(config))
    got = trainable_shapes(model)
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected
    assert sum(torch.Size(s).numel() for s in got.values()) == total


@pytest.mark.parametrize("name,config_name", list(RELEASED.items()))
def test_shipped_yaml_matches_released_config(name, config_name):
    config = json.loads((OFFICIAL / name / "config.json").read_text())
    with torch.device("meta"):
        from_yaml = unimm.build_model(config_name)
        from_release = unimm.build_model(config_from_released(config))
    assert shapes(from_yaml) == shapes(from_release)
