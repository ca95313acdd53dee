"""The processor: deepseek chat template, image placeholders, answer-only labels, left padding, generation
prompts, decoding, and the errors for bad conversations. Uses the golden janus_tiny folder's tokenizer."""

import pytest
import torch

import unimm
from conftest import GOLDEN
from unimm.processor import DEFAULT_SYSTEM_PROMPT, IGNORE_INDEX
from unimm.registry import InputError

FOLDER = GOLDEN / "janus_tiny"
IMAGE = FOLDER / "und_image.png"


@pytest.fixture(scope="module")
def processor():
    return unimm.load_pretrained(FOLDER).processor


def chat(*turns):
    return [{"role": role, "content": content} for role, content in zip(["user", "assistant"] * 4, turns)]


def test_multi_turn_template_with_answers_and_eos(processor):
    eos = processor.tokenizer.eos_token
    text, spans = processor.format_conversation(chat("<image_placeholder>\nWhat is it?", "A cat.", "Sure?", ""))
    assert text == (
        f"{DEFAULT_SYSTEM_PROMPT}\n\n<|User|>: <image_placeholder>\nWhat is it?\n\n<|Assistant|>: A cat.{eos}"
        f"<|User|>: Sure?\n\n<|Assistant|>:"
    )
    assert [text[a:b] for a, b in spans] == [f" A cat.{eos}"]  # from the space after the answer prompt's colon


@pytest.mark.parametrize("answer", ["no", "yes", "three", "A cat.", "red"])
@pytest.mark.parametrize("tokenizer", ["golden", "tiny"])
def test_training_labels_are_exactly_what_answering_generates(processor, tokenizer, answer):
    """The answer prompt (ending at "<|Assistant|>:") is a prefix of the training ids and every token after it is
    labelled - also when the tokenizer splits the space after the colon into a token of its own (the bundled tiny
    tokenizer does for "no"), which an answer span starting after the space would leave unlearned."""
    if tokenizer == "tiny":
        from unimm.encoders.transforms import PadToSquare
        from unimm.processor import load_tokenizer

        processor = unimm.Processor(load_tokenizer("tiny"), PadToSquare(16), num_image_tokens=4)
    question = {"role": "user", "content": "is it?"}
    prompt = processor([question, {"role": "assistant", "content": ""}], system_prompt="")["input_ids"][0]
    train = processor([question, {"role": "assistant", "content": answer}], system_prompt="", with_labels=True)
    ids, labels = train["input_ids"][0], train["labels"][0]
    assert torch.equal(ids[: len(prompt)], prompt)
    assert (labels[: len(prompt)] == IGNORE_INDEX).all()
    assert torch.equal(labels[len(prompt):], ids[len(prompt):])
    assert processor.decode(ids[len(prompt):]).strip() == answer


def test_system_prompt_override_and_none(processor):
    text, _ = processor.format_conversation(chat("hi", ""), system_prompt="Be brief.")
    assert text == "Be brief.\n\n<|User|>: hi\n\n<|Assistant|>:"
    text, _ = processor.format_conversation(chat("hi", ""), system_prompt="")
    assert text == "<|User|>: hi\n\n<|Assistant|>:"


def test_role_aliases(processor):
    conversation = [{"role": "<|User|>", "content": "hi"}, {"role": "gpt", "content": ""}]
    assert processor.format_conversation(conversation, "")[0] == "<|User|>: hi\n\n<|Assistant|>:"


def test_image_alias_expands_like_the_placeholder(processor):
    a = processor(chat("<image>\nWhat?", ""), [IMAGE])
    b = processor(chat("<image_placeholder>\nWhat?", ""), [IMAGE])
    assert torch.equal(a["input_ids"], b["input_ids"])
    ids = a["input_ids"][0].tolist()
    n = processor.num_image_tokens
    start = ids.index(processor.image_start_id)
    assert ids[start: start + n + 2] == [processor.image_start_id] + [processor.image_id] * n + [processor.image_end_id]
    assert ids.count(processor.image_id) == n
    assert int(a["images_seq_mask"].sum()) == n and int(a["images_emb_mask"].sum()) == n
    assert a["pixel_values"].shape == (1, 1, 3, processor.image_size, processor.image_size)


