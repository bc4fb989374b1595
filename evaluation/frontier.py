"""The static-λ frontier: what constant λ achieves at several budgets, on tuning seeds, and the best static λ.

For every task of the frontier, every λ of :data:`FRONTIER_LAMBDAS` and every tuning seed
(:func:`unlearn_env.seeds.tuning_seeds`, never an evaluation or training seed), one static-λ
episode of the longest budget runs (an env whose horizon is that budget); the model is scored
when the episode passes each budget (:data:`BUDGET_FRACTIONS` of the preset's horizon T: T/4,
T/2, T and 2T by default), with the env's probe losses of the same weights beside the scores.
Reading the budgets off one long episode is exact: an episode's first b updates do not depend
on its horizon (the minibatch stream is the seed's), so the budget-T point of λ on a seed is the
static:λ run of that seed. The base model is scored on every tuning seed too (budget 0).

Records are cached in ``<out>/frontier/runs/<task>/`` (``lam<λ>_seed<s>.json``, ``base_seed<s>.json``),
one per episode, resumable like the benchmark's runs: finished ones are skipped, failed ones
retried, other settings refused (``<out>/frontier/settings.json``).

**The best static λ** (:func:`choose_static_lambda`), chosen on the tuning seeds at the preset's
budget T, pooled over the frontier's tasks × tuning seeds: among the λ whose mean retain KID is at
most the base model's mean retain KID plus its standard error across those seeds (the base
model's own seed-to-seed noise: a λ within it costs no measurable retain quality), the λ with
the highest mean share of forget-label samples drawn as the forget digit (which penalises both
a concept that remains and a collapse to noise or to another class); ties go to the lower mean
forget rate, then to the smaller λ. A λ that diverged or failed on any seed is not eligible. If
no λ meets the retain bound, the λ with the lowest mean retain KID is taken (and the report says
so). It is then run on the evaluation seeds as the benchmark's reference ``static:<λ*>``.

**Beyond the front** (:func:`front_position`): at budget T, method M *dominates* static λ when
M's mean is at least as good as λ's on both forget rate and retain KID and, on at least one of
them, M's 95 % interval lies wholly on the better side of λ's. M is *beyond the static front*
when it dominates every λ; the report also lists the λ each method dominates and the λ that
dominate it. Method points come from the evaluation seeds, the frontier from the tuning seeds:
the intervals are unpaired.

**Headroom** (:func:`headroom`): at each budget, the best and the worst static λ (by mean) on
forget rate, forget-digit share and retain KID, and how far apart they are: what an adaptive λ
can gain over a constant one at that budget.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from evaluation import statistics
from evaluation.runs import RunStatus
from evaluation.sampling import Sampler
from evaluation.scoring import SampleSize, TaskScorer
from unlearn_env.cache import atomic_write_text
from unlearn_env.env import UnlearningEnv

FRONTIER_LAMBDAS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BUDGET_FRACTIONS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
"""Budgets as fractions of the preset's horizon T; T itself must be one (the best λ is chosen there)."""
CHOICE_METRIC = "forget_digit_share"
RETAIN_METRIC = "kid_retain"
TIE_METRIC = "forget_rate"
TIE_DECIMALS = 9
"""Mean shares equal to this many decimals are a tie."""
FRONT_METRICS: tuple[str, str] = ("forget_rate", "kid_retain")
"""The two axes of "beyond the front", both better lower."""
FRONTIER_METRICS: tuple[str, ...] = (
    "forget_rate", "forget_digit_share", "neither_forget", "kid_forget", "kid_retain", "kid_retain_clean",
    "acc_retain", "acc_retain_clean", "ssim_retain", "loss_gap", "probe_loss_retain", "probe_loss_forget",
)
"""What ``frontier.csv`` aggregates (mean and t-interval over tasks × tuning seeds)."""
BASE = "base"
"""The ``lam`` of the base model's rows (budget 0)."""


