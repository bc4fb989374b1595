"""evaluate.py end to end on the test preset: every kind of method, paired comparisons, resuming, failed and
diverged runs, settings, tasks, the frontier, method names and bad input.

Sizes are tiny (4-update episodes, 8 forget-label samples): these tests check the plumbing, not the numbers.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

import evaluate
import train_policy
from evaluation import frontier
from evaluation.methods import parse_methods
from evaluation.runs import RunRecord
from unlearn_env.config import ExperimentConfig, get_config
from unlearn_env.instances import resolve_task_set

pytestmark = pytest.mark.xdist_group("evaluate")
"""One worker runs them all: the policy, the base models and the judge are built once."""

HORIZON = 4
FORGET, PER_CLASS = 8, 2
FAST = ["--preset", "test", "--forget-samples", str(FORGET), "--retain-per-class", str(PER_CLASS), "--eval-every", "2",
        "--probe-samples", "4", "--no-progress"]
OFF = ["--frontier", "off", "--reference", "static:0.5"]
UPDATE_METHODS = ["neyman", "vi", "vi:objective=lookahead", "naive", "neggrad", "erasediff", "siss-nois", "bernoulli",
                  "vdu:fisher_batches=3:sample_steps=2", "static:0.5"]
"""The registry's unlearning methods (SFD's, with their own sampler, are tested in test_sfd.py)."""


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.json")}


def config() -> ExperimentConfig:
    return get_config("test", horizon=str(HORIZON))


@pytest.fixture(scope="module")
def env() -> list[str]:
    """Short episodes (the judge and validator come from the test run's cache, trained once)."""
    return ["--env-kwargs", f"horizon={HORIZON}"]


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory: pytest.TempPathFactory, env: list[str]) -> Path:
    """A PPO run folder of one 8-step rollout, trained in the env evaluated here."""
    return train_policy.main(["--algo", "ppo", "--preset", "test", "--total-timesteps", "8", "--seed", "0",
                              "--out", str(tmp_path_factory.mktemp("policies")), "--no-progress-bar",
                              "--hyperparams", "n_steps=8", "batch_size=8", *env])


