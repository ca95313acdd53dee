"""The ``unimm`` command: list, config show (and its error path), understand, generate and convert."""

import pytest
import torch
from PIL import Image

import unimm
from conftest import GOLDEN
from unimm.cli import main
from unimm.registry import ALL_REGISTRIES

JANUS = GOLDEN / "janus_tiny"


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind, registry in ALL_REGISTRIES.items():
        assert f"{kind} ({registry.kind}):" in out
        for name in registry.names():
            assert f"  {name} " in out


def test_config_show(capsys):
    assert main(["config", "show", "janus_tiny", "model.backbone.num_hidden_layers=1"]) == 0
    out = capsys.readouterr().out
    assert "name: janus-tiny" in out and "num_hidden_layers: 1" in out
    assert "# built:" in out and "#   und_encoder  SigLIPEncoder" in out and "#   total " in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["janus_tiny", "model.und_aligner.dept=2"], "model.und_aligner.dept: unknown key for aligner 'mlp_gelu'. "
                                                     "Did you mean 'depth'?"),
        (["janus_tinny"], "no config file 'janus_tinny'. Did you mean 'janus_tiny'?"),
        (["janus_tiny", "model.backbone"], "override 'model.backbone' must look like key=value"),
    ],
)
def test_config_show_errors_exit_2_without_a_traceback(capsys, args, message):
    assert main(["config", "show", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("unimm: error: ") and message in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_understand(capsys):
    args = ["understand", "--model", str(JANUS), "--image", str(JANUS / "und_image.png"), "--question",
            "What is in the picture?", "--max-new-tokens", "6"]
    assert main(args) == 0
    out = capsys.readouterr().out
    model, processor, _ = unimm.load_pretrained(JANUS)
    batch = processor([{"role": "user", "content": "<image_placeholder>\nWhat is in the picture?"},
                       {"role": "assistant", "content": ""}], [JANUS / "und_image.png"])
    tokens = model.generate_text(batch, max_new_tokens=6, eos_id=processor.eos_id, pad_id=processor.pad_id)
    expected = processor.decode(tokens[0])
    assert expected.strip(), "the tiny model answered nothing; the check below would be empty"
    assert out == expected.strip() + "\n"


def test_understand_missing_image_is_a_clean_error(capsys, tmp_path):
    args = ["understand", "--model", str(JANUS), "--image", str(tmp_path / "nope.png"), "--question", "hi"]
    assert main(args) == 2
    assert f"unimm: error: image file not found: {tmp_path / 'nope.png'}" in capsys.readouterr().err


def test_generate_writes_pngs(capsys, tmp_path):
    args = ["generate", "--model", str(JANUS), "--override", "model.generator.image_size=16", "--prompt", "a cat",
            "--num-images", "1", "--out", str(tmp_path), "--prefix", "cat"]
    assert main(args) == 0
    paths = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in paths] == ["cat_000.png"]
    assert str(paths[0]) in capsys.readouterr().out
    with Image.open(paths[0]) as image:
        assert image.size == (16, 16) and image.mode == "RGB"


def test_generate_several_prompts_into_a_grid(capsys, tmp_path):
    args = ["generate", "--model", str(JANUS), "--override", "model.generator.image_size=16", "--prompt", "a cat",
            "--prompt", "a dog", "--num-images", "3", "--out", str(tmp_path), "--grid", str(tmp_path / "grid.png"),
            "--grid-scale", "2"]
    assert main(args) == 0
    assert len(list(tmp_path.glob("image_*.png"))) == 6
    with Image.open(tmp_path / "grid.png") as grid:  # 3 columns, 2 rows of 32 px tiles with 2 px padding
        assert grid.size == (2 + 3 * 34, 2 + 2 * 34)


def test_convert(capsys, tmp_path):
    assert main(["convert", str(JANUS), str(tmp_path / "converted")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "converted")
    assert (tmp_path / "converted" / "config.yaml").is_file()
    original, _, _ = unimm.load_pretrained(JANUS)
    converted, _, _ = unimm.load_pretrained(tmp_path / "converted")
    for key, value in original.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key


def test_convert_leaves_out_the_runs_train_section(tmp_path):
    """A run's final/ carries its recipe (data and output paths of the machine that trained it); the model folder
    converted from it keeps name, model, processor and sample only."""
    from omegaconf import OmegaConf

    from unimm.pretrained import save_pretrained

    model, processor, cfg = unimm.load_pretrained(JANUS)
    run_cfg = OmegaConf.merge(cfg, {"sample": {"temperature": 0.7}, "train": {"output_dir": "/elsewhere/runs/x"}})
    save_pretrained(model, processor, run_cfg, tmp_path / "final")
    assert "train" in OmegaConf.load(tmp_path / "final" / "config.yaml")
    assert main(["convert", str(tmp_path / "final"), str(tmp_path / "model")]) == 0
    written = OmegaConf.load(tmp_path / "model" / "config.yaml")
    assert "train" not in written and written.sample.temperature == 0.7
    assert OmegaConf.to_container(written.model) == OmegaConf.to_container(cfg.model)


def test_convert_bad_source_exits_2(capsys, tmp_path):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_bench_export_writes_a_split(tmp_path, capsys):
    assert main(["bench", "export", str(tmp_path / "shapes"), "--split", "test", "--n", "3"]) == 0
    assert len((tmp_path / "shapes" / "t2i.jsonl").read_text().splitlines()) == 3
    assert len(list((tmp_path / "shapes" / "images").glob("*.png"))) == 3
