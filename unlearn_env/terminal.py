"""The ``outcome`` reward's terminal score: the project's judge on fixed-noise samples of the final model.

At t = T the model is sampled (DDIM, ``terminal_sampler_steps`` steps) for the forget label and
for every retain label, from noise drawn once per episode by the reset seed, so every method of
a seed is judged on the same starting points. The judge (``evaluation.judge``, cached like the
base model) gives the three shares of :class:`~unlearn_env.rewards.TerminalScore`.

Cost per episode: ``terminal_forget_samples + 9 * terminal_retain_samples`` images times
``terminal_sampler_steps`` UNet forward passes, e.g. (32 + 36) x 10 = 680 image-steps on the
``cpu`` preset, a few seconds on 2 cores (``benchmarks/env_step.py`` prints it).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn

from unlearn_env.config import ExperimentConfig
from unlearn_env.diffusion import ddim_sample
from unlearn_env.rewards import TerminalScore
from unlearn_env.tasks import forget_digit_hits


class TerminalJudge:
    """Samples a model for the forget and retain labels and scores the samples with the judge."""

    def __init__(
        self, config: ExperimentConfig, retain_classes: list[int], device: torch.device, judge: nn.Module | None = None
    ) -> None:
        """Judge the task ``config.data`` names (its concept, :func:`evaluation.judge.concept_label`).

        The judge is the same for every task (its cache key has no task in it): ``judge`` passes
        one already loaded, else it is loaded (trained if need be).
        """
        from evaluation.judge import concept_label, ensure_judge

        self.judge = judge if judge is not None else ensure_judge(config, device, progress=False)
        self.forget_class = config.data.forget_class
        self.concept = concept_label(config.data.fashion_class)
        reward = config.reward
        self.steps = reward.terminal_sampler_steps
        self.image_size = config.model.image_size
        forget = [self.forget_class] * reward.terminal_forget_samples
        retain = [c for c in retain_classes for _ in range(reward.terminal_retain_samples)]
        self.labels = torch.tensor(forget + retain)
        self.is_forget = self.labels == self.forget_class

    def draw_noise(self, generator: torch.Generator) -> Tensor:
        """The initial noise of an episode's terminal samples, from a CPU generator (device-independent)."""
        return torch.randn(len(self.labels), 1, self.image_size, self.image_size, generator=generator)

    def score(self, unet: nn.Module, scheduler: DDPMScheduler, noise: Tensor) -> TerminalScore:
        """Sample ``unet`` from ``noise`` and judge the samples."""
        return self.score_samples(ddim_sample(unet, scheduler, self.labels, noise, num_steps=self.steps))

    def score_samples(self, samples: Tensor) -> TerminalScore:
        """Judge samples of :attr:`labels` drawn by any sampler (a one-step generator's too).

        "Drawn as the digit" is :func:`~unlearn_env.tasks.forget_digit_hits`: the forget digit, or any
        digit for a class task's label 10.
        """
        from evaluation.judge import classify

        if not torch.isfinite(samples).all():
            return TerminalScore(concept_rate=1.0, digit_share=0.0, retain_accuracy=0.0)
        calls = np.asarray(classify(self.judge, samples))
        labels = self.labels.numpy()
        forget = self.is_forget.numpy()
        return TerminalScore(
            concept_rate=float((calls[forget] == self.concept).mean()),
            digit_share=float(forget_digit_hits(calls[forget], self.forget_class).mean()),
            retain_accuracy=float((calls[~forget] == labels[~forget]).mean()),
        )
