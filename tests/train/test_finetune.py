"""Fine-tuning a model folder from a recipe that has only ``train:``: the model and processor come from the folder
(``train.init_from``), whether it is unimm's (the shipped shapes model) or a released one (the golden janus_tiny)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import unimm
from unimm.bench.export import export_split
from unimm.config import load_config
from unimm.pretrained import DEFAULT_MODEL
from unimm.registry import ConfigError
from unimm.train import train_main

GOLDEN_JANUS = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "janus_tiny"


@pytest.fixture(scope="module")
def shapes_split(tmp_path_factory) -> Path:
    return export_split(tmp_path_factory.mktemp("finetune") / "shapes-train", "train", 6)


def two_step_overrides(data: Path, out: Path, init_from: Path) -> list[str]:
    return [f"train.init_from={init_from}", f"train.output_dir={out}", "train.batch_size=2", "train.log_every=1",
            "train.progress=false", "train.data.num_threads=1", "train.stages.0.steps=2",
            "train.stages.0.warmup_steps=0", "train.stages.0.lr=1e-3",
            f"train.data.sources.und.jsonl={data / 'und.jsonl'}", f"train.data.sources.t2i.jsonl={data / 't2i.jsonl'}"]


def changed(a: dict, b: dict, prefix: str) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def test_the_shipped_recipe_fine_tunes_the_shipped_model(shapes_split, tmp_path):
    recipe = load_config("finetune/shapes", two_step_overrides(shapes_split, tmp_path / "run", DEFAULT_MODEL))
    assert "model" not in recipe and "processor" not in recipe
    final = train_main(recipe)

    start = unimm.load_pretrained(DEFAULT_MODEL)
    tuned = unimm.load_pretrained(final)
    assert OmegaConf.to_container(tuned.config.model) == OmegaConf.to_container(start.config.model)
    assert tuned.config.train.stages[0].steps == 2 and tuned.config.train.init_from == str(DEFAULT_MODEL)
    assert tuned.config.sample == start.config.sample  # sampling settings come with the model
    before, after = start.model.state_dict(), tuned.model.state_dict()
    assert changed(before, after, "backbone.") and changed(before, after, "und_aligner.")
    assert not changed(before, after, "und_encoder.") and not changed(before, after, "generator.autoencoder.")
    run_config = OmegaConf.load(tmp_path / "run" / "config.yaml")  # the run's record has the whole config
    assert run_config.model.backbone.hidden_size == start.config.model.backbone.hidden_size


def test_a_train_only_recipe_fine_tunes_a_released_folder(shapes_split, tmp_path):
    recipe = load_config("finetune/shapes", two_step_overrides(shapes_split, tmp_path / "run", GOLDEN_JANUS))
    tuned = unimm.load_pretrained(train_main(recipe))
    released = unimm.load_pretrained(GOLDEN_JANUS)
    assert OmegaConf.to_container(tuned.config.model) == OmegaConf.to_container(released.config.model)
    assert changed(released.model.state_dict(), tuned.model.state_dict(), "backbone.")


def test_a_recipe_with_a_model_section_and_init_from_works_as_before(shapes_split, tmp_path, caplog):
    """The folder's model is the one trained; a model section that disagrees with it is named in a warning."""
    recipe = OmegaConf.to_container(load_config(DEFAULT_MODEL / "config.yaml"), resolve=True)
    train = OmegaConf.to_container(load_config("finetune/shapes", two_step_overrides(
        shapes_split, tmp_path / "run", DEFAULT_MODEL)).train, resolve=True)
    with caplog.at_level(logging.WARNING, logger="unimm.train.trainer"):
        tuned = unimm.load_pretrained(train_main(load_config({**recipe, "train": train})))
    assert "config's model section is not used" not in caplog.text  # the same model: nothing to warn about
    assert tuned.config.model.backbone.num_hidden_layers == 4

    recipe["model"]["backbone"]["num_hidden_layers"] = 2
    train["output_dir"] = str(tmp_path / "run2")
    with caplog.at_level(logging.WARNING, logger="unimm.train.trainer"):
        tuned = unimm.load_pretrained(train_main(load_config({**recipe, "train": train})))
    assert f"train.init_from={DEFAULT_MODEL}: the model comes from that folder" in caplog.text
    assert tuned.config.model.backbone.num_hidden_layers == 4


def test_a_recipe_without_a_model_needs_init_from():
    with pytest.raises(ConfigError, match=r"^the config has no 'model' section; add one, or fine-tune a model "
                                          r"folder with train.init_from=FOLDER$"):
        load_config("finetune/shapes")
    with pytest.raises(ConfigError, match=r"^the config has no 'model' section"):
        unimm.build_model(load_config("finetune/shapes", ["train.init_from=somewhere"]))
