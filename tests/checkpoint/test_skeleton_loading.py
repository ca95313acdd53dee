"""Lean loading (``load_pretrained`` builds a skeleton and assigns the checkpoint's tensors) gives the same model as
building with random weights and copying the checkpoint in (``lean=False``): every parameter, every buffer (the
non-persistent ones, which no checkpoint holds, included), the same ties and the same text logits, for each
shipped tiny config, both released layouts, and parts that load a folder of their own inside the skeleton build.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

import unimm
from unimm.devices import float32_prefixes
from conftest import GOLDEN
from unimm.checkpoint.io import load_into, load_weights, tied_aliases
from unimm.checkpoint.skeleton import skeleton
from unimm.registry import CheckpointError

IMAGE = GOLDEN / "janus_tiny" / "und_image.png"
QUESTION = [{"role": "user", "content": "<image_placeholder>\nWhat is in the picture?"},
            {"role": "assistant", "content": ""}]

# Each shipped tiny model shape: (config, overrides). Together they hold every kind of non-persistent buffer the
# library has (rotary inv_freq, the hybrid encoder's pixel constants, timm's own) and a tied module (shared VQ).
CONFIGS = {
    "janus_tiny": ("janus_tiny", []),
    "janusflow_tiny": ("janusflow_tiny", []),
    "sam_siglip_hybrid": ("janus_tiny", ["model.und_encoder=@parts/und_encoder/sam_siglip_tiny",
                                         "model.und_aligner=@parts/und_aligner/hybrid_split_mlp_gelu"]),
    "shared_vq_tied": ("janus_tiny", ["model.und_encoder=@parts/und_encoder/shared_vq_tied_tiny",
                                      "model.generator=@parts/generator/vq_tiny"]),
    "shared_vq_copy": ("janus_tiny", ["model.und_encoder=@parts/und_encoder/shared_vq_tiny"]),
    "timm_vit_reg": ("janus_tiny", ["model.und_encoder=@parts/und_encoder/timm_vit_reg_tiny"]),
    "timm_convnext": ("janus_tiny", ["model.und_encoder=@parts/und_encoder/timm_convnext_tiny"]),
    "hf_qwen2_backbone": ("janus_tiny", ["model.backbone=@parts/backbone/qwen2_tiny"]),
    "hf_gpt2_backbone": ("janus_tiny", ["model.backbone=@parts/backbone/gpt2_tiny"]),  # LM head tied to embeddings
    "grown_vocab": ("janus_tiny", ["model.backbone.vocab_size=400"]),  # the processor grows it for the tokenizer
}


def assert_same_model(lean: nn.Module, built: nn.Module) -> None:
    """Every parameter and buffer (non-persistent ones included) equal in value, dtype and device; same ties."""
    for kind in ("named_parameters", "named_buffers"):
        ours, theirs = dict(getattr(lean, kind)()), dict(getattr(built, kind)())
        assert sorted(ours) == sorted(theirs)
        for name, tensor in ours.items():
            other = theirs[name]
            assert not tensor.is_meta, name
            assert tensor.dtype == other.dtype and tensor.device == other.device, name
            assert torch.equal(tensor, other), name
    assert tied_aliases(lean) == tied_aliases(built)
    assert [p.requires_grad for p in lean.parameters()] == [p.requires_grad for p in built.parameters()]


def mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (Linux ``/proc/self/maps``), or None (anonymous memory)."""
    for line in open("/proc/self/maps"):
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return fields[5].strip() if len(fields) == 6 else None
    return None


