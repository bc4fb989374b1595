"""Grids of runs on a real local Ray (evaluation.grid): evaluate.py and train_policy.py with --workers.

The cluster is a Ray instance of 2 CPUs in a process of its own, shared by the module, whose workers'
artefact cache starts empty, as on another machine: every grid here also checks that the driver
ships the base model and the classifiers. Sizes are tiny (2-update episodes, 8 forget samples).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import evaluate
import train_policy
from evaluation import grid
from evaluation.judge import ensure_classifier
from unlearn_env.cache import CACHE_ENV_VAR, NO_BUILD_ENV_VAR, ArtifactBundle, MissingArtifactError
from unlearn_env.config import get_config
from unlearn_env.pretrain import ensure_base_model

FAST = ["--preset", "test", "--seeds", "2", "--forget-samples", "8", "--retain-per-class", "2", "--eval-every", "0",
        "--frontier", "off", "--reference", "static:0.5", "--methods", "neyman,static:0.5", "--no-progress",
        "--env-kwargs", "horizon=2"]
"""2 methods x 2 seeds."""
RUNS = {f"{method}_seed{seed}.json" for method in ("neyman", "static_0.5") for seed in (0, 1)}
RAY_GROUP = pytest.mark.xdist_group("ray")
"""Under pytest -n K (--dist loadgroup), the Ray tests share one worker, and so one cluster and one reference."""
CLUSTER = """
import ray, sys
ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""


def outcome(path: Path) -> dict:
    """A run record less its timings, which differ from run to run."""
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.endswith("_seconds")}


def outcomes(out: Path) -> dict[str, dict]:
    return {p.name: outcome(p) for p in (out / "runs").glob("*.json")}


@pytest.fixture(scope="module")
def worker_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker_cache")


@pytest.fixture(scope="module")
def cluster(worker_cache: Path) -> Iterator[str]:
    """The address of a local 2-CPU Ray cluster whose workers cache artefacts in ``worker_cache`` (empty)."""
    pytest.importorskip("ray")
    # Token authentication (on by default for a local instance in recent Ray) would need the driver to
    # send the token too; this cluster listens on this machine only.
    env = {**os.environ, CACHE_ENV_VAR: str(worker_cache), "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=env)
    assert process.stdout is not None and process.stdin is not None
    address = process.stdout.readline().strip()
    assert address, "the cluster did not start"
    yield address
    process.stdin.close()  # the cluster process shuts Ray down and exits
    process.wait(timeout=120)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The records of the grid run in-process."""
    out = tmp_path_factory.mktemp("in_process")
    assert evaluate.main([*FAST, "--out", str(out)]) == 0
    records = outcomes(out)
    assert set(records) == RUNS and all(r["status"] == "ok" for r in records.values())
    return records


def worker_pids(marker: str, title: str) -> list[int]:
    """Processes titled ``title`` (Ray names a worker by what it runs) whose environment holds ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(title.encode())
                    and marker.encode() in (proc / "environ").read_bytes()):
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return pids


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, cluster: str) -> tuple[list[str], Path, int, str]:
    """A grid on the cluster stopped by Ctrl-C once its first record is written: its command, folder, status, log."""
    out = tmp_path_factory.mktemp("grid") / "eval"
    argv = [*FAST, "--out", str(out), "--ray-address", cluster, "--workers", "2"]

    def interrupt_after_the_first_record() -> None:
        while not list((out / "runs").glob("*.json")):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_the_first_record, daemon=True).start()
    with pytest.raises(SystemExit) as stop, contextlib.redirect_stdout(io.StringIO()) as log:
        evaluate.main(argv)
    return argv, out, stop.value.code, log.getvalue()


@RAY_GROUP
def test_ctrl_c_stops_a_grid_with_status_130_keeping_whole_records(
        interrupted: tuple[list[str], Path, int, str], reference: dict[str, dict]) -> None:
    _, out, status, log = interrupted
    assert status == 130 and "rerun the same command" in log
    kept = outcomes(out)
    assert 1 <= len(kept) < len(RUNS)
    assert all(reference[name] == record for name, record in kept.items())  # each one whole, as in-process
    assert all((out / "samples" / name.replace(".json", ".npz")).is_file() for name in kept)


