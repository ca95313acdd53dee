"""``unimm reproduce``: the Janus vs JanusFlow comparisons, re-run at laptop scale on the shapes benchmark.

What it does, from an experiments file (default ``configs/experiments/shapes.yaml``):

1. exports the benchmark's train and test splits (:func:`unimm.bench.export_split`) into ``OUT/data``;
2. trains each autoencoder type the experiments use (the VQ tokenizer, the KL VAE) on the training images with
   :func:`unimm.train.autoencoder.train_autoencoder`, into ``OUT/autoencoders/<type>``, and scores their
   reconstructions with the checker (the ceiling for generation through them); if an experiment asks for a
   pre-trained understanding encoder (``pretrained_und_encoder: true``), pre-trains it once on the training
   images' object labels with :func:`unimm.train.encoder.pretrain_encoder`, into ``OUT/encoders/und_encoder``;
3. trains every experiment - model config + ``train=@recipes/shapes`` + its overrides - with unimm's trainer, for
   the same step budget, stopping ``evals`` times to score generation (the checker, on the test prompts) and
   understanding (exact match, on the test questions); the final models land in ``OUT/runs/<name>/final``;
4. writes ``OUT/report.md`` (table, commands, seeds, wall times), ``OUT/results.json``, ``OUT/plots/*.png`` (loss
   and score curves, matplotlib) and ``OUT/grids/*.png`` (an image per test prompt and experiment).

Finished steps are kept: a rerun skips the data, autoencoders and experiments already done (``--force`` redoes
them), so an interrupted reproduction continues with the experiment it was in (which starts afresh).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..images import save_grid
from ..registry import ConfigError
from ..registry.plugins import import_modules

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENTS = "experiments/shapes"
EXPERIMENTS_KEYS = ("data", "budget", "autoencoders", "und_encoder_pretraining", "sample", "experiments")
EXPERIMENT_KEYS = ("config", "overrides", "pretrained_und_encoder")


# ----------------------------------------------------------------------------------------------------------------
# The experiments file
# ----------------------------------------------------------------------------------------------------------------


def load_experiments(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Read an experiments file (a name under ``configs/`` or a path) and apply dotlist ``overrides``."""
    from ..config import find_config

    spec = OmegaConf.load(find_config(name_or_path))
    if overrides:
        spec = OmegaConf.merge(spec, OmegaConf.from_dotlist(list(overrides)))
    for key in spec:
        if key not in EXPERIMENTS_KEYS:
            raise ConfigError(f"experiments file: unknown key '{key}'; valid keys: {', '.join(EXPERIMENTS_KEYS)}")
    if not spec.get("experiments"):
        raise ConfigError("experiments file: 'experiments' is empty; name at least one {config, overrides}")
    for name, exp in spec.experiments.items():
        unknown = set(exp) - set(EXPERIMENT_KEYS)
        if unknown or "config" not in exp:
            raise ConfigError(f"experiments.{name}: give 'config' and optionally 'overrides' and "
                              f"'pretrained_und_encoder' (got {sorted(exp)})")
        if exp.get("pretrained_und_encoder") and not spec.get("und_encoder_pretraining"):
            raise ConfigError(f"experiments.{name} asks for a pretrained_und_encoder but the file has no "
                              "'und_encoder_pretraining' section; add one, e.g. {steps: 6000, batch_size: 64}")
    return spec