def test_labels_only_on_answers_with_eos(processor):
    eos = processor.tokenizer.eos_token
    batch = processor(chat("<image>\nhi", "yo there", "again", "ok"), [IMAGE], with_labels=True)
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    on = labels != IGNORE_INDEX
    assert torch.equal(labels[on], ids[on])
    assert processor.tokenizer.decode(labels[on].tolist()).replace(" ", "") == f"yothere{eos}ok{eos}"
    assert int((labels == processor.eos_id).sum()) == 2
    assert not on[ids == processor.image_id].any()


def test_image_count_mismatch(processor):
    with pytest.raises(InputError, match=r"1 image placeholder\(s\) .* but 0 image\(s\) were given"):
        processor(chat("<image>\nhi", ""), [])
    with pytest.raises(InputError, match=r"0 image placeholder\(s\) .* but 2 image\(s\) were given"):
        processor(chat("hi", ""), [IMAGE, IMAGE])


def test_bad_turns(processor):
    with pytest.raises(InputError, match=r"unknown role 'robot'; use 'user' or 'assistant'"):
        processor([{"role": "robot", "content": "hi"}])
    with pytest.raises(InputError, match=r"each turn needs 'role' and 'content', got keys \['text'\]"):
        processor([{"text": "hi"}])
    with pytest.raises(InputError, match="empty conversation"):
        processor.format_conversation([])


def test_prompt_longer_than_max_length(processor, monkeypatch):
    monkeypatch.setattr(processor, "max_length", 40)
    with pytest.raises(InputError) as err:
        processor(chat("word " * 60, ""), system_prompt="")
    message = str(err.value)
    length = int(message.split(" is ")[1].split(" tokens")[0])
    assert length > 40 and "the model allows 40" in message
    with pytest.raises(InputError, match=r"the prompt is \d+ tokens long but the model allows 40"):
        processor.generation_prompts(["word " * 60])


def test_left_padding_of_several_conversations(processor):
    conversations = [chat("<image>\nshort", ""), chat("a much longer question without a picture", "")]
    single = [processor(c, i) for c, i in zip(conversations, [[IMAGE], []])]
    batch = processor(conversations, [[IMAGE], []])
    length = batch["input_ids"].shape[1]
    for row, alone in enumerate(single):
        n = alone["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][row, -n:], alone["input_ids"][0])
        assert (batch["input_ids"][row, : length - n] == processor.pad_id).all()
        assert batch["attention_mask"][row].tolist() == [0] * (length - n) + [1] * n
        assert torch.equal(batch["images_seq_mask"][row, -n:], alone["images_seq_mask"][0])
    assert batch["images_emb_mask"].tolist() == [[[True] * processor.num_image_tokens],
                                                 [[False] * processor.num_image_tokens]]
    assert (batch["pixel_values"][1] == 0).all()


def test_generation_prompts_left_padded_and_end_with_the_generation_tag(processor):
    captions = ["a cat", "", "a long caption about a red dog on a green hill"]
    ids, mask = processor.generation_prompts(captions)
    assert ids.shape == mask.shape and ids.shape[0] == 3
    assert (ids[:, -1] == processor.generation_id).all()
    for row, caption in enumerate(captions):
        n = int(mask[row].sum())
        expected = processor.tokenizer(processor.generation_prompt_text(caption))["input_ids"]
        assert ids[row, -n:].tolist() == expected
        assert mask[row].tolist() == [0] * (ids.shape[1] - n) + [1] * n
        assert (ids[row, : ids.shape[1] - n] == processor.pad_id).all()
    assert processor.generation_prompt_text("a cat") == "<|User|>: a cat\n\n<|Assistant|>:<begin_of_image>"
    assert processor.generation_prompt_text("") == "<|User|>:<|Assistant|>:<begin_of_image>"
    assert torch.equal(processor.generation_prompts("a cat")[0], processor.generation_prompts(["a cat"])[0])


def test_decode_cuts_at_eos(processor):
    hello = processor.tokenizer("hello there", add_special_tokens=False)["input_ids"]
    world = processor.tokenizer(" world", add_special_tokens=False)["input_ids"]
    assert processor.decode(hello + [processor.eos_id] + world) == "hello there"
    assert processor.decode(torch.tensor(hello + world)) == "hello there world"
    assert processor.decode([processor.eos_id]) == ""


def test_text_batch_labels_every_real_token(processor):
    batch = processor.text_batch(["hi", "a longer text"])
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert (batch["input_ids"][:, -1] == processor.eos_id).all()
