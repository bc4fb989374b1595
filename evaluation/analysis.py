"""The benchmark's numbers from its run records: summaries, paired comparisons, verdicts, resolution, costs.

Everything here is computed from :class:`~evaluation.runs.RunRecord` lists with the functions of
:mod:`evaluation.statistics`; :mod:`evaluation.report` formats it.

Scopes. Rows are per task (``task`` = the task's text) and, when several tasks were evaluated,
pooled over them (``task`` = :data:`ALL_TASKS`): the mean and the paired comparisons over every
(task, seed) pair, the IQM with rliable's stratified bootstrap over tasks × seeds.

Summary cells (``summary.csv``): the mean with its Student-t 95 % interval and n; the IQM (25 %
trimmed mean) only from :data:`MIN_IQM_RUNS` values on (below that it is the mean, or close to
it, and says nothing more), with an interval only when pooled over tasks and only for
:data:`IQM_INTERVAL_METRICS` (rliable's bootstrap takes about a CPU-second per metric and method).

Paired comparisons (``paired.csv``): every method, the reference included (its own row is the
self-check: zero difference, zero-width interval), against the reference on every metric with a
direction (:data:`DIRECTIONS`), over the (task, seed) pairs both ran successfully.

Verdict (:data:`FORGET_VERDICT_METRICS`, :data:`RETAIN_VERDICT_METRICS`): from
:func:`evaluation.statistics.verdict` on the pooled comparisons. Retain side: pooled retain KID,
judge accuracy, SSIM to the base model and IS, plus the clean-digit KID and accuracy of a task
family; the per-class KIDs are in ``paired.csv`` but not in the verdict, since nine more intervals
would make a spurious "better" or "worse" call likely (about 1 - 0.975^9 = 20 % per side for
methods that do not differ).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from evaluation import statistics
from evaluation.runs import RunRecord
from evaluation.statistics import Direction, IntervalKind, PairedComparison, TestKind, Verdict

ALL_TASKS = "all"
"""The ``task`` of rows pooled over every evaluated task."""
MIN_IQM_RUNS = 4
"""The IQM is reported from this many values on: below, it cuts nothing (or one value) and equals about the mean."""
IQM_INTERVAL_METRICS: tuple[str, ...] = ("forget_rate", "forget_digit_share", "kid_retain", "acc_retain")
"""Metrics whose pooled IQM gets its stratified-bootstrap interval: the report's IQM table."""

_FIXED_DIRECTIONS: dict[str, Direction] = {
    "forget_rate": "lower", "p_concept": "lower", "forget_digit_share": "higher", "neither_forget": "lower",
    "validator_forget_rate": "lower", "validator_agreement": "higher", "kid_forget": "lower", "fid_forget": "lower",
    "kid_forget_concept": "higher", "fid_forget_concept": "higher", "kid_retain": "lower", "fid_retain": "lower",
    "is_retain": "higher", "acc_retain": "higher", "ssim_retain": "higher", "neither_retain": "lower",
    "loss_gap": "higher", "kid_retain_clean": "lower", "acc_retain_clean": "higher", "steps_to_forget": "lower",
    "forgotten_in_budget": "higher", "episode_return": "higher", "ms_per_update": "lower",
}
"""Which way each compared metric is better. ``loss_gap`` (forget-set loss minus unseen-concept loss) is
better higher: a model that still fits its forget set better than unseen images of the concept has a
negative gap; the oracle's gap is the yardstick. The two losses themselves, the interval bounds
(``forget_rate_lo``/``_hi``) and the sample sizes (``n_*``) are not compared."""

FORGET_VERDICT_METRICS: tuple[str, ...] = ("forget_rate", "forget_digit_share", "kid_forget", "loss_gap",
                                           "steps_to_forget")
RETAIN_VERDICT_METRICS: tuple[str, ...] = ("kid_retain", "acc_retain", "ssim_retain", "is_retain", "kid_retain_clean",
                                           "acc_retain_clean")
ORACLE_GAP_METRICS: tuple[str, ...] = ("forget_rate", "forget_digit_share", "kid_forget", "loss_gap", "kid_retain",
                                       "acc_retain", "kid_retain_clean", "acc_retain_clean")
RESOLUTION_METRICS: tuple[str, ...] = ("forget_rate", "kid_retain")
RUN_VALUES: tuple[str, ...] = ("episode_return", "ms_per_update", "wall_seconds")
"""Per-run values summarised beside the metrics."""


def direction(metric: str) -> Direction | None:
    """Which way ``metric`` is better (per-class ``kid_retain_<c>`` lower, ``acc_<c>`` higher); None: not compared."""
    if metric in _FIXED_DIRECTIONS:
        return _FIXED_DIRECTIONS[metric]
    if re.fullmatch(r"kid_retain_\d+|fid_retain_\d+", metric):
        return "lower"
    if re.fullmatch(r"acc_\d+", metric):
        return "higher"
    return None


