"""evaluate.py end to end on the test preset: every output file, resuming, failed runs, method specs, settings."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import evaluate
import train_policy
from unlearn_env.config import get_config
from unlearn_env.report import RunRecord

SEEDS = 2
PER_LABEL = 2
# Small samples and few DDIM steps: the test checks the plumbing, not the numbers.
FAST = ["--preset", "test", "--seeds", str(SEEDS), "--samples-per-label", str(PER_LABEL), "--ddim-steps", "2",
        "--eval-every", "4", "--probe-ddim-steps", "2", "--no-progress"]
RESULT_COLUMNS = {"method", "seed", "status", "forget_rate", "forget_rate_lo", "forget_rate_hi", "forget_digit_share",
                  "neither_forget", "validator_agreement", "fid_forget", "kid_forget", "kid_forget_concept",
                  "fid_retain", "kid_retain", "kid_retain_0", "is_retain", "ssim_retain", "acc_retain", "acc_0",
                  "loss_gap", "n_forget", "episode_return", "wall_seconds", "error"}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def train(out: Path, timesteps: int, *extra: str) -> Path:
    """Train (or with ``--resume`` continue) the PPO run ``out/ppo/test_0``; returns its folder."""
    return train_policy.main(["--algo", "ppo", "--preset", "test", "--total-timesteps", str(timesteps), "--seed", "0",
                              "--out", str(out), "--no-progress-bar", *extra])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PPO run folder trained for a handful of steps (one rollout of 32)."""
    return train(tmp_path_factory.mktemp("policies"), 32)


@pytest.fixture
def broken_model(tmp_path, policy_run) -> Path:
    """The model.zip of a copy of ``policy_run``, garbage: the spec is valid, loading fails at run time."""
    broken = tmp_path / "broken"
    shutil.copytree(policy_run, broken)
    (broken / "model.zip").write_bytes(b"this is not a zip archive")
    return broken / "model.zip"


def test_end_to_end_writes_everything_resumes_and_survives_a_failed_run(
    tmp_path, policy_run, broken_model, capsys
) -> None:
    out = tmp_path / "eval"
    methods = f"base,static:0.5,vi,ppo:{policy_run / 'model.zip'},ppo:{broken_model}"
    argv = [*FAST, "--methods", methods, "--out", str(out)]

    assert evaluate.main(argv) == 1  # one method failed
    names = ["base", "static_0.5", "vi", "ppo_test_0", "ppo_broken"]
    rows = read_csv(out / "results.csv")
    assert RESULT_COLUMNS <= set(rows[0])
    assert [(r["method"], int(r["seed"])) for r in rows] == [(n, s) for s in range(SEEDS) for n in names]
    for row in rows:
        if row["method"] == "ppo_broken":
            assert row["status"] == "failed" and row["error"]
            continue
        assert row["status"] == "ok" and not row["error"]
        assert 0 <= float(row["forget_rate"]) <= 1 and float(row["fid_retain"]) >= 0
        assert (row["episode_return"] == "") == (row["method"] == "base")
    assert {float(r["ssim_retain"]) for r in rows if r["method"] == "base"} == {1.0}

    summary = read_csv(out / "summary.csv")
    assert {r["method"] for r in summary} == set(names) - {"ppo_broken"}
    fid = next(r for r in summary if r["method"] == "static_0.5" and r["metric"] == "fid_retain")
    assert int(fid["n"]) == SEEDS
    assert float(fid["iqm_lo"]) <= float(fid["iqm"]) <= float(fid["iqm_hi"])

    for name in names:
        for seed in range(SEEDS):
            assert (out / "runs" / f"{name}_seed{seed}.json").is_file()
            if name == "ppo_broken":
                continue
            with np.load(out / "samples" / f"{name}_seed{seed}.npz") as npz:
                assert npz["images"].dtype == np.uint8 and npz["images"].shape == (10 * PER_LABEL, 28, 28)
                assert npz["labels"].tolist() == np.repeat(np.arange(10), PER_LABEL).tolist()
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"lambda_trajectories.png", "metrics_vs_step.png", "intervals.png"} <= plots
    assert {f"samples_{n}.png" for n in names[:-1]} <= plots
    report = (out / "report.md").read_text()
    assert "IQM [95 % CI]" in report and "| `ppo_test_0` |" in report and "ppo_broken` seed 1" in report
    for image in ("plots/intervals.png", "plots/lambda_trajectories.png", "plots/samples_vi.png"):
        assert f"]({image})" in report
    assert "python evaluate.py" in report

    # Rerun after repairing the policy: finished runs are skipped, the failed ones retried.
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json") if "broken" not in p.name}
    shutil.copy(policy_run / "model.zip", broken_model)
    capsys.readouterr()
    assert evaluate.main(argv) == 0
    log = capsys.readouterr().out
    assert log.count("skip ") == len(finished)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json") if "broken" not in p.name} == finished
    assert all(r["status"] == "ok" for r in read_csv(out / "results.csv"))

    # Other settings in the same folder would mix incomparable runs.
    with pytest.raises(SystemExit, match="other settings .*samples_per_label: 3 != 2"):
        evaluate.main([*argv, "--samples-per-label", "3"])


