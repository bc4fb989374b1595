"""Score Forgetting Distillation (SFD; Chen, Zhang, Zhou 2024, arXiv 2409.11219), after the official code.

Reference: GitHub ``tqch/score-forgetting-distillation``, ``DDPM/runners/diffusion.py::train_sfd``,
``DDPM/functions/losses.py`` (``sid_sg_loss_conditional``, ``sid_g_loss_conditional``) and
``DDPM/configs/cifar10_sfd.yml`` (the repository has no MNIST config; STL-10's differs from it in
the data and model, batch 64 and the fake score network's learning rate 3e-5). SFD forgets a
*label*: it distils the diffusion model into a one-step generator by score identity distillation
(SiD, Zhou et al. 2024) and, for the forget label, distils the teacher's score of an *override*
label instead, so the generator draws the override class when asked for the forget label. It
reads no image: only labels, drawn from the retain set's label distribution. It is meant for a
``class`` task (``--tasks class``, :mod:`unlearn_env.tasks`). On an instance task the forget label
is a retain label too (its real digits), so the distillation of the retain labels pins it to the
teacher's and works against the forgetting term, and an override that won would erase the real
digits too.

Three networks, all initialised from the base model's EMA weights (the official ``init_from_ema``):

* the **teacher** eps_phi, frozen (a copy of the base model);
* the **fake score** network eps_psi, trained to denoise the generator's samples (the score of the
  generator's distribution);
* the **generator** G_theta, a UNet used once at the initial timestep t* (``t_init``):

      G_theta(z, c) = (x* - b* eps_theta(x*, t*, c)) / a*,    x* = b* z,  z ~ N(0, I)

  with a_t = sqrt(abar_t), b_t = sqrt(1 - abar_t). Its input is noise at t*'s scale with no signal
  (the official ``xt = init_b * randn``), and at initialisation it is the teacher's one-step x0
  prediction from that input. Sampling it is one network call per image.

One iteration (the official order). Labels c ~ the retain set's labels (B of them), f the forget
label, c_o the override label; every z, t ~ U{t_min, ..., t_max - 1} and eps is drawn afresh:

1. fake-score step, on detached generator samples x_r = G(z1, c), x_f = G(z2, f)::

       L_psi = w_sr E||eps - eps_psi(a_t x_r + b_t eps, t, c)||^2 + w_sf E||eps - eps_psi(a_t x_f + b_t eps, t, f)||^2

2. generator step, with x0 = G_theta(z, c') carrying gradient and x_t = a_t x0 + b_t eps::

       p = (x_t - b_t eps_phi(x_t, t, c_p)) / a_t,      q = (x_t - b_t eps_psi(x_t, t, c_q)) / a_t
       omega = mean_pixels |p - x0|  (no gradient, at least 1e-5)
       L_SiD(x0; c_p, c_q) = E[ sum_pixels (p - q) * ((p - x0) - alpha (p - q)) / omega ]
       L_theta = w_gr L_SiD(G(z3, c); c, c) + w_gf L_SiD(G(z4, f); c_o, f)

   The forgetting term calls the teacher with the override label c_o on forget-label generations
   and the fake score network with the forget label. Gradient flows into theta through x0 and x_t,
   through both frozen networks' inputs (the official ``use_diffinst=False``).

Each step: gradients clipped by value (``grad_clip``), then Adam (beta1 = 0). The generator's
weights are averaged (EMA) after every step, and the EMA generator is what is evaluated, as the
official ``sample.py`` does. Cost per iteration: 10 forward and 8 backward UNet passes over a batch
(generator 4F + 2B: four one-step calls, two with gradient; fake score 4F + 4B: its own two losses,
then two input-gradient passes in the generator step; teacher 2F + 2B, input gradients only),
against SISS's 1F + 2B.

Official settings (``cifar10_sfd.yml``), the defaults here: alpha 1.2; t_min 38, t* 440, t_max 712
(of 1000 steps of the same linear schedule); loss weights w_sr = w_gr = 1, w_sf = w_gf = 0.01;
override label 1 (``label_to_override``; ``override=None`` takes the official random path, a
uniform draw over the retain classes per sample); Adam betas (0, 0.999), eps 1e-8, no weight decay,
both learning rates 1e-5; clip by value at 1; batch 128; 50,000 iterations; EMA 0.9999. The
official losses are sums over pixels, and so are these: the value clip acts on gradients of that
scale.

Budget (:data:`PRESET_SCALES`): the ``paper`` preset runs the official scale (50,000 iterations at
batch 128, a GPU's job). The ``cpu`` preset runs 150 iterations at batch 16 and learning rates 1e-3,
a hundred times the official ones: with Adam and beta1 = 0 each weight moves by about lr per step,
and the forget label's embedding, which only the forgetting terms reach, moves at that pace whatever
their weight 0.01. ``test`` runs the env's T with the env's batch. ``steps``, ``batch_size``,
``lr_sg`` and ``lr_g`` override them; ``ema_rate`` defaults to 1 - 5 / steps, the official 0.9999
at 50,000 iterations, so that the EMA's horizon is the same share of a run.

What the ``cpu`` budget reaches, measured on a stand-in for the class task (no 11-label ``cpu``
base model was trained yet): the cached 10-label ``cpu`` base model with label 1 forgotten (override
7) and the labels c drawn from the other nine, as a class task's are; 40 one-step samples per label
from fixed noise, called by the ``cpu`` judge. After 150 iterations at 1e-3 label 1 was drawn as a 7
in 97.5 % of samples (as a one or a trouser in none), and the other labels were judged as asked in
97.5 % (NEITHER 0.6 %; the base model's DDIM-50 samples 79 %; the generator at initialisation 0 %:
the teacher's one-step x0 prediction is a blur the judge calls NEITHER). At 1e-4 (ten times the
official rate) the same run forgot nothing (label 1 a 7 in 2.5 %, a trouser in 30 % as before) and
reached 87.5 % on the other labels; with forget weights 1 instead of 0.01, at 1e-3, 100 % and 95.6 %.
So SFD's distillation is fast here and its forgetting is what needs the larger rate.

Measured cost (``cpu`` preset, one torch thread, a 2-core machine shared with other jobs: CPU
seconds; the wall time was 2-5 times more): one iteration at batch 16, probes included, takes
0.9-1.1 s over ``sfd``, ``sfd-multi`` and ``sfd-siss``, against 0.48-0.51 s for a SISS update at
batch 32 on the same machine, so the ``cpu`` budget of 150 iterations is 2.3-2.6 CPU minutes.
Sampling the one-step generator costs 2.3-2.5 ms per image (one call of the ``cpu`` UNet), against
23-25 ms for DPM-Solver++ at 10 steps, the ``cpu`` evaluation's sampler.

How it meets the environment. SFD trains two networks the env's update does not know, so it is not
one :meth:`~unlearn_env.env.UnlearningEnv.step_update`: :func:`run_sfd` has its own loop, built
from the env's pieces. ``env.reset(seed)`` restores the base model and seeds the env's generator,
from which every draw of the run comes (labels, z, t, eps: the same stream for every SFD variant
of a seed); each iteration is one logged step, scored by the env's own
:func:`~unlearn_env.env.step_outcome` (its reward modes, observation and info keys, ``-crash_penalty``
and ``info["diverged"]`` when a loss or gradient is not finite: the step it would feed, and the rest
of the iteration, are not taken, and the run ends) with the SFD budget as its horizon. Probes: the
generator is not a denoiser, so the probe losses are the **fake score network's** on the episode's
probe set (its denoising loss on held-out retain digits and on the forget images: how well the
distribution it has learned, the generator's, covers each), measured after every iteration; at the
start the fake network is the base model, so the env's reset probes are its first ones. The
observation's four scalars are the generator's two losses L_SiD (retain, forget; official units,
they may be negative) and their gradient norms. lambda is logged as ``lambda_init`` (SFD has none),
as the env logs rules without one. In ``outcome`` reward mode the terminal judge scores the EMA
generator's one-step samples.

In the benchmark. The run leaves its EMA generator, a :class:`OneStepGenerator`, at
``env.unwrapped.sfd_generator``; :func:`sample_one_step` is the registered sampling hook
(:mod:`baselines.registry`): ``evaluate.py`` samples the one-step generator from the labels and the
standard-normal noise z every method of a seed gets (one network call per image), not the env's
UNet. After the run the env's UNet holds the fake score network psi. The generator is not a
denoiser and has no denoising loss, so the data-level metrics (``loss_gap`` and its two losses,
which ``evaluate.py`` measures on the env's UNet) are psi's: the score model of the generator's
distribution that SiD maintains. psi starts as the base model and learns from the generator's
samples only, so its gap lags the generator (at a short budget it still holds much of what the base
model fit of the forget set). ``evaluate.py`` does not probe SFD runs mid-episode (its probes sample
the env's UNet with the diffusion sampler): they have no ``steps_to_forget``, and their
``ms_per_update`` is per iteration.

Departures from the official code:

* one process, no DistributedDataParallel; labels come from the retain pool of the env's updates
  (the retain set less its probe hold-out) by uniform index, i.e. from its label distribution,
  instead of a shuffled loader over the retain images (whose images the official code never uses);
* the budget, batch and learning rates of the ``cpu`` and ``test`` presets (above: the ``cpu``
  rates are a hundred times the official ones), and the EMA rate scaled to the budget;
* the UNet is diffusers' ``UNet2DModel`` with integer timesteps, not the official DDPM UNet with
  float ones; it has no dropout (the official model's is 0.1, active in its training passes), so
  the official train/eval mode switches change nothing;
* the fake network's probe losses after every iteration (the env's step reward needs them) are an
  addition, of one forward pass over the probe set;
* ``forget_warmup`` (off in the official configs), classifier pseudo-labels (``use_clf``) and
  classifier-free guidance (``cond_scale`` 0, ``cond_drop_prob`` 0 there) are not implemented;
* the networks run in the env's precision (``precision="bf16"`` autocasts their forward passes), not
  the compiled module (``compile_unet`` is ignored here).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from baselines.loop import gradient, total_norm
from baselines.registry import register
from unlearn_env import probes
from unlearn_env.env import step_outcome
from unlearn_env.episode import EpisodeLog
from unlearn_env.rewards import ProbeLosses

GENERATOR_ATTRIBUTE = "sfd_generator"
"""Where a run leaves its :class:`OneStepGenerator` on ``env.unwrapped`` for :func:`sample_one_step`."""
OMEGA_MIN = 1e-5
"""The official floor of SiD's normaliser omega."""
EMA_HORIZON = 5.0
"""Default EMA rate 1 - EMA_HORIZON / steps: the official 0.9999 at 50,000 iterations."""


