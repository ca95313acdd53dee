"""Every understanding encoder x generation path x backbone family is one config away, and each combination works.

Each case starts from ``configs/janus_tiny.yaml`` and swaps slots with the same command-line overrides a user would
type (``model.und_encoder=@parts/und_encoder/sam_siglip_tiny`` ...); the fourth backbone is a pretrained transformers
folder (``model.backbone.pretrained=FOLDER``, its own tokenizer). For each of the 3 x 2 x 4 combinations it
proves that the override really replaced the slot (the built parts have the requested types), that an understanding
batch from the processor gives a finite loss whose gradient reaches the understanding aligner (so the image features
are really written into the sequence), that a generation training step gives a finite loss whose gradient reaches
the generation path's aligner and the backbone, and that sampling returns finite images of the path's size.

The timm encoders (a plain ViT, a ViT with register tokens, a ConvNeXt) only change what the understanding aligner
reads, which neither the generation path nor the backbone family sees, so to keep the matrix fast they run against
both generation paths with the Llama backbone only (6 cases instead of 18).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

import unimm
from unimm.aligners.hybrid_split import HybridSplitAligner
from unimm.aligners.mlp import MLPAligner
from unimm.cli import main as cli_main
from unimm.encoders.hybrid import HybridEncoder
from unimm.encoders.shared_vq import SharedVQEncoder
from unimm.encoders.siglip import SigLIPEncoder
from unimm.encoders.timm_encoder import TimmEncoder
from unimm.generation.flow_path import RectifiedFlowPath
from unimm.generation.vq_path import VQGenerationPath

ENCODERS = {
    "siglip": (["model.und_encoder=@parts/und_encoder/siglip_tiny", "model.und_aligner=@parts/und_aligner/mlp_gelu"],
               SigLIPEncoder, MLPAligner),
    "sam_siglip": (["model.und_encoder=@parts/und_encoder/sam_siglip_tiny",
                    "model.und_aligner=@parts/und_aligner/hybrid_split_mlp_gelu"], HybridEncoder, HybridSplitAligner),
    "shared_vq": (["model.und_encoder=@parts/und_encoder/shared_vq_tiny",
                   "model.und_aligner=@parts/und_aligner/mlp_gelu"], SharedVQEncoder, MLPAligner),
    **{name: ([f"model.und_encoder=@parts/und_encoder/{name}", "model.und_aligner=@parts/und_aligner/mlp_gelu"],
              TimmEncoder, MLPAligner) for name in ("timm_vit_tiny", "timm_vit_reg_tiny", "timm_convnext_tiny")},
}  # fmt: skip
#: Encoders tested against one backbone only (see the module docstring).
ONE_BACKBONE_ENCODERS = ("timm_vit_tiny", "timm_vit_reg_tiny", "timm_convnext_tiny")
GENERATORS = {
    # 4 px images through the 2x VQ tokenizer: 2 x 2 = 4 image tokens, so sampling is 4 steps.
    "vq": (["model.generator=@parts/generator/vq_tiny", "model.generator.image_size=4"], VQGenerationPath),
    "rectified_flow": (["model.generator=@parts/generator/flow_tiny"], RectifiedFlowPath),
}  # fmt: skip
BACKBONES = {  # family -> the decoder class transformers builds for it
    "llama": (["model.backbone=@parts/backbone/llama_tiny"], "LlamaModel"),
    "qwen2": (["model.backbone=@parts/backbone/qwen2_tiny"], "Qwen2Model"),
    "gpt2": (["model.backbone=@parts/backbone/gpt2_tiny"], "GPT2Model"),
    # a local transformers folder (made by the fixture below) with its own tokenizer, as a user's Qwen2 would be
    "pretrained_qwen2": (["model.backbone.type=hf_causal_lm", "model.backbone.pretrained={pretrained_folder}",
                          "processor.tokenizer=null"], "Qwen2Model"),
}

CASES = [pytest.param(e, g, b, id=f"{e}-{g}-{b}") for e, g, b in itertools.product(ENCODERS, GENERATORS, BACKBONES)
         if e not in ONE_BACKBONE_ENCODERS or b == "llama"]


@pytest.fixture(scope="module")
def pretrained_folder(tmp_path_factory) -> str:
    """A tiny Qwen2 written by transformers' ``save_pretrained``, with the bundled tokenizer beside it."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from unimm.processor import BUNDLED_TOKENIZERS, load_tokenizer

    folder = tmp_path_factory.mktemp("pretrained_qwen2")
    tokenizer = load_tokenizer(BUNDLED_TOKENIZERS / "tiny")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, vocab_size=len(tokenizer))).save_pretrained(folder)  # fmt: skip
    return str(folder)


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """Two conversations: one with an odd-shaped image, one text only (so the batch is left padded)."""
    image = Image.fromarray((np.random.default_rng(0).random((20, 28, 3)) * 255).astype("uint8"))
    return [
        {"conversations": [{"role": "user", "content": "<image> What is this?"},
                           {"role": "assistant", "content": "A small picture."}], "images": [image]},
        {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
    ]  # fmt: skip


def generator_aligner(model: unimm.UnifiedModel) -> torch.nn.Module:
    """The module that maps generation inputs into the backbone's width."""
    path = model.generator
    return path.aligner if isinstance(path, VQGenerationPath) else path.encoder_aligner


@pytest.mark.parametrize("encoder, generator, backbone", CASES)
def test_combination_builds_understands_trains_and_samples(encoder, generator, backbone, records, request):
    overrides = ENCODERS[encoder][0] + GENERATORS[generator][0] + BACKBONES[backbone][0]
    if backbone == "pretrained_qwen2":
        folder = request.getfixturevalue("pretrained_folder")
        overrides = [item.format(pretrained_folder=folder) for item in overrides]
    torch.manual_seed(0)
    cfg = unimm.load_config("janus_tiny", overrides)
    model = unimm.build_model(cfg)
    processor = unimm.build_processor(cfg, model)

    # The overrides replaced the slots.
    assert isinstance(model.und_encoder, ENCODERS[encoder][1])
    assert isinstance(model.und_aligner, ENCODERS[encoder][2])
    assert isinstance(model.generator, GENERATORS[generator][1])
    assert type(model.backbone.decoder).__name__ == BACKBONES[backbone][1]

    # Understanding: the processor batch goes through, and the loss depends on the image (through the aligner).
    batch = processor.understanding_batch(records)
    assert int(batch["images_seq_mask"].sum()) == model.und_encoder.num_tokens
    logits = model(**batch)
    assert logits.shape == (*batch["input_ids"].shape, model.backbone.vocab_size)
    loss = model.understanding_loss(batch)
    assert torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, [next(model.und_aligner.parameters())])
    assert grad.abs().sum() > 0

    # Generation training step: loss, backward, gradients reach the generation aligner and the backbone.
    prompt_ids, prompt_mask = processor.generation_prompts(["a red square", "blue"])
    size = model.generator.image_size
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    gen_loss = model.generation_loss(prompt_ids, prompt_mask, images, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(gen_loss.loss)
    gen_loss.loss.backward()
    aligner_grad = next(generator_aligner(model).parameters()).grad
    assert aligner_grad is not None and aligner_grad.abs().sum() > 0
    embed_grad = model.backbone.lm.get_input_embeddings().weight.grad
    assert embed_grad is not None and embed_grad.abs().sum() > 0

    # A short sampling call.
    options = {"num_steps": 2} if generator == "rectified_flow" else {"temperature": 1.0}
    sampled = model.generate_images(prompt_ids, prompt_mask, pad_id=processor.pad_id, seed=0, **options)
    assert sampled.shape == (2, 3, size, size)
    assert torch.isfinite(sampled).all()


def test_config_show_prints_the_swapped_slot_and_what_it_builds(capsys):
    code = cli_main(["config", "show", "janus_tiny", "model.generator=@parts/generator/flow_tiny"])
    out = capsys.readouterr().out
    assert code == 0
    generator_section = out.split("generator:", 1)[1].split("processor:", 1)[0]
    assert "type: rectified_flow" in generator_section
    assert "llamagen_vq" not in generator_section  # the slot was replaced, not merged with the VQ one
    assert "# built:" in out
    assert "RectifiedFlowPath" in out and "SigLIPEncoder" in out and "CausalLMBackbone" in out


def test_config_show_prints_encoder_and_backbone_swaps(capsys):
    code = cli_main([
        "config", "show", "janus_tiny", "model.und_encoder=@parts/und_encoder/sam_siglip_tiny",
        "model.und_aligner=@parts/und_aligner/hybrid_split_mlp_gelu", "model.backbone=@parts/backbone/gpt2_tiny",
        "model.generator=@parts/generator/flow_tiny",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "type: sam_siglip" in out and "model_type: gpt2" in out and "n_embd: 64" in out
    built = out.split("# built:", 1)[1]
    assert "HybridEncoder" in built and "HybridSplitAligner" in built and "CausalLMBackbone" in built
