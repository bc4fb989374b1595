"""Adaptive-lambda SISS by variational inference (SPEC §4), through the environment's own update.

    python -m baselines.vi --preset cpu --seeds 3 --beta 0.01 --out runs

lambda is a latent variable inferred at every step from a context v. A small MLP q_phi(z | v)
gives (mu, log sigma) of a Gaussian over z; z = mu + sigma * xi with xi ~ N(0, 1)
(reparameterised); lambda = sigmoid(z), confined to [lambda_min, lambda_max]. The objective,
minimised jointly over theta (the diffusion model) and phi:

    ELBO(theta, phi) = L_SISS(theta; lambda) + beta * KL(q_phi(z | v) || N(0, 1))

with a single sample of lambda per step. How this runs on ``SISSUnlearning-v0`` (no second
copy of the SISS loop):

* theta: ``env.step_lambda(lambda)`` applies the environment's own SISS update with this
  lambda; the KL term does not depend on theta, so this is theta's ELBO step (in the env's
  configured ``mode``: ``weights`` is the paper's update, ``rescale`` the official code's).
* phi: ``step_lambda`` also returns L_SISS(theta_t; lambda) as a tensor differentiable in
  lambda, through the importance weights (the coin flips of the mixture and the model's
  errors are not differentiated, as in SPEC §4). The ELBO is backpropagated through
  lambda = sigmoid(mu + sigma * xi) into phi and Adam takes one step on phi per env step:
  phi learns online during the episode, fresh for each episode unless a net (and its
  optimiser) is passed in.
* v = [L_r, L_f, ||grad L_r||, ||grad L_f||] are the env's current observation entries 0-3:
  measured by the forward pass of the previous step (on theta before that step's update,
  with the previous lambda's mixture and batch), or on the restored base model after
  ``reset``. SPEC §4 measures v on the current theta; recomputing it would cost another
  forward and two backward passes per step, doubling the step, while the observation gives
  the same quantities one update (lr 1e-4) earlier. The net reads log(v): losses and
  gradient norms are positive and span orders of magnitude.

What phi learns: L_r and L_f are unbiased importance-sampling estimates, so their expectations
do not depend on lambda, but with the coins frozen the lambda-gradient of one batch's L_SISS is
positive on almost every batch (the retain weights on x-draws grow with lambda, the forget weights
on a-draws shrink). q_phi therefore mostly learns to lower lambda, at a rate set by ``lr_phi`` and
held back by beta * KL, whatever the context v says. As specified, the objective cannot make
lambda depend on v.

The well-posed variant, ``objective="lookahead"`` (method spec ``vi:objective=lookahead``),
keeps q_phi, the reparameterised lambda and the KL term, and replaces the data term by the probe
objective of the model the update produces, J(theta_{t+1}(lambda)) with J = -Phi, the ``outcome``
reward's potential. phi descends (dJ/dlambda) dlambda/dphi + beta dKL/dphi, where dJ/dlambda is the
exact one-step hypergradient through the clipped AdamW update (``baselines.lookahead``): 1
forward and 3 backward passes per step beyond the SISS step's 1 + 2. It is myopic (one step
ahead) and, like the ELBO, holds the mixture's coins fixed.

Confinement (``VIConfig.confine``): ``clamp`` takes lambda = sigmoid(z) as SPEC §4 and clamps
it to the bounds (no lambda-gradient while clamped); ``affine`` maps sigmoid(z) onto
[lambda_min, lambda_max] (a gradient everywhere; lambda = 0.5 at z = 0 either way).

Writes ``<out>/vi/<preset>_<seed>/`` per episode (TensorBoard events, ``episode.json``) and
``<out>/vi/<preset>_summary.json``; besides the scalars every method logs, ``vi/mu``,
``vi/sigma``, ``vi/kl`` and ``vi/elbo`` per step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from baselines import lookahead
from baselines.common import add_common_args, make_env, summarize, write_episode
from baselines.registry import register
from unlearn_env import siss
from unlearn_env.env import siss_update
from unlearn_env.episode import EpisodeLog, ScalarWriter
from unlearn_env.rewards import ProbeLosses

CONTEXT_DIM = 4
"""v = observation entries 0-3: L_r, L_f, ||grad L_r||, ||grad L_f||."""

LOG_SIGMA_RANGE = (-5.0, 2.0)
"""log sigma is clamped here: sigma in [0.007, 7.4] in logit units keeps q neither a point nor flat."""

Confinement = Literal["clamp", "affine"]
Objective = Literal["elbo", "lookahead"]


@dataclass(frozen=True)
class VIConfig:
    """Hyper-parameters of the VI baseline."""

    beta: float = 0.01
    """Weight of KL(q_phi(z|v) || N(0, 1)) in the ELBO (SPEC §4 suggests a sweep over 0.001-1)."""
    hidden: int = 32
    """Width of the inference MLP's two hidden layers."""
    lr_phi: float = 1e-3
    """Adam learning rate of phi."""
    confine: Confinement = "clamp"
    """How sigmoid(z) is confined to [lambda_min, lambda_max]: ``clamp`` or ``affine`` (module docstring)."""
    objective: Objective = "elbo"
    """``elbo``: SPEC §4's ELBO on L_SISS(theta_t; lambda); ``lookahead``: the probe objective after the
    update, J(theta_{t+1}(lambda)), learned from its one-step hypergradient (``baselines.lookahead``)."""

    def __post_init__(self) -> None:
        if self.beta < 0 or self.hidden < 1 or self.lr_phi <= 0:
            raise ValueError(f"need beta >= 0, hidden >= 1 and lr_phi > 0, got {self}")
        if self.confine not in ("clamp", "affine"):
            raise ValueError(f"confine must be 'clamp' or 'affine', got {self.confine!r}")
        if self.objective not in ("elbo", "lookahead"):
            raise ValueError(f"objective must be 'elbo' or 'lookahead', got {self.objective!r}")


