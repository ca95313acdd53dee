"""Device and precision: ``unimm.devices`` resolution, ``load_pretrained(device=, dtype=)`` and bfloat16 on the CPU.

The machines that run these tests have no GPU, so the GPU branches are checked by making torch report one
(``monkeypatch`` on ``torch.cuda``), never by running on it.
"""

from __future__ import annotations

import pytest
import torch

import unimm
from unimm.devices import module_dtype, place, resolve_device, resolve_dtype
from unimm.encoders.transforms import load_image
from unimm.pretrained import DEFAULT_MODEL
from unimm.registry import InputError


def fake_gpus(monkeypatch, count: int, bf16: bool = True) -> None:
    """Make torch report ``count`` CUDA devices (with or without bfloat16)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Old GPU")


def no_gpu(monkeypatch, mps: bool = False) -> None:
    fake_gpus(monkeypatch, 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


# -- resolution ----------------------------------------------------------------------------------------------------
def test_auto_is_cpu_and_float32_without_a_gpu(monkeypatch):
    no_gpu(monkeypatch)
    device = resolve_device("auto")
    assert device == torch.device("cpu") and resolve_dtype("auto", device) == torch.float32


def test_auto_prefers_cuda_then_mps(monkeypatch):
    fake_gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    fake_gpus(monkeypatch, 1, bf16=False)
    assert resolve_dtype("auto", torch.device("cuda:0")) == torch.float16
    no_gpu(monkeypatch, mps=True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_dtype("auto", torch.device("mps")) == torch.float16


def test_names_and_torch_objects(monkeypatch):
    fake_gpus(monkeypatch, 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype(torch.float16, torch.device("cpu")) == torch.float16


@pytest.mark.parametrize("value, gpus, message", [
    ("cuda", 0, "device cuda: this machine has no CUDA GPU that torch can use; available: auto, cpu"),
    ("cuda:7", 2, "device cuda:7: there are only 2 CUDA device(s) (cuda:0 to cuda:1); available: auto, cpu, cuda, "
                  "cuda:0, cuda:1"),
    ("mps", 0, "device mps: Apple's MPS backend is not available here; available: auto, cpu"),
    ("gpu", 0, "device 'gpu': not a device; use one of auto, cpu, cuda, cuda:N, mps (this machine has: auto, cpu)"),
    ("meta", 0, "device meta: unimm runs models on auto, cpu, cuda, cuda:N, mps; available here: auto, cpu"),
])
def test_unavailable_devices_name_what_there_is(monkeypatch, value, gpus, message):
    fake_gpus(monkeypatch, gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError) as err:
        resolve_device(value)
    assert str(err.value) == message


@pytest.mark.parametrize("value, message", [
    ("half", "dtype 'half': not a dtype unimm runs in; use one of auto, bfloat16, float16, float32"),
    (torch.int8, "dtype torch.int8: weights must be floating point; use one of auto, bfloat16, float16, float32"),
])
def test_bad_dtypes(value, message):
    with pytest.raises(InputError) as err:
        resolve_dtype(value, torch.device("cpu"))
    assert str(err.value) == message


def test_bfloat16_on_a_gpu_without_it(monkeypatch):
    fake_gpus(monkeypatch, 1, bf16=False)
    with pytest.raises(InputError, match="Old GPU has no bfloat16 support; use dtype float16"):
        resolve_dtype("bfloat16", torch.device("cuda"))


# -- placing a model -----------------------------------------------------------------------------------------------
def test_place_keeps_modules_that_ask_for_float32_unrounded():
    keep = torch.nn.Linear(2, 2)
    keep.keep_float32 = True
    torch.nn.init.constant_(keep.weight, 1.0001)  # 1.0 in bfloat16: a cast there and back would lose it
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(keep, torch.nn.LayerNorm(2)))
    place(model, torch.device("cpu"), torch.bfloat16)
    assert model[0].weight.dtype == model[1][1].weight.dtype == torch.bfloat16
    assert keep.weight.dtype == torch.float32 and bool((keep.weight == 1.0001).all())


@pytest.fixture(scope="module")
def float32():
    return unimm.load_pretrained(DEFAULT_MODEL, device="cpu", dtype="float32")


@pytest.fixture(scope="module", params=["bfloat16", "float16"])
def shipped(request, float32):
    """The shipped shapes model in float32 and in a half precision on the CPU (float16 runs there too: every op of
    the shipped model has a CPU kernel in it)."""
    return float32, unimm.load_pretrained(DEFAULT_MODEL, dtype=request.param)


def test_load_pretrained_defaults_to_cpu_float32_here(monkeypatch):
    no_gpu(monkeypatch)
    model = unimm.load_pretrained(DEFAULT_MODEL).model
    assert model.device == torch.device("cpu") and model.dtype == torch.float32


def test_half_weights_except_the_image_autoencoder(shipped):
    _, (model, _, _) = shipped
    autoencoder = model.generator.autoencoder
    others = {p.dtype for name, p in model.named_parameters() if not name.startswith("generator.autoencoder.")}
    assert others == {model.dtype} and model.dtype in (torch.bfloat16, torch.float16)
    assert {p.dtype for p in autoencoder.parameters()} == {torch.float32}


def test_half_generates_on_the_cpu_and_decodes_in_float32(shipped):
    (model32, processor, _), (model16, _, _) = shipped
    ids, mask = processor.generation_prompts(["a red circle", "a blue square"])
    out = model16.sample_images(ids, mask, pad_id=processor.pad_id, seed=0)
    assert out.images.shape == (2, 3, 32, 32) and out.images.dtype == torch.float32
    assert torch.isfinite(out.images).all() and out.latents.min() >= 0
    # The same codes through the float32 model's decoder give the same pixels: the decoder was not rounded.
    decoded = model32.generator.decode_latents(out.latents)
    torch.testing.assert_close(out.images, decoded, rtol=0, atol=0)


def test_half_understands_on_the_cpu(shipped, tmp_path):
    (_, processor, _), (model16, _, _) = shipped
    from PIL import Image

    Image.new("RGB", (32, 32), (220, 30, 30)).save(tmp_path / "red.png")
    conversation = [{"role": "user", "content": "<image_placeholder>\nWhat colour is the shape?"},
                    {"role": "assistant", "content": ""}]
    batch = processor(conversation, [load_image(tmp_path / "red.png")])
    assert batch["pixel_values"].dtype == torch.float32  # cast where the model consumes it
    tokens = model16.generate_text(batch, max_new_tokens=4, eos_id=processor.eos_id, pad_id=processor.pad_id)
    assert tokens.shape[0] == 1 and processor.decode(tokens[0]).strip()
    features = model16.encode_images(batch["pixel_values"][0])  # float32 pixels straight into a half model
    assert features.dtype == model16.dtype and features.shape[:2] == (1, model16.und_encoder.num_tokens)



@pytest.mark.parametrize("part", ["shared_vq_tiny", "shared_vq_tied_tiny"])
def test_an_understanding_encoder_on_the_float32_tokenizer_feeds_a_bfloat16_model(part):
    """The Janus shared-encoder ablation reads images through a VQ tokenizer, which stays float32."""
    from unimm.build import build_model
    from unimm.config import load_config

    cfg = load_config("janus_tiny", [f"model.und_encoder=@parts/und_encoder/{part}"])
    model = place(build_model(cfg), torch.device("cpu"), torch.bfloat16).eval()
    assert module_dtype(model.und_encoder.tokenizer) == torch.float32
    size = model.und_encoder.image_size
    with torch.no_grad():
        features = model.encode_images(torch.rand(2, 3, size, size) * 2 - 1)
    assert features.dtype == torch.bfloat16 and features.shape == (2, model.und_encoder.num_tokens, 64)
