"""``UnlearningEnv``: adaptive-lambda SISS unlearning of a diffusion model as a Gymnasium environment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from unlearn_env import probes, rewards, siss
from unlearn_env.config import ExperimentConfig, UnlearnConfig, get_config
from unlearn_env.data import to_uint8
from unlearn_env.diffusion import build_scheduler, ddim_sample, image_grid, noise_coefficients, sampling_noise
from unlearn_env.instances import TaskOrder, TaskSchedule, TaskSetSpec, resolve_task_set
from unlearn_env.pretrain import load_base_unet
from unlearn_env.rewards import ProbeLosses, TerminalScore
from unlearn_env.task_data import TaskData, build_task_data
from unlearn_env.tasks import TASK_FEATURE_NAMES, ForgetTask

OBS_NAMES: tuple[str, ...] = (
    "loss_retain",
    "loss_forget",
    "grad_norm_retain",
    "grad_norm_forget",
    "prev_lambda",
    "time_fraction",
)
"""Names of the observation entries, in order (``observation="paper"``)."""
EXTENDED_OBS_NAMES: tuple[str, ...] = (*OBS_NAMES, "probe_loss_retain", "probe_loss_forget")
"""Names of the observation entries with ``observation="extended"``."""
NO_FEATURES = np.zeros(0, dtype=np.float32)
"""The task features of an observation without them (``task_features=False``)."""


def observation_names(cfg: UnlearnConfig) -> tuple[str, ...]:
    """Names of the observation entries of ``cfg``, in order (the ``extended`` probes, then the task's features)."""
    names = EXTENDED_OBS_NAMES if cfg.observation == "extended" else OBS_NAMES
    return (*names, *TASK_FEATURE_NAMES) if cfg.task_features else names


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
    """The action space (lambda itself) and the observation space (:func:`observation_names`) of one environment."""
    action_space = spaces.Box(cfg.lambda_min, cfg.lambda_max, shape=(1,), dtype=np.float32)
    high = [cfg.obs_limit] * 4 + [cfg.lambda_max, 1.0]
    low = [0.0] * 4 + [cfg.lambda_min, 0.0]
    if cfg.observation == "extended":
        high, low = high + [cfg.obs_limit] * 2, low + [0.0] * 2
    if cfg.task_features:
        high, low = high + [1.0] * len(TASK_FEATURE_NAMES), low + [0.0] * len(TASK_FEATURE_NAMES)
    return action_space, spaces.Box(np.array(low, dtype=np.float32), np.array(high, dtype=np.float32), dtype=np.float32)


def episode_seeds(np_random: np.random.Generator) -> tuple[int, int]:
    """Seeds of an episode's minibatch generator and of its probe generator, drawn from the reset's RNG."""
    return int(np_random.integers(2**63 - 1)), int(np_random.integers(2**63 - 1))


@dataclass
class Update:
    """What one step's update rule computed from the step's minibatch, for :meth:`UnlearningEnv.step_update`.

    ``direction`` is the update direction before the gradient clip (one tensor per parameter);
    ``values`` are the four observation scalars ``(L_r, L_f, ||grad L_r||, ||grad L_f||)`` of the
    rule's own losses (a non-finite one marks the step diverged); ``lam`` is the SISS mixing
    weight used (``None`` for a rule without one: no smoothness penalty then); ``scalars`` are
    further per-step values to log (tensors, fetched with the rest in one transfer).
    """

    direction: list[Tensor]
    values: Tensor
    lam: float | None = None
    scalars: dict[str, Tensor] = field(default_factory=dict)


def siss_update(measurement: siss.SISSMeasurement, rule: siss.UpdateRule, lam: float) -> Update:
    """The SISS update of SPEC §3 from one measurement: c_r grad L_r - c_f grad L_f (before the clip)."""
    m = measurement
    coef_r, coef_f = rule.coefficients(m.norm_forget)
    values = torch.stack([m.loss_retain, m.loss_forget, m.norm_retain, m.norm_forget])
    return Update(siss.combine(m.grad_retain, m.grad_forget, coef_r, coef_f), values, lam)


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


def build_observation(
    values: np.ndarray, prev_lambda: float, time_fraction: float, probe: ProbeLosses, cfg: UnlearnConfig,
    space: spaces.Box, features: np.ndarray = NO_FEATURES,
) -> np.ndarray:
    """The state: the four measured scalars, lambda_{t-1}, t/T (the probe losses when extended, the task's
    ``features`` when ``task_features``), clipped to ``space``."""
    entries = [*values, prev_lambda, time_fraction]
    if cfg.observation == "extended":
        entries += [probe.retain, probe.forget]
    if cfg.task_features:
        entries += list(features)
    obs = np.nan_to_num(np.array(entries, dtype=np.float64), nan=cfg.obs_limit, posinf=cfg.obs_limit)
    return np.clip(obs, space.low, space.high).astype(np.float32)


def reset_outcome(
    values: np.ndarray, probe_0: ProbeLosses, cfg: UnlearnConfig, space: spaces.Box, task: TaskData
) -> tuple[np.ndarray, dict[str, Any]]:
    """First observation and info of an episode of ``task``, from the scalars and probe losses measured on the base model."""
    if not (np.all(np.isfinite(values)) and np.isfinite(probe_0.retain) and np.isfinite(probe_0.forget)):
        raise FloatingPointError(f"the base model gives non-finite losses {values}, {probe_0}: is the checkpoint corrupted?")
    obs = build_observation(values, cfg.lambda_init, 0.0, probe_0, cfg, space, task.features)
    info = {"loss_retain": float(values[0]), "loss_forget": float(values[1]),
            "probe_loss_retain": probe_0.retain, "probe_loss_forget": probe_0.forget, "task": task.task.text}
    return obs, info


def step_outcome(
    values: np.ndarray,
    probe: ProbeLosses,
    probe_prev: ProbeLosses,
    probe_0: ProbeLosses,
    lam: float,
    prev_lambda: float,
    t: int,
    task: TaskData,
    space: spaces.Box,
    terminal: TerminalScore | None = None,
) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
    """Observation, reward, termination and info of the t-th update (t counts from 1) of ``task`` with the given lambda.

    ``values`` are the scalars measured in the step (L_r, L_f, ||grad L_r||, ||grad L_f||) on theta_t;
    ``probe`` the probe losses of theta_{t+1}, ``probe_prev`` those of theta_t and ``probe_0`` those of
    theta_0. If a value or a probe loss is not finite the step diverged (``info["diverged"]``). In
    ``outcome`` mode the last step adds the ``terminal`` judge score. The task gives n, k, the config
    and the observation's task features.
    """
    config, n, k = task.config, task.n, task.k
    cfg, reward_cfg = config.unlearn, config.reward
    info: dict[str, Any] = {
        "lambda": lam,
        "loss_retain": float(values[0]),
        "loss_forget": float(values[1]),
        "grad_norm_retain": float(values[2]),
        "grad_norm_forget": float(values[3]),
        "probe_loss_retain": probe.retain,
        "probe_loss_forget": probe.forget,
        "step": t,
        "task": task.task.text,
    }
    if not (np.all(np.isfinite(values)) and np.isfinite(probe.retain) and np.isfinite(probe.forget)):
        info.update(diverged=True, loss_siss=float("nan"), reward_terms={rewards.CRASH_TERM: -reward_cfg.crash_penalty})
        obs = build_observation(values, lam, t / cfg.horizon, probe, cfg, space, task.features)
        return obs, -reward_cfg.crash_penalty, True, info
    loss_siss = float(siss.siss_objective(probe.retain, probe.forget, n, k, cfg.superfactor))
    if reward_cfg.reward == "paper":
        terms = rewards.paper_terms(probe, probe_0, lam, prev_lambda, n, k, cfg.superfactor, reward_cfg)
    else:
        terms = rewards.outcome_terms(probe, probe_prev, probe_0, lam, prev_lambda, reward_cfg)
        if terminal is not None:
            terms.update(rewards.terminal_terms(terminal, reward_cfg))
            info.update(terminal_concept_rate=terminal.concept_rate, terminal_digit_share=terminal.digit_share,
                        terminal_retain_accuracy=terminal.retain_accuracy)
    info.update(diverged=False, loss_siss=loss_siss, reward_terms=terms)
    obs = build_observation(values, lam, t / cfg.horizon, probe, cfg, space, task.features)
    return obs, float(sum(terms.values())), t >= cfg.horizon, info


class UnlearningEnv(gym.Env):
    """One step applies one SISS unlearning update, with mixing weight lambda, to a diffusion model.

    The environment holds a class-conditional DDPM (a diffusers ``UNet2DModel``) pretrained
    on augmented MNIST, whose forget label was contaminated with a Fashion-MNIST class, and an
    AdamW optimiser over its weights. An episode unlearns from the base model for ``horizon``
    (T) updates; the agent picks lambda for each (SPEC §5).

    ## Action space

    ``Box(lambda_min, lambda_max, (1,), float32)``: lambda itself, **not** rescaled from
    [-1, 1]. Wrap with ``gymnasium.wrappers.RescaleAction(env, -1.0, 1.0)`` for agents that
    prefer a symmetric box (``agents/`` does). An action outside the box is clipped and
    ``info["action_clipped"]`` is True; a NaN or infinite action raises ``ValueError``.

    ## Observation space

    ``Box(6,)`` float32 (``observation="paper"``) or ``Box(8,)`` (``"extended"``), entries clipped
    to finite bounds:

    | index | entry                               | range                    |
    |-------|-------------------------------------|--------------------------|
    | 0     | L_r (retain loss, minibatch)        | [0, obs_limit]           |
    | 1     | L_f (forget loss, minibatch)        | [0, obs_limit]           |
    | 2     | norm of grad L_r                    | [0, obs_limit]           |
    | 3     | norm of grad L_f                    | [0, obs_limit]           |
    | 4     | lambda_{t-1}                        | [lambda_min, lambda_max] |
    | 5     | t / T                               | [0, 1]                   |
    | 6     | probe retain loss of theta_{t+1}    | [0, obs_limit] (extended)|
    | 7     | probe forget loss of theta_{t+1}    | [0, obs_limit] (extended)|

    Entries 0-3 are measured in the step's forward pass, on theta_t before its update (the
    paper's state: one update old); entries 6-7 on the model after it. The first observation is
    measured on the restored base model with lambda_{-1} = ``lambda_init``. With
    ``task_features=True`` the episode's task follows (21 entries in [0, 1]: one-hot forget digit,
    one-hot Fashion-MNIST class, contamination ratio; :func:`observation_names`); hidden by default.

    ## Tasks

    Without ``tasks`` the env runs the one forget task its config names (``forget_class``,
    ``fashion_class``, ``contamination``, ``data_seed``, with ``companions`` in its training data).
    ``tasks`` makes it a multi-task env: an instance set's name (``"train"``, ``"test"``: the
    preset's file in ``unlearn_env/instances/``), one task or a list (text such as
    ``"3-bag-0.1-s0"``, mappings or :class:`~unlearn_env.tasks.ForgetTask`; see
    :func:`unlearn_env.instances.task_set`), or a :class:`~unlearn_env.instances.TaskSet`. The
    tasks share one base model (their family's) and one UNet; each task's forget set, retain and
    probe pools, n, k, update rule and terminal judge are built once, here. Each reset picks the
    episode's task: ``reset(options={"task": t})`` (text, mapping or ``ForgetTask``; it must be one
    of the env's tasks), else the next one of ``task_order`` (``"round-robin"``, the default, in
    the order given; ``"random"``, a uniform draw seeded by the reset seed), see
    :class:`~unlearn_env.instances.TaskSchedule`. A seeded reset restarts that order (so
    ``reset(seed=s)`` is deterministic); resets without a seed go on through it. An episode of
    task t with seed s is the episode an env built for t alone gives with seed s. ``info["task"]`` names the task (its text form) at
    reset and every step; ``env.task`` is it and ``env.config`` its config (``config.data`` names it).

    ## Reward

    Measured after the update, on the episode's fixed probe set (:mod:`unlearn_env.probes`):
    ``reward="paper"`` gives SPEC §5's ``-L_SISS(theta_{t+1}) - alpha (dlambda)^2 - kappa
    max(0, L_r(theta_{t+1}) - L_r(theta_0))``; ``reward="outcome"`` a potential-based shaping
    toward forgetting with the retain loss held down, plus the judge's score of the final
    model at t = T (:mod:`unlearn_env.rewards`). ``info["reward_terms"]`` holds the terms, which
    sum to the reward; ``info["probe_loss_retain"]``, ``info["probe_loss_forget"]`` the probe
    losses of theta_{t+1} (of theta_0 after reset).

    ## Episode end

    * terminated after T updates: t/T is part of the state, so the end is a true terminal;
    * terminated on divergence: a non-finite minibatch loss or gradient leaves the weights
      untouched; a non-finite probe loss after the update (the weights are then not finite
      either) ends the episode too; both give reward ``-crash_penalty`` and ``info["diverged"]``.

    ``reset(seed=...)`` restores the weights and optimiser state bit-exactly from an
    in-memory copy and reseeds every random draw (batches, timesteps, noise, coins, flips, the
    probe set): the same seed and actions give the same trajectory, and every method run on a
    seed meets the same probe set.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        preset: str = "cpu",
        config: ExperimentConfig | None = None,
        render_mode: str | None = None,
        tasks: TaskSetSpec | None = None,
        task_order: TaskOrder = "round-robin",
        **overrides: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        base_config = (config or get_config(preset)).with_overrides(**overrides)
        self.render_mode = render_mode
        cfg = base_config.unlearn
        self.device = base_config.runtime.torch_device()

        self.task_set = resolve_task_set(base_config, tasks, overrides)
        self.task_schedule = TaskSchedule(self.task_set, task_order)
        self.task_data = {d.task: d for d in build_task_data(
            [self.task_set.config_of(task, base_config) for task in self.task_set], self.device)}
        self._use_task(self.task_set.tasks[0])
        self.hflip_forget = self.config.pretrain.hflip_forget

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
        self._done = True
        self._pending: siss.SISSBatch | None = None
        self.probe_set: probes.ProbeSet | None = None
        self._terminal_noise: Tensor | None = None
        self._probe_0 = self._probe_now = ProbeLosses(float("nan"), float("nan"))

    # ------------------------------------------------------------------ Gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Pick the episode's task, restore the base model and a fresh optimiser, draw the probe set, measure the first state.

        ``options["task"]`` runs that task (one of the env's); otherwise ``task_order`` picks it.
        """
        task = self.task_schedule.next(seed, (options or {}).get("task"))  # a bad task raises before any change
        super().reset(seed=seed)
        self._use_task(task)
        batch_seed, probe_seed = episode_seeds(self.np_random)
        self.generator.manual_seed(batch_seed)
        probe_generator = torch.Generator().manual_seed(probe_seed)
        with torch.no_grad():
            torch._foreach_copy_(self._live_tensors, self._base_tensors)
        self.optimizer.state.clear()
        self._t = 0
        self._prev_lambda = self.config.unlearn.lambda_init
        self._done = False
        self._pending = None
        self.probe_set = probes.draw_probe_set(
            self.probe_images, self.probe_labels, self.forget_images, self.forget_labels,
            self.config.unlearn.probe_size, self.config.model.num_train_timesteps, self.hflip_forget, probe_generator,
        )
        if self.terminal_judge is not None:
            self._terminal_noise = self.terminal_judge.draw_noise(probe_generator)
        lam = torch.tensor(self._prev_lambda, device=self.device)
        m = self._measure(lam)
        self._probe_0 = self._probe_now = self._probe_losses()
        return reset_outcome(self._scalars(m), self._probe_0, self.config.unlearn, self.observation_space, self._task)

    def step(self, action: np.ndarray | float) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply one SISS update with lambda = ``action``."""
        cfg = self.config.unlearn
        lam_value, clipped = check_action(action, cfg.lambda_min, cfg.lambda_max)
        lam = torch.tensor(lam_value, device=self.device, dtype=torch.float32)
        obs, reward, terminated, truncated, info = self.step_update(self._siss_rule(lam, lam_value))
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
        objective: list[Tensor] = []
        rule = self._siss_rule(lam.to(self.device), value, objective)
        return (*self.step_update(rule), objective[0])

    def step_update(self, compute: Callable[[siss.SISSBatch], Update]) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One step with a caller's update rule: the shared loop of every unlearning method.

        The env hands ``compute`` the step's minibatch (the same stream of minibatches for every
        method of a seed); ``compute`` returns an :class:`Update`. Unless its values are not
        finite, the env clips the direction (``max_grad_norm``), takes the AdamW step, measures
        the probe losses of the new weights and returns the observation, reward and info of a
        SISS step (:meth:`step` is this with the SISS rule). A rule with ``lam=None`` is charged
        no smoothness penalty.
        """
        if self._done:
            raise RuntimeError("the episode is over (or never started): call reset() before step()")
        update = compute(self._take_batch())
        return self._advance(update)

    def pending_batch(self) -> siss.SISSBatch:
        """The minibatch the next step will use (drawn now if need be; drawing it early changes nothing).

        A method that chooses lambda for the current minibatch (the ``neyman`` baseline) reads it here.
        """
        if self._done:
            raise RuntimeError("the episode is over (or never started): call reset() first")
        if self._pending is None:
            self._pending = self._draw_batch()
        return self._pending

    @property
    def terminal_noise(self) -> Tensor | None:
        """The initial noise of this episode's terminal judge samples (``outcome`` mode; ``None`` otherwise).

        A method with its own loop and sampler (``baselines.sfd``) scores its final model from it.
        """
        return self._terminal_noise

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

    def _use_task(self, task: ForgetTask) -> None:
        """Make ``task``'s data the env's: its config, pools, n, k, update rule and terminal judge."""
        data = self.task_data[task]
        self._task = data
        self.task, self.config = data.task, data.config
        self.n, self.k, self.forget_class = data.n, data.k, data.forget_class
        self.forget_images, self.forget_labels = data.forget_images, data.forget_labels
        self.retain_images, self.retain_labels = data.retain_images, data.retain_labels
        self.probe_images, self.probe_labels = data.probe_images, data.probe_labels
        self.retain_classes, self.update_rule, self.terminal_judge = data.retain_classes, data.update_rule, data.terminal_judge

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
            self.hflip_forget,
        )

    def _autocast(self) -> torch.autocast:
        """The runtime's precision for the UNet's passes: bf16 autocast, or a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16)

    def _take_batch(self) -> siss.SISSBatch:
        """The step's minibatch: the pending one if :meth:`pending_batch` drew it, else a fresh draw."""
        batch = self._pending if self._pending is not None else self._draw_batch()
        self._pending = None
        return batch

    def _measure(self, lam: Tensor, batch: siss.SISSBatch | None = None) -> siss.SISSMeasurement:
        """SISS forward and backward passes on a minibatch (by default a fresh one), under the runtime's precision."""
        with self._autocast():
            return siss.measure(self._model, self.params, batch or self._take_batch(), lam, self.gamma, self.sigma)

    def _siss_rule(
        self, lam: Tensor, lam_value: float, objective: list[Tensor] | None = None
    ) -> Callable[[siss.SISSBatch], Update]:
        """The SISS update rule with ``lam``; with ``objective``, L_SISS(theta_t; lambda) (differentiable in lambda) is appended to it."""

        def compute(batch: siss.SISSBatch) -> Update:
            m = self._measure(lam, batch)
            if objective is not None:
                objective.append(siss.siss_objective(m.loss_retain_lam, m.loss_forget_lam, self.n, self.k,
                                                     self.config.unlearn.superfactor))
            return siss_update(m, self.update_rule, lam_value)

        return compute

    def _probe_tensor(self) -> Tensor:
        """Probe losses (retain, forget) of the current weights, on the device."""
        assert self.probe_set is not None, "reset() draws the probe set"
        with self._autocast():
            return probes.probe_losses(self._model, self.probe_set, self.gamma, self.sigma)

    def _probe_losses(self) -> ProbeLosses:
        values = self._probe_tensor().double().cpu().numpy()
        return ProbeLosses(float(values[0]), float(values[1]))

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

    def _advance(self, update: Update) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Check, clip and apply ``update``, probe the new weights, and score the step."""
        cfg = self.config.unlearn
        values = update.values.double().cpu().numpy()
        self._t += 1
        extra: dict[str, Any] = {}
        probe = ProbeLosses(float("nan"), float("nan"))
        if np.all(np.isfinite(values)):
            norm = siss.apply_direction(self.optimizer, self.params, update.direction, self.update_rule.max_grad_norm)
            names = list(update.scalars)
            after = torch.stack([*self._probe_tensor(), norm, *(update.scalars[k].float() for k in names)])
            after = after.double().cpu().numpy()
            probe = ProbeLosses(float(after[0]), float(after[1]))
            extra = {**update_info(float(after[2]), self.update_rule), **dict(zip(names, map(float, after[3:])))}
        terminal = None
        if (self.terminal_judge is not None and self._t >= cfg.horizon
                and np.isfinite(probe.retain) and np.isfinite(probe.forget)):
            terminal = self.terminal_judge.score(self.unet, self.scheduler, self._terminal_noise)
        lam = self._prev_lambda if update.lam is None else update.lam
        obs, reward, terminated, info = step_outcome(
            values, probe, self._probe_now, self._probe_0, lam, self._prev_lambda, self._t, self._task,
            self.observation_space, terminal,
        )
        info.update(extra)
        self._done = terminated
        if not info["diverged"]:
            self._prev_lambda = lam
            self._probe_now = probe
        return obs, reward, terminated, False, info


def update_info(norm: float, rule: siss.UpdateRule) -> dict[str, Any]:
    """``update_norm`` (the combined direction's norm before the clip, in the config's pixel-sum units) and ``clipped``."""
    return {"update_norm": norm * rule.pixels, "clipped": rule.max_grad_norm is not None and norm > rule.max_grad_norm}
