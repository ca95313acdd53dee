"""``unimm eval geneval`` (unimm/eval/geneval.py): GenEval's folder layout, settings, resume and input checks.

The command runs on the shipped shapes model at 16 px (16 image tokens: fast) over a few GenEval lines in
tests/fixtures/geneval; the images it writes are compared with the model's own samples under the seeds the module
documents, so the recorded settings are proven to reproduce them, and a resumed run redraws exactly what was lost.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import unimm
from unimm.cli import main
from unimm.eval.geneval import _chunk_seed, read_prompts, sample_geneval, sampling_options
from unimm.images import to_pil
from unimm.pretrained import DEFAULT_MODEL
from unimm.registry import InputError

PROMPTS = Path(__file__).resolve().parents[1] / "fixtures" / "geneval" / "evaluation_metadata.jsonl"
RUN = ["--prompts", str(PROMPTS), "--n-samples", "2", "--image-size", "16", "--seed", "3", "--guidance", "3"]


@pytest.fixture(scope="module")
def shipped():
    return unimm.load_pretrained(DEFAULT_MODEL, overrides=["model.generator.image_size=16"])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("geneval") / "out"
    assert main(["eval", "geneval", *RUN, "--out", str(out)]) == 0
    return out


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_layout_metadata_and_grid(run):
    lines = PROMPTS.read_text().splitlines()
    assert sorted(p.name for p in run.iterdir()) == ["00000", "00001", "00002", "settings.json"]
    for i, line in enumerate(lines):
        folder = run / f"{i:05d}"
        assert (folder / "metadata.jsonl").read_text() == line + "\n"  # the line exactly as given
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
        assert pixels(folder / "samples" / "0000.png").shape == (16, 16, 3)
        with Image.open(folder / "grid.png") as grid:
            assert grid.size == (2 + 2 * 18, 2 + 18)  # two 16 px samples in a row, 2 px padding


def test_settings_record_the_run_and_reproduce_its_images(run, shipped):
    settings = json.loads((run / "settings.json").read_text())
    assert settings == {
        "benchmark": "geneval", "prompts": str(PROMPTS), "num_prompts": 3, "model": str(DEFAULT_MODEL),
        "overrides": [], "generator": "VQGenerationPath", "image_size": 16, "num_image_tokens": 16,
        "n_samples": 2, "batch_size": 2, "seed": 3,
        "sample_options": {"guidance": 3.0, "temperature": 1.0, "top_k": None, "top_p": None, "compile": False},
        "device": "cpu", "dtype": "torch.float32", "unimm_version": unimm.__version__,
    }
    model, processor, _ = shipped
    prompt = json.loads(PROMPTS.read_text().splitlines()[1])["prompt"]
    ids, mask = processor.generation_prompts([prompt] * 2)
    images = model.generate_images(ids, mask, pad_id=processor.pad_id, seed=_chunk_seed(3, 1, 0),
                                   **settings["sample_options"])
    for k, image in enumerate(to_pil(images)):
        assert np.array_equal(pixels(run / "00001" / "samples" / f"{k:04d}.png"), np.asarray(image))
    assert not np.array_equal(pixels(run / "00001" / "samples" / "0000.png"),
                              pixels(run / "00001" / "samples" / "0001.png"))  # the samples differ


def test_skip_existing_redraws_only_what_is_missing(run, capsys):
    before = {p: pixels(p) for p in sorted(run.glob("*/samples/*.png"))}
    lost = run / "00001" / "samples" / "0001.png"
    lost.unlink()
    kept_time = (run / "00000" / "samples" / "0000.png").stat().st_mtime_ns
    assert main(["eval", "geneval", *RUN, "--out", str(run), "--skip-existing"]) == 0
    assert capsys.readouterr().out.strip() == f"{run}: 1 prompt(s) sampled, 2 already done"
    assert (run / "00000" / "samples" / "0000.png").stat().st_mtime_ns == kept_time  # not redrawn
    for path, image in before.items():
        assert np.array_equal(pixels(path), image), path  # the redrawn prompt gives the same images


def test_resuming_with_other_settings_is_refused(run, shipped):
    model, processor, _ = shipped
    settings = {**json.loads((run / "settings.json").read_text()), "seed": 4}
    with pytest.raises(InputError, match=r"--skip-existing: .*settings\.json has seed = 3 but this run has 4; "
                                         r"resume with the same settings or choose another --out"):  # fmt: skip
        sample_geneval(model, processor, read_prompts(PROMPTS), run, settings=settings, options={}, seed=4,
                       skip_existing=True)


def test_the_recipe_wins_over_the_config_and_flags_over_the_recipe(shipped):
    model, _, cfg = shipped
    assert cfg.sample.guidance == 2.0  # the shapes model's own default for `unimm generate`
    recipe = sampling_options(model, {}, {"guidance": 1.0, "temperature": 1.0})
    assert recipe == {"guidance": 5.0, "temperature": 1.0, "top_k": None, "top_p": None, "compile": False}
    given = sampling_options(model, {"guidance": 2.5, "top_k": 8}, {"guidance": 1.0})
    assert given == {"guidance": 2.5, "temperature": 1.0, "top_k": 8, "top_p": None, "compile": False}


def test_a_flow_model_keeps_its_own_defaults_and_takes_steps(tmp_path):
    cfg = unimm.load_config("janusflow_tiny")
    torch.manual_seed(0)
    model = unimm.build_model(cfg).eval()
    processor = unimm.build_processor(cfg, model)
    options = sampling_options(model, {"num_steps": 2}, {})
    assert options == {"guidance": 2.0, "num_steps": 2}  # JanusFlow's w = 2, not the VQ recipe's 5
    prompts = read_prompts(PROMPTS)[:1]
    assert sample_geneval(model, processor, prompts, tmp_path, settings={}, options=options, n_samples=1) == (1, 0)
    assert pixels(tmp_path / "00000" / "samples" / "0000.png").shape == (16, 16, 3)


def test_a_prompt_too_long_fails_before_anything_is_written(shipped, tmp_path):
    model, processor, _ = shipped
    prompts = read_prompts(PROMPTS) + [("{}", {"prompt": "a photo of a bench " * 100})]
    with pytest.raises(InputError, match=r"--prompts line 4: the prompt is \d+ tokens, and with the image's 16 "
                                         r"tokens it exceeds the model's 256 positions; shorten it"):  # fmt: skip
        sample_geneval(model, processor, prompts, tmp_path / "out", settings={}, options={})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ('{"tag": "x"}\n', "line 1: needs a JSON object with a non-empty \"prompt\" string"),
    ('{"prompt": "a cat"}\n{"prompt": \n', "line 2: not JSON (Expecting value at column 12)"),
    ('{"prompt": "a cat"}\n\n{"prompt": "a dog"}\n', "line 2: is empty; GenEval's file has one JSON object per line"),
    ('["a cat"]\n', "line 1: needs a JSON object"),
    ('{"prompt": ""}\n', "line 1: needs a JSON object with a non-empty \"prompt\" string"),
    ('{"prompt": "a cat\u2028on a mat"}\n\n', "line 2: is empty"),  # U+2028 inside a string: still one line
    ("", "the file has no prompts"),
    (b"\xff\xfe{", "not a UTF-8 text file"),
])  # fmt: skip
def test_a_bad_prompts_file_is_one_line_and_exit_2_before_generating(content, message, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["eval", "geneval", "--prompts", str(prompts), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.splitlines()
    separator = " " if message.startswith("line") else ": "
    assert len(lines) == 1 and lines[0].startswith(f"unimm: error: --prompts {prompts}{separator}{message}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--prompts", "{tmp}/none.jsonl"], "--prompts {tmp}/none.jsonl: no such file"),
    (["--prompts", str(PROMPTS), "--n-samples", "0"], "--n-samples = 0: must be at least 1"),
    (["--prompts", str(PROMPTS), "--batch-size", "0"], "--batch-size = 0: must be at least 1"),
    (["--prompts", str(PROMPTS), "--guidance", "-1"], "--guidance = -1.0: must be >= 0.0"),
    (["--prompts", str(PROMPTS), "--steps", "4"], "--steps: the VQGenerationPath does not take this option"),
])  # fmt: skip
def test_option_mistakes_are_one_line_and_exit_2(args, message, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["eval", "geneval", *args, "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("unimm: error: ")
    assert message.replace("{tmp}", str(tmp_path)) in lines[0]
    assert not (tmp_path / "out").exists()
