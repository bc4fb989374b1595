"""The benchmark's methods: every ``--methods`` entry through the one registry of :mod:`baselines.registry`.

Besides the unlearning methods of ``baselines/``, three kinds of entries are registered here,
with runners of the registry's form ``runner(env, options, seed) -> EpisodeLog`` that leave the
model to score in the env, like every other method:

``base``
    the base model itself: the runner resets the env (which restores the base weights) and runs
    no update.
``oracle``
    the retrain oracle (``cfg.oracle()``: the base recipe trained on X\\A only, cached like the
    base model): the runner resets the env and loads the oracle's weights of the episode's task
    (``env.config.oracle()``) into its UNet; the next reset restores the base weights.
``ALGO:PATH``
    a lambda-policy written by ``train_policy.py``, ``ALGO`` in :data:`agents.ALGOS`: ``PATH`` is its
    ``model.zip`` (or a checkpoint) or its run folder, which stands for the run's latest snapshot
    when the command starts (:func:`parse_methods` resolves it once and records the file's SHA-256,
    so every seed evaluates the same file, and a finished run is redone when the spec later
    resolves to another file).

Names (``results.csv``, file names) are the method's name and its options, file-safe and unique:
``static:0.5`` is ``static_0.5`` (a first option given by position is written bare),
``vi:beta=0.1`` is ``vi_beta0.1``; a policy is named by its ``name`` option if given, else by its
algorithm, ``ppo``, or ``ppo_<run folder>`` when several of one algorithm are evaluated, or
``<parent>_ppo_<run folder>`` when their run folders share a name (``runs/paper/ppo/cpu_0`` and
``runs/outcome/ppo/cpu_0`` are ``paper_ppo_cpu_0`` and ``outcome_ppo_cpu_0``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
from torch import Tensor

from agents import ALGOS, LambdaPolicy, load_lambda_policy
from agents.policy import policy_snapshot
from agents.runs import run_dir_of
from baselines.registry import MethodSpec, MethodSpecError, parse_method_spec, register
from unlearn_env.config import ExperimentConfig
from unlearn_env.episode import EpisodeLog, run_episode
from unlearn_env.pretrain import load_base_unet


class MethodError(ValueError):
    """A ``--methods`` entry that cannot be run."""


# ------------------------------------------------------------------------------ base, oracle

@dataclass(frozen=True)
class NoOptions:
    """A method without hyper-parameters."""


def run_base(env: gym.Env, options: NoOptions, seed: int) -> EpisodeLog:
    """No update: the reset restores the base weights, which stay in the env to be scored."""
    start = time.perf_counter()
    env.reset(seed=seed)
    return EpisodeLog(seed=seed, wall_seconds=time.perf_counter() - start)


_ORACLE_WEIGHTS: dict[str, dict[str, Tensor]] = {}
"""Oracle state dicts (CPU) by their cache key: loaded once per task, however many seeds."""


def oracle_state(config: ExperimentConfig) -> dict[str, Tensor]:
    """The retrain oracle's weights of ``config``'s task (trained and cached on first use, like a base model)."""
    oracle = config.oracle()
    key = oracle.base_model_key()
    if key not in _ORACLE_WEIGHTS:
        _ORACLE_WEIGHTS[key] = load_base_unet(oracle, "cpu").state_dict()
    return _ORACLE_WEIGHTS[key]


def run_oracle(env: gym.Env, options: NoOptions, seed: int) -> EpisodeLog:
    """No update: the reset picks the task, then the env's UNet takes the oracle's weights of that task."""
    start = time.perf_counter()
    env.reset(seed=seed)
    base = env.unwrapped
    # Copied into the live tensors, which the next reset overwrites with the base weights again.
    base.unet.load_state_dict(oracle_state(base.config))
    return EpisodeLog(seed=seed, wall_seconds=time.perf_counter() - start)


register("base", NoOptions, run_base, data="none", passes="none",
         description="the base model itself, no update")
register("oracle", NoOptions, run_oracle, data="retain only", passes="a full retraining (the base recipe on X\\A)",
         description="the retrain oracle: the base model's recipe and budget on the retain set only")


# ------------------------------------------------------------------------------------ policies

@dataclass(frozen=True)
class PolicyOptions:
    """Where an RL method's policy is (``ppo:runs/ppo/cpu_0`` is ``ppo:path=runs/ppo/cpu_0``)."""

    path: str = ""
    """A ``model.zip``, a checkpoint or a run folder written by ``train_policy.py``."""
    name: str = ""
    """The method's name in the outputs (``ppo:runs/ppo/cpu_0:name=ppo_outcome``); empty: the algorithm's, with
    the run folder's added when two policies of one algorithm are evaluated together."""
    sha256: str = ""
    """The SHA-256 the model file must have when it is loaded; :func:`parse_methods` sets it (empty: not checked)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("needs the policy's model.zip or run folder, e.g. ppo:runs/ppo/cpu_0")


_POLICIES: dict[tuple[str, str], LambdaPolicy] = {}


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (policy files are a few MB at most)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_policy(options: PolicyOptions) -> LambdaPolicy:
    """The policy of ``options.path``, loaded once; refused if the file no longer has ``options.sha256``."""
    key = (options.path, options.sha256)
    if key not in _POLICIES:
        path = Path(options.path)
        policy = load_lambda_policy(path, device="cpu")
        # Hashed after loading: if it still matches, the file loaded is the one the records name.
        if options.sha256 and file_sha256(path) != options.sha256:
            raise RuntimeError(f"{path} changed after evaluate.py started (is training still running?): "
                               "rerun to evaluate the new snapshot")
        _POLICIES[key] = policy
    return _POLICIES[key]


def run_policy(env: gym.Env, options: PolicyOptions, seed: int) -> EpisodeLog:
    """One episode with the policy's deterministic lambda."""
    return run_episode(env, load_policy(options), seed)


