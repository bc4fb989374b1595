"""The class-unlearning task and the score-based family (SFD, sfd-multi, sfd-siss) on the test preset.

The SFD losses are checked against the official code's formulas written out here from the
schedule's betas (``DDPM/functions/losses.py``), not against the module's helpers.
"""

from __future__ import annotations

import csv
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from scipy import stats

from baselines import sfd
from baselines.registry import parse_method_spec, registered_methods
from baselines.sfd import SFDOptions, SFDRun, resolve_budget, sample_one_step, sid_generator_loss
from baselines.sfd_multi import SFDMultiOptions, SFDMultiRun, lambda_objective
from baselines.sfd_siss import SFDSISSOptions, SFDSISSRun
from evaluation.metrics import data_level_forgetting
from evaluation.runs import RunRecord
from unlearn_env import ENV_ID
from unlearn_env.config import get_config
from unlearn_env.data import build_training_data, build_unlearning_data, to_uint8
from unlearn_env.diffusion import sampling_noise
from unlearn_env.env import UnlearningEnv
from unlearn_env.episode import STEP_KEYS
from unlearn_env.instances import instance_sets, task_set
from unlearn_env.pretrain import training_set
from unlearn_env.tasks import CLASS_LABEL, ForgetTask, TaskError, forget_digit_hits, parse_task

CLASS_TASK = ForgetTask.class_task("trouser", 0.5)
STEPS = 3


@pytest.fixture(scope="module")
def env() -> gym.Env:
    return gym.make(ENV_ID, preset="test", tasks="class", horizon=STEPS, batch_size=4)


def new_run(env: gym.Env, run_cls: type[SFDRun], options, seed: int = 0) -> SFDRun:
    """A run of ``run_cls`` on a freshly reset episode."""
    env.reset(seed=seed)
    return run_cls(env, options, resolve_budget(options, env))


# ---------------------------------------------------------------------- the class task


def test_the_class_task_round_trips_and_its_retain_set_holds_no_forget_label_image() -> None:
    for spelling in ("class-trouser-0.5-s0", "CLASS-Trouser-0.50", "class-1-0.5-s0",
                     {"kind": "class", "fashion_class": "trouser", "ratio": 0.5},
                     {"kind": "class", "digit": 10, "fashion_class": 1, "ratio": 0.5, "seed": 0}):
        assert parse_task(spelling) == CLASS_TASK
    assert CLASS_TASK.text == "class-trouser-0.5-s0" and parse_task(CLASS_TASK.to_dict()) == CLASS_TASK
    assert parse_task("class-ankle-boot-0.3-s2") == ForgetTask.class_task(9, 0.3, 2)
    assert not CLASS_TASK.features()[:10].any() and CLASS_TASK.features()[10 + 1] == 1
    with pytest.raises(TaskError, match="a class task's concept carries label 10"):
        parse_task({"kind": "class", "digit": 3, "fashion_class": 1, "ratio": 0.5})
    with pytest.raises(TaskError, match="both give their concept label 10"):
        task_set("test", ["class-trouser-0.5-s0", "class-bag-0.2-s0"])
    with pytest.raises(TaskError, match="share one kind"):
        task_set("test", ["class-trouser-0.5-s0", "1-bag-0.2-s0"])
    for preset in ("test", "cpu", "paper"):
        assert instance_sets(preset)["class"] == (CLASS_TASK,)

    tasks = task_set("test", "class")
    config = tasks.config_of(CLASS_TASK, get_config("test"))
    assert config.model.num_classes == 11 and config.data.forget_class == CLASS_LABEL
    assert config.data.task() == CLASS_TASK
    with pytest.raises(ValueError, match="forget label 10 needs num_classes >= 11"):
        get_config("test", forget_class=10)
    data = build_unlearning_data(config.data, 28)
    assert (data.forget_labels == CLASS_LABEL).all() and set(data.retain_labels.tolist()) == set(range(10))
    retain = {image.numpy().tobytes() for image in data.retain_images}
    assert not retain & {image.numpy().tobytes() for image in data.forget_images}
    # Ratio 0.5: the label holds as many images as an average digit label.
    assert data.k == round(len(data.retain_images) / 10)
    # The oracle trains without the label; the base model with it; their keys differ from every other model's.
    images, labels, _ = training_set(config.oracle())
    assert CLASS_LABEL not in labels.tolist() and len(images) == len(data.retain_images)
    assert (training_set(config)[1] == CLASS_LABEL).sum() == data.k
    assert len({config.base_model_key(), config.oracle().base_model_key(), get_config("test").base_model_key()}) == 3
    assert len(build_training_data(config.data, 28).images) == data.n


