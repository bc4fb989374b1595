"""Closed-form adaptive lambda: the Neyman allocation that minimises the variance of the SISS update's estimate.

    python -m baselines.neyman --preset cpu --seeds 3 --out runs

SISS estimates the update direction g = c_r grad L_r - c_f grad L_f from one forward pass on a
mixture: each pair (x_i, a_i) contributes its x-component with probability 1 - lambda and its
a-component with probability lambda, importance-weighted. When the two components of a pair
are told apart by their labels (every pair whose retain digit is not the forget label), the
weights are exactly 1/(1 - lambda) and 1/lambda on the drawn side, and the variance of the
estimate over the coins is

    Var(lambda) = 1/B^2 sum_i [ c_r^2 ||g_x,i||^2 / (1 - lambda) + c_f^2 ||g_a,i||^2 / lambda ] - const,

with g_x,i = grad ||eps - eps_theta(gamma x_i + sigma eps, t, c_x)||^2 (the per-sample retain
gradient at the x-draw) and g_a,i likewise at the a-draw. It is minimised by the Neyman
allocation

    lambda* = c_f G_f / (c_r G_r + c_f G_f),   G_r^2 = sum_i ||g_x,i||^2,  G_f^2 = sum_i ||g_a,i||^2,

confined to [lambda_min, lambda_max]. For pairs that share a label the weights are smooth
mixtures, close to those indicators except at the highest noise levels, where x and a are
hard to tell apart: there the formula is the dominant-term approximation.

How it is computed, per step, for the minibatch the step will use (``env.pending_batch()``):

* per-sample gradient norms by one forward and one backward pass per sample, on ``pairs``
  pairs of the minibatch drawn with the episode's own randomness (default 4 of 32:
  2 x 4 single-sample passes, about twice the cost of the SISS step on the ``cpu`` preset;
  ``pairs=0`` uses the whole minibatch). Only the ratio G_f / G_r enters lambda*, so the
  subsample's sums need no rescaling. (Batched per-sample gradients through ``torch.func.vmap``
  were 20x slower than this loop on CPU.)
* c_r, c_f: the update rule's. In ``rescale`` mode c_f = c / ||grad L_f|| uses the
  observation's ||grad L_f||, measured in the previous step (the current one is known only
  after its lambda is chosen).

Free of training and of reward: it is the baseline a learned lambda-policy must beat.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from baselines.common import add_common_args, make_env, summarize, write_episode
from baselines.registry import register
from unlearn_env import siss
from unlearn_env.episode import EpisodeLog, run_episode


@dataclass(frozen=True)
class NeymanConfig:
    """Options of the ``neyman`` baseline."""

    pairs: int = 4
    """Pairs of the minibatch whose per-sample gradient norms are measured (0: all of them)."""

    def __post_init__(self) -> None:
        if self.pairs < 0:
            raise ValueError(f"pairs must be >= 0 (0: the whole minibatch), got {self.pairs}")


def per_sample_sq_norms(
    model: nn.Module, params: list[nn.Parameter], inputs: Tensor, timesteps: Tensor, labels: Tensor, targets: Tensor
) -> Tensor:
    """||grad_theta ||target_i - eps_theta(input_i)||^2||^2 for every sample i (losses are means over pixels)."""
    norms = []
    for i in range(len(inputs)):
        pred = model(inputs[i : i + 1], timesteps[i : i + 1], class_labels=labels[i : i + 1]).sample
        loss = (pred - targets[i : i + 1]).square().mean()
        grads = torch.autograd.grad(loss, params, materialize_grads=True)
        norms.append(torch.nn.utils.get_total_norm(grads).square())
    return torch.stack(norms)


def neyman_lambda(sum_sq_retain: float, sum_sq_forget: float, coef_retain: float, coef_forget: float,
                  low: float, high: float) -> float:
    """lambda* = c_f G_f / (c_r G_r + c_f G_f), confined to [low, high] (the module docstring)."""
    retain, forget = coef_retain * math.sqrt(sum_sq_retain), coef_forget * math.sqrt(sum_sq_forget)
    if not retain + forget > 0:
        return min(max(0.5, low), high)
    return min(max(forget / (retain + forget), low), high)


def component_sq_norms(
    model: nn.Module, params: list[nn.Parameter], batch: siss.SISSBatch, gamma: Tensor, sigma: Tensor, index: Tensor
) -> tuple[Tensor, Tensor]:
    """(||g_x,i||^2, ||g_a,i||^2) for the pairs ``index``: each component noised on its own with the pair's noise."""
    g = gamma[batch.timesteps[index]].view(-1, 1, 1, 1)
    s = sigma[batch.timesteps[index]].view(-1, 1, 1, 1)
    noise, t = batch.noise[index], batch.timesteps[index]
    retain = per_sample_sq_norms(model, params, g * batch.x[index] + s * noise, t, batch.x_labels[index], noise)
    forget = per_sample_sq_norms(model, params, g * batch.a[index] + s * noise, t, batch.a_labels[index], noise)
    return retain, forget


