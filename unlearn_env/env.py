"""``UnlearningEnv``: adaptive-lambda SISS unlearning of a diffusion model as a Gymnasium environment."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from unlearn_env import siss
from unlearn_env.config import ExperimentConfig, RetainSource, UnlearnConfig, get_config
from unlearn_env.data import UnlearningData, build_unlearning_data, to_uint8
from unlearn_env.diffusion import build_scheduler, ddim_sample, image_grid, noise_coefficients, sampling_noise
from unlearn_env.pretrain import load_base_unet

OBS_NAMES: tuple[str, ...] = (
    "loss_retain",
    "loss_forget",
    "grad_norm_retain",
    "grad_norm_forget",
    "prev_lambda",
    "time_fraction",
)
"""Names of the observation entries, in order."""


# The per-step bookkeeping below is shared by :class:`UnlearningEnv` and the batched
# ``unlearn_env.vector_env.BatchedUnlearningEnv``, so both give the same observations,
# rewards and infos for the same measured losses.


COMPILE_TOLERANCE = 1e-3
"""Largest relative gradient error of a compiled UNet against eager mode that ``compile_unet`` accepts."""


def gradient_error(
    reference: nn.Module,
    candidate: nn.Module,
    params: list[nn.Parameter],
    batch: siss.SISSBatch,
    lam: Tensor,
    gamma: Tensor,
    sigma: Tensor,
) -> float:
    """Largest relative error ||g' - g|| / ||g|| of ``candidate``'s grad L_r and grad L_f against ``reference``'s.

    Both modules must compute with ``params`` (a compiled module and the module it wraps do).
    Some torch.compile back ends get this UNet's gradients wrong: torch 2.13's CPU inductor
    returns zero gradients for whole blocks, which would silently corrupt every update.
    """
    expected = siss.measure(reference, params, batch, lam, gamma, sigma)
    actual = siss.measure(candidate, params, batch, lam, gamma, sigma)
    errors = []
    for name in ("grad_retain", "grad_forget"):
        want = torch.cat([g.flatten() for g in getattr(expected, name)])
        got = torch.cat([g.flatten() for g in getattr(actual, name)])
        errors.append(float((got - want).norm() / want.norm().clamp_min(1e-30)))
    return max(errors)


def make_spaces(cfg: UnlearnConfig) -> tuple[spaces.Box, spaces.Box]:
    """The action space (lambda itself) and the 6-float observation space of one environment."""
    action_space = spaces.Box(cfg.lambda_min, cfg.lambda_max, shape=(1,), dtype=np.float32)
    high = np.array([cfg.obs_limit] * 4 + [cfg.lambda_max, 1.0], dtype=np.float32)
    low = np.array([0.0] * 4 + [cfg.lambda_min, 0.0], dtype=np.float32)
    return action_space, spaces.Box(low, high, dtype=np.float32)


def retain_pool(data: UnlearningData, source: RetainSource) -> tuple[Tensor, Tensor]:
    """Images and labels that x is drawn from: the retain set X\\A, or all of X."""
    if source == "retain":
        return data.retain_images, data.retain_labels
    return data.all_images(), data.all_labels()


def check_action(action: np.ndarray | float, low: float, high: float) -> tuple[float, bool]:
    """lambda clipped to [low, high] and whether it had to be; a wrong shape or a non-finite value raises ValueError."""
    array = np.asarray(action, dtype=np.float64)
    if array.size != 1:
        raise ValueError(f"the action is one value (lambda), got an array of shape {array.shape}")
    value = float(array.reshape(-1)[0])
    if not np.isfinite(value):
        raise ValueError(f"the action (lambda) must be finite, got {value}")
    clipped = min(max(value, low), high)
    return clipped, clipped != value


def build_observation(values: np.ndarray, prev_lambda: float, time_fraction: float, space: spaces.Box) -> np.ndarray:
    """The state: the four measured scalars, lambda_{t-1} and t/T, clipped to the bounds of ``space``."""
    obs = np.array([*values, prev_lambda, time_fraction], dtype=np.float32)
    return np.clip(obs, space.low, space.high)


def reset_outcome(values: np.ndarray, cfg: UnlearnConfig, space: spaces.Box) -> tuple[np.ndarray, dict[str, Any]]:
    """First observation and info of an episode, from the scalars measured on the restored base model."""
    if not np.all(np.isfinite(values)):
        raise FloatingPointError(f"the base model gives non-finite losses {values}: is the checkpoint corrupted?")
    obs = build_observation(values, cfg.lambda_init, 0.0, space)
    return obs, {"loss_retain": float(values[0]), "loss_forget": float(values[1])}


def step_outcome(
    values: np.ndarray,
    lam: float,
    prev_lambda: float,
    loss_retain_0: float,
    t: int,
    n: int,
    k: int,
    cfg: UnlearnConfig,
    space: spaces.Box,
) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
    """Observation, reward, termination and info of the t-th update (t counts from 1) with the given lambda.

    ``values`` are the scalars measured in the step (L_r, L_f, ||grad L_r||, ||grad L_f||). If
    any is not finite the step diverged (``info["diverged"]``): the caller must then leave
    the weights as they are.
    """
    info: dict[str, Any] = {
        "lambda": lam,
        "loss_retain": float(values[0]),
        "loss_forget": float(values[1]),
        "grad_norm_retain": float(values[2]),
        "grad_norm_forget": float(values[3]),
        "step": t,
    }
    if not np.all(np.isfinite(values)):
        info.update(diverged=True, loss_siss=float("nan"), reward_terms={"crash": -cfg.crash_penalty})
        obs = build_observation(np.nan_to_num(values, nan=cfg.obs_limit, posinf=cfg.obs_limit), lam, t / cfg.horizon, space)
        return obs, -cfg.crash_penalty, True, info
    loss_siss = float(siss.siss_objective(values[0], values[1], n, k, cfg.superfactor))
    terms = {
        "siss": -loss_siss,
        "smoothness": -cfg.alpha * (lam - prev_lambda) ** 2,
        "retain_safety": -cfg.kappa * max(0.0, float(values[0]) - loss_retain_0),
    }
    info.update(diverged=False, loss_siss=loss_siss, reward_terms=terms)
    return build_observation(values, lam, t / cfg.horizon, space), float(sum(terms.values())), t >= cfg.horizon, info


class UnlearningEnv(gym.Env):
    """One step applies one SISS unlearning update, with mixing weight lambda, to a diffusion model.

    The environment holds a class-conditional DDPM (a diffusers ``UNet2DModel``) pretrained
    on augmented MNIST, whose forget label was contaminated with trousers, and an AdamW
    optimiser over its weights. An episode unlearns from the base model for ``horizon``
    (T) updates; the agent picks lambda for each (SPEC §5).

    ## Action space

    ``Box(lambda_min, lambda_max, (1,), float32)``: lambda itself, **not** rescaled from
    [-1, 1]. Wrap with ``gymnasium.wrappers.RescaleAction(env, -1.0, 1.0)`` for agents that
    prefer a symmetric box (``agents/`` does). An action outside the box is clipped and
    ``info["action_clipped"]`` is True; a NaN or infinite action raises ``ValueError``.

    ## Observation space

    ``Box(6,)`` float32, entries clipped to finite bounds:

    | index | entry                 | range                   |
    |-------|-----------------------|-------------------------|
    | 0     | L_r (retain loss)     | [0, obs_limit]          |
    | 1     | L_f (forget loss)     | [0, obs_limit]          |
    | 2     | norm of grad L_r      | [0, obs_limit]          |
    | 3     | norm of grad L_f      | [0, obs_limit]          |
    | 4     | lambda_{t-1}          | [lambda_min, lambda_max]|
    | 5     | t / T                 | [0, 1]                  |

    Entries 0-3 are measured in the step's forward pass (before its update); the first
    observation is measured on the restored base model with lambda_{-1} = ``lambda_init``.

    ## Reward

    ``R_t = -L_SISS(theta_t; lambda_t) - alpha (lambda_t - lambda_{t-1})^2 - kappa max(0, L_r,t - L_r,0)``
    with L_SISS = n/(n-k) L_r - (1+s) k/(n-k) L_f (the paper's objective, also in the
    ``rescale`` update mode). ``info["reward_terms"]`` holds the three terms, which sum to
    the reward.

    ## Episode end

    * terminated after T updates: t/T is part of the state, so the end is a true terminal;
    * terminated on divergence: a non-finite loss or gradient leaves the weights untouched,
      gives reward ``-crash_penalty`` and ``info["diverged"] = True``.

    ``reset(seed=...)`` restores the weights and optimiser state bit-exactly from an
    in-memory copy and reseeds every random draw (batches, timesteps, noise, coins): the
    same seed and actions give the same trajectory.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        preset: str = "cpu",
        config: ExperimentConfig | None = None,
        render_mode: str | None = None,
        **overrides: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.config = (config or get_config(preset)).with_overrides(**overrides)
        self.render_mode = render_mode
        cfg = self.config.unlearn
        self.device = self.config.runtime.torch_device()

        data = build_unlearning_data(self.config.data, self.config.model.image_size).to(self.device)
        self.n, self.k = data.n, data.k
        self.forget_class = data.forget_class
        self.forget_images, self.forget_labels = data.forget_images, data.forget_labels
        self.retain_images, self.retain_labels = retain_pool(data, cfg.retain_source)
        self.retain_classes = sorted(set(data.retain_labels.tolist()) - {self.forget_class})

        runtime = self.config.runtime
        self.unet = load_base_unet(self.config, self.device)
        self.unet.train()
        if runtime.channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self._bf16 = runtime.precision == "bf16"
        # (live tensor, in-memory base copy) pairs: reset copies every weight back in one foreach call.
        self._live_tensors = [t for t in self.unet.state_dict().values()]
        self._base_tensors = [t.detach().clone() for t in self._live_tensors]
        self.scheduler = build_scheduler(self.config.model)
        self.gamma, self.sigma = noise_coefficients(self.scheduler, self.device)
        # The compiled module shares self.unet's parameters, so reset and the optimiser act on both.
        self._model = self.unet
        if runtime.compile_unet:
            self._model = torch.compile(self.unet)
            self._check_compiled()
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay, foreach=True
        )
        self.generator = torch.Generator(device=self.device)

        self.action_space, self.observation_space = make_spaces(cfg)

        self._t = 0
        self._prev_lambda = cfg.lambda_init
        self._loss_retain_0 = 0.0
        self._done = True

    # ------------------------------------------------------------------ Gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Restore the base model and a fresh optimiser; measure the first state on it."""
        super().reset(seed=seed)
        self.generator.manual_seed(int(self.np_random.integers(2**63 - 1)))
        with torch.no_grad():
            torch._foreach_copy_(self._live_tensors, self._base_tensors)
        self.optimizer.state.clear()
        self._t = 0
        self._prev_lambda = self.config.unlearn.lambda_init
        self._done = False
        lam = torch.tensor(self._prev_lambda, device=self.device)
        m = self._measure(lam)
        obs, info = reset_outcome(self._scalars(m), self.config.unlearn, self.observation_space)
        self._loss_retain_0 = info["loss_retain"]
        return obs, info

    def step(self, action: np.ndarray | float) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply one SISS update with lambda = ``action``."""
        cfg = self.config.unlearn
        lam_value, clipped = check_action(action, cfg.lambda_min, cfg.lambda_max)
        lam = torch.tensor(lam_value, device=self.device, dtype=torch.float32)
        obs, reward, terminated, truncated, info, _ = self._advance(lam, lam_value)
        info["action_clipped"] = clipped
        return obs, reward, terminated, truncated, info

    def step_lambda(self, lam: Tensor) -> tuple[np.ndarray, float, bool, bool, dict[str, Any], Tensor]:
        """Like :meth:`step` for a scalar tensor lambda that may carry gradient (the VI baseline).

        The same update and reward as :meth:`step`; also returns L_SISS(theta_t; lambda) as a
        scalar tensor differentiable in lambda (the model's errors are detached), so a caller
        can backpropagate an objective in lambda, such as the VI ELBO, to its own parameters.
        """
        value = float(lam.detach())
        low, high = self.config.unlearn.lambda_min, self.config.unlearn.lambda_max
        if not np.isfinite(value) or not low <= value <= high:
            raise ValueError(f"lambda must be finite and within [{low}, {high}], got {value}")
        return self._advance(lam.to(self.device), value)

    def render(self) -> np.ndarray | None:
        """An RGB grid of the current model's DDIM samples: rows are the forget label, then retain labels."""
        if self.render_mode != "rgb_array":
            return None
        labels = [self.forget_class] + self.retain_classes[:3]
        per_row = 4
        label_tensor = torch.tensor(labels, device=self.device).repeat_interleave(per_row)
        noise = sampling_noise(len(label_tensor), self.config.model.image_size, seed=0)
        images = ddim_sample(self.unet, self.scheduler, label_tensor, noise, self.config.unlearn.render_ddim_steps)
        grid = image_grid(to_uint8(images), rows=len(labels))
        return np.repeat(grid[:, :, None], 3, axis=2)

    # ------------------------------------------------------------------ internals

    def _draw_batch(self, generator: torch.Generator | None = None) -> siss.SISSBatch:
        """A SISS minibatch from the episode's generator (or from ``generator``)."""
        return siss.draw_batch(
            self.retain_images,
            self.retain_labels,
            self.forget_images,
            self.forget_labels,
            self.config.unlearn.batch_size,
            self.config.model.num_train_timesteps,
            generator or self.generator,
        )

    def _autocast(self) -> torch.autocast:
        """The runtime's precision for the UNet's passes: bf16 autocast, or a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16)

    def _measure(self, lam: Tensor) -> siss.SISSMeasurement:
        """SISS forward and backward passes on a fresh minibatch, under the runtime's precision."""
        batch = self._draw_batch()
        with self._autocast():
            return siss.measure(self._model, self.params, batch, lam, self.gamma, self.sigma)

    def _check_compiled(self) -> None:
        """Refuse a compiled UNet whose gradients differ from eager mode on one minibatch."""
        batch = self._draw_batch(torch.Generator(device=self.device).manual_seed(0))
        lam = torch.tensor(self.config.unlearn.lambda_init, device=self.device)
        with self._autocast():
            error = gradient_error(self.unet, self._model, self.params, batch, lam, self.gamma, self.sigma)
        if not error <= COMPILE_TOLERANCE:
            raise RuntimeError(
                f"compile_unet: torch.compile's gradients differ from eager mode by {error:.2e} (relative norm, "
                f"tolerance {COMPILE_TOLERANCE:.0e}) on {self.device.type} with torch {torch.__version__}; "
                "run without compile_unet"
            )

    @staticmethod
    def _scalars(m: siss.SISSMeasurement) -> np.ndarray:
        """The four measured state entries, gathered in one device-to-host transfer."""
        return torch.stack([m.loss_retain, m.loss_forget, m.norm_retain, m.norm_forget]).double().cpu().numpy()

    def _advance(self, lam: Tensor, lam_value: float) -> tuple[np.ndarray, float, bool, bool, dict[str, Any], Tensor]:
        """One SISS update with ``lam`` (``lam_value`` is its value on the host, so no device sync is needed)."""
        if self._done:
            raise RuntimeError("the episode is over (or never started): call reset() before step()")
        cfg = self.config.unlearn
        m = self._measure(lam)
        values = self._scalars(m)
        loss_siss_lam = siss.siss_objective(m.loss_retain_lam, m.loss_forget_lam, self.n, self.k, cfg.superfactor)
        self._t += 1
        obs, reward, terminated, info = step_outcome(
            values, lam_value, self._prev_lambda, self._loss_retain_0, self._t, self.n, self.k, cfg, self.observation_space
        )
        self._done = terminated
        if not info["diverged"]:
            coef_r, coef_f = siss.update_coefficients(cfg.mode, m.norm_forget, self.n, self.k, cfg.superfactor, cfg.rescale_norm)
            siss.apply_update(self.optimizer, self.params, m.grad_retain, m.grad_forget, coef_r, coef_f, cfg.max_grad_norm)
            self._prev_lambda = lam_value
        return obs, reward, terminated, False, info, loss_siss_lam
