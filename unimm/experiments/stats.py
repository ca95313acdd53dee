"""Intervals over seeds and a verdict per paper claim, for the reproduction's report (issue 15, items 1-2).

Scores are accuracies in [0, 1] (the benchmark's ``overall`` or a question type); differences and margins are in
the same units and printed as percentage points.

* :func:`mean_interval`: the mean of per-seed scores and its t interval (``n - 1`` degrees of freedom). Given
  ``items`` (how many test items each score is over), its standard error is never below the scoring's own
  binomial error (:func:`scoring_variance`): with 2 or 3 seeds on a 0.5-point grid, runs can score the same by
  chance, and their spread alone would give an interval of zero width.
* :func:`bootstrap_interval`: a two-level bootstrap over a ``seeds x items`` table of per-item scores (resample
  the seeds, then the items within each chosen seed), percentile interval, seeded and deterministic.
* :class:`Claim`, :func:`verdict`: the interval of the difference ``a - b`` between two rows - a paired t interval
  over the seeds when both rows ran the same seeds, else Welch's - decides "reproduced", "contradicted" or
  "inconclusive" (see :func:`verdict` for the rule, including the "on par" claims with an equivalence margin).
* :data:`PAPER_CLAIMS` and :func:`verdict_table`: the papers' claims as comparisons between the runner's
  experiments (``configs/experiments/shapes.yaml``) and the markdown table that opens the report.

scipy is not a dependency of unimm, so the Student t quantile is computed here with numpy: the t density is
integrated with Simpson's rule and the quantile found by bisection (accurate to ~1e-7, ample for a report; Welch's
test needs non-integer degrees of freedom, which a printed table does not cover).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..registry.errors import InputError

DIRECTIONS = ("greater", "less", "on_par")
VERDICTS = ("reproduced", "contradicted", "inconclusive")


# ----------------------------------------------------------------------------------------------------------------
# Intervals
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A mean and its ``level`` interval ``[low, high]``; ``method`` says how it was computed."""

    mean: float
    low: float
    high: float
    level: float
    method: str


def _check_level(level: float) -> float:
    if not 0 < level < 1:
        raise InputError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")
    return float(level)


def _values(values: Sequence[float], what: str = "values", minimum: int = 2) -> np.ndarray:
    """``values`` as a 1-D float array of at least ``minimum`` finite numbers, else one-line :class:`InputError`."""
    array = np.asarray(list(values), dtype=float)
    if array.ndim != 1:
        raise InputError(f"{what}: give a flat list of numbers (one per seed), got shape {array.shape}")
    if array.size < minimum:
        raise InputError(f"{what}: need at least {minimum} seeds for an interval, got {array.size}; "
                         "run the experiment with more seeds")
    if not np.isfinite(array).all():
        raise InputError(f"{what}: contains NaN or infinite scores ({array.tolist()}); rerun or drop that seed")
    return array


