"""``describe``: what ``GET /v1/model`` and the demo's header show, read from the part contracts (models built on
the meta device: only classes, shapes and declared options are read)."""

from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

from unimm.build import build_model
from unimm.config import load_config
from unimm.serving.model_info import describe, model_name


def _model(overrides=()):
    cfg = load_config("janus_tiny", list(overrides))
    with torch.device("meta"):
        return build_model(cfg), cfg


def test_flow_model_lists_its_own_options_and_parts():
    model, cfg = _model(["model.generator=@parts/generator/flow_tiny"])
    cfg.sample = OmegaConf.create({"num_steps": 3})
    info = describe(model, SimpleNamespace(image_size=32), cfg)
    assert info["name"] == cfg.name and info["device"] == "meta"
    assert info["parts"]["generator"]["type"] == "RectifiedFlowPath"
    assert info["parts"]["generator"]["parameters"] == sum(p.numel() for p in model.generator.parameters())
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    options = info["generation"]["options"]
    assert set(options) == set(model.generator.sample_options) and "num_steps" in options and "top_k" not in options
    assert options["num_steps"]["type"] == "int" and options["num_steps"]["min"] == 1
    assert options["num_steps"]["default"] == 3  # the config's sample: value wins over the declared default
    assert info["generation"]["image_size"] == model.generator.image_size


def test_understanding_only_model_has_no_generation():
    model, cfg = _model()
    model.generator = None
    info = describe(model, SimpleNamespace(image_size=32), None, name="mine")
    assert info["generation"] is None and "generator" not in info["parts"] and info["name"] == "mine"
    assert model_name("/models/Janus-Pro-1B") == "Janus-Pro-1B" and model_name(None, cfg) == cfg.name
