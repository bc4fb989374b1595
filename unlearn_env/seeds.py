"""Seed namespaces: evaluation, tuning and agent-training episodes never share a reset seed.

A reset seed fixes an episode's minibatches, noise, coins, probe set and sampling noise, so a
seed used to train an agent or to tune a static lambda must never be an evaluation seed:

==========  ===========================  ====================================================
evaluation  ``0, 1, ..., N-1``           ``evaluate.py --seeds N``
tuning      ``1000, 1001, ...``          the static-lambda frontier (best static lambda)
training    ``100000 + 1000 * s + ...``  an agent of run seed ``s``: its first episode; later
                                         episodes continue the env's own random stream
==========  ===========================  ====================================================
"""

from __future__ import annotations

TUNING_SEED_START = 1000
TRAINING_SEED_START = 100_000
MAX_EVALUATION_SEEDS = TUNING_SEED_START
"""Evaluation seeds stay below the tuning seeds."""


def tuning_seeds(count: int) -> list[int]:
    """The first ``count`` tuning seeds."""
    return list(range(TUNING_SEED_START, TUNING_SEED_START + count))


def training_env_seed(run_seed: int, num_timesteps: int = 0) -> int:
    """The env seed an agent of run seed ``run_seed`` starts (or, after ``num_timesteps`` steps, resumes) from."""
    return TRAINING_SEED_START + 1000 * run_seed + num_timesteps
