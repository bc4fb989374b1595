"""Grids of runs on a real local Ray (evaluation.grid): train_policy.py with --workers; artefacts shipped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import train_policy
from unlearn_env.cache import CACHE_ENV_VAR, NO_BUILD_ENV_VAR, ArtifactBundle, MissingArtifactError
from unlearn_env.config import get_config
from unlearn_env.pretrain import ensure_base_model

RAY_GROUP = pytest.mark.xdist_group("ray")
"""Under pytest -n K (--dist loadgroup), the Ray tests share one xdist worker."""


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


@RAY_GROUP
def test_seeds_train_on_workers_each_into_its_own_run_folder_and_a_killed_one_resumes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")
    argv = ["--algo", "ppo", "--preset", "test", "--seeds", "0-1", "--workers", "2", "--out", str(tmp_path),
            "--total-timesteps", "16", "--hyperparams", "n_steps=4", "batch_size=4", "--no-progress-bar",
            "--env-kwargs", "horizon=2", "batch_size=4"]
    configs = [tmp_path / "ppo" / f"test_{seed}" / "config.json" for seed in (0, 1)]
    killed: list[int] = []

    def kill_a_worker_once_both_runs_started() -> None:
        while not all(c.exists() for c in configs):
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
    commands = []
    for seed, folder in enumerate(folders):
        assert json.loads((folder / "config.json").read_text())["seed"] == seed
        assert (folder / "model.zip").is_file()
        lines = (folder / "command.txt").read_text().splitlines()
        assert all(f"--seed {seed}" in line and "--seeds" not in line and "--workers" not in line for line in lines)
        commands.append(lines)
    # The killed seed was trained again from its run folder: its second command resumed it.
    assert sorted(len(lines) for lines in commands) == [1, 2]
    assert next(lines for lines in commands if len(lines) == 2)[1].endswith("--resume")


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
    assert not list(tmp_path.rglob("*.pt"))


def test_without_ray_everything_imports_and_a_grid_says_how_to_install_it(tmp_path: Path) -> None:
    argv = ["--algo", "ppo", "--preset", "test", "--seeds", "0-1", "--workers", "2", "--out", str(tmp_path)]
    code = ("import sys; sys.modules['ray'] = None\n"  # import ray now raises ImportError
            f"import evaluate, train_policy, evaluation.grid; train_policy.main({argv!r})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0 and "pip install -e '.[ray]'" in done.stderr, done.stderr
