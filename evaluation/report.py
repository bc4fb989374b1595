"""Benchmark results: run records, IQM with bootstrap confidence intervals, plots and the Markdown report.

``evaluate.py`` writes one :class:`RunRecord` per method and seed; this module turns
a list of them into ``results.csv``, ``summary.csv``, PNG plots and ``report.md``.

Aggregates follow rliable (Agarwal et al., 2021): the interquartile mean (IQM, the
25 % trimmed mean, as ``rliable.metrics.aggregate_iqm``) and the mean, each with a
95 % percentile-bootstrap confidence interval over seeds. With one task, rliable's
stratified bootstrap is the plain bootstrap over runs, which ``scipy.stats.bootstrap``
computes (rliable's own ``library`` module needs the ``arch`` package, whose import
breaks with pandas 3).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from unlearn_env.cache import atomic_write_text  # noqa: E402
from unlearn_env.diffusion import image_grid  # noqa: E402

RunStatus = Literal["ok", "failed"]

BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass
class RunRecord:
    """One method scored after one seed's episode; stored as ``runs/<method>_seed<k>.json``."""

    method: str
    """Name in the outputs, e.g. ``static_0.5``."""
    spec: str
    """The ``--methods`` entry it came from, e.g. ``static:0.5``."""
    seed: int
    status: RunStatus
    policy_model: str = ""
    """The model file an RL method loaded (a run folder's latest snapshot); empty for the other methods."""
    policy_sha256: str = ""
    """That file's SHA-256: a finished run is redone when the spec resolves to another file (training went on)."""
    policy_timesteps: int | None = None
    """The training steps of that model."""
    metrics: dict[str, float] = field(default_factory=dict)
    episode_return: float | None = None
    """``None`` for the base model, which runs no episode."""
    diverged: bool = False
    lambdas: list[float] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    """Per-step env scalars (``step/loss_retain``, ``reward/total``, ...), as in TensorBoard."""
    curve: list[dict[str, float]] = field(default_factory=list)
    """Cheap scores during the episode: ``{"step", "forget_rate", "fid_retain"}`` every ``eval_every`` steps."""
    wall_seconds: float = 0.0
    """Episode plus evaluation."""
    episode_seconds: float = 0.0
    """The episode alone, without the mid-episode scoring."""
    eval_seconds: float = 0.0
    error: str = ""
    traceback: str = ""

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        """Read a record written by :meth:`to_json`."""
        return cls(**json.loads(Path(path).read_text()))

    def to_json(self) -> str:
        """The record as indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"


# ---------------------------------------------------------------------------------------- tables

FIRST_METRICS: tuple[str, ...] = (
    "forget_rate", "forget_rate_lo", "forget_rate_hi", "p_concept", "forget_digit_share", "neither_forget",
    "validator_forget_rate", "validator_agreement", "kid_forget", "fid_forget", "kid_forget_concept",
    "fid_forget_concept", "kid_retain", "fid_retain", "is_retain", "acc_retain", "ssim_retain", "neither_retain",
    "loss_forget_set", "loss_heldout_concept", "loss_gap", "n_forget", "n_retain", "n_ref_forget", "n_ref_retain",
    "n_ref_concept",
)
"""Metric columns in the order of SPEC §6 (``evaluation.metrics``); per-class KIDs and accuracies follow."""
RUN_COLUMNS: tuple[str, ...] = ("episode_return", "lambda_mean", "diverged", "wall_seconds", "episode_seconds",
                                "eval_seconds", "policy_timesteps", "policy_sha256")


def metric_names(records: Sequence[RunRecord]) -> list[str]:
    """Every metric key in ``records``: SPEC §6 order first, then the rest (per-class accuracies) sorted."""
    seen = {key for record in records for key in record.metrics}
    return [m for m in FIRST_METRICS if m in seen] + sorted(seen - set(FIRST_METRICS), key=_natural_key)


def _natural_key(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def result_rows(records: Sequence[RunRecord]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of ``results.csv``: one row per record, failed ones included with their error."""
    metrics = metric_names(records)
    columns = ["method", "spec", "seed", "status", *metrics, *RUN_COLUMNS, "error"]
    rows = []
    for r in records:
        row: dict[str, Any] = {"method": r.method, "spec": r.spec, "seed": r.seed, "status": r.status}
        row.update({m: r.metrics.get(m) for m in metrics})
        row.update(
            episode_return=r.episode_return,
            lambda_mean=float(np.mean(r.lambdas)) if r.lambdas else None,
            diverged=r.diverged,
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
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    atomic_write_text(buffer.getvalue(), path)


# ------------------------------------------------------------------------------ aggregation

def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50 % (``scipy.stats.trim_mean`` cutting 25 % per side).

    ``int(0.25 n)`` runs are cut from each end: none for n < 4 (IQM = mean), one for 4 <= n < 8.
    """
    return stats.trim_mean(values, proportiontocut=0.25, axis=axis)


def bootstrap_ci(
    values: Sequence[float], statistic: Callable[..., np.ndarray], seed: int = 0
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of ``statistic(values, axis=...)`` over the runs.

    Fewer than two runs, or runs that all agree, give a zero-width interval.
    """
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < 2 or np.ptp(x) == 0:
        value = float(statistic(x, axis=-1))
        return value, value
    result = stats.bootstrap(
        (x,), statistic, vectorized=True, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile", rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(values, axis=axis)


SUMMARY_COLUMNS: tuple[str, ...] = ("method", "metric", "n", "iqm", "iqm_lo", "iqm_hi", "mean", "mean_lo", "mean_hi",
                                    "std")


def summarize(records: Sequence[RunRecord], methods: Sequence[str]) -> list[dict[str, Any]]:
    """``summary.csv`` rows: for every method and metric over its successful runs, IQM and mean with 95 % CIs."""
    rows = []
    for method in methods:
        ok = [r for r in records if r.method == method and r.status == "ok"]
        values: dict[str, list[float]] = {m: [r.metrics[m] for r in ok if m in r.metrics] for m in metric_names(ok)}
        values["episode_return"] = [r.episode_return for r in ok if r.episode_return is not None]
        values["wall_seconds"] = [r.wall_seconds for r in ok]
        for metric, vals in values.items():
            x = np.asarray([v for v in vals if v is not None and math.isfinite(v)], dtype=float)
            if len(x) == 0:
                continue
            iqm_lo, iqm_hi = bootstrap_ci(x, iqm)
            mean_lo, mean_hi = bootstrap_ci(x, _mean)
            rows.append({
                "method": method, "metric": metric, "n": len(x),
                "iqm": float(iqm(x)), "iqm_lo": iqm_lo, "iqm_hi": iqm_hi,
                "mean": float(x.mean()), "mean_lo": mean_lo, "mean_hi": mean_hi,
                "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
            })
    return rows


@dataclass(frozen=True)
class Column:
    """A column of the paper-style table."""

    metric: str
    header: str
    better: Literal["lower", "higher"]
    scale: float = 1.0
    decimals: int = 2


FORGET_COLUMNS: tuple[Column, ...] = (
    Column("forget_rate", "Forget rate", "lower", decimals=3),
    Column("forget_digit_share", "Drawn as the digit", "higher", decimals=3),
    Column("kid_forget", "KID×10³ to the digit", "lower", scale=1e3),
    Column("kid_forget_concept", "KID×10³ to the concept", "higher", scale=1e3),
)
RETAIN_COLUMNS: tuple[Column, ...] = (
    Column("fid_retain", "FID", "lower"),
    Column("kid_retain", "KID×10³", "lower", scale=1e3),
    Column("is_retain", "IS", "higher"),
    Column("ssim_retain", "SSIM to base", "higher", decimals=3),
    Column("acc_retain", "Accuracy", "higher", decimals=3),
)
EPISODE_COLUMNS: tuple[Column, ...] = (
    Column("episode_return", "Episode return", "higher"),
    Column("wall_seconds", "Wall seconds per run", "lower", decimals=0),
)


def markdown_table(summary: Sequence[dict[str, Any]], methods: Sequence[str], columns: Sequence[Column]) -> str:
    """Rows = methods, cells ``IQM [lo, hi]``; ``–`` where a method has no value (the base model's return)."""
    cells = {(row["method"], row["metric"]): row for row in summary}
    arrows = {"lower": "↓", "higher": "↑"}
    header = "| Method | n | " + " | ".join(f"{c.header} {arrows[c.better]}" for c in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for method in methods:
        counts = [cells[(method, c.metric)]["n"] for c in columns if (method, c.metric) in cells]
        row = [f"`{method}`", str(max(counts, default=0))]
        for c in columns:
            cell = cells.get((method, c.metric))
            if cell is None:
                row.append("–")
                continue
            fmt = f"{{:.{c.decimals}f}}"
            row.append(f"{fmt.format(cell['iqm'] * c.scale)} [{fmt.format(cell['iqm_lo'] * c.scale)}, "
                       f"{fmt.format(cell['iqm_hi'] * c.scale)}]")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ plots

def _colors(methods: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average: per-step losses come from one minibatch each and are noisy."""
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(np.pad(y, (window // 2, window - 1 - window // 2), mode="edge"), kernel, mode="valid")


def _band(ax: Any, x: np.ndarray, ys: list[np.ndarray], color: Any, label: str) -> None:
    """Mean over seeds as a line, min-max over seeds as a shaded band."""
    length = min(len(y) for y in ys)
    stack = np.stack([y[:length] for y in ys])
    ax.plot(x[:length], stack.mean(0), color=color, label=label, lw=1.6)
    if len(ys) > 1:
        ax.fill_between(x[:length], stack.min(0), stack.max(0), color=color, alpha=0.2, lw=0)


def plot_lambda_trajectories(records: Sequence[RunRecord], methods: Sequence[str], path: Path) -> None:
    """λ_t against the unlearning step: every seed thin, the mean over seeds thick."""
    colors = _colors(methods)
    fig, ax = plt.subplots(figsize=(7, 4))
    for method in methods:
        runs = [r.lambdas for r in records if r.method == method and r.status == "ok" and r.lambdas]
        for lambdas in runs:
            ax.plot(np.arange(1, len(lambdas) + 1), lambdas, color=colors[method], lw=0.6, alpha=0.4)
        if runs:
            length = min(map(len, runs))
            ax.plot(np.arange(1, length + 1), np.mean([r[:length] for r in runs], axis=0), color=colors[method],
                    lw=2, label=f"{method} (n={len(runs)})")
    ax.set(xlabel="unlearning step t", ylabel="λ_t", title="λ trajectories (thin: seeds, thick: mean)")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metrics_vs_step(records: Sequence[RunRecord], methods: Sequence[str], path: Path) -> None:
    """Mid-episode scores (forget rate, retain FID) and the per-step losses L_r, L_f against the step."""
    colors = _colors(methods)
    panels: list[tuple[str, str, str]] = [
        ("curve", "forget_rate", "forget rate (forget-label samples)"),
        ("curve", "fid_retain", "FID of retain samples"),
        ("steps", "step/loss_retain", "retain loss L_r (smoothed)"),
        ("steps", "step/loss_forget", "forget loss L_f (smoothed)"),
    ]
    has_curve = any(r.curve for r in records)
    panels = [p for p in panels if p[0] == "steps" or has_curve]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (source, key, title) in zip(axes[0], panels):
        for method in methods:
            runs = [r for r in records if r.method == method and r.status == "ok"]
            if source == "curve":
                curves = [r.curve for r in runs if r.curve]
                if curves:
                    x = np.array([point["step"] for point in curves[0]])
                    _band(ax, x, [np.array([point[key] for point in c]) for c in curves], colors[method], method)
            else:
                series = [np.array([s[key] for s in r.steps]) for r in runs if r.steps]
                if series:
                    x = np.arange(1, max(map(len, series)) + 1)
                    _band(ax, x, [_smooth(s, 5) for s in series], colors[method], method)
        ax.set(xlabel="unlearning step t", title=title)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(images: np.ndarray, labels: np.ndarray, forget_class: int, title: str, path: Path,
                 per_row: int = 8) -> None:
    """Two grids of one run's scored samples: the forget label, and one row per retain label."""
    forget = images[labels == forget_class][: 2 * per_row]
    retain_labels = [c for c in np.unique(labels) if c != forget_class]
    count = min(per_row, min(int((labels == c).sum()) for c in retain_labels))
    retain = np.concatenate([images[labels == c][:count] for c in retain_labels])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 5), gridspec_kw={"width_ratios": [1, 1]})
    left.imshow(image_grid(forget, rows=max(1, -(-len(forget) // per_row))), cmap="gray", vmin=0, vmax=255)
    left.set_title(f"label {forget_class} (forget)")
    right.imshow(image_grid(retain, rows=len(retain_labels)), cmap="gray", vmin=0, vmax=255)
    right.set_title(f"labels {', '.join(map(str, retain_labels))} (retain)")
    for ax in (left, right):
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_intervals(summary: Sequence[dict[str, Any]], methods: Sequence[str], path: Path) -> None:
    """rliable-style interval plot: IQM (dot) and its 95 % bootstrap CI (bar) per method and metric."""
    columns = [c for c in (*FORGET_COLUMNS, *RETAIN_COLUMNS) if any(r["metric"] == c.metric for r in summary)]
    cells = {(row["method"], row["metric"]): row for row in summary}
    colors = _colors(methods)
    fig, axes = plt.subplots(1, len(columns), figsize=(2.3 * len(columns), 0.45 * len(methods) + 1.4),
                             squeeze=False, sharey=True)
    for ax, column in zip(axes[0], columns):
        for i, method in enumerate(methods):
            cell = cells.get((method, column.metric))
            if cell is None:
                continue
            lo, mid, hi = (cell[k] * column.scale for k in ("iqm_lo", "iqm", "iqm_hi"))
            ax.plot([lo, hi], [i, i], color=colors[method], lw=5, alpha=0.5, solid_capstyle="butt")
            ax.plot([mid], [i], "o", color=colors[method])
        ax.set_title(f"{column.header} {'↓' if column.better == 'lower' else '↑'}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    axes[0][0].set_yticks(range(len(methods)), methods)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------- report

def write_report(
    path: Path,
    *,
    command: str,
    settings: dict[str, Any],
    records: Sequence[RunRecord],
    methods: Sequence[str],
    summary: Sequence[dict[str, Any]],
    plots: dict[str, str],
) -> None:
    """Write ``report.md``: tables of IQM [95 % CI], failed runs, plots, the command and the configuration.

    ``plots`` maps a caption to an image path relative to the report.
    """
    seeds = sorted({r.seed for r in records})
    n_seeds = len(seeds)
    cut = int(0.25 * n_seeds)
    failed = [r for r in records if r.status == "failed"]
    policies = {r.method: r for r in records if r.status == "ok" and r.policy_model}
    data = settings["config"]["data"]
    lines = [
        "# Unlearning benchmark: base model, static λ, VI and RL λ-schedules",
        "",
        f"Preset `{settings['config']['preset']}`, seeds {seeds}, {len(methods)} methods. Every method runs one "
        f"{settings['config']['unlearn']['horizon']}-step SISS episode per seed from the same base model "
        f"(`env.reset(seed=k)`), then samples {settings['samples_per_label']} images per label with "
        f"{settings['ddim_steps']} DDIM steps from seed k's noise, the same for every method.",
        "",
        f"Cells are **IQM [95 % CI]** over seeds: the interquartile mean (25 % trimmed mean, as rliable's "
        f"`aggregate_iqm`) with a percentile-bootstrap interval ({BOOTSTRAP_RESAMPLES:,} resamples). With "
        f"{n_seeds} seed(s) the IQM cuts {cut} run(s) from each end"
        + (", i.e. it equals the mean." if cut == 0 else f", i.e. it is the mean of the middle {n_seeds - 2 * cut}.")
        + " Means with their intervals, and every other metric, are in `summary.csv`; single runs in `results.csv`."
        " FID, KID and IS use the project's judge classifier (digits + Fashion-MNIST), not Inception-v3: they compare "
        "methods here, not with numbers from the literature.",
        "",
        *([] if summary else ["**No run succeeded**: the tables are empty; the failed runs are listed below.", ""]),
        f"## Forget side: samples of label {data['forget_class']}",
        "",
        "Forget rate: share judged as the task's concept (unlearning efficacy). Drawn as the digit: share judged "
        f"as a {data['forget_class']}. KID to the digit: distance to held-out real {data['forget_class']}s; KID to "
        "the concept: distance to held-out images of the concept (higher means forgotten).",
        "",
        markdown_table(summary, methods, FORGET_COLUMNS),
        "",
        "## Retain side: samples of every other label",
        "",
        "FID/KID to real digits, IS with the judge, SSIM to the base model's samples from the same noise, "
        "judge accuracy (share drawn as the digit asked for).",
        "",
        markdown_table(summary, methods, RETAIN_COLUMNS),
        "",
        "## Episodes",
        "",
        "Undiscounted return of the environment's reward (SPEC §5); the base model runs no episode.",
        "",
        markdown_table(summary, methods, EPISODE_COLUMNS),
        "",
    ]
    if failed:
        lines += ["## Failed runs", "", "Rerun the same command to retry them.", ""]
        lines += [f"- `{r.method}` seed {r.seed}: {r.error}" for r in failed]
        lines.append("")
    if policies:
        lines += ["## Policies", "", "The snapshot each RL method evaluated (a run folder stands for its latest).", ""]
        lines += [f"- `{r.method}`: `{r.policy_model}`, {r.policy_timesteps:,} training steps, SHA-256 "
                  f"`{r.policy_sha256[:12]}`" for r in policies.values()]
        lines.append("")
    if plots:  # none when no run succeeded
        lines += ["## Plots", ""]
        if settings.get("eval_every"):
            lines += [
                f"Metrics against the unlearning step: forget rate and retain FID are scored every "
                f"{settings['eval_every']} steps on a small sample ({settings['probe_samples_per_label']} per "
                f"label, {settings['probe_ddim_steps']} DDIM steps), so their level differs from the tables' (FID "
                "grows as the sample shrinks); step 0 is the base model. L_r and L_f are the environment's per-step "
                "minibatch losses. Lines: mean over seeds; bands: min to max.",
                "",
            ]
        lines += [f"### {caption}\n\n![{caption}]({image})\n" for caption, image in plots.items()]
    lines += [
        "## Command",
        "",
        "```",
        command,
        "```",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(settings, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    atomic_write_text("\n".join(lines), path)
