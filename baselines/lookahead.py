"""One-step look-ahead hypergradient dJ(theta_{t+1}(lambda))/dlambda through the SISS update (SPEC §4's caveat).

The paper's VI objective E[L_SISS(theta_t; lambda)] does not depend on lambda (L_r and L_f are
unbiased for every lambda), so its lambda-gradient measures the estimator's bias. A well-posed
data term scores the model the update produces: J(theta_{t+1}(lambda)) on the episode's fixed
probe set, with J = -Phi, the ``outcome`` reward's potential (``unlearn_env.rewards``):

    J(theta) = retain_weight L_r(theta) / L_r(theta_0) - forget_weight min(L_f(theta) / L_f(theta_0) - 1, forget_cap)

The update is theta_{t+1} = AdamW(theta_t, clip(g(lambda))) with g = c_r grad L_r - c_f grad L_f.
Every factor of dtheta_{t+1}/dlambda is exact and first order (no Hessian of the model):

* dg/dlambda = c_r dgrad L_r - c_f dgrad L_f - (dc_f/dlambda) grad L_f, where dgrad L/dlambda are the
  mixed derivatives of :func:`unlearn_env.siss.measure_with_sensitivity` (two more backward
  passes, coins frozen) and, in ``rescale`` mode, c_f = c / ||grad L_f|| gives
  dc_f/dlambda = -c <grad L_f, dgrad L_f> / ||grad L_f||^3;
* the clip g -> g min(1, M/||g||) has the Jacobian (M/||g||)(I - u u^T), u = g/||g||, when it acts;
* AdamW is elementwise: with the moments m, v *after* the step, bias corrections b1 = 1 - beta1^s,
  b2 = 1 - beta2^s and denominator d = sqrt(v)/sqrt(b2) + eps,
  dtheta_{t+1}/dg = -(lr/b1) [(1 - beta1)/d - m (1 - beta2) g / (sqrt(b2) sqrt(v) d^2)].

Then dJ/dlambda = <grad J(theta_{t+1}), dtheta_{t+1}/dlambda>, with grad J from one forward and one
backward pass on the probe set. Per step that is 1 forward and 3 backward passes more than the
SISS step's 1 + 2 (``benchmarks/method_cost.py`` measures it). The derivative holds lambda's
coins fixed: the update's dependence on which pairs are drawn from which component is not
differentiable and is left out, as in SPEC §4.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from unlearn_env import probes, siss
from unlearn_env.config import RewardConfig
from unlearn_env.rewards import ProbeLosses


def direction_sensitivity(
    m: siss.SISSMeasurement, d_retain: list[Tensor], d_forget: list[Tensor], rule: siss.UpdateRule
) -> list[Tensor]:
    """dg/dlambda of the unclipped direction g = c_r grad L_r - c_f grad L_f (module docstring)."""
    coef_r, coef_f = rule.coefficients(m.norm_forget)
    result = siss.combine(d_retain, d_forget, coef_r, coef_f)
    if rule.mode == "rescale":
        inner = sum((g * d).sum() for g, d in zip(m.grad_forget, d_forget))
        d_coef_f = -rule.rescale_norm * inner / m.norm_forget.clamp_min(1e-12) ** 3
        torch._foreach_sub_(result, torch._foreach_mul(m.grad_forget, d_coef_f))
    return result


def clip_sensitivity(
    direction: list[Tensor], d_direction: list[Tensor], max_norm: float | None
) -> tuple[list[Tensor], list[Tensor]]:
    """The clipped direction and its lambda-derivative, as ``torch.nn.utils.clip_grad_norm_`` clips."""
    if max_norm is None:
        return direction, d_direction
    norm = torch.nn.utils.get_total_norm(direction)
    scale = max_norm / (norm + 1e-6)
    if scale >= 1.0:
        return direction, d_direction
    unit = [g / norm for g in direction]
    along = sum((u * d).sum() for u, d in zip(unit, d_direction))
    clipped = [g * scale for g in direction]
    d_clipped = [(d - u * along) * (max_norm / norm) for d, u in zip(d_direction, unit)]
    return clipped, d_clipped


def adamw_sensitivity(
    optimizer: torch.optim.AdamW, params: list[nn.Parameter], clipped: list[Tensor], d_clipped: list[Tensor]
) -> list[Tensor]:
    """dtheta_{t+1}/dlambda = (dtheta_{t+1}/dg) d g_clipped/dlambda, from the optimiser's state after its step."""
    group = optimizer.param_groups[0]
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    result = []
    for param, g, dg in zip(params, clipped, d_clipped):
        state = optimizer.state[param]
        step = float(state["step"])
        b1, b2_sqrt = 1.0 - beta1**step, math.sqrt(1.0 - beta2**step)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        root = v.sqrt()
        denom = root / b2_sqrt + eps
        second = torch.where(root > 0, m * (1.0 - beta2) * g / (b2_sqrt * root.clamp_min(1e-38) * denom**2),
                             torch.zeros_like(g))
        result.append(-(lr / b1) * ((1.0 - beta1) / denom - second) * dg)
    return result


def probe_objective(probe: ProbeLosses | Tensor, probe_0: ProbeLosses, cfg: RewardConfig) -> Tensor | float:
    """J = -Phi on probe losses (a tensor ``(L_r, L_f)`` keeps its graph): what the look-ahead minimises."""
    retain, forget = (probe[0], probe[1]) if isinstance(probe, Tensor) else (probe.retain, probe.forget)
    rise = forget / probe_0.forget - 1.0
    capped = torch.clamp(rise, max=cfg.forget_cap) if isinstance(rise, Tensor) else min(rise, cfg.forget_cap)
    return cfg.retain_weight * retain / probe_0.retain - cfg.forget_weight * capped


def probe_objective_gradient(
    model: nn.Module, params: list[nn.Parameter], probe: probes.ProbeSet, gamma: Tensor, sigma: Tensor,
    probe_0: ProbeLosses, cfg: RewardConfig,
) -> tuple[Tensor, list[Tensor]]:
    """J(theta) on the probe set and grad_theta J: one forward and one backward pass."""
    eps_pred = model(probes.noisy_inputs(probe, gamma, sigma), probe.timesteps, class_labels=probe.labels).sample
    objective = probe_objective(probes.loss_pair(eps_pred, probe), probe_0, cfg)
    return objective.detach(), list(torch.autograd.grad(objective, params, materialize_grads=True))


def inner(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """<a, b> over all parameters."""
    return sum((x * y).sum() for x, y in zip(a, b))
