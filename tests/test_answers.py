"""Batch answers: ``unimm understand --batch QUESTIONS.jsonl --out ANSWERS.jsonl`` (unimm/answers.py).

Proven here, on the shipped shapes model: a left-padded batch decodes each row exactly as that question decodes
alone (greedy), with one and two images; ``generate_text`` stops each row at the backbone's positions by the row's
own length (and a learned-position GPT-2 table is never indexed past its end); the command answers the good lines
in input order, reports each bad line once with its number, and exits 2 when no line can be answered; the option
mistakes are one line and exit 2 before any model is loaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import unimm
from unimm.answers import question_conversation
from unimm.cli import main
from unimm.pretrained import DEFAULT_MODEL


@pytest.fixture(scope="module")
def shipped():
    return unimm.load_pretrained(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    """Three test-split scenes of the shapes benchmark (``unimm bench export``), with the first one's ground truth."""
    folder = tmp_path_factory.mktemp("shapes")
    assert main(["bench", "export", str(folder), "--split", "test", "--n", "3"]) == 0
    first = json.loads((folder / "und.jsonl").read_text().splitlines()[0])
    assert first["image"] == "images/000000.png"
    TRUTH.update(question=first["conversations"][0]["content"].split("\n")[-1],
                 answer=first["conversations"][1]["content"])
    return {name: folder / "images" / f"{i:06d}.png" for i, name in enumerate(("first", "second", "third"))}


TRUTH: dict[str, str] = {}  # the first scene's first question and its answer, filled by ``pictures``


def alone(model, processor, question: str, images: list, eos: bool = True, **kwargs) -> torch.Tensor:
    """Greedy answer ids of one question asked alone (stopping at the end token unless ``eos`` is False)."""
    batch = processor(question_conversation(question, len(images)), images)
    return model.generate_text(batch, eos_id=processor.eos_id if eos else None, pad_id=processor.pad_id, **kwargs)[0]


QUESTIONS = [("what colour is the circle?", ["first"]),
             ("how many shapes are there in this picture, can you count them?", ["second"]),
             ("what shape is the green one?", ["third", "first"])]


def test_a_batched_answer_equals_the_question_answered_alone(shipped, pictures):
    model, processor, _ = shipped
    items = [processor.encode_conversation(question_conversation(q, len(names)), [pictures[n] for n in names])
             for q, names in QUESTIONS]
    batch = processor.collate(items)
    assert len({len(item["input_ids"]) for item in items}) == 3  # every row is padded differently
    together = model.generate_text(batch, max_new_tokens=8, eos_id=processor.eos_id, pad_id=processor.pad_id)
    for row, (question, names) in enumerate(QUESTIONS):
        single = alone(model, processor, question, [pictures[n] for n in names], max_new_tokens=8)
        got = together[row, :len(single)]
        assert torch.equal(got, single), (question, got, single)
        assert bool((together[row, len(single):] == processor.pad_id).all())  # a finished row holds padding
    assert any(processor.decode(row).strip() for row in together)  # the model really answers


def test_each_row_stops_at_the_context_by_its_own_length(shipped, pictures):
    """No end token: each row runs until its next token would be read beyond ``max_positions``, as it would alone."""
    model, processor, _ = shipped
    limit = model.backbone.max_positions
    cases = QUESTIONS[:2]
    items = [processor.encode_conversation(question_conversation(q, len(names)), [pictures[n] for n in names])
             for q, names in cases]
    together = model.generate_text(processor.collate(items), max_new_tokens=10 * limit, pad_id=processor.pad_id)
    for row, ((question, names), item) in enumerate(zip(cases, items)):
        single = alone(model, processor, question, [pictures[n] for n in names], max_new_tokens=10 * limit,
                       eos=False)
        # the prompt fills positions 0..n-1, answer tokens 1..k-1 are read at n..limit-1, the k-th is never read
        assert len(single) == limit - len(item["input_ids"]) + 1
        assert torch.equal(together[row, :len(single)], single)
        assert bool((together[row, len(single):] == processor.pad_id).all())


def test_learned_positions_are_never_indexed_past_their_table():
    """GPT-2's position table has ``n_positions`` rows: a row that finishes early still runs, at a clamped position."""
    cfg = unimm.load_config("janus_tiny", ["model.backbone=@parts/backbone/gpt2_tiny", "model.generator=null",
                                           "model.backbone.n_positions=120"])  # fmt: skip
    torch.manual_seed(0)
    model = unimm.build_model(cfg).eval()
    processor = unimm.build_processor(cfg, model)
    image = Image.new("RGB", (32, 32), "red")
    batch = processor([question_conversation("hi", 1), question_conversation("a much longer question here", 1)],
                      [[image], [image]])
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths[1] > lengths[0]
    tokens = model.generate_text(batch, max_new_tokens=100, pad_id=processor.pad_id)  # the long row ends first
    assert tokens.shape[1] == 120 - lengths[0] + 1


