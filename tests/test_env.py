"""UnlearningEnv: the Gymnasium contract, exact resets, determinism, bad input and divergence."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import unlearn_env  # noqa: F401  (registers SISSUnlearning-v0)
from unlearn_env.env import OBS_NAMES, UnlearningEnv


@pytest.fixture(scope="module")
def env() -> UnlearningEnv:
    return UnlearningEnv(preset="test")


def rollout(env: UnlearningEnv, seed: int, actions: list[float]) -> tuple[list[np.ndarray], list[float]]:
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for lam in actions:
        obs, reward, *_ = env.step(np.array([lam], dtype=np.float32))
        observations.append(obs)
        rewards.append(reward)
    return observations, rewards


def test_passes_gymnasium_and_sb3_checkers() -> None:
    env = UnlearningEnv(preset="test", render_mode="rgb_array")
    gym_check_env(env, skip_render_check=False)
    with warnings.catch_warnings():
        # SB3 recommends a [-1, 1] action box; ours is lambda itself by design (see the class docstring).
        warnings.filterwarnings("ignore", message=".*symmetric and normalized Box action space.*")
        sb3_check_env(env, warn=True)


def test_registered_make_with_overrides_and_unknown_key() -> None:
    env = gym.make("SISSUnlearning-v0", preset="test", horizon=3, lambda_min=0.2)
    assert env.unwrapped.config.unlearn.horizon == 3
    assert env.action_space.low[0] == np.float32(0.2)
    assert env.observation_space.shape == (len(OBS_NAMES),)
    assert np.all(np.isfinite(env.observation_space.low)) and np.all(np.isfinite(env.observation_space.high))
    with pytest.raises(KeyError, match="unknown config key.*horizonn.*valid keys are:.*horizon"):
        gym.make("SISSUnlearning-v0", preset="test", horizonn=3)


def test_episode_runs_horizon_steps_with_documented_observation(env: UnlearningEnv) -> None:
    horizon = env.config.unlearn.horizon
    obs, info = env.reset(seed=1)
    assert obs.dtype == np.float32 and obs[4] == np.float32(env.config.unlearn.lambda_init) and obs[5] == 0.0
    lams = np.linspace(0.2, 0.8, horizon)
    for t, lam in enumerate(lams, start=1):
        obs, reward, terminated, truncated, info = env.step(np.array([lam], dtype=np.float32))
        assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
        assert terminated == (t == horizon) and not truncated
        assert obs[4] == pytest.approx(lam) and obs[5] == pytest.approx(t / horizon)
        assert obs[0] == pytest.approx(info["loss_retain"], rel=1e-6)
        assert obs[3] == pytest.approx(info["grad_norm_forget"], rel=1e-6)
        assert sum(info["reward_terms"].values()) == pytest.approx(reward)
        assert all(isinstance(v, (float, int, bool, dict, str)) for v in info.values())
        assert info["task"] == "1-trouser-0.3-s0"  # the test preset's task, in text form
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.array([0.5], dtype=np.float32))


def test_reward_terms_follow_the_spec() -> None:
    """SPEC §5's reward, with L_SISS and the retain-safety term on the probe losses of theta_{t+1} and theta_0."""
    env = UnlearningEnv(preset="test", alpha=2.0, kappa=3.0, superfactor=0.5, mode="weights")
    _, first = env.reset(seed=3)
    _, _, _, _, info = env.step(np.array([0.5], dtype=np.float32))
    _, reward, _, _, info = env.step(np.array([0.8], dtype=np.float32))
    n, k = env.n, env.k
    l_siss = n / (n - k) * info["probe_loss_retain"] - 1.5 * k / (n - k) * info["probe_loss_forget"]
    assert info["loss_siss"] == pytest.approx(l_siss, rel=1e-6)
    assert info["reward_terms"]["siss"] == pytest.approx(-l_siss, rel=1e-6)
    assert info["reward_terms"]["smoothness"] == pytest.approx(-2.0 * 0.3**2, rel=1e-5)
    assert info["reward_terms"]["retain_safety"] == pytest.approx(
        -3.0 * max(0.0, info["probe_loss_retain"] - first["probe_loss_retain"]), rel=1e-6
    )
    assert reward == pytest.approx(sum(info["reward_terms"].values()))


def test_reset_restores_weights_and_optimizer_exactly(env: UnlearningEnv) -> None:
    env.reset(seed=0)
    base = {k: v.clone() for k, v in env.unet.state_dict().items()}
    rollout(env, seed=0, actions=[0.3, 0.7, 0.5])
    assert any(not torch.equal(base[k], v) for k, v in env.unet.state_dict().items())
    assert len(env.optimizer.state) > 0
    env.reset(seed=0)
    assert all(torch.equal(base[k], v) for k, v in env.unet.state_dict().items())
    assert len(env.optimizer.state) == 0


