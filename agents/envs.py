"""The environment as the agents see it: lambda rescaled to [-1, 1], episode summaries in ``Monitor``.

Every agent acts through the registered ``SISSUnlearning-v0`` (the same update, state and
reward as the baselines); only these wrappers sit between:

1. ``RescaleAction(env, -1, 1)``: SB3 expects a symmetric action box; the env's is lambda itself.
2. :class:`EpisodeSummary`: adds lambda statistics and the reward terms summed over the
   episode to the info of its last step,
3. ``Monitor``: writes them with the return, the length and the episode's forget task
   (``task``, its text form) to ``<monitor_dir>/<rank>.monitor.csv`` and to ``info["episode"]``,
   where :class:`agents.callbacks.StepScalarsCallback` finds them.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import RescaleAction
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor

from unlearn_env import ENV_ID
from unlearn_env.rewards import ALL_TERMS
from unlearn_env.sb3_vec import make_sb3_batched_env

VecEnvKind = Literal["dummy", "subproc", "batched"]

REWARD_TERMS: tuple[str, ...] = ALL_TERMS
"""Keys of the env's ``info["reward_terms"]`` in every reward mode (a term a mode lacks sums to 0)."""

EPISODE_KEYS: tuple[str, ...] = (
    "lambda_mean",
    "lambda_std",
    "loss_retain_final",
    "loss_forget_final",
    "probe_loss_retain_final",
    "probe_loss_forget_final",
    "diverged",
    *(f"reward_{term}" for term in REWARD_TERMS),
)
"""What :class:`EpisodeSummary` adds to the last info of an episode (and ``Monitor`` records)."""
TASK_KEY = "task"
"""The env's info entry naming the episode's forget task, which ``Monitor`` records too."""


class EpisodeSummary(gym.Wrapper):
    """Adds the episode's lambda mean/std, final losses and summed reward terms to its last info."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._lambdas: list[float] = []
        self._terms: dict[str, float] = {}

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._lambdas = []
        self._terms = dict.fromkeys(REWARD_TERMS, 0.0)
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._lambdas.append(float(info["lambda"]))
        for term, value in info["reward_terms"].items():
            self._terms[term] = self._terms.get(term, 0.0) + float(value)
        if terminated or truncated:
            info = {
                **info,
                "lambda_mean": float(np.mean(self._lambdas)),
                "lambda_std": float(np.std(self._lambdas)),
                "loss_retain_final": float(info["loss_retain"]),
                "loss_forget_final": float(info["loss_forget"]),
                "probe_loss_retain_final": float(info["probe_loss_retain"]),
                "probe_loss_forget_final": float(info["probe_loss_forget"]),
                "diverged": float(info.get("diverged", False)),
                **{f"reward_{term}": self._terms[term] for term in REWARD_TERMS},
            }
        return obs, reward, terminated, truncated, info


def make_lambda_env(
    preset: str,
    env_kwargs: dict[str, Any],
    monitor_file: Path | None = None,
    append_monitor: bool = False,
) -> gym.Env:
    """``SISSUnlearning-v0`` wrapped for an agent: [-1, 1] actions, episode summaries, ``Monitor``."""
    env = gym.make(ENV_ID, preset=preset, **env_kwargs)
    env = RescaleAction(env, min_action=np.float32(-1.0), max_action=np.float32(1.0))  # float32 like the env's box
    env = EpisodeSummary(env)
    filename = str(monitor_file) if monitor_file is not None else None
    return Monitor(env, filename=filename, info_keywords=(*EPISODE_KEYS, TASK_KEY),
                   override_existing=not append_monitor)


def make_lambda_vec_env(
    preset: str,
    env_kwargs: dict[str, Any],
    n_envs: int = 1,
    monitor_dir: Path | None = None,
    vec_env: VecEnvKind = "dummy",
    append_monitor: bool = False,
) -> VecEnv:
    """``n_envs`` unlearning runs as one SB3 ``VecEnv``.

    ``dummy`` steps wrapped copies in turn and ``subproc`` in a process each (which pays only
    with a free core per copy and ``OMP_NUM_THREADS=1``); each copy holds its own diffusion
    model. ``batched`` steps all runs in one batched computation
    (:class:`unlearn_env.vector_env.BatchedUnlearningEnv`, which rescales actions from [-1, 1]
    itself); ``VecMonitor`` then records returns, lengths and tasks, without the episode summaries.
    ``env_kwargs`` may hold the env's ``tasks`` and ``task_order`` besides config overrides.
    """
    if monitor_dir is not None:
        monitor_dir.mkdir(parents=True, exist_ok=True)
    if vec_env == "batched":
        filename = str(monitor_dir / "batched") if monitor_dir is not None else None
        return VecMonitor(make_sb3_batched_env(preset, n_envs, seed=0, env_kwargs=env_kwargs), filename=filename,
                          info_keywords=(TASK_KEY,))
    factories = [
        partial(
            make_lambda_env,
            preset,
            env_kwargs,
            monitor_dir / str(rank) if monitor_dir is not None else None,
            append_monitor,
        )
        for rank in range(n_envs)
    ]
    if vec_env == "subproc":
        return SubprocVecEnv([partial(_in_worker, factory) for factory in factories])
    return DummyVecEnv(factories)


def _in_worker(make_env: Callable[[], gym.Env]) -> gym.Env:
    """Build a ``SubprocVecEnv`` worker's env, ignoring Ctrl-C there.

    A terminal sends SIGINT to the whole process group: the workers must outlive it so that
    the main process can save the model and close them in order.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return make_env()
