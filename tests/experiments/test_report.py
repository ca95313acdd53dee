"""The report's figures: interval cells, the scores per seed it reads, and the wall time over sittings."""

import pytest

from unimm.experiments.report import cell, seed_items, seed_scores, wall_seconds_of


def test_cell_gives_mean_and_t_half_width_in_percent():
    assert cell([]) == "-"
    assert cell([0.5]) == "50.0"
    # mean 0.6, sd 0.1, n 3: half-width t(0.975, 2) * 0.1 / sqrt(3) = 4.303 * 0.0577 = 0.2484
    assert cell([0.5, 0.6, 0.7]) == "60.0 ± 24.8"


def test_cell_is_never_narrower_than_the_scoring():
    assert cell([0.56, 0.56]) == "56.0 ± 0.0"
    # p~ = 113 / 202 = 0.5594 on 200 items, two seeds: t(0.975, 1) * sqrt(0.5594 * 0.4406 / 200 / 2) = 0.3154
    assert cell([0.56, 0.56], items=200) == "56.0 ± 31.5"
    assert cell([0.5, 0.6, 0.7], items=200) == "60.0 ± 24.8"  # their spread is the wider
    runs = {0: {"final": {"understanding": {"accuracy": {"overall": 0.9}, "support": {"overall": 662}}}},
            1: {"final": {"understanding": {"accuracy": {"overall": 0.9}, "support": {"overall": 658}}}}}
    assert seed_items(runs, "final", "understanding", "overall") == 658
    assert seed_items(runs, "final", "generation", "overall") is None
    # a seed whose test set states no relation (support 0, score NaN, left out) does not set the count to 0
    runs = {s: {"final": {"generation": {"accuracy": {"position": a}, "support": {"position": n}}}}
            for s, (a, n) in enumerate([(float("nan"), 0), (0.5, 12), (0.25, 12)])}
    assert seed_items(runs, "final", "generation", "position") == 12
    assert cell(seed_scores(runs, "final", "generation", "position"), 12).startswith("37.5 ± ")


def test_seed_scores_skip_seeds_without_the_task():
    runs = {0: {"final": {"generation": {"accuracy": {"overall": 0.25, "colour": 0.5}}}},
            1: {"final": {"generation": {"accuracy": {"overall": 0.75}}}},
            2: {"final": {}}}
    assert seed_scores(runs, "final", "generation", "overall") == [0.25, 0.75]
    assert seed_scores(runs, "final", "generation", "colour") == [0.5]
    assert seed_scores(runs, "elsewhere", "understanding", "overall") == []
    # A test set with no relation stated scores position NaN at that seed (JSON writes it NaN): left out too.
    runs = {0: {"final": {"generation": {"accuracy": {"position": float("nan")}}}},
            1: {"final": {"generation": {"accuracy": {"position": 0.5}}}}}
    assert seed_scores(runs, "final", "generation", "position") == [0.5]
    assert cell(seed_scores({0: runs[0]}, "final", "generation", "position")) == "-"


@pytest.mark.parametrize("spans, expected", [
    ([], 0.0),
    ([(0, 10)], 10.0),
    ([(0, 10), (5, 12)], 12.0),             # two workers overlapping count once
    ([(0, 10), (2, 4)], 10.0),              # one inside another
    ([(0, 10), (100, 130)], 40.0),          # two sittings: the gap between them does not count
    ([(100, 130), (0, 10), (120, 140)], 50.0),
])
def test_wall_time_is_the_union_of_the_parts_spans(spans, expected):
    jobs = [{"started": a, "finished": b} for a, b in spans] + [{"seconds": 3}]  # a part without times is skipped
    assert wall_seconds_of(jobs) == pytest.approx(expected)
