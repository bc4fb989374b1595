"""Benchmark λ-schedules for SISS unlearning: the base model, static λ, VI and RL agents, over seeds.

    python evaluate.py --preset cpu --methods base,static:0.5,vi,ppo:runs/ppo/cpu_0 --seeds 5 --out results/cpu

For every method and seed k, one full episode of ``SISSUnlearning-v0`` (``env.reset(seed=k)``)
unlearns the base model, which is then sampled (DDIM, seed k's noise, the same for every
method) and scored with the metrics of SPEC §6. Methods (``--methods``, comma-separated):

    base              the base model itself, no episode
    static:LAMBDA     constant λ (baselines.static), e.g. static:0.5
    vi[:K=V:K=V]      adaptive λ by variational inference (baselines.vi), e.g. vi:beta=0.1:hidden=64
    ALGO:PATH         a policy from train_policy.py, ALGO in agents.ALGOS: model.zip (or a checkpoint) or
                      its run folder, which stands for the run's latest snapshot when evaluate.py starts

Writes to ``--out``:

    results.csv              one row per method and seed (failed runs too, with their error)
    summary.csv              per method and metric: IQM and mean with 95 % bootstrap CIs, n, std
    report.md                the paper-style tables (IQM [95 % CI]), plots, command and configuration
    plots/*.png              λ trajectories, metrics against the unlearning step, intervals, sample grids
    samples/<method>_seed<k>.npz   the scored samples: images uint8 (N, 28, 28), labels (N,)
    runs/<method>_seed<k>.json     everything about one run; its presence marks the run as done
    settings.json            what the runs depend on; once runs are done, a rerun with other settings is refused
    cache/base_seed<k>.pt    the base model's samples of seed k (SSIM reference, the ``base`` method)

Rerunning with the same ``--out`` skips finished runs and retries failed ones; a run that
raises is recorded as failed and the others go on. A finished RL run is redone when its spec
now resolves to another model file (by SHA-256), e.g. after ``train_policy.py --resume``.
The exit status is 1 if any run failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
import shlex
import sys
import time
import traceback
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from baselines.static import run_static
from baselines.vi import VIConfig, run_vi_episode
from evaluation.judge import JudgeNet, ensure_judge, ensure_validator
from evaluation.metrics import JudgeFeatures, RealReference, data_level_forgetting, fid_kid, forget_calls, score_samples
from evaluation.sampling import Sampler, sample_per_label
from unlearn_env import report
from unlearn_env.cache import atomic_torch_save, atomic_write, atomic_write_json, atomic_write_text
from unlearn_env.config import PRESETS, ExperimentConfig, get_config, parse_overrides
from unlearn_env.data import DataError, to_uint8
from unlearn_env.env import UnlearningEnv
from unlearn_env.episode import EpisodeLog, run_episode
from unlearn_env.pretrain import load_base_unet

if TYPE_CHECKING:
    from agents import LambdaPolicy


@dataclass(frozen=True)
class EvalDefaults:
    """Evaluation sizes of a preset; the command line overrides each."""

    seeds: int
    samples_per_label: int
    ddim_steps: int
    eval_every: int
    """Score a cheap subset every this many unlearning steps (0: never)."""
    probe_samples_per_label: int
    probe_ddim_steps: int


# cpu: one full evaluation (10 labels x 32 samples x 50 DDIM steps) takes about 40 s on 2 cores, the
# probe (10 x 8 x 20) about 4 s, so 4 methods x 3 seeds stay near 15 minutes. The paper preset is a GPU run.
PRESET_DEFAULTS: dict[str, EvalDefaults] = {
    "test": EvalDefaults(seeds=2, samples_per_label=4, ddim_steps=5, eval_every=4, probe_samples_per_label=2,
                         probe_ddim_steps=3),
    "cpu": EvalDefaults(seeds=3, samples_per_label=32, ddim_steps=50, eval_every=20, probe_samples_per_label=8,
                        probe_ddim_steps=20),
    "paper": EvalDefaults(seeds=5, samples_per_label=200, ddim_steps=50, eval_every=50, probe_samples_per_label=32,
                          probe_ddim_steps=25),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--methods", default="base,static:0.5,vi", help="comma-separated method specs (see above)")
    parser.add_argument("--seeds", type=int, default=None, help="evaluate seeds 0 .. SEEDS-1 (default: by preset)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: results/evaluate_<preset>)")
    parser.add_argument("--samples-per-label", type=int, default=None, help="scored samples per label")
    parser.add_argument("--ddim-steps", type=int, default=None, help="DDIM steps of the scored samples")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="score forget rate and retain FID on a small sample every K steps (0: off)")
    parser.add_argument("--probe-samples-per-label", type=int, default=None)
    parser.add_argument("--probe-ddim-steps", type=int, default=None)
    parser.add_argument("--env-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                        help="environment config overrides, e.g. horizon=30 alpha=0.5")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    defaults = PRESET_DEFAULTS[args.preset]
    for name, value in dataclasses.asdict(defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.out = args.out or Path("results") / f"evaluate_{args.preset}"
    if args.seeds < 1 or args.samples_per_label < 2 or args.ddim_steps < 1 or args.eval_every < 0:
        parser.error("need --seeds >= 1, --samples-per-label >= 2 (FID), --ddim-steps >= 1, --eval-every >= 0")
    if args.eval_every and (args.probe_samples_per_label < 2 or args.probe_ddim_steps < 1):
        parser.error("need --probe-samples-per-label >= 2 and --probe-ddim-steps >= 1")
    return args


# ------------------------------------------------------------------------------------ methods

MethodKind = Literal["base", "static", "vi", "rl"]


@dataclass(frozen=True)
class Method:
    """One parsed ``--methods`` entry."""

    spec: str
    kind: MethodKind
    name: str
    lam: float = math.nan
    vi: VIConfig = field(default_factory=VIConfig)
    algo: str = ""
    path: Path = Path()
    model: Path | None = None
    """The model file an RL method loads: ``path``, or the latest snapshot of the run folder ``path``."""
    policy_sha256: str = ""
    """``model``'s SHA-256 when the command started; every seed evaluates this file."""


