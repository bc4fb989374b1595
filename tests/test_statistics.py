"""Paired statistics, Wilson intervals, verdicts and aggregates: known values and coverage by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from evaluation.statistics import (
    MIN_PERCENTILE_PAIRS,
    PairedComparison,
    difference_interval,
    iqm,
    mean_interval,
    minimum_detectable_difference,
    paired_comparison,
    paired_p_value,
    probability_of_improvement,
    resolution,
    stratified_iqm,
    summarize,
    verdict,
    wilson_interval,
)

EXPERIMENTS = 2_000
TRUE_SHIFT, SHIFT_SD, PAIRS = 0.05, 0.02, 10


def compare(reference: np.ndarray, method: np.ndarray, better: str = "lower", **kwargs) -> PairedComparison:
    return paired_comparison(reference, method, metric="forget_rate", method="m", reference="ref", better=better,
                             **kwargs)


def shifted_experiments(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``EXPERIMENTS`` experiments of ``PAIRS`` seeds: reference values and method = reference + N(0.05, 0.02²)."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(0.3, 0.08, size=(EXPERIMENTS, PAIRS))
    return reference, reference + rng.normal(TRUE_SHIFT, SHIFT_SD, size=(EXPERIMENTS, PAIRS))


# ------------------------------------------------------------------------------- paired

@pytest.mark.parametrize("interval", ["t", "bca"])
@pytest.mark.parametrize("test", ["wilcoxon", "sign"])
def test_a_method_against_itself_has_zero_difference_and_a_zero_width_interval(interval: str, test: str) -> None:
    values = np.random.default_rng(0).uniform(0.2, 0.4, size=PAIRS)
    c = compare(values, values.copy(), interval=interval, test=test)
    assert c.n == PAIRS
    assert c.mean_difference == 0.0
    assert (c.ci_low, c.ci_high) == (0.0, 0.0)
    assert c.p_value == 1.0
    assert c.probability_of_improvement == 0.5
    assert c.improves is None
    assert (c.interval, c.test) == (interval, test)


def test_the_t_interval_recovers_a_known_shift_with_its_nominal_coverage() -> None:
    reference, method = shifted_experiments(seed=1)
    comparisons = [compare(r, m, better="higher") for r, m in zip(reference, method)]
    coverage = np.mean([c.ci_low <= TRUE_SHIFT <= c.ci_high for c in comparisons])
    print(f"t-interval coverage at n={PAIRS}: {coverage:.3f}")
    assert 0.93 <= coverage <= 0.97
    assert np.mean([c.mean_difference for c in comparisons]) == pytest.approx(TRUE_SHIFT, abs=1e-3)
    # a 2.5-SD shift over 10 seeds is found in almost every experiment, and in the right direction
    assert np.mean([c.improves is True for c in comparisons]) > 0.99


def test_bca_undercovers_at_ten_pairs_which_is_why_t_is_the_default() -> None:
    reference, method = shifted_experiments(seed=2)
    differences = method - reference
    t = np.mean([lo <= TRUE_SHIFT <= hi for lo, hi in (difference_interval(d, "t") for d in differences)])
    bca = np.mean([lo <= TRUE_SHIFT <= hi for lo, hi in
                   (difference_interval(d, "bca", seed=i, n_resamples=2_000) for i, d in enumerate(differences))])
    print(f"coverage at n={PAIRS}: t {t:.3f}, BCa {bca:.3f}")
    assert bca >= 0.88
    assert bca < t


def test_bca_is_reproducible_from_its_seed() -> None:
    d = np.random.default_rng(3).normal(size=12)
    assert difference_interval(d, "bca", seed=7) == difference_interval(d, "bca", seed=7)


def test_lower_and_higher_are_opposite_sign_conventions() -> None:
    reference = np.array([0.30, 0.25, 0.41, 0.22, 0.35])
    method = reference - np.array([0.05, 0.04, 0.07, 0.03, 0.06])  # lower trouser rate on every seed
    lower = compare(reference, method, better="lower")
    higher = compare(reference, method, better="higher")
    assert lower.mean_difference == higher.mean_difference == pytest.approx(-0.05)
    assert lower.ci_high < 0
    assert lower.improves is True and higher.improves is False
    assert lower.probability_of_improvement > 0.5 > higher.probability_of_improvement
    assert lower.p_value == higher.p_value


def test_probability_of_improvement_is_rliables_share_of_winning_pairs() -> None:
    method, reference = np.array([1.0, 2.0, 3.0]), np.array([0.5, 2.5, 4.0])
    # higher is better: of the 9 (method, reference) pairs the method wins (1,0.5), (2,0.5), (3,0.5), (3,2.5)
    assert probability_of_improvement(method, reference, "higher") == pytest.approx(4 / 9)
    assert probability_of_improvement(method, reference, "lower") == pytest.approx(5 / 9)


def test_p_values_are_exact_for_ten_seeds_all_in_one_direction() -> None:
    d = np.linspace(0.01, 0.10, PAIRS)  # all positive, no ties: both tests' smallest two-sided p, 2 / 2^10
    assert paired_p_value(d, "wilcoxon") == pytest.approx(2 / 2**PAIRS)
    assert paired_p_value(d, "sign") == pytest.approx(2 / 2**PAIRS)
    assert paired_p_value(np.zeros(5), "wilcoxon") == paired_p_value(np.zeros(5), "sign") == 1.0


def test_nan_pairs_are_dropped_and_counted() -> None:
    reference = np.array([0.3, np.nan, 0.2, 0.4, 0.25])
    method = np.array([0.2, 0.1, np.nan, 0.3, 0.2])
    c = compare(reference, method)
    assert c.n == 3
    assert c.mean_difference == pytest.approx(np.mean([-0.1, -0.1, -0.05]))


def test_one_pair_has_no_interval() -> None:
    c = compare(np.array([0.3]), np.array([0.1]))
    assert c.n == 1 and math.isnan(c.ci_low) and math.isnan(c.ci_high)
    assert c.improves is None


def test_the_percentile_bootstrap_refuses_fewer_than_twenty_pairs() -> None:
    small = np.random.default_rng(4).normal(size=MIN_PERCENTILE_PAIRS - 1)
    with pytest.raises(ValueError, match="at least 20 pairs"):
        compare(small, small + 0.1, interval="percentile")
    enough = np.random.default_rng(4).normal(size=MIN_PERCENTILE_PAIRS)
    c = compare(enough, enough + np.random.default_rng(5).normal(0.5, 0.1, size=MIN_PERCENTILE_PAIRS),
                better="higher", interval="percentile")
    assert c.ci_low < 0.5 < c.ci_high and c.improves is True


def test_mismatched_arrays_and_unknown_options_are_refused() -> None:
    with pytest.raises(ValueError, match="aligned by seed"):
        compare(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="direction"):
        compare(np.zeros(3), np.zeros(3), better="smaller")
    with pytest.raises(ValueError, match="interval kind"):
        compare(np.zeros(3), np.zeros(3), interval="wald")


# --------------------------------------------------------------------------------- rates

def wilson_closed_form(k: int, n: int, z: float = stats.norm.ppf(0.975)) -> tuple[float, float]:
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


@pytest.mark.parametrize("k", [0, 51, 256, 512])
def test_wilson_interval_matches_the_closed_form(k: int) -> None:
    lo, hi = wilson_interval(k, 512)
    assert (lo, hi) == pytest.approx(wilson_closed_form(k, 512), abs=1e-12)
    ci = stats.binomtest(k, 512).proportion_ci(method="wilson")
    assert (lo, hi) == pytest.approx((ci.low, ci.high))


def test_wilson_interval_known_values() -> None:
    assert wilson_interval(0, 512) == pytest.approx((0.0, 0.0074470), abs=1e-7)
    assert wilson_interval(51, 512) == pytest.approx((0.0765759, 0.1286063), abs=1e-7)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_wilson_interval_covers_a_five_percent_rate_at_512_samples() -> None:
    n, p = 512, 0.05
    draws = np.random.default_rng(6).binomial(n, p, size=4_000)
    intervals = {k: wilson_interval(int(k), n) for k in np.unique(draws)}
    coverage = np.mean([intervals[k][0] <= p <= intervals[k][1] for k in draws])
    print(f"Wilson coverage at p={p}, n={n}: {coverage:.3f}")
    assert coverage >= 0.94


# ---------------------------------------------------------------------------- resolution

def test_resolution_is_the_half_width_of_the_t_interval() -> None:
    d = np.random.default_rng(7).normal(0.0, 0.03, size=8)
    lo, hi = difference_interval(d, "t")
    assert (hi - lo) / 2 == pytest.approx(resolution(float(d.std(ddof=1)), len(d)))
    assert math.isnan(resolution(0.03, 1))


def test_minimum_detectable_difference_is_detected_with_the_stated_power() -> None:
    mdd = minimum_detectable_difference(SHIFT_SD, PAIRS, power=0.8)
    assert mdd > resolution(SHIFT_SD, PAIRS)
    d = np.random.default_rng(8).normal(mdd, SHIFT_SD, size=(EXPERIMENTS, PAIRS))
    detected = np.mean([difference_interval(x, "t")[0] > 0 for x in d])
    assert 0.77 <= detected <= 0.83
    assert minimum_detectable_difference(0.0, PAIRS) == 0.0


# -------------------------------------------------------------------------------- verdict

def cell(method: str, metric: str, improves: bool | None) -> PairedComparison:
    sign = {True: -1.0, False: 1.0, None: 0.0}[improves]
    return PairedComparison(
        metric=metric, method=method, reference="static_0.5", better="lower", n=5, mean_difference=sign * 0.1,
        ci_low=sign * 0.1 - 0.05, ci_high=sign * 0.1 + 0.05, interval="t", confidence=0.95,
        probability_of_improvement=0.5, p_value=0.5, test="wilcoxon", improves=improves,
    )


def test_verdict_covers_all_four_outcomes_and_names_what_is_worse() -> None:
    forget, retain = ["forget_rate", "kid_forget"], ["kid_retain", "acc_retain"]
    table = [
        cell("both", "forget_rate", True), cell("both", "kid_retain", True), cell("both", "acc_retain", None),
        cell("forget", "forget_rate", True), cell("forget", "kid_forget", None), cell("forget", "kid_retain", False),
        cell("retain", "forget_rate", None), cell("retain", "acc_retain", True),
        cell("neither", "forget_rate", True), cell("neither", "kid_forget", False), cell("neither", "kid_retain", None),
        cell("neither", "loss_gap", True),  # on neither side: ignored
    ]
    v = verdict(table, forget, retain)
    assert list(v) == ["both", "forget", "retain", "neither"]
    assert {m: x.outcome for m, x in v.items()} == {m: m if m != "forget" else "forgetting" for m in v}
    assert v["forget"].retain == "worse" and v["forget"].worse_on == ("kid_retain",)
    assert v["forget"].text == "beats `static_0.5` on forgetting only; worse on kid_retain"
    assert v["neither"].forgetting == "mixed" and v["neither"].retain == "no difference"
    assert v["both"].text == "beats `static_0.5` on forgetting and on retain quality"
    assert v["retain"].forgetting == "no difference"


def test_verdict_from_real_comparisons() -> None:
    reference = np.array([0.30, 0.25, 0.41, 0.22, 0.35])
    better_rate = compare(reference, reference - 0.05)
    same_kid = paired_comparison(reference, reference, metric="kid_retain", method="m", reference="ref",
                                 better="lower")
    v = verdict([better_rate, same_kid], ["forget_rate"], ["kid_retain"])["m"]
    assert (v.forgetting, v.retain, v.outcome) == ("better", "no difference", "forgetting")


def test_verdict_refuses_inconsistent_tables() -> None:
    with pytest.raises(ValueError, match="both the forget and the retain side"):
        verdict([], ["kid_retain"], ["kid_retain"])
    with pytest.raises(ValueError, match="two comparisons"):
        verdict([cell("a", "forget_rate", True)] * 2, ["forget_rate"], [])


# ----------------------------------------------------------------------------- aggregates

def test_summary_uses_a_t_interval_not_the_range_of_three_seeds() -> None:
    seeds = np.array([7, 8, 13]) / 32  # the base row of the old README: the percentile bootstrap gave [min, max]
    s = summarize(seeds)
    half = stats.t.ppf(0.975, 2) * seeds.std(ddof=1) / math.sqrt(3)
    assert (s.mean_lo, s.mean_hi) == pytest.approx((seeds.mean() - half, seeds.mean() + half))
    assert s.mean_lo < seeds.min() and s.mean_hi > seeds.max()
    assert s.n == 3 and s.iqm == pytest.approx(seeds.mean())
    mean, lo, hi = mean_interval([0.2, 0.2, 0.2])
    assert mean == lo == hi == pytest.approx(0.2)
    assert summarize([0.2, np.nan]).n == 1 and math.isnan(summarize([0.2]).mean_lo)


def test_iqm_trims_a_quarter_from_each_end() -> None:
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)
    assert iqm([1.0, 2.0, 30.0]) == pytest.approx(11.0)  # below 4 values the IQM is the mean
    assert math.isnan(iqm([]))


def test_stratified_iqm_contains_the_true_iqm() -> None:
    rng = np.random.default_rng(9)
    means, sd, seeds = np.array([0.1, 0.3, 0.5, 0.7]), 0.1, 10
    population = (means + sd * rng.standard_normal((200_000, len(means)))).ravel()
    true_iqm = stats.trim_mean(population, 0.25)
    grid = means + sd * rng.standard_normal((seeds, len(means)))
    scores = {f"task{j}": grid[:, j] for j in range(len(means))}
    point, lo, hi = stratified_iqm(scores, reps=2_000, seed=0)
    assert point == pytest.approx(stats.trim_mean(grid.ravel(), 0.25))
    assert lo <= true_iqm <= hi
    assert hi - lo < 0.2


def test_stratified_iqm_resamples_seeds_within_tasks_only() -> None:
    # every seed of a task agrees, so resampling within tasks changes nothing; pooled resampling would
    scores = {"a": np.full(6, 0.1), "b": np.full(6, 0.5), "c": np.full(6, 0.9), "d": np.full(6, 1.3)}
    point, lo, hi = stratified_iqm(scores, reps=500)
    assert point == lo == hi == pytest.approx(0.7)


def test_stratified_iqm_is_seeded_and_leaves_the_global_generator_alone() -> None:
    scores = {t: np.random.default_rng(i).normal(size=5) for i, t in enumerate("abc")}
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    first = stratified_iqm(scores, reps=500, seed=1)
    assert np.random.rand() == expected_next
    assert stratified_iqm(scores, reps=500, seed=1) == first
    assert stratified_iqm(scores, reps=500, seed=2) != first


def test_stratified_iqm_refuses_ragged_or_missing_scores() -> None:
    with pytest.raises(ValueError, match="same number of seeds"):
        stratified_iqm({"a": [1.0, 2.0], "b": [1.0]})
    with pytest.raises(ValueError, match="non-finite"):
        stratified_iqm({"a": [1.0, np.nan], "b": [1.0, 2.0]})
