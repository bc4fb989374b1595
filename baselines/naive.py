"""Naive deletion: fine-tune on the retain set only (SISS code: ``DDPMDeletionLoss.naive_del``).

    L(theta) = E[ ||eps - eps_theta(gamma_t x + sigma_t eps, t, c_x)||^2 ]      on the step's retain draws x

    direction = grad L

Cost per update: 1 forward + 1 backward pass over the B retain draws (1F+1B). Data: the retain set
X\\A only. The forget half of the env's minibatch is drawn (the batch stream is shared by every
method) but never used.

Departures from the official code (``losses/ddpm_deletion_loss.py``, ``delete_tshirt.py``):

* the loss is a mean over pixels, the official one a sum over pixels; with the env's clip in
  per-pixel units (the config's 1 divided by the pixel count) the clipped step is the official
  one divided by the pixel count, which AdamW's normalisation undoes (up to its epsilon);
* the model is class-conditional: each retain draw is denoised with its own label (the official
  T-shirt model is unconditional).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym

from baselines.loop import Compute, ModelContext, gradient, observation_values, run_update_episode
from baselines.registry import register
from unlearn_env.env import Update
from unlearn_env.episode import EpisodeLog
from unlearn_env.siss import SISSBatch


@dataclass(frozen=True)
class NaiveOptions:
    """Naive deletion has no hyper-parameters of its own (lr, batch and budget are the env's)."""


def naive_rule(env: gym.Env, seed: int, options: NaiveOptions | None = None) -> Compute:
    """The update rule of one episode: the retain epsilon-loss's gradient."""
    ctx = ModelContext.of(env)

    def compute(batch: SISSBatch) -> Update:
        loss_retain = ctx.errors(batch.x, batch.x_labels, batch).mean()
        grad_retain = gradient(loss_retain, ctx.params)
        return Update(grad_retain, observation_values(loss_retain=loss_retain, grad_retain=grad_retain))

    return compute


def run_naive(env: gym.Env, options: NaiveOptions, seed: int) -> EpisodeLog:
    """One episode of naive deletion from the base model."""
    return run_update_episode(env, lambda base, s: naive_rule(base, s, options), seed)


register("naive", NaiveOptions, run_naive, data="retain only", passes="1F+1B",
         description="fine-tune on the retain set only (epsilon-loss on the retain draws)")
