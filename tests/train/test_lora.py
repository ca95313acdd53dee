"""LoRA fine-tuning (unimm/train/lora.py): peft adapters on the backbone and the image head of the golden janus_tiny,
trained on the shapes benchmark's train split in-process; only adapters change, the loss falls for understanding and
for generation, save -> load -> merge keeps the logits, gradient checkpointing gives the same losses, and every
mistake is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import unimm
from unimm.bench.export import export_split
from unimm.cli import main
from unimm.registry import CheckpointError, ConfigError
from unimm.train import Trainer
from unimm.train.lora import ADAPTER_CONFIG, add_adapters

GOLDEN_JANUS = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "janus_tiny"
LORA = {"parts": ["backbone", "generator.head"], "r": 4, "alpha": 8}


@pytest.fixture(scope="module")
def shapes_split(tmp_path_factory) -> Path:
    """Two images of the shapes benchmark: 7 questions and 2 captions, a small fixed set to fit."""
    return export_split(tmp_path_factory.mktemp("lora") / "shapes-train", "train", 2)


def lora_config(data: Path, out: Path, mixture: dict, steps: int, trainable=(), **train) -> dict:
    return {"train": {
        "init_from": str(GOLDEN_JANUS), "output_dir": str(out), "seed": 0, "batch_size": 4, "mixed_precision": "no",
        "save_every": 0, "log_every": 1, "progress": False, "tensorboard": False, "lora": LORA,
        "data": {"num_threads": 1, "sources": {
            "und": {"task": "understanding", "jsonl": str(data / "und.jsonl")},
            "t2i": {"task": "generation", "jsonl": str(data / "t2i.jsonl"), "caption_dropout": 0.0}}},
        "stages": [{"name": "lora", "steps": steps, "trainable": list(trainable), "mixture": mixture, "lr": 1e-2}],
        **train}}


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def trained(shapes_split, tmp_path_factory):
    """A run on both tasks that also trains the understanding aligner in full: (trainer, final folder)."""
    out = tmp_path_factory.mktemp("lora-run")
    trainer = Trainer(lora_config(shapes_split, out, {"und": 1, "t2i": 1}, 6, trainable=["und_aligner"]))
    return trainer, trainer.fit()


def test_only_the_adapters_and_the_named_part_change(trained):
    trainer, _ = trained
    base = unimm.load_pretrained(GOLDEN_JANUS).model.state_dict()
    after = trainer.model.state_dict()
    adapters = [k for k in after if ".lora_" in k]
    assert len(adapters) == 2 * (4 * 2 + 2)  # A and B of q/k/v/o in 2 layers, and of the head's 2 Linear layers
    assert all(not torch.equal(after[k], torch.zeros_like(after[k])) for k in adapters if ".lora_B." in k)
    for name, tensor in after.items():
        if ".lora_" in name:
            continue
        original = base[name.replace(".base_layer.", ".")]
        if name.startswith("und_aligner."):
            assert not torch.equal(tensor, original), name  # the stage's trainable part trained in full
        else:
            assert torch.equal(tensor, original), name  # every other base tensor, adapted layers' included


def test_the_saved_folder_holds_adapters_and_the_base_path(trained):
    trainer, final = trained
    record = json.loads((final / ADAPTER_CONFIG).read_text())
    assert record["base_model"] == str(GOLDEN_JANUS.resolve())
    assert record["parts"]["backbone"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert record["parts"]["generator.head"]["target_modules"] == ["output_mlp_projector", "vision_head"]
    assert sorted(record["trained"]) == sorted(n for n, _ in trainer.model.named_parameters()
                                               if n.startswith("und_aligner."))
    assert not (final / "model.safetensors").exists()
    size = sum(f.stat().st_size for f in final.iterdir())
    full = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    assert size < 0.1 * full


def logits(model, processor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text logits of an understanding batch and image-head logits of a generation prompt."""
    from PIL import Image

    image = Image.new("RGB", (40, 40), (200, 30, 30))
    batch = processor([{"role": "user", "content": "<image>\nwhat colour?"}, {"role": "assistant", "content": "red"}],
                      [image])
    batch.pop("sft_format", None)
    ids, mask = processor.generation_prompts(["a red circle"])
    with torch.no_grad():
        text = model(**batch)
        hidden = model.backbone(model.backbone.embed(ids), attention_mask=mask).hidden_states
        return text, model.generator.head(hidden)


