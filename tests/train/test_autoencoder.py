"""Training the small autoencoders of the shapes study, saving them and loading them back through ``path``.

``VQ`` is janus_tiny's tokenizer slot, so a trained one can stand in for it.
"""

import pytest
import torch

from unimm import build_model, load_config
from unimm.bench import make_split
from unimm.data.images import GenerationImageTransform
from unimm.pretrained import load_pretrained, save_pretrained
from unimm.build import build_processor
from unimm.registry import AUTOENCODERS, ConfigError
from unimm.train.autoencoder import reconstruct, train_autoencoder

VQ = dict(type="llamagen_vq", ch=32, ch_mult=[1, 2], z_channels=16, num_res_blocks=1, codebook_size=64,
          codebook_embed_dim=8)
KL = dict(type="autoencoder_kl", config=dict(block_out_channels=[32, 32], layers_per_block=1, latent_channels=4,
                                              norm_num_groups=32, sample_size=16))


@pytest.fixture(scope="module")
def images():
    transform = GenerationImageTransform(16)
    return torch.stack([transform(s.image()) for s in make_split("train", 24, config=None)])


def _log(folder):
    import json

    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_vq_tokenizer_learns_saves_and_loads_by_path(images, tmp_path):
    folder = train_autoencoder(VQ, images, tmp_path / "vq", steps=30, batch_size=8, lr=3e-3, log_every=5)
    log = _log(folder)
    assert log[-1]["reconstruction"] < 0.6 * log[0]["reconstruction"]
    loaded = AUTOENCODERS.build({**VQ, "path": str(folder)}, where="x", inferred={"image_size": 16})
    again = AUTOENCODERS.build({"type": "llamagen_vq", "path": str(folder)}, where="x")
    assert torch.equal(reconstruct(loaded, images[:4]), reconstruct(again, images[:4]))
    assert reconstruct(loaded, images[:4]).shape == (4, 3, 16, 16)


def test_vae_learns_and_loads_as_a_diffusers_folder(images, tmp_path):
    folder = train_autoencoder(KL, images, tmp_path / "vae", steps=30, batch_size=8, lr=2e-3, log_every=5)
    log = _log(folder)
    assert log[-1]["reconstruction"] < 0.6 * log[0]["reconstruction"]
    vae = AUTOENCODERS.build({"type": "autoencoder_kl", "path": str(folder)}, where="x")
    latents = vae.encode(images)
    assert abs(float(latents.std()) - 1.0) < 0.05  # the scaling factor makes the training latents unit-variance
    assert not any(p.requires_grad for p in vae.parameters())


def test_a_model_with_a_trained_tokenizer_saves_self_contained(images, tmp_path):
    folder = train_autoencoder(VQ, images, tmp_path / "vq", steps=2, batch_size=8)
    cfg = load_config("janus_tiny", [f"model.generator.autoencoder.path={folder}"])
    model = build_model(cfg)
    tokenizer = AUTOENCODERS.build({"type": "llamagen_vq", "path": str(folder)}, where="x")
    assert torch.equal(model.generator.autoencoder.quantize.embedding.weight, tokenizer.quantize.embedding.weight)
    saved = save_pretrained(model, build_processor(cfg, model), cfg, tmp_path / "model")
    (folder / "model.safetensors").unlink()  # the saved model must not need the tokenizer folder any more
    reloaded, _, reloaded_cfg = load_pretrained(saved)
    assert reloaded_cfg.model.generator.autoencoder.path is None
    assert reloaded_cfg.model.generator.autoencoder.codebook_size == 64
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_errors_say_what_to_fix(images, tmp_path):
    with pytest.raises(ConfigError, match="unknown image autoencoder 'siglip'"):
        train_autoencoder({"type": "siglip"}, images, tmp_path / "x")
    with pytest.raises(ConfigError, match="already has a 'path'"):
        train_autoencoder({**VQ, "path": "somewhere"}, images, tmp_path / "x")
    with pytest.raises(ConfigError, match=r"\(N, 3, H, W\)"):
        train_autoencoder(VQ, images[:, :1], tmp_path / "x")
    with pytest.raises(ConfigError, match="no config.json there"):
        AUTOENCODERS.build({"type": "llamagen_vq", "path": str(tmp_path)}, where="x")
    folder = train_autoencoder(VQ, images, tmp_path / "vq", steps=1, batch_size=8)
    with pytest.raises(ConfigError, match=r"codebook_size=128 \(saved: 64\)"):
        AUTOENCODERS.build({**VQ, "codebook_size": 128, "path": str(folder)}, where="x")
