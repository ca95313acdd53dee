"""The LlamaGen VQ tokenizer: parity with the reference on the golden Janus cases, the converter, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import golden_cases

from unimm.checkpoint.io import load_weights
from unimm.generation.vq_tokenizer import VQTokenizer, VectorQuantizerL2, convert_janus_vq, llamagen_vq, to_janus_vq
from unimm.registry import AUTOENCODERS, CheckpointError, ConfigError, InputError

OFFICIAL = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "official"


JANUS_CASES = golden_cases("janus")
OFFICIAL_VQ = [
    pytest.param(p.parent, id=p.parent.name)
    for p in sorted(OFFICIAL.glob("*/config.json"))
    if json.loads(p.read_text()).get("gen_vision_config", {}).get("cls") == "VQ-16"
]


def load_sharded(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The ``prefix``* entries of a (sharded) checkpoint, with the prefix removed."""
    state = load_weights(folder)
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def tokenizer_config(folder: Path) -> dict:
    """``llamagen_vq`` arguments for a case folder: sizes from config.json, image size from cases.json."""
    params = json.loads((folder / "config.json").read_text())["gen_vision_config"]["params"]
    keys = ("ch", "ch_mult", "z_channels", "num_res_blocks", "codebook_size", "codebook_embed_dim")
    cfg = {k: params[k] for k in keys}
    cfg["image_size"] = json.loads((folder / "cases.json").read_text())["settings"]["gen_size"]
    return cfg


