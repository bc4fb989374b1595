"""A trained agent as a plain function from a raw observation to lambda."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from agents.algos import ALGOS
from agents.hyperparams import vecnormalize_kwargs
from agents.runs import RunLayout, Snapshot, latest_snapshot, readable_snapshot, run_dir_of


class LambdaPolicy:
    """Maps a raw env observation (6 floats) to the agent's deterministic lambda.

    Applies the saved ``VecNormalize`` observation statistics (frozen), asks the model for its
    deterministic action in [-1, 1] and undoes the ``RescaleAction`` the agent was trained
    behind, so it plugs straight into ``unlearn_env.episode.run_episode``.
    """

    def __init__(
        self,
        model: BaseAlgorithm,
        lambda_min: float,
        lambda_max: float,
        obs_normalizer: VecNormalize | None = None,
        algo: str = "",
    ) -> None:
        self.model = model
        self.lambda_min = lambda_min
        self.lambda_max = lambda_max
        self.obs_normalizer = obs_normalizer
        self.algo = algo

    def __call__(self, obs: np.ndarray) -> float:
        obs = np.asarray(obs, dtype=np.float32)
        if self.obs_normalizer is not None:
            obs = self.obs_normalizer.normalize_obs(obs)
        action, _ = self.model.predict(obs, deterministic=True)
        unit = float(np.clip(np.asarray(action).reshape(-1)[0], -1.0, 1.0))
        lam = self.lambda_min + 0.5 * (unit + 1.0) * (self.lambda_max - self.lambda_min)
        return float(np.clip(lam, self.lambda_min, self.lambda_max))


def policy_snapshot(path: str | Path) -> Snapshot:
    """The snapshot :func:`load_lambda_policy` loads for ``path``: that file, or a run folder's latest good one."""
    layout = RunLayout(run_dir_of(path))
    normalized = vecnormalize_kwargs(layout.read_config()["hyperparams"]) is not None
    if not Path(path).is_dir():
        return readable_snapshot(Path(path), normalized)
    snapshot = latest_snapshot(layout, normalized)
    if snapshot is None:
        raise FileNotFoundError(f"{layout.root} holds no saved model yet (model.zip or checkpoints/)")
    return snapshot


def load_lambda_policy(path: str | Path, device: str = "cpu") -> LambdaPolicy:
    """Load a policy written by ``train_policy.py``: a ``model.zip``, a checkpoint, or the run folder.

    For a run folder, the snapshot with the most training steps is used (``model.zip`` after
    a finished run). The algorithm and the lambda bounds come from the run's ``config.json``.
    """
    config = RunLayout(run_dir_of(path)).read_config()
    snapshot = policy_snapshot(path)
    model = ALGOS[config["algo"]].load(snapshot.model, device=device)
    normalizer = None
    if snapshot.vecnormalize is not None:
        # VecNormalize pickles without its VecEnv; normalize_obs needs only the statistics.
        with snapshot.vecnormalize.open("rb") as handle:
            normalizer = pickle.load(handle)
        normalizer.training = False
    unlearn = config["env_config"]["unlearn"]
    return LambdaPolicy(model, unlearn["lambda_min"], unlearn["lambda_max"], normalizer, config["algo"])
