"""The benchmark's outputs: ``results.csv`` and the other CSV files, the Markdown tables and ``report.md``.

The numbers come from :mod:`evaluation.analysis` and :mod:`evaluation.frontier`, the figures from
:mod:`evaluation.plots`; this module only formats them. Table cells are the **mean [95 %
Student-t interval]** over runs (seeds, or tasks × seeds), with n; the IQM appears only from
:data:`~evaluation.analysis.MIN_IQM_RUNS` runs on, labelled as such.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from evaluation import analysis
from evaluation.analysis import Cost, PairedRow, Resolution
from evaluation.frontier import FrontPosition, Headroom, StaticChoice
from evaluation.probing import FORGET_THRESHOLD
from evaluation.runs import RunRecord
from evaluation.statistics import DEFAULT_POWER, Verdict
from unlearn_env.cache import atomic_write_text
from unlearn_env.tasks import parse_task

# ----------------------------------------------------------------------------------------- CSV

RUN_COLUMNS: tuple[str, ...] = ("episode_return", "lambda_mean", "diverged", "ms_per_update", "wall_seconds",
                                "episode_seconds", "eval_seconds", "policy_timesteps", "policy_sha256")


def result_rows(records: Sequence[RunRecord]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of ``results.csv``: one row per record, failed ones included with their error."""
    metrics = analysis.metric_names(records)
    columns = ["task", "method", "spec", "seed", "status", *metrics, *RUN_COLUMNS, "error"]
    rows = []
    for r in records:
        row: dict[str, Any] = {"task": r.task, "method": r.method, "spec": r.spec, "seed": r.seed, "status": r.status}
        row.update({m: r.metrics.get(m) for m in metrics})
        row.update(
            episode_return=r.episode_return,
            lambda_mean=float(np.mean(r.lambdas)) if r.lambdas else None,
            diverged=r.diverged,
            ms_per_update=None if r.ms_per_update is None else round(r.ms_per_update, 2),
            wall_seconds=round(r.wall_seconds, 2),
            episode_seconds=round(r.episode_seconds, 2),
            eval_seconds=round(r.eval_seconds, 2),
            policy_timesteps=r.policy_timesteps,
            policy_sha256=r.policy_sha256,
            error=r.error,
        )
        rows.append(row)
    return columns, rows


