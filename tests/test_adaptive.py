"""The adaptive-lambda baselines that need no reward: Neyman's closed form and the look-ahead VI's hypergradient."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from baselines import lookahead
from baselines.neyman import NeymanConfig, component_sq_norms, neyman_lambda, run_neyman_episode
from baselines.vi import VIConfig, lookahead_step, run_vi_episode
from unlearn_env import siss
from unlearn_env.env import UnlearningEnv, siss_update
from unlearn_env.rewards import ProbeLosses

PAIRS = 4


def digit_batch(env: UnlearningEnv, seed: int) -> siss.SISSBatch:
    """A minibatch whose retain digits all differ from the forget label, so SISS's weights are exact indicators."""
    keep = env.retain_labels != env.forget_class
    return siss.draw_batch(env.retain_images[keep], env.retain_labels[keep], env.forget_images, env.forget_labels,
                           PAIRS, 1000, torch.Generator().manual_seed(seed))


def update_variance(env: UnlearningEnv, batch: siss.SISSBatch, lam: float) -> float:
    """Var of the SISS update direction over the 2^B coin outcomes, by enumeration (weights mode: fixed c_r, c_f)."""
    moments, mean = 0.0, None
    for pattern in itertools.product([False, True], repeat=PAIRS):
        takes_forget = torch.tensor(pattern)
        coins = torch.where(takes_forget, torch.zeros(PAIRS), torch.full((PAIRS,), 0.9999))
        batch.coin = coins
        m = siss.measure(env.unet, env.params, batch, lam, env.gamma, env.sigma)
        direction = torch.cat([g.flatten() for g in siss_update(m, env.update_rule, lam).direction]).double()
        p = lam ** int(takes_forget.sum()) * (1 - lam) ** int((~takes_forget).sum())
        moments += p * float(direction.square().sum())
        mean = p * direction if mean is None else mean + p * direction
    return moments - float(mean.square().sum())


def test_neyman_lambda_minimises_the_variance_of_the_update() -> None:
    """Brute force over lambda (enumerating every coin outcome) finds the Neyman allocation's lambda."""
    env = UnlearningEnv(preset="test", mode="weights", superfactor=20.0, lambda_min=0.01, lambda_max=0.99)
    env.reset(seed=0)
    batch = digit_batch(env, seed=1)
    retain, forget = component_sq_norms(env.unet, env.params, batch, env.gamma, env.sigma, torch.arange(PAIRS))
    coef_r, coef_f = env.update_rule.coefficients(torch.tensor(1.0))
    lam_star = neyman_lambda(float(retain.sum()), float(forget.sum()), coef_r, coef_f, 0.01, 0.99)
    # With indicator weights the variance is a sum of terms in 1/lambda and 1/(1 - lambda), less a constant:
    # convex, so a grid of 0.05 finds the minimum's neighbourhood and a grid of 0.01 across it the minimum.
    coarse = np.round(np.arange(0.05, 0.96, 0.05), 2)
    centre = float(coarse[int(np.argmin([update_variance(env, batch, float(lam)) for lam in coarse]))])
    grid = np.round(np.arange(max(0.01, centre - 0.05), min(0.99, centre + 0.05) + 1e-9, 0.01), 2)
    brute = float(grid[int(np.argmin([update_variance(env, batch, float(lam)) for lam in grid]))])
    assert 0.1 < lam_star < 0.9, "the test case should put the optimum inside the box"
    assert brute == pytest.approx(lam_star, abs=0.015)


def test_neyman_lambda_is_confined_and_the_episode_runs() -> None:
    assert neyman_lambda(1.0, 0.0, 1.0, 1.0, 0.1, 0.9) == 0.1
    assert neyman_lambda(0.0, 1.0, 1.0, 1.0, 0.1, 0.9) == 0.9
    assert neyman_lambda(1.0, 1.0, 1.0, 1.0, 0.1, 0.9) == pytest.approx(0.5)
    env = UnlearningEnv(preset="test", horizon=3)
    log = run_neyman_episode(env, NeymanConfig(pairs=2), seed=0)
    again = run_neyman_episode(env, NeymanConfig(pairs=2), seed=0)
    assert len(log.lambdas) == 3 and log.lambdas == again.lambdas
    assert all(0.1 <= lam <= 0.9 for lam in log.lambdas) and "neyman/sum_sq_forget" in log.steps[0]


def objective_after_step(env: UnlearningEnv, seed: int, warmup: list[float], lam: float) -> float:
    """J(theta_{t+1}) on the probe set after the warm-up steps and one step with ``lam``."""
    _, info = env.reset(seed=seed)
    probe_0 = ProbeLosses(info["probe_loss_retain"], info["probe_loss_forget"])
    for value in warmup:
        env.step(np.array([value], dtype=np.float32))
    *_, info = env.step(np.array([lam], dtype=np.float32))
    after = ProbeLosses(info["probe_loss_retain"], info["probe_loss_forget"])
    return float(lookahead.probe_objective(after, probe_0, env.config.reward))


@pytest.mark.parametrize("mode", ["rescale", "weights"])
def test_lookahead_hypergradient_matches_a_finite_difference(mode: str) -> None:
    """dJ(theta_{t+1}(lambda))/dlambda through the clipped AdamW step equals the central difference of J."""
    # A large lr makes J move enough with lambda for a float32 finite difference; the third step has AdamW
    # moments from earlier steps (at the first step AdamW's update is nearly sign(g), flat in lambda).
    env = UnlearningEnv(preset="test", mode=mode, lr=3e-3, superfactor=5.0)
    seed, warmup = 4, [0.3, 0.6]
    env.reset(seed=seed)
    for value in warmup:
        env.step(np.array([value], dtype=np.float32))
    coins = env.pending_batch().coin
    # A lambda whose +-delta moves no coin across it: the coins are held fixed, as the derivative assumes.
    delta = 0.01
    lam = next(x for x in np.arange(0.3, 0.7, 0.005) if not ((coins > x - 2 * delta) & (coins < x + 2 * delta)).any())
    _, info = env.reset(seed=seed)
    probe_0 = ProbeLosses(info["probe_loss_retain"], info["probe_loss_forget"])
    for value in warmup:
        env.step(np.array([value], dtype=np.float32))
    *_, slope, objective = lookahead_step(env, float(lam), probe_0)
    plus = objective_after_step(env, seed, warmup, float(lam) + delta)
    minus = objective_after_step(env, seed, warmup, float(lam) - delta)
    finite_difference = (plus - minus) / (2 * delta)
    assert objective == pytest.approx(objective_after_step(env, seed, warmup, float(lam)), rel=1e-4)
    assert abs(finite_difference) > 1e-4, "the test case should move J measurably"
    assert slope == pytest.approx(finite_difference, rel=0.1)


def test_lookahead_vi_runs_and_learns_from_its_hypergradient() -> None:
    env = UnlearningEnv(preset="test", horizon=4)
    log = run_vi_episode(env, VIConfig(objective="lookahead", lr_phi=1e-2), seed=0)
    assert len(log.lambdas) == 4 and all(math.isfinite(s["vi/dJ_dlambda"]) for s in log.steps)
    assert len({round(lam, 6) for lam in log.lambdas}) > 1
