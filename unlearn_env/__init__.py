"""unlearn_env: adaptive-lambda SISS unlearning of diffusion models as a Gymnasium environment.

Importing the package registers ``SISSUnlearning-v0``::

    import gymnasium, unlearn_env
    env = gymnasium.make("SISSUnlearning-v0", preset="test", horizon=20)
    tasks = gymnasium.make("SISSUnlearning-v0", preset="test", tasks="train")  # an instance set

Forget tasks and instance sets: :mod:`unlearn_env.tasks`, :mod:`unlearn_env.instances`.
"""

import gymnasium

from unlearn_env.config import PRESETS, ExperimentConfig, get_config

ENV_ID = "SISSUnlearning-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="unlearn_env.env:UnlearningEnv",
        vector_entry_point="unlearn_env.vector_env:BatchedUnlearningEnv",
    )

__all__ = ["ENV_ID", "PRESETS", "ExperimentConfig", "get_config"]
