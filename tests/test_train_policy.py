"""train_policy.py: the run folder's files, --resume continuing the step count, Ctrl-C saving,
one-line errors for mistaken settings, fallback past unreadable snapshots, the run lock."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.save_util import load_from_zip_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_policy
from agents import load_lambda_policy
from agents.envs import EPISODE_KEYS
from unlearn_env.episode import STEP_KEYS

REPO = Path(__file__).resolve().parents[1]
ENV_ARGS = ["--env-kwargs", "horizon=4", "batch_size=4"]


def trained_steps(model_zip: Path) -> int:
    data, _, _ = load_from_zip_file(model_zip, load_data=True, device="cpu")
    return int(data["num_timesteps"])


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``tag`` over every TensorBoard file of the run."""
    events = []
    for event_file in sorted(run_dir.glob("tb_*/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            events += [(e.step, e.value) for e in accumulator.Scalars(tag)]
    return sorted(events)


def test_writes_the_run_folder_and_resume_continues_the_step_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--algo", "ppo", "--preset", "test", "--seed", "3", "--out", str(tmp_path), "--save-freq", "8",
            "--hyperparams", "n_steps=8", "batch_size=8", *ENV_ARGS]
    run_dir = train_policy.main([*args, "--total-timesteps", "16"])

    assert run_dir == tmp_path / "ppo" / "test_3"
    for name in ("model.zip", "vecnormalize.pkl", "config.json", "command.txt",
                 "checkpoints/rl_model_8_steps.zip", "checkpoints/rl_model_vecnormalize_8_steps.pkl"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo"] == "ppo" and config["seed"] == 3 and config["hyperparams"]["n_steps"] == 8
    assert config["env_config"]["unlearn"]["horizon"] == 4 and config["env_kwargs"] == {"horizon": "4", "batch_size": "4"}
    with (run_dir / "monitor" / "0.monitor.csv").open() as handle:
        episodes = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    assert len(episodes) == 4 and set(EPISODE_KEYS) <= set(episodes[0])
    assert {f"step/{key}" for key in STEP_KEYS} <= {tag for tag in _all_tags(run_dir)}
    assert {"reward/total", "reward/siss", "reward/smoothness", "episode/return", "episode/lambda_mean"} <= _all_tags(run_dir)
    assert [step for step, _ in scalars(run_dir, "step/lambda")] == list(range(16))

    with pytest.raises(SystemExit) as exit_info:
        train_policy.main([*args, "--hyperparams", "n_steps=16", "--resume"])
    assert exit_info.value.code == 2 and "these differ: n_steps (saved 8, given 16)" in capsys.readouterr().err
    assert load_lambda_policy(run_dir / "checkpoints" / "rl_model_8_steps.zip").model.num_timesteps == 8

    # As if killed before the final save: --resume falls back to the latest checkpoint.
    (run_dir / "model.zip").unlink()
    (run_dir / "vecnormalize.pkl").unlink()
    train_policy.main([*args, "--total-timesteps", "32", "--resume"])
    assert trained_steps(run_dir / "model.zip") == 32
    assert (run_dir / "checkpoints" / "rl_model_32_steps.zip").is_file()
    assert [step for step, _ in scalars(run_dir, "step/lambda")] == list(range(32))  # one curve, no restart
    assert [step for step, _ in scalars(run_dir, "episode/return")] == list(range(4, 33, 4))
    assert len((run_dir / "command.txt").read_text().splitlines()) == 2


def _all_tags(run_dir: Path) -> set[str]:
    accumulator = EventAccumulator(str(next(run_dir.glob("tb_*"))))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def test_off_policy_resume_restores_the_replay_buffer(tmp_path: Path) -> None:
    args = ["--algo", "sac", "--preset", "test", "--out", str(tmp_path), "--no-progress-bar", *ENV_ARGS]
    run_dir = train_policy.main([*args, "--total-timesteps", "12"])
    assert (run_dir / "replay_buffer.pkl").is_file()
    train_policy.main([*args, "--total-timesteps", "20", "--resume"])
    model = SAC.load(run_dir / "model.zip")
    model.load_replay_buffer(run_dir / "replay_buffer.pkl")
    assert model.num_timesteps == 20 and model.replay_buffer.size() == 20


def test_refuses_to_overwrite_or_resume_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--algo", "ppo", "--preset", "test", "--out", str(tmp_path), "--total-timesteps", "8"]
    with pytest.raises(SystemExit) as exit_info:
        train_policy.main([*base, "--resume"])
    assert exit_info.value.code == 2 and "holds no run" in capsys.readouterr().err
    assert not (tmp_path / "ppo").exists()  # a mistyped --resume leaves no folder behind
    (tmp_path / "ppo" / "test_0").mkdir(parents=True)
    (tmp_path / "ppo" / "test_0" / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        train_policy.main(base)
    assert exit_info.value.code == 2 and "already holds a run: pass --resume" in capsys.readouterr().err


@pytest.mark.parametrize(("mistake", "message"), [
    (["--env-kwargs", "horizonn=4"], "unknown config key(s) ['horizonn']; valid keys are"),
    (["--env-kwargs", "horizon"], "override 'horizon' is not of the form key=value"),
    (["--env-kwargs", "adam_betas=0.9"], "adam_betas expects 2 comma-separated values"),
    (["--env-kwargs", "fashion_dir=/nonexistent"], "data folder /nonexistent does not exist"),
    pytest.param(["--env-kwargs", "device=cuda"], "device='cuda' was asked for, but CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
    (["--hyperparams", "n_stepz=8"], "unknown hyper-parameter(s) ['n_stepz']"),
    (["--hyperparams", "learning_rate=abc"], "learning_rate expects a number, got 'abc'"),
    (["--hyperparams", "policy_kwargs={net_arch: [8"], "policy_kwargs='{net_arch: [8' is not a YAML value"),
    (["--hyperparams", "normalize=maybe"], "normalize must be true, false or a mapping"),
])
def test_a_mistaken_new_run_exits_in_one_line_and_leaves_no_run(
    mistake: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--algo", "ppo", "--preset", "test", "--out", str(tmp_path), "--total-timesteps", "8", "--no-progress-bar",
            "--hyperparams", "n_steps=8", "batch_size=8"]
    with pytest.raises(SystemExit) as exit_info:
        train_policy.main([*args, *mistake])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err, err
    run_dir = tmp_path / "ppo" / "test_0"
    assert not (run_dir / "config.json").exists() and not (run_dir / "command.txt").exists()


def test_the_corrected_command_starts_afresh_after_a_failed_new_run(tmp_path: Path) -> None:
    args = ["--algo", "ppo", "--preset", "test", "--out", str(tmp_path), "--total-timesteps", "8", "--no-progress-bar",
            "--hyperparams", "n_steps=8", "batch_size=8"]
    with pytest.raises(SystemExit):
        train_policy.main([*args, "learning_rate=abc"])
    run_dir = train_policy.main([*args, "learning_rate=1e-3"])  # no "already holds a run", no bad settings kept
    assert json.loads((run_dir / "config.json").read_text())["hyperparams"]["learning_rate"] == 1e-3
    assert trained_steps(run_dir / "model.zip") == 8
    assert len((run_dir / "command.txt").read_text().splitlines()) == 1


@pytest.mark.parametrize("argument", ["--total-timesteps", "--n-envs", "--save-freq"])
@pytest.mark.parametrize("value", ["0", "-5", "x"])
def test_counts_must_be_positive_integers(
    argument: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_policy.main(["--algo", "ppo", "--preset", "test", "--out", str(tmp_path), argument, value])
    assert exit_info.value.code == 2 and f"{argument}: expected a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "ppo").exists()


def test_resume_compares_resolved_settings_and_lets_the_runtime_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Horizon and alpha are the test preset's own (8 and 1.0), given on resume only.
    args = ["--algo", "ppo", "--preset", "test", "--out", str(tmp_path), "--no-progress-bar",
            "--hyperparams", "n_steps=8", "batch_size=8"]
    run_dir = train_policy.main([*args, "--total-timesteps", "8", "--env-kwargs", "batch_size=4"])
    same = ["--env-kwargs", "batch_size=4", "horizon=8", "alpha=0.001", "device=cpu",
            "--hyperparams", "n_steps=8.0", "batch_size=8", "learning_rate=0.0003", "ent_coef=0.0"]
    train_policy.main([*args, "--total-timesteps", "16", "--resume", *same])
    assert trained_steps(run_dir / "model.zip") == 16
    config = json.loads((run_dir / "config.json").read_text())
    assert config["env_config"]["runtime"]["device"] == "cpu" and config["total_timesteps"] == 16

    with pytest.raises(SystemExit) as exit_info:
        train_policy.main([*args, "--resume", "--env-kwargs", "horizon=16", "--hyperparams", "gamma=0.9"])
    differ = "these differ: horizon (saved 8, given 16); gamma (saved 0.99, given 0.9)"
    assert exit_info.value.code == 2 and differ in capsys.readouterr().err


def test_a_run_folder_trains_one_process_at_a_time(tmp_path: Path) -> None:
    run_dir = tmp_path / "ppo" / "test_0"
    run_dir.mkdir(parents=True)
    with open(run_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another training process would
        with pytest.raises(SystemExit, match=f"another process is training into {re.escape(str(run_dir))}"):
            train_policy.main(["--algo", "ppo", "--preset", "test", "--out", str(tmp_path), "--total-timesteps", "8"])
    assert not (run_dir / "config.json").exists()


def test_resume_skips_snapshots_that_do_not_read_back(tmp_path: Path) -> None:
    args = ["--algo", "ppo", "--preset", "test", "--out", str(tmp_path), "--save-freq", "4", "--no-progress-bar",
            "--hyperparams", "n_steps=4", "batch_size=4", *ENV_ARGS]
    run_dir = train_policy.main([*args, "--total-timesteps", "8"])
    checkpoints = run_dir / "checkpoints"
    assert trained_steps(checkpoints / "rl_model_4_steps.zip") == 4
    # Killed while writing: model.zip cut short, the newest checkpoint a zip without the model's data.
    (run_dir / "model.zip").write_bytes((run_dir / "model.zip").read_bytes()[:500])
    with zipfile.ZipFile(checkpoints / "rl_model_8_steps.zip", "w") as archive:
        archive.writestr("system_info.txt", "")

    with pytest.warns(UserWarning) as warned:
        train_policy.main([*args, "--total-timesteps", "12", "--resume"])
    skipped = " ".join(str(w.message) for w in warned)
    assert f"cannot read {run_dir / 'model.zip'}" in skipped and "rl_model_8_steps.zip holds no model data" in skipped
    assert trained_steps(run_dir / "model.zip") == 12  # from the 4-step checkpoint

    for snapshot in (run_dir / "model.zip", *checkpoints.glob("rl_model_*_steps.zip")):
        snapshot.write_bytes(b"")
    none_reads = f"no snapshot of {re.escape(str(run_dir))} reads back"
    with pytest.warns(UserWarning, match="skipping"), pytest.raises(SystemExit, match=none_reads):
        train_policy.main([*args, "--total-timesteps", "16", "--resume"])


@pytest.mark.parametrize("vec_env", ["dummy", "subproc"])
def test_ctrl_c_saves_exits_130_and_resume_continues(tmp_path: Path, vec_env: str) -> None:
    args = ["--algo", "ppo", "--preset", "test", "--out", str(tmp_path), "--no-progress-bar",
            "--hyperparams", "n_steps=4", "batch_size=8", "--vec-env", vec_env, "--n-envs", "2", *ENV_ARGS]
    process = subprocess.Popen([sys.executable, str(REPO / "train_policy.py"), *args, "--total-timesteps", "100000"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    run_dir = tmp_path / "ppo" / "test_0"
    monitor = run_dir / "monitor" / "0.monitor.csv"
    try:
        deadline = time.monotonic() + 300  # generous: CI's two cores may be busy with other tests
        while time.monotonic() < deadline and process.poll() is None:
            if monitor.exists() and len(monitor.read_text().splitlines()) >= 3:  # an episode is done: it trains
                break
            time.sleep(0.2)
        assert process.poll() is None and monitor.exists(), "training did not start"
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group, subprocess workers too
        output, _ = process.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a failed test leaves no training behind
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output  # a `set -e` script stops instead of using a half-trained policy
    assert "interrupted" in output and "--total-timesteps 100000 --resume" in output
    steps = trained_steps(run_dir / "model.zip")
    assert steps >= 3  # the episode's last step may be uncounted
    assert (run_dir / "vecnormalize.pkl").is_file()

    train_policy.main([*args, "--total-timesteps", str(steps + 8), "--resume"])  # one rollout: 2 envs x 4 steps
    assert trained_steps(run_dir / "model.zip") == steps + 8


def test_a_resume_with_nothing_to_train_leaves_the_model_file_alone(tmp_path: Path) -> None:
    # evaluate.py identifies a policy by model.zip's SHA-256; SB3 would store a new time in it.
    args = ["--algo", "ppo", "--preset", "test", "--out", str(tmp_path), "--no-progress-bar", "--total-timesteps",
            "8", "--hyperparams", "n_steps=4", "batch_size=4", *ENV_ARGS]
    model = train_policy.main(args) / "model.zip"
    before = model.read_bytes()
    train_policy.main([*args, "--resume"])
    assert model.read_bytes() == before


def test_batched_vector_env_trains_and_the_policy_loads(tmp_path: Path) -> None:
    args = ["--algo", "ppo", "--preset", "test", "--seed", "0", "--out", str(tmp_path), "--n-envs", "2", "--batched",
            "--total-timesteps", "16", "--hyperparams", "n_steps=8", "batch_size=8", "--no-progress-bar", *ENV_ARGS]
    run_dir = train_policy.main(args)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["vec_env"] == "batched" and config["n_envs"] == 2
    assert trained_steps(run_dir / "model.zip") == 16
    with (run_dir / "monitor" / "batched.monitor.csv").open() as handle:
        episodes = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    assert len(episodes) == 4  # 2 runs x 2 episodes of 4 steps
    obs, _ = gym.make("SISSUnlearning-v0", preset="test", horizon=4, batch_size=4).reset(seed=0)
    assert 0.1 <= load_lambda_policy(run_dir)(obs) <= 0.9