@RAY_GROUP
def test_the_same_command_runs_the_missing_runs_on_workers_one_killed_and_gives_the_in_process_records(
        interrupted: tuple[list[str], Path, int, str], reference: dict[str, dict], worker_cache: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    argv, out, _, _ = interrupted
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    killed: list[int] = []
    done = threading.Event()

    def kill_the_first_run() -> None:
        while not done.is_set() and not killed:
            for pid in worker_pids(str(worker_cache), "ray::Worker.run"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_first_run, daemon=True)
    killer.start()
    try:
        assert evaluate.main(argv) == 0
    finally:
        done.set()
        killer.join()
    assert killed, "no worker was seen running"
    log = capsys.readouterr().out
    assert log.count("skip ") == len(kept) and "its worker died" in log and "handed out again (1 of 2)" in log
    assert {name: (out / "runs" / name).stat().st_mtime_ns for name in kept} == kept  # not run again
    assert outcomes(out) == reference  # bit for bit, the run handed out again too
    # The workers' cache started empty: the driver shipped the base model, judge and validator.
    assert sorted(p.parent.name.split("-")[0] for p in worker_cache.glob("*/*.pt")) == ["base", "judge", "validator"]


def test_an_address_where_nothing_listens_fails_at_once(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(SystemExit, match=rf"no Ray cluster at 127\.0\.0\.1:{port} .*ray start --head"):
        evaluate.main([*FAST, "--out", str(tmp_path / "grid"), "--ray-address", f"127.0.0.1:{port}"])
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "grid").exists()


@RAY_GROUP
def test_seeds_train_on_workers_each_into_its_own_run_folder_and_a_killed_one_resumes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")
    argv = ["--algo", "ppo", "--preset", "test", "--seeds", "0-1", "--workers", "2", "--out", str(tmp_path),
            "--total-timesteps", "16", "--hyperparams", "n_steps=4", "batch_size=4", "--no-progress-bar",
            "--env-kwargs", "horizon=2", "batch_size=4"]
    # Written once a run's settings are saved; waiting for it (not config.json, written just before) keeps the
    # first command's line.
    commands = [tmp_path / "ppo" / f"test_{seed}" / "command.txt" for seed in (0, 1)]
    killed: list[int] = []

    def kill_a_worker_once_both_runs_started() -> None:
        while not all(c.is_file() and c.stat().st_size for c in commands):
            time.sleep(0.05)
        # Processes of this test's local Ray only: their environment holds this session's cache.
        pids = worker_pids(os.environ[CACHE_ENV_VAR], "ray::Worker.run")
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    killer = threading.Thread(target=kill_a_worker_once_both_runs_started, daemon=True)
    killer.start()
    folders = train_policy.main(argv)
    killer.join()
    assert killed, "both runs had finished before a worker could be killed"
    assert "handed out again (1 of 2)" in capsys.readouterr().out
    assert folders == [tmp_path / "ppo" / "test_0", tmp_path / "ppo" / "test_1"]
    lines_of = []
    for seed, folder in enumerate(folders):
        assert json.loads((folder / "config.json").read_text())["seed"] == seed
        assert (folder / "model.zip").is_file()
        lines = (folder / "command.txt").read_text().splitlines()
        assert all(f"--seed {seed}" in line and "--seeds" not in line and "--workers" not in line for line in lines)
        lines_of.append(lines)
    # The killed seed was trained again from its run folder: its second command resumed it.
    assert sorted(len(lines) for lines in lines_of) == [1, 2]
    assert next(lines for lines in lines_of if len(lines) == 2)[1].endswith("--resume")


def test_artefacts_travel_as_their_files_and_install_only_where_missing(tmp_path: Path) -> None:
    built = tmp_path / "driver" / "base-key"
    built.mkdir(parents=True)
    (built / "base.pt").write_bytes(b"weights")
    (built / "config.json").write_text("{}")
    (built / ".lock").touch()
    bundle = ArtifactBundle.of([built], tmp_path / "driver")
    assert set(bundle.files) == {"base-key/base.pt", "base-key/config.json"}  # no lock

    worker = tmp_path / "worker"
    assert len(bundle.install(worker)) == 2
    assert (worker / "base-key" / "base.pt").read_bytes() == b"weights"
    assert bundle.install(worker) == []  # already there (a shared cache): nothing is written
    (worker / "base-key" / "base.pt").write_bytes(b"other weights")
    assert bundle.install(worker) == [worker / "base-key" / "base.pt"]  # the driver's copy is the one runs use
    assert (worker / "base-key" / "base.pt").read_bytes() == b"weights"


def test_a_process_that_may_not_build_names_the_missing_artefact_instead_of_training_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NO_BUILD_ENV_VAR, "1")
    cfg = get_config("test", cache_dir=str(tmp_path))
    with pytest.raises(MissingArtifactError, match=rf"the base model of preset 'test' .* {socket.gethostname()}"):
        ensure_base_model(cfg)
    with pytest.raises(MissingArtifactError, match="oracle"):
        ensure_base_model(cfg.oracle())
    for role in ("judge", "validator"):
        with pytest.raises(MissingArtifactError, match=f"the {role} of preset 'test'"):
            ensure_classifier(cfg, role)
    assert not list(tmp_path.rglob("*.pt"))


def test_without_ray_everything_imports_and_a_grid_says_how_to_install_it(tmp_path: Path) -> None:
    argv = ["--algo", "ppo", "--preset", "test", "--seeds", "0-1", "--workers", "2", "--out", str(tmp_path)]
    code = ("import sys; sys.modules['ray'] = None\n"  # import ray now raises ImportError
            f"import evaluate, train_policy, evaluation.grid; train_policy.main({argv!r})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0 and "pip install -e '.[ray]'" in done.stderr, done.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["--gpus-per-run", "1.5"], "--gpus-per-run: expected 0, a fraction of one GPU or whole GPUs, got 1.5"),
    (["--gpus-per-run", "-1"], "--gpus-per-run: expected 0, a fraction of one GPU or whole GPUs, got -1.0"),
    (["--cpus-per-run", "0"], "--cpus-per-run: expected a positive number, got 0.0"),
    (["--retries", "-1"], "--retries: expected a whole number, got -1"),
    (["--workers", "two"], "--workers: expected a positive integer, got 'two'"),
])
def test_resource_flags_reject_bad_values_by_name(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    grid.add_arguments(parser)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_resource_flags_accept_fractions_of_one_gpu_and_whole_gpus() -> None:
    parser = argparse.ArgumentParser()
    grid.add_arguments(parser)
    args = parser.parse_args(["--gpus-per-run", "0.25", "--cpus-per-run", "1.5", "--retries", "0", "--workers", "3"])
    assert (args.gpus_per_run, args.cpus_per_run, args.retries, args.workers) == (0.25, 1.5, 0, 3)
    assert parser.parse_args(["--gpus-per-run", "2"]).gpus_per_run == 2.0
