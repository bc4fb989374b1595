"""BatchedUnlearningEnv and its SB3 adapter: single-env trajectories, isolation, registration, the SB3 contract.

Tolerance: the batched computation (grouped convolutions under vmap, batched reductions,
plain attention, AdamW on stacked rows) differs from N single environments only by float
rounding. Observations, rewards and info values agree to a relative tolerance of 1e-4
(absolute 1e-6) on CPU, where the differences measured are about 2e-6 relative; on CUDA, where
cuDNN picks other kernels for the batched shapes, to 1e-3 (about 2e-4 measured on an H100).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import RescaleAction
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from unlearn_env import ENV_ID
from unlearn_env.diffusion import build_unet
from unlearn_env.env import UnlearningEnv
from unlearn_env.sb3_vec import make_sb3_batched_env
from unlearn_env.vector_env import BatchedUnlearningEnv

RTOL, ATOL = (1e-3 if torch.cuda.is_available() else 1e-4), 1e-6
N, HORIZON = 3, 3


def assert_infos_close(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert sorted(expected) == sorted(actual)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_infos_close(value, actual[key])
        elif value.dtype.kind == "f":
            np.testing.assert_allclose(actual[key], value, rtol=RTOL, atol=ATOL, err_msg=key)
        else:
            np.testing.assert_array_equal(actual[key], value, err_msg=key)


@pytest.fixture(scope="module")
def sync_envs() -> gym.vector.VectorEnv:
    return gym.make_vec(ENV_ID, num_envs=N, vectorization_mode="sync", preset="test", horizon=HORIZON)


@pytest.mark.parametrize("forward", ["vmap", "loop"])
def test_reproduces_single_envs_across_partial_resets_and_autoresets(sync_envs, forward: str) -> None:
    batched = BatchedUnlearningEnv(num_envs=N, preset="test", horizon=HORIZON, forward=forward)
    for envs in (sync_envs, batched):
        envs.reset(seed=11)
    rng = np.random.default_rng(0)
    for step in range(3 * HORIZON):
        if step == 1:
            # Put sub-environment 1 out of step with the others: their episodes then end, and
            # auto-reset, at different steps.
            mask = np.array([False, True, False])
            expected = sync_envs.reset(seed=[None, 99, None], options={"reset_mask": mask.copy()})
            actual = batched.reset(seed=[None, 99, None], options={"reset_mask": mask.copy()})
        else:
            # Uniform on [0, 1]: some actions fall outside [0.1, 0.9] and are clipped.
            actions = rng.uniform(0.0, 1.0, size=(N, 1)).astype(np.float32)
            expected, actual = sync_envs.step(actions), batched.step(actions)
        for e, a in zip(expected[:-1], actual[:-1]):
            np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL)
        assert_infos_close(expected[-1], actual[-1])
    assert batched.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP


def test_each_sub_env_keeps_its_own_weights() -> None:
    envs = BatchedUnlearningEnv(num_envs=3, preset="test", horizon=HORIZON)
    envs.reset(seed=[3, 3, 3])
    for _ in range(2):
        obs, *_ = envs.step(np.array([[0.2], [0.2], [0.8]], dtype=np.float32))
    weights = [envs.model_state(i) for i in range(3)]
    assert all(torch.allclose(weights[0][k], weights[1][k], rtol=RTOL, atol=ATOL) for k in weights[0])
    assert any(not torch.allclose(weights[0][k], weights[2][k]) for k in weights[0])
    np.testing.assert_allclose(obs[0], obs[1], rtol=RTOL, atol=ATOL)
    assert not np.allclose(obs[0, :4], obs[2, :4])
    # model_state loads into the preset's UNet.
    build_unet(envs.config.model).load_state_dict(weights[2])


@pytest.mark.parametrize("forward", ["vmap", "loop"])
def test_divergence_of_one_sub_env_leaves_the_others_alone(forward: str) -> None:
    kwargs = dict(num_envs=2, preset="test", horizon=HORIZON, forward=forward, crash_penalty=50.0)
    clean, broken = BatchedUnlearningEnv(**kwargs), BatchedUnlearningEnv(**kwargs)
    for envs in (clean, broken):
        envs.reset(seed=0)
    broken._theta[0] = float("nan")  # white-box: corrupt sub-environment 0's weights only
    actions = np.full((2, 1), 0.4, dtype=np.float32)
    expected, actual = clean.step(actions), broken.step(actions)
    obs, rewards, terminated, _, infos = actual
    assert infos["diverged"][0] and terminated[0] and rewards[0] == -50.0
    assert broken.single_observation_space.contains(obs[0])
    np.testing.assert_allclose(obs[1], expected[0][1], rtol=RTOL, atol=ATOL)
    assert rewards[1] == pytest.approx(expected[1][1], rel=RTOL) and not infos["diverged"][1]
    # Next step: sub-environment 0 auto-resets to the base model, sub-environment 1 goes on.
    obs, rewards, *_ = broken.step(actions)
    expected_obs, expected_rewards, *_ = clean.step(actions)
    assert np.all(np.isfinite(obs)) and obs[0, 5] == 0.0 and rewards[0] == 0.0
    np.testing.assert_allclose(obs[1], expected_obs[1], rtol=RTOL, atol=ATOL)


def test_non_finite_action_raises_naming_the_sub_env() -> None:
    envs = BatchedUnlearningEnv(num_envs=2, preset="test", horizon=HORIZON)
    envs.reset(seed=0)
    with pytest.raises(ValueError, match="sub-environment 1: the action.*finite"):
        envs.step(np.array([[0.5], [np.nan]], dtype=np.float32))
    obs, *_ = envs.step(np.array([[0.5], [0.5]], dtype=np.float32))
    np.testing.assert_allclose(obs[:, 5], 1.0 / HORIZON)  # the failed call did not advance the clocks
    with pytest.raises(RuntimeError, match="reset"):
        BatchedUnlearningEnv(num_envs=1, preset="test").step(np.array([[0.5]]))


def test_bf16_stays_near_fp32_and_unsupported_options_are_refused() -> None:
    actions = np.full((2, 1), 0.5, dtype=np.float32)
    observations = []
    for precision in ("fp32", "bf16"):
        envs = BatchedUnlearningEnv(num_envs=2, preset="test", horizon=HORIZON, precision=precision)
        envs.reset(seed=0)
        observations.append(envs.step(actions)[0][:, :4])
    deviation = np.abs(observations[1] - observations[0]) / np.abs(observations[0])
    assert 0 < deviation.max() <= 5e-2
    with pytest.raises(ValueError, match="channels_last"):
        BatchedUnlearningEnv(num_envs=2, preset="test", channels_last=True)


def test_make_vec_with_vector_entry_point_returns_it() -> None:
    envs = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="vector_entry_point", preset="test", horizon=2)
    assert isinstance(envs, BatchedUnlearningEnv)
    assert envs.config.unlearn.horizon == 2 and envs.num_envs == 2
    assert envs.observation_space.shape == (2, 6) and envs.action_space.shape == (2, 1)
    obs, _ = envs.reset(seed=0)
    assert envs.observation_space.contains(obs)


def test_sb3_adapter_matches_monitored_dummy_vec_env() -> None:
    def single() -> gym.Env:
        return Monitor(RescaleAction(UnlearningEnv(preset="test", horizon=HORIZON), -1.0, 1.0))

    expected_env = DummyVecEnv([single, single])
    expected_env.seed(4)
    actual_env = make_sb3_batched_env("test", n_envs=2, seed=4, env_kwargs={"horizon": HORIZON})
    assert actual_env.action_space == expected_env.action_space
    np.testing.assert_allclose(actual_env.reset(), expected_env.reset(), rtol=RTOL, atol=ATOL)
    rng = np.random.default_rng(1)
    for _ in range(HORIZON + 1):
        actions = rng.uniform(-1.0, 1.0, size=(2, 1)).astype(np.float32)
        exp_obs, exp_rewards, exp_dones, exp_infos = expected_env.step(actions)
        obs, rewards, dones, infos = actual_env.step(actions)
        np.testing.assert_allclose(obs, exp_obs, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(rewards, exp_rewards, rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(dones, exp_dones)
        for exp_info, info in zip(exp_infos, infos):
            assert sorted(info) == sorted(exp_info)
            assert info["lambda"] == pytest.approx(exp_info["lambda"], rel=1e-6)
            if "terminal_observation" in exp_info:
                np.testing.assert_allclose(
                    info["terminal_observation"], exp_info["terminal_observation"], rtol=RTOL, atol=ATOL
                )
                assert info["episode"]["l"] == exp_info["episode"]["l"] == HORIZON
                assert info["episode"]["r"] == pytest.approx(exp_info["episode"]["r"], rel=RTOL)
    assert actual_env.get_attr("render_mode") == [None, None]
    assert actual_env.env_is_wrapped(Monitor) == [False, False]


def test_ppo_learns_on_the_sb3_adapter() -> None:
    env = make_sb3_batched_env("test", n_envs=2, seed=0, env_kwargs={"horizon": 4})
    model = PPO("MlpPolicy", env, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=32)
    assert model.num_timesteps == 32
    assert len(model.ep_info_buffer) >= 4 and all(info["l"] == 4 for info in model.ep_info_buffer)
