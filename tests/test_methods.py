"""The unlearning methods of baselines/ and their registry, on the test preset's tiny model.

Every update direction is checked against a direct computation: autograd of the stated loss on
the same minibatch (written here with ``F.mse_loss``, not the modules' helpers) and the stated
combination rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from baselines import erasediff, vdu
from baselines.bernoulli import BernoulliOptions, bernoulli_rule
from baselines.common import make_env
from baselines.erasediff import EraseDiffOptions, erasediff_coefficient, erasediff_rule, target_generator
from baselines.loop import ModelContext, gradient, observation_values, run_update_episode
from baselines.naive import naive_rule
from baselines.neggrad import NegGradOptions, neggrad_rule
from baselines.registry import (BUILTIN_MODULES, MethodSpecError, parse_method_spec, register, registered_methods,
                                unregister)
from baselines.siss_nois import siss_nois_rule
from baselines.vdu import VDUOptions, anchor_weights, precision_of, set_posterior_models, stability, vdu_rule
from unlearn_env.env import Update
from unlearn_env.episode import STEP_KEYS, EpisodeLog
from unlearn_env.siss import SISSBatch

HORIZON = 4
SEED = 3
SMALL_VDU = VDUOptions(fisher_batches=3, sample_steps=2)
"""A VDU whose Fisher is quick to compute on the test preset."""


@pytest.fixture(scope="module")
def env() -> gym.Env:
    return make_env("test", {"horizon": HORIZON, "batch_size": 4})


# ------------------------------------------------------------------------------ direct computations

def eps_loss(base: gym.Env, images: Tensor, labels: Tensor, batch: SISSBatch, target: Tensor | None = None) -> Tensor:
    """Mean squared error of the UNet's prediction on images noised with the batch's noise and timesteps."""
    t = batch.timesteps
    m_t = base.gamma[t].view(-1, 1, 1, 1) * images + base.sigma[t].view(-1, 1, 1, 1) * batch.noise
    pred = base.unet(m_t, t, class_labels=labels).sample
    return F.mse_loss(pred, batch.noise if target is None else target)


def flat_grad(loss: Tensor, base: gym.Env, retain_graph: bool = False) -> Tensor:
    grads = torch.autograd.grad(loss, base.params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, base.params)])


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.flatten() for t in tensors])


def assert_same_direction(update: Update, expected: Tensor) -> None:
    got = flat(update.direction)
    assert torch.isfinite(got).all()
    error = float((got - expected).norm() / expected.norm())
    assert error < 1e-4, f"relative error {error:.2e}"


def fresh_batch(env: gym.Env, seed: int = SEED) -> SISSBatch:
    env.reset(seed=seed)
    return env.unwrapped.pending_batch()


def rescale_norm(base: gym.Env) -> float:
    """The official rescale norm (5) in per-pixel units, from the config directly."""
    return base.config.unlearn.rescale_norm / base.forget_images[0].numel()


# ------------------------------------------------------------------------------ update directions

def test_naive_direction_is_the_retain_loss_gradient(env: gym.Env) -> None:
    batch, base = fresh_batch(env), env.unwrapped
    update = naive_rule(base, SEED)(batch)
    loss = eps_loss(base, batch.x, batch.x_labels, batch)
    assert_same_direction(update, flat_grad(loss, base))
    assert update.lam is None
    assert update.values[0].item() == pytest.approx(loss.item(), rel=1e-5)
    assert update.values[1].item() == 0.0 and update.values[3].item() == 0.0  # no forget term


def test_neggrad_direction_is_minus_superfactor_times_the_forget_gradient(env: gym.Env) -> None:
    batch, base = fresh_batch(env), env.unwrapped
    update = neggrad_rule(base, SEED, NegGradOptions(superfactor=0.7))(batch)
    loss = eps_loss(base, batch.a, batch.a_labels, batch)
    assert_same_direction(update, -0.7 * flat_grad(loss, base))
    assert update.values[1].item() == pytest.approx(loss.item(), rel=1e-5)


def test_erasediff_direction_adds_the_uniform_regression_with_the_official_coefficient(env: gym.Env) -> None:
    batch, base = fresh_batch(env), env.unwrapped
    eta = 10.0  # large enough that the coefficient is positive and the forget term takes part
    update = erasediff_rule(base, SEED, EraseDiffOptions(eta=eta))(batch)
    g_r = flat_grad(eps_loss(base, batch.x, batch.x_labels, batch), base)
    uniform = torch.rand(batch.a.shape, generator=target_generator(SEED, base.device))
    assert 0.0 <= uniform.min() and uniform.max() < 1.0
    g_u = flat_grad(eps_loss(base, batch.a, batch.a_labels, batch, target=uniform), base)
    coefficient = max(eta - float(g_r @ g_u) / float(g_u @ g_u), 0.0)
    assert coefficient > 0
    assert update.scalars["erasediff/coefficient"].item() == pytest.approx(coefficient, rel=1e-4)
    assert_same_direction(update, g_r + coefficient * g_u)


def test_erasediff_coefficient_is_zero_when_the_projection_exceeds_eta() -> None:
    g_f = [torch.ones(3), torch.ones(2, 2)]
    aligned = [2.0 * g for g in g_f]  # projection <g_r, g_f>/||g_f||^2 = 2 > eta
    assert erasediff_coefficient(aligned, g_f, eta=1e-3).item() == 0.0
    opposed = [-g for g in g_f]  # projection -1: c = eta + 1
    assert erasediff_coefficient(opposed, g_f, eta=1e-3).item() == pytest.approx(1.001)
    orthogonal = [torch.tensor([1.0, -1.0, 0.0]), torch.zeros(2, 2)]
    assert erasediff_coefficient(orthogonal, g_f, eta=0.25).item() == pytest.approx(0.25)
    assert erasediff_coefficient(aligned, [torch.zeros(3), torch.zeros(2, 2)], eta=0.25).item() == 0.25


def test_erasediff_eta_needs_no_unit_conversion() -> None:
    # Pixel sums scale both gradients by the pixel count P: the projection, hence c, is unchanged.
    generator = torch.Generator().manual_seed(0)
    g_r, g_f = [torch.randn(50, generator=generator)], [torch.randn(50, generator=generator)]
    pixels = 784.0
    per_pixel = erasediff_coefficient(g_r, g_f, eta=0.5)
    summed = erasediff_coefficient([pixels * g_r[0]], [pixels * g_f[0]], eta=0.5)
    assert summed.item() == pytest.approx(per_pixel.item(), rel=1e-5)


def test_erasediff_targets_are_the_same_for_a_seed_and_leave_the_batch_stream_alone(env: gym.Env) -> None:
    first = run_update_episode(env, lambda base, s: erasediff_rule(base, s, EraseDiffOptions()), SEED)
    again = run_update_episode(env, lambda base, s: erasediff_rule(base, s, EraseDiffOptions()), SEED)
    assert first.steps == again.steps
    naive = run_update_episode(env, lambda base, s: naive_rule(base, s), SEED)
    # The retain half of every step's minibatch is the same, so the first retain loss is too.
    assert naive.steps[0]["step/loss_retain"] == first.steps[0]["step/loss_retain"]


def test_siss_nois_direction_is_the_rescale_rule_on_two_plain_losses(env: gym.Env) -> None:
    batch, base = fresh_batch(env), env.unwrapped
    update = siss_nois_rule(base, SEED)(batch)
    g_r = flat_grad(eps_loss(base, batch.x, batch.x_labels, batch), base)
    g_f = flat_grad(eps_loss(base, batch.a, batch.a_labels, batch), base)
    assert base.config.unlearn.mode == "rescale"
    assert_same_direction(update, g_r - rescale_norm(base) / g_f.norm() * g_f)
    assert update.values[2].item() == pytest.approx(g_r.norm().item(), rel=1e-5)
    assert update.values[3].item() == pytest.approx(g_f.norm().item(), rel=1e-5)


def test_bernoulli_direction_is_the_unweighted_coin_flip_mixture(env: gym.Env) -> None:
    batch, base = fresh_batch(env, seed=4), env.unwrapped
    lam = 0.4
    update = bernoulli_rule(base, 4, BernoulliOptions(lam=lam))(batch)
    heads = batch.coin < lam
    assert 0 < int(heads.sum()) < len(heads), "the seed should give both kinds of draws"
    source = torch.where(heads.view(-1, 1, 1, 1), batch.a, batch.x)
    labels = torch.where(heads, batch.a_labels, batch.x_labels)
    t = batch.timesteps
    m_t = base.gamma[t].view(-1, 1, 1, 1) * source + base.sigma[t].view(-1, 1, 1, 1) * batch.noise
    err = (base.unet(m_t, t, class_labels=labels).sample - batch.noise).square().mean((1, 2, 3))
    size = len(err)
    loss_retain = err[~heads].sum() / (size * (1 - lam))
    loss_forget = err[heads].sum() / size
    g_r = flat_grad(loss_retain, base, retain_graph=True)
    g_f = flat_grad(loss_forget, base)
    assert_same_direction(update, g_r - rescale_norm(base) / g_f.norm() * g_f)
    assert update.lam == lam
    assert update.values[0].item() == pytest.approx(loss_retain.item(), rel=1e-5)


def test_vdu_direction_is_forget_ascent_plus_the_precision_weighted_pull(env: gym.Env) -> None:
    options = VDUOptions(gamma=3.0, fisher_data="forget", fisher_batches=2)
    env.reset(seed=SEED)
    base = env.unwrapped
    theta0 = [p.detach().clone() for p in base.params]
    rule = vdu_rule(base, SEED, options)
    for _ in range(2):  # move off the base weights, where the pull is zero
        base.step_update(rule)
    batch = base.pending_batch()
    update = rule(batch)
    precision = precision_of(base, options)
    assert all(torch.equal(a, b) for a, b in zip(anchor_weights(base), theta0))
    loss_forget = eps_loss(base, batch.a, batch.a_labels, batch)
    penalty = 0.5 * options.gamma * sum((w * (p - p0).square()).sum()
                                        for w, p, p0 in zip(precision, base.params, theta0))
    expected = flat_grad(-loss_forget + penalty, base)
    assert_same_direction(update, expected)
    assert update.scalars["vdu/stability"].item() == pytest.approx(penalty.item(), rel=1e-4)
    assert update.values[0].item() == 0.0 and update.values[1].item() == pytest.approx(loss_forget.item(), rel=1e-5)


# ------------------------------------------------------------------------------ VDU's regulariser

def test_vdu_regulariser_is_zero_at_the_base_weights_and_pulls_toward_them(env: gym.Env) -> None:
    env.reset(seed=SEED)
    base = env.unwrapped
    precision = precision_of(base, SMALL_VDU)
    theta0 = anchor_weights(base)
    value, grad = stability(theta0, theta0, precision, gamma=2.0)
    assert value.item() == 0.0 and all(float(g.abs().max()) == 0.0 for g in grad)

    generator = torch.Generator().manual_seed(0)
    moved = [p + 1e-2 * torch.randn(p.shape, generator=generator) for p in theta0]
    value, grad = stability(moved, theta0, precision, gamma=2.0)
    assert value.item() > 0
    displacement = flat([m - p for m, p in zip(moved, theta0)])
    assert float(flat(grad) @ displacement) > 0  # descending R moves back toward theta0
    rate = 0.5 / (2.0 * float(flat(precision).max()))  # small enough that no coordinate overshoots theta0
    stepped = [m - rate * g for m, g in zip(moved, grad)]
    assert stability(stepped, theta0, precision, gamma=2.0)[0].item() < value.item()


def test_vdu_fisher_is_a_mean_one_precision_computed_once_per_env(env: gym.Env) -> None:
    env.reset(seed=SEED)
    base = env.unwrapped
    samples = precision_of(base, SMALL_VDU)
    assert precision_of(base, SMALL_VDU) is samples  # cached: another seed does not recompute it
    forget = precision_of(base, VDUOptions(fisher_data="forget", fisher_batches=2))
    for precision in (samples, forget):
        values = flat(precision)
        assert values.min() >= 0 and values.mean().item() == pytest.approx(1.0, rel=1e-5)
    # The forget set carries one label: only its class embedding gets any Fisher from forget-set batches,
    # while the model's own samples of every label reach every embedding.
    names = [name for name, p in base.unet.named_parameters() if p.requires_grad]
    embedding = names.index("class_embedding.weight")
    others = [c for c in range(base.config.model.num_classes) if c != base.forget_class]
    assert float(forget[embedding][others].abs().max()) == 0.0
    assert float(forget[embedding][base.forget_class].abs().max()) > 0.0
    assert (samples[embedding].abs().sum(1) > 0).all()


def test_vdu_posterior_models_give_inverse_variance_precision(env: gym.Env) -> None:
    env.reset(seed=SEED)
    base = env.unwrapped
    state = {name: p.detach().clone() for name, p in base.unet.named_parameters()}
    names = list(state)
    spread = {name: 0.1 if i == 0 else 0.2 for i, name in enumerate(names)}
    models = [state, {n: v + spread[n] for n, v in state.items()}, {n: v - spread[n] for n, v in state.items()}]
    set_posterior_models(base, models)
    precision = precision_of(base, VDUOptions(precision="models"))
    # var = spread^2 (unbiased over the three models): the first parameter's precision is 4x the others'.
    assert float(precision[0].mean() / precision[1].mean()) == pytest.approx(4.0, rel=1e-3)
    assert flat(precision).mean().item() == pytest.approx(1.0, rel=1e-5)
    log = vdu.run_vdu(env, VDUOptions(precision="models"), SEED)
    assert len(log.steps) == HORIZON and not log.diverged
    with pytest.raises(ValueError, match="identical"):
        vdu.variance_precision([state, state], base)


# ------------------------------------------------------------------------------ behaviour over steps

def probe_trajectory(env: gym.Env, make_rule, seed: int = SEED) -> tuple[dict, list[dict]]:
    _, first = env.reset(seed=seed)
    rule = make_rule(env.unwrapped, seed)
    infos = []
    done = False
    while not done:
        _, _, terminated, truncated, info = env.unwrapped.step_update(rule)
        infos.append(info)
        done = terminated or truncated
    return first, infos


@pytest.fixture(scope="module")
def fast_env() -> gym.Env:
    """A larger learning rate, so that a few steps move the probe losses clearly."""
    return make_env("test", {"horizon": 6, "batch_size": 8, "lr": 1e-3})


def test_neggrad_raises_the_forget_probe_loss(fast_env: gym.Env) -> None:
    first, infos = probe_trajectory(fast_env, lambda base, s: neggrad_rule(base, s, NegGradOptions()))
    assert not any(info["diverged"] for info in infos)
    assert infos[-1]["probe_loss_forget"] > 1.05 * first["probe_loss_forget"]


def test_naive_lowers_the_retain_probe_loss(fast_env: gym.Env) -> None:
    first, infos = probe_trajectory(fast_env, lambda base, s: naive_rule(base, s))
    assert infos[-1]["probe_loss_retain"] < first["probe_loss_retain"]


def test_a_diverging_neggrad_is_recorded_not_raised() -> None:
    wild = make_env("test", {"horizon": 6, "batch_size": 4, "lr": 1e30})
    entry, options = parse_method_spec("neggrad:superfactor=1e6")
    log = entry.runner(wild, options, SEED)
    assert log.diverged and len(log.steps) <= 6
    assert log.rewards[-1] == -wild.unwrapped.config.reward.crash_penalty
    wild.close()


# ------------------------------------------------------------------------------ registry

def test_registry_parses_specs_with_typed_values() -> None:
    entry, options = parse_method_spec("neggrad:superfactor=0.1")
    assert entry.name == "neggrad" and options == NegGradOptions(superfactor=0.1)
    assert isinstance(options.superfactor, float)
    _, static = parse_method_spec("static:0.3")  # a positional first option fills the first field
    assert static.lam == 0.3
    _, vi = parse_method_spec("vi:beta=0.1:hidden=64:confine=affine")
    assert (vi.beta, vi.hidden, vi.confine) == (0.1, 64, "affine") and isinstance(vi.hidden, int)
    _, options = parse_method_spec("vdu:gamma=2:precision=ensemble:ensemble_size=3")
    assert options == VDUOptions(gamma=2.0, precision="ensemble", ensemble_size=3)
    entry, options = parse_method_spec("siss-nois")
    assert entry.passes == "2F+2B" and entry.data == "retain+forget"


def test_registry_names_every_method_with_its_data_and_cost() -> None:
    methods = registered_methods()
    assert {"naive", "neggrad", "erasediff", "siss-nois", "bernoulli", "vdu", "static", "vi"} <= set(methods)
    needs = {name: (m.data, m.passes) for name, m in methods.items()}
    assert needs["naive"] == ("retain only", "1F+1B")
    assert needs["neggrad"] == ("forget only", "1F+1B")
    assert needs["vdu"] == ("forget only", "1F+1B")
    assert needs["erasediff"] == ("retain+forget", "2F+2B")
    assert needs["bernoulli"] == ("retain+forget", "1F+2B")


@pytest.mark.parametrize(("spec", "message"), [
    ("nosuch", r"unknown method 'nosuch'; registered methods are: .*neggrad"),
    ("neggrad:lr=1", r"neggrad has no option 'lr'; its options are superfactor \(float, default 0.0303\)"),
    ("neggrad:superfactor=lots", r"neggrad.superfactor expects float, got 'lots'"),
    ("neggrad:superfactor=-1", r"superfactor must be > 0"),
    ("vi:confine=squash", r"vi.confine must be one of \('clamp', 'affine'\)"),
    ("vdu:fisher_batches=2.5", r"vdu.fisher_batches expects int"),
    ("naive:3", r"naive takes no options"),
    ("static:0.3:0.4", r"'0.4' is not KEY=VALUE"),
    ("erasediff:eta=1:eta=2", r"given twice"),
])
def test_registry_rejects_bad_specs_with_clear_messages(spec: str, message: str) -> None:
    with pytest.raises(MethodSpecError, match=message):
        parse_method_spec(spec)


@dataclass(frozen=True)
class ScaledNaiveOptions:
    """A user's method: naive deletion with its direction scaled (defined outside the package)."""

    scale: float = 1.0
    side: Literal["retain", "forget"] = "retain"