def test_save_load_merge_keep_the_logits(trained, tmp_path, capsys):
    trainer, final = trained
    trainer.model.eval()
    text, image = logits(trainer.model, trainer.processor)
    loaded = unimm.load_pretrained(final, device="cpu", dtype="float32")
    text_l, image_l = logits(loaded.model, loaded.processor)
    torch.testing.assert_close(text_l, text, rtol=0, atol=0)
    torch.testing.assert_close(image_l, image, rtol=0, atol=0)

    assert main(["merge-lora", str(final), str(tmp_path / "merged")]) == 0
    merged = unimm.load_pretrained(capsys.readouterr().out.strip())
    assert not any(".lora_" in k or ".base_layer." in k for k in merged.model.state_dict())
    text_m, image_m = logits(merged.model, merged.processor)
    torch.testing.assert_close(text_m, text, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(image_m, image, rtol=1e-5, atol=1e-5)
    base = unimm.load_pretrained(GOLDEN_JANUS)
    assert not torch.allclose(logits(base.model, base.processor)[1], image, atol=1e-3)  # the adapters did something


@pytest.mark.parametrize("task", ["und", "t2i"])
def test_the_loss_falls_on_a_small_fixed_set(shapes_split, tmp_path, task):
    """Adapters only (``trainable: []``). Measured (40 steps, mean of the first / last 5 losses): understanding
    6.0 -> 1.1, generation (VQ token CE) 4.1 -> 1.6."""
    Trainer(lora_config(shapes_split, tmp_path, {"und": int(task == "und"), "t2i": int(task == "t2i")}, 40)).fit()
    curve = losses(tmp_path)
    assert len(curve) == 40
    assert np.mean(curve[-5:]) < 0.8 * np.mean(curve[:5]), curve


def test_gradient_checkpointing_with_lora_gives_the_same_losses(shapes_split, tmp_path):
    runs = []
    for on in (False, True):
        out = tmp_path / str(on)
        trainer = Trainer(lora_config(shapes_split, out, {"und": 1, "t2i": 1}, 3, grad_checkpointing=on))
        trainer.fit()
        assert trainer.model.backbone.lm.is_activation_checkpointing == on
        runs.append(losses(out))
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5)


def test_a_bfloat16_base_trains_float32_adapters(shapes_split, tmp_path, fresh_accelerate_state):
    """``lora.base_dtype: bfloat16`` (the small-GPU recipe): the base loads in bfloat16 and stays unchanged; the
    adapters and a part the stage trains in full are float32."""
    cfg = lora_config(shapes_split, tmp_path, {"und": 1, "t2i": 1}, 2, trainable=["und_aligner"])
    cfg["train"]["lora"] = {**LORA, "base_dtype": "bfloat16"}
    with pytest.raises(ConfigError, match=r"^train.lora.base_dtype = bfloat16 needs train.mixed_precision: bf16 "):
        Trainer(cfg)
    cfg["train"]["mixed_precision"] = "bf16"
    fresh_accelerate_state()  # the Trainer above fixed this process's precision to "no"
    trainer = Trainer(cfg)
    final = trainer.fit()
    base = unimm.load_pretrained(GOLDEN_JANUS, dtype="bfloat16").model.state_dict()
    for name, param in trainer.model.named_parameters():
        if ".lora_" in name or name.startswith("und_aligner."):
            assert param.dtype == torch.float32, name
        elif not name.startswith("generator.autoencoder."):  # the autoencoder stays float32 in any case
            assert param.dtype == torch.bfloat16, name
            assert torch.equal(param, base[name.replace(".base_layer.", ".")]), name
    assert all(np.isfinite(losses(tmp_path)))
    assert unimm.load_pretrained(final).model.dtype == torch.float32  # adapters apply to a float32 base as well


def test_a_resumed_lora_run_gives_the_losses_of_an_uninterrupted_one(shapes_split, tmp_path):
    """The checkpoint holds the adapted model; a relaunch adds the adapters again before loading it."""
    Trainer(lora_config(shapes_split, tmp_path / "a", {"und": 1, "t2i": 1}, 4)).fit()
    Trainer(lora_config(shapes_split, tmp_path / "b", {"und": 1, "t2i": 1}, 4, stop_after=2)).fit()
    Trainer(lora_config(shapes_split, tmp_path / "b", {"und": 1, "t2i": 1}, 4, resume="latest")).fit()
    assert losses(tmp_path / "b") == losses(tmp_path / "a")


# -- mistakes: one line each ----------------------------------------------------------------------------------
def test_a_target_that_matches_nothing_names_the_part_and_the_candidates():
    model = unimm.load_pretrained(GOLDEN_JANUS).model
    with pytest.raises(ConfigError, match=r"^train.lora.target_modules: 'qkv_proj' matches no module in part "
                                          r"'backbone'; its Linear layers: down_proj, gate_proj, k_proj, lm_head, "
                                          r"o_proj, q_proj, up_proj, v_proj$"):
        add_adapters(model, {"parts": ["backbone"], "target_modules": ["qkv_proj"]})
    with pytest.raises(ConfigError, match=r"^train.lora.parts: the model has no part 'backbon'\. Did you mean"):
        add_adapters(model, {"parts": ["backbon"]})
    with pytest.raises(ConfigError, match=r"^train.lora.target_modules: 'layers' matches 'und_aligner.layers', "
                                          r"a Sequential, which LoRA cannot adapt; its Linear layers: layers.0, "
                                          r"layers.2$"):
        add_adapters(model, {"parts": ["und_aligner"], "target_modules": ["layers"]})
    with pytest.raises(ConfigError, match=r"'generator.head' and 'generator' overlap"):
        add_adapters(model, {"parts": ["generator", "generator.head"]})


