"""Renders that vary what should not matter, and the drawn-elsewhere test set (issue 15, item 4)."""

import hashlib
import json
import math

import pytest
from PIL import Image

from unimm.bench import evaluate_generation
from unimm.bench.elsewhere import METHOD, make_elsewhere
from unimm.bench.export import EXPORT_SPLITS, export_split, load_specs
from unimm.bench.shapes import BACKGROUND, BACKGROUND_MARGIN, PALETTE, VARIATIONS, ShapesConfig, make_split
from unimm.registry import ConfigError
from unimm.train.autoencoder import load_image_tensor

VARIED = ShapesConfig(variations=True)


def _digest(samples) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(s.image().tobytes())
        h.update(json.dumps(s.scene.to_dict()).encode())
    return h.hexdigest()


def test_variations_are_seeded_and_vary_what_they_say():
    a, b = make_split("train", 60, 0, VARIED), make_split("train", 60, 0, VARIED)
    assert _digest(a) == _digest(b)  # same seed, same files
    other = make_split("train", 60, 1, VARIED)
    assert [s.scene.background for s in other] != [s.scene.background for s in a]
    sizes = {s.scene.image_size for s in a}
    low, high = VARIATIONS["render_size"]
    assert len(sizes) > 20 and low <= min(sizes) and max(sizes) <= high
    assert {s.scene.supersample for s in a} == {1, 4}
    for s in a:
        assert s.image().size == (s.scene.image_size,) * 2
        assert all(math.dist(s.scene.background, PALETTE[c]) >= BACKGROUND_MARGIN for c in VARIED.colours)
        assert max(shape.size for shape in s.scene.shapes) <= round(VARIATIONS["shape_size"][1] * s.scene.image_size)
    assert any(max(sh.size for sh in s.scene.shapes) > 0.45 * s.scene.image_size for s in a)  # bigger than plain


def test_questions_and_captions_still_match_the_scene():
    for s in make_split("test", 40, 0, VARIED):
        assert s.spec == s.scene.spec() and s.caption == s.spec.caption()
        for qa in s.qa:
            if qa.qtype == "count" and qa.question == "how many shapes are there?":
                assert qa.answer == ["zero", "one", "two", "three"][len(s.scene.shapes)]
            if qa.qtype == "colour":
                kind = qa.question.split("the ")[1].rstrip("?")
                assert qa.answer == next(sh.colour for sh in s.scene.shapes if sh.kind == kind)


def test_plain_splits_are_unchanged_by_the_option():
    plain = make_split("train", 5, 0)
    assert all(s.scene.background == BACKGROUND and s.scene.image_size == 32 for s in plain)
    assert "supersample" not in plain[0].scene.to_dict() and "variations" not in ShapesConfig().to_dict()


@pytest.mark.parametrize("split, config", [("test", VARIED), ("elsewhere", ShapesConfig())])
def test_the_checker_reads_varied_and_elsewhere_pictures(tmp_path, split, config):
    folder = export_split(tmp_path / split, split, 60, 0, config)
    info = json.loads((folder / "info.json").read_text())
    if split == "elsewhere":
        assert info["method"] == METHOD and info["split"] == "elsewhere"
    else:
        assert info["config"]["variations"] == VARIATIONS
    records = [json.loads(line) for line in (folder / "spec.jsonl").read_text().splitlines()]
    with Image.open(folder / records[0]["image"]) as image:
        assert image.size[0] == records[0]["scene"]["image_size"]  # stored at the size it was drawn at
    specs = load_specs(folder)
    images = load_image_tensor([p for p, _, _ in specs], 32)  # as the model's transforms resize them
    scores = evaluate_generation(images, [s for _, s, _ in specs], value_range=(-1, 1))
    assert scores["accuracy"]["overall"] >= 0.95, scores["accuracy"]


def test_elsewhere_keeps_the_test_scenes_meaning_and_draws_them_otherwise():
    test = make_split("test", 20, 0)
    elsewhere = make_elsewhere(20, 0)
    assert [s.caption for s in elsewhere] == [s.caption for s in test]
    assert [s.qa for s in elsewhere] == [s.qa for s in test]
    assert all(s.scene.image_size >= 40 and s.scene.background != BACKGROUND for s in elsewhere)
    assert _digest(elsewhere) == _digest(make_elsewhere(20, 0))


def test_bad_options_fail_in_one_line():
    with pytest.raises(ConfigError, match="variations must be true or false"):
        ShapesConfig(variations="yes")
    with pytest.raises(ConfigError, match="unknown split 'elswhere'"):
        export_split("/tmp/unused", "elswhere", 1)
    with pytest.raises(ConfigError, match="varies its own drawing"):
        make_elsewhere(1, 0, VARIED)
    assert "elsewhere" in EXPORT_SPLITS
