"""The update loop every non-RL unlearning method shares: the env's own step with the method's update rule.

A method is an *update rule*: a function from the step's minibatch to an
:class:`~unlearn_env.env.Update` (direction, the four observation scalars, optionally lambda and
its own scalars). :meth:`UnlearningEnv.step_update` does everything else, identically for every
method: it draws the minibatch (the same stream of batches, timesteps, noise and coins for every
method of a seed), refuses a non-finite update (the episode ends with ``info["diverged"]``),
clips the direction with the env's ``max_grad_norm``, steps the env's AdamW, measures the probe
losses of the new weights and scores the step. :func:`run_update_episode` runs one episode of a
rule and logs the same per-step scalars as every other method (``EpisodeLog.record``) plus the
rule's own (``Update.scalars``, e.g. ``erasediff/coefficient``).

Units. Our losses are means over pixels (SPEC §3, :mod:`unlearn_env.siss`); the official SISS
code sums over pixels. The env's clip is already converted (the config's 1 divided by the pixel
count), so a rule returns the gradient of its mean-over-pixels loss and a constant of the
official code tied to the loss scale is divided by :attr:`ModelContext.pixels` where it must be.

Observation scalars. ``Update.values`` are ``(L_r, L_f, ||grad L_r||, ||grad L_f||)`` of the
rule's own losses; an entry a rule does not compute (naive deletion has no forget loss) is 0,
so the probe losses (``step/...`` from the env, the same probe set for every method) are what
compares methods, not these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import gymnasium as gym
import torch
from torch import Tensor, nn

from unlearn_env.env import Update
from unlearn_env.episode import EpisodeLog
from unlearn_env.siss import SISSBatch, UpdateRule

Compute = Callable[[SISSBatch], Update]
"""An update rule: the step's minibatch -> the step's :class:`Update`."""

MakeCompute = Callable[[gym.Env, int], Compute]
"""``make_compute(env, seed)``: the update rule of one episode, built after ``env.reset(seed=seed)``
(the weights are then the base model's), from ``env.unwrapped``."""


@dataclass(frozen=True)
class ModelContext:
    """What an update rule uses of the env: its UNet and parameters, the noise tables, the units."""

    model: nn.Module
    """The env's UNet (its compiled wrapper when ``compile_unet``: the same parameters)."""
    params: list[nn.Parameter]
    gamma: Tensor
    """sqrt(abar_t) per timestep."""
    sigma: Tensor
    """sqrt(1 - abar_t) per timestep."""
    rule: UpdateRule
    """The env's SISS combination rule (per-pixel rescale norm and clip)."""
    pixels: int
    """Values per image: a constant of the official (pixel-sum) code tied to the loss scale is divided by this."""
    device: torch.device
    bf16: bool

    @classmethod
    def of(cls, env: gym.Env) -> ModelContext:
        """The context of ``env`` (an ``UnlearningEnv`` or a wrapper that forwards its attributes)."""
        # _model is the module the env's own SISS step runs (compiled or not); reading it keeps
        # every method on the same forward implementation, so their measured times compare.
        return cls(env._model, env.params, env.gamma, env.sigma, env.update_rule, env.forget_images[0].numel(),
                   env.device, env.config.runtime.precision == "bf16")

    def autocast(self) -> AbstractContextManager:
        """The env's precision for UNet passes: bf16 autocast, or a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def noisy(self, images: Tensor, batch: SISSBatch) -> Tensor:
        """m_t = gamma_t images + sigma_t eps with the batch's timesteps and noise (shared by x and a, as officially)."""
        shape = (-1,) + (1,) * (images.dim() - 1)
        t = batch.timesteps
        return self.gamma[t].view(shape) * images + self.sigma[t].view(shape) * batch.noise

    def predict(self, m_t: Tensor, timesteps: Tensor, labels: Tensor) -> Tensor:
        """eps_theta(m_t, t, c), in float32."""
        with self.autocast():
            return self.model(m_t, timesteps, class_labels=labels).sample.float()

    def errors(self, images: Tensor, labels: Tensor, batch: SISSBatch, target: Tensor | None = None) -> Tensor:
        """Per-sample ||target - eps_theta(m_t, t, c)||^2, mean over pixels, with m_t noised from ``images``.

        ``target`` defaults to the batch's noise (the plain epsilon-loss); one forward pass.
        """
        pred = self.predict(self.noisy(images, batch), batch.timesteps, labels)
        goal = batch.noise if target is None else target
        return (pred - goal).flatten(1).square().mean(1)


def gradient(loss: Tensor, params: list[nn.Parameter], retain_graph: bool = False) -> list[Tensor]:
    """d loss / d params (zeros for parameters the loss does not reach): one backward pass."""
    return list(torch.autograd.grad(loss, params, retain_graph=retain_graph, materialize_grads=True))


def total_norm(grads: list[Tensor]) -> Tensor:
    """The global L2 norm of a list of tensors."""
    return torch.nn.utils.get_total_norm(grads)


def observation_values(
    loss_retain: Tensor | None = None,
    loss_forget: Tensor | None = None,
    grad_retain: list[Tensor] | None = None,
    grad_forget: list[Tensor] | None = None,
) -> Tensor:
    """``(L_r, L_f, ||grad L_r||, ||grad L_f||)`` for :class:`Update`, 0 where the rule computes no such term."""
    zero = torch.zeros(())
    entries = [
        zero if loss_retain is None else loss_retain.detach(),
        zero if loss_forget is None else loss_forget.detach(),
        zero if grad_retain is None else total_norm(grad_retain),
        zero if grad_forget is None else total_norm(grad_forget),
    ]
    device = next((e.device for e in entries if e.device.type != "cpu"), zero.device)
    return torch.stack([e.float().to(device) for e in entries])


def run_update_episode(env: gym.Env, make_compute: MakeCompute, seed: int) -> EpisodeLog:
    """Reset ``env`` with ``seed`` and step it to the end (T updates or divergence) with one update rule.

    ``env.reset`` is called on ``env`` and ``step_update`` on ``env.unwrapped`` (a wrapper such as
    ``evaluate.ProbedEnv`` is its own ``unwrapped`` and forwards both). A diverged step ends the
    episode and is recorded in ``log.diverged``; nothing is raised. ``log.wall_seconds`` is the
    episode's time without ``make_compute``'s one-time preparation (VDU's Fisher, computed once
    per env).
    """
    log = EpisodeLog(seed=seed)
    start = time.perf_counter()
    env.reset(seed=seed)
    base = env.unwrapped
    prepare_start = time.perf_counter()
    compute = make_compute(base, seed)
    prepare_seconds = time.perf_counter() - prepare_start
    names: list[str] = []

    def traced(batch: SISSBatch) -> Update:
        update = compute(batch)
        names[:] = list(update.scalars)
        return update

    done = False
    while not done:
        _, reward, terminated, truncated, info = base.step_update(traced)
        log.record(info, reward)
        log.steps[-1].update({name: float(info[name]) for name in names if name in info})
        done = terminated or truncated
    log.wall_seconds = time.perf_counter() - start - prepare_seconds
    return log
