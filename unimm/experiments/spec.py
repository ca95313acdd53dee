"""The experiments file of ``unimm reproduce``: reading, budget profiles, and each run's full config.

An experiments file (``configs/experiments/shapes.yaml``) has these sections::

    data:        {seed, train, test, elsewhere, variations,   the benchmark splits to export
                  plain_targets, where_questions}
    budget:      {steps, evals, seeds}                        steps per run, score curves, training seeds
    budgets:     {smoke: {...}, laptop: {...}, gpu: {...}}    profiles: each is merged over the file (--budget)
    autoencoders, und_encoder_pretraining, sample             what is trained once and how images are sampled
    experiments: {name: {config, overrides, pretrained_und_encoder, steps, init_from}}

Every experiment runs once per seed of ``budget.seeds`` (the seed sets data order, initialisation and the
sampling of its scores). ``steps`` gives one experiment its own step count: an integer, or a fraction of
``budget.steps`` written as a number below 1 (``0.5``: half the budget, which is how the single-task rows get the
same per-task data as a 1 : 1 mixture). ``init_from`` starts an experiment from the final model of another
experiment of the file (same seed), or from a model folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..registry import ConfigError

DEFAULT_EXPERIMENTS = "experiments/shapes"
DEFAULT_BUDGET = "laptop"
EXPERIMENTS_KEYS = ("data", "budget", "budgets", "autoencoders", "und_encoder_pretraining", "sample", "experiments")
DATA_KEYS = ("seed", "train", "test", "elsewhere", "variations", "plain_targets", "where_questions")
BUDGET_KEYS = ("steps", "evals", "seeds")
EXPERIMENT_KEYS = ("config", "overrides", "pretrained_und_encoder", "steps", "init_from")
PRETRAINING_KEYS = ("steps", "batch_size", "lr", "weight_decay", "patch_labels")  # pretrain_encoder's settings


def load_experiments(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                     budget: str | None = None) -> DictConfig:
    """Read an experiments file, merge its ``budgets.<budget>`` profile and the dotlist ``overrides``, and check it.

    ``budget`` defaults to ``laptop`` when the file has that profile; a file without ``budgets`` is used as
    written. The returned config keeps the chosen profile's name in ``budget.profile``.
    """
    from ..config import find_config

    spec = OmegaConf.load(find_config(name_or_path))
    _check_keys(spec, EXPERIMENTS_KEYS, "experiments file")
    profiles = spec.pop("budgets", None) or {}
    if budget is None and DEFAULT_BUDGET in profiles:
        budget = DEFAULT_BUDGET
    if budget is not None:
        if budget not in profiles:
            raise ConfigError(f"--budget {budget}: the experiments file has no such profile; "
                              f"profiles: {', '.join(profiles) or 'none (add a budgets: section)'}")
        _check_keys(profiles[budget], [k for k in EXPERIMENTS_KEYS if k != "budgets"], f"budgets.{budget}")
        spec = OmegaConf.merge(spec, profiles[budget])
    if overrides:
        spec = OmegaConf.merge(spec, OmegaConf.from_dotlist(list(overrides)))
        _check_keys(spec, EXPERIMENTS_KEYS, "--set")
    _check(spec)
    spec.budget.profile = budget
    return spec


def _check_keys(node: Any, allowed, where: str) -> None:
    for key in node or {}:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{key}'; valid keys: {', '.join(allowed)}")


def _check(spec: DictConfig) -> None:
    """One-line errors for the mistakes an experiments file can hold."""
    _check_keys(spec.get("data"), DATA_KEYS, "data")
    _check_keys(spec.get("und_encoder_pretraining"), PRETRAINING_KEYS, "und_encoder_pretraining")
    _check_keys({k: v for k, v in (spec.get("budget") or {}).items() if k != "profile"}, BUDGET_KEYS, "budget")
    if not spec.get("experiments"):
        raise ConfigError("experiments file: 'experiments' is empty; name at least one {config, overrides}")
    for name, exp in spec.experiments.items():
        unknown = set(exp) - set(EXPERIMENT_KEYS)
        if unknown or "config" not in exp:
            raise ConfigError(f"experiments.{name}: give 'config' and optionally "
                              f"{', '.join(repr(k) for k in EXPERIMENT_KEYS[1:])} (got {sorted(exp)})")
        if exp.get("pretrained_und_encoder") and not spec.get("und_encoder_pretraining"):
            raise ConfigError(f"experiments.{name} asks for a pretrained_und_encoder but the file has no "
                              "'und_encoder_pretraining' section; add one, e.g. {steps: 6000, batch_size: 64}")
    budget = spec.get("budget") or {}
    steps, seeds = budget.get("steps"), budget.get("seeds")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"budget.steps must be a whole number of optimiser steps >= 1, got {steps!r}")
    if (not OmegaConf.is_list(seeds) or not seeds or not all(isinstance(s, int) for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"budget.seeds must be a list of distinct integers, e.g. [0, 1, 2], got {seeds!r}")
    for name in spec.experiments:
        experiment_steps(spec, name)
    run_order(spec)


def experiment_steps(spec: DictConfig, name: str) -> int:
    """Optimiser steps of experiment ``name``: its own ``steps`` (an integer, or a fraction of the budget below 1),
    else ``budget.steps``."""
    steps = spec.experiments[name].get("steps")
    budget = int(spec.budget.steps)
    if steps is None:
        return budget
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or steps <= 0 or (
            isinstance(steps, float) and steps >= 1):
        raise ConfigError(f"experiments.{name}.steps must be a whole number of steps (e.g. 3000) or a fraction of "
                          f"budget.steps below 1 (e.g. 0.5), got {steps!r}")
    return int(steps) if isinstance(steps, int) else max(1, round(steps * budget))


def run_order(spec: DictConfig) -> list[str]:
    """The experiments in file order, except that one whose ``init_from`` names another runs after it."""
    names = list(spec.experiments)
    parents = {n: spec.experiments[n].get("init_from") for n in names}
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in chain:
            raise ConfigError(f"experiments: init_from goes round in a circle ({' -> '.join(chain + (name,))}); "
                              "start one of them from scratch")
        parent = parents[name]
        if parent in parents:
            visit(parent, chain + (name,))
        elif parent is not None and not Path(str(parent)).is_dir():
            raise ConfigError(f"experiments.{name}.init_from: '{parent}' is neither an experiment of this file "
                              f"({', '.join(names)}) nor a model folder")
        order.append(name)

    for name in names:
        visit(name, ())
    return order


def seed_dir(out: Path, name: str, seed: int) -> Path:
    """Where experiment ``name`` trains with ``seed``: ``OUT/runs/<name>/seed<seed>`` (its model: ``final/``)."""
    return out / "runs" / name / f"seed{seed}"


def experiment_config(spec: DictConfig, name: str, out: Path, seed: int | None = None,
                      extra: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The full config of experiment ``name`` with training ``seed`` (default: the first of ``budget.seeds``):
    model config + shapes recipe + its overrides + data, steps, seed and output folder."""
    from ..config import load_config

    exp = spec.experiments[name]
    seed = int(spec.budget.seeds[0]) if seed is None else int(seed)
    data = out / "data" / "train"
    overrides = [
        "train=@recipes/shapes",
        *list(exp.get("overrides") or []),
        f"train.output_dir={seed_dir(out, name, seed)}",
        f"train.seed={seed}",
        f"train.stages.0.steps={experiment_steps(spec, name)}",
        f"train.data.sources.und.jsonl={data / 'und.jsonl'}",
        f"train.data.sources.t2i.jsonl={data / 't2i.jsonl'}",
        *extra,
    ]
    parent = exp.get("init_from")
    if parent is not None:
        folder = seed_dir(out, parent, seed) / "final" if parent in spec.experiments else Path(str(parent))
        overrides.append(f"train.init_from={folder}")
    cfg = load_config(exp.config, overrides)
    for slot in autoencoder_slots(cfg.model):
        slot.path = str(out / "autoencoders" / slot.type)
        slot.pop("config", None)  # a diffusers VAE folder carries its own architecture
    if exp.get("pretrained_und_encoder"):
        cfg.model.und_encoder.path = str(out / "encoders" / "und_encoder")
    return cfg


def autoencoder_slots(node: Any) -> list[DictConfig]:
    """Every ``autoencoder`` slot under ``node`` (the generator's, a shared-VQ encoder's)."""
    found = []
    if isinstance(node, DictConfig):
        for key, value in node.items():
            if key == "autoencoder" and isinstance(value, DictConfig):
                found.append(value)
            else:
                found.extend(autoencoder_slots(value))
    return found


def plain_config(spec: DictConfig, name: str) -> DictConfig:
    """Experiment ``name``'s config before :func:`experiment_config` sets its paths: the parts it builds."""
    from ..config import load_config

    exp = spec.experiments[name]
    return load_config(exp.config, ["train=@recipes/shapes", *list(exp.get("overrides") or [])])


def architectures(spec: DictConfig, name: str) -> dict[str, dict]:
    """Autoencoder type -> slot (without ``path``) of every autoencoder experiment ``name`` builds."""
    return {slot.type: {k: v for k, v in OmegaConf.to_container(slot).items() if k != "path"}
            for slot in autoencoder_slots(plain_config(spec, name).model)}


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
