"""The unlearning benchmark: every method on every task and evaluation seed, against the best static λ.

    python evaluate.py --preset cpu --methods base,oracle,vi,neyman,ppo:runs/ppo/cpu_0 --out results/cpu
    python evaluate.py --preset cpu --tasks test --methods base,oracle,neyman,ppo:runs/ppo/cpu-train_0
    python evaluate.py --preset test --frontier off --reference static:0.5 --methods base,vi
    python evaluate.py --preset cpu --workers 2                  # the runs on 2 Ray workers of this machine
    python evaluate.py --preset paper --ray-address HEAD:6379 --gpus-per-run 0.5   # on a Ray cluster

What it does, top to bottom:

1. **The static-λ frontier** (``evaluation.frontier``; ``--frontier off`` skips it): static λ
   0.1 … 0.9 on the tuning seeds, scored at T/4, T/2, T and 2T; the best static λ is chosen there
   by a documented rule and becomes the reference ``static:<λ*>`` (``--reference SPEC`` overrides).
2. **Runs**: for every task, evaluation seed k (0 … ``--seeds``-1) and method, one episode
   (``env.reset(seed=k)``: every method of a seed meets the same minibatches, noise and probe
   set), mid-episode probes every ``--eval-every`` updates (steps to forget), then the final
   model is sampled from seed k's noise (the same for every method) and scored.
3. **Analysis**: summaries (mean with Student-t intervals), paired comparisons of every method
   with the reference, the verdict, the resolution, the gap to the retrain oracle, costs.

Methods (``--methods``, comma-separated): any spec of the registry (``baselines.registry``:
``static:0.5``, ``vi:beta=0.1``, ``neyman``, ``naive``, ``neggrad``, ``erasediff``, ``siss-nois``,
``bernoulli``, ``vdu``, or a user's), ``base`` (the base model, no update), ``oracle`` (the retrain
oracle's weights) and ``ALGO:PATH`` (a policy of ``train_policy.py``; ``evaluation.methods``).

Tasks (``--tasks SET|TASKS``): every method is scored on every task of an instance set of the
preset (``unlearn_env.instances``), with per-task rows and aggregates over tasks × seeds. Without
it, the config's one task. By default the frontier runs on the evaluated tasks, except that
``--tasks test`` (the held-out set) tunes the best static λ on ``train``, where agents train.

Writes to ``--out``:

    results.csv              one row per task, method and seed (failed runs too, with their error)
    summary.csv              per task (and pooled), method and metric: mean, t-interval, n, SD, IQM
    paired.csv               per task (and pooled), method and metric: the paired comparison with the reference
    oracle_gaps.csv          the same against the retrain oracle (when ``oracle`` is a method)
    frontier.csv             per λ and budget: mean and t-interval over tasks × tuning seeds; the choice
    frontier/                the frontier's records (runs/<task>/*.json), points.csv, settings.json
    report.md                the tables, verdict, resolution, frontier, plots, command and configuration
    plots/*.png              λ trajectories, probes against the step, intervals, sample grids, the frontier
    samples/[<task>/]<method>_seed<k>.npz   the scored samples: images uint8 (N, 28, 28), labels (N,)
    runs/[<task>/]<method>_seed<k>.json     everything about one run; its presence marks the run as done
    settings.json            what the runs depend on; once runs are done, a rerun with other settings is refused
    cache/[<task>/]base_seed<k>.pt         the base model's samples of seed k (SSIM reference)

Rerunning with the same ``--out`` skips finished runs (frontier runs too) and retries failed ones;
a run that raises is recorded as failed and the others go on. A finished RL run is redone when
its spec now resolves to another model file (by SHA-256). The exit status is 1 if any run failed.

Grids on Ray (``evaluation.grid``): ``--workers N`` runs the runs of step 2, N at a time, on a
local Ray instance; ``--ray-address ADDR`` (or ``$RAY_ADDRESS``) on a cluster;
``--cpus-per-run`` and ``--gpus-per-run`` say what each holds. The driver writes the same
records, so the outputs and resuming are as in-process; Ctrl-C keeps the finished records and
exits with status 130. The frontier (step 1) runs in-process.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shlex
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from agents.runs import run_dir_of
from evaluation import analysis, frontier, grid, plots, report
from evaluation.judge import ensure_judge, ensure_validator
from evaluation.methods import Method, parse_methods
from evaluation.metrics import JudgeFeatures
from evaluation.probing import ProbedEnv, steps_to_forget
from evaluation.runs import RunRecord, RunStatus, RunStore, check_settings
from evaluation.sampling import EVALUATION_SAMPLERS, Sampler, parse_sampler
from evaluation.scoring import SampleSize, TaskScorer
from unlearn_env.cache import atomic_torch_save
from unlearn_env.config import PRESETS, ExperimentConfig, get_config, parse_overrides
from unlearn_env.data import DataError, to_uint8
from unlearn_env.diffusion import sampling_noise
from unlearn_env.env import UnlearningEnv
from unlearn_env.instances import HELD_OUT_SETS, TaskSet, resolve_task_set
from unlearn_env.pretrain import load_base_unet
from unlearn_env.seeds import MAX_EVALUATION_SEEDS, training_env_seed, tuning_seeds
from unlearn_env.tasks import parse_task


@dataclass(frozen=True)
class EvalDefaults:
    """Evaluation sizes of a preset; the command line overrides each."""

    seeds: int
    """Evaluation seeds 0 .. seeds-1."""
    forget_samples: int
    """Scored samples of the forget label per run (the forget rate's binomial sample)."""
    retain_per_class: int
    """Scored samples of every retain label per run."""
    sampler: Sampler
    eval_every: int
    """Probe the model every this many updates (0: never, and no steps to forget)."""
    probe_samples: int
    """Forget-label samples of a mid-episode probe."""
    probe_sampler: Sampler
    tuning_seeds: int
    """K tuning seeds of the static-λ frontier."""
    frontier_forget_samples: int
    frontier_retain_per_class: int


# cpu, measured at one torch thread on the shared 2-core machine: a SISS update 0.58 s, DPM-Solver++-10
# 35 ms per image (20 steps: 66 ms). A run: 60 updates (35 s), 512 + 9 x 32 samples (28 s), scoring and the
# loss gap (about 10 s), six 64-sample probes (13 s): about 1.5 minutes. The paper preset is a GPU run.
# benchmarks/sampler_check.py on the cpu base model (256 + 9 x 32 samples, seed 0): DPM-Solver++ at 10, 15,
# 20 and 25 steps gave forget rates 0.113-0.121 (Wilson 95 % interval about +-0.04), digit shares
# 0.50-0.48 and retain KIDs within 11 % of each other, less than two draws of DDIM-50 from other noise
# differ (8 %); so cpu samples with 10 steps. DDIM-50 itself differs from all of them (its clipping,
# evaluation.sampling) and is not the reference here.
PRESET_DEFAULTS: dict[str, EvalDefaults] = {
    "test": EvalDefaults(seeds=2, forget_samples=16, retain_per_class=4, sampler=EVALUATION_SAMPLERS["test"],
                         eval_every=4, probe_samples=8, probe_sampler=Sampler("ddim", 2), tuning_seeds=2,
                         frontier_forget_samples=8, frontier_retain_per_class=2),
    "cpu": EvalDefaults(seeds=10, forget_samples=512, retain_per_class=32, sampler=EVALUATION_SAMPLERS["cpu"],
                        eval_every=10, probe_samples=64, probe_sampler=Sampler("dpmsolver++", 10), tuning_seeds=3,
                        frontier_forget_samples=256, frontier_retain_per_class=16),
    "paper": EvalDefaults(seeds=10, forget_samples=1024, retain_per_class=128, sampler=EVALUATION_SAMPLERS["paper"],
                          eval_every=25, probe_samples=128, probe_sampler=Sampler("dpmsolver++", 10), tuning_seeds=3,
                          frontier_forget_samples=512, frontier_retain_per_class=64),
}
DEFAULT_METHODS = "base,oracle,vi,neyman"
"""The reference (the best static λ) is added to these."""


def sampler_arg(text: str) -> Sampler:
    """argparse type of ``--sampler``: ``ddim-50``, ``dpmsolver++-20``."""
    try:
        return parse_sampler(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def float_list(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated numbers."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated method specs (see above)")
    parser.add_argument("--tasks", default=None, metavar="SET|TASKS",
                        help="score every task of an instance set (train, test) or of comma-separated tasks")
    parser.add_argument("--seeds", type=int, default=None, help="evaluation seeds 0 .. SEEDS-1 (default: by preset)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: results/evaluate_<preset>)")
    parser.add_argument("--forget-samples", type=int, default=None, help="scored forget-label samples per run")
    parser.add_argument("--retain-per-class", type=int, default=None, help="scored samples per retain label per run")
    parser.add_argument("--sampler", type=sampler_arg, default=None, help="e.g. dpmsolver++-20 or ddim-50")
    parser.add_argument("--eval-every", type=int, default=None, help="probe every K updates (0: off)")
    parser.add_argument("--probe-samples", type=int, default=None, help="forget-label samples per probe")
    parser.add_argument("--probe-sampler", type=sampler_arg, default=None)
    parser.add_argument("--reference", default=None, metavar="SPEC",
                        help="the reference of the paired comparisons (default: the frontier's best static λ)")
    parser.add_argument("--frontier", choices=("on", "off"), default="on", help="run the static-λ frontier")
    parser.add_argument("--frontier-tasks", default=None, metavar="SET|TASKS",
                        help="tasks of the frontier (default: the evaluated ones; train for --tasks test)")
    parser.add_argument("--frontier-lambdas", type=float_list, default=frontier.FRONTIER_LAMBDAS)
    parser.add_argument("--frontier-budgets", type=float_list, default=frontier.BUDGET_FRACTIONS,
                        help="budgets as fractions of the horizon T (must include 1)")
    parser.add_argument("--tuning-seeds", type=int, default=None, help="K tuning seeds of the frontier")
    parser.add_argument("--frontier-forget-samples", type=int, default=None)
    parser.add_argument("--frontier-retain-per-class", type=int, default=None)
    parser.add_argument("--interval", choices=("t", "bca"), default="t", help="paired interval (default: Student t)")
    parser.add_argument("--test", choices=("wilcoxon", "sign"), default="wilcoxon", help="paired test")
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                        help="environment config overrides, e.g. horizon=30 lr=2e-4")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    grid.add_arguments(parser)
    args = parser.parse_args(argv)
    defaults = PRESET_DEFAULTS[args.preset]
    for f in dataclasses.fields(defaults):
        if getattr(args, f.name) is None:
            setattr(args, f.name, getattr(defaults, f.name))
    args.out = args.out or Path("results") / f"evaluate_{args.preset}"
    if not 1 <= args.seeds <= MAX_EVALUATION_SEEDS:
        parser.error(f"need 1 <= --seeds <= {MAX_EVALUATION_SEEDS} (evaluation seeds stay below the tuning seeds)")
    if min(args.forget_samples, args.retain_per_class) < 2 or args.eval_every < 0:
        parser.error("need --forget-samples >= 2 and --retain-per-class >= 2 (KID, FID) and --eval-every >= 0")
    if args.eval_every and args.probe_samples < 1:
        parser.error("need --probe-samples >= 1")
    if args.frontier == "off" and args.reference is None:
        parser.error("--frontier off needs --reference SPEC (the frontier chooses the default reference)")
    if args.frontier == "on" and (args.tuning_seeds < 2 or min(args.frontier_forget_samples,
                                                              args.frontier_retain_per_class) < 2):
        parser.error("the frontier needs --tuning-seeds >= 2 and frontier sample counts >= 2")
    args.grid = grid.options_of(args, parser)
    return args


# ---------------------------------------------------------------------------------- the bench

@dataclass
class TaskBench:
    """One task's evaluation env, scorer and base model, and the base model's probe calls per seed."""

    config: ExperimentConfig
    env: UnlearningEnv
    scorer: TaskScorer
    base_unet: nn.Module
    base_probes: dict[int, dict[str, float]] = field(default_factory=dict)


class Bench:
    """What the runs share, built once: the judge and validator, and per task (on first use) its env and scorer.

    Each task gets its own env (its forget set, pools and the family's base model); ``reset()``
    restores the base model exactly between runs.
    """

    def __init__(self, args: argparse.Namespace, cfg: ExperimentConfig, configs: dict[str, ExperimentConfig]) -> None:
        self.args = args
        self.device = cfg.runtime.torch_device()
        self.judge = ensure_judge(cfg, self.device)
        self.validator = ensure_validator(cfg, self.device)
        self.features = JudgeFeatures(self.judge)
        self.configs = configs
        self.size = SampleSize(args.forget_samples, args.retain_per_class)
        self._tasks: dict[str, TaskBench] = {}
        self._scorers: dict[str, TaskScorer] = {}
        self._bases: dict[str, nn.Module] = {}
        self._frontier: dict[str, frontier.FrontierTask] = {}

    def scorer(self, task: str, env: UnlearningEnv) -> TaskScorer:
        """The task's scorer (its held-out references and their features, computed once)."""
        if task not in self._scorers:
            self._scorers[task] = TaskScorer.build(self.configs[task], env.scheduler, self.judge, self.validator,
                                                   self.features)
        return self._scorers[task]

    def base_unet(self, config: ExperimentConfig) -> nn.Module:
        """The family's base model (one per base-model key)."""
        key = config.base_model_key()
        if key not in self._bases:
            self._bases[key] = load_base_unet(config, self.device).eval()
        return self._bases[key]

    def task(self, task: str) -> TaskBench:
        """The task's env, scorer and base model, built on first use."""
        if task not in self._tasks:
            config = self.configs[task]
            env = UnlearningEnv(config=config)
            self._tasks[task] = TaskBench(config, env, self.scorer(task, env), self.base_unet(config))
        return self._tasks[task]

    def frontier_task(self, task: str, horizon: int) -> frontier.FrontierTask:
        """The frontier's env of the task (horizon: the longest budget), built on first use."""
        if task not in self._frontier:
            config = self.configs[task]
            env = UnlearningEnv(config=config.with_overrides(horizon=horizon))
            self._frontier[task] = frontier.FrontierTask(self.scorer(task, env), self.base_unet(config), env)
        return self._frontier[task]

    def release_frontier(self) -> None:
        """Free the frontier's envs."""
        self._frontier.clear()

    def base_samples(self, task: str, seed: int, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """The base model's scored samples of a task and seed, cached in ``cache`` (``<out>/cache[/<task>]``)."""
        bench = self.task(task)
        path = cache / f"base_seed{seed}.pt"
        if path.exists():
            bench.scorer.set_base_samples(seed, self.size, self.args.sampler,
                                          torch.load(path, weights_only=True)["samples"])
        samples, labels = bench.scorer.base_samples(bench.base_unet, seed, self.size, self.args.sampler)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save({"samples": samples, "labels": labels}, path)
        return samples, labels

    def run(self, method: Method, task: str, seed: int, cache: Path) -> tuple[RunRecord, np.ndarray | None, np.ndarray]:
        """One run: the method's episode (none for base and oracle) with probes, then sampling and scoring."""
        args, bench = self.args, self.task(task)
        start = time.perf_counter()
        record = new_record(method, task, seed, "ok")
        base_samples, labels = self.base_samples(task, seed, cache)
        record.policy_timesteps = method.policy_timesteps()
        env: ProbedEnv | UnlearningEnv = bench.env
        own_sampler = method.entry.sample
        # Probes sample env.unet with the diffusion sampler: a method with its own sampler (SFD) is not probed.
        if args.eval_every and own_sampler is None:
            env = ProbedEnv(bench.env, args.eval_every,
                            lambda: bench.scorer.probe(bench.env.unet, seed, args.probe_samples, args.probe_sampler),
                            bench.base_probes.get(seed))
        log = method.run(env, seed)
        probe_seconds = env.seconds if isinstance(env, ProbedEnv) else 0.0
        if isinstance(env, ProbedEnv) and env.curve:
            bench.base_probes.setdefault(seed, {k: v for k, v in env.curve[0].items() if k in PROBE_CALLS})
        if log.steps:
            record.episode_return, record.diverged = log.episode_return, log.diverged
            record.lambdas, record.steps = log.lambdas, log.steps
            record.episode_seconds = log.wall_seconds - probe_seconds
            if isinstance(env, ProbedEnv):
                record.curve = env.curve
                record.steps_to_forget = steps_to_forget(env.curve)
        unet = bench.env.unet
        eval_start = time.perf_counter()
        samples = None
        if own_sampler is not None:
            # The registry's sampling hook, from the labels and noise every method of the seed starts from.
            noise = sampling_noise(len(labels), bench.config.model.image_size, seed)
            samples = own_sampler(env, method.options, labels, noise).cpu()
        elif all(torch.isfinite(p).all() for p in unet.parameters()):
            samples = base_samples if is_base_model(bench.env) else bench.scorer.sample(unet, seed, self.size,
                                                                                       args.sampler)[0]
        if samples is None or not torch.isfinite(samples).all():
            if not log.diverged:
                raise FloatingPointError("the model's samples are not finite although its episode did not diverge")
            # An outcome of the method, not an error of the run: kept, and not retried.
            record.status, record.error = "diverged", "the episode diverged: the model's samples are not finite"
            record.wall_seconds = time.perf_counter() - start
            return record, None, labels.numpy()
        record.metrics = bench.scorer.score(unet, samples, labels, base_samples, seed)
        if log.steps and isinstance(env, ProbedEnv):
            horizon = bench.config.unlearn.horizon
            # Never within the budget: counted as the next probe after it, a lower bound (report and analysis).
            reached = record.steps_to_forget
            record.metrics["steps_to_forget"] = float(horizon + args.eval_every if reached is None else reached)
            record.metrics["forgotten_in_budget"] = float(record.steps_to_forget is not None)
        record.eval_seconds = time.perf_counter() - eval_start
        record.wall_seconds = time.perf_counter() - start
        return record, to_uint8(samples), labels.numpy()


PROBE_CALLS = ("forget_rate", "forget_digit_share", "neither_forget")


def is_base_model(env: UnlearningEnv) -> bool:
    """Whether the env's weights are still the base model's (``base``): its samples are then the base samples."""
    return all(torch.equal(live, base) for live, base in zip(env._live_tensors, env._base_tensors))


RunJob = tuple[Method, str, int, Path]
"""One run: the method, task, evaluation seed and the folder of the base samples' cache."""
RunResult = tuple[RunRecord, "np.ndarray | None", "np.ndarray | None"]
"""Its record, and for a scored run its samples (uint8 images) and their labels."""


def run_job(bench: Bench, job: RunJob) -> RunResult:
    """One run on ``bench``; an exception is recorded as a failed run, except a ``DataError``, which stops all."""
    method, task, seed, cache = job
    try:
        return bench.run(method, task, seed, cache)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - a failed run is recorded and the others go on
        return new_record(method, task, seed, "failed", error=f"{type(err).__name__}: {err}",
                          traceback=traceback.format_exc()), None, None


def describe_job(job: RunJob) -> str:
    """How the log names a run."""
    method, task, seed, _ = job
    return f"{method.name} seed {seed}"


def lost_run(job: RunJob, why: str) -> RunResult:
    """The failed record of a run whose Ray workers kept dying."""
    method, task, seed, _ = job
    return new_record(method, task, seed, "failed", error=f"WorkerDied: {why}"), None, None


def log_run(record: RunRecord) -> None:
    """The line of a finished run."""
    if record.status == "ok":
        m = record.metrics
        tqdm.write(f"{record.method} seed {record.seed}: forget rate {m['forget_rate']:.3f}, digit share "
                   f"{m['forget_digit_share']:.3f}, retain KID {m['kid_retain']:.4f} ({record.wall_seconds:.0f} s)")
    elif record.status == "failed":
        tqdm.write(f"{record.method} seed {record.seed} FAILED: {record.error}")
    else:
        tqdm.write(f"{record.method} seed {record.seed}: {record.error}")


def new_record(method: Method, task: str, seed: int, status: RunStatus, **fields: Any) -> RunRecord:
    """A record of ``method`` on ``task`` and ``seed``, with the identity of its policy file (RL methods)."""
    return RunRecord(method=method.name, spec=method.spec, seed=seed, status=status, task=task,
                     policy_model=method.policy_model, policy_sha256=method.policy_sha256, **fields)


# ------------------------------------------------------------------------------- the outputs

INTERVAL_COLUMNS: tuple[tuple[str, str, float], ...] = (
    ("forget_rate", "forget rate ↓", 1.0), ("forget_digit_share", "drawn as the digit ↑", 1.0),
    ("kid_forget", "KID×10³ to the digit ↓", 1e3), ("kid_retain", "retain KID×10³ ↓", 1e3),
    ("acc_retain", "retain accuracy ↑", 1.0), ("ssim_retain", "SSIM to base ↑", 1.0),
)


def frontier_section(args: argparse.Namespace, fsettings: frontier.FrontierSettings, points: list[frontier.FrontierPoint],
                     choice: frontier.StaticChoice, summary: list[dict[str, Any]], methods: list[str],
                     tasks: list[str], out: Path) -> report.FrontierSection:
    """frontier.csv, frontier/points.csv, the frontier plots and what the report says about them."""
    ftasks = list(fsettings.tasks)
    scopes = [(t, [t]) for t in ftasks] + ([(analysis.ALL_TASKS, ftasks)] if len(ftasks) > 1 else [])
    rows = frontier.aggregate(points, scopes, choice)
    report.write_csv(frontier.frontier_columns(), rows, out / "frontier.csv")
    report.write_csv(*frontier.point_rows(points), out / "frontier" / "points.csv")
    scope = analysis.pooled_scope(ftasks)
    same = set(ftasks) == set(tasks)
    positions, method_points = [], {}
    if same:
        for method in methods:
            cells = {m: analysis.cell(summary, scope, method, m) for m in ("forget_rate", "kid_retain",
                                                                           "forget_digit_share")}
            if all(c is not None for c in cells.values()):
                method_points[method] = {m: (c["mean"], c["mean_lo"], c["mean_hi"]) for m, c in cells.items()}
        static = frontier.static_intervals(rows, scope, choice.budget)
        positions = [frontier.front_position(m, p, static) for m, p in method_points.items()]
    figures = {"Frontier: forget rate against retain KID": ("kid_retain", "retain KID×10³ ↓", 1e3,
                                                            "plots/frontier_kid_retain.png"),
               "Frontier: forget rate against the share drawn as the digit": (
                   "forget_digit_share", "drawn as the forget digit ↑", 1.0, "plots/frontier_digit_share.png")}
    for caption, (metric, label, scale, image) in figures.items():
        plots.plot_frontier(rows, scope, metric, label, method_points, out / image, x_scale=scale)
    return report.FrontierSection(tasks=ftasks, seeds=list(fsettings.seeds), budgets=list(fsettings.budgets),
                                  choice=choice, rows=rows, scope=scope, headroom=frontier.headroom(rows, scope),
                                  positions=positions, same_tasks=same,
                                  plots={caption: image for caption, (*_, image) in figures.items()})


def write_outputs(out: Path, store: RunStore, records: list[RunRecord], methods: list[Method], reference: Method,
                  reference_note: str, tasks: list[str], settings: dict[str, Any], command: str,
                  args: argparse.Namespace, frontier_data: tuple | None) -> None:
    """summary.csv, paired.csv, oracle_gaps.csv, frontier.csv, the plots and report.md from the records."""
    names = [m.name for m in methods]
    summary = analysis.summarize(records, names, tasks)
    report.write_csv(analysis.SUMMARY_COLUMNS, summary, out / "summary.csv")
    rows = analysis.paired(records, names, reference.name, tasks, args.interval, args.test)
    report.write_csv(analysis.PAIRED_COLUMNS, [r.to_row() for r in rows], out / "paired.csv")
    scope = analysis.pooled_scope(tasks)
    oracle = next((m.name for m in methods if m.entry.name == "oracle"), None)
    gaps: list[analysis.PairedRow] = []
    if oracle is not None:
        gaps = analysis.paired(records, [n for n in names if n != oracle], oracle, tasks, args.interval, args.test,
                               metrics=analysis.ORACLE_GAP_METRICS)
        report.write_csv(analysis.PAIRED_COLUMNS, [r.to_row() for r in gaps], out / "oracle_gaps.csv")
    (out / "plots").mkdir(exist_ok=True)
    section = None
    if frontier_data is not None:
        section = frontier_section(args, *frontier_data, summary, names, tasks, out)
    figures: dict[str, str] = {}
    if summary:  # empty when every run failed
        figures["Means and 95 % t-intervals"] = "plots/intervals.png"
        plots.plot_intervals(summary, scope, names, INTERVAL_COLUMNS, out / figures["Means and 95 % t-intervals"])
    if any(r.lambdas for r in records):
        figures["λ trajectories"] = "plots/lambda_trajectories.png"
        plots.plot_lambda_trajectories(records, names, out / figures["λ trajectories"])
        figures["Probes against the unlearning step"] = "plots/metrics_vs_step.png"
        plots.plot_metrics_vs_step(records, names, out / figures["Probes against the unlearning step"])
    for name in names:
        ok = sorted(((r.task, r.seed) for r in records if r.method == name and r.status == "ok"))
        if ok:
            task, seed = ok[0]
            with np.load(store.samples_path(task, name, seed)) as npz:
                caption = f"Samples of {name}, seed {seed}" + (f" ({task})" if len(tasks) > 1 else "")
                figures[caption] = f"plots/samples_{name}.png"
                plots.plot_samples(npz["images"], npz["labels"], parse_task(task).digit, caption,
                                   out / figures[caption])
    data = report.ReportInput(
        command=command, settings=settings, records=records, methods=names, tasks=tasks,
        evaluation_seeds=list(range(args.seeds)), summary=summary, paired=rows, reference=reference.name,
        reference_note=reference_note, verdicts=analysis.verdicts(rows, scope, reference.name),
        resolutions=analysis.resolutions(rows, scope, reference.name),
        costs=analysis.costs(records, [(m.name, m.entry.data, m.entry.passes) for m in methods]),
        oracle=oracle, oracle_gaps=gaps, frontier=section, training_seeds=training_seeds(methods), plots=figures)
    report.write_report(out / "report.md", data)


def training_seeds(methods: list[Method]) -> dict[str, str]:
    """Per RL method, the env seed its agent's training started from (``unlearn_env.seeds``)."""
    out = {}
    for m in methods:
        if m.policy_model:
            seed = json.loads((run_dir_of(Path(m.policy_model)) / "config.json").read_text())["seed"]
            out[m.name] = (f"from {training_env_seed(seed)} (run seed {seed}; later episodes continue the env's "
                           "random stream)")
    return out


# --------------------------------------------------------------------------------------- main

def same_method(methods: list[Method], method: Method) -> Method | None:
    """The entry of ``methods`` that is ``method`` (the same registry entry and options), if any."""
    return next((m for m in methods if m.entry.name == method.entry.name and m.options == method.options), None)


def methods_and_reference(methods_text: str, reference_text: str | None, cfg: ExperimentConfig
                          ) -> tuple[list[Method], Method | None]:
    """``--methods`` parsed, with the ``--reference`` among them (``None`` without one).

    A reference that is one of the methods is that method; another is parsed with the methods, so
    that names stay unique (``ppo:runs/a/ppo/cpu_0`` against ``ppo:runs/b/ppo/cpu_0``).
    """
    specs = methods_text.split(",")
    methods = parse_methods(specs, cfg)
    if reference_text is None:
        return methods, None
    same = same_method(methods, parse_methods([reference_text], cfg)[0])
    if same is not None:
        return methods, same
    methods = parse_methods([*specs, reference_text], cfg)
    return methods, methods[-1]


def resolve_tasks(args: argparse.Namespace, cfg: ExperimentConfig, overrides: dict[str, str]
                  ) -> tuple[TaskSet, TaskSet | None]:
    """The evaluated task set and the frontier's (None with ``--frontier off``)."""
    tasks = resolve_task_set(cfg, args.tasks, overrides)
    if args.frontier == "off":
        return tasks, None
    spec = args.frontier_tasks
    if spec is None and args.tasks is not None and args.tasks.strip() == HELD_OUT_SETS[1]:
        spec = HELD_OUT_SETS[0]  # tune λ on the training set, as the agents train there
    return tasks, (tasks if spec is None else resolve_task_set(cfg, spec, overrides))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "evaluate.py", *(sys.argv[1:] if argv is None else argv)])

    # 1. Settings, tasks and methods: every error surfaces here, before anything runs.
    try:
        overrides = parse_overrides(args.env_kwargs)
        cfg = get_config(args.preset, **overrides)
        tasks, frontier_tasks = resolve_tasks(args, cfg, overrides)
        methods, reference = methods_and_reference(args.methods, args.reference, cfg)
        fsettings = None
        if frontier_tasks is not None:
            fsettings = frontier.FrontierSettings(
                tasks=tuple(frontier_tasks.texts()), lambdas=args.frontier_lambdas,
                seeds=tuple(tuning_seeds(args.tuning_seeds)),
                budgets=frontier.budgets_of(cfg.unlearn.horizon, args.frontier_budgets), horizon=cfg.unlearn.horizon,
                size=SampleSize(args.frontier_forget_samples, args.frontier_retain_per_class),
                sampler=args.sampler)
    except (KeyError, ValueError) as err:
        raise SystemExit(f"error: {err.args[0] if err.args else err}") from None
    configs = {t.text: tasks.config_of(t, cfg) for t in tasks}
    if frontier_tasks is not None:
        configs.update({t.text: frontier_tasks.config_of(t, cfg) for t in frontier_tasks})
    texts = tasks.texts()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    store = RunStore(out, per_task=args.tasks is not None)
    # JSON round trip: tuples become lists, as in the settings.json of an earlier run.
    settings = json.loads(json.dumps({
        "config": {k: v for k, v in cfg.to_dict().items() if k != "runtime"},
        "tasks": tasks.to_dict() if args.tasks is not None else None,
        "evaluation": {"forget_samples": args.forget_samples, "retain_per_class": args.retain_per_class,
                       "sampler": args.sampler.name, "eval_every": args.eval_every,
                       "probe_samples": args.probe_samples, "probe_sampler": args.probe_sampler.name},
    }))
    check_settings(out / "settings.json", settings, final=store.any_done(), stale=list((out / "cache").rglob("*.pt")))

    # 2. What every run shares, built once.
    try:
        bench = Bench(args, cfg, configs)
    except DataError as err:  # a missing or malformed data folder: the message says which and where
        raise SystemExit(f"error: {err}") from None
    cache = (lambda task: out / "cache" / task) if store.per_task else (lambda task: out / "cache")

    # 3. The static-λ frontier, and the reference.
    frontier_data = None
    note = f"given by --reference {args.reference}" if reference is not None else ""
    if fsettings is not None:
        froot = out / "frontier"
        fdone = any(frontier.FrontierRecord.load(p).status == "ok" for p in (froot / "runs").rglob("*.json"))
        check_settings(froot / "settings.json", fsettings.to_dict(), final=fdone)
        try:
            frecords = frontier.run_frontier(fsettings, lambda t: bench.frontier_task(t, max(fsettings.budgets)), froot,
                                             log=tqdm.write)
        except DataError as err:
            raise SystemExit(f"error: {err}") from None
        bench.release_frontier()
        points = frontier.points_of(frecords)
        try:
            choice = frontier.choose_static_lambda(points, fsettings.horizon)
        except ValueError as err:
            if reference is None:
                raise SystemExit(f"error: the frontier cannot choose the best static λ ({err}): rerun to retry its "
                                 "failed runs, or pass --reference SPEC") from None
            tqdm.write(f"frontier: no best static λ ({err})")
        else:
            frontier_data = (fsettings, points, choice)
            if reference is None:
                reference = parse_methods([choice.spec], cfg)[0]
                note = f"the best static λ of the frontier, λ* = {choice.lam:g}"
            tqdm.write(f"frontier: best static λ {choice.lam:g} (reference {reference.spec})")
    assert reference is not None
    same = same_method(methods, reference)
    if same is None:
        methods.append(reference)  # static:<λ*>: its name cannot be another method's
    else:
        reference = same

    # 4. Runs, task by task and seed by seed, so that a seed's base samples are used while fresh;
    # in-process, or on Ray workers (evaluation.grid), the driver writing every record.
    runs = [(task, seed, method) for task in texts for seed in range(args.seeds) for method in methods]
    records: dict[tuple[str, str, int], RunRecord] = {}
    jobs: list[RunJob] = []
    for task, seed, method in runs:
        previous, message = store.finished(task, method.name, method.spec, seed, method.policy_sha256)
        if message:
            tqdm.write(message)
        if previous is not None:
            records[(task, method.name, seed)] = previous
        else:
            jobs.append((method, task, seed, cache(task).resolve()))

    def finish(job: RunJob, result: RunResult) -> bool:
        """Log and write one run's result; whether it failed."""
        record, images, labels = result
        log_run(record)
        records[(record.task, record.method, record.seed)] = record
        store.save(record, images, labels if images is not None else None)
        report.write_csv(*report.result_rows(list(records.values())), out / "results.csv")
        return record.status == "failed"

    progress = grid.GridProgress(len(runs), len(runs) - len(jobs), "evaluate", args.progress)
    try:
        if not args.grid.enabled:
            for job in jobs:
                progress.set_running(1, describe_job(job))
                progress.finished(failed=finish(job, run_job(bench, job)))
        elif jobs:
            # Every artefact is built here, once, and shipped to the workers (evaluation.grid).
            folders = grid.evaluation_artifacts([configs[t] for t in texts], methods)
            grid.run_grid(jobs, setup=functools.partial(Bench, args, cfg, configs), work=run_job, options=args.grid,
                          bundle=grid.bundle_of(folders, cfg.runtime), cache_dir=cfg.runtime.cache_dir,
                          describe=describe_job, on_result=finish,
                          on_lost=lambda job, why: finish(job, lost_run(job, why)), progress=progress)
    except DataError as err:  # a missing or malformed data folder: the message says which and where
        raise SystemExit(f"error: {err}") from None
    except grid.GridError as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        if not args.grid.enabled:
            raise
        progress.write(f"interrupted: {len(records)} of {len(runs)} runs are recorded in {out}; rerun the same "
                       "command to run the rest")
        raise SystemExit(grid.INTERRUPTED) from None
    finally:
        progress.close()

    # 5. Aggregates, plots and the report.
    ordered = [records[(task, m.name, seed)] for task in texts for seed in range(args.seeds) for m in methods]
    report.write_csv(*report.result_rows(ordered), out / "results.csv")
    report_settings = {**settings, "statistics": {"interval": args.interval, "test": args.test},
                       "frontier": None if fsettings is None else fsettings.to_dict()}
    write_outputs(out, store, ordered, methods, reference, note, texts, report_settings, command, args, frontier_data)
    failed = [r for r in ordered if r.status == "failed"]
    print(f"report: {out / 'report.md'}" + (f" ({len(failed)} failed run(s): rerun to retry)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
