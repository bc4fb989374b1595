"""Evaluation metrics on real data and on tiny diffusion models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

from evaluation.metrics import (
    RealReference,
    denoising_loss_gap,
    evaluate_unlearning,
    fid_kid,
    forget_calls,
    heldout_concept_images,
    inception_score,
    kid,
    make_feature_extractor,
    per_class_accuracy,
    score_samples,
    ssim,
    validator_calls,
)
from evaluation.sampling import Sampler, evaluation_labels, sample_labels
from unlearn_env.data import build_unlearning_data, digit_split, fashion_images
from unlearn_env.diffusion import build_scheduler, build_unet

# The session's judge, validator and config live in test_judge (one cached judge for both modules).
from test_judge import judge, judge_cfg, single_threaded, validator  # noqa: F401  (pytest fixtures)

SAMPLE_KEYS = {
    "forget_rate", "forget_rate_lo", "forget_rate_hi", "p_concept", "forget_digit_share", "neither_forget",
    "validator_forget_rate", "validator_agreement", "kid_forget", "fid_forget", "kid_forget_concept",
    "fid_forget_concept", "kid_retain", "fid_retain", "acc_retain", "is_retain", "ssim_retain", "neither_retain",
    "n_forget", "n_retain", "n_ref_forget", "n_ref_retain",
}
DATA_LEVEL_KEYS = {"loss_forget_set", "loss_heldout_concept", "loss_gap"}


@pytest.fixture(scope="module")
def real(judge_cfg) -> RealReference:
    return RealReference.build(judge_cfg.data)


def _halves(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    half = len(images) // 2
    return images[order[:half]], images[order[half:]]


def _rows(images: torch.Tensor | np.ndarray) -> set[bytes]:
    if isinstance(images, torch.Tensor):
        images = ((images[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    return {image.tobytes() for image in images}


def test_real_reference_holds_heldout_images(real, judge_cfg) -> None:
    assert real.forget_digits.shape == (100, 1, 28, 28)
    assert real.retain_digits.shape == (900, 1, 28, 28)
    assert real.concept.shape == (1000, 1, 28, 28)
    assert sorted(real.digits) == list(range(10)) and real.retain_classes() == [0, *range(2, 10)]
    assert real.retain_digits.min() >= -1 and real.retain_digits.max() <= 1
    capped = RealReference.build(judge_cfg.data, max_per_class=10)
    assert (len(capped.forget_digits), len(capped.retain_digits), len(capped.concept)) == (10, 90, 10)
    # The task's concept, not trousers: another Fashion-MNIST class gives other images.
    shirts = RealReference.build(judge_cfg.with_overrides(fashion_class=6).data)
    assert not _rows(shirts.concept) & _rows(real.concept)


def test_references_are_never_training_images(real, judge_cfg) -> None:
    data = judge_cfg.data
    train = _rows(digit_split(data.mnist_dir).train_images)
    assert not _rows(torch.cat(list(real.digits.values()))) & train
    generator_forget = _rows(fashion_images(data.fashion_dir, data.fashion_class, "forget"))
    judge_pool = _rows(fashion_images(data.fashion_dir, data.fashion_class, "judge"))
    assert not _rows(real.concept) & (generator_forget | judge_pool)


def test_fid_kid_near_zero_for_real_halves_and_large_for_noise(real, judge) -> None:
    first, second = _halves(real.retain_digits)
    noise = torch.rand(first.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    fid_real, kid_real, _ = fid_kid(first, second, judge, kid_subsets=20)
    fid_noise, kid_noise, _ = fid_kid(first, noise, judge, kid_subsets=20)
    fid_concept, kid_concept, _ = fid_kid(first, real.concept, judge, kid_subsets=20)
    assert 0 <= fid_real < 0.05 * fid_noise
    assert abs(kid_real) < 0.05 * kid_noise
    # Digits and the concept are far apart too: the features see what the forget metrics measure.
    assert fid_concept > 10 * fid_real and kid_concept > 10 * abs(kid_real)
    assert kid(first, noise, judge, kid_subsets=20)[0] == kid_noise


def test_fid_kid_is_deterministic_and_handles_small_sets(real, judge) -> None:
    a, b = real.retain_digits[:5], real.concept[:3]
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
    is_concept, _ = inception_score(real.concept, judge)
    # Nine balanced, confidently classified classes: close to 9; one class or noise: close to 1.
    assert is_digits > 6 and std >= 0
    assert is_concept < 1.5 and is_noise < 3
    assert inception_score(real.retain_digits[:5], judge)[0] > 1  # fewer images than splits


def test_ssim_is_one_for_identical_images_and_lower_otherwise(real) -> None:
    first, second = _halves(real.retain_digits)
    assert ssim(first, first) == pytest.approx(1.0, abs=1e-6)
    assert ssim(first, second) < 0.8
    padded = torch.nn.functional.pad(first, (2, 2, 2, 2), value=-1.0)
    assert ssim(padded, torch.nn.functional.pad(first, (2, 2, 2, 2), value=0.0)) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        ssim(first, second[:-1])


def test_forget_calls_on_real_images(real, judge, judge_cfg) -> None:
    data = judge_cfg.data
    concept = forget_calls(real.concept, judge, data)
    assert concept["forget_rate"] > 0.9 and concept["p_concept"] > 0.85
    assert concept["forget_rate_lo"] <= concept["forget_rate"] <= concept["forget_rate_hi"]
    assert concept["forget_rate_hi"] - concept["forget_rate_lo"] < 0.05  # Wilson at n = 1,000
    assert concept["forget_digit_share"] < 0.02 and concept["neither_forget"] < 0.05
    ones = forget_calls(real.forget_digits, judge, data)
    assert ones["forget_rate"] < 0.05 and ones["forget_digit_share"] > 0.9
    noise = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(3)) * 2 - 1
    garbage = forget_calls(noise, judge, data)
    # Noise is neither trousers nor ones: a model drawing it has not "forgotten", it has collapsed.
    assert garbage["neither_forget"] > 0.95 and garbage["forget_rate"] < 0.05 and garbage["forget_digit_share"] < 0.05
    # Another task's concept is scored by its own class.
    shirts = judge_cfg.with_overrides(fashion_class=8).data
    assert forget_calls(real.concept, judge, shirts)["forget_rate"] < 0.05


def test_validator_cross_checks_the_judge(real, judge, validator, judge_cfg) -> None:
    calls = validator_calls(real.concept, judge, validator, judge_cfg.data)
    assert calls["validator_forget_rate"] > 0.85 and calls["validator_agreement"] > 0.85
    assert validator_calls(real.concept, judge, judge, judge_cfg.data)["validator_agreement"] == 1.0


def test_per_class_accuracy_on_real_images(real, judge) -> None:
    labels = torch.tensor(real.retain_classes()).repeat_interleave(100)
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
def test_evaluate_unlearning_of_identical_models(judge, validator, judge_cfg, real, image_size: int) -> None:
    cfg = judge_cfg.with_overrides(image_size=image_size)
    torch.manual_seed(0)
    unet, scheduler = build_unet(cfg.model), build_scheduler(cfg.model)
    sampler = Sampler("ddim", 2)
    kwargs = dict(validator=validator, num_forget=6, sampler=sampler, real=real, loss_draws=1)
    result = evaluate_unlearning(unet, unet, scheduler, judge, cfg, 3, 0, **kwargs)
    metrics = result.metrics
    retain = [0, *range(2, 10)]
    expected = SAMPLE_KEYS | DATA_LEVEL_KEYS | {f"kid_retain_{c}" for c in retain} | {f"acc_{c}" for c in retain}
    assert expected <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["ssim_retain"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["forget_rate_lo"] <= metrics["forget_rate"] <= metrics["forget_rate_hi"]
    assert 0 <= metrics["acc_retain"] <= 1 and 0 <= metrics["validator_agreement"] <= 1
    assert (metrics["n_forget"], metrics["n_retain"], metrics["n_ref_forget"], metrics["n_ref_retain"]) == (6, 27, 100,
                                                                                                            900)
    assert metrics["loss_gap"] == pytest.approx(metrics["loss_forget_set"] - metrics["loss_heldout_concept"])
    assert result.images.shape == (33, 28, 28) and result.images.dtype == np.uint8
    assert result.labels.tolist() == [0] * 3 + [1] * 6 + [d for d in range(2, 10) for _ in range(3)]

    # Precomputed base samples give the same numbers; a different model gives another SSIM.
    labels = evaluation_labels(10, cfg.data.forget_class, 6, 3)
    base_samples = sample_labels(unet, scheduler, cfg.model, labels, 0, sampler)
    other = build_unet(cfg.model)
    reused = evaluate_unlearning(unet, None, scheduler, judge, cfg, 3, 0, base_samples=base_samples, **kwargs)
    assert reused.metrics == metrics
    changed = evaluate_unlearning(other, None, scheduler, judge, cfg, 3, 0, base_samples=base_samples, **kwargs)
    assert changed.metrics["ssim_retain"] < 0.99


def test_kid_per_retain_class_compares_with_that_class(judge, validator, judge_cfg, real) -> None:
    # "Samples" that are real held-out digits of the right class, but with 3s drawn where 5s were asked for.
    labels = torch.tensor([c for c in range(10) for _ in range(20)])
    samples = torch.cat([real.digits[3 if c == 5 else c][20:40] for c in range(10)])
    metrics = score_samples(samples, labels, samples.clone(), judge, judge_cfg, seed=0, validator=validator, real=real)
    assert metrics["kid_retain_5"] > 10 * max(abs(metrics[f"kid_retain_{c}"]) for c in (0, 2, 3, 4, 6, 7, 8, 9))
    assert metrics["acc_5"] < 0.1 and min(metrics[f"acc_{c}"] for c in (0, 2, 3, 4, 6, 7, 8, 9)) > 0.8
    assert metrics["forget_digit_share"] > 0.8 and metrics["forget_rate"] == 0.0


def test_reference_features_match_fresh_extraction(real, judge) -> None:
    cached = real.feature_extractor(make_feature_extractor(judge))
    fake = real.retain_digits[:50].flip(-1)
    assert torch.equal(cached(real.concept), make_feature_extractor(judge)(real.concept))
    assert torch.equal(cached(real.digits[3]), make_feature_extractor(judge)(real.digits[3]))
    expected = fid_kid(real.retain_digits, fake, judge, kid_subsets=5)
    assert fid_kid(real.retain_digits, fake, cached, kid_subsets=5) == expected


def test_diverged_samples_are_refused_not_scored_as_forgotten(judge, validator, judge_cfg, real) -> None:
    # argmax maps a NaN row to class 0, so NaN samples would otherwise show a forget rate of 0.
    labels = torch.arange(10).repeat_interleave(2)
    samples = real.retain_digits[: len(labels)].clone()
    base = samples.clone()
    samples[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        score_samples(samples, labels, base, judge, judge_cfg, seed=0, validator=validator, real=real)


def test_denoising_loss_gap_uses_common_random_numbers(judge_cfg) -> None:
    cfg = judge_cfg
    torch.manual_seed(0)
    unet, scheduler = build_unet(cfg.model), build_scheduler(cfg.model)
    forget = build_unlearning_data(cfg.data, cfg.model.image_size).forget_images
    heldout = heldout_concept_images(cfg.data, len(forget), cfg.model.image_size)
    assert torch.equal(heldout, heldout_concept_images(cfg.data, len(forget), cfg.model.image_size))
    assert not _rows(heldout) & _rows(fashion_images(cfg.data.fashion_dir, cfg.data.fashion_class, "forget"))

    first = denoising_loss_gap(unet, scheduler, forget, heldout, 0, class_label=1, draws=2)
    assert set(first) == DATA_LEVEL_KEYS
    assert first == denoising_loss_gap(unet, scheduler, forget, heldout, 0, class_label=1, draws=2)
    copy = build_unet(cfg.model)
    copy.load_state_dict(unet.state_dict())
    assert first == denoising_loss_gap(copy, scheduler, forget, heldout, 0, class_label=1, draws=2)
    rebatched = denoising_loss_gap(unet, scheduler, forget, heldout, 0, class_label=1, draws=2, batch_size=7)
    assert rebatched == pytest.approx(first, abs=1e-6)
    # The sum's blocks are fixed whatever the batch: batches of 16 images or more give the same figures exactly.
    whole = denoising_loss_gap(unet, scheduler, forget, heldout, 0, class_label=1, draws=4)
    assert denoising_loss_gap(unet, scheduler, forget, heldout, 0, class_label=1, draws=4, batch_size=26) == whole
    assert first != denoising_loss_gap(unet, scheduler, forget, heldout, 1, class_label=1, draws=2)
    # The same images on both sides: the same noise and timesteps, so exactly no gap.
    same = denoising_loss_gap(unet, scheduler, forget, forget.clone(), 0, class_label=1, draws=2)
    assert same["loss_gap"] == 0.0
    with pytest.raises(ValueError, match="equal sizes"):
        denoising_loss_gap(unet, scheduler, forget, heldout[:-1], 0, class_label=1)
