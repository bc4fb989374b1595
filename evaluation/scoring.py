"""Scoring a model of one forget task: sample it from a seed's fixed noise and compute every metric.

A :class:`TaskScorer` holds what scoring one task needs, built once: the task's config, its
held-out real images with their judge features (:class:`~evaluation.metrics.RealReference`), the
judge and the validator, and the base model's samples per seed and sample size (the SSIM
reference, drawn once). :meth:`TaskScorer.score` samples a model with the evaluation sampler and
returns :func:`~evaluation.metrics.score_samples`'s metrics, the denoising-loss gap
(:func:`~evaluation.metrics.data_level_forgetting`) and, for a task with companions, the
clean-digit retain metrics; :meth:`TaskScorer.probe` gives the cheap mid-episode calls.

Clean digits. A task of a family (``DataConfig.companions``) forgets one contamination; the
other tasks' digits stay contaminated by design, in the base model, in the task's retrain oracle
and in every unlearned model, so their samples may be drawn as the companion's Fashion class and
score as poor digits for reasons no method is asked to change. ``kid_retain_clean`` (KID of the
samples of the retain classes whose digit carries no contamination to their held-out real
digits, pooled) and ``acc_retain_clean`` (the mean of their ``acc_<c>``) measure retain quality
on those classes alone. A task without companions has no such metrics (every retain class is
clean: they would equal ``kid_retain`` and ``acc_retain``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import nn

from evaluation.judge import JudgeNet
from evaluation.metrics import (
    RealReference,
    ReferenceFeatures,
    data_level_forgetting,
    forget_calls,
    kid,
    score_samples,
)
from evaluation.sampling import Sampler, evaluation_labels, sample_labels
from unlearn_env.config import ExperimentConfig


@dataclass(frozen=True)
class SampleSize:
    """How many samples a score draws: of the forget label, and of every retain label."""

    forget: int
    retain_per_class: int

    def __post_init__(self) -> None:
        if self.forget < 2 or self.retain_per_class < 2:
            raise ValueError(f"need at least 2 forget-label samples and 2 per retain class (KID, FID), got "
                             f"{self.forget} and {self.retain_per_class}")


def clean_classes(config: ExperimentConfig) -> list[int]:
    """The retain digits that no task of the family contaminates (empty for a task without companions)."""
    family = config.data.family()
    if len(family) < 2:
        return []
    dirty = {task.digit for task in family}
    return [c for c in range(config.model.num_classes) if c not in dirty]


@dataclass
class TaskScorer:
    """Scores models of one task (module docstring); ``features`` are the judge's, with the references' precomputed."""

    config: ExperimentConfig
    scheduler: DDPMScheduler
    judge: JudgeNet
    validator: JudgeNet
    real: RealReference
    features: nn.Module
    clean_reference: torch.Tensor | None = None
    """Held-out real digits of the clean retain classes, pooled (``None`` without companions)."""
    _base: dict[tuple[int, SampleSize, Sampler], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def build(cls, config: ExperimentConfig, scheduler: DDPMScheduler, judge: JudgeNet, validator: JudgeNet,
              judge_features: nn.Module) -> TaskScorer:
        """The scorer of ``config``'s task; ``judge_features`` is the judge's feature extractor."""
        real = RealReference.build(config.data)
        clean = clean_classes(config)
        extractor = real.feature_extractor(judge_features)
        reference = None
        if clean:
            # The pooled clean digits are one more reference set whose features are computed once.
            reference = torch.cat([real.digits[c] for c in clean])
            extractor = ReferenceFeatures(extractor, [reference])
        return cls(config, scheduler, judge, validator, real, extractor, reference)

    @property
    def clean(self) -> list[int]:
        """:func:`clean_classes` of the task."""
        return clean_classes(self.config)

    def labels(self, size: SampleSize) -> torch.Tensor:
        """Label-major labels of a score: ``size.forget`` of the forget class, ``size.retain_per_class`` of the others."""
        return evaluation_labels(self.config.model.num_classes, self.config.data.forget_class, size.forget,
                                 size.retain_per_class)

    def sample(self, unet: nn.Module, seed: int, size: SampleSize, sampler: Sampler) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples of ``unet`` (CPU, model space) and their labels, from seed's noise: the same start for every model."""
        labels = self.labels(size)
        return sample_labels(unet, self.scheduler, self.config.model, labels, seed, sampler), labels

    def base_samples(self, base_unet: nn.Module, seed: int, size: SampleSize, sampler: Sampler
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """The base model's samples of a seed and size, drawn once."""
        key = (seed, size, sampler)
        if key not in self._base:
            self._base[key] = self.sample(base_unet, seed, size, sampler)
        return self._base[key]

    def set_base_samples(self, seed: int, size: SampleSize, sampler: Sampler, samples: torch.Tensor) -> None:
        """Use ``samples`` (e.g. read from a file cache) as the base model's samples of a seed and size."""
        self._base[(seed, size, sampler)] = (samples, self.labels(size))

    def score(self, unet: nn.Module, samples: torch.Tensor, labels: torch.Tensor, base_samples: torch.Tensor,
              seed: int) -> dict[str, float]:
        """Every metric of ``unet``'s ``samples`` (see the module docstring); ``seed`` seeds KID, IS and the loss gap."""
        metrics = score_samples(samples, labels, base_samples, self.judge, self.config, seed,
                                validator=self.validator, real=self.real, features=self.features)
        metrics.update(data_level_forgetting(unet, self.scheduler, self.config, seed))
        clean = self.clean
        if self.clean_reference is not None:
            of_clean = torch.isin(labels, torch.tensor(clean))
            metrics["kid_retain_clean"] = kid(self.clean_reference, samples[of_clean], self.features, seed=seed)[0]
            metrics["acc_retain_clean"] = float(np.mean([metrics[f"acc_{c}"] for c in clean]))
        return metrics

    def probe(self, unet: nn.Module, seed: int, count: int, sampler: Sampler) -> dict[str, float]:
        """The judge's calls on ``count`` forget-label samples from seed's noise: forget rate, digit share, NEITHER
        (NaN for a model whose samples are not finite)."""
        labels = torch.full((count,), self.config.data.forget_class, dtype=torch.int64)
        samples = sample_labels(unet, self.scheduler, self.config.model, labels, seed, sampler)
        keys = ("forget_rate", "forget_digit_share", "neither_forget")
        if not torch.isfinite(samples).all():
            # A diverged model draws no images: the judge's calls on NaNs would read as a forgotten concept.
            return dict.fromkeys(keys, float("nan"))
        calls = forget_calls(samples, self.judge, self.config.data)
        return {key: calls[key] for key in keys}
