"""The declared schema of ``train:``: it covers every key the trainer reads, and the shipped recipes pass it."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from unimm.config import CONFIG_DIR
from unimm.registry import ConfigError
from unimm.train import TRAIN_DEFAULTS
from unimm.train.schema import SOURCE_SCHEMA, TRAIN_SCHEMA, check_train_section

RECIPES = sorted((CONFIG_DIR / "recipes").glob("*.yaml"))


def test_schema_declares_exactly_the_trainer_keys():
    from unimm.data import SOURCE_KEYS

    assert set(TRAIN_SCHEMA) == set(TRAIN_DEFAULTS)
    assert set(TRAIN_SCHEMA["samples"]) == set(TRAIN_DEFAULTS["samples"])
    assert set(TRAIN_SCHEMA["data"]) == set(TRAIN_DEFAULTS["data"])
    assert set(SOURCE_SCHEMA) == SOURCE_KEYS


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_pass_once_their_manifests_exist(path, tmp_path, monkeypatch):
    train = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    monkeypatch.chdir(tmp_path)  # the recipes name placeholder manifests relative to the working folder
    with pytest.raises(ConfigError, match=r"train\.data\.sources\.\w+\.jsonl: no file"):
        check_train_section(train)
    for spec in train["data"]["sources"].values():
        for manifest in [spec["jsonl"]] if isinstance(spec["jsonl"], str) else spec["jsonl"]:
            Path(manifest).parent.mkdir(parents=True, exist_ok=True)
            Path(manifest).touch()
    check_train_section(train)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"max_grad_norm": -1.0}, r"train\.max_grad_norm = -1\.0: expected a number >= 0, or null"),
        ({"stages": [{"steps": 0, "trainable": "backbone", "mixture": {"a": 1}, "lr": 1e-3}]},
         r"train\.stages\[stage1\]\.steps = 0: expected an integer >= 1"),
        ({"stages": [{"steps": 1, "trainable": "backbone", "mixture": {"a": 0}, "lr": 1e-3}]},
         r"train\.stages\[stage1\]\.mixture = \{'a': 0\}: expected a mapping of source name -> ratio >= 0, at least"),
        ({"stages": [{"steps": 1, "trainable": "backbone", "mixture": {"a": 1}}]},
         r"train\.stages\[stage1\]: missing 'lr'"),
        ({"stages": [{"steps": 1, "trainable": "backbone", "mixture": {"a": 1}, "lr": "1e-3"}]},
         r"train\.stages\[stage1\]\.lr = '1e-3': expected a number > 0"),
        ({"samples": {"questions": [{"question": "what?", "image": "nowhere.png"}]}},
         r"train\.samples\.questions\[0\]\.image: no file nowhere\.png"),
        ({"samples": {"max_new_token": 3}},
         r"train\.samples\.max_new_token: unknown key\. Did you mean 'max_new_tokens'"),
    ],
    ids=["grad-norm", "steps", "mixture", "missing-lr", "string-lr", "question-image", "samples-key"],
)  # fmt: skip
def test_wrong_values_name_their_path(change, message):
    with pytest.raises(ConfigError, match=message):
        check_train_section(change)