def test_same_seed_and_actions_give_the_same_trajectory(env: UnlearningEnv) -> None:
    # Bit-exact on CPU; cuDNN's non-deterministic backward kernels leave differences of about 1e-6 on CUDA.
    rtol = 0.0 if env.device.type == "cpu" else 1e-4
    actions = [0.5, 0.2, 0.9, 0.4]
    obs_a, rew_a = rollout(env, seed=7, actions=actions)
    obs_b, rew_b = rollout(env, seed=7, actions=actions)
    np.testing.assert_allclose(np.stack(obs_b), np.stack(obs_a), rtol=rtol, atol=0)
    np.testing.assert_allclose(rew_b, rew_a, rtol=rtol, atol=0)
    obs_c, _ = rollout(env, seed=8, actions=actions)
    assert not np.allclose(np.stack(obs_a), np.stack(obs_c), rtol=1e-2)
    # A fresh environment with the same seed reproduces it too: nothing leaks between instances.
    obs_d, rew_d = rollout(UnlearningEnv(preset="test"), seed=7, actions=actions)
    np.testing.assert_allclose(np.stack(obs_d), np.stack(obs_a), rtol=rtol, atol=0)
    np.testing.assert_allclose(rew_d, rew_a, rtol=rtol, atol=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_raises(env: UnlearningEnv, bad: float) -> None:
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([bad], dtype=np.float32))


def test_wrong_shape_action_raises(env: UnlearningEnv) -> None:
    env.reset(seed=0)
    with pytest.raises(ValueError, match="one value"):
        env.step(np.array([0.5, 0.5], dtype=np.float32))


def test_out_of_box_action_is_clipped_and_reported(env: UnlearningEnv) -> None:
    env.reset(seed=0)
    obs, _, _, _, info = env.step(np.array([1.7], dtype=np.float32))
    assert info["action_clipped"] and info["lambda"] == pytest.approx(env.config.unlearn.lambda_max)
    assert obs[4] == pytest.approx(env.config.unlearn.lambda_max)
    _, _, _, _, info = env.step(0.5)
    assert not info["action_clipped"]


def test_an_update_that_blows_up_ends_the_episode_and_reset_repairs_it() -> None:
    env = UnlearningEnv(preset="test", lr=1e30, max_grad_norm=None, mode="weights", crash_penalty=50.0)
    env.reset(seed=0)
    obs, reward, terminated, _, info = env.step(np.array([0.5], dtype=np.float32))
    # The minibatch of theta_0 is finite, so the update happens; the probe of theta_1 is not.
    assert info["diverged"], "an lr of 1e30 should make the probe losses after the update overflow"
    assert terminated and reward == -50.0 and info["reward_terms"] == {"crash": -50.0}
    assert env.observation_space.contains(obs)
    obs, _ = env.reset(seed=0)
    assert all(torch.isfinite(v).all() for v in env.unet.state_dict().values())
    assert np.all(np.isfinite(obs))


def test_a_non_finite_minibatch_leaves_the_weights_untouched() -> None:
    env = UnlearningEnv(preset="test", crash_penalty=50.0)
    env.reset(seed=0)
    with torch.no_grad():
        env.params[0].view(-1)[0] = float("nan")  # white-box: corrupt one weight, so every loss is NaN
    before = {k: v.clone() for k, v in env.unet.state_dict().items()}
    obs, reward, terminated, _, info = env.step(np.array([0.5], dtype=np.float32))
    assert info["diverged"] and terminated and reward == -50.0 and env.observation_space.contains(obs)
    assert all(torch.equal(before[k].nan_to_num(), v.nan_to_num()) for k, v in env.unet.state_dict().items())
    assert len(env.optimizer.state) == 0


def test_step_lambda_gives_a_loss_differentiable_in_lambda(env: UnlearningEnv) -> None:
    env.reset(seed=0)
    lam = torch.tensor(0.4, requires_grad=True)
    obs, reward, _, _, info, loss = env.step_lambda(lam)
    loss.backward()
    assert lam.grad is not None and math.isfinite(lam.grad.item()) and lam.grad.item() != 0.0
    # L_SISS(theta_t; lambda) of the update's own minibatch, not the probe objective of the reward.
    n, k = env.n, env.k
    assert loss.item() == pytest.approx(n / (n - k) * info["loss_retain"] - k / (n - k) * info["loss_forget"], rel=1e-5)
    with pytest.raises(ValueError, match="within"):
        env.step_lambda(torch.tensor(0.95))


def test_step_lambda_equals_step(env: UnlearningEnv) -> None:
    env.reset(seed=5)
    a = env.step(np.array([0.3], dtype=np.float32))
    env.reset(seed=5)
    b = env.step_lambda(torch.tensor(0.3))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


@pytest.mark.parametrize("overrides", [{"mode": "weights"}, {"retain_source": "all"}, {"image_size": 32}])
def test_variants_run(overrides: dict) -> None:
    env = UnlearningEnv(preset="test", horizon=2, **overrides)
    env.reset(seed=0)
    for _ in range(2):
        obs, reward, *_ = env.step(np.array([0.5], dtype=np.float32))
        assert np.all(np.isfinite(obs)) and math.isfinite(reward)


def test_render_rgb_array() -> None:
    env = UnlearningEnv(preset="test", render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.shape[0] >= 4 * 28 and frame.std() > 0
    assert UnlearningEnv(preset="test").render() is None


def test_sync_vector_env() -> None:
    envs = gym.make_vec("SISSUnlearning-v0", num_envs=2, vectorization_mode="sync", preset="test", horizon=3)
    obs, _ = envs.reset(seed=[0, 1])
    assert obs.shape == (2, 6) and not np.array_equal(obs[0], obs[1])
    for _ in range(3):
        obs, rewards, terminated, truncated, infos = envs.step(np.full((2, 1), 0.5, dtype=np.float32))
    assert terminated.all() and rewards.shape == (2,)
    envs.close()
