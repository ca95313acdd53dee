"""unimm.experiments.stats on synthetic numbers whose answers are known by hand."""

import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from unimm.experiments.stats import (
    PAPER_CLAIMS, Claim, bootstrap_interval, difference_interval, mean_interval, metric_items, metric_value, scoring_variance,
    t_quantile, verdict, verdict_table,
)
from unimm.registry import InputError

ROOT = Path(__file__).resolve().parents[2]
BETTER = Claim("a beats b", "Paper", "a", "b", "understanding", "greater")
ON_PAR = Claim("a on par with b", "Paper", "a", "b", "understanding", "on_par", margin=0.05)


@pytest.mark.parametrize("p, df, expected", [  # printed t tables (e.g. NIST/SEMATECH e-Handbook, 1.3.6.7.2)
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 4, 2.776), (0.975, 10, 2.228), (0.975, 30, 2.042),
    (0.95, 4, 2.132), (0.995, 3, 5.841),
])
def test_t_quantile_matches_the_table(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=6e-4)


def test_t_quantile_between_integer_degrees_of_freedom_for_welch():
    assert t_quantile(0.975, 4) < t_quantile(0.975, 3.5) < t_quantile(0.975, 3)


def test_mean_interval_of_one_to_five():
    interval = mean_interval([1, 2, 3, 4, 5])
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert interval.mean == 3
    assert (interval.low, interval.high) == pytest.approx((3 - half, 3 + half), abs=1e-5)
    narrower = mean_interval([1, 2, 3, 4, 5], level=0.9)
    assert interval.low < narrower.low < 3 < narrower.high < interval.high


def test_scoring_variance_by_hand():
    # 50% on 100 items: p~ = 51 / 102 = 0.5, so 0.25 / 100 per score, halved for the mean of two
    assert scoring_variance([0.5, 0.5], 100) == pytest.approx(0.25 / 100 / 2)
    # 100% on 8 items still varies: p~ = 9 / 10
    assert scoring_variance([1.0, 1.0, 1.0], 8) == pytest.approx(0.9 * 0.1 / 8 / 3)


def test_runs_that_score_alike_get_the_scorings_interval_not_zero_width():
    assert mean_interval([0.56, 0.56]).high == mean_interval([0.56, 0.56]).low  # the spread alone: zero width
    floored = mean_interval([0.56, 0.56], items=200)
    p = (0.56 * 200 + 1) / 202
    half = 12.706205 * math.sqrt(p * (1 - p) / 200 / 2)
    assert (floored.low, floored.high) == pytest.approx((0.56 - half, 0.56 + half), abs=1e-5)
    assert "binomial" in floored.method
    spread = mean_interval([0.2, 0.5, 0.8], items=1000)  # seeds far apart: their spread is the wider, and kept
    assert spread == mean_interval([0.2, 0.5, 0.8])


def test_equal_paired_differences_are_not_proof_on_two_seeds():
    # REPA's first two seeds at the laptop budget: +12.5 points on both
    a, b = {0: 0.32, 1: 0.34}, {0: 0.195, 1: 0.215}
    alone, _ = difference_interval(a, b)
    assert alone.high - alone.low < 1e-9
    interval, test = difference_interval(a, b, items=(200, 200))
    se = math.sqrt(scoring_variance([0.32, 0.34], 200) + scoring_variance([0.195, 0.215], 200))
    assert interval.mean == pytest.approx(0.125)
    assert interval.high - interval.mean == pytest.approx(12.706205 * se, rel=1e-5)
    assert test == "paired t over 2 seeds, at the scoring's binomial error"
    claim = Claim("repa", "JanusFlow", "a", "b", "generation", "greater")
    assert verdict(claim, a, b).verdict == "reproduced"
    assert verdict(claim, a, b, items=(200, 200)).verdict == "inconclusive"
    a3, b3 = {**a, 2: 0.33}, {**b, 2: 0.205}  # a third seed that agrees: df 2, and the effect is clear
    assert verdict(claim, a3, b3, items=(200, 200)).verdict == "reproduced"


def test_welch_floors_each_row():
    a, b = [0.6, 0.6], [0.5, 0.5, 0.5]  # no spread in either row
    interval, test = difference_interval(a, b, items=(100, 400))
    va, vb = scoring_variance(a, 100), scoring_variance(b, 400)
    df = (va + vb) ** 2 / (va ** 2 / 1 + vb ** 2 / 2)
    assert interval.high - interval.mean == pytest.approx(t_quantile(0.975, df) * math.sqrt(va + vb))
    assert test.endswith("at the scoring's binomial error")