class MethodError(ValueError):
    """A ``--methods`` entry that cannot be run."""


def _vi_config(text: str) -> VIConfig:
    """``beta=0.1:hidden=64`` -> VIConfig, each value converted to its field's type."""
    hints = typing.get_type_hints(VIConfig)
    pairs = [pair.partition("=") for pair in text.split(":") if pair]
    bad = [key + sep + value for key, sep, value in pairs if not sep or key not in hints]
    if bad:
        raise MethodError(f"vi options are KEY=VALUE with KEY in {sorted(hints)}, got {bad}")
    try:
        # Literal fields (confine) stay strings; VIConfig checks their values.
        return VIConfig(**{key: value if typing.get_origin(hints[key]) is Literal else hints[key](value)
                           for key, _, value in pairs})
    except (TypeError, ValueError) as err:
        raise MethodError(f"bad vi options {text!r}: {err}") from None


def parse_method(spec: str, cfg: ExperimentConfig, algos: typing.Collection[str]) -> Method:
    """Parse one entry; raise :class:`MethodError` with the reason if it cannot run."""
    kind, _, arg = spec.partition(":")
    if kind == "base" and not arg:
        return Method(spec, "base", "base")
    if kind == "static":
        low, high = cfg.unlearn.lambda_min, cfg.unlearn.lambda_max
        try:
            lam = float(arg)
        except ValueError:
            raise MethodError(f"{spec!r}: static needs a λ, e.g. static:0.5") from None
        if not low <= lam <= high:
            raise MethodError(f"{spec!r}: λ must lie in [lambda_min, lambda_max] = [{low}, {high}]")
        return Method(spec, "static", f"static_{lam:g}", lam=lam)
    if kind == "vi":
        vi = _vi_config(arg)
        suffix = "_".join(f"{k}{v}" for k, v in dataclasses.asdict(vi).items() if v != getattr(VIConfig(), k))
        return Method(spec, "vi", f"vi_{suffix}" if suffix else "vi", vi=vi)
    if kind in algos:
        from agents.policy import policy_snapshot
        from agents.runs import run_dir_of

        path = Path(arg)
        try:
            if not arg or not path.exists():
                raise FileNotFoundError(f"{arg!r} does not exist")
            trained = json.loads((run_dir_of(path) / "config.json").read_text())
            # A run folder is resolved once, so that every seed evaluates the same file; a file is
            # taken as given (it is loaded, and any damage found, when its first run starts).
            model = policy_snapshot(path).model if path.is_dir() else path
            sha256 = file_sha256(model)
        except (OSError, KeyError, ValueError, RuntimeError) as err:  # RuntimeError: no snapshot reads back
            raise MethodError(f"{spec!r}: {kind} needs a model.zip or run folder written by train_policy.py ({err})"
                              ) from None
        if trained.get("algo") != kind:
            raise MethodError(f"{spec!r}: that run trained {trained.get('algo')!r}, not {kind!r}")
        if trained.get("env_config", {}).get("unlearn") != json.loads(json.dumps(cfg.to_dict()["unlearn"])):
            warnings.warn(f"{spec!r} was trained with other unlearning settings than evaluated here", stacklevel=2)
        return Method(spec, "rl", kind, algo=kind, path=path, model=model, policy_sha256=sha256)
    raise MethodError(f"unknown method {spec!r}: use base, static:LAMBDA, vi[:K=V...] or ALGO:PATH with ALGO in "
                      f"{sorted(algos)}")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (policy files are a few MB at most)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_methods(text: str, cfg: ExperimentConfig) -> list[Method]:
    """All entries of ``--methods``, with unique file-safe names (``ppo_<run>`` when two share an algorithm)."""
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise MethodError("--methods is empty")
    needs_agents = any(s.partition(":")[0] not in ("base", "static", "vi") for s in specs)
    algos: typing.Collection[str] = ()
    if needs_agents:
        from agents import ALGOS  # imports Stable-Baselines3: only when an agent is evaluated

        algos = ALGOS
    methods = [parse_method(s, cfg, algos) for s in specs]
    for algo in {m.algo for m in methods if m.kind == "rl"}:
        same = [m for m in methods if m.algo == algo]
        if len(same) > 1:
            methods = [dataclasses.replace(m, name=f"{algo}_{_run_name(m.path)}") if m in same else m for m in methods]
    names = [m.name for m in methods]
    if len(set(names)) < len(names):
        raise MethodError(f"two --methods entries share a name: {names}")
    bad = [n for n in names if not re.fullmatch(r"[\w.\-]+", n)]
    if bad:
        raise MethodError(f"method names {bad} are not file-safe; rename the run folders")
    return methods


