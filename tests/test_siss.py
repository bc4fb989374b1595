"""SISS mathematics: importance weights, unbiasedness, mixture, gradients and the update."""

from __future__ import annotations

import dataclasses

import math

import pytest
import torch

from unlearn_env import siss
from unlearn_env.config import get_config
from unlearn_env.diffusion import build_scheduler, build_unet, noise_coefficients

LAMBDAS = [0.1, 0.3, 0.5, 0.9]


def direct_weights(m, x, a, gamma_t, sigma_t, same_label, from_forget, lam):
    """w_x, w_a from the Gaussian densities themselves (float64, no log-space tricks beyond logsumexp)."""
    normal = torch.distributions.Normal
    log_qx = normal(gamma_t[:, None] * x.flatten(1), sigma_t[:, None]).log_prob(m.flatten(1)).sum(1)
    log_qa = normal(gamma_t[:, None] * a.flatten(1), sigma_t[:, None]).log_prob(m.flatten(1)).sum(1)
    # The label is part of the sample: a component whose label differs from the drawn one has density 0.
    log_qx = torch.where(same_label | ~from_forget, log_qx, torch.tensor(-math.inf, dtype=torch.float64))
    log_qa = torch.where(same_label | from_forget, log_qa, torch.tensor(-math.inf, dtype=torch.float64))
    log_mix = torch.logsumexp(torch.stack([math.log(1 - lam) + log_qx, math.log(lam) + log_qa]), 0)
    return (log_qx - log_mix).exp(), (log_qa - log_mix).exp()