def test_a_policy_trained_further_is_evaluated_again(tmp_path, policy_run, capsys) -> None:
    run = tmp_path / "ppo" / "test_0"
    shutil.copytree(policy_run, run)
    out = tmp_path / "eval"
    argv = [*FAST, "--seeds", "1", "--methods", f"base,ppo:{run}", "--out", str(out)]
    assert evaluate.main(argv) == 0
    first = RunRecord.load(out / "runs" / "ppo_seed0.json")
    assert first.policy_model == str(run / "model.zip") and first.policy_sha256 == sha256(run / "model.zip")
    assert first.policy_timesteps == 32
    base_written = (out / "runs" / "base_seed0.json").stat().st_mtime_ns

    train(tmp_path, 64, "--resume")
    capsys.readouterr()
    assert evaluate.main(argv) == 0
    log = capsys.readouterr().out
    assert "skip base seed 0" in log and "rerun ppo seed 0: the policy changed" in log
    assert (out / "runs" / "base_seed0.json").stat().st_mtime_ns == base_written
    second = RunRecord.load(out / "runs" / "ppo_seed0.json")
    assert second.policy_sha256 == sha256(run / "model.zip") != first.policy_sha256
    assert second.policy_timesteps == 64
    assert "64 training steps" in (out / "report.md").read_text()
    assert {r["policy_timesteps"] for r in read_csv(out / "results.csv") if r["method"] == "ppo"} == {"64"}

    # A record written before policies were hashed cannot tell which one it evaluated: redone.
    legacy = json.loads((out / "runs" / "ppo_seed0.json").read_text())
    for key in ("policy_model", "policy_sha256", "policy_timesteps"):
        del legacy[key]
    (out / "runs" / "ppo_seed0.json").write_text(json.dumps(legacy))
    capsys.readouterr()
    assert evaluate.main(argv) == 0
    assert "rerun ppo seed 0: the policy changed since the earlier run (SHA-256 unknown" in capsys.readouterr().out


def test_every_run_failing_still_writes_the_report(tmp_path, broken_model, capsys) -> None:
    out = tmp_path / "eval"
    assert evaluate.main([*FAST, "--seeds", "1", "--methods", f"ppo:{broken_model}", "--out", str(out)]) == 1
    assert "(1 failed run(s): rerun to retry)" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "No run succeeded" in report and "`ppo` seed 0: ValueError" in report and "## Plots" not in report
    assert not list((out / "plots").iterdir())
    assert [r["status"] for r in read_csv(out / "results.csv")] == ["failed"]
    # Only failed runs in the folder: corrected settings are not refused.
    argv = [*FAST, "--seeds", "1", "--methods", "base", "--out", str(out), "--env-kwargs", "horizon=5"]
    assert evaluate.main(argv) == 0


def test_a_failed_start_does_not_block_the_corrected_command(tmp_path) -> None:
    out = tmp_path / "eval"
    argv = [*FAST, "--seeds", "1", "--methods", "base", "--out", str(out)]
    # A missing data folder: one line naming it, no traceback; the settings are not yet final.
    with pytest.raises(SystemExit, match=r"^error: data folder /nonexistent does not exist"):
        evaluate.main([*argv, "--env-kwargs", "fashion_dir=/nonexistent"])
    assert evaluate.main(argv) == 0
    # Now a run is done: other settings are refused, naming each field that differs.
    with pytest.raises(SystemExit, match=r"other settings .*: config\.unlearn\.horizon: 5 != 8\)"):
        evaluate.main([*argv, "--env-kwargs", "horizon=5"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("static:1.5", "must lie in"),
        ("static", "needs a λ"),
        ("vi:gamma=1", "KEY=VALUE"),
        ("vi:beta=-1", "bad vi options"),
        ("ppo:/no/such/run", "needs a model.zip"),
        ("dqn:x", "unknown method"),
        ("static:0.5,static:0.50", "share a name"),
    ],
)
def test_bad_method_specs_fail_before_any_run(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate.parse_methods(spec, get_config("test"))


@pytest.mark.filterwarnings("ignore:skipping a snapshot")  # the garbage model.zip, before the error
def test_a_run_folder_must_hold_a_readable_model(tmp_path, policy_run, broken_model) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(policy_run / "config.json", empty)
    with pytest.raises(ValueError, match="holds no saved model yet"):
        evaluate.parse_methods(f"ppo:{empty}", get_config("test"))
    # A folder is resolved to its snapshot when the command starts; a file is only loaded by its runs.
    with pytest.raises(ValueError, match="wasn't a zip-file"):
        evaluate.parse_methods(f"ppo:{broken_model.parent}", get_config("test"))
    assert evaluate.parse_methods(f"ppo:{broken_model}", get_config("test"))[0].model == broken_model


def test_method_names(policy_run) -> None:
    cfg = get_config("test")
    methods = evaluate.parse_methods(f"base, static:0.3, vi:beta=0.1:hidden=8, ppo:{policy_run}", cfg)
    assert [m.name for m in methods] == ["base", "static_0.3", "vi_beta0.1_hidden8", "ppo"]
    assert methods[2].vi.beta == 0.1 and methods[2].vi.hidden == 8


def test_bad_spec_exits_before_writing(tmp_path) -> None:
    with pytest.raises(SystemExit, match="unknown method"):
        evaluate.main([*FAST, "--methods", "base,nonsense", "--out", str(tmp_path / "eval")])
    assert not (tmp_path / "eval").exists()