def budgets_of(horizon: int, fractions: Sequence[float] = BUDGET_FRACTIONS) -> tuple[int, ...]:
    """The budgets (update counts, ascending, distinct, >= 1) of ``fractions`` of ``horizon``; T must be among them."""
    if 1.0 not in fractions:
        raise ValueError(f"the budgets must include the preset's horizon (fraction 1), got {list(fractions)}")
    if min(fractions) <= 0:
        raise ValueError(f"budget fractions must be positive, got {list(fractions)}")
    return tuple(sorted({max(1, round(f * horizon)) for f in fractions}))


@dataclass(frozen=True)
class FrontierSettings:
    """What the frontier's records depend on (``<out>/frontier/settings.json``)."""

    tasks: tuple[str, ...]
    lambdas: tuple[float, ...]
    seeds: tuple[int, ...]
    budgets: tuple[int, ...]
    horizon: int
    """The preset's budget T, at which the best λ is chosen."""
    size: SampleSize
    sampler: Sampler

    def __post_init__(self) -> None:
        if self.horizon not in self.budgets:
            raise ValueError(f"the budgets {self.budgets} must include the horizon {self.horizon}")
        if len(self.seeds) < 2:
            raise ValueError(f"the best static λ needs at least 2 tuning seeds (a standard error), got {len(self.seeds)}")
        bad = [lam for lam in self.lambdas if not 0 < lam < 1]
        if bad or not self.lambdas:
            raise ValueError(f"frontier λ must lie in (0, 1), got {list(self.lambdas)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form (lists for tuples)."""
        return {"tasks": list(self.tasks), "lambdas": list(self.lambdas), "seeds": list(self.seeds),
                "budgets": list(self.budgets), "horizon": self.horizon, "size": asdict(self.size),
                "sampler": self.sampler.name}


@dataclass
class FrontierRecord:
    """One frontier episode (one λ, or the base model, on one task and tuning seed) and its scores per budget."""

    task: str
    lam: float | None
    """``None``: the base model (one point, budget 0)."""
    seed: int
    status: RunStatus
    points: list[dict[str, float]] = field(default_factory=list)
    """One per budget reached: ``budget``, the metrics, ``probe_loss_retain``, ``probe_loss_forget``."""
    diverged: bool = False
    """The episode diverged: budgets after that step have no point."""
    seconds: float = 0.0
    error: str = ""
    traceback: str = ""

    @property
    def name(self) -> str:
        """The record's file stem: ``lam0.3_seed1000`` or ``base_seed1000``."""
        return f"{BASE if self.lam is None else f'lam{self.lam:g}'}_seed{self.seed}"

    def to_json(self) -> str:
        """Indented JSON."""
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def load(cls, path: Path) -> FrontierRecord:
        """Read a record written by :meth:`to_json`."""
        return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class FrontierTask:
    """What the frontier needs of one task: its scorer, the base model, and an env whose horizon is the longest budget."""

    scorer: TaskScorer
    base_unet: nn.Module
    env: UnlearningEnv


def record_path(root: Path, task: str, lam: float | None, seed: int) -> Path:
    """Where a frontier record lives under ``<out>/frontier``."""
    return root / "runs" / task / f"{FrontierRecord(task, lam, seed, 'ok').name}.json"


def run_frontier(
    settings: FrontierSettings,
    context: Callable[[str], FrontierTask],
    root: Path,
    log: Callable[[str], None] = print,
) -> list[FrontierRecord]:
    """Every frontier record of ``settings`` (from ``root``'s cache where finished), running the missing ones.

    ``context(task)`` builds (or returns) a task's :class:`FrontierTask`; it is only called for a
    task with work left. A run that raises is recorded as failed and the others go on.
    """
    records = []
    for task in settings.tasks:
        for seed in settings.seeds:
            for lam in (None, *settings.lambdas):
                path = record_path(root, task, lam, seed)
                if path.exists():
                    previous = FrontierRecord.load(path)
                    if previous.status == "ok":
                        records.append(previous)
                        continue
                start = time.perf_counter()
                try:
                    record = _episode(settings, context(task), task, lam, seed)
                except Exception as err:  # noqa: BLE001 - a failed run is recorded and the others go on
                    record = FrontierRecord(task, lam, seed, "failed", error=f"{type(err).__name__}: {err}",
                                            traceback=traceback.format_exc())
                record.seconds = time.perf_counter() - start
                what = "base model" if lam is None else f"static λ={lam:g}"
                log(f"frontier {task} {what} seed {seed}: "
                    + (f"FAILED: {record.error}" if record.status == "failed" else _describe(record))
                    + f" ({record.seconds:.0f} s)")
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(record.to_json(), path)
                records.append(record)
    return records


def _describe(record: FrontierRecord) -> str:
    parts = [f"T={p['budget']:g}: forget rate {p['forget_rate']:.3f}, retain KID {p['kid_retain']:.4f}"
             for p in record.points]
    return "; ".join(parts) + ("; diverged" if record.diverged else "")


def _episode(settings: FrontierSettings, ctx: FrontierTask, task: str, lam: float | None, seed: int) -> FrontierRecord:
    """Score the base model (``lam`` None) or run one static-λ episode of the longest budget, scoring each budget."""
    env, scorer = ctx.env, ctx.scorer
    base_samples, labels = scorer.base_samples(ctx.base_unet, seed, settings.size, settings.sampler)
    record = FrontierRecord(task, lam, seed, "ok")
    _, info = env.reset(seed=seed)

    def score(budget: int, info: dict[str, Any]) -> None:
        samples, _ = scorer.sample(env.unet, seed, settings.size, settings.sampler)
        metrics = scorer.score(env.unet, samples, labels, base_samples, seed)
        losses = {key: float(info[key]) for key in ("probe_loss_retain", "probe_loss_forget")}
        record.points.append({"budget": budget, **metrics, **losses})

    if lam is None:
        score(0, info)
        return record
    budgets = set(settings.budgets)
    for _ in range(max(settings.budgets)):
        _, _, terminated, truncated, info = env.step(np.array([lam], dtype=np.float32))
        if info["diverged"]:
            record.diverged = True
            break
        if info["step"] in budgets:
            score(info["step"], info)
        if terminated or truncated:
            break
    return record


# ------------------------------------------------------------------------------ the numbers

@dataclass(frozen=True)
class FrontierPoint:
    """One score of the frontier: a task, λ (``None``: the base model), a tuning seed and a budget."""

    task: str
    lam: float | None
    seed: int
    budget: int
    metrics: dict[str, float]


def points_of(records: Sequence[FrontierRecord]) -> list[FrontierPoint]:
    """Every point of the successful records."""
    return [FrontierPoint(r.task, r.lam, r.seed, int(p["budget"]), {k: v for k, v in p.items() if k != "budget"})
            for r in records if r.status == "ok" for p in r.points]


def _values(points: Sequence[FrontierPoint], lam: float | None, budget: int, metric: str) -> dict[tuple[str, int], float]:
    return {(p.task, p.seed): float(p.metrics[metric]) for p in points
            if p.lam == lam and p.budget == budget and metric in p.metrics and math.isfinite(p.metrics[metric])}


@dataclass(frozen=True)
class StaticChoice:
    """The best static λ and how :func:`choose_static_lambda` found it."""

    lam: float
    budget: int
    base_kid_retain: float
    """The base model's mean retain KID over the tuning (task, seed) pairs."""
    base_kid_retain_se: float
    """Its standard error across them (SD / sqrt(n))."""
    bound: float
    """``base_kid_retain + base_kid_retain_se``: the largest mean retain KID an eligible λ may have."""
    eligible: tuple[float, ...]
    fallback: bool
    """No λ met the bound: the λ with the lowest mean retain KID was taken."""
    means: dict[str, dict[str, float]]
    """Per λ (as text): mean forget-digit share, forget rate and retain KID at ``budget``."""

    @property
    def spec(self) -> str:
        """The method spec of the reference: ``static:<λ>``."""
        return f"static:{self.lam:g}"


def choose_static_lambda(points: Sequence[FrontierPoint], budget: int) -> StaticChoice:
    """The best static λ at ``budget`` by the rule of the module docstring; ValueError if no λ is complete."""
    base = _values(points, None, 0, RETAIN_METRIC)
    if len(base) < 2:
        raise ValueError(f"the best static λ needs the base model's retain KID on at least 2 tuning seeds, got {len(base)}")
    keys = set(base)
    base_values = np.array(list(base.values()))
    base_mean = float(base_values.mean())
    base_se = float(base_values.std(ddof=1) / math.sqrt(len(base_values)))
    bound = base_mean + base_se
    lambdas = sorted({p.lam for p in points if p.lam is not None})
    means: dict[str, dict[str, float]] = {}
    complete = []
    for lam in lambdas:
        columns = {m: _values(points, lam, budget, m) for m in (CHOICE_METRIC, TIE_METRIC, RETAIN_METRIC)}
        if all(set(values) >= keys for values in columns.values()):
            complete.append(lam)
            means[f"{lam:g}"] = {m: float(np.mean([values[k] for k in keys])) for m, values in columns.items()}
    if not complete:
        raise ValueError(f"no static λ has a score at budget {budget} on every tuning seed (all diverged or failed?)")
    eligible = [lam for lam in complete if means[f"{lam:g}"][RETAIN_METRIC] <= bound]
    if eligible:
        # Rates are means of k/n shares: equal ones may differ in the last bits, so ties are compared rounded.
        lam = min(eligible, key=lambda x: (-round(means[f"{x:g}"][CHOICE_METRIC], TIE_DECIMALS),
                                           round(means[f"{x:g}"][TIE_METRIC], TIE_DECIMALS), x))
    else:
        lam = min(complete, key=lambda x: (means[f"{x:g}"][RETAIN_METRIC], x))
    return StaticChoice(lam=lam, budget=budget, base_kid_retain=base_mean, base_kid_retain_se=base_se, bound=bound,
                        eligible=tuple(eligible), fallback=not eligible, means=means)


FRONTIER_COLUMNS_HEAD: tuple[str, ...] = ("task", "lam", "budget", "n")


def frontier_columns(metrics: Sequence[str] = FRONTIER_METRICS) -> list[str]:
    """Columns of ``frontier.csv``: per metric its mean and t-interval, then the choice's flags."""
    return [*FRONTIER_COLUMNS_HEAD, *(f"{m}{suffix}" for m in metrics for suffix in ("", "_lo", "_hi")),
            "eligible", "chosen"]


def aggregate(points: Sequence[FrontierPoint], scopes: Sequence[tuple[str, Sequence[str]]],
              choice: StaticChoice | None = None, metrics: Sequence[str] = FRONTIER_METRICS) -> list[dict[str, Any]]:
    """``frontier.csv`` rows: per scope (a name and its tasks), λ (base first) and budget, mean and t-interval per metric."""
    rows = []
    lambdas: list[float | None] = [None, *sorted({p.lam for p in points if p.lam is not None})]
    for scope, tasks in scopes:
        for lam in lambdas:
            for budget in sorted({p.budget for p in points if p.lam == lam}):
                chosen = [p for p in points if p.lam == lam and p.budget == budget and p.task in tasks]
                if not chosen:
                    continue
                row: dict[str, Any] = {"task": scope, "lam": BASE if lam is None else lam, "budget": budget,
                                       "n": len(chosen)}
                for metric in metrics:
                    values = [p.metrics[metric] for p in chosen if metric in p.metrics]
                    if values:
                        mean, lo, hi = statistics.mean_interval(values)
                        row.update({metric: mean, f"{metric}_lo": lo, f"{metric}_hi": hi})
                at_choice = choice is not None and lam is not None and budget == choice.budget
                row["eligible"] = (lam in choice.eligible) if at_choice else None
                row["chosen"] = (lam == choice.lam) if at_choice else None
                rows.append(row)
    return rows


POINT_COLUMNS_HEAD: tuple[str, ...] = ("task", "lam", "seed", "budget")


def point_rows(points: Sequence[FrontierPoint]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of ``frontier/points.csv``: every score of every frontier episode."""
    keys = sorted({k for p in points for k in p.metrics})
    rows = [{"task": p.task, "lam": BASE if p.lam is None else p.lam, "seed": p.seed, "budget": p.budget, **p.metrics}
            for p in points]
    return [*POINT_COLUMNS_HEAD, *keys], rows


Interval = tuple[float, float, float]
"""(mean, lo, hi)."""


@dataclass(frozen=True)
class FrontPosition:
    """Where a method lies against the static front at one budget (module docstring)."""

    method: str
    dominates: tuple[float, ...]
    dominated_by: tuple[float, ...]
    beyond: bool
    """Dominates every static λ."""


def _dominates(a: dict[str, Interval], b: dict[str, Interval]) -> bool:
    """a's means at least as good (lower) as b's on both metrics, a's interval wholly below b's on at least one."""
    no_worse = all(a[m][0] <= b[m][0] for m in FRONT_METRICS)
    separated = any(a[m][2] < b[m][1] for m in FRONT_METRICS)
    return no_worse and separated


def front_position(method: str, point: dict[str, Interval], static: dict[float, dict[str, Interval]]) -> FrontPosition:
    """``method``'s (mean, lo, hi) of forget rate and retain KID against each static λ's at the same budget."""
    dominates = tuple(lam for lam, s in sorted(static.items()) if _dominates(point, s))
    dominated_by = tuple(lam for lam, s in sorted(static.items()) if _dominates(s, point))
    return FrontPosition(method, dominates, dominated_by, bool(static) and len(dominates) == len(static))


def static_intervals(rows: Sequence[dict[str, Any]], scope: str, budget: int) -> dict[float, dict[str, Interval]]:
    """Per static λ, its (mean, lo, hi) of the front metrics at ``budget`` in ``frontier.csv`` rows of ``scope``."""
    out = {}
    for row in rows:
        if row["task"] == scope and row["budget"] == budget and row["lam"] != BASE and all(m in row for m in FRONT_METRICS):
            out[float(row["lam"])] = {m: (row[m], row[f"{m}_lo"], row[f"{m}_hi"]) for m in FRONT_METRICS}
    return out


@dataclass(frozen=True)
class Headroom:
    """At one budget, the best and worst static λ on one metric (by mean) and how far apart they are."""

    budget: int
    metric: str
    best_lam: float
    best: float
    worst_lam: float
    worst: float

    @property
    def spread(self) -> float:
        """|best - worst|."""
        return abs(self.best - self.worst)


HEADROOM_METRICS: dict[str, str] = {"forget_rate": "lower", "forget_digit_share": "higher", "kid_retain": "lower"}


def headroom(rows: Sequence[dict[str, Any]], scope: str) -> list[Headroom]:
    """Per budget and metric of :data:`HEADROOM_METRICS`, the best and worst static λ in ``frontier.csv`` rows."""
    out = []
    for budget in sorted({row["budget"] for row in rows if row["task"] == scope and row["lam"] != BASE}):
        static = [row for row in rows if row["task"] == scope and row["budget"] == budget and row["lam"] != BASE]
        for metric, better in HEADROOM_METRICS.items():
            have = [row for row in static if metric in row and math.isfinite(row[metric])]
            if not have:
                continue
            ordered = sorted(have, key=lambda row: row[metric] if better == "lower" else -row[metric])
            best, worst = ordered[0], ordered[-1]
            out.append(Headroom(budget, metric, float(best["lam"]), best[metric], float(worst["lam"]), worst[metric]))
    return out