def value(record: RunRecord, metric: str) -> float:
    """``metric`` of one run (a metric, or one of :data:`RUN_VALUES`); NaN where the run has none."""
    if metric == "episode_return":
        raw = record.episode_return
    elif metric == "ms_per_update":
        raw = record.ms_per_update
    elif metric == "wall_seconds":
        raw = record.wall_seconds
    else:
        raw = record.metrics.get(metric)
    return math.nan if raw is None else float(raw)


def metric_names(records: Sequence[RunRecord]) -> list[str]:
    """Every metric key of ``records``: SPEC §6 order (:data:`FIRST_METRICS`) first, then the rest, naturally sorted."""
    seen = {key for record in records for key in record.metrics}
    return [m for m in FIRST_METRICS if m in seen] + sorted(seen - set(FIRST_METRICS), key=_natural_key)


FIRST_METRICS: tuple[str, ...] = (
    "forget_rate", "forget_rate_lo", "forget_rate_hi", "p_concept", "forget_digit_share", "neither_forget",
    "validator_forget_rate", "validator_agreement", "kid_forget", "fid_forget", "kid_forget_concept",
    "fid_forget_concept", "steps_to_forget", "forgotten_in_budget", "kid_retain", "fid_retain", "kid_retain_clean",
    "acc_retain_clean", "is_retain", "acc_retain", "ssim_retain", "neither_retain", "loss_forget_set",
    "loss_heldout_concept", "loss_gap", "n_forget", "n_retain", "n_ref_forget", "n_ref_retain", "n_ref_concept",
)
"""Metric columns in the order of SPEC §6 (``evaluation.metrics``); per-class KIDs and accuracies follow."""


