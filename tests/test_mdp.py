"""The MDP's signal: probes after the update, reward modes, mirrored forget draws, the clip, extended states."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env

from unlearn_env import rewards, siss
from unlearn_env.config import get_config
from unlearn_env.env import EXTENDED_OBS_NAMES, UnlearningEnv
from unlearn_env.rewards import ProbeLosses
from unlearn_env.vector_env import BatchedUnlearningEnv


def first_step(env: UnlearningEnv, seed: int, lam: float) -> dict:
    env.reset(seed=seed)
    return env.step(np.array([lam], dtype=np.float32))[4]


def test_the_siss_term_scores_the_model_after_the_update() -> None:
    """With lr = 0 the update changes nothing, so the reward's L_SISS cannot depend on lambda; with lr > 0 it does."""
    frozen = UnlearningEnv(preset="test", lr=0.0)
    still = [first_step(frozen, 3, lam)["reward_terms"]["siss"] for lam in (0.1, 0.9)]
    assert still[0] == still[1]
    env = UnlearningEnv(preset="test")
    moved = [first_step(env, 3, lam)["reward_terms"]["siss"] for lam in (0.1, 0.9)]
    assert moved[0] != moved[1]


def test_probe_losses_are_fixed_by_the_seed_and_shared_by_methods() -> None:
    a, b = UnlearningEnv(preset="test"), UnlearningEnv(preset="test")
    _, info_a = a.reset(seed=4)
    for lam in (0.2, 0.8, 0.5):
        a.step(np.array([lam], dtype=np.float32))
    probe_after_a = a.probe_set
    _, info_b = b.reset(seed=4)
    # Same seed, same probe set and same probe losses of the base model, whatever was done before.
    assert info_a["probe_loss_retain"] == info_b["probe_loss_retain"]
    assert info_a["probe_loss_forget"] == info_b["probe_loss_forget"]
    for name in ("images", "labels", "timesteps", "noise"):
        assert torch.equal(getattr(probe_after_a, name), getattr(b.probe_set, name))
    # Another seed draws another probe set; the probe pool is never drawn by an update.
    _, info_c = b.reset(seed=5)
    assert info_c["probe_loss_retain"] != info_a["probe_loss_retain"]
    pool = {img.numpy().tobytes() for img in b.probe_images}
    assert not pool & {img.numpy().tobytes() for img in b.retain_images}
    assert len(pool) >= b.config.unlearn.probe_size


def test_outcome_shaping_telescopes_and_terms_sum_to_the_reward() -> None:
    env = UnlearningEnv(preset="test", reward="outcome")
    cfg = env.config.reward
    _, info = env.reset(seed=2)
    probe_0 = ProbeLosses(info["probe_loss_retain"], info["probe_loss_forget"])
    shaping = 0.0
    done = False
    while not done:
        _, reward, done, _, info = env.step(np.array([0.6], dtype=np.float32))
        terms = info["reward_terms"]
        assert sum(terms.values()) == pytest.approx(reward, rel=1e-12)
        shaping += terms["shaping_forget"] + terms["shaping_retain"]
    final = ProbeLosses(info["probe_loss_retain"], info["probe_loss_forget"])
    assert shaping == pytest.approx(sum(rewards.potential_parts(final, probe_0, cfg)), rel=1e-9, abs=1e-12)
    assert set(rewards.TERMINAL_TERMS) <= set(terms) and 0.0 <= info["terminal_concept_rate"] <= 1.0


def test_potential_caps_the_forget_gain_and_charges_the_retain_rise() -> None:
    cfg = get_config("test", forget_cap=0.5, retain_weight=10.0).reward
    base = ProbeLosses(0.1, 0.2)
    assert rewards.potential_parts(base, base, cfg) == (0.0, 0.0)
    blown = rewards.potential_parts(ProbeLosses(0.1, 20.0), base, cfg)[0]
    assert blown == pytest.approx(0.5) == rewards.potential_parts(ProbeLosses(0.1, 0.3), base, cfg)[0]
    assert rewards.potential_parts(ProbeLosses(0.11, 0.2), base, cfg)[1] == pytest.approx(-1.0)