# -- the command -----------------------------------------------------------------------------------------------
def write_questions(folder: Path, pictures: dict[str, Path]) -> Path:
    (folder / "sub").mkdir(exist_ok=True)
    local = folder / "sub" / "local.png"
    shutil.copy(pictures["second"], local)
    lines = [
        json.dumps({"image": str(pictures["first"]), "question": TRUTH["question"]}),  # absolute path
        "{not json",
        json.dumps({"image": "sub/local.png", "question": "what colour is the circle?"}),  # relative to the file
        json.dumps({"question": "no image here"}),
        "",  # blank: ignored
        json.dumps({"image": [str(pictures["third"]), str(pictures["first"])], "question": QUESTIONS[2][0]}),
        json.dumps({"image": "missing.png", "question": "what?"}),
        json.dumps({"image": str(pictures["second"]), "question": "what? " * 200}),  # beyond the 256 positions
        json.dumps({"image": str(pictures["second"]), "question": QUESTIONS[1][0]}),
    ]
    path = folder / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert local.is_file()
    return path


def test_batch_answers_good_lines_in_order_and_reports_bad_ones(shipped, pictures, tmp_path, capsys):
    questions = write_questions(tmp_path, pictures)
    out = tmp_path / "answers" / "answers.jsonl"
    assert main(["understand", "--batch", str(questions), "--out", str(out), "--batch-size", "2",
                 "--max-new-tokens", "8"]) == 0
    err = capsys.readouterr().err
    bad = [line for line in err.splitlines() if line.startswith("unimm: ")]
    assert len(bad) == 4
    assert bad[:3] == [
        f"unimm: {questions} line 2: not JSON (Expecting property name enclosed in double quotes at column 2); "
        "skipped",
        f"unimm: {questions} line 4: missing key(s) 'image'; each line needs 'image' and 'question'; skipped",
        f"unimm: {questions} line 7: image file not found: {tmp_path / 'missing.png'}; skipped",
    ]
    assert bad[3].startswith(f"unimm: {questions} line 8: the conversation is ")
    assert bad[3].endswith(" tokens long but the model allows 256; shorten the text or use fewer images; skipped")
    assert "answering" not in err  # no progress bar: stderr is not a terminal and --progress was not given
    assert "Traceback" not in err

    model, processor, _ = shipped
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [(str(pictures["first"]), [pictures["first"]], TRUTH["question"]),
                ("sub/local.png", [tmp_path / "sub" / "local.png"], "what colour is the circle?"),
                ([str(pictures["third"]), str(pictures["first"])], [pictures["third"], pictures["first"]],
                 QUESTIONS[2][0]),
                (str(pictures["second"]), [pictures["second"]], QUESTIONS[1][0])]
    assert [(a["image"], a["question"]) for a in answers] == [(image, q) for image, _, q in expected]
    for answer, (_, paths, question) in zip(answers, expected):
        single = alone(model, processor, question, paths, max_new_tokens=8)
        assert answer["answer"] == processor.decode(single).strip()
    assert answers[0]["answer"] == TRUTH["answer"]  # the shipped model answers it right (README: 90.8%)


def test_progress_bar_on_request(tmp_path, pictures, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"image": str(pictures["first"]), "question": "what colour is the circle?"}))
    assert main(["understand", "--batch", str(questions), "--out", str(tmp_path / "a.jsonl"), "--progress",
                 "--max-new-tokens", "2"]) == 0
    assert "answering: 100%" in capsys.readouterr().err


def test_no_answerable_line_exits_2_and_writes_nothing(tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"image": "a.png"}\n[1, 2]\n')
    out = tmp_path / "answers.jsonl"
    assert main(["understand", "--batch", str(questions), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == [
        f"unimm: {questions} line 1: missing key(s) 'question'; each line needs 'image' and 'question'; skipped",
        f"unimm: {questions} line 2: expected a JSON object {{\"image\": ..., \"question\": ...}}, got list; skipped",
    ]
    assert lines[2:] == [f"unimm: error: --batch {questions}: no line could be answered (2 bad line(s), reported "
                         "above); each line must be {\"image\": PATH, \"question\": TEXT}"]
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--image", "x.png", "--question", "q", "--batch", "q.jsonl", "--out", "a.jsonl"],
     "--image and --question and --batch: give either --image and --question (one question) or --batch FILE"),
    (["--question", "q", "--batch", "q.jsonl"], "--question and --batch: give either"),
    (["--batch", "q.jsonl"], "--batch needs --out ANSWERS.jsonl"),
    (["--batch", "{tmp}/none.jsonl", "--out", "a.jsonl"], "--batch {tmp}/none.jsonl: no such file"),
    (["--batch", "q.jsonl", "--out", "{tmp}"], "--out {tmp}: is a folder; give a file name"),
    (["--batch", "q.jsonl", "--out", "a.jsonl", "--batch-size", "0"], "--batch-size = 0: must be at least 1"),
    (["--batch", "binary.jsonl", "--out", "a.jsonl"], "--batch binary.jsonl: not a UTF-8 text file"),
    (["--image", "x.png"], "give --image FILE and --question TEXT, or --batch QUESTIONS.jsonl --out ANSWERS.jsonl"),
    (["--image", "x.png", "--question", "q", "--out", "a.jsonl"], "--out and --batch-size go with --batch"),
])  # fmt: skip
def test_option_mistakes_are_one_line_and_exit_2(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q.jsonl").write_text('{"image": "x.png", "question": "q"}\n')
    (tmp_path / "binary.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["understand", *args]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("unimm: error: ")
    assert message.replace("{tmp}", str(tmp_path)) in lines[0]
