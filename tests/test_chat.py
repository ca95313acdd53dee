"""``unimm chat`` (unimm/chat.py): a multi-turn conversation on scripted input, on the shipped shapes model.

Every test records the batches the chat hands to ``generate_text`` and compares them with the processor's batch
for the conversation written out by hand, so the history, the images and the template are what they should be:
multi-turn history, two images in one turn, ``/reset``, dropping the oldest turns at the context limit, refusing
a turn too long alone, a bad ``/image`` path, ``/quit`` and the end of input. One test runs the real command.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unimm
from unimm.answers import question_conversation
from unimm.chat import Chat
from unimm.cli import main
from unimm.pretrained import DEFAULT_MODEL
from unimm.registry import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped():
    return unimm.load_pretrained(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("shapes")
    assert main(["bench", "export", str(folder), "--split", "test", "--n", "4"]) == 0
    return sorted((folder / "images").glob("*.png"))


def chat_on(shipped, monkeypatch, script: str, **options):
    """Run ``script`` through a :class:`Chat`; returns (chat, answers, notices, batches given to generate_text)."""
    model, processor, _ = shipped
    batches = []
    real = model.generate_text

    def recording(batch, **kwargs):
        batches.append(batch)
        return real(batch, **kwargs)

    monkeypatch.setattr(model, "generate_text", recording)
    out, err = io.StringIO(), io.StringIO()
    chat = Chat(model, processor, out=out, err=err, **options)
    chat.run(io.StringIO(script))
    return chat, out.getvalue().splitlines(), err.getvalue().splitlines(), batches


def assert_batch_is(batch, processor, turns: list[dict], images: list) -> None:
    """``batch`` is the processor's batch for ``turns`` (ending with an empty assistant turn) and ``images``."""
    expected = processor(turns, images)
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def test_prompt_length_counts_what_the_processor_encodes(shipped, scenes):
    """The chat budgets with ``Processor.prompt_length``: it must equal the encoded length, images expanded."""
    _, processor, _ = shipped
    conversations = [
        (question_conversation("hi", 0), []),
        (question_conversation("what colour is the circle?"), scenes[:1]),
        ([user("<image_placeholder>\n<image_placeholder>\nwhich?"), assistant("the red one"),
          user("<image>\nand here?"), assistant("")], scenes[:3]),
    ]
    for turns, images in conversations:
        encoded = processor.encode_conversation(turns, images)["input_ids"]
        assert processor.prompt_length(turns) == len(encoded) > len(images) * processor.num_image_tokens


def test_multi_turn_history(shipped, monkeypatch, scenes):
    _, processor, _ = shipped
    chat, answers, notices, batches = chat_on(
        shipped, monkeypatch, f"/image {scenes[0]}\nwhat colour is the circle?\nhow many shapes are there?\n")
    assert len(answers) == 2 and notices == []
    # the first turn is exactly the one `unimm understand` builds
    assert_batch_is(batches[0], processor, question_conversation("what colour is the circle?"), [scenes[0]])
    assert_batch_is(batches[1], processor, [user("<image_placeholder>\nwhat colour is the circle?"),
                                            assistant(answers[0]), user("how many shapes are there?"),
                                            assistant("")], [scenes[0]])  # fmt: skip
    assert answers[0] and [e.answer for e in chat.history] == answers


def test_two_images_in_one_turn(shipped, monkeypatch, scenes):
    _, processor, _ = shipped
    _, answers, _, batches = chat_on(shipped, monkeypatch, f"/image {scenes[1]}\n/image {scenes[2]}\nwhich?\n")
    assert len(answers) == 1
    assert batches[0]["pixel_values"].shape[:2] == (1, 2)
    assert_batch_is(batches[0], processor, question_conversation("which?", 2), [scenes[1], scenes[2]])


def test_reset_forgets_the_history(shipped, monkeypatch, scenes):
    _, processor, _ = shipped
    chat, answers, notices, batches = chat_on(
        shipped, monkeypatch, f"/image {scenes[0]}\nwhat colour is the circle?\n/image {scenes[1]}\n/reset\nhi\n")
    assert notices == ["unimm: history cleared"]
    assert_batch_is(batches[1], processor, question_conversation("hi", 0), [])  # no turn, no pending image
    assert len(chat.history) == 1 and len(answers) == 2


