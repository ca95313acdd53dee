"""Scoring a unified model on an exported shapes split: generation with the checker, understanding by exact match.

Both functions batch the work (KV-cached sampling, guidance rows in the same forward) and are deterministic for a
given ``seed``. ``unimm bench evaluate --model M DATA`` runs :func:`evaluate_model`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .checker import evaluate_generation, evaluate_understanding
from .export import read_jsonl


@torch.no_grad()
def generate_for_prompts(
    model, processor, captions: Sequence[str], *, batch_size: int = 64, seed: int = 0, **options
) -> torch.Tensor:
    """One image per caption, (N, 3, H, W) in [-1, 1]; batch ``k`` is sampled with seed ``seed + k``."""
    model.eval()
    images = []
    for k, start in enumerate(range(0, len(captions), batch_size)):
        ids, mask = processor.generation_prompts(list(captions[start:start + batch_size]))
        out = model.generate_images(ids, mask, pad_id=processor.pad_id, seed=seed + k, **options)
        images.append(out.float().clamp(-1, 1).cpu())
    return torch.cat(images)


@torch.no_grad()
def answer_questions(
    model, processor, records: Sequence[Mapping[str, Any]], folder: str | Path, *, batch_size: int = 64,
    max_new_tokens: int = 6,
) -> list[str]:
    """Greedy answers to ``und.jsonl`` records (image paths relative to ``folder``), one string each."""
    from ..encoders.transforms import load_image

    model.eval()
    folder = Path(folder)
    cache: dict[str, Any] = {}
    answers: list[str] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        conversations, images = [], []
        for record in chunk:
            user = next(t for t in record["conversations"] if t["role"] == "user")
            conversations.append([dict(user), {"role": "assistant", "content": ""}])
            path = str(folder / record["image"])
            if path not in cache:
                cache[path] = load_image(path)
            images.append([cache[path]])
        batch = processor(conversations, images)
        batch.pop("sft_format", None)
        tokens = model.generate_text(batch, max_new_tokens=max_new_tokens, eos_id=processor.eos_id,
                                     pad_id=processor.pad_id)
        answers.extend(processor.decode(row) for row in tokens)
    return answers


def evaluate_model(
    model, processor, folder: str | Path, *, tasks: Sequence[str] = ("generation", "understanding"),
    max_prompts: int | None = None, max_questions: int | None = None, seed: int = 0, batch_size: int = 64,
    **sample_options,
) -> dict[str, Any]:
    """Score ``model`` on the exported split in ``folder`` (``unimm bench export``).

    Args:
        tasks: which of ``"generation"`` / ``"understanding"`` to run.
        max_prompts, max_questions: use only the first so many captions / questions (default: all).
        seed: sampling seed of the first generation batch.
        **sample_options: passed to ``model.generate_images`` (guidance, temperature, num_steps, ...).

    Returns:
        ``{"generation": evaluate_generation(...) + "images", "understanding": evaluate_understanding(...) +
        "predictions"}`` for the tasks asked.
    """
    folder = Path(folder)
    out: dict[str, Any] = {}
    if "generation" in tasks:
        records = read_jsonl(folder / "spec.jsonl")[:max_prompts]
        images = generate_for_prompts(model, processor, [r["caption"] for r in records], batch_size=batch_size,
                                      seed=seed, **sample_options)
        result = evaluate_generation(images, [r["spec"] for r in records], value_range=(-1, 1))
        out["generation"] = {**result, "images": images, "captions": [r["caption"] for r in records]}
    if "understanding" in tasks:
        records = read_jsonl(folder / "und.jsonl")[:max_questions]
        predictions = answer_questions(model, processor, records, folder, batch_size=batch_size)
        out["understanding"] = {**evaluate_understanding(predictions, records), "predictions": predictions}
    return out


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-friendly part of :func:`evaluate_model`'s result: accuracies and supports per task."""
    return {task: {"n": r["n"], "accuracy": r["accuracy"], "support": r["support"]} for task, r in result.items()}


def format_summary(result: Mapping[str, Any]) -> str:
    """One line per task: ``generation  overall 0.915 | colour 0.990 | ...``."""
    lines = []
    for task, r in summary(result).items():
        parts = " | ".join(f"{k} {v:.3f}" for k, v in r["accuracy"].items())
        lines.append(f"{task:<14} n={r['n']:<5} {parts}")
    return "\n".join(lines)


def write_summary(result: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(summary(result), indent=2) + "\n")
