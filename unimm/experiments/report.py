"""The report of ``unimm reproduce``: ``report.md`` (verdicts per paper claim, then every score as a mean over
seeds with its 95% t interval), ``results.json``, ``plots/*.png`` (curves: mean over seeds, band min..max) and
``grids/generation.png`` (an image per test prompt and experiment, first seed).

``results`` everywhere here is ``{experiment: {seed: run result}}`` (:func:`unimm.experiments.runner.run_experiment`).
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from ..images import save_grid
from .spec import seed_dir
from .stats import PAPER_CLAIMS, mean_interval, metric_items, verdict_table

GEN_CATEGORIES = ("overall", "colour", "shape", "count", "binding", "position")
LEVEL = 0.95

Results = Mapping[str, Mapping[int, Mapping[str, Any]]]


def seed_scores(runs: Mapping[int, Mapping[str, Any]], section: str, task: str, key: str) -> list[float]:
    """One score per seed, e.g. ``("final", "generation", "colour")``; seeds without it are left out, and so are
    seeds where it is NaN (no test item of that kind: a small test set whose scenes state no relation)."""
    values = []
    for run in runs.values():
        accuracy = (run.get(section) or {}).get(task, {}).get("accuracy", {})
        if accuracy.get(key) is not None and math.isfinite(float(accuracy[key])):
            values.append(float(accuracy[key]))
    return values


def seed_items(runs: Mapping[int, Mapping[str, Any]], section: str, task: str, key: str) -> int | None:
    """How many test items that score is over (the fewest over the seeds), None if a run does not record it."""
    return metric_items([(run.get(section) or {}) for run in runs.values()], f"{task}.{key}")


def cell(values: list[float], items: int | None = None) -> str:
    """``"59.3 ± 2.1"`` (mean and half-width of the 95% t interval, in %; with ``items``, never narrower than the
    scoring's binomial error), one seed alone ``"59.3"``, none ``"-"``."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    interval = mean_interval(values, LEVEL, items)
    return f"{100 * interval.mean:.1f} ± {100 * (interval.high - interval.mean):.1f}"


def write_grid(results: Results, out: Path, data: dict[str, Path], n_prompts: int = 8) -> Path | None:
    """``grids/generation.png``: a row per generating experiment (first row: the reference renders, first seed),
    a column per prompt."""
    from ..bench.export import load_specs
    from ..train.autoencoder import load_image_tensor

    rows = [name for name, runs in results.items() if "generation" in next(iter(runs.values()))["tasks"]]
    if not rows:
        return None
    specs = load_specs(data["test"])[:n_prompts]
    generated = [torch.load(seed_dir(out, name, min(results[name])) / "test_images.pt")[:n_prompts] for name in rows]
    reference = load_image_tensor([p for p, _, _ in specs], generated[0].shape[-1])
    path = out / "grids" / "generation.png"
    save_grid(torch.cat([reference] + generated), path, nrow=len(specs))
    return path


def _band(ax, steps: list[int], per_seed: list[list[float]], label: str, marker: str | None = None) -> None:
    """Mean over seeds as a line, min..max over seeds as a shaded band."""
    import numpy as np

    values = np.array(per_seed, dtype=float)  # seeds x points
    line, = ax.plot(steps, values.mean(axis=0), marker=marker, label=label)
    if len(values) > 1:
        ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)


def write_plots(results: Results, out: Path) -> list[Path]:
    """``plots/loss.png`` (training loss per task) and ``plots/scores.png`` (test accuracy per evaluation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in results.items():
        for ax, task in zip(axes, ("understanding", "generation")):
            curves = []
            for seed in runs:
                lines = (seed_dir(out, name, seed) / "metrics.jsonl").read_text().splitlines()
                curves.append([(r["step"], r[f"loss/{task}"]) for r in map(json.loads, lines) if f"loss/{task}" in r])
            length = min(len(c) for c in curves)
            if length:
                _band(ax, [s for s, _ in curves[0][:length]], [[v for _, v in c[:length]] for c in curves], name)
    for ax, task in zip(axes, ("understanding (answer cross-entropy)",
                               "generation (VQ: code CE, flow: velocity MSE + REPA)")):
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        if ax.lines:  # an experiment subset may train only one task
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "loss.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in results.items():
        for ax, task in zip(axes, ("generation", "understanding")):
            curves = [[(c["step"], c[task]["overall"]) for c in run["curve"] if task in c] for run in runs.values()]
            if curves[0]:
                _band(ax, [s for s, _ in curves[0]], [[v for _, v in c] for c in curves], name, marker="o")
    for ax, task in zip(axes, ("generation: checker overall accuracy", "understanding: exact-match accuracy")):
        ax.set_title(task + " (band: min..max over seeds)", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "scores.png", dpi=100)
    plt.close(fig)
    return [plots / "loss.png", plots / "scores.png"]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def _verdicts(claims: list, finals: dict) -> list[str]:
    """The verdicts section's lines: how a verdict is reached, then the table of ``claims``."""
    return [
        f"Each claim compares two rows on one metric (test split). The interval is the {LEVEL:.0%} interval of the "
        "difference of the means: paired t over the seeds (both rows ran the same seeds), Welch's t otherwise. "
        "Its standard error is at least the scoring's binomial one (a score over m test items varies by p(1-p)/m), "
        "so that runs which score alike by chance do not make an interval of zero width. "
        "Reproduced: the interval lies on the claimed side of 0 (or, for \"on par\", inside the margin); "
        "contradicted: entirely on the other side (outside the margin); else inconclusive at this scale.",
        "",
        verdict_table(claims, finals, LEVEL),
        "",
    ]


