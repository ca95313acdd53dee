"""Answer a file of questions about images: ``unimm understand --batch questions.jsonl --out answers.jsonl``.

Each input line is a JSON object ``{"image": PATH or [PATH, ...], "question": TEXT}``; relative image paths are
read from the questions file's folder. Each answer is written as ``{"image", "question", "answer"}`` (image and
question as given), in input order. Questions are answered ``batch_size`` at a time: the processor left-pads the
conversations and :meth:`unimm.model.UnifiedModel.generate_text` decodes them together, each row exactly as it
would be decoded alone (positions follow the padding; each row stops at its own end token or context limit).

A bad line (not JSON, a missing key, a missing or unreadable image, too long for the model's context) is reported
as one line on stderr naming its line number and skipped; the others are answered. If no line can be answered,
:func:`answer_file` raises :class:`InputError` (the command then exits with status 2) and writes no answers file.

Blank lines are ignored. The conversation for one question is the one ``unimm understand`` builds
(:func:`question_conversation`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .registry import InputError

IMAGE_TAG = "<image_placeholder>"


def user_content(text: str, n_images: int) -> str:
    """A user turn's content: one image placeholder line per image, then the text (``unimm understand``'s form)."""
    return f"{IMAGE_TAG}\n" * n_images + text


def question_conversation(question: str, n_images: int = 1) -> list[dict]:
    """One user turn asking ``question`` about ``n_images`` images, then an empty assistant turn to answer."""
    return [{"role": "user", "content": user_content(question, n_images)}, {"role": "assistant", "content": ""}]


@dataclass
class Question:
    """One good line of a questions file: ``image`` and ``question`` as given, ``paths`` resolved."""

    line: int
    image: str | list[str]
    question: str
    paths: list[Path]


def parse_line(text: str, line: int, folder: Path) -> Question:
    """One JSON line -> :class:`Question`; raises :class:`InputError` saying what is wrong with it."""
    try:
        record = json.loads(text.rstrip("\r\n"))  # error columns then count within the line
    except json.JSONDecodeError as err:
        raise InputError(f"not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object {{\"image\": ..., \"question\": ...}}, got {type(record).__name__}")
    missing = [key for key in ("image", "question") if key not in record]
    if missing:
        raise InputError(f"missing key(s) {', '.join(map(repr, missing))}; each line needs 'image' and 'question'")
    image, question = record["image"], record["question"]
    images = [image] if isinstance(image, str) else image
    if not isinstance(images, list) or not images or not all(isinstance(p, str) and p for p in images):
        raise InputError(f"'image' must be a path or a non-empty list of paths, got {image!r}")
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"'question' must be a non-empty string, got {question!r}")
    return Question(line, image, question, [folder / p for p in images])  # an absolute p replaces folder


def read_questions(path: str | Path) -> Iterator[tuple[int, Question | InputError]]:
    """(line number, :class:`Question` or the error that line has) for each non-blank line of ``path``."""
    path = Path(path)
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if text.strip():
                try:
                    yield number, parse_line(text, number, path.parent)
                except InputError as err:
                    yield number, err


def answer_file(
    model, processor, questions: str | Path, out: str | Path, *, batch_size: int = 8, progress: bool = False,
    warn: Callable[[str], None] | None = None, max_new_tokens: int = 256, **sampling: Any,
) -> tuple[int, int]:
    """Answer every good line of ``questions`` into ``out`` (JSON lines, input order); returns (answered, skipped).

    Args:
        batch_size: questions decoded together.
        progress: a tqdm bar over the lines on stderr.
        warn: where the one-line reports of bad lines go (default: stderr, through tqdm so the bar stays whole).
        max_new_tokens, **sampling: passed to ``generate_text`` (temperature, top_k, top_p, seed).

    Raises:
        InputError: the file has no line that could be answered (nothing is written then).
    """
    from tqdm import tqdm

    from .encoders.transforms import load_image

    questions, out = Path(questions), Path(out)
    try:
        total = sum(1 for text in questions.open(encoding="utf-8") if text.strip())
    except UnicodeDecodeError:
        raise InputError(f"--batch {questions}: not a UTF-8 text file; give JSON lines of "
                         "{\"image\": PATH, \"question\": TEXT}") from None
    bar = tqdm(total=total, desc="answering", unit="q", disable=not progress, file=sys.stderr)
    report = warn or (lambda message: tqdm.write(message, file=sys.stderr))
    answered = skipped = 0
    sink: TextIO | None = None  # opened at the first answer: an all-bad file leaves no empty answers file behind

    def flush(batch: list[tuple[Question, dict]]) -> None:
        nonlocal answered, sink
        if not batch:
            return
        for question, answer in zip((q for q, _ in batch), _answer(model, processor, [e for _, e in batch],
                                                                    max_new_tokens, sampling)):
            if sink is None:
                out.parent.mkdir(parents=True, exist_ok=True)
                sink = out.open("w", encoding="utf-8")
            sink.write(json.dumps({"image": question.image, "question": question.question, "answer": answer},
                                  ensure_ascii=False) + "\n")
        sink.flush()
        answered += len(batch)
        bar.update(len(batch))

    pending: list[tuple[Question, dict]] = []
    try:
        for number, item in read_questions(questions):
            try:
                if isinstance(item, InputError):
                    raise item
                images = [load_image(p) for p in item.paths]
                pending.append((item, processor.encode_conversation(
                    question_conversation(item.question, len(images)), images)))
            except InputError as err:
                skipped += 1
                bar.update(1)
                report(f"unimm: {questions} line {number}: {err}; skipped")
                continue
            if len(pending) == batch_size:
                flush(pending)
                pending = []
        flush(pending)
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    if not answered:
        raise InputError(f"--batch {questions}: no line could be answered ({skipped} bad line(s), reported above); "
                         "each line must be {\"image\": PATH, \"question\": TEXT}")
    return answered, skipped


def _answer(model, processor, items: Sequence[dict], max_new_tokens: int, sampling: dict) -> list[str]:
    """Encoded conversations -> their answers, decoded together in one left-padded batch."""
    batch = processor.collate(items)
    tokens = model.generate_text(batch, max_new_tokens=max_new_tokens, eos_id=processor.eos_id,
                                 pad_id=processor.pad_id, **sampling)
    return [processor.decode(row).strip() for row in tokens]
