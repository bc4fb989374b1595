"""Hybrid SFD + SISS (``sfd-siss``): SFD's data-free distillation, with SISS's importance-sampled forget term
on the generator's samples.

The adaptive-lambda paper (arXiv 2512.01054) names a hybrid of "SFD's data-free efficiency and
SISS's direct gradient control" without a formula. This one keeps all of :mod:`baselines.sfd`
(notation there) and changes one term: the fake score network's forget-label update, which SFD
trains on the generator's forget-label samples alone, becomes SISS's mixture of those samples and
the real forget set A, importance-sampled with one forward pass.

**Objective.** Pairs (x_i, a_i): x_i = G_theta(z_i, f), detached (the generator's forget-label
sample, SISS's "retain" side), a_i drawn from A (mirrored as the pretraining mirrored it), one
timestep t_i in [t_min, t_max), one noise eps_i and one coin per pair::

    m_t ~ q_lambda(. | x, a) = (1 - lambda) N(a_t x, b_t^2 I) + lambda N(a_t a, b_t^2 I)
    L_G = E[ w_x ||(m_t - a_t x)/b_t - eps_psi(m_t, t, f)||^2 ]
    L_A = E[ w_a ||(m_t - a_t a)/b_t - eps_psi(m_t, t, f)||^2 ]
    L_psi = w_sr E||eps - eps_psi(a_t G(z1, c) + b_t eps, t, c)||^2 + w_sf (L_G + gamma L_A)

with SISS's log-space importance weights w_x = q(m|x)/q_lambda, w_a = q(m|a)/q_lambda
(:func:`unlearn_env.siss.importance_weights`; both components carry the label f, so SPEC §3's
same-label formula applies) and squared errors summed over pixels, SFD's units. One forward pass of
psi serves both terms (SISS's efficiency); L_G is unbiased for SFD's own term and L_A for psi's
denoising loss on A. The generator's objective is SFD's unchanged::

    L_theta = w_gr L_SiD(G(z3, c); c, c) + w_gf L_SiD(G(z4, f); c_o, f)

so the forgetting signal reaches the generator twice: data-free, through the teacher's score of the
override label c_o (SFD), and from the forget images themselves, through psi (SISS's term).
``gamma = 0`` is SFD with its forget term estimated through the mixture (unbiased for SFD's, on
other draws).

**Why gamma L_A is added, not subtracted.** SISS subtracts its forget term from the loss of the
model that generates. Here it acts on the fake score network, which enters the generator's gradient
with the opposite sign: SiD moves a generated sample along p - q, toward the teacher's denoised
estimate p and away from the fake network's q. Training psi on A as if the generator drew it (gamma
> 0) makes q lean toward A wherever the generator's forget-label samples come near A, so p - q
points away from A: the generator is repelled from the forget images, beside SFD's pull toward the
override class. Subtracting L_A would teach psi that the generator draws A less than it does, and
pull the generator toward A. The repulsion does not fade once the generator has left A (psi keeps
counting A with weight gamma); the override term then holds the generator on the override class.

On the stand-in for the class task of :mod:`baselines.sfd` (its ``cpu`` budget, 150 iterations at
1e-3, override 7, the defaults lambda 0.5 and gamma 1), label 1 was drawn as a 7 in 97.5 % of 40
samples (a one or a trouser in none), as with ``sfd``, and the other labels as asked in 95.6 %
(``sfd``: 97.5 %); A was that model's forget set, the trousers its label 1 was trained with.

Data: the forget set A and the retain set's labels (``forget+labels``; no retain image). Cost:
SFD's 10F + 8B (psi's mixture forward replaces SFD's forget-term forward). Logged besides SFD's:
``sfd_siss/loss_generated`` (L_G) and ``sfd_siss/loss_forget_images`` (L_A). Evaluation samples the
one-step generator (the hook of :mod:`baselines.sfd`).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import torch
from torch import Tensor

from baselines.registry import register
from baselines.sfd import Budget, SFDOptions, SFDRun, run_sfd_family, sample_one_step
from unlearn_env import siss
from unlearn_env.episode import EpisodeLog
from unlearn_env.siss import SISSBatch


@dataclass(frozen=True)
class SFDSISSOptions(SFDOptions):
    """Hyper-parameters of ``sfd-siss``: SFD's and the mixture's."""

    lam: float = 0.5
    """SISS's mixing weight lambda: the share of pairs whose noisy input comes from the forget image."""
    siss_weight: float = 1.0
    """gamma >= 0: the weight of L_A (psi's loss on the forget images) beside L_G."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.lam < 1 or self.siss_weight < 0:
            raise ValueError(f"need 0 < lam < 1 and siss_weight >= 0, got {self.lam}, {self.siss_weight}")


class SFDSISSRun(SFDRun):
    """SFD whose fake score network learns the forget label from SISS's mixture of generations and forget images."""

    name = "sfd_siss"

    def __init__(self, env: gym.Env, settings: SFDSISSOptions, budget: Budget) -> None:
        super().__init__(env, settings, budget)
        task = self.base.task_data[self.base.task]
        self.forget_images = task.forget_images
        self.hflip = self.base.hflip_forget
        self.pixels = self.forget_images[0].numel()
        self._terms: dict[str, Tensor] = {}

    def mixture_batch(self, x_forget: Tensor, forget: Tensor) -> SISSBatch:
        """Pairs of the generations ``x_forget`` (the SISS batch's x) and drawn forget images (its a); t, eps, coins."""
        count = len(x_forget)
        idx = torch.randint(len(self.forget_images), (count,), generator=self.rng, device=self.device)
        a = self.forget_images[idx]
        if self.hflip:
            flip = torch.rand(count, generator=self.rng, device=self.device) < 0.5
            a = torch.where(flip.view(-1, 1, 1, 1), a.flip(-1), a)
        coin = torch.rand(count, generator=self.rng, device=self.device)
        return SISSBatch(x=x_forget, x_labels=forget, a=a, a_labels=forget, timesteps=self.timesteps(),
                         noise=self.noise(), coin=coin)

    def mixture_terms(self, batch: SISSBatch) -> tuple[Tensor, Tensor]:
        """(L_G, L_A) of psi on the mixture: one forward pass, SISS's weights, squared errors summed over pixels."""
        lam = self.settings.lam  # type: ignore[attr-defined]
        m_t, labels, from_forget = siss.mixture_sample(batch, lam, self.gamma, self.sigma)
        eps = self.fake(m_t, batch.timesteps, class_labels=labels).sample.float()
        err_x, err_a, w_x, w_a = siss.pair_terms(eps, m_t, batch, from_forget, lam, self.gamma, self.sigma)
        return (w_x * err_x).mean() * self.pixels, (w_a * err_a).mean() * self.pixels

    def fake_forget_loss(self, x_forget: Tensor, forget: Tensor) -> Tensor:
        """w_sf's term of L_psi: L_G + gamma L_A (module docstring)."""
        loss_generated, loss_forget_images = self.mixture_terms(self.mixture_batch(x_forget, forget))
        self._terms = {f"{self.name}/loss_generated": loss_generated.detach(),
                       f"{self.name}/loss_forget_images": loss_forget_images.detach()}
        return loss_generated + self.settings.siss_weight * loss_forget_images  # type: ignore[attr-defined]

    def observe_forget(self, overrides: Tensor, gap: Tensor) -> dict[str, Tensor]:
        """The mixture's two terms as scalars."""
        return dict(self._terms)


def run_sfd_siss(env: gym.Env, options: SFDSISSOptions, seed: int) -> EpisodeLog:
    """The registry's runner of ``sfd-siss``: one run from the base model (module docstring)."""
    return run_sfd_family(env, options, seed, SFDSISSRun)


register("sfd-siss", SFDSISSOptions, run_sfd_siss, data="forget+labels", sample=sample_one_step,
         passes="10F+8B (SFD's; the mixture's forward replaces SFD's forget-term forward)",
         description="hybrid SFD + SISS: SFD whose fake score network learns the forget label from SISS's "
                     "importance-sampled mixture of the generator's samples and the forget images")