def test_target_modules_per_part():
    from unimm.train.lora import lora_layers

    model = unimm.load_pretrained(GOLDEN_JANUS).model
    with pytest.raises(ConfigError, match=r"^train.lora.target_modules.und_aligner: not one of train.lora.parts "
                                          r"\(backbone\)$"):
        add_adapters(model, {"parts": ["backbone"], "target_modules": {"und_aligner": ["layers.0"]}})
    settings = add_adapters(model, {"parts": ["backbone", "und_aligner"], "r": 2,
                                    "target_modules": {"backbone": ["q_proj"]}})
    assert settings["backbone"]["target_modules"] == ["q_proj"]
    assert settings["und_aligner"]["target_modules"] == ["layers.0", "layers.2"]  # the default: every Linear layer
    assert [n for n, _ in lora_layers(model)] == ["und_aligner.layers.0", "und_aligner.layers.2",
                                                  "backbone.lm.model.layers.0.self_attn.q_proj",
                                                  "backbone.lm.model.layers.1.self_attn.q_proj"]


@pytest.mark.parametrize("lora, message", [
    ({"parts": ["backbone"], "rank": 4}, r"^train.lora.rank: unknown key\."),
    ({"parts": ["backbone"], "r": 0}, r"^train.lora.r = 0: expected an integer >= 1$"),
    ({"r": 4}, r"^train.lora: missing 'parts'"),
])
def test_schema_mistakes(shapes_split, tmp_path, lora, message):
    cfg = lora_config(shapes_split, tmp_path, {"und": 1}, 1)
    cfg["train"]["lora"] = lora
    with pytest.raises(ConfigError, match=message):
        Trainer(cfg)


def test_lora_needs_init_from(shapes_split, tmp_path):
    cfg = lora_config(shapes_split, tmp_path, {"und": 1}, 1)
    del cfg["train"]["init_from"]
    with pytest.raises(ConfigError, match=r"^train.lora: needs train.init_from"):
        Trainer(OmegaConf.create({**OmegaConf.to_container(unimm.load_pretrained(GOLDEN_JANUS).config), **cfg}))


def cli_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_loading_mistakes_are_one_line_and_exit_2(trained, tmp_path, capsys):
    _, final = trained
    broken = tmp_path / "gone"
    broken.mkdir()
    for f in final.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    record = json.loads((final / ADAPTER_CONFIG).read_text())
    (broken / ADAPTER_CONFIG).write_text(json.dumps({**record, "base_model": str(tmp_path / "nowhere")}))
    err = cli_error(["merge-lora", str(broken), str(tmp_path / "out")], capsys)
    assert f"the base model folder {tmp_path / 'nowhere'} is gone; put it back or set base_model" in err

    parts = {**record["parts"], "und_encoder.nothing": record["parts"]["backbone"]}
    (broken / ADAPTER_CONFIG).write_text(json.dumps({**record, "parts": parts}))
    err = cli_error(["merge-lora", str(broken), str(tmp_path / "out")], capsys)
    assert "the model has no part 'und_encoder.nothing'" in err
    with pytest.raises(CheckpointError):
        unimm.load_pretrained(broken)

    err = cli_error(["merge-lora", str(GOLDEN_JANUS), str(tmp_path / "out")], capsys)
    assert f"{GOLDEN_JANUS} is not a LoRA folder (no {ADAPTER_CONFIG})" in err


def test_the_shipped_lora_recipe_runs(shapes_split, tmp_path):
    """configs/finetune/shapes_lora.yaml, as docs/training.md runs it, for two steps on the shipped model."""
    from unimm.config import load_config
    from unimm.pretrained import DEFAULT_MODEL
    from unimm.train import train_main

    recipe = load_config("finetune/shapes_lora", [
        f"train.init_from={DEFAULT_MODEL}", f"train.output_dir={tmp_path}", "train.batch_size=2",
        "train.progress=false",
        "train.stages.0.steps=2", "train.stages.0.warmup_steps=0", "train.data.num_threads=1",
        f"train.data.sources.und.jsonl={shapes_split / 'und.jsonl'}",
        f"train.data.sources.t2i.jsonl={shapes_split / 't2i.jsonl'}"])
    final = train_main(recipe)
    assert json.loads((final / ADAPTER_CONFIG).read_text())["base_model"] == str(DEFAULT_MODEL)
    assert unimm.load_pretrained(final).model.lora_parts.keys() == {"backbone", "generator.head"}
