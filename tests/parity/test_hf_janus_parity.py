"""Parity with transformers' own Janus (``JanusForConditionalGeneration``, ``JanusProcessor``) on a tiny random model.

The model is made here with transformers' classes (``JanusConfig`` with tiny text / vision / VQ configs, weights
drawn wider than its 0.02 default so that argmax decisions have margins), saved with ``save_pretrained`` beside a
``JanusProcessor`` built on the bundled tiny tokenizer with the image tokens named, and read back by
``unimm.load_pretrained``. Where transformers computes differently from the released reference, the test says so:

* image processing: transformers resizes tensors and rounds the short side, the reference resizes PIL images and
  truncates it. A folder in transformers' layout uses transformers' processor (``image_processor: transformers``),
  and the test shows the reference transform would give other pixels on the same picture;
* guidance rows: transformers keeps BOS and BOI and pads every other token, the reference keeps a row's first and
  last real tokens; on prompts that start with BOS and end with BOI (all of unimm's) the rows are equal, checked
  below; transformers stacks them [cond; uncond] where the reference interleaves them, which changes no number;
* tokenizing images (training only): transformers' VQ encoder picks the nearest raw code, the reference the nearest
  l2-normalised one; unimm keeps the reference's in both layouts, and the test shows where they part.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import unimm
from unimm.config import BUNDLED_TOKENIZERS
from conftest import GOLDEN

pytestmark = pytest.mark.parity

QUESTION = "What shape is in the picture?"
CAPTIONS = ["a red square on a blue background", "a green circle"]  # two lengths: left padding is exercised
IMAGE_TOKENS = {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"}
# A template of the hub's form, written here rather than taken from unimm so that the loader is tested on a folder
# unimm did not write: role and colon, content parts (an image on its own line), and a separator ("\n\n" after the
# user, the end-of-sentence token after an answer) only after a turn that is not the last one.
HUB_STYLE_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|User|>: {% else %}<|Assistant|>:"
    "{% if m['content'] %} {% endif %}{% endif %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image_placeholder>{% if not loop.last %}{{ '\\n' }}"
    "{% endif %}{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% if not loop.last or add_generation_prompt %}"
    "{% if m['role'] == 'user' %}{{ '\\n\\n' }}{% else %}<｜end▁of▁sentence｜>{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)


def tiny_janus_config(tied: bool = False):
    from transformers import JanusConfig

    text = dict(model_type="llama", hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=427, max_position_embeddings=256,
                tie_word_embeddings=tied)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=16,
                  projection_dim=64, depth=2, num_image_tokens=16)
    vq = dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32, channel_multiplier=[1, 1, 2],
              projection_dim=64, image_token_embed_dim=64, num_hidden_layers=2)
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=421,
                       tie_word_embeddings=tied)


def write_hf_folder(folder, tied: bool = False):
    """A tiny random ``JanusForConditionalGeneration`` and its ``JanusProcessor``, saved the way transformers does."""
    from transformers import AutoTokenizer, JanusForConditionalGeneration, JanusImageProcessor, JanusProcessor

    torch.manual_seed(0)
    model = JanusForConditionalGeneration(tiny_janus_config(tied)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layernorm.weight")):
                param.normal_(0.0, 0.15)
    tokenizer = AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZERS / "tiny"),
                                              extra_special_tokens=IMAGE_TOKENS, pad_token="<｜▁pad▁｜>")
    config = model.generation_config
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 0, 1, tokenizer.pad_token_id
    config.generation_kwargs = {"boi_token_id": tokenizer.convert_tokens_to_ids("<begin_of_image>")}
    model.save_pretrained(str(folder))
    image_processor = JanusImageProcessor(size={"height": 64, "width": 64})  # OpenAI-CLIP mean/std, as shipped
    JanusProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=HUB_STYLE_TEMPLATE,
                   use_default_system_prompt=True, num_image_tokens=16).save_pretrained(str(folder))
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import JanusProcessor

    folder = tmp_path_factory.mktemp("hf_janus")
    hf_model = write_hf_folder(folder)
    hf_processor = JanusProcessor.from_pretrained(str(folder))
    model, processor, cfg = unimm.load_pretrained(folder)
    image = Image.open(GOLDEN / "janus_tiny" / "und_image.png").convert("RGB").resize((61, 45))  # not square
    return folder, hf_model, hf_processor, model, processor, image


def hf_understanding(hf_processor, image):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = hf_processor.apply_chat_template(messages, add_generation_prompt=True)
    return hf_processor(text=text, images=[image], return_tensors="pt")


def unimm_understanding(processor, image):
    turns = [{"role": "user", "content": f"<image_placeholder>\n{QUESTION}"}, {"role": "assistant", "content": ""}]
    return processor(turns, [image])


def test_the_folder_is_read_as_transformers_wrote_it(setup):
    folder, hf_model, hf_processor, model, processor, image = setup
    assert processor.roles == ("<|User|>", "<|Assistant|>")
    assert processor.num_image_tokens == hf_processor.num_image_tokens == 16
    assert processor.image_id == hf_model.config.image_token_id
    assert model.und_encoder.pixel_mean == tuple(hf_processor.image_processor.image_mean)  # OpenAI CLIP's, not 0.5
    assert model.generator.num_image_tokens == hf_model.config.vision_config.num_image_tokens


def test_processor_inputs_equal(setup):
    """(a) ids, mask and pixels of an image + question, from both processors."""
    folder, hf_model, hf_processor, model, processor, image = setup
    ours, theirs = unimm_understanding(processor, image), hf_understanding(hf_processor, image)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    assert torch.equal(ours["pixel_values"][:, 0], theirs["pixel_values"])
    # Where the layouts differ: the released reference's transform gives other pixels for this picture.
    from unimm.encoders.transforms import PadToSquare

    reference = PadToSquare(64, model.und_encoder.pixel_mean, model.und_encoder.pixel_std)(image)
    assert not torch.allclose(reference, theirs["pixel_values"][0], atol=1e-3)


@torch.no_grad()
def test_text_logits_equal(setup):
    """(b) text logits for image + question, float32."""
    folder, hf_model, hf_processor, model, processor, image = setup
    theirs = hf_understanding(hf_processor, image)
    expected = hf_model(**theirs).logits
    actual = model(**unimm_understanding(processor, image))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_greedy_answers_equal(setup):
    """(c) greedy answers, token for token."""
    folder, hf_model, hf_processor, model, processor, image = setup
    theirs = hf_understanding(hf_processor, image)
    expected = hf_model.generate(**theirs, max_new_tokens=10, do_sample=False)[:, theirs["input_ids"].shape[1]:]
    actual = model.generate_text(unimm_understanding(processor, image), max_new_tokens=10, eos_id=processor.eos_id)
    assert torch.equal(actual[:, : expected.shape[1]], expected)


@torch.no_grad()
def test_guided_image_codes_and_pixels_equal(setup):
    """(d) argmax guided codes (two prompts of different lengths, left padded) and the decoded pixels."""
    folder, hf_model, hf_processor, model, processor, image = setup
    texts = [hf_processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": c}]}],
                                              add_generation_prompt=True) for c in CAPTIONS]
    theirs = hf_processor(text=texts, generation_mode="image", padding=True, return_tensors="pt")
    ids, mask = processor.generation_prompts(CAPTIONS)
    assert torch.equal(ids, theirs["input_ids"]) and torch.equal(mask, theirs["attention_mask"])
    assert mask[1].sum() < mask[0].sum()  # the second prompt is left padded
    # transformers' unconditional rows (keep BOS and BOI, pad the rest) are the reference's on these prompts
    config = hf_model.generation_config
    keep = (ids == config.bos_token_id) | (ids == config.generation_kwargs["boi_token_id"])
    assert torch.equal(model.generator.unconditional_prompt(ids, mask, processor.pad_id)[0],
                       ids.masked_fill(~keep, config.pad_token_id))
    expected = hf_model.generate(theirs["input_ids"], attention_mask=theirs["attention_mask"], generation_mode="image",
                                 do_sample=False, guidance_scale=5.0)
    out = model.generator.sample(model.backbone, ids, mask, pad_id=processor.pad_id, guidance=5.0, temperature=0.0)
    assert torch.equal(out.latents, expected)
    assert len(set(expected.flatten().tolist())) > 4  # not a constant image
    pixels = hf_model.decode_image_tokens(expected).permute(0, 3, 1, 2)  # transformers gives (B, H, W, C)
    torch.testing.assert_close(out.images, pixels, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_tied_head_stays_tied_both_ways(tmp_path):
    """transformers ties the LM head to the input embeddings by the top-level flag and saves it once; unimm reads
    it tied, and writes it back the same way."""
    from transformers import JanusForConditionalGeneration

    from unimm.checkpoint.hf_janus import save_hf

    hf_model = write_hf_folder(tmp_path / "in", tied=True)
    model, processor, _ = unimm.load_pretrained(tmp_path / "in")
    lm = model.backbone.lm
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    again, info = JanusForConditionalGeneration.from_pretrained(str(save_hf(model, processor, tmp_path / "out")),
                                                                output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert again.lm_head.weight is again.model.language_model.embed_tokens.weight
    ids = torch.tensor([[0, 5, 6, 7, 8]])
    torch.testing.assert_close(again(input_ids=ids).logits, hf_model(input_ids=ids).logits)


def test_a_multi_turn_prompt_is_the_same_text(setup):
    """The folder's template and unimm's processor agree past the first turn too (an answer, then a follow-up)."""
    folder, hf_model, hf_processor, model, processor, image = setup
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
                {"role": "user", "content": [{"type": "text", "text": "Which colour?"}]}]
    turns = [{"role": "user", "content": f"<image_placeholder>\n{QUESTION}"},
             {"role": "assistant", "content": "A square."}, {"role": "user", "content": "Which colour?"},
             {"role": "assistant", "content": ""}]
    text = hf_processor.apply_chat_template(messages, add_generation_prompt=True)
    theirs = hf_processor(text=text, images=[image], return_tensors="pt")
    assert torch.equal(processor(turns, [image])["input_ids"], theirs["input_ids"])


@torch.no_grad()
def test_tokenizing_images_differs_in_the_quantiser_only(setup):
    """Where unimm keeps the reference in both layouts: transformers' ``JanusVQVAE.encode`` takes the nearest raw
    code, the reference (and unimm) the nearest l2-normalised one. The networks around the quantiser agree."""
    folder, hf_model, hf_processor, model, processor, image = setup
    torch.manual_seed(1)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    vq, theirs = model.generator.autoencoder, hf_model.model.vqmodel.encode(images)
    latents = vq.quant_conv(vq.encoder(images))
    torch.testing.assert_close(latents, hf_model.model.vqmodel.quant_conv(theirs.last_hidden_state))
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    raw_nearest = torch.cdist(flat, vq.quantize.embedding.weight).argmin(dim=-1)
    assert torch.equal(theirs.image_tokens, raw_nearest)
    assert not torch.equal(model.generator.encode_images(images).flatten(), raw_nearest)
