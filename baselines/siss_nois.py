"""SISS without importance sampling (``siss-nois``; SISS code: ``DDPMDeletionLoss.double_forward_with_neg_del``).

    L_r(theta) = E[ ||eps - eps_theta(gamma_t x + sigma_t eps, t, c_x)||^2 ]      retain draws x
    L_f(theta) = E[ ||eps - eps_theta(gamma_t a + sigma_t eps, t, c_a)||^2 ]      forget draws a

    direction = c_r grad L_r - c_f grad L_f,   (c_r, c_f) = env.update_rule.coefficients(||grad L_f||)

Each retain sample and each forget sample is noised on its own, with the pair's shared noise eps
and timestep t (as the official code does: one ``noise`` and one ``timesteps`` for both halves),
and each gets its own forward pass: no mixture, no importance weights, exact plain losses for
both terms. The combination is the env's SISS rule, so siss-nois differs from SISS only in how
the two losses are estimated: in the default ``rescale`` mode (the official code's) c_r = 1 and
c_f = rescale_norm / ||grad L_f||, the forget gradient scaled to the configured norm (5 in the
official pixel-sum units, 5/pixels in ours: ``UpdateRule.from_config`` converts it); in
``weights`` mode the paper's n/(n-k) and (1+s) k/(n-k).

Cost per update: 2 forward + 2 backward passes (one of each over the B retain draws and over the
B forget draws). Data: retain and forget sets.

Departures from the official code: means over pixels instead of sums (the rescale norm and the
clip are converted, so the clipped direction is the official one over the pixel count); each half
is denoised with its labels (class-conditional model). A zero ||grad L_f|| leaves the forget term
out, as the official code's guard against an infinite factor does (the env's rule clamps the norm
at 1e-12 and multiplies zeros).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym

from baselines.loop import Compute, ModelContext, gradient, observation_values, run_update_episode, total_norm
from baselines.registry import register
from unlearn_env.env import Update
from unlearn_env.episode import EpisodeLog
from unlearn_env.siss import SISSBatch, combine


@dataclass(frozen=True)
class SISSNoISOptions:
    """siss-nois has no hyper-parameters of its own: the combination rule (mode, rescale norm) is the env's."""


def siss_nois_rule(env: gym.Env, seed: int, options: SISSNoISOptions | None = None) -> Compute:
    """The update rule of one episode: two plain losses from two forward passes, combined by the env's rule."""
    ctx = ModelContext.of(env)

    def compute(batch: SISSBatch) -> Update:
        loss_retain = ctx.errors(batch.x, batch.x_labels, batch).mean()
        grad_retain = gradient(loss_retain, ctx.params)
        loss_forget = ctx.errors(batch.a, batch.a_labels, batch).mean()
        grad_forget = gradient(loss_forget, ctx.params)
        coef_retain, coef_forget = ctx.rule.coefficients(total_norm(grad_forget))
        direction = combine(grad_retain, grad_forget, coef_retain, coef_forget)
        return Update(direction, observation_values(loss_retain, loss_forget, grad_retain, grad_forget))

    return compute


def run_siss_nois(env: gym.Env, options: SISSNoISOptions, seed: int) -> EpisodeLog:
    """One episode of SISS without importance sampling from the base model."""
    return run_update_episode(env, lambda base, s: siss_nois_rule(base, s, options), seed)


register("siss-nois", SISSNoISOptions, run_siss_nois, data="retain+forget", passes="2F+2B",
         description="SISS's two losses from separate forward passes, no importance weights, the env's rescale rule")