def _natural_key(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def _ok(records: Sequence[RunRecord], method: str, task: str | None = None) -> list[RunRecord]:
    return [r for r in records if r.method == method and r.status == "ok" and (task is None or r.task == task)]


def scopes(tasks: Sequence[str]) -> list[str]:
    """The scopes of the rows: each task, then :data:`ALL_TASKS` when there are several."""
    return [*tasks, ALL_TASKS] if len(tasks) > 1 else list(tasks)


def pooled_scope(tasks: Sequence[str]) -> str:
    """The scope the verdict and the resolution read: the pooled one, or the single task."""
    return ALL_TASKS if len(tasks) > 1 else tasks[0]


# ----------------------------------------------------------------------------------- summary

SUMMARY_COLUMNS: tuple[str, ...] = ("task", "method", "metric", "n", "mean", "mean_lo", "mean_hi", "std", "iqm",
                                    "iqm_lo", "iqm_hi")


def summarize(records: Sequence[RunRecord], methods: Sequence[str], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """``summary.csv`` rows: per scope, method and metric, the mean with its t-interval, SD and IQM (module docstring)."""
    rows = []
    for scope in scopes(tasks):
        for method in methods:
            ok = _ok(records, method, None if scope == ALL_TASKS else scope)
            for metric in [*metric_names(ok), *RUN_VALUES]:
                values = np.array([value(r, metric) for r in ok], dtype=float)
                finite = values[np.isfinite(values)]
                if len(finite) == 0:
                    continue
                s = statistics.summarize(finite)
                row: dict[str, Any] = {"task": scope, "method": method, "metric": metric, "n": s.n, "mean": s.mean,
                                       "mean_lo": s.mean_lo, "mean_hi": s.mean_hi, "std": s.std,
                                       "iqm": s.iqm if s.n >= MIN_IQM_RUNS else None, "iqm_lo": None, "iqm_hi": None}
                if scope == ALL_TASKS and s.n >= MIN_IQM_RUNS and metric in IQM_INTERVAL_METRICS:
                    row["iqm"], row["iqm_lo"], row["iqm_hi"] = _stratified(ok, metric, tasks)
                rows.append(row)
    return rows


def _stratified(ok: Sequence[RunRecord], metric: str, tasks: Sequence[str]) -> tuple[float | None, ...]:
    """rliable's stratified-bootstrap IQM over tasks × seeds; blank unless every task has the same finite runs."""
    per_task = {task: [value(r, metric) for r in sorted(ok, key=lambda r: r.seed) if r.task == task] for task in tasks}
    counts = {len(v) for v in per_task.values()}
    if len(counts) != 1 or 0 in counts or not all(np.all(np.isfinite(v)) for v in per_task.values()):
        return None, None, None
    return statistics.stratified_iqm(per_task)


def cell(summary: Sequence[dict[str, Any]], scope: str, method: str, metric: str) -> dict[str, Any] | None:
    """The summary row of one scope, method and metric, if any."""
    return next((r for r in summary if (r["task"], r["method"], r["metric"]) == (scope, method, metric)), None)


# ------------------------------------------------------------------------ paired comparisons

PAIRED_COLUMNS: tuple[str, ...] = ("task", "method", "reference", "metric", "better", "n", "mean_difference", "ci_low",
                                   "ci_high", "interval", "confidence", "sd_difference", "probability_of_improvement",
                                   "p_value", "test", "improves")


@dataclass(frozen=True)
class PairedRow:
    """A :class:`~evaluation.statistics.PairedComparison` of one scope, with the SD of its differences."""

    task: str
    comparison: PairedComparison
    sd_difference: float

    def to_row(self) -> dict[str, Any]:
        """A ``paired.csv`` row."""
        return {"task": self.task, **asdict(self.comparison), "sd_difference": self.sd_difference}


def _pairs(records: Sequence[RunRecord], method: str, reference: str, metric: str, scope: str
           ) -> tuple[np.ndarray, np.ndarray]:
    """Reference and method values aligned by (task, seed), over the runs both finished (NaN where one lacks it)."""
    ref = {(r.task, r.seed): value(r, metric) for r in _ok(records, reference, None if scope == ALL_TASKS else scope)}
    new = {(r.task, r.seed): value(r, metric) for r in _ok(records, method, None if scope == ALL_TASKS else scope)}
    keys = sorted(ref.keys() & new.keys())
    return np.array([ref[k] for k in keys], dtype=float), np.array([new[k] for k in keys], dtype=float)


def paired(
    records: Sequence[RunRecord],
    methods: Sequence[str],
    reference: str,
    tasks: Sequence[str],
    interval: IntervalKind = "t",
    test: TestKind = "wilcoxon",
    metrics: Sequence[str] | None = None,
) -> list[PairedRow]:
    """Every method (the reference too) against ``reference`` on every directed metric, per scope."""
    rows = []
    names = metrics if metrics is not None else [m for m in [*metric_names(records), *RUN_VALUES] if direction(m)]
    for scope in scopes(tasks):
        for method in methods:
            for metric in names:
                better = direction(metric)
                ref, new = _pairs(records, method, reference, metric, scope)
                # Per-class metrics exist on some tasks only (a task's forget digit has none): no row without a pair.
                if better is None or not np.isfinite(new - ref).any():
                    continue
                comparison = statistics.paired_comparison(ref, new, metric=metric, method=method, reference=reference,
                                                          better=better, interval=interval, test=test)
                d = (new - ref)[np.isfinite(new - ref)]
                rows.append(PairedRow(scope, comparison, float(d.std(ddof=1)) if len(d) > 1 else math.nan))
    return rows


def verdicts(rows: Sequence[PairedRow], scope: str, reference: str) -> dict[str, Verdict]:
    """The verdict of every method but the reference, from the comparisons of ``scope``."""
    comparisons = [r.comparison for r in rows if r.task == scope and r.comparison.method != reference]
    return statistics.verdict(comparisons, FORGET_VERDICT_METRICS, RETAIN_VERDICT_METRICS)


@dataclass(frozen=True)
class Resolution:
    """What one method's comparison with the reference resolves on one metric."""

    method: str
    metric: str
    n: int
    sd_difference: float
    half_width: float
    """:func:`~evaluation.statistics.resolution`: the smallest mean difference whose 95 % t-interval excludes 0."""
    detectable: float
    """:func:`~evaluation.statistics.minimum_detectable_difference` at 80 % power."""


def resolutions(rows: Sequence[PairedRow], scope: str, reference: str,
                metrics: Sequence[str] = RESOLUTION_METRICS) -> list[Resolution]:
    """Resolution and minimum detectable difference of every method's comparison with the reference."""
    out = []
    for row in rows:
        c = row.comparison
        if row.task != scope or c.method == reference or c.metric not in metrics or not math.isfinite(row.sd_difference):
            continue
        out.append(Resolution(c.method, c.metric, c.n, row.sd_difference,
                              statistics.resolution(row.sd_difference, c.n),
                              statistics.minimum_detectable_difference(row.sd_difference, c.n)))
    return out


# -------------------------------------------------------------------------------------- costs

@dataclass(frozen=True)
class Cost:
    """A method's data needs and cost per update, from the registry and its runs."""

    method: str
    data: str
    passes: str
    ms_per_update: float | None
    """Mean over its runs of episode seconds (probes excluded) per update; None without updates."""
    runs: int
    """Successful runs."""
    diverged: int
    """Runs whose episode diverged (scored when the weights stayed finite, else status ``diverged``)."""


def costs(records: Sequence[RunRecord], methods: Sequence[tuple[str, str, str]]) -> list[Cost]:
    """``methods`` as (name, data, passes); the measured ms per update of each from its successful runs."""
    out = []
    for name, data, passes in methods:
        ok = _ok(records, name)
        ms = [r.ms_per_update for r in ok if r.ms_per_update is not None]
        diverged = sum(1 for r in records if r.method == name and r.diverged)
        out.append(Cost(name, data, passes, float(np.mean(ms)) if ms else None, len(ok), diverged))
    return out
