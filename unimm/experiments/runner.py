"""Training and scoring the runs of ``unimm reproduce``: one experiment with one seed, and many in parallel.

* :func:`run_experiment`: trains experiment ``name`` with ``seed`` in ``budget.evals`` segments, scoring after
  each (generation with the checker on the test prompts, understanding by exact match on the test questions),
  then scores understanding on the drawn-elsewhere set; keeps ``result.json`` in ``OUT/runs/<name>/seed<k>``.
* :func:`run_jobs`: runs jobs (functions with arguments, each waiting for the jobs it names) in ``jobs`` worker
  processes of ``threads`` torch threads each; with ``jobs=1`` everything runs in this process, in order.

Why processes: a step of these ~1.5 M-parameter models is too small to keep two cores busy from one process (two
torch threads scatter step times on shared cores), while two independent runs, one thread each, use both.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from ..images import save_grid
from .spec import autoencoder_slots, experiment_config, experiment_steps, sample_options, seed_dir, trained_tasks

logger = logging.getLogger(__name__)


def run_experiment(spec: DictConfig, name: str, seed: int, out: Path, data: dict[str, Path], force: bool = False,
                   extra: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Train experiment ``name`` with ``seed`` in ``evals`` segments, scoring after each; returns (and saves) its
    result: ``final`` (test scores), ``elsewhere`` (understanding on the drawn-elsewhere set), ``curve``, times."""
    from ..bench.evaluate import evaluate_model, summary
    from ..train import Trainer

    run_dir = seed_dir(out, name, seed)
    cfg = experiment_config(spec, name, out, seed, extra)
    made = made_with(spec, name, seed, out, cfg, extra)
    if not force:
        kept = _kept_run(run_dir, made)
        if kept is not None:
            return kept
        if (run_dir / "result.json").is_file():
            logger.info("%s seed %d was trained with other settings, data or parts than the file now gives: "
                        "training it again", name, seed)
    if run_dir.exists():  # forced, changed, or interrupted part-way: start the run afresh (no appended metrics)
        shutil.rmtree(run_dir)
    started = time.time()
    tasks = trained_tasks(cfg)
    options = sample_options(spec, cfg)
    steps, evals = experiment_steps(spec, name), max(1, int(spec.budget.evals))
    marks = sorted({max(1, round(steps * k / evals)) for k in range(1, evals + 1)})
    model = processor = None
    curve, train_seconds, eval_seconds = [], 0.0, 0.0
    torch.manual_seed(seed)
    for k, mark in enumerate(marks):
        seg = OmegaConf.merge(cfg, {"train": {"stop_after": None if mark == steps else mark,
                                              "resume": "latest" if k else None}})
        if k:  # later segments resume from the checkpoint, not from the parent model
            seg.train.init_from = None
        start = time.perf_counter()
        trainer = Trainer(seg, model=model, processor=processor)
        trainer.fit()
        model, processor = trainer.model, trainer.processor
        train_seconds += time.perf_counter() - start
        start = time.perf_counter()
        scores = evaluate_model(model, processor, data["test"], tasks=tasks, seed=seed, **options)
        eval_seconds += time.perf_counter() - start
        curve.append({"step": mark, **{t: r["accuracy"] for t, r in summary(scores).items()}})
        logger.info("%s seed %d step %d: %s", name, seed, mark, curve[-1])
    elsewhere = {}
    if "understanding" in tasks and "elsewhere" in data:
        start = time.perf_counter()
        elsewhere = summary(evaluate_model(model, processor, data["elsewhere"], tasks=["understanding"], seed=seed))
        eval_seconds += time.perf_counter() - start
    generation = scores.get("generation")
    if generation is not None:
        save_grid(generation["images"][:8], run_dir / "samples.png", nrow=8)
        torch.save(generation["images"][:8], run_dir / "test_images.pt")  # the report's grid shows 8
    exp = spec.experiments[name]
    result = {
        "name": name, "seed": seed, "config": exp.config, "overrides": list(exp.get("overrides") or []),
        "tasks": tasks, "steps": steps, "init_from": exp.get("init_from"),
        "pretrained_und_encoder": bool(exp.get("pretrained_und_encoder")),
        "sample": options, "final": summary(scores), "elsewhere": elsewhere, "curve": curve,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "started": round(started, 1), "finished": round(time.time(), 1),  # wall clock, for the report's wall time
        "made": made,
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def finished_run(spec: DictConfig, name: str, seed: int, out: Path,
                 extra: list[str] | tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The kept result of experiment ``name`` with ``seed`` if that run finished, made as the file now asks
    (:func:`made_with`); else None (it is trained, afresh)."""
    made = made_with(spec, name, seed, out, experiment_config(spec, name, out, seed, extra), extra)
    return _kept_run(seed_dir(out, name, seed), made)


def _kept_run(run_dir: Path, made: dict[str, Any]) -> dict[str, Any] | None:
    """The run's ``result.json`` if it was made with ``made``, else None."""
    result_file = run_dir / "result.json"
    if not result_file.is_file():
        return None
    kept = json.loads(result_file.read_text())
    return kept if kept.get("made") == made else None


def made_with(spec: DictConfig, name: str, seed: int, out: Path, cfg: DictConfig,
              extra: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """What a run of experiment ``name`` depends on, kept in its ``result.json``: a finished run is kept in a later
    sitting only while this is unchanged. Its entry in the file, steps, evals, sampling and ``extra`` overrides; how
    the training split was made; and when the parts it starts from (its autoencoders, the pre-trained encoder, the
    ``init_from`` run) were trained, so a part trained again trains its runs again. No paths: a reproduction moved
    to another folder or machine keeps its runs."""
    def finished(result_file: Path) -> float | None:
        return json.loads(result_file.read_text()).get("finished") if result_file.is_file() else None

    exp = spec.experiments[name]
    parts = {f"autoencoder {slot.type}": finished(out / "autoencoders" / str(slot.type) / "result.json")
             for slot in autoencoder_slots(cfg.model)}
    if exp.get("pretrained_und_encoder"):
        parts["und_encoder"] = finished(out / "encoders" / "und_encoder" / "result.json")
    parent = exp.get("init_from")
    if parent in spec.experiments:
        parts[f"init_from {parent}"] = finished(seed_dir(out, parent, seed) / "result.json")
    info = out / "data" / "train" / "info.json"
    return {"experiment": OmegaConf.to_container(exp), "steps": experiment_steps(spec, name),
            "evals": int(spec.budget.evals), "sample": sample_options(spec, cfg), "extra": list(extra),
            "data": json.loads(info.read_text()) if info.is_file() else None, "parts": parts}


# ----------------------------------------------------------------------------------------------------------------
# Jobs in worker processes
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """``fn(*args)`` under ``key``, started once every job in ``after`` has finished. The first argument, if a
    :class:`DictConfig`, travels to a worker process as a plain container."""

    key: str
    fn: Callable[..., Any]
    args: tuple
    after: tuple[str, ...] = field(default=())


def _call(fn: Callable[..., Any], args: tuple, threads: int | None, imports: tuple[str, ...]) -> Any:
    """Worker side: set torch's threads, import the user's part modules, turn a plain spec back into a
    DictConfig, run."""
    from ..registry.plugins import import_modules

    import_modules(list(imports), where="--import")
    if threads:
        torch.set_num_threads(threads)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args and isinstance(args[0], dict):
        args = (OmegaConf.create(args[0]), *args[1:])
    return fn(*args)


def run_jobs(jobs: list[Job], workers: int = 1, threads: int | None = None,
             imports: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``jobs`` (each after those it names) in ``workers`` spawned processes; returns key -> result.

    A spawned process starts bare, so it imports ``imports`` (the modules of ``--import``) before its first job.
    With one worker the jobs run here, in list order (which must then respect ``after``). A job that fails stops
    the rest: the finished ones have kept their results on disk, so a rerun continues from there.
    """
    if workers <= 1:
        return {job.key: job.fn(*job.args) for job in jobs}
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    results: dict[str, Any] = {}
    waiting = list(jobs)
    running: dict[Any, str] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        while waiting or running:
            for job in [j for j in waiting if all(k in results for k in j.after)]:
                args = job.args
                if args and isinstance(args[0], DictConfig):
                    args = (OmegaConf.to_container(args[0]), *args[1:])
                running[pool.submit(_call, job.fn, args, threads, tuple(imports))] = job.key
                waiting.remove(job)
            if not running:  # pragma: no cover - guarded by spec.run_order
                raise RuntimeError(f"jobs wait for each other: {[j.key for j in waiting]}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                key = running.pop(future)
                results[key] = future.result()  # re-raises the worker's error here
                logger.info("finished %s (%d of %d)", key, len(results), len(jobs))
    return results
