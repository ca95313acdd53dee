"""Pre-training the understanding encoder on labelled images, saving it and loading it back through ``path``."""

import json

import pytest
import torch

from unimm import build_model, load_config
from unimm.bench import make_split
from unimm.bench.shapes import ShapesConfig
from unimm.build import build_processor
from unimm.data.images import GenerationImageTransform
from unimm.pretrained import load_pretrained, save_pretrained
from unimm.registry import ENCODERS, ConfigError
from unimm.train.encoder import label_targets, patch_targets, pretrain_encoder

# janus_tiny's understanding encoder
VIT = dict(type="siglip", variant=None, image_size=32, patch_size=8, width=32, layers=1, heads=2, mlp_ratio=2.0)


def _images(samples):
    transform = GenerationImageTransform(32)
    return torch.stack([transform(s.image()) for s in samples])


@pytest.fixture(scope="module")
def data():
    samples = make_split("train", 48)
    return _images(samples), [[shape.name for shape in s.scene.shapes] for s in samples]


def test_pretraining_learns_the_labels_and_saves_a_loadable_encoder(tmp_path):
    # One shape per image, labelled with its colour: 120 steps take held-out images from no label set right
    # (predicting "absent" everywhere) to every one.
    samples = make_split("train", 64, config=ShapesConfig(max_shapes=1))
    images, labels = _images(samples), [[s.scene.shapes[0].colour] for s in samples]
    result = pretrain_encoder(VIT, images[:48], labels[:48], tmp_path / "vit", steps=120, batch_size=16, lr=1e-2,
                              held_out=(images[48:], labels[48:]), log_every=10)
    assert result["held_out"]["exact"] >= 0.9, result
    assert result["labels"] == sorted({name for names in labels[:48] for name in names})
    log = [json.loads(line) for line in (tmp_path / "vit" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(10, 121, 10))
    saved = json.loads((tmp_path / "vit" / "config.json").read_text())
    assert saved["pretraining"]["labels"] == result["labels"] and saved["layers"] == 1

    fresh = ENCODERS.build(VIT, where="x")
    loaded = ENCODERS.build({"type": "siglip", "path": str(tmp_path / "vit")}, where="x")
    pixels = torch.randn(2, 3, 32, 32)
    assert loaded.num_tokens == 16 and loaded(pixels).shape == (2, 16, 32)
    assert not torch.equal(loaded(pixels), fresh(pixels))
    again = ENCODERS.build({**VIT, "path": str(tmp_path / "vit")}, where="x")  # agreeing sizes are fine
    assert torch.equal(again(pixels), loaded(pixels))


def test_patch_labels_teach_each_token_what_it_shows(tmp_path):
    # One large shape per image; each of the 4 x 4 patch tokens learns the colour under it or the ground. Always
    # answering "ground" would score that share of held-out patches (about 77%); 150 steps get above 90%.
    samples = make_split("train", 96, config=ShapesConfig(max_shapes=1, min_size=0.4, max_size=0.5))
    images, labels = _images(samples), [[s.scene.shapes[0].colour] for s in samples]
    patches = [[None if p is None else p.split()[0] for p in s.scene.patch_labels(4)] for s in samples]
    names = sorted({colour for (colour,) in labels})
    ground = (patch_targets(patches[64:], names, 16) == len(names)).float().mean().item()
    result = pretrain_encoder(VIT, images[:64], labels[:64], tmp_path / "vit", steps=150, batch_size=16, lr=1e-2,
                              held_out=(images[64:], labels[64:], patches[64:]), patch_labels=patches[:64],
                              label_names=names)
    assert ground < 0.85 and result["held_out"]["patch"] >= 0.9 > ground + 0.05, (ground, result)
    assert result["held_out"]["exact"] >= 0.9, result
    saved = json.loads((tmp_path / "vit" / "config.json").read_text())
    assert saved["pretraining"]["objective"] == "sigmoid over label phrases + softmax over patch labels"


def test_patch_label_errors_say_what_to_fix(data, tmp_path):
    images, labels = data
    with pytest.raises(ConfigError, match="image 0 has 3 patch labels but the encoder gives 16 tokens"):
        pretrain_encoder(VIT, images, labels, tmp_path / "x", patch_labels=[[None] * 3] * len(images))
    with pytest.raises(ConfigError, match="one per image"):
        pretrain_encoder(VIT, images, labels, tmp_path / "x", patch_labels=[[None] * 16])
    with pytest.raises(ConfigError, match="patch 2: label 'purple circle' is not one of the 1 names"):
        patch_targets([[None, None, "purple circle"]], ["red circle"], 3)
    with pytest.raises(ConfigError, match=r"held_out needs \(images, labels, patch_labels\)"):
        pretrain_encoder(VIT, images, labels, tmp_path / "x", steps=1, batch_size=8, held_out=(images, labels),
                         patch_labels=[[None] * 16] * len(images))


def test_a_model_with_a_pretrained_encoder_saves_self_contained(data, tmp_path):
    images, labels = data
    folder = tmp_path / "vit"
    pretrain_encoder(VIT, images, labels, folder, steps=2, batch_size=8)
    cfg = load_config("janus_tiny", [f"model.und_encoder={{type: siglip, path: {folder}}}"])
    model = build_model(cfg)
    encoder = ENCODERS.build({"type": "siglip", "path": str(folder)}, where="x")
    assert torch.equal(model.und_encoder.vit.patch_embed.proj.weight, encoder.vit.patch_embed.proj.weight)
    saved = save_pretrained(model, build_processor(cfg, model), cfg, tmp_path / "model")
    (folder / "model.safetensors").unlink()  # the saved model must not need the encoder's folder any more
    reloaded, _, reloaded_cfg = load_pretrained(saved)
    assert reloaded_cfg.model.und_encoder.path is None and reloaded_cfg.model.und_encoder.width == 32
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_errors_say_what_to_fix(data, tmp_path):
    images, labels = data
    with pytest.raises(ConfigError, match="already has a 'path'"):
        pretrain_encoder({**VIT, "path": "somewhere"}, images, labels, tmp_path / "x")
    with pytest.raises(ConfigError, match="one list per image"):
        pretrain_encoder(VIT, images, labels[:3], tmp_path / "x")
    with pytest.raises(ConfigError, match=r"\(N, 3, H, W\)"):
        pretrain_encoder(VIT, images[:, :1], labels, tmp_path / "x")
    with pytest.raises(ConfigError, match="images are 32 px but the encoder takes 64 px"):
        pretrain_encoder({**VIT, "image_size": 64}, images, labels, tmp_path / "x")
    with pytest.raises(ConfigError, match="cannot be pre-trained here"):
        pretrain_encoder({"type": "shared_vq", "image_size": 32, "autoencoder": {
            "type": "llamagen_vq", "ch": 32, "ch_mult": [1, 1], "z_channels": 8, "num_res_blocks": 1,
            "codebook_size": 16, "codebook_embed_dim": 8}}, images, labels, tmp_path / "x")
    with pytest.raises(ConfigError, match="which is not one of the 1 label names"):
        pretrain_encoder(VIT, images, labels, tmp_path / "x", label_names=["red circle"])
    with pytest.raises(ConfigError, match="'purple circle', which is not one of the 2 label names"):
        label_targets([["purple circle"]], ["red circle", "blue square"])
    with pytest.raises(ConfigError, match="no config.json there"):
        ENCODERS.build({"type": "siglip", "path": str(tmp_path)}, where="x")
    pretrain_encoder(VIT, images, labels, tmp_path / "vit", steps=1, batch_size=8)
    with pytest.raises(ConfigError, match=r"width=64 \(saved: 32\) contradict"):
        ENCODERS.build({"type": "siglip", "path": str(tmp_path / "vit"), "width": 64}, where="x")
    with pytest.raises(ConfigError, match="drop select_layer"):
        ENCODERS.build({"type": "siglip", "path": str(tmp_path / "vit"), "select_layer": -2}, where="x")
