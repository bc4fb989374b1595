"""Evaluation metrics on real data and on tiny diffusion models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

from unlearn_env.diffusion import build_scheduler, build_unet
from evaluation.metrics import (
    RealReference,
    evaluate_unlearning,
    fid_kid,
    inception_score,
    make_feature_extractor,
    per_class_accuracy,
    sample_per_label,
    score_samples,
    ssim,
    trouser_stats,
)

# The session's judge and its config live in test_judge (one cached judge for both modules).
from test_judge import judge, judge_cfg, single_threaded  # noqa: F401  (pytest fixtures)


@pytest.fixture(scope="module")
def real(judge_cfg) -> RealReference:
    return RealReference.build(judge_cfg.data)


def _halves(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    half = len(images) // 2
    return images[order[:half]], images[order[half:]]


def test_real_reference_holds_heldout_images(real, judge_cfg) -> None:
    assert real.forget_digits.shape == (100, 1, 28, 28)
    assert real.retain_digits.shape == (900, 1, 28, 28)
    assert real.trousers.shape == (1000, 1, 28, 28)
    assert real.retain_digits.min() >= -1 and real.retain_digits.max() <= 1
    capped = RealReference.build(judge_cfg.data, max_per_class=10)
    assert (len(capped.forget_digits), len(capped.retain_digits), len(capped.trousers)) == (10, 90, 10)


def test_fid_kid_near_zero_for_real_halves_and_large_for_noise(real, judge) -> None:
    first, second = _halves(real.retain_digits)
    noise = torch.rand(first.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    fid_real, kid_real, _ = fid_kid(first, second, judge, kid_subsets=20)
    fid_noise, kid_noise, _ = fid_kid(first, noise, judge, kid_subsets=20)
    fid_trousers, kid_trousers, _ = fid_kid(first, real.trousers, judge, kid_subsets=20)
    assert 0 <= fid_real < 0.05 * fid_noise
    assert abs(kid_real) < 0.05 * kid_noise
    # Digits and trousers are far apart too: the features see what the forget metrics measure.
    assert fid_trousers > 10 * fid_real and kid_trousers > 10 * abs(kid_real)


def test_fid_kid_is_deterministic_and_handles_small_sets(real, judge) -> None:
    a, b = real.retain_digits[:5], real.trousers[:3]
    # KID's default subset size (1000) exceeds both sets: it is capped at the smaller one.
    result = fid_kid(a, b, judge)
    assert all(math.isfinite(v) for v in result)
    assert result == fid_kid(a, b, judge)
    with pytest.raises(ValueError, match="at least 2"):
        fid_kid(a, b[:1], judge)


def test_inception_score_rewards_confident_diverse_samples(real, judge) -> None:
    noise = torch.rand(real.retain_digits.shape, generator=torch.Generator().manual_seed(2)) * 2 - 1
    is_digits, std = inception_score(real.retain_digits, judge)
    is_noise, _ = inception_score(noise, judge)
    is_trousers, _ = inception_score(real.trousers, judge)
    # Nine balanced, confidently classified classes: close to 9; one class or noise: close to 1.
    assert is_digits > 6 and std >= 0
    assert is_trousers < 1.5 and is_noise < 3
    assert inception_score(real.retain_digits[:5], judge)[0] > 1  # fewer images than splits


def test_ssim_is_one_for_identical_images_and_lower_otherwise(real) -> None:
    first, second = _halves(real.retain_digits)
    assert ssim(first, first) == pytest.approx(1.0, abs=1e-6)
    assert ssim(first, second) < 0.8
    padded = torch.nn.functional.pad(first, (2, 2, 2, 2), value=-1.0)
    assert ssim(padded, torch.nn.functional.pad(first, (2, 2, 2, 2), value=0.0)) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        ssim(first, second[:-1])


def test_trouser_stats_and_per_class_accuracy_on_real_images(real, judge) -> None:
    rate, p_trouser = trouser_stats(real.trousers, judge)
    assert rate > 0.95 and p_trouser > 0.9
    rate, p_trouser = trouser_stats(real.retain_digits, judge)
    assert rate < 0.02 and p_trouser < 0.05
    rate, _ = trouser_stats(real.forget_digits, judge)
    assert rate < 0.05
    labels = torch.tensor([d for d in range(10) if d != 1]).repeat_interleave(100)
    accuracy = per_class_accuracy(real.retain_digits, labels, judge)
    assert sorted(accuracy) == [0, 2, 3, 4, 5, 6, 7, 8, 9]
    assert min(accuracy.values()) > 0.8
    assert per_class_accuracy(real.retain_digits, torch.zeros(900, dtype=torch.long), judge)[0] < 0.2


def test_inception_option_requires_a_weights_file(judge) -> None:
    with pytest.raises(ValueError, match="inception_weights"):
        make_feature_extractor(judge, "inception")
    if not _TORCH_FIDELITY_AVAILABLE:
        with pytest.raises(ModuleNotFoundError, match="torch-fidelity"):
            make_feature_extractor(judge, "inception", "/nonexistent/weights.pth")


@pytest.mark.parametrize("image_size", [28, 32])
def test_evaluate_unlearning_of_identical_models(judge, judge_cfg, real, image_size: int) -> None:
    cfg = judge_cfg.with_overrides(image_size=image_size)
    torch.manual_seed(0)
    unet, scheduler = build_unet(cfg.model), build_scheduler(cfg.model)
    result = evaluate_unlearning(unet, unet, scheduler, judge, cfg, num_per_label=3, seed=0, ddim_steps=2, real=real)
    metrics = result.metrics
    expected = {
        "trouser_rate", "p_trouser", "fid_forget", "kid_forget", "fid_forget_trousers", "kid_forget_trousers",
        "fid_retain", "kid_retain", "is_retain", "acc_retain", "ssim_retain",
        *(f"acc_class_{d}" for d in range(10)),
    }
    assert expected <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["ssim_retain"] == pytest.approx(1.0, abs=1e-6)
    assert 0 <= metrics["trouser_rate"] <= 1 and 0 <= metrics["acc_retain"] <= 1
    assert result.images.shape == (30, 28, 28) and result.images.dtype == np.uint8
    assert result.labels.tolist() == [d for d in range(10) for _ in range(3)]

    # Precomputed base samples give the same numbers; a different model gives another SSIM.
    base_samples, _ = sample_per_label(unet, scheduler, cfg.model, num_per_label=3, seed=0, ddim_steps=2)
    other = build_unet(cfg.model)
    reused = evaluate_unlearning(
        unet, None, scheduler, judge, cfg, num_per_label=3, seed=0, ddim_steps=2, real=real, base_samples=base_samples
    )
    assert reused.metrics == metrics
    changed = evaluate_unlearning(
        other, None, scheduler, judge, cfg, num_per_label=3, seed=0, ddim_steps=2, real=real, base_samples=base_samples
    )
    assert changed.metrics["ssim_retain"] < 0.99


def test_reference_features_match_fresh_extraction(real, judge) -> None:
    cached = real.feature_extractor(make_feature_extractor(judge))
    fake = real.retain_digits[:50].flip(-1)
    assert torch.equal(cached(real.trousers), make_feature_extractor(judge)(real.trousers))
    expected = fid_kid(real.retain_digits, fake, judge, kid_subsets=5)
    assert fid_kid(real.retain_digits, fake, cached, kid_subsets=5) == expected


def test_diverged_samples_are_refused_not_scored_as_forgotten(judge, judge_cfg, real) -> None:
    # argmax maps a NaN row to class 0, so NaN samples would otherwise show a trouser rate of 0.
    labels = torch.arange(10).repeat_interleave(2)
    samples = real.retain_digits[: len(labels)].clone()
    base = samples.clone()
    samples[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        score_samples(samples, labels, base, judge, judge_cfg, seed=0, real=real)