def text_logits(loaded) -> torch.Tensor:
    model, processor, _ = loaded
    with torch.no_grad():
        return model(**processor(QUESTION, [IMAGE]))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each config built with random weights (non-zero everywhere) and saved by ``save_pretrained``."""
    root = tmp_path_factory.mktemp("saved")

    def save(case: str):
        folder = root / case
        if not folder.exists():
            name, overrides = CONFIGS[case]
            cfg = unimm.load_config(name, overrides)
            torch.manual_seed(0)
            model = unimm.build_model(cfg)
            with torch.no_grad():  # zero-initialised tensors (start embeddings, biases) would hide a missed load
                for p in model.parameters():
                    p.add_(torch.rand_like(p) * 0.01)
            unimm.save_pretrained(model, unimm.build_processor(cfg, model), cfg, folder)
        return folder

    return save


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_lean_load_equals_build_then_copy(case, saved):
    folder = saved(case)
    lean, built = unimm.load_pretrained(folder), unimm.load_pretrained(folder, lean=False)
    assert_same_model(lean.model, built.model)
    if case != "hf_gpt2_backbone":  # GPT-2 has learned positions; the others have rotary tables at least
        assert dict(lean.model.named_buffers())
    assert torch.equal(text_logits(lean), text_logits(built))


def test_tied_modules_and_weights_stay_tied(saved):
    model = unimm.load_pretrained(saved("shared_vq_tied")).model
    assert model.und_encoder.tokenizer is model.generator.autoencoder and tied_aliases(model)
    lm = unimm.load_pretrained(saved("hf_gpt2_backbone")).model.backbone.lm  # one parameter in two modules
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight


@pytest.mark.parametrize("folder", ["janus_tiny", "janusflow_tiny"])
def test_released_folders(folder):
    """Sharded memory-mapped .bin files (janus_tiny) and a safetensors file beside a diffusers VAE folder, which is
    built for real inside the skeleton (janusflow_tiny)."""
    lean, built = unimm.load_pretrained(GOLDEN / folder), unimm.load_pretrained(GOLDEN / folder, lean=False)
    assert_same_model(lean.model, built.model)
    assert torch.equal(text_logits(lean), text_logits(built))


def test_encoder_adapts_the_checkpoint_at_another_image_size(saved):
    override = ["model.und_encoder.image_size=48"]  # position embeddings resampled from 4 x 4 to 6 x 6
    lean = unimm.load_pretrained(saved("janus_tiny"), override)
    built = unimm.load_pretrained(saved("janus_tiny"), override, lean=False)
    assert lean.model.und_encoder.vit.pos_embed.shape[1] == 36
    assert_same_model(lean.model, built.model)


def backbone_folder_model(saved, tmp_path, rows: int | None = None):
    """A unimm folder whose backbone slot names a transformers folder (``pretrained:``; the checkpoint holds no
    backbone weights), made from the saved Qwen2 case; ``rows`` cuts the folder's embedding tables to fewer rows
    than the tokenizer has ids, so loading grows them. Returns (the model folder, the backbone's own model)."""
    source = unimm.load_pretrained(saved("hf_qwen2_backbone"), lean=False).model.backbone.lm
    if rows is not None:
        source.resize_token_embeddings(rows)
    source.save_pretrained(tmp_path / "qwen2")
    folder = tmp_path / "model"
    folder.mkdir()
    cfg = OmegaConf.load(saved("hf_qwen2_backbone") / "config.yaml")
    cfg.model.backbone = {"type": "hf_causal_lm", "pretrained": str(tmp_path / "qwen2")}
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((saved("hf_qwen2_backbone") / name).read_bytes())
    state = load_file(str(saved("hf_qwen2_backbone") / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("backbone.")}, str(folder / "model.safetensors"))
    return folder, source


def test_backbone_from_its_own_folder_inside_the_skeleton(saved, tmp_path):
    """A slot with ``pretrained:`` is built for real (its folder's weights), the rest from the checkpoint."""
    folder, source = backbone_folder_model(saved, tmp_path)
    lean, built = unimm.load_pretrained(folder), unimm.load_pretrained(folder, lean=False)
    assert lean.model.backbone.pretrained == tmp_path / "qwen2"
    assert_same_model(lean.model, built.model)
    assert_same_model(lean.model.backbone.lm, source)
    original = unimm.load_pretrained(saved("hf_qwen2_backbone"))
    assert torch.equal(text_logits(lean), text_logits(original))


def test_embedding_tables_grown_for_the_tokenizer(saved, tmp_path):
    """The processor grows a table after the build: a skeleton's stays on meta until the checkpoint fills it (the
    saved vocabulary is the grown one), a pretrained folder's keeps its rows and gains new ones."""
    lean, built = (unimm.load_pretrained(saved("grown_vocab"), lean=lean) for lean in (True, False))
    assert lean.model.backbone.vocab_size == len(lean.processor.tokenizer) > 400
    assert_same_model(lean.model, built.model)

    folder, source = backbone_folder_model(saved, tmp_path, rows=400)
    lm = unimm.load_pretrained(folder).model.backbone.lm
    assert lm.get_input_embeddings().num_embeddings == lean.model.backbone.vocab_size
    for ours, theirs in ((lm.get_input_embeddings(), source.get_input_embeddings()),
                         (lm.get_output_embeddings(), source.get_output_embeddings())):
        assert torch.equal(ours.weight[:400], theirs.weight) and not ours.weight.is_meta


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc/self/maps")
def test_weights_in_the_checkpoints_precision_are_not_copied(saved, tmp_path):
    """bf16 weights loaded as bf16 are the memory-mapped file itself; asked for float32 they are cast, equal to
    the copy into a float32 model."""
    state = load_file(str(saved("janus_tiny") / "model.safetensors"))
    folder = tmp_path / "bf16"
    folder.mkdir()
    for path in saved("janus_tiny").iterdir():
        if path.name != "model.safetensors":
            (folder / path.name).write_bytes(path.read_bytes())
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(folder / "model.safetensors"))

    model = unimm.load_pretrained(folder, dtype=torch.bfloat16).model
    weights = folder / "model.safetensors"
    kept = float32_prefixes(model)  # the image autoencoder stays float32 (unimm.devices): cast, so not mapped
    assert kept == ("generator.autoencoder.",)
    others = [p for name, p in model.named_parameters() if not name.startswith(kept)]
    assert all(mapped_file(p.data_ptr()) == str(weights) and p.dtype == torch.bfloat16 for p in others)
    for name, param in model.generator.autoencoder.named_parameters():
        assert param.dtype == torch.float32 and torch.equal(param, state[f"generator.autoencoder.{name}"]
                                                            .to(torch.bfloat16).float())
    assert_same_model(model, unimm.load_pretrained(folder, dtype=torch.bfloat16, lean=False).model)
    assert_same_model(unimm.load_pretrained(folder).model, unimm.load_pretrained(folder, lean=False).model)
    assert unimm.load_pretrained(folder).model.dtype == torch.float32