@dataclass(frozen=True)
class SFDScale:
    """A preset's SFD budget: iterations, batch and learning rates (module docstring)."""

    steps: int | None
    """Iterations; ``None``: the env's horizon T."""
    batch_size: int | None
    """Labels per term; ``None``: the env's batch size."""
    lr_sg: float
    lr_g: float


OFFICIAL_SCALE = SFDScale(steps=50_000, batch_size=128, lr_sg=1e-5, lr_g=1e-5)
"""``cifar10_sfd.yml``: 50,000 iterations at batch 128, both learning rates 1e-5."""
PRESET_SCALES: dict[str, SFDScale] = {
    "test": SFDScale(steps=None, batch_size=None, lr_sg=1e-5, lr_g=1e-5),
    "cpu": SFDScale(steps=150, batch_size=16, lr_sg=1e-3, lr_g=1e-3),
    "paper": OFFICIAL_SCALE,
}
"""The SFD budget of each preset; a preset not listed runs the official scale."""


@dataclass(frozen=True)
class SFDSettings:
    """What every SFD variant shares: the official hyper-parameters and the budget (``None``: the preset's)."""

    steps: int | None = None
    """Iterations (each one logged step); ``None``: the preset's (:data:`PRESET_SCALES`)."""
    batch_size: int | None = None
    """Labels per loss term; ``None``: the preset's."""
    lr_sg: float | None = None
    """Adam learning rate of the fake score network; ``None``: the preset's (official 1e-5)."""
    lr_g: float | None = None
    """Adam learning rate of the generator; ``None``: the preset's (official 1e-5)."""
    alpha: float = 1.2
    """SiD's alpha in the generator loss."""
    t_min: int = 38
    """Smallest timestep of the losses (inclusive)."""
    t_init: int = 440
    """The generator's timestep t*."""
    t_max: int = 712
    """Largest timestep of the losses (exclusive, as the official ``randint``)."""
    sg_remain_coef: float = 1.0
    sg_forget_coef: float = 0.01
    g_remain_coef: float = 1.0
    g_forget_coef: float = 0.01
    beta2: float = 0.999
    """Adam's beta2; beta1 is 0, as officially."""
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    """Clip by value, both networks."""
    ema_rate: float | None = None
    """EMA rate of the generator's weights; ``None``: 1 - 5 / steps (the official 0.9999 at 50,000)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("lr_sg", "lr_g"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not 0 <= self.t_min < self.t_max:
            raise ValueError(f"need 0 <= t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}")
        if self.t_init < 0:
            raise ValueError(f"t_init must be >= 0, got {self.t_init}")
        if min(self.sg_remain_coef, self.sg_forget_coef, self.g_remain_coef, self.g_forget_coef) < 0:
            raise ValueError("loss weights must be >= 0")
        if not (0 <= self.beta2 < 1 and self.adam_eps > 0 and self.grad_clip > 0):
            raise ValueError(f"need 0 <= beta2 < 1, adam_eps > 0 and grad_clip > 0, got {self}")
        if self.ema_rate is not None and not 0 <= self.ema_rate < 1:
            raise ValueError(f"ema_rate must lie in [0, 1), got {self.ema_rate}")


@dataclass(frozen=True)
class SFDOptions(SFDSettings):
    """Hyper-parameters of ``sfd``."""

    override: int | None = 1
    """The override label c_o (official ``label_to_override`` 1); ``None``: a uniform draw over the retain
    classes for every forget sample (the official random path)."""


@dataclass(frozen=True)
class Budget:
    """An episode's resolved budget: the settings' values, else the preset's."""

    steps: int
    batch_size: int
    lr_sg: float
    lr_g: float
    ema_rate: float


