"""SISS: Subtracted Importance Sampled Scores (SPEC §3), as pure functions.

Reductions: every squared error is a **mean over pixels**; every loss is a **mean
over the batch**. ``L_r`` and ``L_f`` therefore have the scale of the usual
DDPM loss (about 1 for an untrained model).

Class conditioning. The model is class-conditional, so a sample is a pair
(noisy image m_t, label c). The mixture draws the pair from x's component
(m_t ~ q(.|x), c = c_x) with probability 1 - lambda, else from a's (c = c_a),
and the importance weights are ratios of these joint densities:

* same label (c_x = c_a), the weights of SPEC §3::

      w_x = exp(-logaddexp(log(1-lambda), log(lambda) + d_x - d_a))
      w_a = exp(-logaddexp(log(1-lambda) + d_a - d_x, log(lambda)))

* different labels: the drawn label tells the component apart, so
  w_x = 1/(1-lambda) on x-draws and 0 on a-draws, and w_a = 1/lambda on
  a-draws and 0 on x-draws.

Both cases keep the estimators unbiased: E[w_x * f(m_t, c)] equals the plain
retain loss E_{m_t~q(.|x)} f(m_t, c_x), and likewise for the forget side, with
one forward pass per pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unlearn_env.config import SISSMode, UnlearnConfig


@dataclass
class SISSBatch:
    """One SISS minibatch: retain/forget pairs, their timesteps and all the randomness of the mixture."""

    x: Tensor
    """Retain images (B, C, H, W)."""
    x_labels: Tensor
    a: Tensor
    """Forget images (B, C, H, W)."""
    a_labels: Tensor
    timesteps: Tensor
    """Shared timestep of each pair (B,)."""
    noise: Tensor
    """Gaussian noise epsilon (B, C, H, W)."""
    coin: Tensor
    """Uniform [0, 1) draws (B,); the pair takes a's component where coin < lambda."""


def draw_batch(
    retain_images: Tensor,
    retain_labels: Tensor,
    forget_images: Tensor,
    forget_labels: Tensor,
    batch_size: int,
    num_timesteps: int,
    generator: torch.Generator,
    hflip_forget: bool = False,
) -> SISSBatch:
    """Draw B retain and B forget samples (with replacement), timesteps, noise and coins.

    With ``hflip_forget`` each forget sample is mirrored with probability 1/2, as the base model's
    pretraining augments them (``PretrainConfig.hflip_forget``): the model learned the mirror
    images too, so they are part of what must be forgotten. Digits are never mirrored.
    """
    device = retain_images.device
    ix = torch.randint(len(retain_images), (batch_size,), generator=generator, device=device)
    ia = torch.randint(len(forget_images), (batch_size,), generator=generator, device=device)
    timesteps = torch.randint(num_timesteps, (batch_size,), generator=generator, device=device)
    noise = torch.randn(
        (batch_size, *retain_images.shape[1:]), generator=generator, device=device, dtype=retain_images.dtype
    )
    coin = torch.rand(batch_size, generator=generator, device=device)
    a = forget_images[ia]
    if hflip_forget:
        flip = torch.rand(batch_size, generator=generator, device=device) < 0.5
        a = torch.where(_per_sample(flip, a), a.flip(-1), a)
    return SISSBatch(retain_images[ix], retain_labels[ix], a, forget_labels[ia], timesteps, noise, coin)


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a (B,) tensor to broadcast against images like (B, C, H, W)."""
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def mixture_sample(batch: SISSBatch, lam: Tensor | float, gamma: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Noisy inputs from q_lambda, their labels, and which pairs took the forget component.

    ``gamma`` and ``sigma`` are the per-timestep tables sqrt(abar_t), sqrt(1 - abar_t); ``lam``
    is a scalar or one value per pair.
    Returns ``(m_t, labels, from_forget)``; the coin flips carry no gradient.
    """
    lam_value = lam.detach() if isinstance(lam, Tensor) else lam
    from_forget = batch.coin < lam_value
    source = torch.where(_per_sample(from_forget, batch.x), batch.a, batch.x)
    g = _per_sample(gamma[batch.timesteps], batch.x)
    s = _per_sample(sigma[batch.timesteps], batch.x)
    m_t = g * source + s * batch.noise
    labels = torch.where(from_forget, batch.a_labels, batch.x_labels)
    return m_t, labels, from_forget


def half_sq_distance(m_t: Tensor, x: Tensor, gamma_t: Tensor, sigma_t: Tensor) -> Tensor:
    """d = ||m_t - gamma_t x||^2 / (2 sigma_t^2), summed over pixels: minus the Gaussian log-density up to a constant."""
    diff = m_t - _per_sample(gamma_t, x) * x
    return diff.flatten(1).square().sum(1) / (2.0 * sigma_t.square())