def test_drawn_as_a_digit_means_any_digit_for_the_class_label() -> None:
    calls = np.array([1, 7, 11, -1, 10])
    assert forget_digit_hits(calls, 1).tolist() == [True, False, False, False, False]
    assert forget_digit_hits(calls, CLASS_LABEL).tolist() == [True, True, False, False, False]


def test_siss_and_its_adaptive_variants_run_on_the_class_task_through_the_env(env: gym.Env) -> None:
    check_env(env.unwrapped, skip_render_check=True)
    base = env.unwrapped
    assert base.forget_class == CLASS_LABEL and base.retain_classes == list(range(10))
    for spec in ("static:0.5", "neyman", "vi"):
        entry, options = parse_method_spec(spec)
        log = entry.runner(env, options, 1)
        assert len(log.steps) == STEPS and not log.diverged and entry.sample is None


# ---------------------------------------------------------------------- SFD's pieces against the official code


def official_generator_loss(p_model, sg_model, x0, t, p_c, sg_c, e, betas, alpha):
    """``sid_g_loss_conditional`` of the official code, transcribed (``use_diffinst=False``)."""
    a = (1 - betas).cumprod(dim=0).index_select(0, t).view(-1, 1, 1, 1)
    bb, aa = (1.0 - a).sqrt(), a.sqrt()
    x = x0 * aa + e * bb
    sg_x = (x - bb * sg_model(x, t, class_labels=sg_c).sample) / aa
    p_x = (x - bb * p_model(x, t, class_labels=p_c).sample) / aa
    with torch.no_grad():
        omega = (p_x - x0).abs_().float().mean(dim=[1, 2, 3], keepdim=True).clamp_(min=0.00001)
    if alpha == 1.0:
        loss = ((p_x - sg_x) * (sg_x - x0)).div(omega).sum(dim=(1, 2, 3))
    else:
        loss = ((p_x - sg_x) * ((p_x - x0) - alpha * (p_x - sg_x))).div(omega).sum(dim=(1, 2, 3))
    return loss.mean(dim=0)


def test_the_generator_at_initialisation_is_the_teachers_one_step_x0_prediction(env: gym.Env) -> None:
    run = new_run(env, SFDRun, SFDOptions())
    base = env.unwrapped
    betas = base.scheduler.betas.float()
    abar = (1 - betas).cumprod(0)[440]
    z = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 9, 10, 10, 5])
    x_init = (1 - abar).sqrt() * z  # the official ``xt = init_b * randn``
    eps = base.unet(x_init, torch.full((6,), 440), class_labels=labels).sample
    expected = x_init / abar.sqrt() - (1 / abar - 1).sqrt() * eps  # the official ``x0_from_noise``
    with torch.no_grad():
        assert torch.allclose(run.generator(z, labels), expected, atol=1e-5)
    # Sampling is the same one network call, clamped to [-1, 1].
    assert torch.allclose(run.generator.sample(labels, z), expected.clamp(-1, 1), atol=1e-5)