def write_csv(columns: Sequence[str], rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write rows atomically as CSV; ``None`` becomes an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    atomic_write_text(buffer.getvalue(), path)


# -------------------------------------------------------------------------------------- tables

@dataclass(frozen=True)
class Column:
    """A column of a table: a metric, its header, which way is better, a scale and decimals."""

    metric: str
    header: str
    better: Literal["lower", "higher"]
    scale: float = 1.0
    decimals: int = 3


FORGET_COLUMNS: tuple[Column, ...] = (
    Column("forget_rate", "Forget rate", "lower"),
    Column("forget_digit_share", "Drawn as the digit", "higher"),
    Column("neither_forget", "NEITHER", "lower"),
    Column("validator_forget_rate", "Validator's rate", "lower"),
    Column("kid_forget", "KID×10³ to the digit", "lower", scale=1e3, decimals=2),
    Column("kid_forget_concept", "KID×10³ to the concept", "higher", scale=1e3, decimals=2),
    Column("loss_gap", "Loss gap ×10³", "higher", scale=1e3, decimals=2),
    Column("steps_to_forget", "Steps to forget", "lower", decimals=0),
)
RETAIN_COLUMNS: tuple[Column, ...] = (
    Column("kid_retain", "KID×10³", "lower", scale=1e3, decimals=2),
    Column("kid_retain_clean", "KID×10³ clean digits", "lower", scale=1e3, decimals=2),
    Column("fid_retain", "FID", "lower", decimals=2),
    Column("acc_retain", "Accuracy", "higher"),
    Column("acc_retain_clean", "Accuracy clean digits", "higher"),
    Column("is_retain", "IS", "higher", decimals=2),
    Column("ssim_retain", "SSIM to base", "higher"),
    Column("neither_retain", "NEITHER", "lower"),
)
HEADLINE_COLUMNS: tuple[Column, ...] = tuple(c for m in analysis.IQM_INTERVAL_METRICS
                                             for c in (*FORGET_COLUMNS, *RETAIN_COLUMNS) if c.metric == m)
"""The per-task and IQM tables' columns: the metrics whose pooled IQM has an interval."""
ARROWS = {"lower": "↓", "higher": "↑"}


def _fmt(value: float | None, column: Column, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value * column.scale:{'+' if signed else ''}.{column.decimals}f}"


def mean_cell(row: dict[str, Any] | None, column: Column) -> str:
    """``mean [lo, hi]`` (the t-interval); the mean alone for one run; ``–`` without a value."""
    if row is None:
        return "–"
    interval = "" if row["mean_lo"] is None or not math.isfinite(row["mean_lo"]) else \
        f" [{_fmt(row['mean_lo'], column)}, {_fmt(row['mean_hi'], column)}]"
    return _fmt(row["mean"], column) + interval


def _present(summary: Sequence[dict[str, Any]], scope: str, columns: Sequence[Column]) -> list[Column]:
    metrics = {row["metric"] for row in summary if row["task"] == scope}
    return [c for c in columns if c.metric in metrics]


def markdown_table(summary: Sequence[dict[str, Any]], scope: str, methods: Sequence[str], columns: Sequence[Column],
                   extra: dict[str, dict[str, str]] | None = None) -> str:
    """Rows = methods, cells ``mean [lo, hi]`` of ``scope``; ``extra`` adds text columns (header -> method -> text)."""
    columns = _present(summary, scope, columns)
    extra = extra or {}
    header = ("| Method | n | " + " | ".join(f"{c.header} {ARROWS[c.better]}" for c in columns)
              + "".join(f" | {h}" for h in extra) + " |")
    lines = [header, "|" + "---|" * (len(columns) + len(extra) + 2)]
    for method in methods:
        cells = [analysis.cell(summary, scope, method, c.metric) for c in columns]
        n = max((c["n"] for c in cells if c is not None), default=0)
        row = [f"`{method}`", str(n), *(_steps_cell(summary, scope, method, c, cell) if c.metric == "steps_to_forget"
                                        else mean_cell(cell, c) for c, cell in zip(columns, cells))]
        row += [texts.get(method, "–") for texts in extra.values()]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _steps_cell(summary: Sequence[dict[str, Any]], scope: str, method: str, column: Column,
                cell: dict[str, Any] | None) -> str:
    """Steps to forget with how many runs got there within the budget (the others count as censored)."""
    if cell is None:
        return "–"
    reached = analysis.cell(summary, scope, method, "forgotten_in_budget")
    count = "" if reached is None else f" ({round(reached['mean'] * reached['n'])}/{reached['n']} reached)"
    return mean_cell(cell, column) + count


def iqm_table(summary: Sequence[dict[str, Any]], scope: str, methods: Sequence[str], columns: Sequence[Column]) -> str:
    """Rows = methods, cells the IQM (with its stratified-bootstrap interval when pooled over tasks)."""
    columns = _present(summary, scope, columns)
    lines = ["| Method | n | " + " | ".join(f"{c.header} {ARROWS[c.better]}" for c in columns) + " |",
             "|" + "---|" * (len(columns) + 2)]
    for method in methods:
        cells = [analysis.cell(summary, scope, method, c.metric) for c in columns]
        n = max((c["n"] for c in cells if c is not None), default=0)
        texts = []
        for c, row in zip(columns, cells):
            if row is None or row["iqm"] is None:
                texts.append("–")
                continue
            interval = "" if row["iqm_lo"] is None else f" [{_fmt(row['iqm_lo'], c)}, {_fmt(row['iqm_hi'], c)}]"
            texts.append(_fmt(row["iqm"], c) + interval)
        lines.append("| " + " | ".join([f"`{method}`", str(n), *texts]) + " |")
    return "\n".join(lines)


def per_task_table(summary: Sequence[dict[str, Any]], tasks: Sequence[str], methods: Sequence[str],
                   column: Column) -> str:
    """Rows = methods, one column per task: ``mean [lo, hi]`` of one metric."""
    lines = [f"| {column.header} {ARROWS[column.better]} | " + " | ".join(f"`{t}`" for t in tasks) + " |",
             "|" + "---|" * (len(tasks) + 1)]
    for method in methods:
        cells = [mean_cell(analysis.cell(summary, task, method, column.metric), column) for task in tasks]
        lines.append("| " + " | ".join([f"`{method}`", *cells]) + " |")
    return "\n".join(lines)


def difference_table(rows: Sequence[PairedRow], scope: str, methods: Sequence[str], columns: Sequence[Column]) -> str:
    """Rows = methods, cells ``Δ [lo, hi]`` of the paired comparisons in ``rows`` (✓ better, ✗ worse beyond 0)."""
    cells = {(r.comparison.method, r.comparison.metric): r.comparison for r in rows if r.task == scope}
    columns = [c for c in columns if any(metric == c.metric for _, metric in cells)]
    lines = ["| Method | n | " + " | ".join(f"Δ {c.header} {ARROWS[c.better]}" for c in columns) + " |",
             "|" + "---|" * (len(columns) + 2)]
    for method in methods:
        comparisons = [cells.get((method, c.metric)) for c in columns]
        if not any(comparisons):
            continue
        n = max((c.n for c in comparisons if c is not None), default=0)
        texts = []
        for column, c in zip(columns, comparisons):
            if c is None:
                texts.append("–")
                continue
            mark = {True: " ✓", False: " ✗", None: ""}[c.improves]
            interval = "" if not math.isfinite(c.ci_low) else \
                f" [{_fmt(c.ci_low, column, True)}, {_fmt(c.ci_high, column, True)}]"
            texts.append(_fmt(c.mean_difference, column, True) + interval + mark)
        lines.append("| " + " | ".join([f"`{method}`", str(n), *texts]) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- report

@dataclass
class FrontierSection:
    """What the report says about the static-λ frontier."""

    tasks: list[str]
    seeds: list[int]
    budgets: list[int]
    choice: StaticChoice
    rows: list[dict[str, Any]]
    """``frontier.csv`` rows."""
    scope: str
    headroom: list[Headroom]
    positions: list[FrontPosition]
    """Empty when the frontier ran on other tasks than the methods (no common axes)."""
    same_tasks: bool
    plots: dict[str, str] = field(default_factory=dict)


@dataclass
class ReportInput:
    """Everything ``report.md`` shows."""

    command: str
    settings: dict[str, Any]
    records: list[RunRecord]
    methods: list[str]
    tasks: list[str]
    evaluation_seeds: list[int]
    summary: list[dict[str, Any]]
    paired: list[PairedRow]
    reference: str
    reference_note: str
    verdicts: dict[str, Verdict]
    resolutions: list[Resolution]
    costs: list[Cost]
    oracle: str | None = None
    oracle_gaps: list[PairedRow] = field(default_factory=list)
    frontier: FrontierSection | None = None
    training_seeds: dict[str, str] = field(default_factory=dict)
    """Per RL method, the env seeds its agent trained from."""
    plots: dict[str, str] = field(default_factory=dict)


def _sizes(settings: dict[str, Any]) -> str:
    e = settings["evaluation"]
    return (f"{e['forget_samples']} samples of the forget label and {e['retain_per_class']} of every other label, "
            f"drawn with {e['sampler']} from seed k's noise (the same for every method)")


def _setup(data: ReportInput) -> list[str]:
    s = data.settings
    multi = len(data.tasks) > 1
    tasks = (f"{len(data.tasks)} tasks of the instance set `{s['tasks']['name']}` ("
             + ", ".join(f"`{t}`" for t in data.tasks) + ")" if multi and s["tasks"].get("name")
             else ", ".join(f"`{t}`" for t in data.tasks))
    n = len(data.evaluation_seeds)
    return [
        "# Unlearning benchmark",
        "",
        f"Preset `{s['config']['preset']}`, task{'s' if multi else ''} {tasks}, {n} evaluation seeds, "
        f"{len(data.methods)} methods. Every method runs one {s['config']['unlearn']['horizon']}-update episode per "
        f"task and seed from the same base model (`env.reset(seed=k)`: the same minibatches and noise for every "
        f"method; `base` and `oracle` run none), then samples {_sizes(s)}, scored by the project's judge "
        "(FID, KID and IS on its features: comparable between methods here, not with Inception-based numbers).",
        "",
        f"Cells are the **mean [95 % Student-t interval]** over {'tasks × seeds' if multi else 'seeds'}, with n runs; "
        + (f"an IQM table follows (25 % trimmed mean{', with rliable stratified-bootstrap intervals over tasks × seeds' if multi else ''})."
           if n * len(data.tasks) >= analysis.MIN_IQM_RUNS else
           f"no IQM below {analysis.MIN_IQM_RUNS} runs (it would equal about the mean).")
        + " Every metric per run is in `results.csv`, per method in `summary.csv`.",
        "",
    ]


def _seeds(data: ReportInput) -> list[str]:
    lines = ["## Seeds", "", f"- evaluation: {_seed_list(data.evaluation_seeds)} (`--seeds`)"]
    if data.frontier is not None:
        lines.append(f"- tuning (the static-λ frontier and the choice of the best static λ): "
                     f"{_seed_list(data.frontier.seeds)}")
    for method, seeds in data.training_seeds.items():
        lines.append(f"- agent training of `{method}`: {seeds}")
    lines += ["", "The namespaces of `unlearn_env.seeds` keep them disjoint: no tuning or training episode is an "
              "evaluation episode.", ""]
    return lines


def _seed_list(seeds: Sequence[int]) -> str:
    seeds = sorted(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}..{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _oracle_gap(data: ReportInput, scope: str) -> list[str]:
    if data.oracle is None or not data.oracle_gaps:
        return []
    others = [m for m in data.methods if m != data.oracle]
    columns = [c for c in (*FORGET_COLUMNS, *RETAIN_COLUMNS)
               if c.metric in analysis.ORACLE_GAP_METRICS]
    return [f"### Gap to the retrain oracle `{data.oracle}`", "",
            f"Method − oracle, paired over the same {'(task, seed) pairs' if len(data.tasks) > 1 else 'seeds'}, mean "
            f"[95 % {data.settings['statistics']['interval']}-interval]; ✓/✗: the interval lies wholly on the "
            "better/worse side of the oracle.", "",
            difference_table(data.oracle_gaps, scope, others, columns), ""]


def _verdict(data: ReportInput, scope: str) -> list[str]:
    lines = ["## Verdict", "",
             f"Every method against the reference `{data.reference}` ({data.reference_note}), on the per-"
             f"{'(task, seed)' if len(data.tasks) > 1 else 'seed'} differences (method − reference): "
             f"{data.settings['statistics']['interval']} 95 % intervals, rliable's probability of improvement and a "
             f"{data.settings['statistics']['test']} test per metric in `paired.csv`. A method *beats* the reference on "
             "a side when at least one of the side's metrics has its interval wholly on the better side of 0 and none "
             "on the worse side. Forgetting: " + ", ".join(f"`{m}`" for m in analysis.FORGET_VERDICT_METRICS)
             + f" (steps to forget of a run that never reaches {FORGET_THRESHOLD:.0%} count as the budget plus one "
             "probe interval, a lower bound); retain quality: "
             + ", ".join(f"`{m}`" for m in analysis.RETAIN_VERDICT_METRICS)
             + " (the per-class KIDs are in `paired.csv` only: nine more intervals would make a spurious call "
             "likely).", ""]
    if not data.verdicts:
        return [*lines, "No method could be compared with the reference (no common successful runs).", ""]
    for method in data.methods:
        v = data.verdicts.get(method)
        if v is not None:
            lines.append(f"- `{method}` {v.text} (forgetting: {v.forgetting}; retain: {v.retain}).")
    lines += ["", "Paired differences on the verdict's metrics (✓ better, ✗ worse beyond the interval):", "",
              difference_table(data.paired, scope, [m for m in data.methods if m != data.reference],
                               [c for c in (*FORGET_COLUMNS, *RETAIN_COLUMNS)
                                if c.metric in (*analysis.FORGET_VERDICT_METRICS, *analysis.RETAIN_VERDICT_METRICS)]),
              ""]
    return lines


def _resolution(data: ReportInput) -> list[str]:
    lines = ["## Resolution", ""]
    by_metric = {m: [r for r in data.resolutions if r.metric == m] for m in analysis.RESOLUTION_METRICS}
    if not any(by_metric.values()):
        return [*lines, "Not measurable: no method has at least two runs paired with the reference.", ""]
    sentences = []
    for metric, rows in by_metric.items():
        if not rows:
            continue
        column = next(c for c in (*FORGET_COLUMNS, *RETAIN_COLUMNS) if c.metric == metric)
        half = np.median([r.half_width for r in rows])
        mdd = np.median([r.detectable for r in rows])
        n = sorted({r.n for r in rows})
        sentences.append(
            f"**{column.header}**: with n = {'/'.join(map(str, n))} pairs the run "
            f"resolves a mean difference of ±{_fmt(half, column)} (the 95 % t-interval's half-width from the observed "
            f"SD of paired differences, median over the {len(rows)} methods; range "
            f"{_fmt(min(r.half_width for r in rows), column)}–{_fmt(max(r.half_width for r in rows), column)}) and "
            f"detects a true difference of {_fmt(mdd, column)} with {DEFAULT_POWER:.0%} power.")
    lines += [" ".join(sentences), "", "| Method | metric | n | SD of differences | resolution ± | detectable (80 %) |",
              "|---|---|---|---|---|---|"]
    for r in data.resolutions:
        column = next(c for c in (*FORGET_COLUMNS, *RETAIN_COLUMNS) if c.metric == r.metric)
        lines.append(f"| `{r.method}` | {column.header} | {r.n} | {_fmt(r.sd_difference, column)} | "
                     f"{_fmt(r.half_width, column)} | {_fmt(r.detectable, column)} |")
    return [*lines, ""]


def _frontier(section: FrontierSection) -> list[str]:
    c = section.choice
    kid = RETAIN_COLUMNS[0]
    tasks = ", ".join(f"`{t}`" for t in section.tasks)
    lines = [
        "## Static-λ frontier",
        "",
        f"Static λ ∈ {{{', '.join(f'{float(lam):g}' for lam in sorted(map(float, c.means)))}}} on the tuning seeds "
        f"{_seed_list(section.seeds)} of {tasks}, one episode of {max(section.budgets)} updates per λ and seed, scored "
        f"after {', '.join(map(str, section.budgets))} updates (`frontier.csv`; per seed `frontier/points.csv`).",
        "",
        f"**Best static λ: {c.lam:g}** (the reference `static:{c.lam:g}` unless `--reference` says otherwise). Rule, at "
        f"the preset's budget T = {c.budget} on the tuning seeds: among the λ whose mean retain KID is at most the "
        f"base model's ({_fmt(c.base_kid_retain, kid)} ± {_fmt(c.base_kid_retain_se, kid)} ×10⁻³, mean ± standard "
        f"error; bound {_fmt(c.bound, kid)}), the highest mean share drawn as the forget digit; ties to the lower "
        "forget rate, then the smaller λ. "
        + ("Eligible: " + ", ".join(f"{lam:g}" for lam in c.eligible) + "." if not c.fallback else
           "**No λ met the retain bound**: the λ with the lowest mean retain KID was taken."),
        "",
        "| λ | drawn as the digit ↑ | forget rate ↓ | retain KID×10³ ↓ | eligible |",
        "|---|---|---|---|---|",
    ]
    for lam, means in sorted(c.means.items(), key=lambda kv: float(kv[0])):
        mark = " **(chosen)**" if float(lam) == c.lam else ""
        lines.append(f"| {lam}{mark} | {means['forget_digit_share']:.3f} | {means['forget_rate']:.3f} | "
                     f"{_fmt(means['kid_retain'], kid)} | {'yes' if float(lam) in c.eligible else 'no'} |")
    lines += ["", "### Headroom", "",
              "Best and worst static λ (by mean over tuning seeds) at each budget: how much a λ-schedule could gain "
              "over a constant λ.", "",
              "| Budget | metric | best λ | best | worst λ | worst | spread |", "|---|---|---|---|---|---|---|"]
    names = {"forget_rate": FORGET_COLUMNS[0], "forget_digit_share": FORGET_COLUMNS[1], "kid_retain": kid}
    for h in section.headroom:
        column = names[h.metric]
        lines.append(f"| {h.budget} | {column.header} | {h.best_lam:g} | {_fmt(h.best, column)} | {h.worst_lam:g} | "
                     f"{_fmt(h.worst, column)} | {_fmt(h.spread, column)} |")
    lines += ["", "### Beyond the static front?", ""]
    if not section.same_tasks:
        lines += ["The frontier ran on other tasks than the methods (the best static λ is tuned where the agents "
                  "trained), so the methods are not placed on its axes.", ""]
    elif not section.positions:
        lines += ["No method has a forget rate and a retain KID to place.", ""]
    else:
        lines += [f"At T = {c.budget}: a method *dominates* static λ when its mean is at least as good on both forget "
                  "rate and retain KID and its 95 % interval lies wholly on the better side of λ's on at least one; it "
                  "is *beyond the static front* when it dominates every λ. Methods on evaluation seeds, the front on "
                  "tuning seeds (unpaired intervals).", ""]
        for p in section.positions:
            verdict = "**beyond the static front**" if p.beyond else "not beyond the static front"
            dominates = ", ".join(f"{lam:g}" for lam in p.dominates) or "none"
            dominated = ", ".join(f"{lam:g}" for lam in p.dominated_by) or "none"
            lines.append(f"- `{p.method}`: {verdict}; dominates λ ∈ {{{dominates}}}; dominated by λ ∈ {{{dominated}}}.")
        lines.append("")
    lines += [f"### {caption}\n\n![{caption}]({image})\n" for caption, image in section.plots.items()]
    return lines


def write_report(path: Path, data: ReportInput) -> None:
    """Write ``report.md`` (sections: setup, seeds, forget and retain tables with the oracle's gap, costs, verdict,
    resolution, the static-λ frontier, failed and diverged runs, policies, plots, command and configuration)."""
    scope = analysis.pooled_scope(data.tasks)
    multi = len(data.tasks) > 1
    failed = [r for r in data.records if r.status == "failed"]
    diverged = [r for r in data.records if r.status == "diverged"]
    policies = {r.method: r for r in data.records if r.status == "ok" and r.policy_model}
    # The config names the default task; a single evaluated task (a class task's label 10 too) is the one meant.
    forget = parse_task(data.tasks[0]) if not multi else None
    lines = [*_setup(data), *_seeds(data)]
    if not data.summary:
        lines += ["**No run succeeded**: the tables are empty; the failed runs are listed below.", ""]
    where = " (pooled over tasks × seeds)" if multi else ""
    lines += [
        f"## Forget side{where}: samples of the forget label{f' {forget.digit} ({forget.concept})' if forget else ''}",
        "",
        "Forget rate: share judged as the task's concept. Drawn as the digit: share judged as the forget digit, on a "
        "class task as any digit (a model that draws neither has not forgotten well). NEITHER: share judged far from every real class. KID to "
        "the digit / to the concept: to held-out real digits of the forget class / to held-out images of the concept "
        "(higher: more forgotten). Loss gap: denoising loss on the forget set minus on unseen images of the concept "
        "(negative: the forget set is still fitted; the oracle's is the yardstick). Steps to forget: the first "
        f"mid-episode probe with a forget rate ≤ {FORGET_THRESHOLD:.0%}.",
        "",
        markdown_table(data.summary, scope, data.methods, FORGET_COLUMNS),
        "",
        f"## Retain side{where}: samples of every other label",
        "",
        "KID (primary) and FID to held-out real digits, judge accuracy (share drawn as the digit asked for), IS with "
        "the judge, SSIM to the base model's samples from the same noise."
        + (" *Clean digits*: the retain classes whose digit no task of the family contaminates (the companions' "
           "digits stay contaminated in the base model and in every task's oracle by design)."
           if any(r["metric"] == "kid_retain_clean" for r in data.summary) else ""),
        "",
        markdown_table(data.summary, scope, data.methods, RETAIN_COLUMNS),
        "",
        *_oracle_gap(data, scope),
        "## Cost and episodes",
        "",
        "Data each method reads and UNet passes per update (registry); measured ms per update (episode seconds "
        "without the probes, over the updates); the undiscounted return of the environment's reward; diverged runs "
        "(scored when the weights stayed finite, else listed under *Diverged runs*).",
        "",
        markdown_table(data.summary, scope, data.methods, (Column("episode_return", "Episode return", "higher",
                                                                   decimals=3),),
                       extra={"Data": {c.method: c.data for c in data.costs},
                              "Passes per update": {c.method: c.passes for c in data.costs},
                              "ms per update": {c.method: "–" if c.ms_per_update is None else f"{c.ms_per_update:.0f}"
                                                for c in data.costs},
                              "diverged runs": {c.method: str(c.diverged) for c in data.costs}}),
        "",
    ]
    if multi:
        lines += ["## Per task", ""]
        for column in HEADLINE_COLUMNS:
            lines += [per_task_table(data.summary, data.tasks, data.methods, column), ""]
    n_runs = len(data.evaluation_seeds) * len(data.tasks)
    if n_runs >= analysis.MIN_IQM_RUNS and data.summary:
        lines += ["## IQM", "",
                  f"Interquartile mean (25 % trimmed mean, rliable's `aggregate_iqm`) over {n_runs} runs"
                  + (", with rliable's stratified-bootstrap 95 % interval over tasks × seeds." if multi else
                     "; no interval (a bootstrap over one task's seeds is about the values' range)."), "",
                  iqm_table(data.summary, scope, data.methods, HEADLINE_COLUMNS), ""]
    lines += [*_verdict(data, scope), *_resolution(data)]
    if data.frontier is not None:
        lines += _frontier(data.frontier)
    if failed:
        lines += ["## Failed runs", "", "Rerun the same command to retry them.", ""]
        lines += [f"- `{r.method}` seed {r.seed}{f' ({r.task})' if multi else ''}: {r.error}" for r in failed]
        lines.append("")
    if diverged:
        lines += ["## Diverged runs", "", "Episodes that left weights whose samples are not finite: an outcome of the "
                  "method, kept (not retried) and absent from the tables.", ""]
        lines += [f"- `{r.method}` seed {r.seed}{f' ({r.task})' if multi else ''}: diverged after {len(r.steps)} "
                  "updates" for r in diverged]
        lines.append("")
    if policies:
        lines += ["## Policies", "", "The snapshot each RL method evaluated (a run folder stands for its latest).", ""]
        lines += [f"- `{r.method}`: `{r.policy_model}`, {r.policy_timesteps:,} training steps, SHA-256 "
                  f"`{r.policy_sha256[:12]}`" for r in policies.values()]
        lines.append("")
    if data.plots:
        lines += ["## Plots", ""]
        if data.settings["evaluation"]["eval_every"]:
            e = data.settings["evaluation"]
            lines += [f"Against the unlearning step: the judge's calls on a fixed probe sample ({e['probe_samples']} "
                      f"forget-label samples, {e['probe_sampler']}) every {e['eval_every']} updates, and the env's probe "
                      "losses of the same weights; step 0 is the base model. Lines: mean over runs; bands: min to max.",
                      ""]
        lines += [f"### {caption}\n\n![{caption}]({image})\n" for caption, image in data.plots.items()]
    lines += ["## Command", "", "```", data.command, "```", "", "## Configuration", "", "```json",
              json.dumps(data.settings, indent=2, sort_keys=True, default=str), "```", ""]
    atomic_write_text("\n".join(lines), path)