for _algo in ALGOS:
    register(_algo, PolicyOptions, run_policy, data="retain+forget", passes="1F+2B (SISS) + the policy's forward",
             description=f"a {_algo} lambda-policy trained by train_policy.py")


# ----------------------------------------------------------------------------------- parsing

@dataclass(frozen=True)
class Method:
    """One parsed ``--methods`` entry: its registry entry, typed options and unique file-safe name."""

    spec: str
    name: str
    entry: MethodSpec
    options: Any

    @property
    def policy_model(self) -> str:
        """The model file an RL method loads (empty for other methods)."""
        return self.options.path if isinstance(self.options, PolicyOptions) else ""

    @property
    def policy_sha256(self) -> str:
        """That file's SHA-256 when the command started (empty for other methods)."""
        return self.options.sha256 if isinstance(self.options, PolicyOptions) else ""

    def policy_timesteps(self) -> int | None:
        """The training steps of an RL method's model (``None`` for other methods)."""
        if not isinstance(self.options, PolicyOptions):
            return None
        return int(load_policy(self.options).model.num_timesteps)

    def run(self, env: gym.Env, seed: int) -> EpisodeLog:
        """The method's episode of ``seed`` (none for ``base`` and ``oracle``); the model to score stays in ``env``."""
        return self.entry.runner(env, self.options, seed)


def _positional(spec: str) -> bool:
    """Whether the spec gives its first option by position (``static:0.5``)."""
    options = spec.strip().partition(":")[2]
    first = next((part for part in options.split(":") if part), "")
    return bool(first) and "=" not in first


def method_name(entry: MethodSpec, options: Any, spec: str) -> str:
    """The registry's run name (``vi_beta0.1``), with a positional first option written bare (``static_0.5``)."""
    fields = entry.option_fields()
    if not (fields and _positional(spec)):
        return entry.run_name(options)
    first = fields[0].name
    rest = dataclasses.replace(options, **{first: getattr(entry.options_cls(), first)})
    head = entry.name.replace("-", "_")
    tail = entry.run_name(rest)[len(head):]  # "" or "_key<value>..."
    value = getattr(options, first)
    return f"{head}_{f'{value:g}' if isinstance(value, float) else value}{tail}".replace("/", "-")


