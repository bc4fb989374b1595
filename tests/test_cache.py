"""The artefact cache: atomic writes and one builder per artefact when processes race."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest
import torch

from unlearn_env.cache import artifact_lock, atomic_torch_save, atomic_write_text
from unlearn_env.config import get_config
from unlearn_env.pretrain import base_model_dir, ensure_base_model, train_base_model


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    atomic_torch_save({"step": 1}, target)
    with pytest.raises(Exception):
        atomic_torch_save({"step": 2, "unpicklable": lambda: None}, target)
    assert torch.load(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "no temporary file is left behind"


def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path: Path) -> None:
    # mkstemp makes private 0600 files; a shared cache must stay readable by the group.
    old_mask = os.umask(0o022)
    try:
        atomic_write_text("x", tmp_path / "shared.txt")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old_mask)
    mode = stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o644


def test_a_waiting_process_reuses_the_model_built_under_the_lock(tmp_path: Path) -> None:
    cfg = get_config("test", cache_dir=str(tmp_path), train_steps=4, checkpoint_every=2)
    folder = base_model_dir(cfg)
    results: list[Path] = []
    with artifact_lock(folder):
        waiter = threading.Thread(target=lambda: results.append(ensure_base_model(cfg, progress=False)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive(), "ensure_base_model must wait while another builder holds the lock"
        built = train_base_model(cfg, progress=False)
        built_at = built.stat().st_mtime_ns
    waiter.join(timeout=60)
    assert results == [built]
    assert built.stat().st_mtime_ns == built_at, "the waiter must reuse the finished model, not retrain it"
