"""The reviewer-proposed Bernoulli mixture without importance weights (SISS code: ``DDPMDeletionLoss.subscore_bernoulli``).

Each pair (x, a) of the step's minibatch flips the batch's coin: with probability lambda the pair
takes the forget sample a, else the retain sample x, noised with the pair's noise eps and timestep t
and denoised with the drawn sample's label, in ONE forward pass over the B drawn samples:

    m_t = gamma_t s + sigma_t eps,   s = a where coin < lambda, else x
    err = ||eps - eps_theta(m_t, t, c_s)||^2

    L_r = (1/B) sum_{x-draws} err / (1 - lambda)         L_f = (1/B) sum_{a-draws} err
    direction = c_r grad L_r - c_f grad L_f,   (c_r, c_f) = env.update_rule.coefficients(||grad L_f||)

The 1/(1 - lambda) makes L_r an unbiased estimate of the retain loss; the forget side's 1/lambda
is left out, as officially ("absorbed into superfactor which is auto-scaled each batch"): the
rescale rule (the default) sets the forget gradient's norm, so its scale does not matter there;
in ``weights`` mode L_f is lambda times the plain forget loss. Both sums are divided by B, the
batch size, not by the number of draws of each kind (as officially).

How this relates to SISS: on pairs whose labels differ, SISS's importance weights are exactly
1/(1 - lambda) on x-draws and 1/lambda on a-draws (``unlearn_env.siss``), so bernoulli and SISS
differ only on same-label pairs (retain digits of the forget label against the forget images),
where SISS weights each draw by both densities, and by the forget side's 1/lambda.

Cost per update: 1 forward + 2 backward passes (two gradients of one forward pass). Data: retain
and forget sets. ``lam`` (default 0.5, the official ``lambd``) is reported as the step's lambda,
so the env's smoothness penalty treats it as a constant action.

Departures from the official code: means over pixels instead of sums (rescale norm and clip are
converted); the coins are the batch's (the same for every method of a seed), drawn once per pair
(``coin < lambda``; the official ``rand > lambd`` picks the retain sample, the same up to a
measure-zero tie); labels follow the drawn sample (class-conditional model); a batch without
retain draws keeps its forget term (the official code zeroes both losses then, a guard against
empty tensors, not part of the method).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch

from baselines.loop import Compute, ModelContext, gradient, observation_values, run_update_episode, total_norm
from baselines.registry import register
from unlearn_env.env import Update
from unlearn_env.episode import EpisodeLog
from unlearn_env.siss import SISSBatch, combine, mixture_sample


@dataclass(frozen=True)
class BernoulliOptions:
    """Hyper-parameters of the Bernoulli mixture."""

    lam: float = 0.5
    """lambda in (0, 1): each pair takes the forget sample with this probability (the official ``lambd``)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.lam < 1.0:
            raise ValueError(f"lam must lie in (0, 1), got {self.lam}")


def bernoulli_rule(env: gym.Env, seed: int, options: BernoulliOptions) -> Compute:
    """The update rule of one episode: the coin-flip mixture's two unweighted sums, combined by the env's rule."""
    ctx = ModelContext.of(env)
    lam = options.lam

    def compute(batch: SISSBatch) -> Update:
        m_t, labels, from_forget = mixture_sample(batch, lam, ctx.gamma, ctx.sigma)
        pred = ctx.predict(m_t, batch.timesteps, labels)
        err = (pred - batch.noise).flatten(1).square().mean(1)
        size = len(err)
        loss_retain = torch.where(from_forget, 0.0, err).sum() / (size * (1.0 - lam))
        loss_forget = torch.where(from_forget, err, 0.0).sum() / size
        grad_retain = gradient(loss_retain, ctx.params, retain_graph=True)
        grad_forget = gradient(loss_forget, ctx.params)
        coef_retain, coef_forget = ctx.rule.coefficients(total_norm(grad_forget))
        direction = combine(grad_retain, grad_forget, coef_retain, coef_forget)
        values = observation_values(loss_retain, loss_forget, grad_retain, grad_forget)
        return Update(direction, values, lam, scalars={"bernoulli/forget_share": from_forget.float().mean()})

    return compute


def run_bernoulli(env: gym.Env, options: BernoulliOptions, seed: int) -> EpisodeLog:
    """One episode of the Bernoulli mixture from the base model."""
    return run_update_episode(env, lambda base, s: bernoulli_rule(base, s, options), seed)


register("bernoulli", BernoulliOptions, run_bernoulli, data="retain+forget", passes="1F+2B",
         description="SISS's coin-flip mixture without importance weights (the reviewer-proposed subscore_bernoulli)")
