"""The benchmark's figures (PNG): λ trajectories, probes against the step, intervals, sample grids, the static front."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from evaluation.runs import RunRecord  # noqa: E402
from unlearn_env.diffusion import image_grid  # noqa: E402


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average: per-step losses come from one minibatch each and are noisy."""
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(np.pad(y, (window // 2, window - 1 - window // 2), mode="edge"), kernel, mode="valid")


def _band(ax: Any, x: np.ndarray, ys: list[np.ndarray], color: Any, label: str) -> None:
    """Mean over runs as a line, min-max over runs as a shaded band."""
    length = min(len(y) for y in ys)
    stack = np.stack([y[:length] for y in ys])
    ax.plot(x[:length], stack.mean(0), color=color, label=label, lw=1.6)
    if len(ys) > 1:
        ax.fill_between(x[:length], stack.min(0), stack.max(0), color=color, alpha=0.2, lw=0)


def plot_lambda_trajectories(records: Sequence[RunRecord], methods: Sequence[str], path: Path) -> None:
    """λ_t against the unlearning step: every run thin, the mean over runs thick."""
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
    ax.set(xlabel="unlearning step t", ylabel="λ_t", title="λ trajectories (thin: runs, thick: mean)")
    if ax.lines:
        ax.legend(fontsize=8)
    _save(fig, path)


CURVE_PANELS: tuple[tuple[str, str, str], ...] = (
    ("curve", "forget_rate", "forget rate (probe sample)"),
    ("curve", "forget_digit_share", "drawn as the digit (probe sample)"),
    ("curve", "probe_loss_retain", "probe retain loss"),
    ("curve", "probe_loss_forget", "probe forget loss"),
    ("steps", "step/loss_retain", "minibatch retain loss L_r (smoothed)"),
)


def plot_metrics_vs_step(records: Sequence[RunRecord], methods: Sequence[str], path: Path) -> None:
    """The mid-episode probes and the per-step retain loss against the step (mean over runs, band: min to max)."""
    colors = _colors(methods)
    has_curve = any(r.curve for r in records)
    panels = [p for p in CURVE_PANELS if p[0] == "steps" or has_curve]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.4), squeeze=False)
    for ax, (source, key, title) in zip(axes[0], panels):
        for method in methods:
            runs = [r for r in records if r.method == method and r.status == "ok" and r.steps]
            if source == "curve":
                curves = [r.curve for r in runs if r.curve and key in r.curve[0]]
                if curves:
                    x = np.array([point["step"] for point in curves[0]])
                    _band(ax, x, [np.array([point[key] for point in c]) for c in curves], colors[method], method)
            else:
                series = [np.array([s[key] for s in r.steps]) for r in runs if key in r.steps[0]]
                if series:
                    x = np.arange(1, max(map(len, series)) + 1)
                    _band(ax, x, [_smooth(s, 5) for s in series], colors[method], method)
        ax.set(xlabel="unlearning step t", title=title)
    if axes[0][0].lines:
        axes[0][0].legend(fontsize=7)
    _save(fig, path)


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
    _save(fig, path)


def plot_intervals(summary: Sequence[dict[str, Any]], scope: str, methods: Sequence[str],
                   columns: Sequence[tuple[str, str, float]], path: Path) -> None:
    """Mean (dot) and its 95 % t-interval (bar) per method, one panel per (metric, header, scale) of ``columns``."""
    cells = {(row["method"], row["metric"]): row for row in summary if row["task"] == scope}
    present = {metric for _, metric in cells}
    columns = [c for c in columns if c[0] in present]
    if not columns:
        return
    colors = _colors(methods)
    fig, axes = plt.subplots(1, len(columns), figsize=(2.4 * len(columns), 0.45 * len(methods) + 1.4),
                             squeeze=False, sharey=True)
    for ax, (metric, header, scale) in zip(axes[0], columns):
        for i, method in enumerate(methods):
            row = cells.get((method, metric))
            if row is None:
                continue
            mid = row["mean"] * scale
            lo, hi = row["mean_lo"], row["mean_hi"]
            if lo is not None and np.isfinite(lo):
                ax.plot([lo * scale, hi * scale], [i, i], color=colors[method], lw=5, alpha=0.5, solid_capstyle="butt")
            ax.plot([mid], [i], "o", color=colors[method])
        ax.set_title(header, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    axes[0][0].set_yticks(range(len(methods)), methods)
    axes[0][0].invert_yaxis()
    _save(fig, path)


def plot_frontier(
    rows: Sequence[dict[str, Any]],
    scope: str,
    x_metric: str,
    x_label: str,
    methods: dict[str, dict[str, tuple[float, float, float]]],
    path: Path,
    x_scale: float = 1.0,
) -> None:
    """Forget rate (y) against ``x_metric`` (x): one curve per budget through the static λ (labelled), the base
    model as a star, and each method as a point with its 95 % intervals on both axes (``methods`` maps a name to
    ``{metric: (mean, lo, hi)}``)."""
    fig, ax = plt.subplots(figsize=(7, 5))
    static = [r for r in rows if r["task"] == scope and r["lam"] != "base" and x_metric in r and "forget_rate" in r]
    budgets = sorted({r["budget"] for r in static})
    cmap = plt.get_cmap("viridis")
    for i, budget in enumerate(budgets):
        curve = sorted((r for r in static if r["budget"] == budget), key=lambda r: float(r["lam"]))
        color = cmap(i / max(1, len(budgets) - 1))
        xs = [r[x_metric] * x_scale for r in curve]
        ys = [r["forget_rate"] for r in curve]
        ax.plot(xs, ys, "-o", color=color, ms=3, lw=1.2, label=f"static λ, T={budget}")
        for r, x, y in zip(curve, xs, ys):
            ax.annotate(f"{float(r['lam']):g}", (x, y), fontsize=6, color=color, xytext=(2, 2),
                        textcoords="offset points")
    base = [r for r in rows if r["task"] == scope and r["lam"] == "base" and x_metric in r]
    if base:
        ax.plot([base[0][x_metric] * x_scale], [base[0]["forget_rate"]], "*", color="black", ms=10,
                label="base model (tuning seeds)")
    colors = _colors(list(methods))
    for name, point in methods.items():
        if x_metric not in point or "forget_rate" not in point:
            continue
        (x, x_lo, x_hi), (y, y_lo, y_hi) = point[x_metric], point["forget_rate"]
        ax.errorbar([x * x_scale], [y], xerr=[[max(0.0, (x - x_lo) * x_scale)], [max(0.0, (x_hi - x) * x_scale)]],
                    yerr=[[max(0.0, y - y_lo)], [max(0.0, y_hi - y)]], fmt="s", color=colors[name], ms=5, capsize=2,
                    label=name)
    ax.set(xlabel=x_label, ylabel="forget rate ↓",
           title="Static-λ frontier (tuning seeds) and methods (evaluation seeds, 95 % t-intervals)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