def resolve_budget(settings: SFDSettings, env: gym.Env) -> Budget:
    """The budget of a run of ``settings`` on ``env`` (module docstring)."""
    config = env.unwrapped.config
    scale = PRESET_SCALES.get(config.preset, OFFICIAL_SCALE)
    steps = settings.steps or scale.steps or config.unlearn.horizon
    ema = settings.ema_rate if settings.ema_rate is not None else max(0.0, 1.0 - EMA_HORIZON / steps)
    return Budget(
        steps=steps,
        batch_size=settings.batch_size or scale.batch_size or config.unlearn.batch_size,
        lr_sg=settings.lr_sg or scale.lr_sg,
        lr_g=settings.lr_g or scale.lr_g,
        ema_rate=ema,
    )


class OneStepGenerator:
    """G(z, c) = (b* z - b* eps(b* z, t*, c)) / a*: a UNet called once at t* (module docstring)."""

    def __init__(self, unet: nn.Module, t_init: int, gamma: Tensor, sigma: Tensor) -> None:
        self.unet = unet
        self.t_init = t_init
        self.a, self.b = gamma[t_init], sigma[t_init]

    def __call__(self, z: Tensor, labels: Tensor, unet: nn.Module | None = None) -> Tensor:
        """The generator's images for noise ``z`` and ``labels`` (differentiable; ``unet`` replaces its network)."""
        x_init = self.b * z
        t = torch.full((len(z),), self.t_init, device=z.device, dtype=torch.long)
        eps = (unet or self.unet)(x_init, t, class_labels=labels).sample.float()
        return (x_init - self.b * eps) / self.a

    @torch.no_grad()
    def sample(self, labels: Tensor, noise: Tensor, batch_size: int = 256) -> Tensor:
        """Images for ``labels`` from standard-normal ``noise``: model space, clamped to [-1, 1], on its device."""
        if len(labels) != len(noise):
            raise ValueError(f"{len(labels)} labels but {len(noise)} noise images")
        device = self.a.device
        chunks = [self(noise[i: i + batch_size].to(device), labels[i: i + batch_size].to(device))
                  for i in range(0, len(labels), batch_size)]
        return torch.cat(chunks).clamp(-1.0, 1.0)


