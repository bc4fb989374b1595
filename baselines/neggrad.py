"""NegGrad: gradient ascent on the forget set's epsilon-loss (SISS code: ``DDPMDeletionLoss.simple_neg_del``).

    L_f(theta) = E[ ||eps - eps_theta(gamma_t a + sigma_t eps, t, c_a)||^2 ]    on the step's forget draws a

    direction = -s * grad L_f              (s = ``superfactor``)

Cost per update: 1 forward + 1 backward pass over the B forget draws (1F+1B). Data: the forget
set A only (mirrored like the pretraining's when it mirrors them).

Ascent has no floor: the forget loss can grow without bound and the weights with it. Divergence
is an outcome, not an error: the env ends the episode on a non-finite loss, gradient or probe
loss (``info["diverged"]``, crash penalty) and :func:`run_neggrad` returns the log with
``diverged`` set.

Default ``superfactor`` 0.0303: the value in the official T-shirt config
(``config/delete_tshirt.yaml``, ``loss_params.superfactor``, commented out there beside
SISS's ``lambd``). It is a pure factor on the whole direction, as in the official code, so it
needs no unit conversion (our clip is converted instead) and, as there, it barely matters: the
clip at 1 (pixel-sum units) acts on nearly every step and AdamW normalises the step by the
gradient's running RMS, so s changes the update only through Adam's epsilon and the steps the
clip leaves alone. The learning rate and the budget T are what set NegGrad's strength.

Departures from the official code: the loss is a mean over pixels (official: a sum; the clip is
converted to match); each forget draw is denoised with its label (class-conditional model).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch

from baselines.loop import Compute, ModelContext, gradient, observation_values, run_update_episode
from baselines.registry import register
from unlearn_env.env import Update
from unlearn_env.episode import EpisodeLog
from unlearn_env.siss import SISSBatch

OFFICIAL_SUPERFACTOR = 0.0303
"""``superfactor`` of the official T-shirt config (SISS repository, ``config/delete_tshirt.yaml``)."""


@dataclass(frozen=True)
class NegGradOptions:
    """Hyper-parameters of NegGrad."""

    superfactor: float = OFFICIAL_SUPERFACTOR
    """s > 0: the ascent direction is -s grad L_f."""

    def __post_init__(self) -> None:
        if not self.superfactor > 0:
            raise ValueError(f"superfactor must be > 0, got {self.superfactor}")


def neggrad_rule(env: gym.Env, seed: int, options: NegGradOptions) -> Compute:
    """The update rule of one episode: -s times the forget epsilon-loss's gradient."""
    ctx = ModelContext.of(env)

    def compute(batch: SISSBatch) -> Update:
        loss_forget = ctx.errors(batch.a, batch.a_labels, batch).mean()
        grad_forget = gradient(loss_forget, ctx.params)
        direction = torch._foreach_mul(grad_forget, -options.superfactor)
        return Update(direction, observation_values(loss_forget=loss_forget, grad_forget=grad_forget))

    return compute


def run_neggrad(env: gym.Env, options: NegGradOptions, seed: int) -> EpisodeLog:
    """One episode of NegGrad from the base model; a divergence ends it early and sets ``log.diverged``."""
    return run_update_episode(env, lambda base, s: neggrad_rule(base, s, options), seed)


register("neggrad", NegGradOptions, run_neggrad, data="forget only", passes="1F+1B",
         description="gradient ascent on the forget set's epsilon-loss, scaled by a superfactor")
