"""Monte-Carlo policy gradient (REINFORCE) with a KL regulariser, as an SB3 on-policy algorithm.

Stable-Baselines3 has no REINFORCE, and the adaptive-lambda paper names "Monte-Carlo policy
gradient with a KL regulariser" among its agents. This is the textbook algorithm (Williams
1992; Sutton & Barto §13.3-13.4) in a few lines on top of SB3's ``OnPolicyAlgorithm``, so it
gets rollouts, ``VecNormalize``, callbacks, logging, ``save``/``load`` and
``predict`` for free and is trained by ``train_policy.py`` like PPO.

Per rollout of ``n_steps`` steps per environment, one gradient step on

    loss = -mean_t[ A_t * log pi(a_t | s_t) ] + kl_coef * mean_t[ KL(pi(.|s_t) || N(0, I)) ]
           + vf_coef * mean_t[ (V(s_t) - G_t)^2 ]            (only with ``use_baseline``)

* ``G_t`` is the Monte-Carlo return (``gae_lambda = 1``). ``n_steps`` must be a multiple of
  the episode length (``agents.hyperparams`` checks it), so every rollout ends on a terminal
  step. An episode cut short (a diverged SISS step) shifts the later ones against the rollout
  boundaries; the unfinished episode at the end of a rollout would then have returns
  bootstrapped from V, so its steps are left out of the update (:func:`monte_carlo_mask`).
* ``A_t = G_t - V(s_t)`` with a learned baseline (variance reduction, no bias), else ``G_t``.
* The KL term pulls the Gaussian policy over the unsquashed action towards the fixed prior
  N(0, I). In ``[-1, 1]`` action units its mean is the middle of the lambda range
  (lambda = 0.5 for [0.1, 0.9]), the counterpart of the VI baseline's ``KL(q(z|v) || N(0, 1))``
  (``baselines/vi.py``). We read the paper's "KL regulariser" this way: a KL to the policy
  that collected the rollout would be zero, with zero gradient, at the single update.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

SelfREINFORCE = TypeVar("SelfREINFORCE", bound="REINFORCE")


def monte_carlo_mask(episode_starts: np.ndarray, last_dones: np.ndarray) -> np.ndarray:
    """Which rollout steps have a true Monte-Carlo return: all but an unfinished final episode.

    ``episode_starts`` is the rollout buffer's ``(n_steps, n_envs)`` flags and ``last_dones``
    whether each env's last step ended its episode. Where it did not, the steps from that
    env's last episode start onwards have returns bootstrapped from the value function.
    """
    keep = np.ones(episode_starts.shape, dtype=bool)
    for env in np.flatnonzero(~np.asarray(last_dones, dtype=bool)):
        starts = np.flatnonzero(episode_starts[:, env])
        keep[starts[-1] if len(starts) else 0:, env] = False
    return keep


class REINFORCE(OnPolicyAlgorithm):
    """REINFORCE with an optional learned baseline and a KL(pi || N(0, I)) regulariser (Box actions).

    :param policy: ``"MlpPolicy"`` or an ``ActorCriticPolicy`` class (its value head is the baseline)
    :param env: the environment (usually a ``VecEnv``)
    :param learning_rate: Adam learning rate, or a schedule of the remaining progress
    :param n_steps: steps per environment per update; a multiple of the episode length
    :param gamma: discount of the Monte-Carlo return
    :param kl_coef: weight of KL(pi(.|s) || N(0, I))
    :param use_baseline: subtract the learned V(s) from the return
    :param vf_coef: weight of the baseline's squared error
    :param normalize_advantage: standardise the advantages over the rollout
    :param max_grad_norm: global gradient-norm clip of the update
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"MlpPolicy": ActorCriticPolicy}

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 120,
        gamma: float = 1.0,
        kl_coef: float = 0.01,
        use_baseline: bool = True,
        vf_coef: float = 0.5,
        normalize_advantage: bool = True,
        max_grad_norm: float = 0.5,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=1.0,  # Monte-Carlo returns
            ent_coef=0.0,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=False,
            sde_sample_freq=-1,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
            supported_action_spaces=(spaces.Box,),
        )
        self.kl_coef = kl_coef
        self.use_baseline = use_baseline
        self.normalize_advantage = normalize_advantage
        if _init_setup_model:
            self._setup_model()

    def train(self) -> None:
        """One gradient step on the rollout's steps with Monte-Carlo returns."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        buffer = self.rollout_buffer
        keep = monte_carlo_mask(buffer.episode_starts, self._last_episode_starts)
        self.logger.record("train/mc_fraction", float(keep.mean()))
        if not keep.any():
            return
        # Boolean indexing of the (n_steps, n_envs, ...) arrays keeps the complete episodes' steps.
        observations = buffer.to_torch(buffer.observations[keep])
        actions = buffer.to_torch(buffer.actions[keep].astype(np.float32))
        returns = buffer.to_torch(buffer.returns[keep])

        distribution = self.policy.get_distribution(observations).distribution
        log_prob = distribution.log_prob(actions).sum(dim=-1)
        advantages = buffer.to_torch(buffer.advantages[keep]) if self.use_baseline else returns
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss = -(advantages * log_prob).mean()
        prior = Normal(th.zeros_like(distribution.loc), th.ones_like(distribution.scale))
        kl = kl_divergence(distribution, prior).sum(dim=-1).mean()
        loss = policy_loss + self.kl_coef * kl
        if self.use_baseline:
            value_loss = F.mse_loss(self.policy.predict_values(observations).flatten(), returns)
            loss = loss + self.vf_coef * value_loss
            self.logger.record("train/value_loss", value_loss.item())

        self.policy.optimizer.zero_grad()
        loss.backward()
        th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.policy.optimizer.step()

        self._n_updates += 1
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/policy_loss", policy_loss.item())
        self.logger.record("train/kl_prior", kl.item())
        self.logger.record("train/std", distribution.scale.mean().item())