def test_the_oldest_turns_are_dropped_to_stay_in_the_context(shipped, monkeypatch, scenes):
    _, processor, _ = shipped
    limit = processor.max_length
    one_turn = processor.prompt_length(question_conversation("what colour is the circle?"))
    budget = 2 * one_turn + 8  # room for two turns with short answers, never three
    questions = ["what colour is the circle?", "what shape is it?", "how many shapes are there?",
                 "what colour is the square?"]
    script = "".join(f"/image {scenes[i]}\n{q}\n" for i, q in enumerate(questions))
    chat, answers, notices, batches = chat_on(shipped, monkeypatch, script, max_new_tokens=limit - budget)
    assert len(answers) == 4
    assert notices and all(n.startswith("unimm: dropped the oldest ") and n.endswith(
        f" turn(s) to stay within the model's {limit} positions ({limit - budget} kept for the answer)")
        for n in notices)
    assert all(int(b["attention_mask"].sum()) <= budget for b in batches)
    assert int(batches[-1]["attention_mask"].sum()) > one_turn  # the last prompt still holds an earlier turn
    kept = chat.history
    assert 1 < len(kept) < 4 and [e.text for e in kept] == questions[-len(kept):]  # the newest turns stay
    turns = []
    for exchange in kept[:-1]:
        turns += [user(f"<image_placeholder>\n{exchange.text}"), assistant(exchange.answer)]
    turns += question_conversation(kept[-1].text)
    assert_batch_is(batches[-1], processor, turns, [scenes[4 - len(kept) + i] for i in range(len(kept))])


def test_a_turn_too_long_alone_is_refused_and_the_history_kept(shipped, monkeypatch, scenes):
    _, processor, _ = shipped
    limit = processor.max_length
    budget = 60  # one image turn fits; four images (4 x 18 tokens) do not
    script = (f"/image {scenes[0]}\nwhat colour is the circle?\n" + f"/image {scenes[1]}\n" * 4 + "which?\n"
              + "how many shapes are there?\n")
    chat, answers, notices, batches = chat_on(shipped, monkeypatch, script, max_new_tokens=limit - budget)
    assert len(answers) == 2 and len(batches) == 2
    assert len(notices) == 1 and notices[0].startswith("unimm: this turn and its 4 image(s) is ")
    assert notices[0].endswith(f" tokens; the model reads {limit} positions, {limit - budget} of them kept for the "
                               f"answer (--max-new-tokens), so a turn may use {budget}: shorten it or attach fewer "
                               "images (it was not sent)")
    assert_batch_is(batches[1], processor, [user("<image_placeholder>\nwhat colour is the circle?"),
                                            assistant(answers[0]), *question_conversation(
                                                "how many shapes are there?", 0)], [scenes[0]])  # fmt: skip
    assert [e.text for e in chat.history] == ["what colour is the circle?", "how many shapes are there?"]


def test_a_bad_image_path_is_one_line_and_the_chat_goes_on(shipped, monkeypatch, scenes, tmp_path):
    _, processor, _ = shipped
    missing, text = tmp_path / "missing.png", tmp_path / "text.png"
    text.write_text("not an image")
    script = f"/image {missing}\n/image {text}\n/image\n/image {scenes[0]}\nwhat colour is the circle?\n/imag x\n/x\n"
    _, answers, notices, batches = chat_on(shipped, monkeypatch, script)
    assert len(answers) == 1 == len(batches)
    assert notices[0] == f"unimm: /image {missing}: image file not found: {missing}; the conversation goes on " \
                         "without it"
    assert notices[1].startswith(f"unimm: /image {text}: cannot read image {text}")
    assert notices[2:] == ["unimm: /image needs a path: /image PATH",
                           "unimm: unknown command /imag; the commands are /image PATH, /reset and /quit",
                           "unimm: unknown command /x; the commands are /image PATH, /reset and /quit"]
    assert_batch_is(batches[0], processor, question_conversation("what colour is the circle?"), [scenes[0]])


def test_quit_ends_the_conversation(shipped, monkeypatch):
    _, answers, _, batches = chat_on(shipped, monkeypatch, "hello\n/quit\nnot read\n")
    assert len(answers) == 1 == len(batches)


def test_an_answer_budget_beyond_the_context_is_refused(shipped):
    model, processor, _ = shipped
    with pytest.raises(InputError, match=r"--max-new-tokens = 256 leaves no room for the conversation in the "
                                         r"model's 256 positions"):  # fmt: skip
        Chat(model, processor, max_new_tokens=256)


def test_the_command_reads_standard_input(scenes, tmp_path):
    script = f"/image {scenes[0]}\nwhat colour is the circle?\n/image {tmp_path / 'nope.png'}\nhow many?\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "unimm.cli", "chat", "--max-new-tokens", "8"], input=script,
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    truth = json.loads((scenes[0].parents[1] / "und.jsonl").read_text().splitlines()[0])
    assert truth["conversations"][0]["content"].endswith("what colour is the circle?")
    answers = done.stdout.splitlines()
    assert len(answers) == 2 and answers[0] == truth["conversations"][1]["content"]
    assert f"unimm: /image {tmp_path / 'nope.png'}: image file not found" in done.stderr
