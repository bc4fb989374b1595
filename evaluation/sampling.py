"""The evaluation sampler: DDIM or multistep DPM-Solver++, from fixed initial noise.

Every model of a seed is sampled from the same noise and labels (:func:`sampling_noise`
depends only on the seed and the count), so methods are compared on common random
numbers. Two deterministic solvers of the same probability-flow ODE:

* ``ddim``: DDIM with eta = 0 (:func:`unlearn_env.diffusion.ddim_sample`), the
  scheduler's ``leading`` timesteps and its x0 clipping to [-1, 1];
* ``dpmsolver++``: diffusers' ``DPMSolverMultistepScheduler`` (algorithm ``dpmsolver++``,
  order 2, lower-order final steps), built from the DDPM scheduler's config, with its own
  ``linspace`` timesteps (from t = 999) and the predicted x0 clipped to [-1, 1] as DDIM
  does (thresholding with ``sample_max_value`` 1 is exactly that clamp).

``benchmarks/sampler_check.py`` measures how many DPM-Solver++ steps match DDIM-50.

A caveat found with it: ``ddim`` clips the predicted x0 but steps with the unclipped ε
(diffusers' ``use_clipped_model_output=False``), an inconsistent pair that biases the sample,
and more steps make it worse, not better. On the ``cpu`` base model (80 samples, same noise) the
pixel RMS distance to DPM-Solver++-100 was 0.23 for DDIM-50 and 0.43 for DDIM-200, against 0.016
for DPM-Solver++-25; DDIM with the clipped ε (``use_clipped_model_output=True``) gave 0.020 at 50
steps and 0.008 at 200: it converges to what DPM-Solver++ draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

from unlearn_env.config import ModelConfig
from unlearn_env.diffusion import ddim_sample, inference_batch, sampling_noise

SamplerKind = Literal["ddim", "dpmsolver++"]
SAMPLER_KINDS: tuple[SamplerKind, ...] = ("ddim", "dpmsolver++")


@dataclass(frozen=True)
class Sampler:
    """A solver and its number of model evaluations (steps)."""

    kind: SamplerKind = "ddim"
    steps: int = 50

    def __post_init__(self) -> None:
        if self.kind not in SAMPLER_KINDS:
            raise ValueError(f"sampler kind must be one of {SAMPLER_KINDS}, got {self.kind!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"sampler steps must be a positive integer, got {self.steps!r}")

    @property
    def name(self) -> str:
        """``ddim-50``, ``dpmsolver++-20``: the form :func:`parse_sampler` reads."""
        return f"{self.kind}-{self.steps}"


DDIM_50 = Sampler("ddim", 50)
"""The reference sampler of SPEC §6."""

EVALUATION_SAMPLERS: dict[str, Sampler] = {
    "test": Sampler("ddim", 4), "cpu": Sampler("dpmsolver++", 10), "paper": Sampler("dpmsolver++", 20),
}
"""The sampler that scores a run on each preset (``evaluate.py --sampler`` overrides)."""


def parse_sampler(text: str) -> Sampler:
    """``"ddim-50"`` or ``"dpmsolver++-20"`` -> :class:`Sampler`, with a clear error otherwise."""
    kind, sep, steps = text.strip().rpartition("-")
    if not sep or not steps.isdigit():
        raise ValueError(f"sampler {text!r} is not KIND-STEPS with KIND in {SAMPLER_KINDS}, e.g. dpmsolver++-20")
    return Sampler(kind, int(steps))  # type: ignore[arg-type]  # Sampler checks the kind


def dpm_solver(scheduler: DDPMScheduler, steps: int) -> DPMSolverMultistepScheduler:
    """A fresh multistep DPM-Solver++ (order 2) for ``scheduler``'s noise schedule, set to ``steps`` steps."""
    solver = DPMSolverMultistepScheduler.from_config(
        scheduler.config, algorithm_type="dpmsolver++", solver_order=2, thresholding=True, sample_max_value=1.0
    )
    solver.set_timesteps(steps)
    return solver


@torch.no_grad()
def _dpm_sample(
    unet: UNet2DModel, scheduler: DDPMScheduler, labels: torch.Tensor, noise: torch.Tensor, steps: int,
    batch_size: int | None,
) -> torch.Tensor:
    device = next(unet.parameters()).device
    if batch_size is None:
        batch_size = inference_batch(device, 256)
    was_training = unet.training
    unet.eval()
    chunks = []
    for start in range(0, len(labels), batch_size):
        # The multistep solver keeps the previous model outputs: a fresh one per batch.
        solver = dpm_solver(scheduler, steps)
        sample = noise[start : start + batch_size].to(device)
        label = labels[start : start + batch_size].to(device)
        for t in solver.timesteps:
            eps = unet(sample, t.to(device), class_labels=label).sample
            sample = solver.step(eps, t, sample).prev_sample
        chunks.append(sample.clamp(-1.0, 1.0))
    unet.train(was_training)
    return torch.cat(chunks)


def sample(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    labels: torch.Tensor,
    noise: torch.Tensor,
    sampler: Sampler = DDIM_50,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Deterministic samples for ``labels`` from ``noise``: model space ``(N, 1, S, S)`` in [-1, 1], on the
    model's device; ``batch_size`` images per pass (default: :func:`~unlearn_env.diffusion.inference_batch`'s)."""
    if len(labels) != len(noise):
        raise ValueError(f"{len(labels)} labels but {len(noise)} noise images")
    if sampler.kind == "ddim":
        return ddim_sample(unet, scheduler, labels, noise, num_steps=sampler.steps, batch_size=batch_size)
    return _dpm_sample(unet, scheduler, labels, noise, sampler.steps, batch_size)


def evaluation_labels(num_classes: int, forget_class: int, num_forget: int, num_per_retain: int) -> torch.Tensor:
    """Label-major labels: ``num_forget`` of the forget class and ``num_per_retain`` of every other class."""
    counts = torch.tensor([num_forget if c == forget_class else num_per_retain for c in range(num_classes)])
    return torch.arange(num_classes).repeat_interleave(counts)


def sample_labels(
    unet: UNet2DModel, scheduler: DDPMScheduler, model: ModelConfig, labels: torch.Tensor, seed: int,
    sampler: Sampler = DDIM_50,
) -> torch.Tensor:
    """Samples of ``labels`` (on the CPU) from ``sampling_noise(len(labels), seed)``: the same start for every model."""
    noise = sampling_noise(len(labels), model.image_size, seed)
    return sample(unet, scheduler, labels, noise, sampler).cpu()


def sample_per_label(
    unet: UNet2DModel, scheduler: DDPMScheduler, model: ModelConfig, num_per_label: int, seed: int,
    sampler: Sampler = DDIM_50,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_per_label`` samples of every label, label-major, from ``sampling_noise(seed)``: (CPU images, labels)."""
    labels = torch.arange(model.num_classes).repeat_interleave(num_per_label)
    return sample_labels(unet, scheduler, model, labels, seed, sampler), labels
