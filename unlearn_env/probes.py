"""Probe measurements: plain epsilon-losses of a model on an episode's fixed images, timesteps and noise.

The reward must score the model *after* the action's update (SPEC §5): the minibatch losses of
the update itself are measured before it and are unbiased for every lambda, so their
expectation cannot depend on the action. A :class:`ProbeSet` is drawn once per episode from
the reset seed: ``size`` retain images from a pool the updates never draw (:func:`holdout_mask`),
``size`` forget images (mirrored like the pretraining's, when it mirrors them), stratified
timesteps and Gaussian noise. Every probe of the episode reuses them (common random numbers),
and so does every method run on the same seed, so differences between steps and between
methods are not drowned in fresh noise.

Probe losses are *plain* (unweighted) denoising losses ||eps - eps_theta(m_t, t, c)||^2, means
over pixels and over the probe images of each side: one forward pass, no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


@dataclass
class ProbeSet:
    """An episode's probe images (retain first, then forget), labels, timesteps and noise, on one device."""

    images: Tensor
    """(2P, C, H, W): P retain images, then P forget images."""
    labels: Tensor
    timesteps: Tensor
    noise: Tensor
    num_retain: int

    def to(self, device: torch.device | str) -> ProbeSet:
        """A copy on ``device``."""
        return ProbeSet(self.images.to(device), self.labels.to(device), self.timesteps.to(device),
                        self.noise.to(device), self.num_retain)


def holdout_mask(labels: Tensor, share: float, minimum: int, seed: int = 0) -> Tensor:
    """A stratified, seeded choice of about ``share`` of the images (at least ``minimum``): the retain probe pool.

    Every label keeps its proportion (at least one image each); the rest of the retain set is
    what the updates draw from.
    """
    values = labels.cpu().numpy()
    total = min(len(values), max(minimum, round(share * len(values))))
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for label in np.unique(values):
        idx = np.flatnonzero(values == label)
        count = min(len(idx), max(1, round(total * len(idx) / len(values))))
        chosen.append(rng.choice(idx, size=count, replace=False))
    mask = torch.zeros(len(values), dtype=torch.bool)
    mask[torch.from_numpy(np.concatenate(chosen))] = True
    return mask.to(labels.device)


def stratified_timesteps(count: int, num_timesteps: int, generator: torch.Generator) -> Tensor:
    """``count`` timesteps, one uniform draw in each of ``count`` equal strata of [0, T), in random order.

    Stratification spreads a small probe over every noise level, which lowers the variance of
    its mean loss against i.i.d. timesteps.
    """
    offsets = torch.rand(count, generator=generator)
    strata = torch.randperm(count, generator=generator)
    return ((strata + offsets) * num_timesteps / count).long().clamp_(max=num_timesteps - 1)


def draw_probe_set(
    retain_images: Tensor,
    retain_labels: Tensor,
    forget_images: Tensor,
    forget_labels: Tensor,
    size: int,
    num_timesteps: int,
    hflip_forget: bool,
    generator: torch.Generator,
) -> ProbeSet:
    """The probe set of an episode, from a CPU ``generator`` (so it is the same on every device).

    ``retain_images`` is the probe pool (never drawn by an update); retain images are taken
    without replacement, forget images without replacement while A has enough of them.
    """
    device = retain_images.device
    ir = torch.randperm(len(retain_images), generator=generator)[:size]
    if len(ir) < size:
        ir = torch.randint(len(retain_images), (size,), generator=generator)
    if len(forget_images) >= size:
        ia = torch.randperm(len(forget_images), generator=generator)[:size]
    else:
        ia = torch.randint(len(forget_images), (size,), generator=generator)
    forget = forget_images.cpu()[ia]
    if hflip_forget:
        flip = torch.rand(size, generator=generator) < 0.5
        forget = torch.where(flip.view(-1, 1, 1, 1), forget.flip(-1), forget)
    timesteps = torch.cat([stratified_timesteps(size, num_timesteps, generator) for _ in range(2)])
    images = torch.cat([retain_images.cpu()[ir], forget])
    noise = torch.randn(images.shape, generator=generator)
    labels = torch.cat([retain_labels.cpu()[ir], forget_labels.cpu()[ia]])
    return ProbeSet(images, labels, timesteps, noise, size).to(device)


def noisy_inputs(probe: ProbeSet, gamma: Tensor, sigma: Tensor) -> Tensor:
    """m_t = gamma_t x + sigma_t eps for every probe image."""
    shape = (-1,) + (1,) * (probe.images.dim() - 1)
    return gamma[probe.timesteps].view(shape) * probe.images + sigma[probe.timesteps].view(shape) * probe.noise


def loss_pair(eps_pred: Tensor, probe: ProbeSet) -> Tensor:
    """``(L_retain, L_forget)`` of one model's predictions on the probe set: plain losses, means over pixels and images."""
    errors = (eps_pred.float() - probe.noise).flatten(1).square().mean(1)
    return torch.stack([errors[: probe.num_retain].mean(), errors[probe.num_retain :].mean()])


@torch.no_grad()
def probe_losses(model: nn.Module, probe: ProbeSet, gamma: Tensor, sigma: Tensor) -> Tensor:
    """``(L_retain, L_forget)`` of ``model`` on ``probe``: one forward pass without gradient, on the probe's device."""
    eps_pred = model(noisy_inputs(probe, gamma, sigma), probe.timesteps, class_labels=probe.labels).sample
    return loss_pair(eps_pred, probe)