class InferenceNet(nn.Module):
    """q_phi(z | v): the mean and log standard deviation of a Gaussian over the logit of lambda."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(CONTEXT_DIM, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, 2)
        # Start at the prior: q = N(0, 1), lambda = 0.5 on average, zero KL.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, log_sigma)`` for context(s) ``v`` of shape ``(..., 4)`` (positive raw values)."""
        mu, log_sigma = self.head(self.body(torch.log(v.clamp_min(1e-8)))).unbind(-1)
        return mu, log_sigma.clamp(*LOG_SIGMA_RANGE)


def new_inference_net(vi_cfg: VIConfig, seed: int) -> InferenceNet:
    """A freshly initialised q_phi, seeded without touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return InferenceNet(vi_cfg.hidden)


def confine(p: Tensor, low: float, high: float, how: Confinement) -> Tensor:
    """Map sigmoid(z) into [low, high]; the final clamp also absorbs float32 rounding at the ends."""
    if how == "affine":
        p = low + (high - low) * p
    return p.clamp(low, high)


def kl_to_standard_normal(mu: Tensor, log_sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1))."""
    return 0.5 * (mu.square() + (2 * log_sigma).exp() - 1.0) - log_sigma


def sample_lambda(
    net: InferenceNet, obs: np.ndarray, vi_cfg: VIConfig, low: float, high: float, noise: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """``(lambda, mu, log_sigma)``: lambda ~ q_phi(. | v) reparameterised, differentiable in phi."""
    mu, log_sigma = net(torch.as_tensor(obs[:CONTEXT_DIM], dtype=torch.float32))
    z = mu + log_sigma.exp() * torch.randn((), generator=noise)
    return confine(torch.sigmoid(z), low, high, vi_cfg.confine), mu, log_sigma


def lookahead_step(
    env: gym.Env, lam: float, probe_0: ProbeLosses
) -> tuple[np.ndarray, float, bool, bool, dict, float, float]:
    """One SISS step with ``lam`` and the hypergradient dJ(theta_{t+1})/dlambda of the probe objective.

    Returns the step's (obs, reward, terminated, truncated, info), then dJ/dlambda and J(theta_{t+1})
    (both NaN when the step diverged).
    """
    base = env.unwrapped
    held: dict = {}

    def compute(batch):
        m, d_retain, d_forget = siss.measure_with_sensitivity(base.unet, base.params, batch, lam, base.gamma,
                                                              base.sigma)
        update = siss_update(m, base.update_rule, lam)
        # The env clips the direction in place: keep the unclipped one for the clip's derivative.
        held.update(m=m, d_retain=d_retain, d_forget=d_forget, direction=[d.clone() for d in update.direction])
        return update

    obs, reward, terminated, truncated, info = base.step_update(compute)
    if info["diverged"]:
        return obs, reward, terminated, truncated, info, float("nan"), float("nan")
    d_direction = lookahead.direction_sensitivity(held["m"], held["d_retain"], held["d_forget"], base.update_rule)
    clipped, d_clipped = lookahead.clip_sensitivity(held["direction"], d_direction, base.update_rule.max_grad_norm)
    d_theta = lookahead.adamw_sensitivity(base.optimizer, base.params, clipped, d_clipped)
    objective, grad_j = lookahead.probe_objective_gradient(base.unet, base.params, base.probe_set, base.gamma,
                                                           base.sigma, probe_0, base.config.reward)
    slope = float(lookahead.inner(grad_j, d_theta))
    return obs, reward, terminated, truncated, info, slope, float(objective)


def run_vi_episode(
    env: gym.Env,
    vi_cfg: VIConfig | None = None,
    seed: int = 0,
    writer: ScalarWriter | None = None,
    net: InferenceNet | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> EpisodeLog:
    """One episode of adaptive-lambda SISS: theta by the env's update, phi online by the ELBO.

    ``net`` (q_phi) is trained in place when given, else a fresh one seeded by ``seed`` is
    used. ``optimizer`` steps phi; by default a fresh Adam, so to carry q_phi over several
    episodes pass the same net and optimiser to each. With ``writer``, the episode's scalars
    are logged as ``EpisodeLog.write`` does.
    """
    vi_cfg = vi_cfg or VIConfig()
    base = env.unwrapped
    low, high = base.config.unlearn.lambda_min, base.config.unlearn.lambda_max
    net = net if net is not None else new_inference_net(vi_cfg, seed)
    optimizer = optimizer if optimizer is not None else torch.optim.Adam(net.parameters(), lr=vi_cfg.lr_phi)
    noise = torch.Generator().manual_seed(seed)

    log = EpisodeLog(seed=seed)
    start = time.perf_counter()
    obs, info = env.reset(seed=seed)
    probe_0 = ProbeLosses(info["probe_loss_retain"], info["probe_loss_forget"])
    done = False
    while not done:
        lam, mu, log_sigma = sample_lambda(net, obs, vi_cfg, low, high, noise)
        kl = kl_to_standard_normal(mu, log_sigma)
        if vi_cfg.objective == "elbo":
            obs, reward, terminated, truncated, info, loss_siss = base.step_lambda(lam)
            data_term = loss_siss.to(kl.device)
            scalars = {"vi/elbo": float((data_term + vi_cfg.beta * kl).detach())}
        else:
            obs, reward, terminated, truncated, info, slope, objective = lookahead_step(env, float(lam.detach()), probe_0)
            # A surrogate whose phi-gradient is (dJ/dlambda) dlambda/dphi: the hypergradient of the look-ahead.
            data_term = torch.as_tensor(slope, dtype=lam.dtype) * lam
            scalars = {"vi/objective": objective, "vi/dJ_dlambda": slope}
        loss = data_term + vi_cfg.beta * kl
        if torch.isfinite(loss) and not info["diverged"]:  # a diverged step ends the episode: nothing to learn
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        log.record(info, reward)
        log.steps[-1].update({"vi/mu": mu.item(), "vi/sigma": log_sigma.exp().item(), "vi/kl": kl.item(), **scalars})
        done = terminated or truncated
    log.wall_seconds = time.perf_counter() - start
    if writer is not None:
        log.write(writer)
    return log


def run_vi_method(env: gym.Env, options: VIConfig, seed: int) -> EpisodeLog:
    """The registry's runner: :func:`run_vi_episode` with a fresh q_phi seeded by ``seed``."""
    return run_vi_episode(env, options, seed)


register("vi", VIConfig, run_vi_method, data="retain+forget", passes="1F+2B (objective=lookahead: 2F+5B)",
         description="SISS with lambda inferred every step by variational inference (SPEC §4; objective=lookahead: "
                     "the one-step look-ahead probe objective)")


def main(argv: list[str] | None = None) -> list[EpisodeLog]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    defaults = VIConfig()
    parser.add_argument("--beta", type=float, default=defaults.beta)
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--lr-phi", type=float, default=defaults.lr_phi)
    parser.add_argument("--confine", choices=("clamp", "affine"), default=defaults.confine)
    parser.add_argument("--objective", choices=("elbo", "lookahead"), default=defaults.objective)
    args = parser.parse_args(argv)
    vi_cfg = VIConfig(beta=args.beta, hidden=args.hidden, lr_phi=args.lr_phi, confine=args.confine,
                      objective=args.objective)

    env = make_env(args.preset, args.env_kwargs)
    out = args.out / "vi"
    logs = []
    for seed in range(args.seeds):
        log = run_vi_episode(env, vi_cfg, seed)
        meta = {"method": "vi", "seed": seed, "vi_config": dataclasses.asdict(vi_cfg),
                "env_config": env.unwrapped.config.to_dict()}
        write_episode(out / f"{args.preset}_{seed}", log, meta)
        logs.append(log)
        print(f"seed {seed}: return {log.episode_return:9.4f}  lambda mean {sum(log.lambdas) / len(log.lambdas):.3f}  "
              f"range [{min(log.lambdas):.3f}, {max(log.lambdas):.3f}]  ({log.wall_seconds:.1f} s)")
    env.close()
    summary = {"vi_config": dataclasses.asdict(vi_cfg), **summarize(logs)}
    (out / f"{args.preset}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return logs


if __name__ == "__main__":
    main()