def noised(x0: Tensor, t: Tensor, noise: Tensor, gamma: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_t, a_t, b_t)`` with x_t = a_t x0 + b_t noise, the coefficients shaped to broadcast over images."""
    a, b = gamma[t].view(-1, 1, 1, 1), sigma[t].view(-1, 1, 1, 1)
    return a * x0 + b * noise, a, b


def denoising_loss(model: nn.Module, x0: Tensor, t: Tensor, labels: Tensor, noise: Tensor, gamma: Tensor,
                   sigma: Tensor) -> Tensor:
    """Per-sample ||noise - eps(x_t, t, c)||^2 summed over pixels: the official ``sid_sg_loss_conditional``."""
    x_t, _, _ = noised(x0, t, noise, gamma, sigma)
    return (noise - model(x_t, t, class_labels=labels).sample.float()).square().sum(dim=(1, 2, 3))


def sid_generator_loss(
    teacher: nn.Module, fake: nn.Module, x0: Tensor, t: Tensor, teacher_labels: Tensor, fake_labels: Tensor,
    noise: Tensor, gamma: Tensor, sigma: Tensor, alpha: float,
) -> tuple[Tensor, Tensor]:
    """The official ``sid_g_loss_conditional`` per sample, and the score gap the forgetting term closes.

    Returns ``(loss, gap)``: loss_i = sum_pixels (p - q)((p - x0) - alpha (p - q)) / omega_i with p, q
    the teacher's and the fake network's x0 predictions (module docstring); gap_i = mean_pixels
    (eps_phi - eps_psi)^2, detached (``sfd-multi`` learns its lambda from it). At alpha = 1 this is
    the official code's other branch, (p - q)(q - x0) / omega.
    """
    x_t, a, b = noised(x0, t, noise, gamma, sigma)
    eps_fake = fake(x_t, t, class_labels=fake_labels).sample.float()
    eps_teacher = teacher(x_t, t, class_labels=teacher_labels).sample.float()
    q = (x_t - b * eps_fake) / a
    p = (x_t - b * eps_teacher) / a
    with torch.no_grad():
        omega = (p - x0).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(OMEGA_MIN)
        gap = (eps_teacher - eps_fake).square().mean(dim=(1, 2, 3))
    loss = ((p - q) * ((p - x0) - alpha * (p - q)) / omega).sum(dim=(1, 2, 3))
    return loss, gap


def frozen_copy(unet: nn.Module) -> nn.Module:
    """A copy of ``unet`` whose parameters take no gradient."""
    return copy.deepcopy(unet).requires_grad_(False)


def step_by_value(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grads: list[Tensor],
                  clip: float) -> Tensor:
    """Set the gradients, clip them by value (the official ``clip_grad_value_``), take one step; the share clipped."""
    for param, grad in zip(params, grads):
        param.grad = grad
    share = torch.stack([(g.abs() > clip).sum() for g in grads]).sum().float() / sum(g.numel() for g in grads)
    torch.nn.utils.clip_grad_value_(params, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return share


@dataclass
class Iteration:
    """What one iteration measured: the observation's four values and its own scalars (tensors)."""

    values: Tensor
    """(L_SiD retain, L_SiD forget, ||grad_theta|| of each): the generator's losses, official units."""
    scalars: dict[str, Tensor]
    finite: bool
    """False when a loss or gradient was not finite: that network's step and the rest were not taken."""


