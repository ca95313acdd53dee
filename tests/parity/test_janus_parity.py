"""Janus / Janus-Pro parity: every tensor of each ``kind: janus`` golden case, through ``unimm.load_pretrained``.

Ids, masks, codes and greedy tokens must be equal; floats within 1e-4 (the reference's own cross-machine spread).
Sizes come from each folder's files, so a new folder of the same form runs with no code change.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

import unimm
from conftest import golden_cases

pytestmark = pytest.mark.parity
CASES = golden_cases("janus")


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module", params=CASES)
def case(request):
    folder = request.param
    golden = load_file(str(folder / "cases.safetensors"))
    meta = json.loads((folder / "cases.json").read_text())
    gen_size = golden["vq.input"].shape[-1]  # the generated image side used by the reference run
    model, processor, cfg = unimm.load_pretrained(folder, overrides=[f"model.generator.image_size={gen_size}"])
    return folder, golden, meta, model, processor


def user_turn(conversation):
    return [{"role": "user", "content": conversation[0]["content"]}, {"role": "assistant", "content": ""}]


def test_understanding_inputs(case):
    folder, golden, meta, model, processor = case
    batch = processor(user_turn(meta["und_conversation"]), [folder / "und_image.png"])
    assert batch["sft_format"][0] == meta["und_sft_format"]
    for key in ("input_ids", "attention_mask", "images_seq_mask", "images_emb_mask"):
        assert torch.equal(batch[key], golden[f"und.{key}"]), key
    close(batch["pixel_values"], golden["und.pixel_values"])


@torch.no_grad()
def test_understanding_forward_and_greedy(case):
    folder, golden, meta, model, processor = case
    batch = {k[len("und."):]: v for k, v in golden.items() if k.startswith("und.") and k != "und.greedy_tokens"}
    close(model.und_encoder(batch["pixel_values"][:, 0]), golden["und.vision_features"])
    close(model.embed_inputs(**batch), golden["und.inputs_embeds"])
    close(model(**batch), golden["und.logits"])
    expected = golden["und.greedy_tokens"]
    tokens = model.generate_text(batch, max_new_tokens=expected.shape[1], eos_id=processor.eos_id)
    assert torch.equal(tokens, expected)


@torch.no_grad()
def test_batched_left_padding(case):
    folder, golden, meta, model, processor = case
    conversations = [user_turn(c) for c in meta["batch_conversations"]]
    images = [[folder / "und_image.png"] for _ in conversations]  # pixels are replaced below; only ids matter here
    batch = processor(conversations, images)
    for key in ("input_ids", "attention_mask", "images_seq_mask", "images_emb_mask"):
        assert torch.equal(batch[key], golden[f"batch.{key}"]), key
    batch["pixel_values"] = golden["batch.pixel_values"]  # the reference's second image is not in the fixtures
    close(model(**batch)[:, -1], golden["batch.logits_last"])


@torch.no_grad()
def test_vq_tokenizer(case):
    folder, golden, meta, model, processor = case
    quant, codes = model.generator.autoencoder.quantize_images(golden["vq.input"])
    close(quant, golden["vq.quant"])
    assert torch.equal(codes, golden["vq.codes"])
    grid = meta["vq_grid"]
    close(model.generator.autoencoder.decode_codes(codes, grid=(grid, grid)), golden["vq.decoded"])


@torch.no_grad()
def test_text_to_image_with_guidance(case):
    folder, golden, meta, model, processor = case
    parallel = meta["t2i_parallel"]
    assert processor.generation_prompt_text(meta["t2i_prompt_text"]) == meta["t2i_prompt"]
    prompt_ids, prompt_mask = processor.generation_prompts([meta["t2i_prompt_text"]] * parallel)
    assert torch.equal(prompt_ids, golden["t2i.tokens"][0::2])
    assert torch.equal(model.generator.unconditional_prompt(prompt_ids, prompt_mask, processor.pad_id)[0],
                       golden["t2i.tokens"][1::2])
    out = model.generator.sample(model.backbone, prompt_ids, prompt_mask, pad_id=processor.pad_id,
                                 guidance=meta["t2i_cfg_weight"], temperature=0.0, keep_steps=True)
    assert out.steps["logits"].shape[1] == meta["t2i_image_tokens"]
    close(out.steps["logits"], golden["t2i.cfg_logits"])
    assert torch.equal(out.latents, golden["t2i.generated"])
    close(out.images, golden["t2i.decoded"])
