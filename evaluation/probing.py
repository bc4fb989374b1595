"""Mid-episode probes: the judge's calls on a fixed probe sample every ``every`` updates, and steps to forget.

:class:`ProbedEnv` wraps an :class:`~unlearn_env.env.UnlearningEnv` for one episode of any
method (it forwards ``reset``, ``step``, ``step_lambda``, ``step_update`` and every attribute, and
is its own ``unwrapped``, as the method runners step ``env.unwrapped``). After the reset and every
``every`` updates (and the last one) it calls the probe, which samples the env's current model
from the seed's fixed probe noise and returns the judge's calls, and adds the env's probe losses
of the same weights from ``info``. Probing draws from its own noise and forks every global RNG it
touches, so an episode is the same with or without probes; its time is kept apart.

:func:`steps_to_forget` reads the first probe step at which the forget rate is at most
:data:`FORGET_THRESHOLD`, as SISS counts deletion steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from unlearn_env.env import UnlearningEnv

FORGET_THRESHOLD = 0.05
"""A probe whose forget rate is at most this counts as forgotten."""

Probe = Callable[[], dict[str, float]]
"""Scores the env's current model on the probe sample: ``forget_rate``, ``forget_digit_share``, ``neither_forget``."""


class ProbedEnv:
    """The env of one probed episode; ``curve`` holds one point per probe, ``seconds`` their time."""

    def __init__(self, env: UnlearningEnv, every: int, probe: Probe, initial: dict[str, float] | None = None) -> None:
        if every < 1:
            raise ValueError(f"probe every >= 1 updates, got {every}")
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
        # The step-0 calls are the base model's: the same for every method of a task and seed.
        self._record(0, result[1], self._initial)
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
            self._record(info["step"], info)

    def _record(self, step: int, info: dict[str, Any], known: dict[str, float] | None = None) -> None:
        start = time.perf_counter()
        calls = known if known is not None else self._probe()
        losses = {key: float(info[key]) for key in ("probe_loss_retain", "probe_loss_forget") if key in info}
        self.curve.append({"step": step, **calls, **losses})
        self.seconds += time.perf_counter() - start



def steps_to_forget(curve: Sequence[dict[str, float]], threshold: float = FORGET_THRESHOLD) -> int | None:
    """The first probe step whose ``forget_rate`` is at most ``threshold``; ``None`` if no probe reaches it."""
    for point in sorted(curve, key=lambda p: p["step"]):
        if point["forget_rate"] <= threshold:
            return int(point["step"])
    return None