class SFDRun:
    """One SFD run on an env's current episode (after its reset): networks, optimisers, draws, iterations.

    The variants override :meth:`override_labels` (``sfd-multi``), :meth:`fake_forget_loss`
    (``sfd-siss``) and :meth:`observe_forget` (``sfd-multi``'s lambda update).
    """

    name = "sfd"

    def __init__(self, env: gym.Env, settings: SFDSettings, budget: Budget) -> None:
        base = env.unwrapped
        self.base = base
        self.settings, self.budget = settings, budget
        self.device = base.device
        self.rng: torch.Generator = base.generator
        self.gamma, self.sigma = base.gamma, base.sigma
        task = base.task_data[base.task]
        self.retain_labels = task.retain_labels
        self.retain_classes = torch.tensor(task.retain_classes, device=self.device)
        self.forget_label = task.forget_class
        override = getattr(settings, "override", None)
        if override is not None and override not in task.retain_classes:
            raise ValueError(f"{self.name}: the override label must be a retain class {task.retain_classes} (not the "
                             f"forget label {task.forget_class}), got {override}")
        self.image_shape = tuple(task.forget_images.shape[1:])
        num_timesteps = base.config.model.num_train_timesteps
        if settings.t_max > num_timesteps or settings.t_init >= num_timesteps:
            raise ValueError(f"t_max {settings.t_max} and t_init {settings.t_init} must lie within the "
                             f"{num_timesteps} timesteps")
        self.bf16 = base.config.runtime.precision == "bf16"
        self.teacher = frozen_copy(base.unet)
        self.fake = copy.deepcopy(base.unet).requires_grad_(True)
        student = copy.deepcopy(base.unet).requires_grad_(True)
        self.generator = OneStepGenerator(student, settings.t_init, self.gamma, self.sigma)
        self.ema = frozen_copy(base.unet)
        self.fake_params = list(self.fake.parameters())
        self.student_params = list(student.parameters())
        self.ema_params = list(self.ema.parameters())
        betas = (0.0, settings.beta2)
        self.fake_optimizer = torch.optim.Adam(self.fake_params, lr=budget.lr_sg, betas=betas, eps=settings.adam_eps,
                                               weight_decay=0.0, foreach=True)
        self.student_optimizer = torch.optim.Adam(self.student_params, lr=budget.lr_g, betas=betas,
                                                  eps=settings.adam_eps, weight_decay=0.0, foreach=True)

    # ---------------------------------------------------------------- draws

    def autocast(self) -> torch.autocast:
        """The env's precision for the UNet passes."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def labels(self) -> Tensor:
        """B labels from the retain set's label distribution (a uniform index into its labels)."""
        idx = torch.randint(len(self.retain_labels), (self.budget.batch_size,), generator=self.rng, device=self.device)
        return self.retain_labels[idx]

    def z(self) -> Tensor:
        """Standard-normal generator inputs for B images."""
        return torch.randn((self.budget.batch_size, *self.image_shape), generator=self.rng, device=self.device)

    def timesteps(self) -> Tensor:
        """B timesteps uniform in [t_min, t_max)."""
        return torch.randint(self.settings.t_min, self.settings.t_max, (self.budget.batch_size,), generator=self.rng,
                             device=self.device)

    def uniform_retain_labels(self, count: int) -> Tensor:
        """``count`` labels drawn uniformly from the retain classes (the official random override path)."""
        probs = torch.full((len(self.retain_classes),), 1.0 / len(self.retain_classes), device=self.device)
        return self.retain_classes[torch.multinomial(probs, count, replacement=True, generator=self.rng)]

    def override_labels(self, count: int) -> Tensor:
        """The override label of each of ``count`` forget-label generations."""
        override = self.settings.override  # type: ignore[attr-defined]
        if override is None:
            return self.uniform_retain_labels(count)
        return torch.full((count,), override, device=self.device, dtype=torch.long)

    # ---------------------------------------------------------------- losses

    def fake_forget_loss(self, x_forget: Tensor, forget: Tensor) -> Tensor:
        """The fake network's loss on detached forget-label generations (official: its denoising loss with label f)."""
        return denoising_loss(self.fake, x_forget, self.timesteps(), forget, self.noise(), self.gamma,
                              self.sigma).mean()

    def noise(self) -> Tensor:
        """Gaussian noise eps for B images."""
        return torch.randn((self.budget.batch_size, *self.image_shape), generator=self.rng, device=self.device)

    def observe_forget(self, overrides: Tensor, gap: Tensor) -> dict[str, Tensor]:
        """Called with the forgetting term's override labels and score gaps after each iteration; extra scalars."""
        return {}

    # ---------------------------------------------------------------- one iteration

    def iterate(self) -> Iteration:
        """One iteration: the fake-score step, then the generator step and its EMA (module docstring)."""
        s = self.settings
        c = self.labels()
        forget = torch.full_like(c, self.forget_label)
        with self.autocast():
            with torch.no_grad():
                x_r = self.generator(self.z(), c)
                x_f = self.generator(self.z(), forget)
            sg_remain = denoising_loss(self.fake, x_r, self.timesteps(), c, self.noise(), self.gamma,
                                       self.sigma).mean()
            sg_forget = self.fake_forget_loss(x_f, forget)
        fake_grads = gradient(s.sg_remain_coef * sg_remain + s.sg_forget_coef * sg_forget, self.fake_params)
        fake_check = torch.stack([sg_remain.detach(), sg_forget.detach(), total_norm(fake_grads)])
        if not bool(torch.isfinite(fake_check).all()):
            # Checked before the step, so a non-finite run leaves both networks as they were.
            return Iteration(torch.full((4,), float("nan")), {}, finite=False)
        fake_clipped = step_by_value(self.fake_optimizer, self.fake_params, fake_grads, s.grad_clip)

        with self.autocast():
            g_remain, _ = sid_generator_loss(self.teacher, self.fake, self.generator(self.z(), c), self.timesteps(),
                                             c, c, self.noise(), self.gamma, self.sigma, s.alpha)
            x_forget = self.generator(self.z(), forget)
            overrides = self.override_labels(len(c))
            g_forget, gap = sid_generator_loss(self.teacher, self.fake, x_forget, self.timesteps(), overrides, forget,
                                               self.noise(), self.gamma, self.sigma, s.alpha)
        g_remain, g_forget = g_remain.mean(), g_forget.mean()
        grad_remain = gradient(g_remain, self.student_params)
        grad_forget = gradient(g_forget, self.student_params)
        values = torch.stack([g_remain.detach(), g_forget.detach(), total_norm(grad_remain), total_norm(grad_forget)])
        if not bool(torch.isfinite(values).all()):
            return Iteration(values.float(), {}, finite=False)
        direction = torch._foreach_mul(grad_remain, s.g_remain_coef)
        torch._foreach_add_(direction, torch._foreach_mul(grad_forget, s.g_forget_coef))
        student_clipped = step_by_value(self.student_optimizer, self.student_params, direction, s.grad_clip)
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.student_params, 1.0 - self.budget.ema_rate)
        scalars = {
            f"{self.name}/fake_loss_retain": sg_remain.detach(),
            f"{self.name}/fake_loss_forget": sg_forget.detach(),
            f"{self.name}/clipped_share_fake": fake_clipped,
            f"{self.name}/clipped_share_generator": student_clipped,
            **self.observe_forget(overrides, gap),
        }
        return Iteration(values.float(), scalars, finite=True)

    def final_generator(self) -> OneStepGenerator:
        """The EMA generator: what is evaluated."""
        return OneStepGenerator(self.ema, self.settings.t_init, self.gamma, self.sigma)

    def probe(self) -> Tensor:
        """The fake score network's probe losses (retain, forget) on the episode's probe set."""
        with self.autocast():
            return probes.probe_losses(self.fake, self.base.probe_set, self.gamma, self.sigma)