@pytest.mark.parametrize("lam", LAMBDAS)
def test_importance_weights_match_direct_density(lam: float) -> None:
    gen = torch.Generator().manual_seed(0)
    b, side = 64, 4
    x = torch.rand(b, 1, side, side, generator=gen, dtype=torch.float64) * 2 - 1
    a = torch.rand(b, 1, side, side, generator=gen, dtype=torch.float64) * 2 - 1
    abar = torch.linspace(0.02, 0.999, b, dtype=torch.float64)
    gamma_t, sigma_t = abar.sqrt(), (1 - abar).sqrt()
    from_forget = torch.rand(b, generator=gen) < lam
    source = torch.where(from_forget[:, None, None, None], a, x)
    m = gamma_t[:, None, None, None] * source + sigma_t[:, None, None, None] * torch.randn(
        b, 1, side, side, generator=gen, dtype=torch.float64
    )
    same_label = torch.arange(b) % 2 == 0
    d_x = siss.half_sq_distance(m, x, gamma_t, sigma_t)
    d_a = siss.half_sq_distance(m, a, gamma_t, sigma_t)
    w_x, w_a = siss.importance_weights(d_x, d_a, same_label, from_forget, lam)
    ref_x, ref_a = direct_weights(m, x, a, gamma_t, sigma_t, same_label, from_forget, lam)
    torch.testing.assert_close(w_x, ref_x, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(w_a, ref_a, rtol=1e-9, atol=1e-12)
    # The two weights of a same-label pair always recombine to the mixture: (1-l) w_x + l w_a = 1.
    torch.testing.assert_close((1 - lam) * w_x + lam * w_a, torch.ones(b, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_importance_weights_are_finite_at_extreme_distances(dtype: torch.dtype) -> None:
    d_x = torch.tensor([0.0, 1e12, 0.0, 1e30, 3e38, 5.0], dtype=dtype)
    d_a = torch.tensor([1e12, 0.0, 0.0, 0.0, 1.0, 3e38], dtype=dtype)
    same = torch.ones(6, dtype=torch.bool)
    lam = torch.tensor(0.1, dtype=dtype, requires_grad=True)
    w_x, w_a = siss.importance_weights(d_x, d_a, same, torch.zeros(6, dtype=torch.bool), lam)
    assert torch.isfinite(w_x).all() and torch.isfinite(w_a).all()
    # x far more likely than a -> w_x = 1/(1-lambda), w_a = 0; and the reverse.
    torch.testing.assert_close(w_x[0], torch.tensor(1 / 0.9, dtype=dtype))
    assert w_a[0] == 0 and w_x[1] == 0
    torch.testing.assert_close(w_a[1], torch.tensor(1 / 0.1, dtype=dtype))
    (w_x.sum() + w_a.sum()).backward()
    assert torch.isfinite(lam.grad)


def test_weights_of_different_labels_depend_only_on_drawn_component() -> None:
    lam = torch.tensor(0.3, requires_grad=True)
    from_forget = torch.tensor([True, False])
    w_x, w_a = siss.importance_weights(torch.zeros(2), torch.tensor([1e9, -1e9]), torch.zeros(2, dtype=torch.bool), from_forget, lam)
    torch.testing.assert_close(w_x, torch.tensor([0.0, 1 / 0.7]))
    torch.testing.assert_close(w_a, torch.tensor([1 / 0.3, 0.0]))
    (w_x.sum() + w_a.sum()).backward()
    torch.testing.assert_close(lam.grad, torch.tensor(1 / 0.7**2 - 1 / 0.3**2))


def test_mixture_share_is_lambda() -> None:
    gen = torch.Generator().manual_seed(1)
    n = 40_000
    x, a = torch.zeros(n, 1, 2, 2), torch.ones(n, 1, 2, 2)
    batch = siss.draw_batch(x, torch.zeros(n, dtype=torch.long), a, torch.ones(n, dtype=torch.long), n, 1000, gen)
    gamma, sigma = torch.ones(1000), torch.zeros(1000)
    for lam in LAMBDAS:
        m_t, labels, from_forget = siss.mixture_sample(batch, lam, gamma, sigma)
        assert abs(from_forget.float().mean().item() - lam) < 4 * math.sqrt(lam * (1 - lam) / n)
        # With sigma = 0 the noisy input is the chosen image itself, labelled with its own label.
        assert torch.equal(m_t.flatten(1)[:, 0], from_forget.float())
        assert torch.equal(labels, from_forget.long())


@pytest.fixture(scope="module")
def tiny_model():
    cfg = get_config("test").model
    torch.manual_seed(0)
    unet = build_unet(cfg)
    gamma, sigma = noise_coefficients(build_scheduler(cfg), "cpu")
    return unet, gamma, sigma


def fixed_pairs(b: int, same_share: float):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(b, 1, 28, 28, generator=gen) * 2 - 1
    a = torch.rand(b, 1, 28, 28, generator=gen) * 2 - 1
    x_labels = torch.randint(10, (b,), generator=gen)
    a_labels = torch.where(torch.arange(b) < same_share * b, x_labels, (x_labels + 1) % 10)
    return x, x_labels, a, a_labels


@torch.no_grad()
def test_weighted_retain_loss_is_unbiased(tiny_model) -> None:
    """Averaged over the mixture, w_x * error equals the plain denoising loss on x (and w_a on a)."""
    unet, gamma, sigma = tiny_model
    b, repeats, lam = 16, 128, 0.5
    x, x_labels, a, a_labels = (v.repeat_interleave(repeats, 0) for v in fixed_pairs(b, same_share=0.5))
    size = b * repeats
    gen = torch.Generator().manual_seed(4)
    # Large timesteps only: there the two components overlap and the weights do real work.
    t = torch.tensor([600, 800, 999])[torch.randint(3, (size,), generator=gen)]
    g, s = gamma[t].view(-1, 1, 1, 1), sigma[t].view(-1, 1, 1, 1)
    batch = siss.SISSBatch(x, x_labels, a, a_labels, t, torch.randn(x.shape, generator=gen), torch.rand(size, generator=gen))
    m_t, labels, from_forget = siss.mixture_sample(batch, lam, gamma, sigma)
    eps = unet(m_t, t, class_labels=labels).sample
    d_x = siss.half_sq_distance(m_t, x, gamma[t], sigma[t])
    d_a = siss.half_sq_distance(m_t, a, gamma[t], sigma[t])
    w_x, w_a = siss.importance_weights(d_x, d_a, x_labels == a_labels, from_forget, lam)
    weighted_r = w_x * ((m_t - g * x) / s - eps).flatten(1).square().mean(1)
    weighted_f = w_a * ((m_t - g * a) / s - eps).flatten(1).square().mean(1)
    noise = torch.randn(x.shape, generator=gen)
    plain = unet(g.repeat(2, 1, 1, 1) * torch.cat([x, a]) + s.repeat(2, 1, 1, 1) * noise.repeat(2, 1, 1, 1), t.repeat(2),
                 class_labels=torch.cat([x_labels, a_labels])).sample
    plain_err = (plain - noise.repeat(2, 1, 1, 1)).flatten(1).square().mean(1)
    for w, p in ((weighted_r, plain_err[:size]), (weighted_f, plain_err[size:])):
        stderr = math.sqrt(w.var().item() / len(w) + p.var().item() / len(p))
        assert abs(w.mean().item() - p.mean().item()) < 4 * stderr, (w.mean(), p.mean(), stderr)
    # The estimator is not trivially unbiased: the weights vary from pair to pair.
    assert weighted_r.std() > 0.1 * weighted_r.mean()


def test_gradient_norms_match_separately_computed_losses(tiny_model) -> None:
    unet, gamma, sigma = tiny_model
    params = list(unet.parameters())
    x, x_labels, a, a_labels = fixed_pairs(8, same_share=0.5)
    gen = torch.Generator().manual_seed(5)
    batch = siss.SISSBatch(
        x, x_labels, a, a_labels, torch.randint(1000, (8,), generator=gen), torch.randn(8, 1, 28, 28, generator=gen),
        torch.rand(8, generator=gen),
    )
    lam = 0.4
    m = siss.measure(unet, params, batch, lam, gamma, sigma)
    for which, norm, grads in (("x", m.norm_retain, m.grad_retain), ("a", m.norm_forget, m.grad_forget)):
        m_t, labels, from_forget = siss.mixture_sample(batch, lam, gamma, sigma)
        t = batch.timesteps
        target_img = batch.x if which == "x" else batch.a
        ref_x, ref_a = direct_weights(
            m_t.double(), x.double(), a.double(), gamma[t].double(), sigma[t].double(), x_labels == a_labels, from_forget, lam
        )
        weight = (ref_x if which == "x" else ref_a).float()
        target = (m_t - gamma[t].view(-1, 1, 1, 1) * target_img) / sigma[t].view(-1, 1, 1, 1)
        loss = (weight * (target - unet(m_t, t, class_labels=labels).sample).flatten(1).square().mean(1)).mean()
        ref_grads = torch.autograd.grad(loss, params)
        torch.testing.assert_close(norm, torch.nn.utils.get_total_norm(ref_grads), rtol=1e-4, atol=1e-7)
        for got, ref in zip(grads, ref_grads):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m.loss_retain_lam, m.loss_retain)
    torch.testing.assert_close(m.loss_forget_lam, m.loss_forget)


def test_lambda_gradient_reaches_through_the_weights(tiny_model) -> None:
    unet, gamma, sigma = tiny_model
    x, x_labels, a, a_labels = fixed_pairs(8, same_share=0.5)
    gen = torch.Generator().manual_seed(6)
    batch = siss.SISSBatch(
        x, x_labels, a, a_labels, torch.randint(1000, (8,), generator=gen), torch.randn(8, 1, 28, 28, generator=gen),
        torch.rand(8, generator=gen),
    )
    lam = torch.tensor(0.5, requires_grad=True)
    m = siss.measure(unet, list(unet.parameters()), batch, lam, gamma, sigma)
    objective = siss.siss_objective(m.loss_retain_lam, m.loss_forget_lam, n=100, k=10, superfactor=0.0)
    objective.backward()
    assert lam.grad is not None and torch.isfinite(lam.grad) and lam.grad != 0


def test_objective_and_coefficients() -> None:
    assert siss.siss_objective(2.0, 3.0, n=100, k=20, superfactor=0.5) == pytest.approx(100 / 80 * 2 - 1.5 * 20 / 80 * 3)
    assert siss.UpdateRule("weights", 100, 20, 0.0, 5.0, None).coefficients(torch.tensor(2.0)) == (1.25, 0.25)
    c_r, c_f = siss.UpdateRule("rescale", 100, 20, 0.0, 5.0, None).coefficients(torch.tensor(2.0))
    assert c_r == 1.0 and c_f.item() == pytest.approx(2.5)


def test_update_rule_takes_the_official_pixel_sum_units() -> None:
    """The config's c = 5 and clip 1 are for losses summed over pixels; ours are means, so both divide by the pixels."""
    cfg = get_config("test").unlearn
    rule = siss.UpdateRule.from_config(cfg, 100, 20, pixels=784)
    assert rule.rescale_norm == pytest.approx(5.0 / 784) and rule.max_grad_norm == pytest.approx(1.0 / 784)
    assert siss.UpdateRule.from_config(dataclasses.replace(cfg, max_grad_norm=None), 100, 20, 784).max_grad_norm is None
    with pytest.raises(ValueError, match="0 < k < n"):
        siss.weights_coefficients(10, 10, 0.0)


@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_apply_update_moves_weights_along_combined_direction(max_norm: float | None) -> None:
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    g_r = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0])]
    g_f = [torch.tensor([0.0, 1.0, 0.0]), torch.tensor([2.0, 0.0])]
    opt = torch.optim.SGD(params, lr=1.0)
    siss.apply_update(opt, params, g_r, g_f, 1.0, 0.5, max_norm)
    direction = torch.cat([g_r[0] - 0.5 * g_f[0], g_r[1] - 0.5 * g_f[1]])
    if max_norm is not None:
        direction = direction * max_norm / direction.norm()
    torch.testing.assert_close(-torch.cat([p.detach() for p in params]), direction)
    assert all(p.grad is None for p in params)