def wall_seconds_of(jobs: list[Mapping[str, Any]]) -> float:
    """Seconds during which at least one job ran: the length of the union of their ``[started, finished]`` spans.
    Right across sittings (the gaps between them do not count) and with jobs in parallel (overlaps count once)."""
    spans = sorted((j["started"], j["finished"]) for j in jobs if "started" in j and "finished" in j)
    total, end = 0.0, float("-inf")
    for start, finish in spans:
        if finish > end:
            total += finish - max(start, end)
            end = finish
    return total


def write_report(spec: DictConfig, results: Results, autoencoders: dict[str, Any], out: Path, command: str,
                 wall_seconds: float | None, und_encoder: dict[str, Any] | None = None,
                 missing: list[str] | tuple[str, ...] = ()) -> Path:
    """``report.md`` and ``results.json``; see the module docstring. ``wall_seconds``: this sitting's (None when
    it trained nothing); ``missing``: the runs not finished yet (``--report-only``), named at the top."""
    from ..bench.shapes import QUESTION_TYPES

    und_encoder = und_encoder or {}
    runs = [run for per_seed in results.values() for run in per_seed.values()]
    prep_seconds = sum(a["seconds"] for a in autoencoders.values()) + und_encoder.get("seconds", 0.0)
    train_seconds = sum(r["train_seconds"] for r in runs)
    eval_seconds = sum(r["eval_seconds"] for r in runs)
    total = prep_seconds + train_seconds + eval_seconds
    wall = wall_seconds_of([*autoencoders.values(), und_encoder, *runs])
    seeds = list(spec.budget.seeds)
    finals = {name: {seed: run["final"] for seed, run in per_seed.items()} for name, per_seed in results.items()}
    # a claim is judged where the file has both its rows (the shipped model's file has none of them)
    claims = [c for c in PAPER_CLAIMS if c.row_a in spec.experiments and c.row_b in spec.experiments]
    elsewhere = "elsewhere" in (spec.data or {}) and int(spec.data.elsewhere or 0) > 0
    lines = [
        "# Janus vs JanusFlow on the shapes benchmark (unimm reproduce)",
        "",
        f"Command: `{command}`  ",
        f"Budget profile: {spec.budget.profile or 'none (the file as written)'}; {int(spec.budget.steps)} steps of "
        f"batch 32 per experiment unless its row says otherwise, scored {int(spec.budget.evals)} times.  ",
        f"Seeds: training and sampling {', '.join(map(str, seeds))} (every experiment runs once per seed); data "
        f"{int(spec.data.seed)}. Data: {int(spec.data.train)} training images, {int(spec.data.test)} test images"
        + (f", {int(spec.data.elsewhere)} drawn elsewhere" if elsewhere else "")
        + (", renders varied (background, size, shape size, anti-aliasing)" if spec.data.get("variations") else "")
        + ".  ",
        f"Time: {_minutes(wall)} min of wall time while any part ran (over every sitting; parts in parallel "
        f"processes count once), {_minutes(total)} min of work - autoencoders{' and encoder' if und_encoder else ''} "
        f"{_minutes(prep_seconds)} min, runs {_minutes(train_seconds)} min of training and {_minutes(eval_seconds)} "
        f"min of scoring (the sum of each part's own time) - on {os.cpu_count()} CPU cores ({platform.machine()}), "
        f"torch {torch.__version__}."
        + (f" The last sitting: {_minutes(wall_seconds)} min." if wall_seconds is not None else ""),
        "",
        *([f"**In progress: {len(runs)} of {len(runs) + len(missing)} runs have finished.** Written by "
           f"`--report-only`, which trains nothing; not finished, so left out: {', '.join(missing)}. The command "
           "above continues the reproduction.", ""] if missing else []),
        "## Verdicts on the papers' claims",
        "",
        *(_verdicts(claims, finals) if claims else [
            "No claim compares two experiments of this file (the claims' rows are those of "
            "configs/experiments/shapes.yaml), so there is no verdict.", ""]),
        f"## Results (test split; accuracy in %, mean ± half-width of the {LEVEL:.0%} t interval over seeds, "
        "never narrower than the scoring's binomial error)",
        "",
        "| experiment | seeds | steps | params | gen overall | colour | shape | count | binding | position | "
        "und overall | " + " | ".join(QUESTION_TYPES) + (" | und elsewhere" if elsewhere else "") + " | train min / seed |",
        "|---|---:|---:|---:|" + "---:|" * (7 + len(QUESTION_TYPES) + elsewhere) + "---:|",
    ]
    for name, per_seed in results.items():
        first = next(iter(per_seed.values()))
        scores = [("final", "generation", c) for c in GEN_CATEGORIES]
        scores += [("final", "understanding", q) for q in ("overall", *QUESTION_TYPES)]
        scores += [("elsewhere", "understanding", "overall")] if elsewhere else []
        cells = [cell(seed_scores(per_seed, *score), seed_items(per_seed, *score)) for score in scores]
        minutes = sum(r["train_seconds"] for r in per_seed.values()) / 60 / len(per_seed)
        lines.append(f"| {name} | {len(per_seed)} | {first['steps']} | {first['parameters'] / 1e6:.2f} M | "
                     + " | ".join(cells)
                     + f" | {minutes:.1f} |")
    lines += ["", "Experiments (from the command's experiments file):", ""]
    for name, per_seed in results.items():
        r = next(iter(per_seed.values()))
        extra = ", ".join(f"`{o}`" for o in r["overrides"]) or "no overrides"
        if r.get("pretrained_und_encoder"):
            extra += ", pre-trained understanding encoder"
        if r.get("init_from"):
            extra += f", starts from `{r['init_from']}`"
        n_seeds = f"{len(per_seed)} seed" + ("s" if len(per_seed) > 1 else "")
        lines.append(f"- **{name}** ({n_seeds}): `{r['config']}` + `train=@recipes/shapes`, {extra}; "
                     f"sampling {r['sample'] or '-'}")
    lines += ["", "## Autoencoders (trained once on the training split's text-to-image targets, shared by every run)", "",
              "| type | train min | test MSE | checker overall on reconstructions |", "|---|---:|---:|---:|"]
    for kind, a in autoencoders.items():
        lines.append(f"| {kind} | {a['seconds'] / 60:.1f} | {a['mse']:.4f} | {100 * a['checker']['overall']:.1f} |")
    lines += ["", "The checker's score on an autoencoder's reconstructions is the ceiling for generation through it."]
    if und_encoder:
        held_out = und_encoder["held_out"]
        lines += ["", "## Understanding encoder (pre-trained on the training images' object labels)", "",
                  "| type | steps | train min | test images with every label right | test label decisions right |",
                  "|---|---:|---:|---:|---:|",
                  f"| {und_encoder['type']} | {und_encoder['settings'].get('steps', '-')} | "
                  f"{und_encoder['seconds'] / 60:.1f} | {100 * held_out['exact']:.1f} | {100 * held_out['label']:.1f} |"]
    lines += ["", "## Curves (mean over seeds; band: min..max)", "", "![loss](plots/loss.png)", "",
              "![scores](plots/scores.png)", "", "## Images (first seed)", ""]
    if (out / "grids" / "generation.png").is_file():
        rows = ", ".join(["reference"] + [n for n, per_seed in results.items()
                                          if "generation" in next(iter(per_seed.values()))["tasks"]])
        prompts = [json.loads(line)["caption"] for line in
                   (out / "data" / "test" / "spec.jsonl").read_text().splitlines()[:8]]
        lines += [f"Rows: {rows}. Columns (test prompts): " + "; ".join(f"{i + 1}. {p}" for i, p in enumerate(prompts)),
                  "", "![generation](grids/generation.png)", ""]
    for kind in autoencoders:
        lines += [f"{kind}: test images (top) and reconstructions (bottom)", "",
                  f"![{kind}](grids/autoencoder_{kind}.png)", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(
        {"command": command, "wall_seconds": round(wall, 1), "work_seconds": round(total, 1),
         "last_sitting_seconds": None if wall_seconds is None else round(wall_seconds, 1), "missing": list(missing),
         "experiments": {name: {str(s): r for s, r in per_seed.items()} for name, per_seed in results.items()},
         "autoencoders": autoencoders, "und_encoder": und_encoder, "spec": OmegaConf.to_container(spec)},
        indent=2) + "\n")
    return report