def _run_name(path: Path) -> str:
    """The run folder's name: ``cpu_0`` for ``runs/ppo/cpu_0`` or ``runs/ppo/cpu_0/model.zip``."""
    return path.name if path.is_dir() else path.resolve().parent.name


# --------------------------------------------------------------------- mid-episode scoring

Probe = Callable[[], dict[str, float]]


class ProbedEnv:
    """Stands in for the env (``unwrapped`` included, as the VI baseline steps ``env.unwrapped``) and
    scores the model after reset and every ``every`` updates, for the metrics-against-step plot.

    Scoring samples with its own noise and forks the RNG for KID, so the episode is the same
    with or without probes; its time is kept apart from the episode's.
    """

    def __init__(self, env: UnlearningEnv, every: int, probe: Probe, initial: dict[str, float] | None) -> None:
        self._env = env
        self._every = every
        self._probe = probe
        self._initial = initial
        self.curve: list[dict[str, float]] = []
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    @property
    def unwrapped(self) -> ProbedEnv:
        return self

    def reset(self, **kwargs: Any) -> Any:
        result = self._env.reset(**kwargs)
        self.curve = []
        # The step-0 score is the base model's: identical for every method of a seed.
        self._record(0, self._initial)
        return result

    def step(self, action: Any) -> Any:
        result = self._env.step(action)
        self._after(result[2] or result[3], result[4])
        return result

    def step_lambda(self, lam: torch.Tensor) -> Any:
        result = self._env.step_lambda(lam)
        self._after(result[2] or result[3], result[4])
        return result

    def step_update(self, compute: Any) -> Any:
        result = self._env.step_update(compute)
        self._after(result[2] or result[3], result[4])
        return result

    def _after(self, done: bool, info: dict[str, Any]) -> None:
        if info["step"] % self._every == 0 or done:
            self._record(info["step"])

    def _record(self, step: int, known: dict[str, float] | None = None) -> None:
        start = time.perf_counter()
        self.curve.append({"step": step, **(known if known is not None else self._probe())})
        self.seconds += time.perf_counter() - start


