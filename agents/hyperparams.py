"""Per-preset hyper-parameters of the lambda-policies, in the manner of RL Baselines3 Zoo.

``agents/hyperparams/<algo>.yml`` maps each preset (``test``, ``cpu``, ``paper``) to a flat
dict. Keys are the algorithm's constructor arguments (``learning_rate``, ``n_steps``,
``ent_coef``, ...) plus a few of our own:

================  ==========================================================================
``policy``        the SB3 policy, ``MlpPolicy`` by default
``n_timesteps``   default training budget in env steps (``--total-timesteps`` overrides it)
``n_envs``        default number of environment copies (``--n-envs`` overrides it)
``normalize``     ``true``/``false`` (nothing else), or ``VecNormalize`` keyword arguments;
                  ``true`` means ``{norm_obs: true, norm_reward: false}``
``noise_type``    action noise of off-policy algorithms: ``normal`` or ``ornstein-uhlenbeck``
``noise_std``     its standard deviation, in the agent's [-1, 1] action units
================  ==========================================================================

``policy_kwargs`` is a YAML mapping; ``activation_fn`` may name ``tanh``, ``relu``, ``elu``
or ``leaky_relu``. An unknown key is an error that lists the valid ones, and so is a value of
the wrong kind where the constructor's default is a number or a boolean (``gamma: abc``).
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import ActionNoise, NormalActionNoise, OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from agents.algos import ALGOS
from agents.reinforce import REINFORCE
from unlearn_env.config import parse_overrides

HYPERPARAMS_DIR = Path(__file__).parent / "hyperparams"

OUR_KEYS: tuple[str, ...] = ("policy", "n_timesteps", "n_envs", "normalize", "noise_type", "noise_std")
"""Keys that are not constructor arguments (see the module docstring)."""

# Constructor arguments set by train_policy.py, never by a YAML file.
_RESERVED = {"self", "env", "tensorboard_log", "verbose", "seed", "device", "_init_setup_model",
             "action_noise", "monitor_wrapper", "supported_action_spaces"}

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU}

NOISES: dict[str, type[ActionNoise]] = {"normal": NormalActionNoise, "ornstein-uhlenbeck": OrnsteinUhlenbeckActionNoise}

# The types of our numeric keys; a constructor argument's type is that of its default.
_OUR_TYPES: dict[str, type] = {"n_timesteps": int, "n_envs": int, "noise_std": float}


def constructor_defaults(algo_cls: type[BaseAlgorithm]) -> dict[str, Any]:
    """Every constructor argument of ``algo_cls`` with its default (``inspect.Parameter.empty`` if none)."""
    return {name: param.default for name, param in inspect.signature(algo_cls.__init__).parameters.items()}


def valid_keys(algo_cls: type[BaseAlgorithm]) -> list[str]:
    """Every key a hyper-parameter file may use for ``algo_cls``."""
    params = constructor_defaults(algo_cls)
    ours = set(OUR_KEYS) - ({"noise_type", "noise_std"} if "action_noise" not in params else set())
    return sorted((set(params) - _RESERVED - {"policy"}) | ours)


def load_hyperparams(algo: str, preset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The validated hyper-parameters of ``algo`` for ``preset``, with ``overrides`` applied on top."""
    path = HYPERPARAMS_DIR / f"{algo}.yml"
    with path.open() as handle:
        table = yaml.safe_load(handle) or {}
    if preset not in table:
        raise KeyError(f"{path} has no entry for preset {preset!r}; it has {sorted(table)}")
    hyperparams = {**table[preset], **(overrides or {})}
    valid = valid_keys(ALGOS[algo])
    unknown = sorted(set(hyperparams) - set(valid))
    if unknown:
        raise KeyError(
            f"unknown hyper-parameter(s) {unknown} for {algo} (preset {preset!r}, {path.name}); "
            f"valid keys are: {', '.join(valid)}"
        )
    if "noise_type" in hyperparams and hyperparams["noise_type"] not in NOISES:
        raise ValueError(f"noise_type must be one of {sorted(NOISES)}, got {hyperparams['noise_type']!r}")
    hyperparams = _check_types(ALGOS[algo], hyperparams)
    vecnormalize_kwargs(hyperparams)  # checks normalize now, not when the environments are built
    return hyperparams


