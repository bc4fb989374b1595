"""λ schedules and reward-term magnitudes: what each method did with λ, and what the reward paid for it.

    python benchmarks/lambda_schedules.py --records results/cpu/runs \\
        --monitors runs/paper/ppo/cpu_0 runs/outcome/ppo/cpu_0 --json lambda_schedules.json

From an evaluation's run records (``evaluate.py``'s ``runs/*.json``): per method, λ at the
episode's start, quarters and end (mean and SD over seeds), the SD of λ within an episode (how
adaptive the schedule is), and per reward term of the evaluation env's reward mode the mean
per-step value and its mean absolute step-to-step spread. From training runs' Monitor CSVs
(``train_policy.py``'s ``monitor/*.csv``: one row per episode, the episode sums of every reward
term in the mode the agent trained on): the mean of each term over the first and the last ``--window``
episodes (per step; the terminal and crash terms per episode). Prints Markdown tables; ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from timing import json_target

REWARD_PREFIX = "reward/"
MONITOR_TERMS = ("reward_siss", "reward_smoothness", "reward_retain_safety", "reward_shaping_forget",
                 "reward_shaping_retain", "reward_terminal_concept", "reward_terminal_digit",
                 "reward_terminal_retain", "reward_crash")
EPISODE_TERMS = ("reward_terminal_concept", "reward_terminal_digit", "reward_terminal_retain", "reward_crash")
"""Terms paid once per episode (at t = T or on divergence): reported per episode, the others per step."""


def schedule_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method with an episode: λ at fractions 0, ¼, ½, ¾, 1 of the episode and the within-episode SD."""
    by_method: dict[str, list[np.ndarray]] = defaultdict(list)
    for record in records:
        if record["status"] == "ok" and record["lambdas"]:
            by_method[record["method"]].append(np.asarray(record["lambdas"]))
    rows = []
    for method, runs in by_method.items():
        length = min(len(r) for r in runs)
        stacked = np.stack([r[:length] for r in runs])
        at = [round(f * (length - 1)) for f in (0, 0.25, 0.5, 0.75, 1)]
        rows.append({"method": method, "n": len(runs), "steps": length,
                     "lambda_mean": [float(stacked[:, i].mean()) for i in at],
                     "lambda_sd_over_seeds": [float(stacked[:, i].std(ddof=1)) if len(runs) > 1 else 0.0 for i in at],
                     "within_episode_sd": float(stacked.std(axis=1, ddof=1).mean())})
    return rows


def term_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and reward term: mean per-step value and mean |change between consecutive steps|."""
    values: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for record in records:
        if record["status"] != "ok" or not record["steps"]:
            continue
        for term in record["steps"][0]:
            if term.startswith(REWARD_PREFIX):
                values[(record["method"], term[len(REWARD_PREFIX):])].append(
                    np.asarray([step[term] for step in record["steps"]]))
    rows = []
    for (method, term), runs in values.items():
        rows.append({"method": method, "term": term, "n": len(runs),
                     "per_step_mean": float(np.mean([r.mean() for r in runs])),
                     "per_step_abs_change": float(np.mean([np.abs(np.diff(r)).mean() for r in runs]))})
    return rows


def monitor_rows(run: Path, window: int) -> list[dict[str, Any]]:
    """Per reward term of a training run's Monitor CSVs: per-step mean over its first and last episodes."""
    episodes = []
    for path in sorted((run / "monitor").glob("*.csv")):
        with path.open() as handle:
            handle.readline()  # Monitor's JSON header
            episodes.extend(csv.DictReader(handle))
    if not episodes:
        raise SystemExit(f"error: no Monitor CSV rows under {run / 'monitor'}")
    config = json.loads((run / "config.json").read_text())
    sections = config.get("env_config", {})
    mode = next((v["reward"] for v in sections.values() if isinstance(v, dict) and "reward" in v), "paper")
    rows = []
    for label, chunk in (("first", episodes[:window]), ("last", episodes[-window:])):
        row: dict[str, Any] = {"run": str(run), "algo": config.get("algo"), "reward": mode, "episodes": label,
                               "n": len(chunk), "return": float(np.mean([float(e["r"]) for e in chunk])),
                               "lambda_mean": float(np.mean([float(e["lambda_mean"]) for e in chunk])),
                               "lambda_std": float(np.mean([float(e["lambda_std"]) for e in chunk]))}
        for term in MONITOR_TERMS:
            if term in chunk[0]:  # once-per-episode terms per episode, the others per step
                per = 1.0 if term in EPISODE_TERMS else None
                row[term] = float(np.mean([float(e[term]) / (per or float(e["l"])) for e in chunk]))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, help="an evaluation's runs/ folder")
    parser.add_argument("--monitors", type=Path, nargs="*", default=[], help="train_policy.py run folders")
    parser.add_argument("--window", type=int, default=10, help="episodes at each end of training")
    parser.add_argument("--json", type=json_target, help="also write the figures here")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    if args.records is not None:
        records = [json.loads(p.read_text()) for p in sorted(args.records.rglob("*.json"))]
        out["schedules"], out["terms"] = schedule_rows(records), term_rows(records)
        print("| Method | n | λ at 0, ¼, ½, ¾, 1 of the episode (mean over seeds) | SD over seeds | SD within episode |")
        print("|---|---|---|---|---|")
        for r in out["schedules"]:
            print(f"| `{r['method']}` | {r['n']} | {' → '.join(f'{v:.2f}' for v in r['lambda_mean'])} | "
                  f"{max(r['lambda_sd_over_seeds']):.3f} (max) | {r['within_episode_sd']:.3f} |")
        print("\n| Method | term | per-step mean | mean step-to-step change |\n|---|---|---|---|")
        for r in sorted(out["terms"], key=lambda r: (r["method"], r["term"])):
            print(f"| `{r['method']}` | {r['term']} | {r['per_step_mean']:+.3e} | {r['per_step_abs_change']:.2e} |")
    out["training"] = [row for run in args.monitors for row in monitor_rows(run, args.window)]
    if out["training"]:
        terms = [t for t in MONITOR_TERMS if any(t in r for r in out["training"])]
        print("\n| Agent | reward | episodes | return | λ mean (SD in episode) | "
              + " | ".join(t.removeprefix("reward_") + (" (per episode)" if t in EPISODE_TERMS else " (per step)")
                           for t in terms) + " |")
        print("|---|---|---|---|---|" + "---|" * len(terms))
        for r in out["training"]:
            cells = " | ".join(f"{r[t]:+.2e}" if t in r else "–" for t in terms)
            print(f"| {r['algo']} | {r['reward']} | {r['episodes']} {r['n']} | {r['return']:+.3f} | "
                  f"{r['lambda_mean']:.2f} ({r['lambda_std']:.2f}) | {cells} |")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
