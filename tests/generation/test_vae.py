"""The diffusers AutoencoderKL wrapper: golden round trip, SDXL sizes on the meta device, freezing, errors."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unimm.generation.vae import KLAutoencoder
from unimm.registry import AUTOENCODERS, ConfigError, InputError

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
FLOW_FOLDERS = sorted(
    p.parent for p in GOLDEN.glob("*/cases.json") if json.loads(p.read_text()).get("kind") == "janusflow"
)
TINY = {"block_out_channels": [32, 32], "layers_per_block": 1, "sample_size": 16}


@pytest.mark.parity
@pytest.mark.parametrize("folder", FLOW_FOLDERS, ids=[f.name for f in FLOW_FOLDERS])
def test_vae_round_trip_matches_reference(folder):
    """vae.latent_mean is the posterior mean of vae.input; vae.decoded is its decode; encode/decode scale by 0.13025."""
    cases = load_file(folder / "cases.safetensors")
    vae = AUTOENCODERS.build({"type": "autoencoder_kl", "path": str(folder / "vae")}, where="generator.autoencoder")
    scale = json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"]
    assert vae.scaling_factor == scale
    with torch.no_grad():
        latents = vae.encode(cases["vae.input"])
        torch.testing.assert_close(latents / scale, cases["vae.latent_mean"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(vae.decode(latents), cases["vae.decoded"], rtol=1e-4, atol=1e-4)


def test_sdxl_vae_builds_on_meta_with_sdxl_sizes():
    with torch.device("meta"):
        vae = KLAutoencoder()
    assert (vae.latent_channels, vae.downsample, vae.scaling_factor) == (4, 8, 0.13025)
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863  # stabilityai/sdxl-vae
    assert next(vae.parameters()).is_meta


def test_frozen_by_default_and_trainable_on_request():
    vae = KLAutoencoder(config=TINY)
    assert not any(p.requires_grad for p in vae.parameters())
    vae.train()
    assert not vae.vae.training
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    assert not vae.encode(images).requires_grad

    trainable = KLAutoencoder(config=TINY, trainable=True)
    trainable.train()
    assert trainable.vae.training and trainable.encode(images).requires_grad


def test_sampled_posterior_is_reproducible_and_differs_from_mean():
    mean_vae = KLAutoencoder(config=TINY)
    sample_vae = KLAutoencoder(config=TINY, sample_posterior=True)
    sample_vae.load_state_dict(mean_vae.state_dict())
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    a = sample_vae.encode(images, generator=torch.Generator().manual_seed(1))
    b = sample_vae.encode(images, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert a.shape == (2, 4, 8, 8)
    assert not torch.allclose(a, mean_vae.encode(images))


def test_bad_settings_and_inputs_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="config.json missing"):
        KLAutoencoder(path=str(tmp_path))
    with pytest.raises(ConfigError, match="either 'path'"):
        KLAutoencoder(path=str(tmp_path), config=TINY)
    with pytest.raises(ConfigError, match="latent_chanels: not an argument"):
        KLAutoencoder(config={"latent_chanels": 8})
    vae = KLAutoencoder(config=TINY)
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        vae.encode(torch.zeros(3, 16, 16))
    with pytest.raises(InputError, match="divisible"):
        vae.encode(torch.zeros(1, 3, 15, 15))
    with pytest.raises(InputError, match=r"\(B, 4, h, w\)"):
        vae.decode(torch.zeros(1, 3, 8, 8))