def run_sfd_family(env: gym.Env, settings: SFDSettings, seed: int, run_cls: type[SFDRun]) -> EpisodeLog:
    """One episode of an SFD variant from the base model (module docstring); the generator is left on the env.

    ``env.reset(seed=seed)`` is called on ``env`` (a wrapper such as evaluate's is its own
    ``unwrapped``); the run's steps are scored by :func:`~unlearn_env.env.step_outcome` with the SFD
    budget as horizon. A non-finite loss or gradient ends the episode (``log.diverged``).
    """
    log = EpisodeLog(seed=seed)
    start = time.perf_counter()
    _, info = env.reset(seed=seed)
    base = env.unwrapped
    budget = resolve_budget(settings, env)
    run = run_cls(env, settings, budget)
    if hasattr(base, GENERATOR_ATTRIBUTE):
        delattr(base, GENERATOR_ATTRIBUTE)
    task = base.task_data[base.task]
    task = dataclasses.replace(task, config=task.config.with_overrides(horizon=budget.steps))
    lam = task.config.unlearn.lambda_init
    probe_0 = probe_prev = ProbeLosses(info["probe_loss_retain"], info["probe_loss_forget"])
    for t in range(1, budget.steps + 1):
        iteration = run.iterate()
        names = list(iteration.scalars)
        probe = ProbeLosses(float("nan"), float("nan"))
        extra: dict[str, float] = {}
        if iteration.finite:
            after = torch.cat([run.probe().float(), torch.stack([iteration.scalars[k].float() for k in names])])
            after = after.double().cpu().numpy()
            probe = ProbeLosses(float(after[0]), float(after[1]))
            extra = dict(zip(names, map(float, after[2:])))
        terminal = None
        if task.terminal_judge is not None and t == budget.steps and np.isfinite(probe.retain):
            terminal = task.terminal_judge.score_samples(
                run.final_generator().sample(task.terminal_judge.labels, base.terminal_noise))
        values = iteration.values.double().cpu().numpy()
        _, reward, terminated, step_info = step_outcome(values, probe, probe_prev, probe_0, lam, lam, t, task,
                                                         base.observation_space, terminal)
        step_info.update(extra)
        log.record(step_info, reward)
        log.steps[-1].update(extra)
        probe_prev = probe
        if terminated or step_info["diverged"]:
            break
    setattr(base, GENERATOR_ATTRIBUTE, run.final_generator())
    # The env's diffusion model becomes the generator's score model: what data-level metrics measure.
    base.unet.load_state_dict(run.fake.state_dict())
    log.wall_seconds = time.perf_counter() - start
    return log


def sample_one_step(env: gym.Env, options: Any, labels: Tensor, noise: Tensor) -> Tensor:
    """The registered sampling hook of every SFD variant: the last run's EMA generator on ``env``, one call per image."""
    generator = getattr(env.unwrapped, GENERATOR_ATTRIBUTE, None)
    if generator is None:
        raise RuntimeError("this env holds no SFD generator: run an SFD method's runner on it first")
    return generator.sample(labels, noise)


def run_sfd(env: gym.Env, options: SFDOptions, seed: int) -> EpisodeLog:
    """The registry's runner of ``sfd``: one SFD run from the base model (module docstring)."""
    return run_sfd_family(env, options, seed, SFDRun)


register("sfd", SFDOptions, run_sfd, data="labels only", sample=sample_one_step,
         passes="10F+8B (generator 4F+2B, fake score 4F+4B, teacher 2F+2B)",
         description="Score Forgetting Distillation: a one-step generator distilled from the base model, the forget "
                     "label distilled from an override label's score (data-free; samples in one network call)")