def _t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom, x >= 0 (Simpson's rule on the density)."""
    grid = np.linspace(0.0, x, 4001)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid ** 2 / df))
    h = x / 4000
    area = h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())
    return 0.5 + area


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` > 0 degrees of freedom; see the module doc."""
    if not 0.5 < p < 1 or not df > 0:
        raise InputError(f"t_quantile needs 0.5 < p < 1 and df > 0, got p={p}, df={df}")
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < p:  # bracket the quantile; df=1 at p=0.999 is ~318
        low, high = high, high * 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def scoring_variance(values: Sequence[float], items: int) -> float:
    """Variance of the mean of ``len(values)`` scores from their scoring alone, each score an accuracy over ``items``
    items: ``mean(p~ (1 - p~) / items) / n`` with ``p~ = (p items + 1) / (items + 2)`` (Laplace's rule, so that a
    score of 0% or 100% still has a spread). It is the floor of :func:`mean_interval`'s and
    :func:`difference_interval`'s standard errors; for two rows scored on the same items it treats their scoring
    as independent, which errs on the wide side."""
    if isinstance(items, bool) or not isinstance(items, (int, np.integer)) or items < 1:
        raise InputError(f"items must be a whole number of test items >= 1, got {items!r}")
    p = (np.asarray(values, dtype=float) * items + 1) / (items + 2)
    return float(np.mean(p * (1 - p) / items) / p.size)


def _t_interval(mean: float, se: float, df: float, level: float, method: str) -> Interval:
    half = t_quantile((1 + level) / 2, df) * se if se > 0 else 0.0
    return Interval(float(mean), float(mean - half), float(mean + half), level, method)


def _floored(se: float, floor_variance: float | None, method: str) -> tuple[float, str]:
    """``se``, raised to the scoring's binomial error when that is larger (the method then says so)."""
    if floor_variance is not None and math.sqrt(floor_variance) > se:
        return math.sqrt(floor_variance), method + ", at the scoring's binomial error"
    return se, method


def mean_interval(values: Sequence[float], level: float = 0.95, items: int | None = None) -> Interval:
    """Mean of per-seed ``values`` (n >= 2) and its t interval: mean +- t_{(1+level)/2, n-1} * se, where se is
    sd / sqrt(n), or the scoring's binomial error when ``items`` is given and that is larger
    (:func:`scoring_variance`)."""
    level = _check_level(level)
    x = _values(values)
    se, method = _floored(x.std(ddof=1) / math.sqrt(x.size), None if items is None else scoring_variance(x, items),
                          f"t interval over {x.size} seeds")
    return _t_interval(x.mean(), se, x.size - 1, level, method)


def bootstrap_interval(per_seed_per_item_scores: Sequence[Sequence[float]], level: float = 0.95,
                       n_resamples: int = 2000, seed: int = 0) -> Interval:
    """Two-level bootstrap of the mean score: ``scores[s][i]`` is item ``i``'s score (0/1 or any number) for seed ``s``.

    Each resample draws the seeds with replacement, then, for each drawn seed, its items with replacement; the
    statistic is the mean over the drawn seeds of their items' mean (seeds weigh equally even when their item
    counts differ). The interval is the resamples' percentile interval; the same ``seed`` gives the same interval.
    """
    level = _check_level(level)
    if n_resamples < 100:
        raise InputError(f"n_resamples must be at least 100 for a percentile interval, got {n_resamples}")
    rows = [_values(items, f"scores of seed {s}", minimum=1) for s, items in enumerate(per_seed_per_item_scores)]
    if len(rows) < 2:
        raise InputError(f"bootstrap over seeds: need at least 2 seeds, got {len(rows)}; "
                         "run the experiment with more seeds")
    rng = np.random.default_rng(seed)
    n_seeds = len(rows)
    drawn = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))  # resample r, slot j -> which seed
    slot_means = np.empty((n_resamples, n_seeds))
    for j in range(n_seeds):
        for s, items in enumerate(rows):
            where = np.flatnonzero(drawn[:, j] == s)
            picks = rng.integers(0, items.size, size=(where.size, items.size))
            slot_means[where, j] = items[picks].mean(axis=1)
    stats = slot_means.mean(axis=1)
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    mean = float(np.mean([items.mean() for items in rows]))
    return Interval(mean, float(low), float(high), level,
                    f"bootstrap over {n_seeds} seeds and their items ({n_resamples} resamples)")


# ----------------------------------------------------------------------------------------------------------------
# Claims and verdicts
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A paper's claim as a comparison of two experiments (rows) of the runner on one metric.

    ``metric`` is ``"<task>"`` (its overall accuracy) or ``"<task>.<question type>"``, e.g. ``"understanding"`` or
    ``"generation.position"``. ``direction``: ``"greater"`` (``row_a`` scores higher than ``row_b``), ``"less"``,
    or ``"on_par"`` (the difference lies within +- ``margin``, in accuracy units: 0.05 = 5 points).
    """

    name: str
    paper: str
    row_a: str
    row_b: str
    metric: str
    direction: str
    margin: float = 0.0

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise InputError(f"claim '{self.name}': direction must be one of {', '.join(DIRECTIONS)}, "
                             f"got '{self.direction}'")
        if self.direction == "on_par" and not self.margin > 0:
            raise InputError(f"claim '{self.name}': an on_par claim needs an equivalence margin > 0 "
                             f"(e.g. margin=0.05 for 5 points), got {self.margin}")


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`verdict`: ``difference`` = mean(a) - mean(b) and its ``level`` interval."""

    claim: Claim
    verdict: str
    difference: float
    low: float
    high: float
    level: float
    test: str


Scores = Mapping[int, float] | Sequence[float]


def _by_seed(scores: Scores) -> dict | None:
    return {int(k): v for k, v in scores.items()} if isinstance(scores, Mapping) else None


def difference_interval(scores_a: Scores, scores_b: Scores, level: float = 0.95,
                        items: tuple[int, int] | None = None) -> tuple[Interval, str]:
    """Interval of mean(a) - mean(b) and the test's name.

    Paired t over the seeds when both are ``{seed: score}`` mappings with the same seeds (the seed fixes data order
    and initialisation, so differences within a seed remove that noise); otherwise Welch's t (unequal variances,
    Welch-Satterthwaite degrees of freedom). ``items``: the test items a's and b's scores are over; each standard
    error is then at least the scoring's binomial one (:func:`scoring_variance`).
    """
    level = _check_level(level)
    a_seeds, b_seeds = _by_seed(scores_a), _by_seed(scores_b)
    if a_seeds is not None and b_seeds is not None and set(a_seeds) == set(b_seeds):
        seeds = sorted(a_seeds)
        a = _values([a_seeds[s] for s in seeds], "scores_a")
        b = _values([b_seeds[s] for s in seeds], "scores_b")
        d = a - b
        floor = None if items is None else scoring_variance(a, items[0]) + scoring_variance(b, items[1])
        test = f"paired t over {len(seeds)} seeds"
        se, method = _floored(d.std(ddof=1) / math.sqrt(d.size), floor, test)
        return _t_interval(d.mean(), se, d.size - 1, level, method), method
    a = _values(a_seeds.values() if a_seeds is not None else scores_a, "scores_a")
    b = _values(b_seeds.values() if b_seeds is not None else scores_b, "scores_b")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    test = f"Welch t ({a.size} vs {b.size} seeds)"
    if items is not None:  # each row's variance of the mean at least its scoring's
        fa, fb = scoring_variance(a, items[0]), scoring_variance(b, items[1])
        if fa > va or fb > vb:
            test += ", at the scoring's binomial error"
        va, vb = max(va, fa), max(vb, fb)
    if va + vb == 0:  # both rows constant over seeds, no items given: no spread to scale
        return _t_interval(a.mean() - b.mean(), 0.0, 1, level, test), test
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    return _t_interval(a.mean() - b.mean(), math.sqrt(va + vb), df, level, test), test


def verdict(claim: Claim, scores_a: Scores, scores_b: Scores, level: float = 0.95,
            items: tuple[int, int] | None = None) -> Verdict:
    """Judge ``claim`` from per-seed scores of ``claim.row_a`` and ``claim.row_b`` (lists, or ``{seed: score}``),
    ``items`` the number of test items each row's scores are over (see :func:`difference_interval`).

    ``greater`` / ``less``: the difference's interval entirely on the expected side of 0 -> "reproduced", entirely
    on the other side -> "contradicted", containing 0 -> "inconclusive". ``on_par``: the interval inside
    [-margin, +margin] -> "reproduced", entirely outside it -> "contradicted", else "inconclusive" (with
    ``level=0.90`` the equivalence rule is the usual 5% two one-sided tests; at 0.95 it is stricter).
    """
    interval, test = difference_interval(scores_a, scores_b, level, items)
    low, high = interval.low, interval.high
    if claim.direction == "on_par":
        inside, outside = -claim.margin <= low and high <= claim.margin, low > claim.margin or high < -claim.margin
    else:
        sign = 1 if claim.direction == "greater" else -1
        inside, outside = (low > 0, high < 0) if sign > 0 else (high < 0, low > 0)
    outcome = "reproduced" if inside else "contradicted" if outside else "inconclusive"
    return Verdict(claim, outcome, interval.mean, low, high, level, test)


# The papers' claims (issue 15, item 2), on the experiments of configs/experiments/shapes.yaml. The second compares
# unified training with two single-task rows, so it is two comparisons (two rows of the table). Exp-D/E/F budget:
# und_only and gen_only train half janus's steps, all on their task, so each sees as many examples of its task as
# janus's 1 : 1 mixture does ("same per-task data"); the on-par margin is 5 points.
PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim("decoupled encoders beat a shared encoder on understanding", "Janus",
          "janus", "shared_encoder", "understanding", "greater"),
    Claim("unified training is on par with understanding-only (Exp-D vs Exp-E)", "Janus",
          "janus", "und_only", "understanding", "on_par", margin=0.05),
    Claim("unified training is on par with generation-only (Exp-D vs Exp-F)", "Janus",
          "janus", "gen_only", "generation", "on_par", margin=0.05),
    Claim("REPA improves generation", "JanusFlow",
          "janusflow", "janusflow_no_repa", "generation", "greater"),
    Claim("rectified flow generates better than VQ tokens at equal budget", "JanusFlow",
          "janusflow", "janus", "generation", "greater"),
    Claim("a pre-trained understanding encoder helps understanding", "Janus",
          "janus", "janus_scratch_vit", "understanding", "greater"),
)


def metric_value(final: Mapping, metric: str) -> float:
    """``metric`` (``"understanding"`` or ``"understanding.position"``) from one run's ``final`` summary, i.e.
    ``{task: {"accuracy": {"overall": x, <type>: y, ...}, ...}}`` as :func:`unimm.bench.evaluate.summary` gives."""
    task, _, key = metric.partition(".")
    try:
        return float(final[task]["accuracy"][key or "overall"])
    except (KeyError, TypeError):
        raise InputError(f"no '{metric}' score in this run (it has {', '.join(final) or 'none'}); "
                         "use '<task>' or '<task>.<question type>' of a task the experiment trains") from None


def metric_items(finals: Sequence[Mapping], metric: str) -> int | None:
    """How many test items ``metric`` is scored on in each of these runs' ``final`` summaries (their ``support``;
    the fewest, if they differ), or None when one of them does not record it. A run with no such item (support
    0; its score is NaN and left out of the figures) does not count."""
    task, _, key = metric.partition(".")
    counts = [((final.get(task) or {}).get("support") or {}).get(key or "overall") for final in finals]
    if None in counts or not any(counts):
        return None
    return int(min(c for c in counts if c))


def verdict_table(claims: Sequence[Claim], results: Mapping[str, Mapping[int, Mapping]], level: float = 0.95) -> str:
    """The report's opening table: one markdown row per claim with its difference, interval, test and verdict.

    ``results[experiment][seed]`` is that run's ``final`` summary (see :func:`metric_value`); where the summaries
    record their ``support`` (items per score), the intervals are floored at the scoring's binomial error. A claim
    whose rows have not run (or ran fewer than 2 seeds) gets "not run" in place of a verdict.
    """
    lines = [f"| claim | paper | rows (a vs b) | metric | expected | a - b ({level:.0%} interval) | test | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for claim in claims:
        expected = {"greater": "a > b", "less": "a < b"}.get(claim.direction, f"within ±{100 * claim.margin:g} pts")
        head = f"| {claim.name} | {claim.paper} | `{claim.row_a}` vs `{claim.row_b}` | {claim.metric} | {expected} |"
        runs = [results.get(claim.row_a) or {}, results.get(claim.row_b) or {}]
        if min(len(r) for r in runs) < 2:
            missing = [row for row, r in zip((claim.row_a, claim.row_b), runs) if len(r) < 2]
            lines.append(f"{head} - | - | not run ({', '.join(missing)}: needs 2+ seeds) |")
            continue
        a, b = ({int(s): metric_value(final, claim.metric) for s, final in r.items()} for r in runs)
        items = [metric_items(list(r.values()), claim.metric) for r in runs]
        v = verdict(claim, a, b, level, None if None in items else tuple(items))
        lines.append(f"{head} {100 * v.difference:+.1f} pts [{100 * v.low:+.1f}, {100 * v.high:+.1f}] | {v.test} "
                     f"| **{v.verdict}** |")
    return "\n".join(lines)
