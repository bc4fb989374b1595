"""``BatchedUnlearningEnv``: N independent SISS unlearning runs stepped in one batched computation.

``gymnasium.make_vec("SISSUnlearning-v0", num_envs=N, vectorization_mode="vector_entry_point")``
returns it; :mod:`unlearn_env.sb3_vec` adapts it to Stable-Baselines3.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor
from torch.func import functional_call, vmap

from unlearn_env import probes, siss
from unlearn_env.config import ExperimentConfig, get_config
from unlearn_env.diffusion import build_scheduler, noise_coefficients
from unlearn_env.env import (
    check_action,
    episode_seeds,
    make_spaces,
    reset_outcome,
    step_outcome,
    update_info,
)
from unlearn_env.instances import TaskOrder, TaskSchedule, TaskSetSpec, resolve_task_set
from unlearn_env.pretrain import load_base_unet
from unlearn_env.rewards import ProbeLosses, TerminalScore
from unlearn_env.task_data import TaskData, build_task_data

ForwardMode = Literal["auto", "vmap", "loop"]

ADAM_EPS = 1e-8
"""torch.optim.AdamW's default eps, which :class:`~unlearn_env.env.UnlearningEnv` uses."""


class _PlainAttnProcessor(AttnProcessor):
    """diffusers' plain (bmm, softmax, bmm) attention with a contiguous output.

    The default processor calls ``F.scaled_dot_product_attention``, which has no batching
    rule on CPU (vmap falls back to a slow loop) and whose CPU backward pass is slow at the
    UNet's few dozen tokens; both return a channels-last view that the next ``GroupNorm``
    cannot query inside vmap ("NYI: querying is_contiguous"). Same result, up to rounding.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
    ) -> Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb).contiguous()


class BatchedUnlearningEnv(VectorEnv):
    """N independent copies of :class:`~unlearn_env.env.UnlearningEnv`, stepped in one batched computation.

    Each sub-environment is the single environment: its own weights, AdamW state, random
    stream (a ``torch.Generator`` seeded as ``UnlearningEnv.reset`` seeds its own), clock and
    episode, with the same observation, action, reward and info. With the same seeds and
    actions it reproduces a ``SyncVectorEnv`` of N single environments up to float rounding
    (``tests/test_vector_env.py`` checks a relative tolerance of 1e-4).

    What is batched is the work. The N models' weights are one ``(N, D)`` tensor. A step
    draws each sub-environment's minibatch from its own generator, runs the N models in one
    forward pass (``torch.func.functional_call`` under ``vmap``: convolutions become grouped
    convolutions), and takes the gradients of the summed per-model losses L_r and L_f (the
    models are independent, so two backward passes give all N gradients). Norms, rescale
    coefficients, the gradient-norm clip and AdamW then act on the ``(N, D)`` rows, each row
    with its own coefficients and step count.

    ## Action space

    ``Box(lambda_min, lambda_max, (N, 1), float32)``: lambda for each sub-environment. Out-of-box
    values are clipped (``info["action_clipped"]``); a NaN or infinite value raises ``ValueError``
    naming the sub-environment, before anything changes.

    ## Observation space

    ``Box((N, 6), float32)``, row i as ``UnlearningEnv``'s: L_r, L_f, ||grad L_r||, ||grad L_f||,
    lambda_{t-1}, t/T.

    ## Rewards and episode end

    As ``UnlearningEnv``: the rewards are those of each sub-environment, measured on its own probe
    set after its update (the N models' probe passes are one batched forward pass); a
    sub-environment ends after T updates or when it diverges (the others go on). In ``outcome``
    mode a sub-environment reaching T is sampled and judged on its own.

    ## Tasks

    ``tasks`` and ``task_order`` as ``UnlearningEnv``'s: the N sub-environments may run episodes of
    different tasks of one family in the same batch (one base model, so one architecture), each
    with its own task's pools, n, k, update coefficients, probe set and terminal judge. In
    ``round-robin`` order sub-environment i's episodes take tasks i, i + N, i + 2N, ... (modulo the
    number of tasks), so N concurrent episodes spread over the tasks; ``random`` draws each
    sub-environment's tasks from its own reset seed. ``reset(options={"tasks": [...]})`` gives one
    task (or ``None``: the next of its order) per sub-environment; ``infos["task"]`` names them.

    ## Autoreset

    ``AutoresetMode.NEXT_STEP`` (``metadata["autoreset_mode"]``), as Gymnasium's vector envs: the
    step after a sub-environment's episode ends resets it (its action is ignored, its reward is 0
    and the info holds the reset's). ``reset(options={"reset_mask": mask})`` resets only the
    sub-environments where ``mask`` is True.

    ## Arguments

    * ``num_envs``: N.
    * ``preset``, ``config``, ``tasks``, ``task_order``, ``**overrides``: as ``UnlearningEnv`` (one
      config for all N, up to each task's data section).
    * ``forward``: how the N models' forward pass is batched. ``"vmap"`` runs them as one
      vmapped model; ``"loop"`` calls them one after another inside the same step (the
      backward passes, norms and optimiser stay batched). ``"auto"`` (default) takes vmap on
      CUDA and the loop on CPU, where vmap's grouped convolutions and per-model affine
      terms cost more than they save (``benchmarks/throughput.py`` measures both).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        preset: str = "cpu",
        config: ExperimentConfig | None = None,
        forward: ForwardMode = "auto",
        tasks: TaskSetSpec | None = None,
        task_order: TaskOrder = "round-robin",
        **overrides: Any,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        if forward not in ("auto", "vmap", "loop"):
            raise ValueError(f"forward must be 'auto', 'vmap' or 'loop', got {forward!r}")
        self.num_envs = num_envs
        base_config = (config or get_config(preset)).with_overrides(**overrides)
        self.render_mode = None
        cfg = base_config.unlearn
        self.device = base_config.runtime.torch_device()
        runtime = base_config.runtime
        if runtime.channels_last or runtime.compile_unet:
            raise ValueError("BatchedUnlearningEnv supports precision=bf16 but not channels_last or compile_unet")
        self._bf16 = runtime.precision == "bf16"
        if forward == "auto":
            forward = "vmap" if self.device.type == "cuda" else "loop"
        self.forward_mode: ForwardMode = forward

        self.task_set = resolve_task_set(base_config, tasks, overrides)
        self.task_schedules = [TaskSchedule(self.task_set, task_order, start=i, stride=num_envs)
                               for i in range(num_envs)]
        self.task_data = {d.task: d for d in build_task_data(
            [self.task_set.config_of(task, base_config) for task in self.task_set], self.device)}
        first = self.task_data[self.task_set.tasks[0]]
        # The first task's config; the sections other than data are every task's (task_of(i).config).
        self.config = first.config
        self._tasks: list[TaskData] = [first] * num_envs
        self.hflip_forget = self.config.pretrain.hflip_forget
        # The clip of the combined update (per-pixel units) is the same for every task.
        self.max_grad_norm = first.update_rule.max_grad_norm
        self.scheduler = build_scheduler(self.config.model)
        self.gamma, self.sigma = noise_coefficients(self.scheduler, self.device)

        # The base model serves as the stateless template of functional_call; its own
        # weights stay the base weights.
        self.unet = load_base_unet(self.config, self.device).train().requires_grad_(False)
        for module in self.unet.modules():
            if isinstance(module, Attention):
                module.set_processor(_PlainAttnProcessor())
        named = list(self.unet.named_parameters())
        self._names = [name for name, _ in named]
        self._shapes = [p.shape for _, p in named]
        self._numels = [p.numel() for _, p in named]
        self._base_theta = torch.cat([p.detach().reshape(-1) for _, p in named])
        self._theta = self._base_theta.repeat(num_envs, 1)
        self._exp_avg = torch.zeros_like(self._theta)
        self._exp_avg_sq = torch.zeros_like(self._theta)
        self._adam_steps = np.zeros(num_envs, dtype=np.int64)

        self._generators = [torch.Generator(device=self.device) for _ in range(num_envs)]
        self._np_randoms: list[np.random.Generator | None] = [None] * num_envs
        self._probe_sets: list[probes.ProbeSet | None] = [None] * num_envs
        nan = ProbeLosses(float("nan"), float("nan"))
        self._probe_0 = [nan] * num_envs
        self._probe_now = [nan] * num_envs
        self._terminal_noise: list[Tensor | None] = [None] * num_envs
        if self.config.reward.reward == "outcome":
            # A model to load one sub-environment's weights into for sampling.
            self._scratch = load_base_unet(self.config, self.device).eval()

        self.single_action_space, self.single_observation_space = make_spaces(cfg)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)

        self._obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        self._t = np.zeros(num_envs, dtype=np.int64)
        self._prev_lambda = np.full(num_envs, cfg.lambda_init)
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._started = False

    def task_of(self, i: int) -> TaskData:
        """The task data of sub-environment i's current episode (``.task``, ``.config``, ``.n``, ``.k``, pools)."""
        return self._tasks[i]

    def model_state(self, i: int) -> dict[str, Tensor]:
        """Sub-environment i's current weights as a ``UNet2DModel`` state dict (copies), e.g. to evaluate them."""
        rows = self._split(self._theta[i : i + 1])
        return {name: row[0].clone() for name, row in zip(self._names, rows)}

    # ------------------------------------------------------------------ Gymnasium API

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-environment (or those of ``options["reset_mask"]``); seeds as ``SyncVectorEnv``.

        ``seed``: ``None`` (fresh entropy, or each sub-environment's own stream if it has one),
        an int ``s`` (sub-environment i gets ``s + i``) or one seed per sub-environment.
        ``options["tasks"]``: one task (or ``None``, the next of the task order) per sub-environment.
        """
        seeds = self._seed_list(seed)
        mask = self._reset_mask(options)
        ids = np.flatnonzero(mask)
        requested = self._requested_tasks(options)
        chosen = {i: self.task_schedules[i].next(seeds[i], requested[i]) for i in ids}
        for i in ids:
            self._tasks[i] = self.task_data[chosen[i]]
            self._reseed(i, seeds[i])
        self._restore(ids)
        values, *_ = self._measure(ids, np.full(len(ids), self.config.unlearn.lambda_init))
        probe_0 = self._probe(ids)
        infos: dict[str, Any] = {}
        for row, i in enumerate(ids):
            self._probe_0[i] = self._probe_now[i] = probe_0[row]
            self._obs[i], info = reset_outcome(values[row], probe_0[row], self.config.unlearn,
                                               self.single_observation_space, self._tasks[i])
            infos = self._add_info(infos, info, i)
        self._autoreset[ids] = False
        self._started = True
        return self._obs.copy(), infos

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One SISS update in every running sub-environment; those whose episode ended last step reset instead."""
        if not self._started:
            raise RuntimeError("call reset() before step()")
        cfg = self.config.unlearn
        action_rows = np.asarray(actions, dtype=np.float64).reshape(self.num_envs, -1)
        resetting = self._autoreset.copy()
        lams = np.full(self.num_envs, cfg.lambda_init)
        clipped = np.zeros(self.num_envs, dtype=bool)
        for i in np.flatnonzero(~resetting):
            try:
                lams[i], clipped[i] = check_action(action_rows[i], cfg.lambda_min, cfg.lambda_max)
            except ValueError as err:
                raise ValueError(f"sub-environment {i}: {err}") from err

        reset_ids = np.flatnonzero(resetting)
        for i in reset_ids:
            self._tasks[i] = self.task_data[self.task_schedules[i].next()]
            self._reseed(i, None)
        self._restore(reset_ids)
        ids = np.arange(self.num_envs)
        values, grad_r, grad_f, norm_f = self._measure(ids, lams)

        # Sub-environments that reset take no update; the others update unless their minibatch diverged.
        stepping = ~resetting
        updating = stepping & np.all(np.isfinite(values), axis=1)
        rows = np.flatnonzero(updating)
        index = torch.as_tensor(rows, device=self.device)
        norms = self._update(rows, grad_r[index], grad_f[index], norm_f[index])
        probed = np.flatnonzero(updating | resetting)
        after = dict(zip(probed.tolist(), self._probe(probed)))
        nan = ProbeLosses(float("nan"), float("nan"))

        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {}
        for i in ids:
            if resetting[i]:
                self._probe_0[i] = self._probe_now[i] = after[i]
                self._obs[i], info = reset_outcome(values[i], after[i], cfg, self.single_observation_space,
                                                   self._tasks[i])
            else:
                self._t[i] += 1
                probe = after.get(i, nan)
                self._obs[i], rewards[i], terminated[i], info = step_outcome(
                    values[i], probe, self._probe_now[i], self._probe_0[i], float(lams[i]),
                    float(self._prev_lambda[i]), int(self._t[i]), self._tasks[i],
                    self.single_observation_space, self._terminal_score(i, probe),
                )
                info["action_clipped"] = bool(clipped[i])
                if updating[i]:
                    info.update(update_info(float(norms[np.searchsorted(rows, i)]), self._tasks[i].update_rule))
                if not info["diverged"]:
                    self._prev_lambda[i] = lams[i]
                    self._probe_now[i] = probe
            infos = self._add_info(infos, info, i)
        self._autoreset = terminated.copy()
        truncated = np.zeros(self.num_envs, dtype=bool)
        return self._obs.copy(), rewards, terminated, truncated, infos

    # ------------------------------------------------------------------ internals

    def _seed_list(self, seed: int | list[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} sub-environments")
        return seeds

    def _requested_tasks(self, options: dict[str, Any] | None) -> list[Any]:
        """``options["tasks"]`` as one entry per sub-environment (``None``: the next of its task order)."""
        requested = (options or {}).get("tasks")
        if requested is None:
            return [None] * self.num_envs
        if isinstance(requested, (str, dict)) or len(requested) != self.num_envs:
            raise ValueError(f"options['tasks'] must list one task (or None) for each of the {self.num_envs} "
                             f"sub-environments, got {requested!r}")
        return list(requested)

    def _reset_mask(self, options: dict[str, Any] | None) -> np.ndarray:
        mask = (options or {}).get("reset_mask")
        if mask is None:
            return np.ones(self.num_envs, dtype=bool)
        mask = np.asarray(mask)
        if mask.shape != (self.num_envs,) or mask.dtype != np.bool_ or not mask.any():
            raise ValueError(
                f"options['reset_mask'] must be a bool array of shape ({self.num_envs},) with a True, got {mask!r}"
            )
        if not self._started and not mask.all():
            raise RuntimeError("the first reset() must reset every sub-environment")
        return mask

    def _reseed(self, i: int, seed: int | None) -> None:
        """Seed sub-environment i's generators and draw its probe set exactly as ``UnlearningEnv.reset`` does."""
        if seed is not None or self._np_randoms[i] is None:
            self._np_randoms[i], _ = seeding.np_random(seed)
        batch_seed, probe_seed = episode_seeds(self._np_randoms[i])
        self._generators[i].manual_seed(batch_seed)
        probe_generator = torch.Generator().manual_seed(probe_seed)
        task = self._tasks[i]
        self._probe_sets[i] = probes.draw_probe_set(
            task.probe_images, task.probe_labels, task.forget_images, task.forget_labels,
            self.config.unlearn.probe_size, self.config.model.num_train_timesteps, self.hflip_forget, probe_generator,
        )
        if task.terminal_judge is not None:
            self._terminal_noise[i] = task.terminal_judge.draw_noise(probe_generator)

    def _terminal_score(self, i: int, probe: ProbeLosses) -> TerminalScore | None:
        """The judge's score of sub-environment i's model when its episode ends this step (``outcome`` mode)."""
        judge = self._tasks[i].terminal_judge
        if (judge is None or self._t[i] < self.config.unlearn.horizon
                or not np.isfinite([probe.retain, probe.forget]).all()):
            return None
        self._scratch.load_state_dict(self.model_state(i), strict=False)
        return judge.score(self._scratch, self.scheduler, self._terminal_noise[i])

    @torch.no_grad()
    def _probe(self, ids: np.ndarray) -> list[ProbeLosses]:
        """Probe losses of the current weights of the sub-environments ``ids``: one batched forward pass."""
        if len(ids) == 0:
            return []
        sets = [self._probe_sets[i] for i in ids]
        inputs = torch.stack([probes.noisy_inputs(p, self.gamma, self.sigma) for p in sets])
        theta = self._theta[torch.as_tensor(ids, device=self.device)]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16):
            eps = self._forward(self._split(theta), inputs, torch.stack([p.timesteps for p in sets]),
                                torch.stack([p.labels for p in sets]))
        values = torch.stack([probes.loss_pair(e, p) for e, p in zip(eps, sets)]).double().cpu().numpy()
        return [ProbeLosses(float(r), float(f)) for r, f in values]

    def _restore(self, ids: np.ndarray) -> None:
        """Base weights and a fresh optimiser for the sub-environments ``ids``; their clocks restart."""
        if len(ids) == 0:
            return
        index = torch.as_tensor(ids, device=self.device)
        with torch.no_grad():
            self._theta[index] = self._base_theta
            self._exp_avg[index] = 0.0
            self._exp_avg_sq[index] = 0.0
        self._adam_steps[ids] = 0
        self._t[ids] = 0
        self._prev_lambda[ids] = self.config.unlearn.lambda_init

    def _split(self, theta: Tensor) -> list[Tensor]:
        """Per-parameter views ``(M, *shape)`` of stacked flat weights ``(M, D)``."""
        chunks = theta.split(self._numels, dim=1)
        return [chunk.view(len(theta), *shape) for chunk, shape in zip(chunks, self._shapes)]

    def _forward(self, params: list[Tensor], m_t: Tensor, timesteps: Tensor, labels: Tensor) -> Tensor:
        """eps predictions ``(M, B, C, H, W)`` of M models (``params``, each ``(M, *shape)``) on their own inputs."""

        def one_model(weights: list[Tensor], x: Tensor, t: Tensor, c: Tensor) -> Tensor:
            return functional_call(self.unet, dict(zip(self._names, weights)), (x, t), {"class_labels": c}).sample

        if self.forward_mode == "vmap":
            return vmap(one_model)(params, m_t, timesteps, labels)
        # unbind (not indexing) so that the backward pass stacks the N gradients once.
        per_model = zip(*(p.unbind(0) for p in params))
        return torch.stack([one_model(list(w), m_t[j], timesteps[j], labels[j]) for j, w in enumerate(per_model)])

    def _measure(self, ids: np.ndarray, lams: np.ndarray) -> tuple[np.ndarray, Tensor, Tensor, Tensor]:
        """One forward and two backward passes for the sub-environments ``ids``, each with its own lambda.

        Returns the scalars ``(M, 4)`` (L_r, L_f, ||grad L_r||, ||grad L_f||) as float64 numpy, the
        flat gradients of L_r and L_f ``(M, D)`` and ||grad L_f|| as a tensor.
        """
        cfg = self.config.unlearn
        size = cfg.batch_size
        # Each sub-environment draws from its own generator, in the order UnlearningEnv does.
        draws = [
            siss.draw_batch(self._tasks[i].retain_images, self._tasks[i].retain_labels, self._tasks[i].forget_images,
                            self._tasks[i].forget_labels, size, self.config.model.num_train_timesteps,
                            self._generators[i], self.hflip_forget)
            for i in ids
        ]
        fields = [f.name for f in dataclasses.fields(siss.SISSBatch)]
        batch = siss.SISSBatch(**{name: torch.cat([getattr(d, name) for d in draws]) for name in fields})
        lam = torch.tensor(lams, dtype=torch.float32, device=self.device).repeat_interleave(size)
        m_t, labels, from_forget = siss.mixture_sample(batch, lam, self.gamma, self.sigma)

        count = len(ids)
        theta = self._theta if count == self.num_envs else self._theta[torch.as_tensor(ids, device=self.device)]
        params = [p.detach().requires_grad_() for p in self._split(theta)]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._bf16):
            eps_pred = self._forward(
                params, m_t.view(count, size, *m_t.shape[1:]), batch.timesteps.view(count, size), labels.view(count, size)
            ).reshape(m_t.shape)
        err_x, err_a, w_x, w_a = siss.pair_terms(eps_pred, m_t, batch, from_forget, lam, self.gamma, self.sigma)
        loss_retain = (w_x.detach() * err_x).view(count, size).mean(1)
        loss_forget = (w_a.detach() * err_a).view(count, size).mean(1)
        # The models are independent: d(sum_j L_j)/d theta_i = dL_i/d theta_i, so one backward pass per loss.
        grads_r = torch.autograd.grad(loss_retain.sum(), params, retain_graph=True, materialize_grads=True)
        grads_f = torch.autograd.grad(loss_forget.sum(), params, materialize_grads=True)
        grad_r = torch.cat([g.reshape(count, -1) for g in grads_r], dim=1)
        grad_f = torch.cat([g.reshape(count, -1) for g in grads_f], dim=1)
        norm_r = torch.linalg.vector_norm(grad_r, dim=1)
        norm_f = torch.linalg.vector_norm(grad_f, dim=1)
        scalars = torch.stack([loss_retain.detach(), loss_forget.detach(), norm_r, norm_f], dim=1)
        return scalars.double().cpu().numpy(), grad_r, grad_f, norm_f

    @torch.no_grad()
    def _update(self, ids: np.ndarray, grad_r: Tensor, grad_f: Tensor, norm_f: Tensor) -> np.ndarray:
        """The SISS update of the sub-environments ``ids``: ``siss.apply_update`` row by row, in one go.

        Direction c_r g_r - c_f g_f with each row's coefficients (its task's update rule), each
        row's norm clipped to ``max_grad_norm``, then torch.optim.AdamW's arithmetic with each
        row's step count. Returns each row's direction norm before the clip.
        """
        if len(ids) == 0:
            return np.zeros(0)
        cfg = self.config.unlearn
        coef_r, coef_f = self._coefficients(ids, norm_f)
        direction = grad_r * coef_r - grad_f * coef_f
        norm = torch.linalg.vector_norm(direction, dim=1, keepdim=True)
        clip = self.max_grad_norm
        if clip is not None:
            direction *= (clip / (norm + 1e-6)).clamp(max=1.0)  # as clip_grad_norm_

        full = len(ids) == self.num_envs
        index = torch.as_tensor(ids, device=self.device)
        theta, exp_avg, exp_avg_sq = (
            (t if full else t[index]) for t in (self._theta, self._exp_avg, self._exp_avg_sq)
        )
        self._adam_steps[ids] += 1
        steps = self._adam_steps[ids]
        beta1, beta2 = cfg.adam_betas
        step_size = _column(-cfg.lr / (1.0 - beta1**steps), theta)
        bias_correction2_sqrt = _column(np.sqrt(1.0 - beta2**steps), theta)
        theta.mul_(1.0 - cfg.lr * cfg.weight_decay)
        exp_avg.lerp_(direction, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(direction, direction, value=1.0 - beta2)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
        theta.addcdiv_(step_size * exp_avg, denom)
        if not full:
            self._theta[index], self._exp_avg[index], self._exp_avg_sq[index] = theta, exp_avg, exp_avg_sq
        return norm.reshape(-1).double().cpu().numpy()


    def _coefficients(self, ids: np.ndarray, norm_f: Tensor) -> tuple[Tensor, Tensor]:
        """Columns ``(M, 1)`` of (c_r, c_f) of the sub-environments ``ids``, each from its task's update rule."""
        rules = [self._tasks[i].update_rule for i in ids]
        if all(rule == rules[0] for rule in rules):  # every row of one task: one vectorised call
            coef_r, coef_f = rules[0].coefficients(norm_f)
            return _column(coef_r, norm_f), _column(coef_f, norm_f)
        pairs = [rule.coefficients(norm_f[j : j + 1]) for j, rule in enumerate(rules)]
        return tuple(torch.cat([_column(pair[side], norm_f) for pair in pairs]) for side in (0, 1))


def _column(values: Tensor | np.ndarray | float, like: Tensor) -> Tensor:
    """Per-row scalars as an ``(M, 1)`` column (a float is broadcast) on the device and dtype of ``like``."""
    column = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return column.reshape(-1, 1)