def test_skeleton_puts_parameters_on_meta_and_keeps_buffers():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)
            self.register_buffer("scale", torch.arange(3.0), persistent=False)

    with skeleton():
        module = Scaled()
    assert module.linear.weight.is_meta and module.linear.bias.is_meta
    assert torch.equal(module.scale, torch.arange(3.0))
    assert not nn.Linear(3, 2).weight.is_meta  # the patch is gone after the block


def test_a_buffer_made_from_weights_fails_in_one_line():
    """A buffer computed from a parameter while building is a meta tensor in the skeleton; loading says so."""
    class FromWeights(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(2))
            self.register_buffer("doubled", self.weight.detach() * 2, persistent=False)

    with skeleton():
        module = FromWeights()
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) of the model have no value after loading \(e\.g\. "
                                              r"doubled.*load_pretrained\(\.\.\., lean=False\)"):
        load_into(module, {"weight": torch.ones(2)}, source="test")


def test_bin_files_are_mapped_and_legacy_ones_read_whole(tmp_path):
    state = {"weight": torch.arange(4096.0), "bias": torch.ones(3)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    mapped = load_weights(tmp_path)
    assert all(torch.equal(mapped[k], v) for k, v in state.items())
    if Path("/proc/self/maps").is_file():
        assert mapped_file(mapped["weight"].data_ptr()) == str(tmp_path / "pytorch_model.bin")
    torch.save(state, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)  # cannot be mapped
    legacy = load_weights(tmp_path)
    assert all(torch.equal(legacy[k], v) for k, v in state.items())