def resolve_policy(spec: str, algo: str, options: PolicyOptions, cfg: ExperimentConfig) -> PolicyOptions:
    """``options`` with ``path`` resolved to the model file (a run folder's latest snapshot) and its SHA-256.

    Refused (:class:`MethodError`): no such file or folder, no ``config.json`` of ``train_policy.py``,
    another algorithm, or an observation the evaluation env does not give (``observation`` or
    ``task_features`` other than the env's). Other unlearning settings only warn.
    """
    path = Path(options.path)
    try:
        if not path.exists():
            raise FileNotFoundError(f"{options.path!r} does not exist")
        trained = json.loads((run_dir_of(path) / "config.json").read_text())
        # A run folder is resolved once, so that every seed evaluates the same file; a file is
        # taken as given (it is loaded, and any damage found, when its first run starts).
        model = policy_snapshot(path).model if path.is_dir() else path
        sha256 = file_sha256(model)
    except (OSError, KeyError, ValueError, RuntimeError) as err:  # RuntimeError: no snapshot reads back
        raise MethodError(f"{spec!r}: {algo} needs a model.zip or run folder written by train_policy.py ({err})"
                          ) from None
    if trained.get("algo") != algo:
        raise MethodError(f"{spec!r}: that run trained {trained.get('algo')!r}, not {algo!r}")
    unlearn = trained.get("env_config", {}).get("unlearn", {})
    for key, default in (("observation", "paper"), ("task_features", False)):
        if unlearn.get(key, default) != getattr(cfg.unlearn, key):
            raise MethodError(f"{spec!r} was trained with {key}={unlearn.get(key, default)!r} but the evaluation env "
                              f"has {key}={getattr(cfg.unlearn, key)!r}: evaluate with --env-kwargs "
                              f"{key}={unlearn.get(key, default)} (every method then sees that observation)")
    if unlearn != json.loads(json.dumps(cfg.to_dict()["unlearn"])):
        warnings.warn(f"{spec!r} was trained with other unlearning settings than evaluated here", stacklevel=2)
    return dataclasses.replace(options, path=str(model), sha256=sha256)


def parse_methods(text: str | Sequence[str], cfg: ExperimentConfig) -> list[Method]:
    """Every entry of ``--methods`` (comma-separated, or a list of specs), parsed, resolved and uniquely named.

    Raises :class:`MethodError` (a ``ValueError``) naming the entry: an unknown method or option, a
    policy that cannot be found, two entries that are the same method, or names that collide.
    """
    specs = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not specs:
        raise MethodError("--methods is empty")
    methods: list[Method] = []
    for spec in specs:
        try:
            entry, options = parse_method_spec(spec)
        except MethodSpecError as err:
            raise MethodError(f"{spec!r}: {err}") from None
        if isinstance(options, PolicyOptions):
            options = resolve_policy(spec, entry.name, options, cfg)
            name = options.name or entry.name
        else:
            name = method_name(entry, options, spec)
        same = next((m for m in methods if m.entry.name == entry.name and m.options == options), None)
        if same is not None:
            raise MethodError(f"{same.spec!r} and {spec!r} are the same method: give it once")
        methods.append(Method(spec, name, entry, options))
    for algo in {m.entry.name for m in methods if isinstance(m.options, PolicyOptions)}:
        same = [m for m in methods if m.entry.name == algo and not m.options.name]
        if len(same) > 1:
            runs = [f"{algo}_{_run_name(Path(m.options.path))}" for m in same]
            if len(set(runs)) < len(runs):  # runs/paper/ppo/cpu_0 and runs/outcome/ppo/cpu_0
                runs = [_run_name(Path(m.options.path), depth=3) for m in same]
            named = {id(m): run for m, run in zip(same, runs)}
            methods = [dataclasses.replace(m, name=named[id(m)]) if id(m) in named else m for m in methods]
    names = [m.name for m in methods]
    if len(set(names)) < len(names):
        raise MethodError(f"two --methods entries share a name: {names}")
    bad = [n for n in names if not re.fullmatch(r"[\w.\-]+", n)]
    if bad:
        raise MethodError(f"method names {bad} are not file-safe; rename the run folders")
    return methods


def _run_name(model: Path, depth: int = 1) -> str:
    """The run folder's name: ``cpu_0`` for ``runs/ppo/cpu_0/model.zip`` or ``.../cpu_0/checkpoints/rl_model_...``.

    ``depth=3`` also names the folder above the algorithm's: ``outcome_ppo_cpu_0`` for ``runs/outcome/ppo/cpu_0``.
    """
    run = run_dir_of(model).resolve()
    return "_".join([*(p.name for p in reversed(run.parents[:depth - 1])), run.name])