def run_scaled_naive(env: gym.Env, options: ScaledNaiveOptions, seed: int) -> EpisodeLog:
    def make_rule(base: gym.Env, s: int):
        ctx = ModelContext.of(base)

        def compute(batch: SISSBatch) -> Update:
            images, labels = (batch.x, batch.x_labels) if options.side == "retain" else (batch.a, batch.a_labels)
            loss = ctx.errors(images, labels, batch).mean()
            grads = gradient(loss, ctx.params)
            return Update(torch._foreach_mul(grads, options.scale), observation_values(loss, None, grads, None),
                          scalars={"user/loss": loss.detach()})

        return compute

    return run_update_episode(env, make_rule, seed)


def test_a_user_registers_a_method_from_outside_the_package(env: gym.Env) -> None:
    register("user-naive", ScaledNaiveOptions, run_scaled_naive, data="retain only", passes="1F+1B",
             description="a test's method")
    try:
        entry, options = parse_method_spec("user-naive:scale=0.5:side=retain")
        assert options == ScaledNaiveOptions(scale=0.5) and "user-naive" in registered_methods()
        log = entry.runner(env, options, SEED)
        assert len(log.steps) == HORIZON and all("user/loss" in step for step in log.steps)
        with pytest.raises(ValueError, match="already registered"):
            register("user-naive", NegGradOptions, run_scaled_naive)
        with pytest.raises(MethodSpecError, match=r"user-naive.side must be one of"):
            parse_method_spec("user-naive:side=both")
    finally:
        unregister("user-naive")
    assert "user-naive" not in registered_methods()