def _check_types(algo_cls: type[BaseAlgorithm], hyperparams: dict[str, Any]) -> dict[str, Any]:
    """``hyperparams`` with numbers and booleans checked; a wrong one would fail deep inside training.

    A key's type is that of the constructor's default (``None`` or ``"auto"`` defaults are left
    to the constructor). YAML 1.1 reads ``1e5`` as a string and ``1.0e5`` as a float: both are
    numbers here, and an integral one becomes an int where an int is due. ``train_freq`` may also
    be ``[N, step]`` or ``[N, episode]``, and ``policy_kwargs`` must be a mapping.
    """
    defaults = constructor_defaults(algo_cls)
    checked = dict(hyperparams)
    for key, value in hyperparams.items():
        default = defaults.get(key)
        kind = _OUR_TYPES.get(key) or (type(default) if isinstance(default, (bool, int, float)) else None)
        if key == "policy_kwargs" and not isinstance(value, dict):
            raise ValueError(f"policy_kwargs expects a mapping, e.g. {{net_arch: [64, 64]}}, got {value!r}")
        if key == "train_freq" and isinstance(value, (list, tuple)):
            if len(value) != 2 or not isinstance(value[0], int) or value[1] not in ("step", "episode"):
                raise ValueError(f"train_freq expects N, [N, step] or [N, episode], got {value!r}")
            continue
        if kind in (int, float) and isinstance(value, str):
            try:
                value = checked[key] = float(value)
            except ValueError:
                pass  # refused just below, naming the key
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"{key} expects true or false, got {value!r}")
        if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{key} expects {'an integer' if kind is int else 'a number'}, got {value!r}")
        if kind is int and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{key} expects an integer, got {value!r}")
            checked[key] = int(value)
        if key in ("n_timesteps", "n_envs") and value < 1:
            raise ValueError(f"{key} must be positive, got {value!r}")
    return checked


def parse_hyperparams(pairs: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` from a command line; values are read as YAML (numbers, lists, mappings)."""
    return {key: _read_value(key, value) for key, value in parse_overrides(pairs).items()}


def _read_value(key: str, text: str) -> Any:
    """YAML value, except that ``1e-3`` is a float (YAML 1.1 reads it as a string)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        # The parser's own message spans lines and points at a column; its gist is enough.
        raise ValueError(f"{key}={text!r} is not a YAML value ({getattr(err, 'problem', None) or err})") from None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def model_kwargs(hyperparams: dict[str, Any], action_dim: int) -> dict[str, Any]:
    """Constructor keyword arguments (``policy`` included) from validated hyper-parameters."""
    kwargs = {k: v for k, v in hyperparams.items() if k not in OUR_KEYS}
    kwargs["policy"] = hyperparams.get("policy", "MlpPolicy")
    if "policy_kwargs" in kwargs:
        policy_kwargs = dict(kwargs["policy_kwargs"])
        if "activation_fn" in policy_kwargs:
            name = policy_kwargs["activation_fn"]
            if name not in ACTIVATIONS:
                raise ValueError(f"activation_fn must be one of {sorted(ACTIVATIONS)}, got {name!r}")
            policy_kwargs["activation_fn"] = ACTIVATIONS[name]
        kwargs["policy_kwargs"] = policy_kwargs
    if isinstance(kwargs.get("train_freq"), list):  # SB3 takes (N, unit) as a tuple only
        kwargs["train_freq"] = tuple(kwargs["train_freq"])
    if "noise_type" in hyperparams:
        sigma = float(hyperparams.get("noise_std", 0.1)) * np.ones(action_dim)
        kwargs["action_noise"] = NOISES[hyperparams["noise_type"]](mean=np.zeros(action_dim), sigma=sigma)
    return kwargs


def vecnormalize_kwargs(hyperparams: dict[str, Any]) -> dict[str, Any] | None:
    """``VecNormalize`` keyword arguments, or ``None`` when normalisation is off."""
    normalize = hyperparams.get("normalize", True)
    if normalize is False:
        return None
    if normalize is not True and not isinstance(normalize, dict):
        raise ValueError(f"normalize must be true, false or a mapping of VecNormalize options, got {normalize!r}")
    kwargs = {"norm_obs": True, "norm_reward": False}
    if isinstance(normalize, dict):
        valid = set(inspect.signature(VecNormalize.__init__).parameters) - {"self", "venv"}
        unknown = sorted(set(normalize) - valid)
        if unknown:
            raise KeyError(f"unknown normalize option(s) {unknown}; valid keys are: {', '.join(sorted(valid))}")
        kwargs.update(normalize)
    if kwargs["norm_reward"] and "gamma" in hyperparams:
        kwargs.setdefault("gamma", hyperparams["gamma"])  # discount the reward statistics like the agent
    return kwargs


def is_off_policy(algo: str) -> bool:
    """Whether ``algo`` learns from a replay buffer (saved with its checkpoints)."""
    return issubclass(ALGOS[algo], OffPolicyAlgorithm)


def check_rollout_length(algo: str, hyperparams: dict[str, Any], horizon: int) -> None:
    """On-policy rollouts should hold whole episodes; REINFORCE needs it for Monte-Carlo returns."""
    algo_cls = ALGOS[algo]
    if not issubclass(algo_cls, OnPolicyAlgorithm):
        return
    n_steps = int(hyperparams.get("n_steps", constructor_defaults(algo_cls)["n_steps"]))
    if n_steps % horizon == 0:
        return
    message = f"{algo}: n_steps={n_steps} is not a multiple of the episode length (horizon={horizon})"
    if issubclass(algo_cls, REINFORCE):
        raise ValueError(message + "; REINFORCE needs whole episodes per rollout for Monte-Carlo returns")
    warnings.warn(message + "; rollouts will cut episodes and bootstrap from the value function", stacklevel=2)