def importance_weights(
    d_x: Tensor, d_a: Tensor, same_label: Tensor, from_forget: Tensor, lam: Tensor | float
) -> tuple[Tensor, Tensor]:
    """w_x = q(m,c|x)/q_lambda(m,c) and w_a = q(m,c|a)/q_lambda(m,c), computed in log space.

    ``same_label`` marks pairs with c_x = c_a (the SPEC §3 formula applies); elsewhere the
    drawn component (``from_forget``) alone decides. Differentiable in ``lam``; never NaN or
    inf for finite distances, however far apart x and a are.
    """
    lam = torch.as_tensor(lam, dtype=d_x.dtype, device=d_x.device)
    log_lam, log_1m_lam = torch.log(lam), torch.log1p(-lam)
    # Zero the distance gap where it is unused so that no inf - inf reaches the gradient.
    gap = torch.where(same_label, d_x - d_a, torch.zeros_like(d_x))
    w_x_same = torch.exp(-torch.logaddexp(log_1m_lam, log_lam + gap))
    w_a_same = torch.exp(-torch.logaddexp(log_1m_lam - gap, log_lam))
    zero = torch.zeros_like(d_x)
    w_x_diff = torch.where(from_forget, zero, torch.exp(-log_1m_lam).expand_as(d_x))
    w_a_diff = torch.where(from_forget, torch.exp(-log_lam).expand_as(d_x), zero)
    return torch.where(same_label, w_x_same, w_x_diff), torch.where(same_label, w_a_same, w_a_diff)


def siss_objective(loss_retain: Tensor | float, loss_forget: Tensor | float, n: int, k: int, superfactor: float) -> Tensor | float:
    """L_SISS = n/(n-k) L_r - (1+s) k/(n-k) L_f."""
    coef_r, coef_f = weights_coefficients(n, k, superfactor)
    return coef_r * loss_retain - coef_f * loss_forget


def weights_coefficients(n: int, k: int, superfactor: float) -> tuple[float, float]:
    """The paper's constants (n/(n-k), (1+s) k/(n-k))."""
    if not 0 < k < n:
        raise ValueError(f"need 0 < k < n, got n={n}, k={k}")
    return n / (n - k), (1.0 + superfactor) * k / (n - k)


@dataclass(frozen=True)
class UpdateRule:
    """How the two gradients become one update: SPEC §3's combination rule and the gradient clip.

    ``rescale_norm`` and ``max_grad_norm`` are per-pixel values (our losses are means over
    pixels); :meth:`from_config` converts the config's pixel-sum values (the official code's
    units) by dividing by the number of pixels.
    """

    mode: SISSMode
    n: int
    k: int
    superfactor: float
    rescale_norm: float
    max_grad_norm: float | None
    pixels: int = 1
    """Values per image: per-pixel norms times this are in the config's (official) pixel-sum units."""

    @classmethod
    def from_config(cls, cfg: UnlearnConfig, n: int, k: int, pixels: int) -> UpdateRule:
        """The rule of ``cfg`` for a dataset of n images with k to forget, on images of ``pixels`` values."""
        clip = None if cfg.max_grad_norm is None or not math.isfinite(cfg.max_grad_norm) else cfg.max_grad_norm / pixels
        return cls(cfg.mode, n, k, cfg.superfactor, cfg.rescale_norm / pixels, clip, pixels)

    def coefficients(self, norm_forget: Tensor) -> tuple[Tensor | float, Tensor | float]:
        """(c_r, c_f) such that the update direction is c_r * grad L_r - c_f * grad L_f.

        ``weights``: the paper's constants. ``rescale``: the official code's rule, which scales
        the forget gradient to norm ``rescale_norm`` (c_r = 1, c_f = c / ||grad L_f||).
        """
        if self.mode == "weights":
            return weights_coefficients(self.n, self.k, self.superfactor)
        return 1.0, self.rescale_norm / norm_forget.clamp_min(1e-12)


