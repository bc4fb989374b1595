"""Base model preparation: artefacts, caching by config hash, exact resume, EMA, flips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from unlearn_env import pretrain
from unlearn_env.config import get_config
from unlearn_env.pretrain import (
    base_model_dir,
    ensure_base_model,
    load_base_unet,
    random_hflip,
    train_base_model,
    training_set,
)


class Interrupted(Exception):
    """Stands in for a crash or Ctrl-C right after a checkpoint was written."""


@pytest.fixture(scope="module", autouse=True)
def few_sampling_steps():
    """The sample grid's 50 DDIM steps would dominate the run time; its layout is what is tested."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pretrain, "SAMPLE_DDIM_STEPS", 2)
        yield


@pytest.fixture(scope="module")
def trained(few_sampling_steps, tmp_path_factory):
    """One test-preset base model, trained once for the tests that only read it."""
    cfg = get_config("test", cache_dir=str(tmp_path_factory.mktemp("cache")))
    return cfg, train_base_model(cfg, progress=False)


def test_training_writes_weights_config_and_samples(trained):
    cfg, base_path = trained
    folder = base_model_dir(cfg)
    assert base_path == folder / "base.pt"
    assert folder.name == f"base-{cfg.base_model_key()}"
    assert json.loads((folder / "config.json").read_text()) == json.loads(json.dumps(cfg.to_dict()))
    with Image.open(folder / "samples.png") as grid:
        # 10 rows (labels) x 10 columns of 28-pixel images with 2-pixel gaps.
        assert grid.size == (298, 298)
    assert not (folder / "checkpoint.pt").exists()

    unet = load_base_unet(cfg)
    assert unet.training
    state = torch.load(base_path, weights_only=True)
    for name, tensor in unet.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_ensure_uses_the_cache(trained, monkeypatch):
    cfg, base_path = trained
    mtime = base_path.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("ensure_base_model retrained a cached model")

    monkeypatch.setattr(pretrain, "train_base_model", fail)
    assert ensure_base_model(cfg, progress=False) == base_path
    assert base_path.stat().st_mtime_ns == mtime


def test_cache_folder_follows_the_config_hash(tmp_path):
    cfg = get_config("test", cache_dir=str(tmp_path))
    assert base_model_dir(cfg) != base_model_dir(cfg.with_overrides(train_seed=1))
    assert base_model_dir(cfg) != base_model_dir(cfg.with_overrides(contamination=0.2))
    # Where it runs is no part of the model.
    assert base_model_dir(cfg) == base_model_dir(cfg.with_overrides(device="cpu"))
    assert base_model_dir(cfg) != base_model_dir(cfg.oracle())


def test_the_oracle_trains_on_the_retain_set_only():
    """The retrain oracle's training set is X without A: not one forget image, every retain image."""
    cfg = get_config("test")
    images, labels, is_forget = training_set(cfg)
    oracle_images, oracle_labels, oracle_forget = training_set(cfg.oracle())
    forget = {image.numpy().tobytes() for image in images[is_forget]}
    assert len(forget) > 0 and not oracle_forget.any()
    assert not forget & {image.numpy().tobytes() for image in oracle_images}
    assert len(oracle_images) == len(images) - int(is_forget.sum())
    assert (oracle_labels == labels[~is_forget]).all()


def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    overrides = dict(train_steps=10, checkpoint_every=5)
    straight = get_config("test", cache_dir=str(tmp_path / "straight"), **overrides)
    resumed = get_config("test", cache_dir=str(tmp_path / "resumed"), **overrides)
    expected = torch.load(train_base_model(straight, progress=False), weights_only=True)

    real_save = pretrain.atomic_torch_save

    def save_then_crash(obj, path):
        real_save(obj, path)
        if path.name == "checkpoint.pt":
            raise Interrupted

    monkeypatch.setattr(pretrain, "atomic_torch_save", save_then_crash)
    with pytest.raises(Interrupted):
        train_base_model(resumed, progress=False)
    monkeypatch.undo()

    folder = base_model_dir(resumed)
    assert not (folder / "base.pt").exists()
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 5
    # After a few steps the EMA must lag behind the raw weights.
    raw = list(checkpoint["model"].values())
    shadow = checkpoint["ema"]["shadow_params"]
    assert len(raw) == len(shadow)
    assert any(not torch.equal(r, s) for r, s in zip(raw, shadow))

    actual = torch.load(train_base_model(resumed, progress=False), weights_only=True)
    assert actual.keys() == expected.keys()
    # Bit-exact on CPU; cuDNN's non-deterministic backward kernels leave rounding differences on CUDA.
    rtol, atol = (1e-3, 1e-5) if torch.cuda.is_available() else (0.0, 0.0)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=rtol, atol=atol, msg=name)


def test_flips_touch_only_masked_images():
    images = torch.randn(64, 1, 28, 28)
    mask = torch.arange(64) % 2 == 0
    out = random_hflip(images, mask, torch.Generator().manual_seed(0))

    assert torch.equal(out[~mask], images[~mask])
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out[mask], images[mask])])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out[mask], images[mask])])
    assert torch.all(flipped | kept)
    assert flipped.any() and kept.any()


def test_cli_rejects_unknown_keys(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain.main(["--preset", "test", "--env-kwargs", "no_such_key=1"])
    assert exit_info.value.code == 2
    assert "unknown config key(s) ['no_such_key']" in capsys.readouterr().err


def test_cli_reports_cached_model(trained, capsys):
    cfg, base_path = trained
    pretrain.main(["--preset", "test", "--env-kwargs", f"cache_dir={cfg.runtime.cache_dir}"])
    out = capsys.readouterr().out
    assert str(base_path) in out
    assert str(base_path.parent / "samples.png") in out


def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(tmp_path: Path) -> None:
    cfg = get_config("test", cache_dir=str(tmp_path), train_steps=100_000)
    checkpoint = base_model_dir(cfg) / pretrain.CHECKPOINT_FILE
    command = [sys.executable, "-m", "unlearn_env.pretrain", "--preset", "test",
               "--env-kwargs", f"cache_dir={tmp_path}", "train_steps=100000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()  # a failed test leaves no training behind (a no-op once it has exited)
    assert process.returncode == 130, output
    assert f"the checkpoint {checkpoint} is kept" in output and "run the same command to resume" in output
    assert "Traceback" not in output
    assert torch.load(checkpoint, weights_only=True)["step"] >= cfg.pretrain.checkpoint_every
