"""The static-λ frontier's rules on hand-made tables: the best static λ, dominance, headroom, budgets, resumption;
steps to forget."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from evaluation.frontier import (
    FrontierPoint,
    FrontierRecord,
    FrontierSettings,
    FrontierTask,
    aggregate,
    budgets_of,
    choose_static_lambda,
    front_position,
    headroom,
    points_of,
    record_path,
    run_frontier,
    static_intervals,
)
from evaluation.probing import steps_to_forget
from evaluation.sampling import Sampler
from evaluation.scoring import SampleSize

TASK = "1-trouser-0.2-s0"
SEEDS = (1000, 1001, 1002)
T = 60


def point(lam: float | None, seed: int, budget: int, **metrics: float) -> FrontierPoint:
    return FrontierPoint(TASK, lam, seed, budget, metrics)


def table(rows: dict[float, tuple[list[float], list[float], list[float]]], base_kid: list[float]) -> list[FrontierPoint]:
    """Points at budget T: per λ, per-seed (digit share, forget rate, retain KID); the base model at budget 0."""
    points = [point(None, s, 0, kid_retain=k, forget_digit_share=0.5, forget_rate=0.3) for s, k in zip(SEEDS, base_kid)]
    for lam, (digit, forget, kid) in rows.items():
        for s, d, f, k in zip(SEEDS, digit, forget, kid):
            points.append(point(lam, s, T, forget_digit_share=d, forget_rate=f, kid_retain=k))
            points.append(point(lam, s, T // 2, forget_digit_share=0.0, forget_rate=1.0, kid_retain=0.0))  # other budget
    return points


BASE_KID = [1.0, 1.2, 1.4]  # mean 1.2, SE 0.2 / sqrt(3) = 0.1155: the bound is 1.3155


def test_the_best_static_lambda_maximises_digit_share_within_the_retain_bound_ties_to_lower_forget_rate() -> None:
    rows = {
        0.1: ([0.5] * 3, [0.30] * 3, [1.1] * 3),
        0.3: ([0.8] * 3, [0.10] * 3, [1.3] * 3),
        0.5: ([0.7, 0.8, 0.9], [0.05] * 3, [1.2, 1.3, 1.4]),  # the same mean digit share as 0.3, a lower forget rate
        0.7: ([0.95] * 3, [0.01] * 3, [1.5] * 3),  # the best digit share, but over the retain bound
    }
    choice = choose_static_lambda(table(rows, BASE_KID), T)
    assert choice.base_kid_retain == pytest.approx(1.2)
    assert choice.base_kid_retain_se == pytest.approx(0.2 / math.sqrt(3))
    assert choice.bound == pytest.approx(1.2 + 0.2 / math.sqrt(3))
    assert choice.eligible == (0.1, 0.3, 0.5)
    assert choice.lam == 0.5 and not choice.fallback and choice.spec == "static:0.5"
    assert choice.means["0.5"] == pytest.approx({"forget_digit_share": 0.8, "forget_rate": 0.05, "kid_retain": 1.3})


def test_full_ties_go_to_the_smaller_lambda_and_incomplete_lambdas_are_not_eligible() -> None:
    rows = {0.2: ([0.6] * 3, [0.1] * 3, [1.0] * 3), 0.4: ([0.6] * 3, [0.1] * 3, [1.0] * 3)}
    points = table(rows, BASE_KID)
    # λ = 0.8 would win but diverged on one tuning seed: no score there.
    points += [point(0.8, s, T, forget_digit_share=1.0, forget_rate=0.0, kid_retain=0.5) for s in SEEDS[:2]]
    choice = choose_static_lambda(points, T)
    assert choice.lam == 0.2 and choice.eligible == (0.2, 0.4) and "0.8" not in choice.means


def test_without_an_eligible_lambda_the_lowest_retain_kid_is_taken() -> None:
    rows = {0.3: ([0.9] * 3, [0.0] * 3, [2.0] * 3), 0.6: ([0.1] * 3, [0.5] * 3, [1.6] * 3)}
    choice = choose_static_lambda(table(rows, BASE_KID), T)
    assert choice.fallback and choice.eligible == () and choice.lam == 0.6


def test_the_choice_needs_the_base_model_and_a_complete_lambda() -> None:
    one_base_seed = [p for p in table({0.5: ([0.5] * 3, [0.1] * 3, [1.0] * 3)}, BASE_KID)
                     if p.lam is not None or p.seed == SEEDS[0]]
    with pytest.raises(ValueError, match="base model's retain KID on at least 2"):
        choose_static_lambda(one_base_seed, T)
    with pytest.raises(ValueError, match="no static λ has a score"):
        choose_static_lambda(table({}, BASE_KID), T)


def test_aggregate_marks_the_choice_and_headroom_reads_best_and_worst() -> None:
    rows = {0.1: ([0.5] * 3, [0.30] * 3, [1.1] * 3), 0.5: ([0.8] * 3, [0.05] * 3, [1.3] * 3)}
    points = table(rows, BASE_KID)
    choice = choose_static_lambda(points, T)
    agg = aggregate(points, [(TASK, [TASK])], choice)
    at_t = {r["lam"]: r for r in agg if r["budget"] == T}
    assert at_t[0.5]["chosen"] is True and at_t[0.1]["chosen"] is False and at_t[0.1]["eligible"] is True
    assert at_t[0.5]["forget_rate"] == pytest.approx(0.05) and at_t[0.5]["n"] == 3
    assert next(r for r in agg if r["lam"] == "base")["kid_retain"] == pytest.approx(1.2)
    best = {h.metric: h for h in headroom(agg, TASK) if h.budget == T}
    assert (best["forget_rate"].best_lam, best["forget_rate"].worst_lam) == (0.5, 0.1)
    assert best["forget_rate"].spread == pytest.approx(0.25)
    assert (best["forget_digit_share"].best_lam, best["kid_retain"].best_lam) == (0.5, 0.1)


def test_a_method_is_beyond_the_front_only_when_it_dominates_every_static_lambda() -> None:
    static = {0.1: {"forget_rate": (0.30, 0.28, 0.32), "kid_retain": (1.0, 0.9, 1.1)},
              0.9: {"forget_rate": (0.05, 0.03, 0.07), "kid_retain": (2.0, 1.9, 2.1)}}
    utopia = front_position("m", {"forget_rate": (0.02, 0.01, 0.025), "kid_retain": (0.8, 0.7, 0.85)}, static)
    assert utopia.beyond and utopia.dominates == (0.1, 0.9) and utopia.dominated_by == ()
    middle = front_position("m", {"forget_rate": (0.10, 0.09, 0.11), "kid_retain": (1.5, 1.4, 1.6)}, static)
    assert not middle.beyond and middle.dominates == () and middle.dominated_by == ()
    # Better in mean on both but overlapping intervals on both: no dominance either way.
    close = front_position("m", {"forget_rate": (0.29, 0.25, 0.33), "kid_retain": (0.99, 0.8, 1.2)}, {0.1: static[0.1]})
    assert close.dominates == () and close.dominated_by == () and not close.beyond
    worse = front_position("m", {"forget_rate": (0.40, 0.38, 0.42), "kid_retain": (1.2, 1.1, 1.3)}, static)
    assert worse.dominated_by == (0.1,)


def test_static_intervals_read_frontier_rows() -> None:
    rows = [{"task": TASK, "lam": "base", "budget": 0, "forget_rate": 0.3, "forget_rate_lo": 0.2, "forget_rate_hi": 0.4,
             "kid_retain": 1.0, "kid_retain_lo": 0.9, "kid_retain_hi": 1.1},
            {"task": TASK, "lam": 0.5, "budget": T, "forget_rate": 0.1, "forget_rate_lo": 0.05, "forget_rate_hi": 0.15,
             "kid_retain": 1.2, "kid_retain_lo": 1.1, "kid_retain_hi": 1.3}]
    assert static_intervals(rows, TASK, T) == {0.5: {"forget_rate": (0.1, 0.05, 0.15), "kid_retain": (1.2, 1.1, 1.3)}}


def test_budgets_are_fractions_of_the_horizon_that_include_it() -> None:
    assert budgets_of(60) == (15, 30, 60, 120)
    assert budgets_of(8, (0.1, 1.0)) == (1, 8)
    with pytest.raises(ValueError, match="include the preset's horizon"):
        budgets_of(60, (0.5, 2.0))


def test_steps_to_forget_is_the_first_probe_at_or_below_five_percent() -> None:
    curve = [{"step": 20, "forget_rate": 0.05}, {"step": 0, "forget_rate": 0.30}, {"step": 10, "forget_rate": 0.12},
             {"step": 30, "forget_rate": 0.01}, {"step": 40, "forget_rate": 0.20}]
    assert steps_to_forget(curve) == 20
    assert steps_to_forget(curve, threshold=0.01) == 30
    assert steps_to_forget([{"step": 0, "forget_rate": 0.3}, {"step": 60, "forget_rate": 0.06}]) is None
    assert steps_to_forget([{"step": 0, "forget_rate": 0.0}]) == 0


def test_the_frontier_reuses_finished_episodes_and_retries_failed_ones(tmp_path: Path) -> None:
    settings = FrontierSettings(tasks=(TASK,), lambdas=(0.3, 0.7), seeds=SEEDS[:2], budgets=(T // 2, T), horizon=T,
                                size=SampleSize(4, 2), sampler=Sampler("ddim", 2))
    finished = FrontierRecord(TASK, 0.3, SEEDS[0], "ok", points=[{"budget": T, "forget_rate": 0.1}])
    path = record_path(tmp_path, TASK, 0.3, SEEDS[0])
    path.parent.mkdir(parents=True)
    path.write_text(finished.to_json())
    built: list[str] = []

    def no_model(task: str) -> FrontierTask:
        built.append(task)
        raise RuntimeError("no model here")

    records = run_frontier(settings, no_model, tmp_path, log=lambda line: None)
    assert sorted(r.name for r in records) == sorted(f"{what}_seed{s}" for what in ("base", "lam0.3", "lam0.7")
                                                     for s in SEEDS[:2])
    failed = [r for r in records if r.status == "failed"]
    assert len(failed) == len(built) == 5 and all(r.error == "RuntimeError: no model here" for r in failed)
    assert FrontierRecord.load(record_path(tmp_path, TASK, None, SEEDS[1])).status == "failed"  # written too
    assert points_of(records) == [FrontierPoint(TASK, 0.3, SEEDS[0], T, {"forget_rate": 0.1})]
    built.clear()
    run_frontier(settings, no_model, tmp_path, log=lambda line: None)
    assert len(built) == 5  # the failed episodes again, never the finished one
