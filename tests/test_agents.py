"""Agents: hyper-parameter files, every algorithm trained, saved, reloaded and acting; REINFORCE itself."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecNormalize

import train_policy
from agents import ALGOS, LambdaPolicy, load_lambda_policy
from agents.envs import make_lambda_vec_env
from agents.hyperparams import (
    check_rollout_length,
    load_hyperparams,
    model_kwargs,
    parse_hyperparams,
    vecnormalize_kwargs,
)
from agents.reinforce import REINFORCE, monte_carlo_mask
from unlearn_env.config import PRESETS, get_config
from unlearn_env.episode import run_episode

# Small episodes and batches keep a step cheap; the hyper-parameter files' test entries fit them.
ENV_KWARGS = {"horizon": "4", "batch_size": "4"}
TRAIN_STEPS = 64  # a multiple of every on-policy rollout in the test entries (32, 16, 8), past learning_starts (16)


@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_algo_has_valid_hyperparams_for_every_preset(algo: str, preset: str) -> None:
    hyperparams = load_hyperparams(algo, preset)
    kwargs = model_kwargs(hyperparams, action_dim=1)
    assert kwargs["policy"] == "MlpPolicy" and hyperparams["n_timesteps"] > 0
    assert vecnormalize_kwargs(hyperparams) == {"norm_obs": True, "norm_reward": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on-policy rollouts must hold whole episodes of the preset
        check_rollout_length(algo, hyperparams, get_config(preset).unlearn.horizon)


def test_unknown_hyperparameter_is_an_error_naming_the_valid_ones() -> None:
    with pytest.raises(KeyError, match=r"n_stepz.*valid keys are:.*n_steps"):
        load_hyperparams("ppo", "test", {"n_stepz": 8})
    with pytest.raises(KeyError, match="noise_type"):  # PPO has no action noise
        load_hyperparams("ppo", "test", {"noise_type": "normal"})
    with pytest.raises(ValueError, match="noise_type must be one of"):
        load_hyperparams("ddpg", "test", {"noise_type": "pink"})
    with pytest.raises(KeyError, match="no entry for preset"):
        load_hyperparams("sac", "gpu")


def test_hyperparameter_values_of_the_wrong_kind_are_errors() -> None:
    with pytest.raises(ValueError, match="normalize must be true, false or a mapping"):
        load_hyperparams("ppo", "test", parse_hyperparams(["normalize=maybe"]))  # not read as true
    with pytest.raises(ValueError, match="normalize must be true, false or a mapping"):
        vecnormalize_kwargs({"normalize": 1})
    assert vecnormalize_kwargs(load_hyperparams("ppo", "test", parse_hyperparams(["normalize=false"]))) is None
    for override, message in [("gamma=abc", "gamma expects a number, got 'abc'"),
                              ("n_steps=2.5", "n_steps expects an integer, got 2.5"),
                              ("normalize_advantage=maybe", "normalize_advantage expects true or false"),
                              ("n_timesteps=-5", "n_timesteps must be positive")]:
        with pytest.raises(ValueError, match=message):
            load_hyperparams("ppo", "test", parse_hyperparams([override]))
    with pytest.raises(ValueError, match=r"policy_kwargs='\{net_arch: \[8' is not a YAML value"):
        parse_hyperparams(["policy_kwargs={net_arch: [8"])
    # The command line reads 1e5 as a float; an "auto" default leaves the value's kind to the constructor.
    sac = load_hyperparams("sac", "test", parse_hyperparams(["buffer_size=1e5", "ent_coef=0.1"]))
    assert sac["buffer_size"] == 100_000 and isinstance(sac["buffer_size"], int) and sac["ent_coef"] == 0.1
    # A YAML file reads 1e5 as a string: it is a number too.
    assert load_hyperparams("sac", "test", {"buffer_size": "1e5"})["buffer_size"] == 100_000
    with pytest.raises(ValueError, match="policy_kwargs expects a mapping"):
        load_hyperparams("ppo", "test", parse_hyperparams(["policy_kwargs=5"]))


def test_train_freq_may_count_episodes() -> None:
    sac = load_hyperparams("sac", "test", parse_hyperparams(["train_freq=[1, episode]"]))
    assert model_kwargs(sac, action_dim=1)["train_freq"] == (1, "episode")
    with pytest.raises(ValueError, match="train_freq expects N, \\[N, step\\] or \\[N, episode\\]"):
        load_hyperparams("sac", "test", parse_hyperparams(["train_freq=[1, epoch]"]))


def test_hyperparams_from_the_command_line_and_noise_and_entropy_settings() -> None:
    overrides = parse_hyperparams(["learning_rate=1e-3", "ent_coef=auto_0.2", "noise_std=0.3",
                                   "policy_kwargs={net_arch: [8], activation_fn: relu}"])
    assert overrides["learning_rate"] == 1e-3 and overrides["ent_coef"] == "auto_0.2"
    ddpg_hp = {k: v for k, v in overrides.items() if k != "ent_coef"} | {"noise_type": "ornstein-uhlenbeck"}
    ddpg = model_kwargs(load_hyperparams("ddpg", "cpu", ddpg_hp), 1)
    assert type(ddpg["action_noise"]).__name__ == "OrnsteinUhlenbeckActionNoise"
    assert ddpg["action_noise"]._sigma[0] == pytest.approx(0.3)
    assert ddpg["policy_kwargs"]["activation_fn"].__name__ == "ReLU"
    sac_hp = load_hyperparams("sac", "test", {"ent_coef": "auto_0.2"})
    sac = ALGOS["sac"](env=gym.make("Pendulum-v1"), **model_kwargs(sac_hp, 1))
    assert float(sac.log_ent_coef.detach().exp()) == pytest.approx(0.2)  # learned temperature starting at 0.2


def test_rollouts_must_hold_whole_episodes_for_reinforce() -> None:
    with pytest.raises(ValueError, match="Monte-Carlo"):
        check_rollout_length("reinforce", {"n_steps": 10}, horizon=4)
    with pytest.warns(UserWarning, match="not a multiple"):
        check_rollout_length("ppo", {"n_steps": 10}, horizon=4)


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_trains_saves_reloads_and_acts(algo: str, tmp_path: Path) -> None:
    run_dir = train_policy.main([
        "--algo", algo, "--preset", "test", "--total-timesteps", str(TRAIN_STEPS), "--out", str(tmp_path),
        "--no-progress-bar", "--env-kwargs", *(f"{k}={v}" for k, v in ENV_KWARGS.items()),
    ])
    policy = load_lambda_policy(run_dir)
    assert isinstance(policy, LambdaPolicy) and policy.algo == algo
    assert policy.model.num_timesteps == TRAIN_STEPS and policy.model._n_updates > 0  # it trained

    # obs -> lambda is exactly what the model does behind its training wrappers.
    vec_env = VecNormalize.load(str(run_dir / "vecnormalize.pkl"), make_lambda_vec_env("test", ENV_KWARGS))
    vec_env.training = False
    vec_env.seed(3)
    obs = vec_env.reset()
    for _ in range(4):
        expected = policy(vec_env.get_original_obs()[0])
        action, _ = policy.model.predict(obs, deterministic=True)
        obs, _, _, infos = vec_env.step(action)
        assert infos[0]["lambda"] == pytest.approx(expected, abs=1e-6)

    # The policy reloaded from model.zip runs a whole episode of the plain env, within the bounds.
    env = vec_env.envs[0].unwrapped  # reused: building an env reloads the data set
    log = run_episode(env, load_lambda_policy(run_dir / "model.zip"), seed=7)
    assert len(log.lambdas) == 4 and all(0.1 <= lam <= 0.9 for lam in log.lambdas)


class _Target(gym.Env):
    """A one-state bandit with reward -(a - 1)^2 and four steps an episode, for REINFORCE alone.

    The action box is wide so that clipping at its bounds does not move the optimum.
    """

    observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = spaces.Box(-3.0, 3.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), -float((action[0] - 1.0) ** 2), self.t >= 4, False, {}


def test_reinforce_leaves_out_an_unfinished_final_episode() -> None:
    # env 0: episodes of 3 steps that fit the rollout; env 1: a 2-step episode (a divergence) shifted
    # the next one, which is unfinished when the rollout ends; env 2: no episode start at all.
    starts = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]], dtype=np.float32)
    keep = monte_carlo_mask(starts, last_dones=np.array([True, False, False]))
    assert keep[:, 0].all()
    assert keep[:, 1].tolist() == [True] * 5 + [False]
    assert not keep[:, 2].any()


@pytest.mark.parametrize(("kl_coef", "mean", "std"), [(0.0, 1.0, None), (10.0, 0.0, 1.0)])
def test_reinforce_climbs_the_return_and_its_kl_pulls_to_the_prior(kl_coef: float, mean: float, std: float | None) -> None:
    model = REINFORCE("MlpPolicy", _Target(), n_steps=32, learning_rate=1e-2, kl_coef=kl_coef, seed=0,
                      policy_kwargs={"net_arch": [8]})
    model.learn(1536)
    policy = model.policy.get_distribution(th.zeros(1, 1, device=model.device)).distribution
    assert policy.loc.item() == pytest.approx(mean, abs=0.25)
    if std is not None:  # a strong KL to N(0, 1) also holds the exploration at the prior's
        assert policy.scale.item() == pytest.approx(std, abs=0.1)
