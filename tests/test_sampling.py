"""The evaluation sampler: DDIM and DPM-Solver++ from fixed noise."""

from __future__ import annotations

import pytest
import torch

from evaluation.sampling import (
    DDIM_50,
    Sampler,
    dpm_solver,
    evaluation_labels,
    parse_sampler,
    sample,
    sample_labels,
    sample_per_label,
)
from unlearn_env.config import get_config
from unlearn_env.diffusion import build_scheduler, build_unet, ddim_sample, sampling_noise


@pytest.fixture(scope="module")
def model():
    cfg = get_config("test")
    torch.manual_seed(0)
    return cfg, build_unet(cfg.model), build_scheduler(cfg.model)


def test_sampler_names_round_trip_and_bad_ones_are_refused() -> None:
    for sampler in (DDIM_50, Sampler("dpmsolver++", 20)):
        assert parse_sampler(sampler.name) == sampler
    for bad in ("ddim", "euler-10", "dpmsolver++-0", "ddim-x"):
        with pytest.raises(ValueError, match="sampler"):
            parse_sampler(bad)
    with pytest.raises(ValueError, match="positive integer"):
        Sampler("ddim", 0)


def test_dpm_solver_is_deterministic_finite_and_in_range(model) -> None:
    cfg, unet, scheduler = model
    labels = torch.arange(10).repeat_interleave(2)
    noise = sampling_noise(len(labels), cfg.model.image_size, seed=3)
    solver = Sampler("dpmsolver++", 6)
    first = sample(unet, scheduler, labels, noise, solver)
    assert first.shape == noise.shape and torch.isfinite(first).all()
    assert first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, sample(unet, scheduler, labels, noise, solver))
    # The solver keeps a history per batch: batching changes the images by float round-off only.
    assert torch.allclose(first, sample(unet, scheduler, labels, noise, solver, batch_size=7), atol=1e-4)
    assert not torch.allclose(first, sample(unet, scheduler, labels, noise, Sampler("ddim", 6)))


def test_the_batch_size_does_not_change_the_samples(model) -> None:
    cfg, unet, scheduler = model
    labels = torch.arange(10).repeat(4)[:32]
    noise = sampling_noise(len(labels), cfg.model.image_size, seed=5)
    for sampler in (Sampler("dpmsolver++", 3), Sampler("ddim", 3)):
        assert torch.equal(sample(unet, scheduler, labels, noise, sampler),
                           sample(unet, scheduler, labels, noise, sampler, batch_size=16))


def test_ddim_is_todays_sampler(model) -> None:
    cfg, unet, scheduler = model
    labels = torch.arange(10)
    noise = sampling_noise(10, cfg.model.image_size, seed=0)
    assert torch.equal(sample(unet, scheduler, labels, noise, Sampler("ddim", 4)),
                       ddim_sample(unet, scheduler, labels, noise, num_steps=4))


def test_dpm_solver_spans_the_whole_schedule(model) -> None:
    scheduler = model[2]
    solver = dpm_solver(scheduler, 10)
    assert len(solver.timesteps) == 10 and int(solver.timesteps[0]) == 999
    assert solver.config.algorithm_type == "dpmsolver++" and solver.config.solver_order == 2


def test_labels_and_noise_depend_only_on_counts_and_seed(model) -> None:
    cfg, unet, scheduler = model
    labels = evaluation_labels(10, forget_class=1, num_forget=5, num_per_retain=2)
    assert labels.tolist() == [0, 0, *[1] * 5, *[d for d in range(2, 10) for _ in range(2)]]
    images = sample_labels(unet, scheduler, cfg.model, labels, seed=1, sampler=Sampler("dpmsolver++", 3))
    assert images.device.type == "cpu" and images.shape == (len(labels), 1, 28, 28)
    per_label, layout = sample_per_label(unet, scheduler, cfg.model, 2, seed=1, sampler=Sampler("ddim", 3))
    assert layout.tolist() == [d for d in range(10) for _ in range(2)] and per_label.shape[0] == 20
