"""EraseDiff as the SISS code runs it (``DDPMDeletionLoss.erasediff`` and the combination in ``delete_tshirt.py``).

    L_r(theta) = E[ ||eps - eps_theta(gamma_t x + sigma_t eps, t, c_x)||^2 ]      retain draws x
    L_u(theta) = E[ ||u   - eps_theta(gamma_t a + sigma_t eps, t, c_a)||^2 ]      forget draws a, u ~ U[0, 1)^{C x H x W}

    g_r = grad L_r,   g_u = grad L_u
    c   = max(eta - <g_r, g_u> / ||g_u||^2, 0)
    direction = g_r + c * g_u

The forget term *regresses* the prediction on forget samples to uniform [0, 1) noise, which is
not the noise that made them (N(0, I)): the model learns to output garbage on A. The sign is the
official one: ``delete_tshirt.py`` sets ``scaling_factor = -max(eta - <g_x, g_a>/||g_a||^2, 0)``
and ``grad = g_x - scaling_factor * g_a``, i.e. both terms are descended and c >= 0. This is the
first-order rule of BOME (which EraseDiff builds on): c = 0 while the retain step already lowers
L_u at least as fast as eta ||g_u||^2 asks (projection <g_r, g_u>/||g_u||^2 >= eta), and
otherwise just enough of g_u is added to make <direction, g_u> = eta ||g_u||^2.

Cost per update: 2 forward + 2 backward passes (one of each over the B retain draws, one of each
over the B forget draws: the two losses share no forward pass). Data: retain and forget sets.

Units of eta (default 1e-3, the official T-shirt config's ``deletion.eta``): the projection
<g_r, g_u>/||g_u||^2 is a ratio of two quantities that both scale with the square of the loss
scale, so our mean-over-pixels losses give the same ratio as the official pixel sums, and eta
is used *unconverted* (dividing it by the pixel count would change the rule). Only the
combined direction scales with the pixel count, which the env's converted clip absorbs.

Departures from the official code:

* the uniform targets come from a generator seeded from the episode's seed (:func:`target_generator`),
  not the global RNG, so a seed reproduces its run and the env's shared minibatch stream is untouched;
* losses are means over pixels (official: sums; see eta above); forget and retain draws are
  denoised with their labels (class-conditional model);
* ||g_u|| = 0 gives c = eta (the official code divides by zero).

EraseDiff's own repository (``JingWu321/EraseDiff``, ``ddpm/runners/diffusion.py``,
``train_ours``) differs from the SISS re-implementation used here, which is the one the issue
names: there the forget images are noised *with* the uniform noise they regress to (in its
first version; later versions switched to a pseudo-label target), the forget batch has its own
timesteps, the default combination is a fixed weight ``lambda_bome = 0.1`` and its adaptive
variant uses a cosine ``eta_bome - <g_r, g_q>/(||g_r|| ||g_q||)`` with ``eta_bome = 0.1``; its
K inner steps on the forget set only produce the constant subtracted in ``loss_q``, which does
not change g_q.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from baselines.loop import Compute, ModelContext, gradient, observation_values, run_update_episode
from baselines.registry import register
from unlearn_env.env import Update
from unlearn_env.episode import EpisodeLog
from unlearn_env.siss import SISSBatch

OFFICIAL_ETA = 1e-3
"""``deletion.eta`` of the official T-shirt config (SISS repository, ``config/delete_tshirt.yaml``)."""

_TARGET_STREAM = 0xE5A5ED1F
"""Mixed into the episode seed for the uniform targets' generator, so it is no other generator's stream."""


@dataclass(frozen=True)
class EraseDiffOptions:
    """Hyper-parameters of EraseDiff."""

    eta: float = OFFICIAL_ETA
    """The floor of the projection in c = max(eta - <g_r, g_u>/||g_u||^2, 0); scale-free, so not converted."""

    def __post_init__(self) -> None:
        if not self.eta >= 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")


def erasediff_coefficient(grad_retain: list[Tensor], grad_forget: list[Tensor], eta: float) -> Tensor:
    """c = max(eta - <g_r, g_u>/||g_u||^2, 0), a scalar tensor (eta where g_u = 0)."""
    dot = torch.stack([torch.vdot(r.flatten(), f.flatten()) for r, f in zip(grad_retain, grad_forget)]).sum()
    sq_norm = torch.stack([f.square().sum() for f in grad_forget]).sum()
    projection = torch.where(sq_norm > 0, dot / sq_norm.clamp_min(torch.finfo(sq_norm.dtype).tiny), 0.0)
    return (eta - projection).clamp_min(0.0)


def target_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """The generator of an episode's uniform targets: a function of the episode's seed only."""
    state = np.random.SeedSequence([seed, _TARGET_STREAM]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


def erasediff_rule(env: gym.Env, seed: int, options: EraseDiffOptions) -> Compute:
    """The update rule of one episode (its uniform targets drawn from :func:`target_generator` of ``seed``)."""
    ctx = ModelContext.of(env)
    generator = target_generator(seed, ctx.device)

    def compute(batch: SISSBatch) -> Update:
        loss_retain = ctx.errors(batch.x, batch.x_labels, batch).mean()
        grad_retain = gradient(loss_retain, ctx.params)
        uniform = torch.rand(batch.a.shape, generator=generator, device=ctx.device, dtype=torch.float32)
        loss_forget = ctx.errors(batch.a, batch.a_labels, batch, target=uniform).mean()
        grad_forget = gradient(loss_forget, ctx.params)
        coefficient = erasediff_coefficient(grad_retain, grad_forget, options.eta)
        direction = torch._foreach_add(grad_retain, torch._foreach_mul(grad_forget, coefficient))
        values = observation_values(loss_retain, loss_forget, grad_retain, grad_forget)
        return Update(direction, values, scalars={"erasediff/coefficient": coefficient})

    return compute


def run_erasediff(env: gym.Env, options: EraseDiffOptions, seed: int) -> EpisodeLog:
    """One episode of EraseDiff from the base model."""
    return run_update_episode(env, lambda base, s: erasediff_rule(base, s, options), seed)


register("erasediff", EraseDiffOptions, run_erasediff, data="retain+forget", passes="2F+2B",
         description="retain loss plus forget samples regressed to uniform noise, BOME's coefficient")
