"""Three transformers causal-LM families (Llama, Qwen2, GPT-2) as the unified model's backbone.

Each family is built from its slot file under ``configs/parts/backbone`` and, through ``janus_tiny`` plus an
override, into a whole (understanding-only) model. The tests prove, for every family: the config's fields are
checked against the family's own transformers config class (a misspelled field fails naming the closest one);
KV-cached greedy decoding gives the tokens of plain recomputation; a left-padded batch row gives the outputs of
the same conversation run alone (position ids follow the padding, which matters most for GPT-2's learned absolute
positions); and a tokenizer that lacks the image tokens gets them added, the embeddings grow to match, and nothing
else changes (same outputs on the old ids, same old embedding rows, tying kept).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import unimm
from unimm.backbones import CausalLMBackbone
from unimm.config import find_config
from unimm.generation.sampling import sample_next
from unimm.registry import BACKBONES, ConfigError

FAMILIES = {  # family -> (decoder class transformers builds, input and output embeddings tied)
    "llama": ("LlamaModel", False),
    "qwen2": ("Qwen2Model", False),
    "gpt2": ("GPT2Model", True),
}
IMAGE = Image.fromarray((np.random.default_rng(0).random((24, 16, 3)) * 255).astype("uint8"))


def slot_file(family: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(find_config(f"parts/backbone/{family}_tiny")))


def understanding_model(family: str, *extra: str):
    """janus_tiny with this family's backbone and no generation path (eval mode), and its processor."""
    cfg = unimm.load_config("janus_tiny", [f"model.backbone=@parts/backbone/{family}_tiny", "model.generator=null",
                                           *extra])  # fmt: skip
    torch.manual_seed(0)
    model = unimm.build_model(cfg).eval()
    return cfg, model


@pytest.fixture(scope="module")
def built() -> dict:
    """One model and processor per family, shared by the decoding tests."""
    out = {}
    for family in FAMILIES:
        cfg, model = understanding_model(family)
        out[family] = (model, unimm.build_processor(cfg, model))
    return out


# -- building and config checks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_family_builds_from_its_slot_file(family):
    backbone = BACKBONES.build(slot_file(family), where="model.backbone")
    assert isinstance(backbone, CausalLMBackbone)
    assert backbone.model_type == family
    assert type(backbone.decoder).__name__ == FAMILIES[family][0]
    assert (backbone.hidden_size, backbone.num_layers, backbone.vocab_size) == (64, 2, 427)
    tied = backbone.lm.get_output_embeddings().weight is backbone.lm.get_input_embeddings().weight
    assert tied == FAMILIES[family][1]


@pytest.mark.parametrize(
    "family, wrong, right",
    [("llama", "intermediate_sise", "intermediate_size"), ("qwen2", "num_hiden_layers", "num_hidden_layers"),
     ("gpt2", "n_embed", "n_embd")],
)  # fmt: skip
def test_misspelled_field_names_the_closest_one(family, wrong, right):
    overrides = [f"model.backbone=@parts/backbone/{family}_tiny", f"model.backbone.{wrong}=64", "model.generator=null"]
    with pytest.raises(ConfigError, match=rf"model\.backbone\.{wrong}: not a field of transformers' {family} "
                                          rf"config\. Did you mean '{right}'\?"):  # fmt: skip
        unimm.build_model("janus_tiny", overrides)


def test_unknown_model_type_suggests_a_family():
    with pytest.raises(ConfigError, match=r"model\.backbone\.model_type: transformers has no model type 'qwen'\. "
                                          r"Did you mean 'qwen"):  # fmt: skip
        BACKBONES.build({**slot_file("qwen2"), "model_type": "qwen"}, where="model.backbone")


