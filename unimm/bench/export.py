"""Write a synthetic-shapes split to disk in the formats unimm's trainer reads.

One folder per split::

    <out>/
      images/000000.png ...        rendered scenes
      plain/000000.png ...         with ShapesConfig.plain_targets: the same scenes on the plain ground
      t2i.jsonl                    {"image": "images/000000.png", "caption": "a red circle above a blue square"}
                                    (the plain/ image with plain_targets)
      und.jsonl                    {"image": ..., "conversations": [{"role": "user", "content": "<image>\\nwhat
                                    colour is the circle?"}, {"role": "assistant", "content": "red"}],
                                    "qtype": "colour"}   (one line per question)
      spec.jsonl                   {"image", "index", "caption", "spec", "scene"}: ground truth for the checker
      info.json                    split, seed, n, generator config, answer vocabulary

Image paths are relative to the folder that holds the manifests. ``unimm bench export OUT --split test --n 500``
runs :func:`export_main`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unimm.registry import ConfigError

from .shapes import ANSWER_VOCAB, QUESTION_TYPES, SPLIT_BUCKETS, Sample, Scene, ShapesConfig, Spec, make_split

IMAGE_TOKEN = "<image>"
MANIFESTS = ("t2i.jsonl", "und.jsonl", "spec.jsonl", "info.json")


def _write_jsonl(path: Path, records) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a ``.jsonl`` manifest, one per non-empty line."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def export_samples(
    samples: list[Sample], out: str | Path, *, info: dict | None = None, overwrite: bool = False,
    plain_targets: bool = False,
) -> Path:
    """Write ``samples`` (from :func:`make_split`) to the folder ``out``; returns its path. ``plain_targets``:
    ``t2i.jsonl`` points at each scene drawn on the plain ground (``plain/``, :meth:`Sample.plain_image`).

    Refuses to write into a folder that already holds manifests unless ``overwrite`` is set.
    """
    out = Path(out)
    if not overwrite and any((out / name).exists() for name in MANIFESTS):
        raise ConfigError(f"{out} already holds an exported split; pass overwrite=True (--overwrite) or a new folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    if plain_targets:
        (out / "plain").mkdir(exist_ok=True)
    t2i, und, spec = [], [], []
    for s in samples:
        rel = f"images/{s.index:06d}.png"
        s.image().save(out / rel)
        target = rel
        if plain_targets:
            target = f"plain/{s.index:06d}.png"
            s.plain_image().save(out / target)
        t2i.append({"image": target, "caption": s.caption})
        for qa in s.qa:
            und.append(
                {
                    "image": rel,
                    "conversations": [
                        {"role": "user", "content": f"{IMAGE_TOKEN}\n{qa.question}"},
                        {"role": "assistant", "content": qa.answer},
                    ],
                    "qtype": qa.qtype,
                }
            )
        spec.append(
            {"image": rel, "index": s.index, "caption": s.caption, "spec": s.spec.to_dict(), "scene": s.scene.to_dict()}
        )
    _write_jsonl(out / "t2i.jsonl", t2i)
    _write_jsonl(out / "und.jsonl", und)
    _write_jsonl(out / "spec.jsonl", spec)
    meta = {"n": len(samples), "answer_vocab": list(ANSWER_VOCAB), "question_types": list(QUESTION_TYPES)}
    meta.update(info or {})
    (out / "info.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def load_specs(folder: str | Path) -> list[tuple[Path, Spec, Scene]]:
    """``(image path, spec, scene)`` for each image of an exported split, in order."""
    folder = Path(folder)
    return [
        (folder / r["image"], Spec.from_dict(r["spec"]), Scene.from_dict(r["scene"]))
        for r in read_jsonl(folder / "spec.jsonl")
    ]


#: Splits :func:`export_split` writes: the benchmark's own, and the drawn-elsewhere test set (:mod:`.elsewhere`).
EXPORT_SPLITS = (*SPLIT_BUCKETS, "elsewhere")


def split_info(split: str, seed: int = 0, config: ShapesConfig | None = None) -> dict:
    """What :func:`export_split` records in ``info.json`` about how split ``split`` is made (besides ``n``): the
    split, seed, config (with its variations) and, for ``elsewhere``, the drawing method (``"method"``, a sentence,
    and ``"drawing"``, its parameters). Equal records mean an export that can be kept."""
    if split not in EXPORT_SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose from {', '.join(EXPORT_SPLITS)}")
    info = {"split": split, "seed": seed, "config": (config or ShapesConfig()).to_dict()}
    if split == "elsewhere":
        from .elsewhere import DRAWING, METHOD

        info["method"], info["drawing"] = METHOD, DRAWING
    return info


def export_split(
    out: str | Path,
    split: str,
    n: int,
    seed: int = 0,
    config: ShapesConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Generate split ``split`` (``n`` samples, ``seed``; ``"elsewhere"``: the test scenes drawn by another method)
    and write it to ``out``, with :func:`split_info` in ``info.json``."""
    cfg = config or ShapesConfig()
    info = split_info(split, seed, cfg)
    if split == "elsewhere":
        from .elsewhere import make_elsewhere

        samples = make_elsewhere(n, seed, cfg)
    else:
        samples = make_split(split, n, seed, cfg)
    plain = cfg.plain_targets and split != "elsewhere"  # that set is only for understanding
    return export_samples(samples, out, info=info, overwrite=overwrite, plain_targets=plain)


def build_parser(prog: str = "unimm bench export") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Write a synthetic-shapes split (images + manifests).")
    p.add_argument("out", help="folder to write (images/, t2i.jsonl, und.jsonl, spec.jsonl, info.json)")
    p.add_argument("--split", default="train", choices=list(EXPORT_SPLITS),
                   help="which split (default: train; elsewhere: the test scenes drawn by another method)")
    p.add_argument("--n", type=int, default=1000, help="number of images (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split's streams (default: 0)")
    p.add_argument("--image-size", type=int, default=32, help="image side in pixels (default: 32)")
    p.add_argument("--min-shapes", type=int, default=1, help="fewest shapes per image (default: 1)")
    p.add_argument("--max-shapes", type=int, default=2, help="most shapes per image (default: 2)")
    p.add_argument("--variations", action="store_true",
                   help="vary render size, shape size, background and anti-aliasing per image (unimm.bench.shapes)")
    p.add_argument("--plain-targets", action="store_true",
                   help="with --variations: text-to-image targets drawn on the plain ground (plain/, t2i.jsonl)")
    p.add_argument("--where-questions", action="store_true",
                   help="add first-order position questions, tagged 'where' (for training; unimm.bench.shapes)")
    p.add_argument("--overwrite", action="store_true", help="replace an exported split already in OUT")
    return p


def export_main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``unimm bench export OUT [--split S] [--n N] [--seed K] [--image-size P] ...``."""
    args = build_parser().parse_args(argv)
    cfg = ShapesConfig(image_size=args.image_size, min_shapes=args.min_shapes, max_shapes=args.max_shapes,
                       variations=args.variations, plain_targets=args.plain_targets,
                       where_questions=args.where_questions)
    out = export_split(args.out, args.split, args.n, args.seed, cfg, overwrite=args.overwrite)
    print(f"wrote {args.n} {args.split} images to {out}")
    return 0