def experiment_config(spec: DictConfig, name: str, out: Path, extra: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The full config of experiment ``name``: model config + shapes recipe + its overrides + data and budget."""
    from ..config import load_config

    exp = spec.experiments[name]
    data = out / "data" / "train"
    overrides = [
        "train=@recipes/shapes",
        *list(exp.get("overrides") or []),
        f"train.output_dir={out / 'runs' / name}",
        f"train.seed={int(spec.budget.seed)}",
        f"train.stages.0.steps={int(spec.budget.steps)}",
        f"train.data.sources.und.jsonl={data / 'und.jsonl'}",
        f"train.data.sources.t2i.jsonl={data / 't2i.jsonl'}",
        *extra,
    ]
    cfg = load_config(exp.config, overrides)
    for slot in _autoencoder_slots(cfg.model):
        slot.path = str(out / "autoencoders" / slot.type)
        slot.pop("config", None)  # a diffusers VAE folder carries its own architecture
    if exp.get("pretrained_und_encoder"):
        cfg.model.und_encoder.path = str(out / "encoders" / "und_encoder")
    return cfg


def _autoencoder_slots(node: Any) -> list[DictConfig]:
    """Every ``autoencoder`` slot under ``node`` (the generator's, a shared-VQ encoder's)."""
    found = []
    if isinstance(node, DictConfig):
        for key, value in node.items():
            if key == "autoencoder" and isinstance(value, DictConfig):
                found.append(value)
            else:
                found.extend(_autoencoder_slots(value))
    return found


def trained_tasks(cfg: DictConfig) -> list[str]:
    """``generation`` / ``understanding``: the tasks the experiment's mixture trains (and is scored on)."""
    sources = cfg.train.data.sources
    tasks = set()
    for stage in cfg.train.stages:
        for source, weight in stage.mixture.items():
            if weight > 0:
                tasks.add(sources[source].task)
    return [t for t in ("generation", "understanding") if t in tasks]


def sample_options(spec: DictConfig, cfg: DictConfig) -> dict[str, Any]:
    """Sampling settings for the experiment's generation path (``sample.<generator type>``)."""
    kind = cfg.model.generator.type
    return dict(OmegaConf.to_container(spec.get("sample", {}).get(kind, {}) or {}))


# ----------------------------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------------------------


def prepare_data(spec: DictConfig, out: Path, force: bool = False) -> dict[str, Path]:
    """Export the train and test splits (kept if already there with the same size and seed)."""
    from ..bench.export import export_split

    folders = {}
    for split in ("train", "test"):
        folder = out / "data" / split
        n, seed = int(spec.data[split]), int(spec.data.seed)
        info = json.loads((folder / "info.json").read_text()) if (folder / "info.json").is_file() else {}
        if force or (info.get("n"), info.get("seed")) != (n, seed):
            export_split(folder, split, n, seed=seed, overwrite=True)
        folders[split] = folder
    return folders


def prepare_autoencoders(spec: DictConfig, out: Path, data: dict[str, Path], force: bool = False) -> dict[str, Any]:
    """Train each autoencoder type the experiments use; returns per type its wall time and reconstruction scores."""
    from ..bench import evaluate_generation, load_specs
    from ..registry import AUTOENCODERS
    from ..train.autoencoder import load_image_tensor, reconstruct, train_autoencoder

    slots: dict[str, dict] = {}
    for name in spec.experiments:
        for kind, plain in architectures(spec, name).items():
            if kind in slots and slots[kind] != plain:
                raise ConfigError(
                    f"experiments use two different '{kind}' autoencoders ({slots[kind]} and {plain}); "
                    "give them the same architecture so one trained autoencoder serves all"
                )
            slots[kind] = plain
    results = {}
    tests = load_specs(data["test"])
    test_images = None
    for kind, slot in slots.items():
        folder = out / "autoencoders" / kind
        result_file = folder / "result.json"
        if result_file.is_file() and not force:
            results[kind] = json.loads(result_file.read_text())
            continue
        settings = dict(OmegaConf.to_container(spec.autoencoders.get(kind) or {}))
        images = load_image_tensor(sorted((data["train"] / "images").glob("*.png")), _image_size(data["train"]))
        start = time.perf_counter()
        train_autoencoder(slot, images, folder, seed=int(spec.budget.seed), **settings)
        seconds = time.perf_counter() - start
        model = AUTOENCODERS.build({"type": kind, "path": str(folder)}, where=f"autoencoders.{kind}",
                                   inferred={"image_size": images.shape[-1]} if kind == "llamagen_vq" else {})
        if test_images is None:
            test_images = load_image_tensor([p for p, _, _ in tests], images.shape[-1])
        recon = reconstruct(model, test_images)
        scores = evaluate_generation(recon, [s for _, s, _ in tests], value_range=(-1, 1))
        shown = min(16, len(test_images))  # test images on top, their reconstructions below
        save_grid(torch.cat([test_images[:shown], recon[:shown]]), out / "grids" / f"autoencoder_{kind}.png",
                  nrow=shown)
        results[kind] = {
            "seconds": round(seconds, 1), "settings": settings,
            "mse": float(((recon - test_images) ** 2).mean()), "checker": scores["accuracy"],
        }
        result_file.write_text(json.dumps(results[kind], indent=2) + "\n")
    return results


def prepare_und_encoder(spec: DictConfig, out: Path, data: dict[str, Path], force: bool = False) -> dict[str, Any]:
    """Pre-train the understanding encoder that the experiments with ``pretrained_und_encoder`` share, on the
    training images labelled with their objects (``"red circle"``); returns its wall time, settings and label
    accuracy on the test images ({} if no experiment asks for one)."""
    from ..train.autoencoder import load_image_tensor
    from ..train.encoder import pretrain_encoder
    from ..bench.export import load_specs

    slots = {}
    for name, exp in spec.experiments.items():
        if exp.get("pretrained_und_encoder"):
            slot = OmegaConf.to_container(_plain_config(spec, name).model.und_encoder)
            slots[name] = {k: v for k, v in slot.items() if k != "path"}
    if not slots:
        return {}
    first = next(iter(slots.values()))
    differing = [name for name, slot in slots.items() if slot != first]
    if differing:
        raise ConfigError(f"experiments {differing} ask for a pre-trained und_encoder of another architecture than "
                          f"{next(iter(slots))}; give them the same one so one pre-trained encoder serves all")
    folder = out / "encoders" / "und_encoder"
    result_file = folder / "result.json"
    if result_file.is_file() and not force:
        return json.loads(result_file.read_text())

    def labelled(split: str) -> tuple[torch.Tensor, list[list[str]]]:
        items = load_specs(data[split])
        images = load_image_tensor([p for p, _, _ in items], _image_size(data[split]))
        return images, [[shape.name for shape in scene.shapes] for _, _, scene in items]

    settings = dict(OmegaConf.to_container(spec.und_encoder_pretraining))
    images, labels = labelled("train")
    benchmark = json.loads((data["train"] / "info.json").read_text())["config"]
    names = [f"{colour} {kind}" for colour in benchmark["colours"] for kind in benchmark["kinds"]]
    result = pretrain_encoder(first, images, labels, folder, seed=int(spec.budget.seed), held_out=labelled("test"),
                              label_names=names, **settings)
    result = {"type": first["type"], "settings": settings, **{k: v for k, v in result.items() if k != "path"}}
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _plain_config(spec: DictConfig, name: str) -> DictConfig:
    """Experiment ``name``'s config before :func:`experiment_config` sets its paths: the parts it builds."""
    from ..config import load_config

    exp = spec.experiments[name]
    return load_config(exp.config, ["train=@recipes/shapes", *list(exp.get("overrides") or [])])


def architectures(spec: DictConfig, name: str) -> dict[str, dict]:
    """Autoencoder type -> slot (without ``path``) of every autoencoder experiment ``name`` builds."""
    return {slot.type: {k: v for k, v in OmegaConf.to_container(slot).items() if k != "path"}
            for slot in _autoencoder_slots(_plain_config(spec, name).model)}


def _image_size(folder: Path) -> int:
    """Side of the exported benchmark images (the autoencoders train at the data's own size)."""
    return int(json.loads((folder / "info.json").read_text())["config"]["image_size"])


def run_experiment(spec: DictConfig, name: str, out: Path, data: dict[str, Path], force: bool = False,
                   extra: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Train experiment ``name`` in ``evals`` segments, scoring after each; returns (and saves) its result."""
    from ..train import Trainer
    from ..bench.evaluate import evaluate_model, summary

    run_dir = out / "runs" / name
    result_file = run_dir / "result.json"
    if result_file.is_file() and not force:
        return json.loads(result_file.read_text())
    if run_dir.exists():  # forced, or interrupted part-way: start the experiment afresh (no appended metrics)
        import shutil

        shutil.rmtree(run_dir)
    cfg = experiment_config(spec, name, out, extra)
    tasks = trained_tasks(cfg)
    options = sample_options(spec, cfg)
    steps, evals = int(spec.budget.steps), max(1, int(spec.budget.evals))
    marks = sorted({max(1, round(steps * k / evals)) for k in range(1, evals + 1)})
    model = processor = None
    curve, train_seconds, eval_seconds = [], 0.0, 0.0
    torch.manual_seed(int(spec.budget.seed))
    for k, mark in enumerate(marks):
        seg = OmegaConf.merge(cfg, {"train": {"stop_after": None if mark == steps else mark,
                                              "resume": "latest" if k else None}})
        start = time.perf_counter()
        trainer = Trainer(seg, model=model, processor=processor)
        trainer.fit()
        model, processor = trainer.model, trainer.processor
        train_seconds += time.perf_counter() - start
        start = time.perf_counter()
        scores = evaluate_model(model, processor, data["test"], tasks=tasks, seed=int(spec.budget.seed), **options)
        eval_seconds += time.perf_counter() - start
        curve.append({"step": mark, **{t: r["accuracy"] for t, r in summary(scores).items()}})
        logger.info("%s step %d: %s", name, mark, curve[-1])
    generation = scores.get("generation")
    if generation is not None:
        save_grid(generation["images"][:8], run_dir / "samples.png", nrow=8)
        torch.save(generation["images"][:32], run_dir / "test_images.pt")
    result = {
        "name": name, "config": spec.experiments[name].config,
        "overrides": list(spec.experiments[name].get("overrides") or []), "tasks": tasks,
        "pretrained_und_encoder": bool(spec.experiments[name].get("pretrained_und_encoder")),
        "sample": options, "final": summary(scores), "curve": curve,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
    }
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------------------------


def write_grid(results: dict[str, dict], out: Path, data: dict[str, Path], n_prompts: int = 8) -> Path | None:
    """``grids/generation.png``: a row per experiment (first row: the reference renders), a column per prompt."""
    from ..train.autoencoder import load_image_tensor
    from ..bench.export import load_specs

    rows = [name for name, r in results.items() if "generation" in r["tasks"]]
    if not rows:
        return None
    specs = load_specs(data["test"])[:n_prompts]
    generated = [torch.load(out / "runs" / name / "test_images.pt")[:n_prompts] for name in rows]
    reference = load_image_tensor([p for p, _, _ in specs], generated[0].shape[-1])
    images = [reference] + generated
    path = out / "grids" / "generation.png"
    save_grid(torch.cat(images), path, nrow=len(specs))
    return path


def write_plots(results: dict[str, dict], out: Path) -> list[Path]:
    """``plots/loss.png`` (training loss per task) and ``plots/scores.png`` (test accuracy per evaluation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in results:
        records = [json.loads(line) for line in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        for ax, task in zip(axes, ("understanding", "generation")):
            points = [(r["step"], r[f"loss/{task}"]) for r in records if f"loss/{task}" in r]
            if points:
                ax.plot(*zip(*points), label=name)
    for ax, task in zip(axes, ("understanding (answer cross-entropy)", "generation (VQ: code CE, flow: velocity MSE + REPA)")):
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        if ax.lines:  # an experiment subset may train only one task
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "loss.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        for ax, task in zip(axes, ("generation", "understanding")):
            points = [(c["step"], c[task]["overall"]) for c in r["curve"] if task in c]
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
    for ax, task in zip(axes, ("generation: checker overall accuracy", "understanding: exact-match accuracy")):
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plots / "scores.png", dpi=100)
    plt.close(fig)
    return [plots / "loss.png", plots / "scores.png"]


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}"


def write_report(spec: DictConfig, results: dict[str, dict], autoencoders: dict[str, Any], out: Path,
                 command: str, wall_seconds: float, und_encoder: dict[str, Any] | None = None) -> Path:
    """``report.md`` and ``results.json``."""
    from ..bench.shapes import QUESTION_TYPES

    gen_cats = ("overall", "colour", "shape", "count", "binding", "position")
    und_encoder = und_encoder or {}
    ae_seconds = sum(a["seconds"] for a in autoencoders.values()) + und_encoder.get("seconds", 0.0)
    train_seconds = sum(r["train_seconds"] for r in results.values())
    eval_seconds = sum(r["eval_seconds"] for r in results.values())
    total = ae_seconds + train_seconds + eval_seconds
    lines = [
        "# Janus vs JanusFlow on the shapes benchmark (unimm reproduce)",
        "",
        f"Command: `{command}`  ",
        f"Seeds: data {int(spec.data.seed)}, training and sampling {int(spec.budget.seed)}. "
        f"Data: {int(spec.data.train)} training images, {int(spec.data.test)} test images.  ",
        f"Budget: {int(spec.budget.steps)} steps of batch 32 per experiment, scored {int(spec.budget.evals)} times.  ",
        f"Time: {_minutes(total)} min in all - autoencoders{' and encoder' if und_encoder else ''} "
        f"{_minutes(ae_seconds)} min, experiments "
        f"{_minutes(train_seconds)} min of training and {_minutes(eval_seconds)} min of scoring (the sum of the "
        f"steps' own times, so a resumed run counts each step once) - on {os.cpu_count()} CPU cores "
        f"({platform.machine()}), {torch.get_num_threads()} torch thread(s), torch {torch.__version__}. "
        f"This invocation: {_minutes(wall_seconds)} min.",
        "",
        "## Results (test split; accuracy in %)",
        "",
        "| experiment | params | gen overall | colour | shape | count | binding | position | und overall | "
        + " | ".join(QUESTION_TYPES) + " | train min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(QUESTION_TYPES) + "---:|",
    ]
    for name, r in results.items():
        gen = r["final"].get("generation", {}).get("accuracy", {})
        und = r["final"].get("understanding", {}).get("accuracy", {})
        cells = [_pct(gen.get(c)) for c in gen_cats] + [_pct(und.get("overall"))]
        cells += [_pct(und.get(q)) for q in QUESTION_TYPES]
        lines.append(f"| {name} | {r['parameters'] / 1e6:.2f} M | " + " | ".join(cells)
                     + f" | {r['train_seconds'] / 60:.1f} |")
    lines += ["", "Experiments (from the command's experiments file; default configs/experiments/shapes.yaml):", ""]
    for name, r in results.items():
        extra = ", ".join(f"`{o}`" for o in r["overrides"]) or "no overrides"
        if r.get("pretrained_und_encoder"):
            extra += ", pre-trained understanding encoder"
        lines.append(f"- **{name}**: `{r['config']}` + `train=@recipes/shapes`, {extra}; sampling {r['sample'] or '-'}")
    lines += ["", "## Autoencoders (trained on the benchmark's training images)", "",
              "| type | train min | test MSE | checker overall on reconstructions |", "|---|---:|---:|---:|"]
    for kind, a in autoencoders.items():
        lines.append(f"| {kind} | {a['seconds'] / 60:.1f} | {a['mse']:.4f} | {_pct(a['checker']['overall'])} |")
    lines += ["", "The checker's score on an autoencoder's reconstructions is the ceiling for generation through it."]
    if und_encoder:
        held_out = und_encoder["held_out"]
        lines += ["", "## Understanding encoder (pre-trained on the training images' object labels)", "",
                  "| type | steps | train min | test images with every label right | test label decisions right |",
                  "|---|---:|---:|---:|---:|",
                  f"| {und_encoder['type']} | {und_encoder['settings'].get('steps', '-')} | "
                  f"{und_encoder['seconds'] / 60:.1f} | {_pct(held_out['exact'])} | {_pct(held_out['label'])} |"]
    lines += ["", "## Curves", "", "![loss](plots/loss.png)", "", "![scores](plots/scores.png)", "",
              "## Images", ""]
    if (out / "grids" / "generation.png").is_file():
        rows = ", ".join(["reference"] + [n for n, r in results.items() if "generation" in r["tasks"]])
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
        {"command": command, "wall_seconds": round(wall_seconds, 1), "total_seconds": round(total, 1),
         "experiments": results,
         "autoencoders": autoencoders, "und_encoder": und_encoder, "spec": OmegaConf.to_container(spec)},
        indent=2) + "\n")
    return report


