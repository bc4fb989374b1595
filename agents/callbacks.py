"""Per-step TensorBoard logging for SB3 agents, under the same tags as every other lambda method."""

from __future__ import annotations

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import TensorBoardOutputFormat
from torch.utils.tensorboard import SummaryWriter

from agents.envs import EPISODE_KEYS, TASK_KEY
from unlearn_env.episode import step_scalars


class StepScalarsCallback(BaseCallback):
    """Writes every env step's scalars and every episode's return and summary to TensorBoard.

    Tags: :func:`unlearn_env.episode.step_scalars` (``step/lambda``, ``step/loss_retain``,
    ``step/grad_norm_forget``, ``reward/siss``, ...) at the global env step, and
    ``episode/return`` plus ``episode/<key>`` for :data:`agents.envs.EPISODE_KEYS` at the
    episode's end, exactly as ``EpisodeLog.write`` does for the baselines, and the return once
    more under ``task/<task>/return`` for the episode's forget task (one curve per task). SB3's logger
    keeps one value per key between dumps, so the per-step scalars go straight to its
    TensorBoard writer; the logger itself gets ``rollout/lambda_mean`` for the console table.
    Rewards are the environment's own, before any ``VecNormalize`` reward scaling.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._writer: SummaryWriter | None = None

    def _on_training_start(self) -> None:
        formats = [f for f in self.logger.output_formats if isinstance(f, TensorBoardOutputFormat)]
        if not formats:
            raise ValueError("StepScalarsCallback writes to TensorBoard: create the model with tensorboard_log=...")
        self._writer = formats[0].writer

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        vec_normalize = self.model.get_vec_normalize_env()
        rewards = vec_normalize.get_original_reward() if vec_normalize is not None else self.locals["rewards"]
        first_step = self.num_timesteps - len(infos)  # num_timesteps already counts this call's steps
        for rank, (info, reward) in enumerate(zip(infos, rewards)):
            step = first_step + rank
            for tag, value in step_scalars(info, float(reward)).items():
                self._writer.add_scalar(tag, value, step)
            self.logger.record_mean("rollout/lambda_mean", info["lambda"])
            episode = info.get("episode")
            if episode is not None:
                self._writer.add_scalar("episode/return", episode["r"], step + 1)
                if TASK_KEY in info:
                    self._writer.add_scalar(f"task/{info[TASK_KEY]}/return", episode["r"], step + 1)
                for key in EPISODE_KEYS:
                    if key in episode:  # absent behind a VecEnv that writes only Monitor's r, l, t
                        self._writer.add_scalar(f"episode/{key}", episode[key], step + 1)
        return True