@pytest.mark.parametrize("alpha", [1.2, 1.0])
def test_the_generator_loss_is_the_official_formula(env: gym.Env, alpha: float) -> None:
    base = env.unwrapped
    teacher = sfd.frozen_copy(base.unet)
    fake = sfd.frozen_copy(base.unet)
    with torch.no_grad():  # a fake network that differs from the teacher
        for p in fake.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(5, 1, 28, 28, generator=gen).clamp(-1, 1).requires_grad_()
    t = torch.randint(38, 712, (5,), generator=gen)
    e = torch.randn(5, 1, 28, 28, generator=gen)
    p_c, sg_c = torch.tensor([1, 1, 2, 3, 4]), torch.full((5,), CLASS_LABEL)
    ours, gap = sid_generator_loss(teacher, fake, x0, t, p_c, sg_c, e, base.gamma, base.sigma, alpha)
    official = official_generator_loss(teacher, fake, x0, t, p_c, sg_c, e, base.scheduler.betas.float(), alpha)
    assert torch.allclose(ours.mean(), official, rtol=1e-4)
    grad_ours = torch.autograd.grad(ours.mean(), x0)[0]
    grad_official = torch.autograd.grad(official_generator_loss(
        teacher, fake, x0, t, p_c, sg_c, e, base.scheduler.betas.float(), alpha), x0)[0]
    assert torch.allclose(grad_ours, grad_official, rtol=1e-4, atol=1e-6)
    assert (gap > 0).all() and not gap.requires_grad