# ----------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------


def reproduce(spec: DictConfig, out: str | Path, *, only: list[str] | None = None, force: bool = False,
              command: str = "unimm reproduce", extra: list[str] | tuple[str, ...] = ()) -> Path:
    """Run the whole reproduction (see the module docstring); returns the path of ``report.md``."""
    out = Path(out).resolve()
    names = list(spec.experiments)
    for name in only or []:
        if name not in names:
            raise ConfigError(f"--only {name}: no such experiment; experiments: {', '.join(names)}")
    if only:
        spec = OmegaConf.merge(spec, {})
        spec.experiments = {n: spec.experiments[n] for n in names if n in only}
    start = time.perf_counter()
    data = prepare_data(spec, out, force=force)
    autoencoders = prepare_autoencoders(spec, out, data, force=force)
    und_encoder = prepare_und_encoder(spec, out, data, force=force)
    results = {name: run_experiment(spec, name, out, data, force=force, extra=extra) for name in spec.experiments}
    write_plots(results, out)
    write_grid(results, out, data)
    return write_report(spec, results, autoencoders, out, command, time.perf_counter() - start, und_encoder)


def build_parser(prog: str = "unimm reproduce") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Re-run the Janus vs JanusFlow comparisons on the shapes "
                                                       "benchmark and write a report (table, plots, image grids).")
    p.add_argument("--experiments", default=DEFAULT_EXPERIMENTS,
                   help=f"experiments file or shipped name (default: {DEFAULT_EXPERIMENTS})")
    p.add_argument("--out", default="results/shapes", help="results folder (default: results/shapes)")
    p.add_argument("--only", nargs="+", help="run only these experiments")
    p.add_argument("--force", action="store_true", help="redo steps whose results are already in --out")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override the experiments file, e.g. budget.steps=200 data.train=500")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import this module of yours first, so the experiments can use the parts it registers "
                   "(repeatable; to load the saved runs later, name it in the configs' imports: instead)")
    return p


def reproduce_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import_modules(args.imports, where="--import")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_experiments(args.experiments, args.set)
    command = "unimm reproduce " + shlex.join(sys.argv[2:] if argv is None else argv)
    report = reproduce(spec, args.out, only=args.only, force=args.force, command=command.strip())
    print(report)
    return 0