# ---------------------------------------------------------------------------------- running

@dataclass
class Bench:
    """What every run shares: the env, the judge and validator, the real images, the base model and its samples."""

    args: argparse.Namespace
    env: UnlearningEnv
    judge: JudgeNet
    validator: JudgeNet
    real: RealReference
    features: torch.nn.Module
    """The judge's features, those of the real images computed once (``RealReference.feature_extractor``)."""
    base_unet: torch.nn.Module
    cache_dir: Path
    policies: dict[str, LambdaPolicy] = field(default_factory=dict)
    base_probes: dict[int, dict[str, float]] = field(default_factory=dict)

    def sample(
        self, unet: torch.nn.Module, seed: int, per_label: int, ddim_steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples of every label from seed's noise (labels ordered 0, 0, ..., 9)."""
        return sample_per_label(unet, self.env.scheduler, self.env.config.model, per_label, seed,
                                Sampler("ddim", ddim_steps))

    def base_samples(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The base model's scored samples of ``seed``, cached in ``<out>/cache``."""
        path = self.cache_dir / f"base_seed{seed}.pt"
        if path.exists():
            cached = torch.load(path, weights_only=True)
            return cached["samples"], cached["labels"]
        samples, labels = self.sample(self.base_unet, seed, self.args.samples_per_label, self.args.ddim_steps)
        atomic_torch_save({"samples": samples, "labels": labels}, path)
        return samples, labels

    def probe(self, seed: int) -> dict[str, float]:
        """Forget rate and retain FID of the env's current model on a small sample (seed's noise)."""
        cfg = self.env.config
        samples, labels = self.sample(self.env.unet, seed, self.args.probe_samples_per_label,
                                      self.args.probe_ddim_steps)
        forget = labels == cfg.data.forget_class
        fid_retain = fid_kid(self.real.retain_digits, samples[~forget], self.features, kid_subsets=1, seed=seed)[0]
        forget_rate = forget_calls(samples[forget], self.judge, cfg.data)["forget_rate"]
        return {"forget_rate": forget_rate, "fid_retain": fid_retain}

    def policy(self, method: Method) -> LambdaPolicy:
        """``method.model``, loaded once; refused if it no longer is the file hashed at the start."""
        if method.name not in self.policies:
            from agents import load_lambda_policy

            assert method.model is not None, "only RL methods have a policy"
            policy = load_lambda_policy(method.model, device="cpu")
            # Hashed after loading: if it still matches, the file loaded is the one the records name.
            if file_sha256(method.model) != method.policy_sha256:
                raise RuntimeError(f"{method.model} changed after evaluate.py started (is training still running?): "
                                   "rerun to evaluate the new snapshot")
            self.policies[method.name] = policy
        return self.policies[method.name]

    def episode(self, method: Method, seed: int) -> tuple[EpisodeLog, list[dict[str, float]], float]:
        """Run ``method``'s episode; returns its log, the probe curve and the probes' seconds."""
        every = self.args.eval_every
        env: ProbedEnv | UnlearningEnv = self.env
        if every:
            env = ProbedEnv(self.env, every, lambda: self.probe(seed), self.base_probes.get(seed))
        if method.kind == "static":
            log = run_static(env, method.lam, seed)
        elif method.kind == "vi":
            log = run_vi_episode(env, method.vi, seed)
        else:
            log = run_episode(env, self.policy(method), seed)
        if not isinstance(env, ProbedEnv):
            return log, [], 0.0
        self.base_probes.setdefault(seed, {k: v for k, v in env.curve[0].items() if k != "step"})
        return log, env.curve, env.seconds

    def run(self, method: Method, seed: int) -> tuple[report.RunRecord, np.ndarray, np.ndarray]:
        """One run: the episode (none for ``base``), then sampling and scoring; returns its record and uint8 samples."""
        start = time.perf_counter()
        record = new_record(method, seed, "ok")
        base_samples, labels = self.base_samples(seed)
        if method.kind == "base":
            samples, model = base_samples, self.base_unet
        else:
            if method.kind == "rl":
                record.policy_timesteps = self.policy(method).model.num_timesteps
            log, record.curve, probe_seconds = self.episode(method, seed)
            record.episode_return, record.diverged = log.episode_return, log.diverged
            record.lambdas, record.steps = log.lambdas, log.steps
            record.episode_seconds = log.wall_seconds - probe_seconds
            samples = self.sample(self.env.unet, seed, self.args.samples_per_label, self.args.ddim_steps)[0]
            model = self.env.unet
        eval_start = time.perf_counter()
        record.metrics = score_samples(samples, labels, base_samples, self.judge, self.env.config, seed,
                                       validator=self.validator, real=self.real, features=self.features)
        record.metrics.update(data_level_forgetting(model, self.env.scheduler, self.env.config, seed))
        record.eval_seconds = time.perf_counter() - eval_start
        record.wall_seconds = time.perf_counter() - start
        return record, to_uint8(samples), labels.numpy()


def new_record(method: Method, seed: int, status: report.RunStatus, **fields: Any) -> report.RunRecord:
    """A record of ``method`` and ``seed``, with the identity of its policy file (RL methods)."""
    return report.RunRecord(method=method.name, spec=method.spec, seed=seed, status=status,
                            policy_model=str(method.model or ""), policy_sha256=method.policy_sha256, **fields)


def save_samples(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """``np.savez_compressed`` through a temporary file, so a reader never sees half an archive."""
    atomic_write(path, lambda handle: np.savez_compressed(handle, images=images, labels=labels))


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix runs of different settings in ``out``; (re)write ``settings.json`` while it holds no run."""
    path = out / "settings.json"
    try:
        previous = json.loads(path.read_text()) if path.exists() else None
    except ValueError as err:
        raise SystemExit(f"{path} is not valid JSON ({err}): repair or delete it") from None
    if previous == settings:
        return
    if previous is not None:
        if any(report.RunRecord.load(run).status == "ok" for run in (out / "runs").glob("*.json")):
            raise SystemExit(f"{out} holds runs made with other settings (this command's != the folder's: "
                             f"{'; '.join(_differences(settings, previous))}): use another --out, or delete the folder")
        # No run succeeded with the old settings (the env could not be built, every run failed, or
        # Ctrl-C during the first run), but a first run may have cached base samples made with them.
        for stale in (out / "cache").glob("base_seed*.pt"):
            stale.unlink()
    atomic_write_json(settings, path)


def _differences(new: Any, old: Any, key: str = "") -> list[str]:
    """``key: new != old`` for every leaf of two JSON values that differs; keys are dotted paths."""
    if isinstance(new, dict) and isinstance(old, dict):
        return [line for k in sorted(new.keys() | old.keys())
                for line in _differences(new.get(k), old.get(k), f"{key}.{k}" if key else k)]
    return [] if new == old else [f"{key}: {json.dumps(new)} != {json.dumps(old)}"]


def write_outputs(out: Path, records: list[report.RunRecord], methods: list[Method], settings: dict[str, Any],
                  command: str) -> None:
    """summary.csv, the plots and report.md from the records of this command's methods and seeds."""
    names = [m.name for m in methods]
    summary = report.summarize(records, names)
    report.write_csv(report.SUMMARY_COLUMNS, summary, out / "summary.csv")
    plots_dir = out / "plots"
    plots_dir.mkdir(exist_ok=True)
    plots: dict[str, str] = {}
    if summary:  # empty when every run failed
        plots["IQM and 95 % CIs"] = "plots/intervals.png"
        report.plot_intervals(summary, names, out / plots["IQM and 95 % CIs"])
    if any(r.lambdas for r in records):
        plots["λ trajectories"] = "plots/lambda_trajectories.png"
        report.plot_lambda_trajectories(records, names, out / plots["λ trajectories"])
        plots["Metrics against the unlearning step"] = "plots/metrics_vs_step.png"
        report.plot_metrics_vs_step(records, names, out / plots["Metrics against the unlearning step"])
    forget_class = settings["config"]["data"]["forget_class"]
    for name in names:
        ok = sorted((r.seed for r in records if r.method == name and r.status == "ok"))
        if ok:
            with np.load(out / "samples" / f"{name}_seed{ok[0]}.npz") as npz:
                caption = f"Samples of {name}, seed {ok[0]}"
                plots[caption] = f"plots/samples_{name}.png"
                report.plot_samples(npz["images"], npz["labels"], forget_class, caption, out / plots[caption])
    report.write_report(out / "report.md", command=command, settings=settings, records=records, methods=names,
                        summary=summary, plots=plots)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "evaluate.py", *(sys.argv[1:] if argv is None else argv)])

    # 1. Settings and methods: every error surfaces here, before anything runs.
    try:
        cfg = get_config(args.preset, **parse_overrides(args.env_kwargs))
        methods = parse_methods(args.methods, cfg)
    except (KeyError, ValueError) as err:
        raise SystemExit(f"error: {err.args[0] if err.args else err}") from None
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    # JSON round trip: tuples become lists, as in the settings.json of an earlier run.
    settings = json.loads(json.dumps({
        "config": {k: v for k, v in cfg.to_dict().items() if k != "runtime"},
        **{k: getattr(args, k) for k in ("samples_per_label", "ddim_steps", "eval_every", "probe_samples_per_label",
                                         "probe_ddim_steps")},
    }))
    check_settings(out, settings)

    # 2. What every run shares, built once: reset() restores the base model exactly between runs.
    try:
        env = UnlearningEnv(config=cfg)
        judge = ensure_judge(cfg, env.device)
        validator = ensure_validator(cfg, env.device)
        real = RealReference.build(cfg.data)
        base_unet = load_base_unet(cfg, env.device)
    except DataError as err:  # a missing or malformed data folder: the message says which and where
        raise SystemExit(f"error: {err}") from None
    bench = Bench(args=args, env=env, judge=judge, validator=validator, real=real,
                  features=real.feature_extractor(JudgeFeatures(judge)),
                  base_unet=base_unet, cache_dir=out / "cache")

    # 3. Runs, seed by seed so that a seed's base samples are used while fresh; results.csv after each.
    runs = [(method, seed) for seed in range(args.seeds) for method in methods]
    records: dict[tuple[str, int], report.RunRecord] = {}
    bar = tqdm(runs, desc="evaluate", unit="run", disable=not args.progress, dynamic_ncols=True)
    for method, seed in bar:
        path = out / "runs" / f"{method.name}_seed{seed}.json"
        samples_path = out / "samples" / f"{method.name}_seed{seed}.npz"
        if path.exists() and samples_path.exists():
            previous = report.RunRecord.load(path)
            if previous.status == "ok" and previous.spec == method.spec:
                if previous.policy_sha256 == method.policy_sha256:
                    records[(method.name, seed)] = previous
                    tqdm.write(f"skip {method.name} seed {seed}: done in an earlier run")
                    continue
                # Records older than the policy hash have none: rerun them too.
                tqdm.write(f"rerun {method.name} seed {seed}: the policy changed since the earlier run "
                           f"(SHA-256 {previous.policy_sha256[:12] or 'unknown'} -> {method.policy_sha256[:12]})")
        bar.set_postfix_str(f"{method.name} seed {seed}")
        try:
            record, images, labels = bench.run(method, seed)
            save_samples(samples_path, images, labels)
            m = record.metrics
            tqdm.write(f"{method.name} seed {seed}: forget rate {m['forget_rate']:.3f}, "
                       f"FID retain {m['fid_retain']:.2f}, SSIM {m['ssim_retain']:.3f} ({record.wall_seconds:.0f} s)")
        except Exception as err:  # noqa: BLE001 - a failed run is recorded and the others go on
            record = new_record(method, seed, "failed", error=f"{type(err).__name__}: {err}",
                                traceback=traceback.format_exc())
            tqdm.write(f"{method.name} seed {seed} FAILED: {record.error}")
        records[(method.name, seed)] = record
        atomic_write_text(record.to_json(), path)
        report.write_csv(*report.result_rows(list(records.values())), out / "results.csv")
    bar.close()

    # 4. Aggregates, plots and the report.
    ordered = [records[(m.name, seed)] for seed in range(args.seeds) for m in methods]
    report.write_csv(*report.result_rows(ordered), out / "results.csv")
    write_outputs(out, ordered, methods, settings, command)
    failed = [r for r in ordered if r.status == "failed"]
    print(f"report: {out / 'report.md'}" + (f" ({len(failed)} failed run(s): rerun to retry)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
