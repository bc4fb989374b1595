"""Baselines: static lambda equals the env stepped by hand; VI's gradient reaches phi; logs match the agents'."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from baselines import static, vi
from baselines.common import make_env
from baselines.static import run_static
from baselines.vi import InferenceNet, VIConfig, new_inference_net, run_vi_episode, sample_lambda
from unlearn_env.episode import STEP_KEYS

HORIZON = 4


@pytest.fixture(scope="module")
def env() -> gym.Env:
    return make_env("test", {"horizon": HORIZON, "batch_size": 4})


def scalar_tags(run_dir: Path) -> set[str]:
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def test_static_lambda_equals_the_env_stepped_with_the_constant_action(env: gym.Env) -> None:
    log = run_static(env, 0.3, seed=5)
    obs, _ = env.reset(seed=5)
    for t in range(HORIZON):
        obs, reward, terminated, _, info = env.step(np.array([0.3], dtype=np.float32))
        assert log.rewards[t] == reward
        assert log.steps[t]["step/loss_forget"] == info["loss_forget"]
        assert log.steps[t]["step/grad_norm_retain"] == info["grad_norm_retain"]
    assert terminated and log.lambdas == pytest.approx([0.3] * HORIZON)


def test_static_sweep_cli_logs_every_lambda_and_seed(tmp_path: Path) -> None:
    results = static.main(["--preset", "test", "--lambdas", "0.2,0.8", "--seeds", "2", "--out", str(tmp_path),
                           "--env-kwargs", "horizon=2", "batch_size=4"])
    assert sorted(results) == [0.2, 0.8] and all(len(logs) == 2 for logs in results.values())
    assert results[0.8][1].lambdas == [pytest.approx(0.8)] * 2
    summary = json.loads((tmp_path / "static" / "test_summary.json").read_text())
    assert sorted(summary) == ["0.2", "0.8"] and summary["0.2"]["seeds"] == [0, 1]
    run_dir = tmp_path / "static" / "test_lam0.2_1"
    assert json.loads((run_dir / "episode.json").read_text())["episode"]["seed"] == 1
    tags = scalar_tags(run_dir)
    assert {f"step/{key}" for key in STEP_KEYS} | {"reward/total", "reward/siss", "episode/return"} <= tags


def test_vi_gradient_reaches_phi_through_lambda(env: gym.Env) -> None:
    unlearn = env.unwrapped.config.unlearn
    net = new_inference_net(VIConfig(), seed=0)
    obs, _ = env.reset(seed=2)
    lam, mu, log_sigma = sample_lambda(net, obs, VIConfig(), unlearn.lambda_min, unlearn.lambda_max,
                                       torch.Generator().manual_seed(0))
    lam.retain_grad()
    *_, loss_siss = env.unwrapped.step_lambda(lam)
    loss_siss.backward()
    assert math.isfinite(lam.grad.item()) and lam.grad.item() != 0.0  # dL_SISS/dlambda
    for param in net.head.parameters():  # the head starts at zero, so the body's gradient is zero at step 1
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0


def test_vi_lambda_gradient_is_positive_so_phi_learns_to_lower_lambda(env: gym.Env) -> None:
    # A property of SPEC §4's objective that the README warns about: with the coins frozen, the retain
    # weights on x-draws grow with lambda and the forget weights on a-draws shrink, whatever the batch.
    env.reset(seed=0)
    for value in (0.15, 0.5, 0.85, 0.3):
        lam = torch.tensor(value, requires_grad=True)
        *_, loss_siss = env.unwrapped.step_lambda(lam)
        (grad,) = torch.autograd.grad(loss_siss, lam)
        assert grad.item() > 0


def test_vi_optimiser_passed_in_carries_phi_across_episodes(env: gym.Env) -> None:
    net = new_inference_net(VIConfig(), seed=0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for seed in (0, 1):
        run_vi_episode(env, VIConfig(), seed=seed, net=net, optimizer=optimizer)
    assert all(state["step"].item() == 2 * HORIZON for state in optimizer.state.values())


def test_vi_episode_learns_phi_online_and_keeps_lambda_in_bounds(env: gym.Env) -> None:
    net = new_inference_net(VIConfig(), seed=0)
    before = [p.detach().clone() for p in net.parameters()]
    log = run_vi_episode(env, VIConfig(lr_phi=1e-2), seed=1, net=net)
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
    assert len(log.lambdas) == HORIZON and all(0.1 <= lam <= 0.9 for lam in log.lambdas)
    assert {"vi/mu", "vi/sigma", "vi/kl", "vi/elbo"} <= set(log.steps[0])
    assert log.steps[0]["vi/kl"] == pytest.approx(0.0, abs=1e-6)  # q starts at the prior


@pytest.mark.parametrize("confine", ["clamp", "affine"])
@pytest.mark.parametrize("mu", [-30.0, 30.0])
def test_vi_lambda_is_confined_when_q_saturates(env: gym.Env, confine: str, mu: float) -> None:
    net = InferenceNet()
    with torch.no_grad():
        net.head.bias[0] = mu  # sigmoid(z) is 0 or 1 to float precision
    log = run_vi_episode(env, VIConfig(confine=confine, lr_phi=1e-6), seed=0, net=net)
    bound = 0.1 if mu < 0 else 0.9
    assert log.lambdas == [pytest.approx(bound, abs=1e-6)] * HORIZON
    assert not log.diverged


def test_vi_config_is_validated() -> None:
    with pytest.raises(ValueError, match="beta"):
        VIConfig(beta=-1.0)
    with pytest.raises(ValueError, match="confine"):
        VIConfig(confine="sigmoid")


def test_vi_cli_writes_episode_logs(tmp_path: Path) -> None:
    logs = vi.main(["--preset", "test", "--seeds", "1", "--beta", "0.1", "--out", str(tmp_path),
                    "--env-kwargs", "horizon=2", "batch_size=4"])
    assert len(logs) == 1 and len(logs[0].lambdas) == 2
    run_dir = tmp_path / "vi" / "test_0"
    assert json.loads((run_dir / "episode.json").read_text())["vi_config"]["beta"] == 0.1
    assert {"step/lambda", "step/loss_siss", "reward/total", "episode/return", "vi/elbo"} <= scalar_tags(run_dir)
    assert json.loads((tmp_path / "vi" / "test_summary.json").read_text())["seeds"] == [0]