def test_every_kind_of_method_runs_end_to_end_fails_alone_and_resumes(
    tmp_path: Path, policy_run: Path, env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(policy_run, broken)
    (broken / "model.zip").write_bytes(b"not a zip archive")  # a valid spec whose model fails to load at run time
    out = tmp_path / "eval"
    methods = ["base", "oracle", f"ppo:{policy_run}", f"ppo:{broken / 'model.zip'}", *UPDATE_METHODS]
    argv = [*FAST, "--seeds", "1", *OFF, "--methods", ",".join(methods), "--out", str(out), *env]

    assert evaluate.main(argv) == 1  # the broken policy's run failed; every other run went on
    names = ["base", "oracle", "ppo_test_0", "ppo_broken", "neyman", "vi", "vi_objectivelookahead", "naive",
             "neggrad", "erasediff", "siss_nois", "bernoulli", "vdu_fisher_batches3_sample_steps2", "static_0.5"]
    rows = read_csv(out / "results.csv")
    assert [r["method"] for r in rows] == names  # the reference, given among the methods, runs once
    by_name = {r["method"]: r for r in rows}
    assert by_name["ppo_broken"]["status"] == "failed" and by_name["ppo_broken"]["error"]
    for name in set(names) - {"ppo_broken"}:
        row = by_name[name]
        assert row["status"] == "ok" and not row["error"], name
        assert 0 <= float(row["forget_rate"]) <= 1 and float(row["kid_retain"]) > -1
        episode = name not in ("base", "oracle")
        assert (row["episode_return"] != "") == episode and (row["steps_to_forget"] != "") == episode, name
        assert (row["ms_per_update"] != "" and float(row["ms_per_update"]) > 0) == episode, name
        with np.load(out / "samples" / f"{name}_seed0.npz") as npz:
            assert npz["images"].dtype == np.uint8 and npz["images"].shape == (FORGET + 9 * PER_CLASS, 28, 28)
            assert (npz["labels"] == 1).sum() == FORGET
    assert float(by_name["base"]["ssim_retain"]) == 1.0
    with np.load(out / "samples" / "base_seed0.npz") as base, np.load(out / "samples" / "oracle_seed0.npz") as oracle:
        assert not np.array_equal(base["images"], oracle["images"])  # the oracle's own weights were sampled

    ppo = RunRecord.load(out / "runs" / "ppo_test_0_seed0.json")
    assert ppo.policy_model == str(policy_run / "model.zip") and ppo.policy_sha256 == sha256(policy_run / "model.zip")
    assert ppo.policy_timesteps == 8 and len(ppo.lambdas) == HORIZON
    vi = RunRecord.load(out / "runs" / "vi_seed0.json")
    assert [p["step"] for p in vi.curve] == [0, 2, 4]  # probes after the reset and every 2 updates
    assert {"forget_rate", "forget_digit_share", "probe_loss_retain", "probe_loss_forget"} <= set(vi.curve[1])

    paired = read_csv(out / "paired.csv")
    assert {r["reference"] for r in paired} == {"static_0.5"}
    assert {r["method"] for r in paired} == set(names) - {"ppo_broken"}
    assert {r["method"] for r in read_csv(out / "oracle_gaps.csv")} == set(names) - {"ppo_broken", "oracle"}
    report = (out / "report.md").read_text()
    for section in ("## Verdict", "## Resolution", "### Gap to the retrain oracle `oracle`", "## Cost and episodes",
                    "## Failed runs", "## Policies"):
        assert section in report, section
    assert "`ppo_broken` seed 0: " in report and "`ppo_test_0`: `" in report
    assert "| `vdu_fisher_batches3_sample_steps2` | 1 |" in report

    # Rerun after repairing the policy: the finished runs are skipped, the failed one is retried.
    done = {k: v for k, v in mtimes(out / "runs").items() if "broken" not in k}
    shutil.copy(policy_run / "model.zip", broken / "model.zip")
    capsys.readouterr()
    assert evaluate.main(argv) == 0
    assert capsys.readouterr().out.count("skip ") == len(names) - 1
    assert {k: v for k, v in mtimes(out / "runs").items() if "broken" not in k} == done
    assert all(r["status"] == "ok" for r in read_csv(out / "results.csv"))

    # Other settings in the same folder would mix incomparable runs: refused, naming the field.
    with pytest.raises(SystemExit, match=r"other settings .*evaluation\.forget_samples: 4 != 8"):
        evaluate.main([*argv, "--forget-samples", "4"])


def test_tasks_score_every_task_of_the_set_and_a_method_against_itself_differs_by_exactly_zero(
    tmp_path: Path, policy_run: Path, env: list[str]
) -> None:
    out = tmp_path / "eval"
    # One policy under two names: the same method twice, one of them the reference.
    argv = [*FAST, "--seeds", "2", "--frontier", "off", "--tasks", "test", "--methods", f"ppo:{policy_run}:name=twin",
            "--reference", f"ppo:{policy_run}:name=ppo", "--out", str(out), *env]
    assert evaluate.main(argv) == 0
    tasks = resolve_task_set(config(), "test").texts()
    assert len(tasks) == 2
    rows = read_csv(out / "results.csv")
    assert {(r["task"], r["method"], r["seed"]) for r in rows} == {
        (t, m, s) for t in tasks for m in ("twin", "ppo") for s in ("0", "1")}
    assert all(r["status"] == "ok" for r in rows)
    assert all((out / "runs" / t / "twin_seed1.json").is_file() for t in tasks)

    # Per task (2 seeds) and pooled over tasks x seeds (4 pairs): zero difference, zero-width interval.
    paired = read_csv(out / "paired.csv")
    assert all(int(r["n"]) > 0 for r in paired)  # no row for a per-class metric a task does not have
    twin = [r for r in paired if r["method"] == "twin" and r["metric"] != "ms_per_update"]  # timing differs
    assert {r["reference"] for r in twin} == {"ppo"}
    assert {(r["task"], r["n"]) for r in twin if r["metric"] == "forget_rate"} == {*((t, "2") for t in tasks),
                                                                                    ("all", "4")}
    assert {"forget_rate", "kid_retain", "loss_gap", "steps_to_forget", "episode_return"} <= {r["metric"] for r in twin}
    for row in twin:
        assert float(row["mean_difference"]) == float(row["ci_low"]) == float(row["ci_high"]) == 0.0, row

    pooled = {r["metric"]: r for r in read_csv(out / "summary.csv") if r["task"] == "all" and r["method"] == "twin"}
    kid = pooled["kid_retain"]
    assert kid["n"] == "4" and float(kid["iqm_lo"]) <= float(kid["iqm"]) <= float(kid["iqm_hi"])
    report = (out / "report.md").read_text()
    assert "## Per task" in report and "## IQM" in report and "instance set `test`" in report
    assert f"`{tasks[1]}`" in report


def test_a_diverging_method_is_recorded_and_kept_not_raised(tmp_path: Path, env: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    argv = [*FAST, "--seeds", "1", *OFF, "--methods", "neggrad:superfactor=1e6", "--out", str(out),
            *env, "lr=1e30"]
    assert evaluate.main(argv) == 0  # an outcome of the method, not a failed run
    record = RunRecord.load(out / "runs" / "neggrad_superfactor1000000.0_seed0.json")
    assert record.status == "diverged" and record.diverged and "diverged" in record.error
    assert not record.metrics and len(record.steps) < HORIZON
    # The diverged step's probe has no calls: NaN images are not a forgotten concept.
    assert np.isnan(record.curve[-1]["forget_rate"]) and record.curve[-1]["step"] == len(record.steps)
    assert read_csv(out / "results.csv")[0]["status"] == "diverged"
    assert "## Diverged runs" in (out / "report.md").read_text()
    capsys.readouterr()
    assert evaluate.main(argv) == 0
    assert "skip neggrad_superfactor1000000.0 seed 0" in capsys.readouterr().out  # kept, not retried


def test_the_frontier_chooses_the_reference_by_its_rule_and_resumes(tmp_path: Path, env: list[str]) -> None:
    out = tmp_path / "eval"
    argv = [*FAST, "--seeds", "1", "--methods", "base", "--out", str(out), "--frontier-lambdas", "0.3,0.7",
            "--tuning-seeds", "2", "--frontier-budgets", "0.5,1", "--frontier-forget-samples", "4",
            "--frontier-retain-per-class", "2", *env]
    assert evaluate.main(argv) == 0
    records = [frontier.FrontierRecord.load(p) for p in sorted((out / "frontier" / "runs").rglob("*.json"))]
    assert sorted(r.name for r in records) == sorted(f"{what}_seed{s}" for what in ("base", "lam0.3", "lam0.7")
                                                     for s in (1000, 1001))
    assert all(r.status == "ok" for r in records)
    choice = frontier.choose_static_lambda(frontier.points_of(records), HORIZON)
    assert {r["method"] for r in read_csv(out / "results.csv")} == {"base", f"static_{choice.lam:g}"}
    rows = read_csv(out / "frontier.csv")
    assert {(r["lam"], r["budget"]) for r in rows} == {("base", "0"), *((lam, b) for lam in ("0.3", "0.7")
                                                                         for b in ("2", "4"))}
    assert [r["lam"] for r in rows if r["chosen"] == "True"] == [f"{choice.lam:g}"]
    report = (out / "report.md").read_text()
    assert f"**Best static λ: {choice.lam:g}**" in report and "### Headroom" in report
    assert "](plots/frontier_kid_retain.png)" in report and (out / "plots" / "frontier_kid_retain.png").is_file()

    before = mtimes(out)
    assert evaluate.main(argv) == 0  # every frontier episode and run is reused
    assert mtimes(out / "frontier" / "runs") == {k.removeprefix("frontier/runs/"): v for k, v in before.items()
                                                 if k.startswith("frontier/runs/")}
    assert mtimes(out / "runs") == {k.removeprefix("runs/"): v for k, v in before.items() if k.startswith("runs/")}


def test_policies_are_named_by_their_run_folders_and_stay_distinct(tmp_path: Path, policy_run: Path) -> None:
    cfg = config()
    assert [m.name for m in parse_methods(f"base, static:0.3, vi:beta=0.1, ppo:{policy_run}", cfg)] == [
        "base", "static_0.3", "vi_beta0.1", "ppo"]
    for parent in ("paper", "outcome"):
        shutil.copytree(policy_run, tmp_path / parent / "ppo" / "cpu_0")
    other = tmp_path / "paper" / "ppo" / "cpu_1"
    shutil.copytree(policy_run, other)
    same_folder_name = parse_methods([f"ppo:{tmp_path / 'paper/ppo/cpu_0'}", f"ppo:{tmp_path / 'outcome/ppo/cpu_0'}"],
                                     cfg)
    assert [m.name for m in same_folder_name] == ["paper_ppo_cpu_0", "outcome_ppo_cpu_0"]
    assert [m.name for m in parse_methods([f"ppo:{tmp_path / 'paper/ppo/cpu_0'}", f"ppo:{other}"], cfg)] == [
        "ppo_cpu_0", "ppo_cpu_1"]
    # A reference outside --methods is named with them.
    methods, reference = evaluate.methods_and_reference(f"ppo:{other}", f"ppo:{tmp_path / 'paper/ppo/cpu_0'}", cfg)
    assert [m.name for m in methods] == ["ppo_cpu_1", "ppo_cpu_0"] and reference is methods[-1]
    methods, reference = evaluate.methods_and_reference("base,static:0.5", "static:lam=0.5", cfg)
    assert [m.name for m in methods] == ["base", "static_0.5"] and reference is methods[-1]  # merged


@pytest.mark.parametrize(("argv", "message"), [
    (["--methods", "base,nonsense", *OFF], "unknown method 'nonsense'"),
    (["--methods", "ppo:/no/such/run", *OFF], "'/no/such/run' does not exist"),
    (["--methods", "base,static:0.5,static:0.50", *OFF], "are the same method"),
    (["--methods", "base", "--frontier", "off", "--reference", "static:1.5"], "must lie in"),
])
def test_bad_methods_fail_with_one_line_before_anything_is_written(tmp_path: Path, argv: list[str], message: str
                                                                   ) -> None:
    with pytest.raises(SystemExit, match=f"^error: .*{message}"):
        evaluate.main([*FAST, *argv, "--out", str(tmp_path / "eval")])
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "0", *OFF], "need 1 <= --seeds"),
    (["--seeds", "1001", *OFF], "need 1 <= --seeds"),  # 1000 is the first tuning seed
    (["--frontier", "off"], "--frontier off needs --reference"),
    (["--forget-samples", "1", *OFF], "need --forget-samples >= 2"),
])
def test_bad_sizes_are_usage_errors(tmp_path: Path, argv: list[str], message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([*FAST, *argv, "--methods", "base", "--out", str(tmp_path / "eval")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