def test_bootstrap_is_deterministic_for_a_seed():
    scores = (np.random.default_rng(0).random((3, 50)) < 0.5).astype(float)
    assert bootstrap_interval(scores, seed=7) == bootstrap_interval(scores, seed=7)
    assert bootstrap_interval(scores, seed=7) != bootstrap_interval(scores, seed=8)


def test_bootstrap_covers_the_true_mean_of_a_large_sample():
    rng = np.random.default_rng(1)
    scores = (rng.random((6, 2000)) < 0.6).astype(float)  # every seed and item: right with probability 0.6
    interval = bootstrap_interval(scores, seed=0)
    assert interval.low < 0.6 < interval.high
    assert interval.high - interval.low < 0.03


def test_bootstrap_resamples_seeds_not_only_items():
    # Seeds that disagree (20%, 50%, 80%) on many items: resampling items alone would give a ~1-point interval.
    rng = np.random.default_rng(2)
    scores = [(rng.random(2000) < p).astype(float) for p in (0.2, 0.5, 0.8)]
    interval = bootstrap_interval(scores, seed=0)
    assert interval.high - interval.low > 0.3
    assert interval.mean == pytest.approx(np.mean([s.mean() for s in scores]))


def test_bootstrap_weighs_seeds_equally_when_item_counts_differ():
    interval = bootstrap_interval([[1.0] * 10, [0.0] * 1000], seed=0)
    assert interval.mean == 0.5


def test_paired_when_the_seeds_match():
    a, b = {0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.5, 1: 1.8, 2: 2.1}
    d = [0.5, 0.2, 0.9]
    half = 4.302653 * statistics.stdev(d) / math.sqrt(3)
    interval, test = difference_interval(a, b)
    assert test == "paired t over 3 seeds"
    assert (interval.mean, interval.low, interval.high) == pytest.approx((statistics.mean(d),
                                                                          statistics.mean(d) - half,
                                                                          statistics.mean(d) + half), abs=1e-5)


@pytest.mark.parametrize("a, b", [
    ({0: 1.0, 1: 2.0, 2: 3.0}, {0: 4.0, 1: 5.0, 3: 6.0}),  # different seeds
    ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]),                    # no seeds given
])
def test_welch_otherwise(a, b):
    # Equal sizes and variances: Welch's degrees of freedom are 2 (n - 1) = 4 and se = sqrt(1/3 + 1/3).
    interval, test = difference_interval(a, b)
    assert test == "Welch t (3 vs 3 seeds)"
    half = 2.776445 * math.sqrt(2 / 3)
    assert (interval.mean, interval.low, interval.high) == pytest.approx((-3, -3 - half, -3 + half), abs=1e-5)


def test_pairing_removes_the_seed_effect():
    # a is b + 2 points on every seed, but the seeds themselves differ by 20 points: only the paired test sees it.
    b = {0: 0.40, 1: 0.60, 2: 0.50}
    a = {s: v + 0.02 + 0.001 * s for s, v in b.items()}
    assert verdict(BETTER, a, b).verdict == "reproduced"
    assert verdict(BETTER, list(a.values()), list(b.values())).verdict == "inconclusive"


@pytest.mark.parametrize("a, b, expected", [
    ([0.80, 0.82, 0.81], [0.60, 0.62, 0.61], "reproduced"),
    ([0.60, 0.62, 0.61], [0.80, 0.82, 0.81], "contradicted"),
    ([0.60, 0.70, 0.80], [0.62, 0.71, 0.75], "inconclusive"),
])
def test_verdict_on_a_directional_claim(a, b, expected):
    result = verdict(BETTER, a, b)
    assert result.verdict == expected
    assert result.difference == pytest.approx(np.mean(a) - np.mean(b))
    assert result.low <= result.difference <= result.high
    less = Claim("a below b", "Paper", "a", "b", "understanding", "less")
    flipped = {"reproduced": "contradicted", "contradicted": "reproduced"}.get(expected, expected)
    assert verdict(less, a, b).verdict == flipped


@pytest.mark.parametrize("a, b, expected", [
    ([0.80, 0.81, 0.82], [0.80, 0.80, 0.81], "reproduced"),    # interval about [-0.01, 0.03], inside +-0.05
    ([0.90, 0.91, 0.92], [0.70, 0.71, 0.72], "contradicted"),  # 20 points apart, well outside
    ([0.80, 0.85, 0.90], [0.80, 0.80, 0.80], "inconclusive"),  # interval straddles the margin
])
def test_verdict_on_an_on_par_claim(a, b, expected):
    assert verdict(ON_PAR, a, b).verdict == expected


