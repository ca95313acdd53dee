"""Freeze policies of the three stages, per-part learning rates and the schedule, on the tiny golden models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from unimm.registry import ConfigError
from unimm.train import apply_stage, build_optimizer, frozen_parts_to_eval, lr_factor

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"

STAGE_I = ["und_aligner", "generator.embed", "generator.aligner", "generator.head"]
STAGE_II = ["und_aligner", "backbone", "generator"]
STAGE_III = ["und_encoder", "und_aligner", "backbone", "generator"]


@pytest.fixture(scope="module")
def janus():
    import unimm

    return unimm.load_pretrained(GOLDEN / "janus_tiny").model


@pytest.fixture(scope="module")
def janusflow():
    import unimm

    return unimm.load_pretrained(GOLDEN / "janusflow_tiny").model


def _expected(model, prefixes: list[str], exclude: tuple[str, ...] = ("generator.autoencoder.",)) -> set[str]:
    return {n for n, _ in model.named_parameters()
            if any(n == p or n.startswith(p + ".") for p in prefixes) and not n.startswith(exclude)}


def _requires_grad(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("trainable", [STAGE_I, STAGE_II, STAGE_III], ids=["I", "II", "III"])
def test_janus_stages_train_exactly_their_parts(janus, trainable):
    names = apply_stage(janus, {"name": "s", "trainable": trainable})
    expected = _expected(janus, trainable)
    assert set(names) == _requires_grad(janus) == expected
    assert not any(n.startswith("generator.autoencoder.") for n in names)  # VQ tokenizer frozen throughout
    assert any(n.startswith("generator.autoencoder.") for n, _ in janus.named_parameters())
    if trainable is STAGE_I:
        assert not any(n.startswith(("backbone.", "und_encoder.")) for n in names)
    if trainable is STAGE_II:
        assert not any(n.startswith("und_encoder.") for n in names) and any(n.startswith("backbone.") for n in names)


def test_janusflow_stages_keep_the_vae_frozen_unless_named(janusflow):
    stage_i = ["und_aligner", "und_start_embed", "generator.encoder_aligner", "generator.decoder_aligner_norm",
               "generator.decoder_aligner"]
    assert set(apply_stage(janusflow, {"trainable": stage_i})) == _expected(janusflow, stage_i)
    names = apply_stage(janusflow, {"trainable": STAGE_III})
    assert "und_start_embed" not in names and not any(n.startswith("generator.autoencoder.") for n in names)
    assert any(n.startswith("generator.encoder.") for n in names)
    # Asked for explicitly, the VAE trains.
    names = apply_stage(janusflow, {"trainable": ["generator", "generator.autoencoder"]})
    assert _expected(janusflow, ["generator"], exclude=()) == set(names)
    # `frozen` carves parts out of trained ones.
    names = apply_stage(janusflow, {"trainable": ["generator"], "frozen": ["generator.decoder"]})
    assert not any(n.startswith("generator.decoder.") for n in names) and names


def test_frozen_parts_go_to_eval_mode(janus):
    apply_stage(janus, {"trainable": STAGE_I})
    janus.train()
    switched = frozen_parts_to_eval(janus)
    assert {"und_encoder", "backbone", "generator.autoencoder"} <= set(switched)
    assert not janus.backbone.training and janus.generator.head.training


def test_unknown_part_paths_fail_with_a_suggestion(janus):
    with pytest.raises(ConfigError, match=r"no part 'generator\.heads'\. Did you mean 'generator\.head'\?"):
        apply_stage(janus, {"name": "stage1", "trainable": ["generator.heads"]})
    with pytest.raises(ConfigError, match="stage1.*trains no parameter"):
        apply_stage(janus, {"name": "stage1", "trainable": ["generator.autoencoder"],
                            "frozen": ["generator.autoencoder"]})


def test_per_part_learning_rates_and_no_decay_on_vectors(janus):
    apply_stage(janus, {"trainable": STAGE_II})
    optimizer = build_optimizer(janus, {"lr": 1e-3, "weight_decay": 0.1, "lr_scale": {"backbone": 0.1}})
    by_name = {n: g for g in optimizer.param_groups for n in g["names"]}
    assert set(by_name) == _requires_grad(janus)
    for name, group in by_name.items():
        assert math.isclose(group["lr"], 1e-4 if name.startswith("backbone.") else 1e-3)
        param = dict(janus.named_parameters())[name]
        assert group["weight_decay"] == (0.0 if param.ndim <= 1 else 0.1)
    with pytest.raises(ConfigError, match="lr_scale"):
        build_optimizer(janus, {"lr": 1e-3, "lr_scale": {"backbnoe": 0.1}})


def test_warmup_then_cosine_or_constant():
    assert lr_factor(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(9, 100, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(50, 100, warmup_steps=10, schedule="constant") == 1.0
    assert lr_factor(10, 100, warmup_steps=10, schedule="cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, warmup_steps=10, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="schedule must be one of"):
        lr_factor(0, 10, schedule="linear")