# -- decoding ----------------------------------------------------------------------------------------------------
def conversations() -> tuple[list, list]:
    convs = [
        [{"role": "user", "content": "<image> Describe it in detail, please."}, {"role": "assistant", "content": ""}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}],
    ]
    return convs, [[IMAGE], []]


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_equals_recomputation(family, temperature, built):
    """``generate_text`` (KV cache) gives the tokens of re-running the whole sequence at every step.

    Greedy is the contract; the seeded sampled run adds varied tokens (a random tiny GPT-2 repeats one token
    greedily), so a cache that drifts shows up in the draws too.
    """
    model, processor = built[family]
    convs, images = conversations()
    batch = processor(convs, images)
    steps = 6
    cached = model.generate_text(batch, max_new_tokens=steps, temperature=temperature, seed=0)
    assert cached.shape == (2, steps)

    ids, mask = batch["input_ids"], batch["attention_mask"]
    seq_mask = batch["images_seq_mask"]
    rng = torch.Generator().manual_seed(0)
    recomputed = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(ids, mask, batch["pixel_values"], seq_mask, batch["images_emb_mask"])
            token = sample_next(logits[:, -1].float(), temperature=temperature, top_k=None, top_p=None, generator=rng)
            recomputed.append(token)
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            seq_mask = torch.cat([seq_mask, torch.zeros_like(seq_mask[:, :1])], dim=1)
    torch.testing.assert_close(cached, torch.stack(recomputed, dim=1), rtol=0, atol=0)
    if temperature:
        assert len(set(cached.flatten().tolist())) > 2  # the draws really vary


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_rows_equal_rows_alone(family, built):
    model, processor = built[family]
    convs, images = conversations()
    batch = processor(convs, images)
    assert not bool(batch["attention_mask"].all())  # the short row is padded
    with torch.no_grad():
        together = model(**batch)
        for row, (conv, imgs) in enumerate(zip(convs, images)):
            alone_batch = processor([conv], [imgs])
            alone = model(**alone_batch)[0]
            torch.testing.assert_close(together[row, -alone.shape[0]:], alone, rtol=1e-4, atol=1e-5)


# -- a tokenizer without the image tokens ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_tokenizer(tmp_path_factory):
    """A small byte-level BPE tokenizer with only <s> and </s>: none of the image or pad tags."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(["a photo of a cat on a mat", "what is in the image?", "hello there"], trainer)
    folder = tmp_path_factory.mktemp("plain_tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    return folder, len(tok.get_vocab())


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_image_tokens_are_added_and_nothing_else_changes(family, plain_tokenizer):
    folder, base_vocab = plain_tokenizer
    cfg, model = understanding_model(family, f"model.backbone.vocab_size={base_vocab}")
    backbone = model.backbone
    old_ids = torch.randint(0, base_vocab, (2, 7), generator=torch.Generator().manual_seed(0))
    old_rows = backbone.embed(torch.arange(base_vocab)).detach().clone()
    with torch.no_grad():
        before = backbone.logits(backbone(backbone.embed(old_ids)).hidden_states)
    untouched = {k: v.clone() for k, v in backbone.state_dict().items() if "wte" not in k and "embed" not in k
                 and "lm_head" not in k}  # fmt: skip

    processor = unimm.build_processor(cfg, model, tokenizer_path=folder)

    tags = {processor.image_tag, processor.image_start_tag, processor.image_end_tag, processor.generation_tag,
            processor.tokenizer.convert_ids_to_tokens(processor.pad_id)}  # fmt: skip
    assert processor.vocab_size == base_vocab + len(tags) == backbone.vocab_size
    new_ids = {processor.image_id, processor.image_start_id, processor.image_end_id, processor.pad_id}
    assert len(new_ids) == 4 and min(new_ids) >= base_vocab
    assert processor.tokenizer("<image_placeholder>")["input_ids"] == [processor.image_id]
    tied = backbone.lm.get_output_embeddings().weight is backbone.lm.get_input_embeddings().weight
    assert tied == FAMILIES[family][1]
    assert backbone.lm.get_output_embeddings().weight.shape[0] == backbone.vocab_size

    # Everything else unchanged: the old rows, every other weight, and the outputs on old ids.
    torch.testing.assert_close(backbone.embed(torch.arange(base_vocab)), old_rows, rtol=0, atol=0)
    after_state = backbone.state_dict()
    for name, value in untouched.items():
        torch.testing.assert_close(after_state[name], value, rtol=0, atol=0, msg=name)
    with torch.no_grad():
        after = backbone.logits(backbone(backbone.embed(old_ids)).hidden_states)
    assert after.shape[-1] == base_vocab + len(tags)
    torch.testing.assert_close(after[..., :base_vocab], before, rtol=0, atol=0)

    # And the grown model reads an image conversation written with the new tokens.
    batch = processor([{"role": "user", "content": "<image> what is in the image?"}], [IMAGE])
    assert int(batch["images_seq_mask"].sum()) == model.und_encoder.num_tokens
    with torch.no_grad():
        logits = model(**batch)
    assert logits.shape == (*batch["input_ids"].shape, backbone.vocab_size) and torch.isfinite(logits).all()