@pytest.mark.parametrize("call, message", [
    (lambda: mean_interval([0.5]), "at least 2 seeds"),
    (lambda: mean_interval([]), "at least 2 seeds"),
    (lambda: mean_interval([0.5, float("nan")]), "NaN"),
    (lambda: mean_interval([0.5, 0.6], level=95), "level must be between 0 and 1"),
    (lambda: bootstrap_interval([[1.0, 0.0]]), "at least 2 seeds"),
    (lambda: bootstrap_interval([[1.0, 0.0], []]), "seed 1"),
    (lambda: bootstrap_interval([[1.0], [float("nan")]]), "NaN"),
    (lambda: verdict(BETTER, [0.5], [0.4, 0.6]), "scores_a: need at least 2 seeds"),
    (lambda: Claim("x", "P", "a", "b", "understanding", "on_par"), "needs an equivalence margin"),
    (lambda: Claim("x", "P", "a", "b", "understanding", "better"), "direction must be one of"),
    (lambda: metric_value({"generation": {"accuracy": {"overall": 0.5}}}, "understanding"), "no 'understanding'"),
    (lambda: mean_interval([0.5, 0.6], items=0), "items must be a whole number"),
    (lambda: mean_interval([0.5, 0.6], items=2.5), "items must be a whole number"),
])
def test_bad_inputs_say_what_is_wrong_in_one_line(call, message):
    with pytest.raises(InputError, match=message) as error:
        call()
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)


def test_paper_claims_name_the_runners_experiments():
    experiments = OmegaConf.load(ROOT / "configs" / "experiments" / "shapes.yaml").experiments
    assert len(PAPER_CLAIMS) == 6  # the five, the second as two comparisons (und-only, gen-only)
    for claim in PAPER_CLAIMS:
        assert {claim.row_a, claim.row_b} <= set(experiments), claim
        assert claim.metric in ("understanding", "generation")


def _final(und: float, gen: float) -> dict:
    return {"understanding": {"accuracy": {"overall": und, "position": und / 2}},
            "generation": {"accuracy": {"overall": gen}}}


def test_verdict_table():
    results = {
        "janus": {0: _final(0.80, 0.30), 1: _final(0.82, 0.31), 2: _final(0.81, 0.32)},
        "shared_encoder": {0: _final(0.50, 0.30), 1: _final(0.52, 0.31), 2: _final(0.51, 0.29)},
        "janusflow": {0: _final(0.70, 0.40)},  # one seed only
    }
    table = verdict_table(PAPER_CLAIMS, results).splitlines()
    assert len(table) == 2 + len(PAPER_CLAIMS)
    assert table[0].startswith("| claim | paper |") and "95% interval" in table[0]
    decoupled = table[2]
    assert "`janus` vs `shared_encoder`" in decoupled and "+30.0 pts" in decoupled
    assert "paired t over 3 seeds" in decoupled and decoupled.endswith("| **reproduced** |")
    assert "not run (janus_scratch_vit: needs 2+ seeds)" in table[-1]
    assert "janusflow, janusflow_no_repa" in table[5]
    position = Claim("pos", "P", "janus", "shared_encoder", "understanding.position", "greater")
    assert "+15.0 pts" in verdict_table([position], results)
    assert "binomial" not in verdict_table(PAPER_CLAIMS, results)  # no support recorded: the spread alone


def test_verdict_table_floors_at_the_recorded_item_counts():
    def final(und: float, items: int) -> dict:
        return {"understanding": {"accuracy": {"overall": und}, "support": {"overall": items}}}

    results = {"janus": {0: final(0.62, 40), 1: final(0.62, 40)},
               "shared_encoder": {0: final(0.50, 40), 1: final(0.50, 30)}}  # the fewest items count
    assert metric_items(list(results["shared_encoder"].values()), "understanding") == 30
    assert metric_items([{"understanding": {"accuracy": {"overall": 0.5}}}], "understanding") is None
    row = verdict_table(PAPER_CLAIMS[:1], results).splitlines()[2]
    expected = verdict(PAPER_CLAIMS[0], {0: 0.62, 1: 0.62}, {0: 0.5, 1: 0.5}, items=(40, 30))
    assert f"[{100 * expected.low:+.1f}, {100 * expected.high:+.1f}]" in row
    assert "at the scoring's binomial error" in row and row.endswith("| **inconclusive** |")


def test_the_module_does_not_import_torch():
    code = "import sys, unimm.experiments.stats; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_docs_example_runs(capsys):
    import re

    text = (ROOT / "docs" / "reproduce.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", text, re.S)
    exec(compile(example, "docs/reproduce.md", "exec"), {})
    out = capsys.readouterr().out
    assert "low=0.565" in out and "\nreproduced\n" in out and "| **reproduced** |" in out