def pair_terms(
    eps_pred: Tensor,
    m_t: Tensor,
    batch: SISSBatch,
    from_forget: Tensor,
    lam: Tensor | float,
    gamma: Tensor,
    sigma: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-pair squared errors against both targets and importance weights: ``(err_x, err_a, w_x, w_a)``.

    ``err_x = ||e_x - eps_pred||^2`` and ``err_a = ||e_a - eps_pred||^2`` (means over pixels) carry
    the model's gradient; the weights carry gradient in ``lam`` only. ``lam`` may be a scalar
    or one value per pair.
    """
    gamma_t, sigma_t = gamma[batch.timesteps], sigma[batch.timesteps]
    g, s = _per_sample(gamma_t, m_t), _per_sample(sigma_t, m_t)
    target_x = (m_t - g * batch.x) / s
    target_a = (m_t - g * batch.a) / s
    err_x = (target_x - eps_pred).flatten(1).square().mean(1)
    err_a = (target_a - eps_pred).flatten(1).square().mean(1)
    with torch.no_grad():
        d_x = half_sq_distance(m_t, batch.x, gamma_t, sigma_t)
        d_a = half_sq_distance(m_t, batch.a, gamma_t, sigma_t)
    w_x, w_a = importance_weights(d_x, d_a, batch.x_labels == batch.a_labels, from_forget, lam)
    return err_x, err_a, w_x, w_a


@dataclass
class SISSMeasurement:
    """Losses and gradients of one SISS forward pass (two backward passes)."""

    loss_retain: Tensor
    """L_r, detached scalar."""
    loss_forget: Tensor
    """L_f, detached scalar."""
    grad_retain: list[Tensor]
    grad_forget: list[Tensor]
    norm_retain: Tensor
    norm_forget: Tensor
    loss_retain_lam: Tensor
    """L_r as a function of lambda only (errors detached): carries d/dlambda when lambda does."""
    loss_forget_lam: Tensor
    mixture_share: Tensor
    """Share of the batch drawn from the forget component."""


def measure(
    model: nn.Module,
    params: list[nn.Parameter],
    batch: SISSBatch,
    lam: Tensor | float,
    gamma: Tensor,
    sigma: Tensor,
) -> SISSMeasurement:
    """One forward pass on the mixture, then grad L_r and grad L_f by two backward passes."""
    return measure_with_sensitivity(model, params, batch, lam, gamma, sigma, sensitivity=False)[0]


def measure_with_sensitivity(
    model: nn.Module,
    params: list[nn.Parameter],
    batch: SISSBatch,
    lam: Tensor | float,
    gamma: Tensor,
    sigma: Tensor,
    sensitivity: bool = True,
) -> tuple[SISSMeasurement, list[Tensor] | None, list[Tensor] | None]:
    """:func:`measure`, plus d(grad L_r)/d lambda and d(grad L_f)/d lambda by two more backward passes.

    With the coins frozen, grad L_r(theta; lambda) = mean_i w_x,i(lambda) grad err_x,i, so its
    lambda-derivative is grad_theta of mean_i (d w_x,i / d lambda) err_x,i: the mixed second
    derivative of L_r, one backward pass through the same forward graph (likewise for L_f).
    The one-step look-ahead of the VI baseline differentiates the update through it.
    """
    m_t, labels, from_forget = mixture_sample(batch, lam, gamma, sigma)
    eps_pred = model(m_t, batch.timesteps, class_labels=labels).sample
    if sensitivity and not (isinstance(lam, Tensor) and lam.requires_grad):
        lam = torch.as_tensor(lam, dtype=torch.float32, device=m_t.device).detach().requires_grad_()
    err_x, err_a, w_x, w_a = pair_terms(eps_pred, m_t, batch, from_forget, lam, gamma, sigma)
    loss_retain = (w_x.detach() * err_x).mean()
    loss_forget = (w_a.detach() * err_a).mean()
    grad_retain = list(torch.autograd.grad(loss_retain, params, retain_graph=True, materialize_grads=True))
    grad_forget = list(torch.autograd.grad(loss_forget, params, retain_graph=sensitivity, materialize_grads=True))
    d_retain = d_forget = None
    if sensitivity:
        slope_r = torch.autograd.grad((w_x * err_x).mean(), lam, create_graph=True)[0]
        slope_f = torch.autograd.grad((w_a * err_a).mean(), lam, create_graph=True)[0]
        d_retain = list(torch.autograd.grad(slope_r, params, retain_graph=True, materialize_grads=True))
        d_forget = list(torch.autograd.grad(slope_f, params, retain_graph=True, materialize_grads=True))
    measurement = SISSMeasurement(
        loss_retain=loss_retain.detach(),
        loss_forget=loss_forget.detach(),
        grad_retain=grad_retain,
        grad_forget=grad_forget,
        norm_retain=torch.nn.utils.get_total_norm(grad_retain),
        norm_forget=torch.nn.utils.get_total_norm(grad_forget),
        loss_retain_lam=(w_x * err_x.detach()).mean(),
        loss_forget_lam=(w_a * err_a.detach()).mean(),
        mixture_share=from_forget.float().mean(),
    )
    return measurement, d_retain, d_forget


def apply_update(
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    grad_retain: list[Tensor],
    grad_forget: list[Tensor],
    coef_retain: Tensor | float,
    coef_forget: Tensor | float,
    max_grad_norm: float | None,
) -> Tensor:
    """Step along c_r g_r - c_f g_f (clipped); return the direction's norm before the clip."""
    return apply_direction(optimizer, params, combine(grad_retain, grad_forget, coef_retain, coef_forget),
                           max_grad_norm)


def combine(
    grad_retain: list[Tensor], grad_forget: list[Tensor], coef_retain: Tensor | float, coef_forget: Tensor | float
) -> list[Tensor]:
    """The update direction c_r g_r - c_f g_f, one tensor per parameter."""
    direction = torch._foreach_mul(grad_retain, coef_retain)
    torch._foreach_sub_(direction, torch._foreach_mul(grad_forget, coef_forget))
    return direction


def apply_direction(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], direction: list[Tensor], max_grad_norm: float | None
) -> Tensor:
    """Set p.grad = direction, clip its global norm, take one optimizer step; return the norm before the clip.

    The direction's tensors become the gradients and are clipped in place.
    """
    for param, grad in zip(params, direction):
        param.grad = grad
    if max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
    else:
        norm = torch.nn.utils.get_total_norm(direction)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm
