"""Exporting a split: the folder layout and manifest records the trainer reads, and a round trip to the checker."""

import json

import numpy as np
import pytest
from PIL import Image

from unimm.bench.checker import evaluate_generation, evaluate_understanding
from unimm.bench.export import export_main, load_specs, read_jsonl
from unimm.bench.shapes import ANSWER_VOCAB, ShapesConfig, make_split
from unimm.registry import ConfigError


def test_export_writes_manifests_the_trainer_reads(tmp_path, capsys):
    out = tmp_path / "shapes_test"
    assert export_main([str(out), "--split", "test", "--n", "6", "--seed", "1", "--max-shapes", "3"]) == 0
    assert "wrote 6 test images" in capsys.readouterr().out
    samples = make_split("test", 6, seed=1, config=ShapesConfig(max_shapes=3))

    t2i = read_jsonl(out / "t2i.jsonl")
    assert t2i == [{"image": f"images/{i:06d}.png", "caption": s.caption} for i, s in enumerate(samples)]
    for record, sample in zip(t2i, samples):  # paths are relative to the manifest and hold the rendered scene
        assert np.array_equal(np.asarray(Image.open(out / record["image"])), np.asarray(sample.image()))

    und = read_jsonl(out / "und.jsonl")
    assert len(und) == sum(len(s.qa) for s in samples)
    first = samples[0].qa[0]
    assert und[0] == {
        "image": "images/000000.png",
        "conversations": [
            {"role": "user", "content": f"<image>\n{first.question}"},
            {"role": "assistant", "content": first.answer},
        ],
        "qtype": first.qtype,
    }
    # und.jsonl records are accepted by the understanding scorer as they are.
    answers = [r["conversations"][1]["content"] for r in und]
    assert evaluate_understanding(answers, und)["accuracy"]["overall"] == 1.0

    specs = load_specs(out)
    assert [spec for _, spec, _ in specs] == [s.spec for s in samples]
    assert [scene for _, _, scene in specs] == [s.scene for s in samples]
    report = evaluate_generation([path for path, _, _ in specs], [spec for _, spec, _ in specs])
    assert report["accuracy"]["overall"] == 1.0

    info = json.loads((out / "info.json").read_text())
    assert info["split"] == "test" and info["seed"] == 1 and info["n"] == 6
    assert info["config"]["max_shapes"] == 3 and info["answer_vocab"] == list(ANSWER_VOCAB)


def test_export_refuses_to_overwrite(tmp_path):
    assert export_main([str(tmp_path), "--n", "2"]) == 0
    with pytest.raises(ConfigError, match="already holds an exported split.*--overwrite"):
        export_main([str(tmp_path), "--n", "2"])
    assert export_main([str(tmp_path), "--n", "3", "--overwrite"]) == 0
    assert len(read_jsonl(tmp_path / "t2i.jsonl")) == 3
