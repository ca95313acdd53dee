"""GenEval sampling: images for GenEval's object detector to score (Ghosh et al. 2023, "GenEval: An Object-Focused
Framework for Evaluating Text-to-Image Alignment", github.com/djghosh13/geneval).

GenEval reads a folder with one sub-folder per prompt of its ``evaluation_metadata.jsonl`` (553 prompts), in file
order, which :func:`sample_geneval` writes::

    OUT/settings.json            every setting of the run (model, seed, sampling options, size, n, batch size)
    OUT/00000/metadata.jsonl     that prompt's line, exactly as given
    OUT/00000/samples/0000.png   the prompt's n samples (0000.png ... n-1)
    OUT/00000/grid.png           the samples in one row (GenEval's own sampling script writes it too; optional)

GenEval's scorer (``evaluation/evaluate_images.py``) reads every digit-named folder's ``metadata.jsonl`` as one
JSON object and every ``samples/<digits>.png``, so the four-digit names here and the five its own sampling script
writes are read alike; ``settings.json``, not a folder, is passed over.

The defaults are the papers' recipe: 4 images a prompt (Janus, Janus-Pro and JanusFlow report GenEval on 4);
for a VQ path (Janus, Janus-Pro) guidance 5 and temperature 1, as their papers sample; any other path (JanusFlow's
rectified flow) keeps its own defaults (the released w = 2 and 30 Euler steps). Images are made at the model's own
generation size (384 px for the released models, 32 px for the shipped shapes model) unless ``--image-size`` says
otherwise; ``settings.json`` records which.

Prompt i's samples are drawn in batches of ``batch_size`` (default: all n at once); batch c is seeded with
``SeedSequence([seed, i, c])``, so a prompt's images do not depend on the other prompts, and a resumed run
(``skip_existing``) draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..registry import InputError

#: GenEval's default number of images per prompt, as the Janus papers report it.
N_SAMPLES = 4
#: The Janus / Janus-Pro papers' sampling for their VQ path (other paths keep their own defaults).
VQ_RECIPE = {"guidance": 5.0, "temperature": 1.0}


def read_prompts(path: str | Path) -> list[tuple[str, dict]]:
    """GenEval's metadata file -> (line as given, parsed metadata) per prompt, in order.

    Raises:
        InputError: naming the first bad line (empty, not a JSON object, no non-empty "prompt" string).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--prompts {path}: no such file; give GenEval's evaluation_metadata.jsonl")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"--prompts {path}: not a UTF-8 text file; give GenEval's evaluation_metadata.jsonl") \
            from None
    # split at newlines only, as GenEval reads the file (str.splitlines would also split at U+2028 inside a string)
    lines = content.split("\n")
    if lines[-1] == "":  # after the newline that ends the last line (or an empty file)
        lines.pop()
    prompts = []
    for number, text in enumerate(lines, start=1):
        text = text.rstrip("\r")
        where = f"--prompts {path} line {number}"
        if not text.strip():
            raise InputError(f"{where}: is empty; GenEval's file has one JSON object per line, one per prompt")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"{where}: not JSON ({err.msg} at column {err.colno}); each line is one prompt's "
                             'metadata, e.g. {"tag": "single_object", "prompt": "a photo of a bench"}') from None
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f'{where}: needs a JSON object with a non-empty "prompt" string')
        prompts.append((text, record))
    if not prompts:
        raise InputError(f"--prompts {path}: the file has no prompts")
    return prompts


