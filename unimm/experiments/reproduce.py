"""``unimm reproduce``: the Janus vs JanusFlow comparisons, re-run at laptop scale on the shapes benchmark.

What it does, from an experiments file (default ``configs/experiments/shapes.yaml``; :mod:`.spec` describes it)
and a budget profile (``--budget smoke | laptop | gpu``):

1. exports the benchmark's splits into ``OUT/data`` (train, test, and the drawn-elsewhere set);
2. trains each autoencoder type the experiments use and, if asked, pre-trains the understanding encoder
   (:mod:`.prepare`), once, shared by every run;
3. trains every experiment once per seed of ``budget.seeds`` (:func:`.runner.run_experiment`), stopping
   ``evals`` times to score generation (the checker, on the test prompts) and understanding (exact match, on the
   test questions); the final models land in ``OUT/runs/<name>/seed<k>/final``;
4. writes ``OUT/report.md`` (verdicts per claim, means with 95% intervals over seeds, commands, wall time),
   ``OUT/results.json``, ``OUT/plots/*.png`` and ``OUT/grids/*.png`` (:mod:`.report`).

``--jobs N`` runs the independent parts (the autoencoders and the encoder; then the runs) in N processes.
Finished parts are kept: a rerun skips the data, autoencoders and runs already done (``--force`` redoes them), so
an interrupted reproduction continues, in as many sittings as it takes, with the runs it was in (each afresh).
``--report-only`` trains nothing: it writes the report of the runs finished so far and names the others.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..registry import ConfigError
from ..registry.plugins import import_modules
from .prepare import (autoencoder_jobs, encoder_job, kept_autoencoder, kept_und_encoder, prepare_data,
                      pretrain_und_encoder, train_one_autoencoder)
from .report import write_grid, write_plots, write_report
from .runner import Job, finished_run, run_experiment, run_jobs
from .spec import DEFAULT_EXPERIMENTS, experiment_config, load_experiments, run_order, trained_tasks

# experiment_config, load_experiments and trained_tasks are this module's public names too (docs/reproduce.md)
__all__ = ["build_parser", "experiment_config", "load_experiments", "reproduce", "reproduce_main", "trained_tasks"]

logger = logging.getLogger(__name__)


def reproduce(spec: DictConfig, out: str | Path, *, only: list[str] | None = None, force: bool = False,
              command: str = "unimm reproduce", extra: list[str] | tuple[str, ...] = (), jobs: int = 1,
              threads: int | None = None, imports: tuple[str, ...] = (), report_only: bool = False) -> Path:
    """Run the whole reproduction (see the module docstring); returns the path of ``report.md``.

    ``only`` keeps those experiments (and the ones they start from); ``extra`` are dotlist overrides for every
    run's config; ``jobs`` worker processes with ``threads`` torch threads each (``jobs=1``: all in this process),
    which first import ``imports`` (``--import``). ``report_only``: train nothing, report what has finished.
    """
    out = Path(out).resolve()
    names = list(spec.experiments)
    for name in only or []:
        if name not in names:
            raise ConfigError(f"--only {name}: no such experiment; experiments: {', '.join(names)}")
    if only:
        keep = set(only)
        for name in reversed(run_order(spec)):  # keep what the chosen ones start from
            if name in keep and spec.experiments[name].get("init_from") in names:
                keep.add(spec.experiments[name].init_from)
        spec = OmegaConf.merge(spec, {})
        spec.experiments = {n: spec.experiments[n] for n in names if n in keep}
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    if report_only and force:
        raise ConfigError("--report-only trains nothing and --force retrains everything: give one of them")
    start = time.perf_counter()
    data = prepare_data(spec, out, force=force)  # also for a report only: the runs' records name how it was made
    if report_only:
        return report_finished(spec, out, data, command, tuple(extra))
    prep = [Job(f"autoencoder {kind}", train_one_autoencoder, (spec, kind, slot, out, data, force))
            for kind, slot in autoencoder_jobs(spec).items()]
    slot = encoder_job(spec)
    if slot is not None:
        prep.append(Job("und_encoder", pretrain_und_encoder, (spec, slot, out, data, force)))
    done = run_jobs(prep, jobs, threads, imports)
    autoencoders = {job.key.split(" ", 1)[1]: done[job.key] for job in prep if job.key != "und_encoder"}
    und_encoder = done.get("und_encoder", {})
    seeds = [int(s) for s in spec.budget.seeds]
    runs = []
    for seed in seeds:  # seed-major: with several workers, a whole first seed of every experiment finishes first
        for name in run_order(spec):
            parent = spec.experiments[name].get("init_from")
            after = (f"{parent} seed{seed}",) if parent in spec.experiments else ()
            runs.append(Job(f"{name} seed{seed}", run_experiment, (spec, name, seed, out, data, force, tuple(extra)),
                            after))
    done = run_jobs(runs, jobs, threads, imports)
    results = {name: {seed: done[f"{name} seed{seed}"] for seed in seeds} for name in spec.experiments}
    write_plots(results, out)
    write_grid(results, out, data)
    return write_report(spec, results, autoencoders, out, command, time.perf_counter() - start, und_encoder)


def report_finished(spec: DictConfig, out: Path, data: dict[str, Path], command: str,
                    extra: tuple[str, ...] = ()) -> Path:
    """The report of the parts and runs that have finished as the file now asks (the rest is named, not trained)."""
    autoencoders = {kind: kept for kind in autoencoder_jobs(spec)
                    if (kept := kept_autoencoder(spec, kind, out, data)) is not None}
    und_encoder = (kept_und_encoder(spec, out, data) if encoder_job(spec) is not None else None) or {}
    results: dict[str, dict[int, dict]] = {}
    missing = []
    for seed in (int(s) for s in spec.budget.seeds):
        for name in run_order(spec):
            kept = finished_run(spec, name, seed, out, extra)
            if kept is None:
                missing.append(f"{name} seed{seed}")
            else:
                results.setdefault(name, {})[seed] = kept
    if not results:
        raise ConfigError(f"--report-only: no run has finished in {out} as the experiments file now asks; "
                          "run the command without --report-only to train them")
    results = {name: results[name] for name in spec.experiments if name in results}  # the file's order
    write_plots(results, out)
    write_grid(results, out, data)
    return write_report(spec, results, autoencoders, out, command, None, und_encoder, missing=missing)


def build_parser(prog: str = "unimm reproduce") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Re-run the Janus vs JanusFlow comparisons on the shapes "
                                                       "benchmark and write a report (verdicts, table, plots, grids).")
    p.add_argument("--experiments", default=DEFAULT_EXPERIMENTS,
                   help=f"experiments file or shipped name (default: {DEFAULT_EXPERIMENTS})")
    p.add_argument("--budget", default=None, metavar="PROFILE",
                   help="budget profile of the experiments file: smoke (minutes), laptop (the committed report; the "
                        "default when the file has it), gpu (with a CUDA device)")
    p.add_argument("--out", default="results/shapes", help="results folder (default: results/shapes)")
    p.add_argument("--only", nargs="+", help="run only these experiments (and those they start from)")
    p.add_argument("--force", action="store_true", help="redo steps whose results are already in --out")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report of the runs finished so far, naming the others")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for independent runs (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's choice)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override the experiments file, e.g. budget.steps=200 data.train=500 'budget.seeds=[0,1]'")
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
    spec = load_experiments(args.experiments, args.set, budget=args.budget)
    words = [w for w in (sys.argv[2:] if argv is None else argv) if w != "--report-only"]
    command = "unimm reproduce " + shlex.join(words)  # the command that trains (the report says if it did not)
    report = reproduce(spec, args.out, only=args.only, force=args.force, command=command.strip(), jobs=args.jobs,
                       threads=args.threads, imports=tuple(args.imports), report_only=args.report_only)
    print(report)
    return 0
