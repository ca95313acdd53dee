"""The reproduction end to end at smoke size: every experiment of configs/experiments/shapes.yaml, a few steps each."""

import json

import pytest
import torch
from PIL import Image

from unimm.experiments.reproduce import experiment_config, load_experiments, reproduce, trained_tasks
from unimm.pretrained import load_pretrained
from unimm.registry import ENCODERS, ConfigError

SMOKE = [
    "budget.steps=4", "budget.evals=2", "data.train=48", "data.test=6",
    "autoencoders.llamagen_vq.steps=3", "autoencoders.autoencoder_kl.steps=3", "und_encoder_pretraining.steps=3",
]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    spec = load_experiments("experiments/shapes", SMOKE)
    report = reproduce(spec, out, command="unimm reproduce --set " + " ".join(SMOKE))
    return spec, out, report


@pytest.mark.slow
def test_smoke_reproduction_writes_the_report(smoke_run):
    spec, out, report = smoke_run
    results = json.loads((out / "results.json").read_text())["experiments"]
    assert list(results) == list(spec.experiments)
    text = report.read_text()
    for name, r in results.items():
        assert f"| {name} |" in text
        assert [c["step"] for c in r["curve"]] == [2, 4]
        assert set(r["final"]) == set(r["tasks"])
    # Exp-E / Exp-F: the single-task runs are scored only on what they trained.
    assert results["und_only"]["tasks"] == ["understanding"]
    assert results["gen_only"]["tasks"] == ["generation"]
    assert results["janus"]["tasks"] == ["generation", "understanding"]
    assert "## Understanding encoder" in text and "pre-trained understanding encoder" in text
    assert json.loads((out / "results.json").read_text())["und_encoder"]["settings"]["steps"] == 3
    for picture in ("plots/loss.png", "plots/scores.png", "grids/generation.png",
                    "grids/autoencoder_llamagen_vq.png", "grids/autoencoder_autoencoder_kl.png"):
        with Image.open(out / picture) as image:
            assert image.size[0] > 100
    # every experiment trained the same budget: one checkpointed step count in its metrics
    for name in results:
        steps = [json.loads(line)["step"] for line in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        assert max(steps) == 4


@pytest.mark.slow
def test_final_models_are_self_contained_and_a_rerun_reuses_them(smoke_run):
    spec, out, _ = smoke_run
    model, processor, cfg = load_pretrained(out / "runs" / "janusflow" / "final")
    assert cfg.model.generator.autoencoder.path is None  # the trained VAE's weights travel in the model file
    model, processor, cfg = load_pretrained(out / "runs" / "shared_encoder" / "final")
    assert model.und_encoder.tokenizer is model.generator.autoencoder  # one tokenizer for both paths (tied)
    assert cfg.model.generator.autoencoder.path is None and "autoencoder" not in cfg.model.und_encoder
    model, processor, cfg = load_pretrained(out / "runs" / "janus_pretrained_vit" / "final")
    assert cfg.model.und_encoder.path is None  # the pre-trained encoder travels in the model file
    before = (out / "runs" / "janus" / "result.json").stat().st_mtime_ns
    reproduce(spec, out, only=["janus"])
    assert (out / "runs" / "janus" / "result.json").stat().st_mtime_ns == before


@pytest.mark.slow
def test_an_interrupted_experiment_restarts_cleanly(smoke_run):
    spec, out, _ = smoke_run
    run = out / "runs" / "gen_only"
    (run / "result.json").unlink()  # as if the process died before the experiment finished
    (run / "metrics.jsonl").write_text('{"step": 99, "loss": 1.0}\n')
    result = reproduce(spec, out, only=["gen_only"])
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 99 not in steps and max(steps) == 4
    assert "| gen_only |" in result.read_text()


def test_experiment_configs_differ_only_where_they_say(tmp_path):
    spec = load_experiments("experiments/shapes")
    configs = {name: experiment_config(spec, name, tmp_path) for name in spec.experiments}
    backbone = configs["janus"].model.backbone
    for name, cfg in configs.items():
        assert cfg.model.backbone == backbone, name  # same LLM everywhere
        assert cfg.train.stages[0].steps == spec.budget.steps, name
    assert configs["janusflow"].model.generator.repa_layer == 2
    assert configs["janusflow_no_repa"].model.generator.repa_layer is None
    assert configs["shared_encoder"].model.und_encoder.type == "shared_vq"
    assert "autoencoder" not in configs["shared_encoder"].model.und_encoder  # it shares the generation tokenizer
    assert configs["shared_encoder"].model.generator.autoencoder.path == str(tmp_path / "autoencoders/llamagen_vq")
    assert trained_tasks(configs["und_only"]) == ["understanding"]
    assert trained_tasks(configs["gen_only"]) == ["generation"]
    pretrained = configs["janus_pretrained_vit"]
    assert pretrained.model.und_encoder.path == str(tmp_path / "encoders/und_encoder")
    assert list(pretrained.train.stages[0].trainable) == ["und_aligner", "backbone", "generator"]
    assert configs["janus"].model.und_encoder.get("path") is None


def test_bad_experiment_files_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'experiment'"):
        load_experiments("experiments/shapes", ["experiment.x=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiments:\n  a: {overrides: []}\n")
    with pytest.raises(ConfigError, match="give 'config'"):
        load_experiments(bad)
    bad.write_text("experiments:\n  a: {config: shapes/janus, pretrained_und_encoder: true}\n")
    with pytest.raises(ConfigError, match="no 'und_encoder_pretraining' section"):
        load_experiments(bad)
    spec = load_experiments("experiments/shapes")
    with pytest.raises(ConfigError, match="no such experiment"):
        reproduce(spec, tmp_path, only=["janos"])


@pytest.mark.slow
def test_the_default_model_recipe_runs_at_smoke_size(tmp_path):
    # configs/experiments/shapes-default.yaml made the shipped model: a pre-trained, frozen ViT under each mixture.
    smoke = ["budget.steps=2", "budget.evals=1", "data.train=32", "data.test=4", "autoencoders.llamagen_vq.steps=2",
             "und_encoder_pretraining.steps=2"]
    spec = load_experiments("experiments/shapes-default", smoke)
    reproduce(spec, tmp_path, command="unimm reproduce --experiments experiments/shapes-default")
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["experiments"]) == {"balanced", "generation_heavy"}
    assert results["und_encoder"]["settings"]["steps"] == 2
    cfg = load_pretrained(tmp_path / "runs" / "generation_heavy" / "final").config
    assert cfg.model.und_encoder.path is None and cfg.train.stages[0].mixture.t2i == 3
    # balanced trained an understanding step (which would move an unfrozen encoder) and kept the encoder it began with
    run = tmp_path / "runs" / "balanced"
    assert any("loss/understanding" in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    model = load_pretrained(run / "final").model
    pretrained = ENCODERS.build({"type": "siglip", "path": str(tmp_path / "encoders" / "und_encoder")}, where="x")
    for (name, a), b in zip(model.und_encoder.state_dict().items(), pretrained.state_dict().values()):
        assert torch.equal(a, b), name