class NeymanChooser:
    """Chooses lambda* for each step's pending minibatch of an :class:`~unlearn_env.env.UnlearningEnv`."""

    def __init__(self, env: gym.Env, options: NeymanConfig, seed: int) -> None:
        self.env = env.unwrapped
        self.options = options
        # The subsample of pairs is drawn from its own generator: the episode's minibatches stay as they are.
        self.generator = torch.Generator().manual_seed(seed)
        self.last: dict[str, float] = {}

    def __call__(self, obs: np.ndarray) -> float:
        env = self.env
        batch = env.pending_batch()
        size = len(batch.timesteps)
        count = size if self.options.pairs == 0 else min(self.options.pairs, size)
        index = torch.randperm(size, generator=self.generator)[:count].to(batch.timesteps.device)
        retain, forget = component_sq_norms(env.unet, env.params, batch, env.gamma, env.sigma, index)
        coef_r, coef_f = env.update_rule.coefficients(torch.tensor(float(obs[3])))
        sums = torch.stack([retain.sum(), forget.sum()]).double().cpu().numpy()
        low, high = env.config.unlearn.lambda_min, env.config.unlearn.lambda_max
        lam = neyman_lambda(float(sums[0]), float(sums[1]), float(coef_r), float(coef_f), low, high)
        self.last = {"neyman/sum_sq_retain": float(sums[0]), "neyman/sum_sq_forget": float(sums[1]),
                     "neyman/coef_forget": float(coef_f)}
        return lam


def run_neyman_episode(env: gym.Env, options: NeymanConfig | None = None, seed: int = 0) -> EpisodeLog:
    """One episode with lambda* chosen for every step's minibatch; the per-step sums and c_f are logged too."""
    chooser = NeymanChooser(env, options or NeymanConfig(), seed)
    records: list[dict[str, float]] = []

    def choose(obs: np.ndarray) -> float:
        lam = chooser(obs)
        records.append(chooser.last)
        return lam

    log = run_episode(env, choose, seed)
    for step, extra in zip(log.steps, records):
        step.update(extra)
    return log


register("neyman", NeymanConfig, run_neyman_episode, data="retain+forget",
         passes="1F+2B + 2 x pairs single-sample (1F+1B)",
         description="SISS with the Neyman-allocation lambda that minimises the update estimate's variance")


def main(argv: list[str] | None = None) -> list[EpisodeLog]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--pairs", type=int, default=NeymanConfig().pairs)
    args = parser.parse_args(argv)
    options = NeymanConfig(pairs=args.pairs)
    env = make_env(args.preset, args.env_kwargs)
    out = args.out / "neyman"
    logs = []
    for seed in range(args.seeds):
        log = run_neyman_episode(env, options, seed)
        write_episode(out / f"{args.preset}_{seed}", log, {"method": "neyman", "seed": seed,
                                                           "options": dataclasses.asdict(options),
                                                           "env_config": env.unwrapped.config.to_dict()})
        logs.append(log)
        print(f"seed {seed}: lambda mean {np.mean(log.lambdas):.3f} range [{min(log.lambdas):.3f}, "
              f"{max(log.lambdas):.3f}] ({log.wall_seconds:.1f} s)")
    env.close()
    (out / f"{args.preset}_summary.json").write_text(json.dumps(summarize(logs), indent=2) + "\n")
    return logs


if __name__ == "__main__":
    main()