def test_extended_observation_appends_the_probe_losses_after_the_update() -> None:
    env = UnlearningEnv(preset="test", observation="extended")
    assert env.observation_space.shape == (len(EXTENDED_OBS_NAMES),)
    obs, info = env.reset(seed=0)
    assert obs[6:] == pytest.approx([info["probe_loss_retain"], info["probe_loss_forget"]], rel=1e-6)
    obs, *_, info = env.step(np.array([0.5], dtype=np.float32))
    assert obs[6:] == pytest.approx([info["probe_loss_retain"], info["probe_loss_forget"]], rel=1e-6)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*symmetric and normalized Box.*")
        gym_check_env(UnlearningEnv(preset="test", observation="extended"))


def test_forget_draws_are_mirrored_like_the_pretraining() -> None:
    env = UnlearningEnv(preset="test")
    args = (env.retain_images, env.retain_labels, env.forget_images, env.forget_labels, 64, 1000)
    plain = siss.draw_batch(*args, torch.Generator().manual_seed(0))
    mirrored = siss.draw_batch(*args, torch.Generator().manual_seed(0), hflip_forget=True)
    same = (mirrored.a == plain.a).flatten(1).all(1)
    flipped = (mirrored.a == plain.a.flip(-1)).flatten(1).all(1)
    assert (same | flipped).all() and 10 < int(flipped.sum()) < 54
    assert torch.equal(mirrored.x, plain.x) and torch.equal(mirrored.noise, plain.noise)


def test_the_clip_acts_like_the_official_one() -> None:
    """In the official code's pixel-sum units the clip at 1 acts on (nearly) every step; without it, never."""
    clipped = UnlearningEnv(preset="test")
    clipped.reset(seed=0)
    infos = [clipped.step(np.array([0.5], dtype=np.float32))[4] for _ in range(clipped.config.unlearn.horizon)]
    assert sum(i["clipped"] for i in infos) >= len(infos) - 1
    assert all(i["update_norm"] > 1.0 for i in infos if i["clipped"])
    free = UnlearningEnv(preset="test", max_grad_norm=None)
    free.reset(seed=0)
    assert not free.step(np.array([0.5], dtype=np.float32))[4]["clipped"]


def test_reading_the_pending_batch_changes_nothing() -> None:
    env = UnlearningEnv(preset="test")
    env.reset(seed=9)
    peeked = env.pending_batch()
    assert env.pending_batch() is peeked
    with_peek = [env.step(np.array([0.4], dtype=np.float32))[0] for _ in range(3)]
    env.reset(seed=9)
    without = [env.step(np.array([0.4], dtype=np.float32))[0] for _ in range(3)]
    np.testing.assert_array_equal(np.stack(with_peek), np.stack(without))


@pytest.mark.parametrize("overrides", [{"reward": "outcome", "observation": "extended"}])
def test_batched_env_gives_the_probes_and_rewards_of_single_envs(overrides: dict) -> None:
    horizon, n = 2, 2
    batched = BatchedUnlearningEnv(num_envs=n, preset="test", horizon=horizon, **overrides)
    singles = [UnlearningEnv(preset="test", horizon=horizon, **overrides) for _ in range(n)]
    obs, infos = batched.reset(seed=[1, 2])
    for i, env in enumerate(singles):
        single_obs, single_info = env.reset(seed=i + 1)
        np.testing.assert_allclose(obs[i], single_obs, rtol=1e-4, atol=1e-6)
        assert infos["probe_loss_forget"][i] == pytest.approx(single_info["probe_loss_forget"], rel=1e-4)
    actions = np.array([[0.3], [0.7]], dtype=np.float32)
    for _ in range(horizon):
        obs, rewards_, terminated, _, infos = batched.step(actions)
        for i, env in enumerate(singles):
            single_obs, reward, done, _, info = env.step(actions[i])
            np.testing.assert_allclose(obs[i], single_obs, rtol=1e-4, atol=1e-6)
            assert rewards_[i] == pytest.approx(reward, rel=1e-4, abs=1e-6) and terminated[i] == done
            for term, value in info["reward_terms"].items():
                assert infos["reward_terms"][term][i] == pytest.approx(value, rel=1e-4, abs=1e-6)
