"""The metric and sweep arithmetic on hand-made scores (no models)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands.eval.metrics import (
    NO_CANDIDATE,
    Scored,
    metrics_at,
    per_category,
    sweep,
    sweep_grid,
    threshold_for_false_hit_rate,
)

# 4 duplicates (one served a wrong entry), 4 non-duplicates, one of them with no candidate.
SCORES = [0.95, 0.80, 0.40, 0.90, 0.85, 0.30, NO_CANDIDATE, 0.60]
RIGHT = [True, True, True, False, False, False, False, False]
DUPLICATE = [True, True, True, True, False, False, False, False]


@pytest.fixture
def scored() -> Scored:
    return Scored.build(SCORES, RIGHT, DUPLICATE)


def test_counts_and_rates_at_a_threshold(scored: Scored) -> None:
    m = metrics_at(scored, 0.7)
    assert (m.pairs, m.duplicates, m.non_duplicates) == (8, 4, 4)
    # hits: 0.95 (dup, right), 0.80 (dup, right), 0.90 (dup, wrong entry), 0.85 (non-dup)
    assert m.hits == 4
    assert m.right_hits == 2
    assert m.duplicate_hits == 2
    assert m.wrong_entry_hits == 1
    assert m.false_hits == 1
    assert m.hit_rate == pytest.approx(2 / 4)
    assert m.false_hit_rate == pytest.approx(1 / 4)
    assert m.precision == pytest.approx(2 / 4)
    assert m.wrong_entry_rate == pytest.approx(1 / 4)


def test_threshold_is_inclusive(scored: Scored) -> None:
    # The gateway serves at or above the threshold.
    assert metrics_at(scored, 0.85).false_hits == 1
    assert metrics_at(scored, 0.8500001).false_hits == 0


def test_no_candidate_is_a_miss_at_every_threshold(scored: Scored) -> None:
    assert metrics_at(scored, 0.0).hits == 7
    assert metrics_at(scored, -1.0).hits == 7


def test_undefined_rates_are_none() -> None:
    traps_only = Scored.build([0.9, 0.1], [False, False], [False, False])
    m = metrics_at(traps_only, 0.95)
    assert m.hit_rate is None and m.wrong_entry_rate is None
    assert m.false_hit_rate == 0.0
    assert m.precision is None  # nothing served


def test_exact_repeat_hit_on_a_non_duplicate_is_right() -> None:
    # right=True on a non-duplicate (the stored question equals the query): a right hit,
    # in precision, but not in the hit rate (whose denominator is duplicates).
    m = metrics_at(Scored.build([0.99, 0.99], [True, True], [False, True]), 0.5)
    assert (m.hits, m.right_hits, m.false_hits, m.duplicate_hits) == (2, 2, 0, 1)
    assert m.precision == 1.0 and m.hit_rate == 1.0 and m.false_hit_rate == 0.0


def test_sweep_matches_pointwise_metrics(scored: Scored) -> None:
    grid = sweep_grid()
    assert grid[0] == 0.0 and grid[-1] == 1.0 and grid == sorted(set(grid))
    assert {0.5, 0.7, 0.99, 0.995} <= set(grid)
    for m in sweep(scored, grid):
        assert m == metrics_at(scored, m.threshold)


def test_per_category(scored: Scored) -> None:
    categories = ["x", "x", "y", "y", "x", "y", None, "y"]
    by = per_category(scored, categories, 0.7)
    assert sorted(by) == ["x", "y"]
    assert (by["x"].pairs, by["x"].duplicates, by["x"].hits, by["x"].false_hits) == (3, 2, 3, 1)
    assert (by["y"].pairs, by["y"].duplicates, by["y"].wrong_entry_hits, by["y"].hits) == (4, 2, 1, 1)


def test_threshold_for_target_false_hit_rate(scored: Scored) -> None:
    # Traps scored 0.85, 0.60, 0.30 (and one without candidate). With 4 non-duplicates:
    # 0% allows none -> just above 0.85, i.e. the next score up, 0.90.
    assert threshold_for_false_hit_rate(scored, 0.0) == 0.90
    # 25% allows one trap (0.85) -> 0.60 must miss -> next score above it is 0.80.
    assert threshold_for_false_hit_rate(scored, 0.25) == 0.80
    # 50% allows two -> 0.30 must miss -> 0.40.
    assert threshold_for_false_hit_rate(scored, 0.5) == 0.40
    # 100%: every trap may hit -> the lowest score.
    assert threshold_for_false_hit_rate(scored, 1.0) == 0.30


def test_threshold_above_every_score_when_top_score_is_a_trap() -> None:
    scored = Scored.build([0.5, 0.99], [True, False], [True, False])
    t = threshold_for_false_hit_rate(scored, 0.0)
    assert t is not None and t > 0.99
    assert metrics_at(scored, t).hits == 0


def test_threshold_undefined_without_traps() -> None:
    assert threshold_for_false_hit_rate(Scored.build([0.5], [True], [True]), 0.02) is None


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError):
        Scored.build([0.1, 0.2], [True], [True, False])
    with pytest.raises(ValueError):
        Scored.build([math.nan], [True], [True])
    with pytest.raises(ValueError):
        threshold_for_false_hit_rate(Scored.build([0.1], [False], [False]), 1.5)


rows = st.lists(
    st.tuples(
        st.one_of(st.floats(0, 1, allow_nan=False), st.just(NO_CANDIDATE)),
        st.booleans(),
        st.booleans(),
    ),
    min_size=1,
    max_size=60,
)


@given(rows)
def test_sweep_rates_never_rise_with_the_threshold(data: list[tuple[float, bool, bool]]) -> None:
    scored = Scored.build(*zip(*data))
    curve = sweep(scored, sweep_grid())
    for key in ("hit_rate", "false_hit_rate", "wrong_entry_rate"):
        values = [getattr(m, key) for m in curve]
        if values[0] is not None:
            assert all(a >= b for a, b in zip(values, values[1:]))
    hits = [m.hits for m in curve]
    assert all(a >= b for a, b in zip(hits, hits[1:]))


@given(rows, st.floats(0, 1))
def test_target_threshold_is_the_best_feasible(data: list[tuple[float, bool, bool]], target: float) -> None:
    scored = Scored.build(*zip(*data))
    t = threshold_for_false_hit_rate(scored, target)
    finite = scored.score[np.isfinite(scored.score)]
    if t is None:
        assert scored.duplicate.all() or finite.size == 0
        return
    m = metrics_at(scored, t)
    assert m.false_hit_rate is not None and m.false_hit_rate <= target + 1e-12
    # No lower threshold that changes anything also meets the target.
    lower = finite[finite < t]
    if lower.size:
        assert metrics_at(scored, float(lower.max())).false_hit_rate > target


def test_metrics_at_hits_takes_the_top_scores() -> None:
    from commands.eval.metrics import L1_HIT, metrics_at_hits

    s = Scored.build([L1_HIT, 0.9, 0.8, 0.8, 0.5, NO_CANDIDATE], [True, True, False, True, False, False],
                     [True, True, True, True, False, False])
    assert metrics_at_hits(s, 0).hits == 1  # the L1 exact hit is served at every threshold
    assert (metrics_at_hits(s, 2).hits, metrics_at_hits(s, 2).right_hits) == (2, 2)
    assert metrics_at_hits(s, 3).hits == 2  # a tie at 0.8 straddles 3: stay under it
    assert metrics_at_hits(s, 4).hits == 4
    assert metrics_at_hits(s, 99).hits == 5  # never the pair with no candidate


@pytest.mark.parametrize(
    ("scores", "threshold", "margin", "chosen"),
    [
        ([0.5, 0.97, 0.2], 0.96, 0.0, 1),
        ([0.95, 0.9], 0.96, 0.0, None),
        ([0.97, 0.97], 0.96, 0.0, 0),  # a tie: the earlier (more similar) candidate
        ([0.99, 0.97], 0.96, 0.05, None),  # the runner-up passes too, within the margin
        ([0.99, 0.93], 0.96, 0.1, 0),  # within the margin, but the runner-up does not pass
        ([0.99, 0.90], 0.96, 0.05, 0),
        ([math.nan, 0.97], 0.96, 0.0, 1),  # a non-finite score is never a yes
        ([], 0.5, 0.0, None),
    ],
)
def test_the_shared_decision_rule(scores: list[float], threshold: float, margin: float, chosen: int | None) -> None:
    from reflex.decision_rule import choose
    from services.verifier.decision import DecisionModel

    assert choose(scores, threshold, margin) == chosen
    # The verifier's decision model chooses by the very same rule.
    model = DecisionModel.load()
    same = DecisionModel(model.features, model.mean, model.scale, model.weights, model.bias, model.calibration_a,
                         model.calibration_b, threshold, margin, model.meta)
    if not any(math.isnan(x) for x in scores):
        assert same.choose(scores) == chosen