# ------------------------------------------------------------------------------ end to end

END_TO_END_SPECS = {"vdu": "vdu:fisher_batches=3:sample_steps=2",
                    # SFD's official override label is 1, this env's forget label: override with a retain class.
                    "sfd": "sfd:override=7", "sfd-siss": "sfd-siss:override=7"}
OWN_SCALARS = {"erasediff": "erasediff/coefficient", "bernoulli": "bernoulli/forget_share", "vdu": "vdu/stability",
               "vi": "vi/elbo", "sfd": "sfd/fake_loss_retain", "sfd-multi": "sfd_multi/lambda_entropy",
               "sfd-siss": "sfd_siss/loss_forget_images"}


# The package's own methods: evaluation.methods registers base, oracle and the RL algorithms too when a test
# module imports evaluate.py in the same process, and those need a policy file or no episode at all.
PACKAGE_METHODS = sorted(name for name, entry in registered_methods().items()
                         if entry.runner.__module__ in BUILTIN_MODULES)


@pytest.mark.parametrize("name", PACKAGE_METHODS)
def test_every_registered_method_runs_an_episode_through_its_runner(env: gym.Env, name: str) -> None:
    entry, options = parse_method_spec(END_TO_END_SPECS.get(name, name))
    log = entry.runner(env, options, SEED)
    assert isinstance(log, EpisodeLog) and log.seed == SEED
    assert len(log.steps) == HORIZON and not log.diverged and log.wall_seconds > 0
    for step in log.steps:
        assert {f"step/{key}" for key in STEP_KEYS} <= set(step)
        assert all(math.isfinite(v) for v in step.values())
        if name in OWN_SCALARS:
            assert OWN_SCALARS[name] in step
    assert np.isfinite(log.episode_return)