def sampling_options(model, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Every declared sampling option of the model's generation path with the value this run uses.

    Args:
        given: options set on the command line (they win).
        defaults: the model config's ``sample:`` section, already checked (the recipe wins over it).
    """
    from ..generation.vq_path import VQGenerationPath

    path = model.generator
    if path is None:
        raise InputError("this model has no generation path (model.generator is empty); GenEval scores generated "
                         "images, so give a model that generates")
    recipe = VQ_RECIPE if isinstance(path, VQGenerationPath) else {}
    chosen = {**defaults, **{k: v for k, v in recipe.items() if k in path.sample_options}, **given}
    # not set anywhere: the path's own default (the declared one; a flow path's guidance and num_steps)
    return path.check_sample_options({**path.default_sample_options(), **chosen})


def _chunk_seed(seed: int, prompt: int, chunk: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([seed, prompt, chunk]).generate_state(1, dtype=np.uint64)[0])


def _done(folder: Path, n_samples: int) -> bool:
    return (folder / "metadata.jsonl").is_file() and all(
        (folder / "samples" / f"{k:04d}.png").is_file() for k in range(n_samples))


def _check_resumable(out: Path, settings: dict[str, Any]) -> None:
    """With ``skip_existing``, an earlier run in ``out`` must have used the same settings."""
    file = out / "settings.json"
    if not file.is_file():
        return
    before = json.loads(file.read_text())
    settings = json.loads(json.dumps(settings))  # compared as written: tuples are lists, keys are strings
    for key in sorted(set(before) | set(settings)):
        if before.get(key) != settings.get(key):
            raise InputError(f"--skip-existing: {file} has {key} = {before.get(key)!r} but this run has "
                             f"{settings.get(key)!r}; resume with the same settings or choose another --out")


def sample_geneval(
    model, processor, prompts: list[tuple[str, dict]], out: str | Path, *, settings: dict[str, Any],
    options: dict[str, Any], n_samples: int = N_SAMPLES, batch_size: int | None = None, seed: int = 0,
    skip_existing: bool = False, grid: bool = True, progress: bool = False,
) -> tuple[int, int]:
    """Sample ``n_samples`` images for each prompt into GenEval's layout under ``out``; returns (done, skipped).

    Args:
        prompts: from :func:`read_prompts`.
        settings: written to ``out/settings.json`` (with ``skip_existing``, checked against the one there).
        options: the generation path's sampling options (:func:`sampling_options`).
        batch_size: images per model call (default ``n_samples``).
        skip_existing: keep prompt folders that already hold all their samples (resume).

    Raises:
        InputError: a prompt too long for the model's positions (before anything is generated), or settings that
            differ from those of the run being resumed.
    """
    import torch
    from tqdm import tqdm

    from ..images import save_grid, to_pil

    out = Path(out)
    batch_size = batch_size or n_samples
    limit, image_tokens = model.backbone.max_positions, model.generator.num_image_tokens
    for i, (_, record) in enumerate(prompts):
        length = len(processor.tokenizer(processor.generation_prompt_text(record["prompt"]))["input_ids"])
        if limit is not None and length + image_tokens > limit:
            raise InputError(f"--prompts line {i + 1}: the prompt is {length} tokens, and with the image's "
                             f"{image_tokens} tokens it exceeds the model's {limit} positions; shorten it")
    if skip_existing:
        _check_resumable(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    done = skipped = 0
    for i, (line, record) in enumerate(tqdm(prompts, desc="geneval", unit="prompt", disable=not progress,
                                            file=sys.stderr)):
        folder = out / f"{i:05d}"
        if skip_existing and _done(folder, n_samples):
            skipped += 1
            continue
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(line + "\n", encoding="utf-8")
        images = []
        for c, start in enumerate(range(0, n_samples, batch_size)):
            count = min(batch_size, n_samples - start)
            ids, mask = processor.generation_prompts([record["prompt"]] * count)
            images.append(model.generate_images(ids, mask, pad_id=processor.pad_id, seed=_chunk_seed(seed, i, c),
                                                **options).float().cpu())
        images = torch.cat(images)
        for k, image in enumerate(to_pil(images)):
            tmp = folder / "samples" / f"{k:04d}.tmp.png"  # renamed when whole: a killed run leaves no half file
            image.save(tmp)
            tmp.replace(folder / "samples" / f"{k:04d}.png")
        if grid:
            save_grid(images, folder / "grid.png", nrow=n_samples, scale=1)
        done += 1
    return done, skipped