@pytest.mark.parity
@pytest.mark.parametrize("folder", JANUS_CASES)
def test_matches_reference(folder: Path):
    cases = load_file(folder / "cases.safetensors")
    vq = AUTOENCODERS.build({"type": "llamagen_vq", **tokenizer_config(folder)}, where="test").eval()
    released = load_sharded(folder, "gen_vision_model.")
    assert "quantize.codebook_used" in released  # the converter must accept the usage counter
    vq.load_state_dict(convert_janus_vq(released), strict=True)
    grid = json.loads((folder / "cases.json").read_text())["vq_grid"]
    with torch.no_grad():
        quant, codes = vq.quantize_images(cases["vq.input"])
        assert torch.equal(codes, cases["vq.codes"])
        torch.testing.assert_close(quant, cases["vq.quant"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(vq.decode_codes(codes, (grid, grid)), cases["vq.decoded"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(vq.decode(quant), cases["vq.decoded"], rtol=1e-4, atol=1e-4)
    assert vq.latent_grid(cases["vq.input"].shape[-1]) == grid


@pytest.mark.parametrize("folder", JANUS_CASES)
def test_converter_round_trip(folder: Path):
    released = load_sharded(folder, "gen_vision_model.")
    back = to_janus_vq(convert_janus_vq(released))
    assert set(back) == set(released)
    for key, value in released.items():
        if key != "quantize.codebook_used":
            assert torch.equal(back[key], value), key
    assert not back["quantize.codebook_used"].any()


@pytest.mark.parametrize("folder", OFFICIAL_VQ)
def test_vq16_meta_shapes_match_release(folder: Path):
    manifest = json.loads((folder / "manifest.json").read_text())
    released = {
        k[len("gen_vision_model.") :]: torch.empty(shape, device="meta")
        for k, shape in manifest["state_dict"].items()
        if k.startswith("gen_vision_model.")
    }
    with torch.device("meta"):
        vq = llamagen_vq(variant="vq_16")
    ours = {k: tuple(v.shape) for k, v in vq.state_dict().items()}
    converted = {k: tuple(v.shape) for k, v in convert_janus_vq(released).items()}
    assert converted == ours
    assert (vq.codebook_size, vq.embed_dim, vq.downsample, vq.num_tokens) == (16384, 8, 16, 576)


def test_explicit_sizes_win_over_variant():
    vq = llamagen_vq(variant="VQ-16", ch=32, ch_mult=[1, 2], z_channels=32, codebook_size=10, image_size=64)
    assert (vq.codebook_size, vq.embed_dim, vq.downsample, vq.latent_grid(vq.image_size), vq.num_tokens) == (10, 8, 2, 32, 1024)


def _tiny() -> VQTokenizer:
    torch.manual_seed(0)
    return llamagen_vq(ch=32, ch_mult=[1, 2], z_channels=32, codebook_size=16, codebook_embed_dim=4, image_size=8)


def test_quantizer_picks_nearest_cosine_code_and_passes_gradients_straight_through():
    quantizer = VectorQuantizerL2(codebook_size=5, embed_dim=3)
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    z_q, codes, loss = quantizer(z)
    flat = torch.nn.functional.normalize(z.detach().permute(0, 2, 3, 1).reshape(-1, 3), dim=-1)
    book = torch.nn.functional.normalize(quantizer.embedding.weight.detach(), dim=-1)
    distances = torch.cdist(flat, book)
    assert torch.equal(codes.flatten(), distances.argmin(-1))
    torch.testing.assert_close(z_q.permute(0, 2, 3, 1).reshape(-1, 3), book[codes.flatten()])
    torch.testing.assert_close(quantizer.lookup(codes, (2, 2)), z_q)
    torch.testing.assert_close(loss.loss, loss.codebook + loss.commitment)
    torch.testing.assert_close(loss.commitment, 0.25 * loss.codebook)
    loss.loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert quantizer.embedding.weight.grad.abs().sum() > 0


def test_forward_reconstructs_and_trains():
    vq = _tiny()
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    recon, loss = vq(images)
    assert recon.shape == images.shape
    (torch.nn.functional.mse_loss(recon, images) + loss.loss).backward()
    assert vq.encoder.conv_in.weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert vq.quantize.embedding.weight.grad.abs().sum() > 0
    quant, codes = vq.quantize_images(images)
    assert quant.shape == (2, 4, 4, 4) and codes.shape == (2, 16) and codes.dtype == torch.long
    with torch.no_grad():
        torch.testing.assert_close(vq.decode_codes(codes), vq.decode(quant))


def test_codes_are_row_major():
    vq = _tiny()
    images = torch.rand(1, 3, 8, 16) * 2 - 1
    quant, codes = vq.quantize_images(images)
    _, manual, _ = vq.quantize(vq.quant_conv(vq.encoder(images)))
    assert quant.shape[-2:] == (4, 8)
    book = torch.nn.functional.normalize(vq.quantize.embedding.weight, dim=-1)
    # code at (row 1, column 5) sits at index 1 * 8 + 5
    torch.testing.assert_close(quant[0, :, 1, 5], book[codes[0, 13]])
    assert torch.equal(codes, manual)
    assert vq.decode_codes(codes, (4, 8)).shape == (1, 3, 8, 16)


def test_errors_say_what_to_fix():
    with pytest.raises(ConfigError, match="needs ch, ch_mult, z_channels, codebook_size, codebook_embed_dim"):
        llamagen_vq()
    with pytest.raises(ConfigError, match="unknown LlamaGen VQ variant 'vq_8'.*vq_16"):
        llamagen_vq(variant="vq_8")
    vq = _tiny()
    with pytest.raises(InputError, match="multiples of 2"):
        vq.quantize_images(torch.zeros(1, 3, 9, 8))
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        vq.quantize_images(torch.zeros(3, 8, 8))
    with pytest.raises(InputError, match="do not form a square grid"):
        vq.decode_codes(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(InputError, match="holds 12 codes but 16"):
        vq.decode_codes(torch.zeros(1, 16, dtype=torch.long), (3, 4))
    with pytest.raises(InputError, match=r"codes must lie in \[0, 16\)"):
        vq.decode_codes(torch.full((1, 16), 16))
    with pytest.raises(InputError, match="not a positive multiple of the autoencoder.s downsampling factor 2"):
        vq.latent_grid(7)
    with pytest.raises(CheckpointError, match="1 key.*encoder.conv_blocks.0.bogus.weight"):
        convert_janus_vq({"quant_conv.weight": torch.zeros(1), "encoder.conv_blocks.0.bogus.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="decoder.up.0.wrong"):
        to_janus_vq({"decoder.up.0.wrong": torch.zeros(1)})