class LabelRecorder:
    """Records the class labels each call of a module received (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls: list[torch.Tensor] = []
        self.handle = module.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs) -> None:
        self.calls.append(kwargs["class_labels"].clone())


@pytest.mark.parametrize("run_cls, options", [
    (SFDRun, SFDOptions(override=7)),
    (SFDRun, SFDOptions(override=None)),
    (SFDMultiRun, SFDMultiOptions()),
    (SFDSISSRun, SFDSISSOptions(override=3)),
])
def test_the_forgetting_term_calls_the_teacher_with_the_override_label(env: gym.Env, run_cls, options) -> None:
    run = new_run(env, run_cls, options)
    teacher, fake = LabelRecorder(run.teacher), LabelRecorder(run.fake)
    run.iterate()
    # The teacher is called twice per iteration: the retain labels c, then each forget generation's override.
    assert len(teacher.calls) == 2
    remain, override = teacher.calls
    assert CLASS_LABEL not in remain.tolist()
    assert CLASS_LABEL not in override.tolist() and set(override.tolist()) <= set(range(10))
    if getattr(options, "override", None) is not None:
        assert (override == options.override).all()
    # The fake network: its own two losses (c, then f), then the generator step's (c, then f with the override).
    assert [set(call.tolist()) for call in fake.calls[1::2]] == [{CLASS_LABEL}, {CLASS_LABEL}]
    assert torch.equal(fake.calls[2], remain)


def test_an_override_that_is_not_a_retain_class_is_refused(env: gym.Env) -> None:
    with pytest.raises(ValueError, match="the override label must be a retain class"):
        new_run(env, SFDRun, SFDOptions(override=CLASS_LABEL))


# ---------------------------------------------------------------------- sfd-multi


def test_sfd_multi_with_uniform_lambda_draws_overrides_uniformly(env: gym.Env) -> None:
    run = new_run(env, SFDMultiRun, SFDMultiOptions(adapt=False))
    draws = run.override_labels(20_000).numpy()
    counts = np.bincount(draws, minlength=11)
    assert counts[CLASS_LABEL] == 0
    assert stats.chisquare(counts[:10]).pvalue > 1e-3
    # An adaptive run draws from its lambda.
    adaptive = new_run(env, SFDMultiRun, SFDMultiOptions())
    with torch.no_grad():
        adaptive.eta.copy_(torch.log(torch.tensor([4.0, 1, 1, 1, 1, 1, 1, 1, 1, 1])))
    counts = np.bincount(adaptive.override_labels(20_000).numpy(), minlength=10)
    assert stats.chisquare(counts, 20_000 * adaptive.lam.numpy()).pvalue > 1e-3 and counts[0] > 2 * counts[1]


def test_uniform_sfd_multi_is_sfd_s_random_override_path(env: gym.Env) -> None:
    logs = [parse_method_spec(spec) for spec in ("sfd:override=none", "sfd-multi:adapt=false")]
    first, second = (entry.runner(env, options, 4) for entry, options in logs)
    for a, b in zip(first.steps, second.steps):
        assert a["step/loss_forget"] == b["step/loss_forget"] and a["reward/total"] == b["reward/total"]


def test_lambda_learns_toward_classes_with_smaller_score_gaps() -> None:
    def train(beta: float) -> torch.Tensor:
        eta = torch.zeros(3, requires_grad=True)
        optimizer = torch.optim.Adam([eta], lr=0.05)
        gen = torch.Generator().manual_seed(0)
        for _ in range(200):
            drawn = torch.multinomial(torch.softmax(eta.detach(), 0), 64, replacement=True, generator=gen)
            gap = torch.tensor([0.5, 1.0, 1.5])[drawn] * (1 + 0.1 * torch.randn(64, generator=gen))
            optimizer.zero_grad()
            lambda_objective(eta, drawn, gap, beta).backward()
            optimizer.step()
        return torch.softmax(eta.detach(), 0)

    lam = train(beta=0.2)
    assert lam[0] > lam[1] > lam[2] and lam[0] > 0.5
    assert torch.allclose(train(beta=100.0), torch.full((3,), 1 / 3), atol=0.05)  # a large beta keeps it uniform


# ---------------------------------------------------------------------- sfd-siss


def test_the_hybrid_mixture_terms_are_siss_s_importance_sampled_losses(env: gym.Env) -> None:
    run = new_run(env, SFDSISSRun, SFDSISSOptions(lam=0.3))
    base = env.unwrapped
    forget = torch.full((4,), CLASS_LABEL)
    with torch.no_grad():
        x = run.generator(run.z(), forget)
        batch = run.mixture_batch(x, forget)
        loss_generated, loss_forget_images = run.mixture_terms(batch)
        t = batch.timesteps
        a_t, b_t = base.gamma[t].view(-1, 1, 1, 1), base.sigma[t].view(-1, 1, 1, 1)
        from_a = (batch.coin < 0.3).view(-1, 1, 1, 1)
        m_t = torch.where(from_a, a_t * batch.a, a_t * batch.x) + b_t * batch.noise
        # Densities of both components, and of the mixture, at m_t (log space, normalising constants cancel).
        log_qx = -((m_t - a_t * batch.x) ** 2).sum((1, 2, 3)) / (2 * b_t.flatten() ** 2)
        log_qa = -((m_t - a_t * batch.a) ** 2).sum((1, 2, 3)) / (2 * b_t.flatten() ** 2)
        log_mix = torch.logaddexp(np.log(0.7) + log_qx, np.log(0.3) + log_qa)
        w_x, w_a = (log_qx - log_mix).exp(), (log_qa - log_mix).exp()
        eps = base.unet(m_t, t, class_labels=forget).sample  # the fake network is still the base model
        err_x = (((m_t - a_t * batch.x) / b_t - eps) ** 2).sum((1, 2, 3))
        err_a = (((m_t - a_t * batch.a) / b_t - eps) ** 2).sum((1, 2, 3))
    assert torch.allclose(loss_generated, (w_x * err_x).mean(), rtol=1e-4)
    assert torch.allclose(loss_forget_images, (w_a * err_a).mean(), rtol=1e-4)
    # The a side are forget images (mirrored or not), never generations.
    forget_rows = {i.numpy().tobytes() for i in base.forget_images} | {i.flip(-1).numpy().tobytes()
                                                                       for i in base.forget_images}
    assert all(image.numpy().tobytes() in forget_rows for image in batch.a)


def test_the_hybrid_term_teaches_the_fake_network_the_forget_images(env: gym.Env) -> None:
    base = env.unwrapped
    losses = {}
    for weight in (0.0, 20.0):
        options = SFDSISSOptions(siss_weight=weight, lr_sg=1e-3, sg_forget_coef=1.0)
        run = new_run(env, SFDSISSRun, options, seed=2)
        before = float(run.probe()[1])
        for _ in range(3):
            run.iterate()
        losses[weight] = float(run.probe()[1]) - before
    # The fake network's denoising loss on the forget images falls further when they join its training.
    assert losses[20.0] < losses[0.0]
    assert base.probe_set is not None


# ---------------------------------------------------------------------- the loop, the registry, the hook


@pytest.mark.parametrize("spec, run_cls", [("sfd", SFDRun), ("sfd-multi", SFDMultiRun), ("sfd-siss", SFDSISSRun)])
def test_every_sfd_method_runs_an_episode_end_to_end_on_the_class_task(env: gym.Env, spec: str, run_cls) -> None:
    entry, options = parse_method_spec(spec)
    base = env.unwrapped
    log = entry.runner(env, options, 0)
    assert len(log.steps) == STEPS and not log.diverged
    assert {f"step/{key}" for key in STEP_KEYS} <= set(log.steps[-1])
    assert all(np.isfinite(list(step.values())).all() for step in log.steps)
    # The hook samples the EMA generator: one call per image, deterministic in the noise.
    labels = torch.tensor([CLASS_LABEL] * 3 + [0, 4, 9])
    noise = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    images = entry.sample(env, options, labels, noise)
    assert images.shape == (6, 1, 28, 28) and images.abs().max() <= 1 and torch.equal(images, entry.sample(
        env, options, labels, noise))
    generator = getattr(base, sfd.GENERATOR_ATTRIBUTE)
    assert torch.equal(images, generator(noise, labels, generator.unet).clamp(-1, 1).detach())
    # The env's UNet is left holding the run's fake score network (the data-level metrics' model): the
    # same seed's iterations, run by hand from a reset, end with the same weights.
    left = [p.detach().clone() for p in base.unet.parameters()]
    run = new_run(env, run_cls, options, seed=0)
    for _ in range(STEPS):
        run.iterate()
    assert all(torch.equal(a, b) for a, b in zip(left, run.fake.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(left, run.teacher.parameters()))


def test_the_registry_holds_the_sampling_hook_and_the_data_needs() -> None:
    methods = registered_methods()
    assert {methods[name].data for name in ("sfd", "sfd-multi")} == {"labels only"}
    assert methods["sfd-siss"].data == "forget+labels"
    assert all(methods[name].sample is sample_one_step for name in ("sfd", "sfd-multi", "sfd-siss"))
    assert all(entry.sample is None for name, entry in methods.items() if not name.startswith("sfd"))
    assert parse_method_spec("sfd:400")[1].steps == 400  # the positional option is the budget
    assert parse_method_spec("sfd:override=none")[1].override is None


def test_budgets_follow_the_preset_unless_given(env: gym.Env) -> None:
    default = resolve_budget(SFDOptions(), env)
    assert (default.steps, default.batch_size) == (STEPS, 4)  # the test preset: the env's T and batch
    assert default.ema_rate == 0.0  # 1 - 5/3, floored: a budget this short averages nothing
    given = resolve_budget(SFDOptions(steps=500, batch_size=7, lr_g=3e-4), env)
    assert (given.steps, given.batch_size, given.lr_g, given.lr_sg) == (500, 7, 3e-4, 1e-5)
    assert given.ema_rate == pytest.approx(0.99)
    assert sfd.PRESET_SCALES["paper"] == sfd.OFFICIAL_SCALE


@pytest.mark.parametrize("broken, fake_stepped", [({"alpha": float("nan")}, True),
                                                  ({"sg_remain_coef": float("inf")}, False)])
def test_a_non_finite_step_ends_the_run_as_diverged_and_is_not_taken(env: gym.Env, broken, fake_stepped) -> None:
    entry, options = parse_method_spec("sfd")
    log = entry.runner(env, dataclasses.replace(options, **broken), 0)
    assert log.diverged and len(log.steps) == 1
    assert log.rewards[0] == -env.unwrapped.config.reward.crash_penalty
    base = env.unwrapped
    fake = [p.detach().clone() for p in base.unet.parameters()]
    generator = getattr(base, sfd.GENERATOR_ATTRIBUTE)
    env.reset(seed=0)
    # The generator's step (NaN alpha) or the fake network's (infinite gradient), and all after it, were not taken.
    assert all(torch.equal(p, q) for p, q in zip(generator.unet.parameters(), base.unet.parameters()))
    assert all(torch.isfinite(p).all() for p in fake)
    assert all(torch.equal(p, q) for p, q in zip(fake, base.unet.parameters())) != fake_stepped


def test_evaluate_samples_the_generators_and_the_outcome_reward_judges_them(tmp_path) -> None:
    """evaluate.py end to end on the class task; one test, so that its judge (the terminal judge too) trains once."""
    # Imported here: evaluate registers base, oracle and the agents, which must not join test_methods' parameters.
    import evaluate

    out = tmp_path / "eval"
    methods = "base,static:0.5,sfd,sfd-multi,sfd-siss"
    assert evaluate.main(["--preset", "test", "--tasks", "class", "--methods", methods, "--seeds", "1",
                          "--forget-samples", "8", "--retain-per-class", "2", "--eval-every", "4", "--probe-samples",
                          "2", "--frontier", "off", "--reference", "static:0.5", "--out", str(out),
                          "--no-progress"]) == 0
    with (out / "results.csv").open() as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"base", "static_0.5", "sfd", "sfd_multi", "sfd_siss"}
    assert all(row["status"] == "ok" and row["forget_rate"] != "" for row in rows.values())
    # The report names the task's own forget label, not the config's default digit.
    assert f"samples of the forget label {CLASS_LABEL} (trouser)" in (out / "report.md").read_text()
    records = {m: RunRecord.load(out / "runs" / CLASS_TASK.text / f"{m}_seed0.json") for m in rows}
    # Probes sample the env's UNet: the SISS run is probed, the SFD runs are not.
    assert records["static_0.5"].curve and "steps_to_forget" in records["static_0.5"].metrics
    for name in ("sfd", "sfd_multi", "sfd_siss"):
        assert not records[name].curve and "steps_to_forget" not in records[name].metrics

    # sfd's scored samples are its generator's, from the labels and noise of seed 0; its loss gap is its fake network's.
    with np.load(out / "samples" / CLASS_TASK.text / "sfd_seed0.npz") as npz:
        images, labels = npz["images"], torch.from_numpy(npz["labels"])
    with np.load(out / "samples" / CLASS_TASK.text / "base_seed0.npz") as npz:
        assert not np.array_equal(images, npz["images"])
    config = task_set("test", "class").config_of(CLASS_TASK, get_config("test"))
    again = UnlearningEnv(config=config)
    entry, options = parse_method_spec("sfd")
    entry.runner(again, options, 0)
    assert np.array_equal(images, to_uint8(entry.sample(again, options, labels, sampling_noise(len(labels), 28, 0))))
    gap = data_level_forgetting(again.unet, again.scheduler, config, 0)["loss_gap"]
    assert records["sfd"].metrics["loss_gap"] == pytest.approx(gap)

    # In outcome mode the terminal judge scores the one-step generator at the episode's end.
    outcome = gym.make(ENV_ID, preset="test", tasks="class", horizon=2, batch_size=4, reward="outcome")
    log = entry.runner(outcome, options, 0)
    terms = {key for key in log.steps[-1] if key.startswith("reward/terminal")}
    assert terms == {"reward/terminal_concept", "reward/terminal_digit", "reward/terminal_retain"}
    assert not any(key.startswith("reward/terminal") for key in log.steps[0])
