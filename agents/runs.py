"""The layout of a training run's folder, its snapshots (final model and checkpoints), atomic saves.

``train_policy.py`` writes ``<out>/<algo>/<preset>_<seed>/`` (``<preset>-<set>_<seed>/`` with ``--tasks``)::

    config.json            algo, preset, seed, env overrides, hyper-parameters, resolved env config,
                           tasks (null, or the task set: name, tasks, family, order)
    command.txt            every command line that trained this run (one per line; --resume appends)
    model.zip              the latest saved model (end of training, or Ctrl-C)
    vecnormalize.pkl       its VecNormalize statistics
    replay_buffer.pkl      its replay buffer (off-policy algorithms)
    checkpoints/           rl_model_<N>_steps.zip, rl_model_vecnormalize_<N>_steps.pkl, ...
    monitor/               <rank>.monitor.csv per environment copy
    tb_1/                  TensorBoard event files
    .lock                  held by the process training into the folder (:func:`run_lock`)
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stable_baselines3.common.save_util import load_from_zip_file

from unlearn_env.cache import file_lock

CHECKPOINT_PREFIX = "rl_model"
TB_LOG_NAME = "tb"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d+)_steps\.zip$")


class RunError(RuntimeError):
    """A run folder cannot be trained into or resumed: another process holds it, or no snapshot reads back."""


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def command(self) -> Path:
        return self.root / "command.txt"

    @property
    def model(self) -> Path:
        return self.root / "model.zip"

    @property
    def vecnormalize(self) -> Path:
        return self.root / "vecnormalize.pkl"

    @property
    def replay_buffer(self) -> Path:
        return self.root / "replay_buffer.pkl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def monitor(self) -> Path:
        return self.root / "monitor"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def read_config(self) -> dict[str, Any]:
        """The run's ``config.json``."""
        return json.loads(self.config.read_text())


@dataclass(frozen=True)
class Snapshot:
    """A saved model with its companions, at ``num_timesteps`` env steps of training."""

    num_timesteps: int
    model: Path
    vecnormalize: Path | None
    replay_buffer: Path | None


def run_dir_of(path: str | Path) -> Path:
    """The run folder of ``path``: the folder itself, or the folder holding a model or checkpoint."""
    path = Path(path)
    if path.is_dir():
        return path
    for parent in (path.parent, path.parent.parent):
        if (parent / "config.json").exists():
            return parent
    raise FileNotFoundError(f"no config.json next to {path} or one folder up: is it a model written by train_policy.py?")


def snapshot_of(model_path: Path) -> Snapshot:
    """The snapshot a model file belongs to: ``model.zip`` or ``checkpoints/rl_model_<N>_steps.zip``.

    Raises ``ValueError`` when the file does not read back (training was killed while writing it).
    """
    try:
        data, _, _ = load_from_zip_file(model_path, load_data=True, device="cpu")
    except Exception as err:  # a cut-off zip fails in many ways: BadZipFile, zlib.error, EOFError, torch.load
        raise ValueError(f"cannot read {model_path}: {err}") from err
    if not data or "num_timesteps" not in data:
        raise ValueError(f"{model_path} holds no model data")
    match = _CHECKPOINT_RE.match(model_path.name)
    if match:
        vecnormalize = model_path.with_name(f"{CHECKPOINT_PREFIX}_vecnormalize_{match.group(1)}_steps.pkl")
        replay_buffer = model_path.with_name(f"{CHECKPOINT_PREFIX}_replay_buffer_{match.group(1)}_steps.pkl")
    else:
        vecnormalize = model_path.with_name("vecnormalize.pkl")
        replay_buffer = model_path.with_name("replay_buffer.pkl")
    return Snapshot(
        num_timesteps=int(data["num_timesteps"]),
        model=model_path,
        vecnormalize=vecnormalize if vecnormalize.exists() else None,
        replay_buffer=replay_buffer if replay_buffer.exists() else None,
    )


def readable_snapshot(model_path: Path, normalized: bool) -> Snapshot:
    """:func:`snapshot_of`, also checking that its VecNormalize statistics read back when ``normalized``.

    Raises ``ValueError`` naming what does not read back.
    """
    snapshot = snapshot_of(model_path)
    if not normalized:
        return snapshot
    if snapshot.vecnormalize is None:
        raise ValueError(f"the VecNormalize statistics of {model_path} are missing")
    try:
        with snapshot.vecnormalize.open("rb") as handle:
            pickle.load(handle)
    except Exception as err:  # a cut-off pickle: EOFError, UnpicklingError, ...
        raise ValueError(f"cannot read {snapshot.vecnormalize}: {err}") from err
    return snapshot


def latest_snapshot(layout: RunLayout, normalized: bool) -> Snapshot | None:
    """The snapshot with the most training steps (``model.zip`` wins a tie), or ``None`` when there is none.

    A snapshot that does not read back (training killed while writing it) is skipped with a
    warning, and so, when ``normalized``, is one whose VecNormalize statistics are missing or
    unreadable: its observations would be scaled wrongly. :class:`RunError` when all are skipped.
    """
    skipped: list[str] = []
    best: Snapshot | None = None
    if layout.model.exists():
        try:
            best = readable_snapshot(layout.model, normalized)
        except ValueError as err:
            skipped.append(str(err))
    # Newest first, by the step count in the name; reading stops at the first good one.
    checkpoints = sorted(
        ((int(match.group(1)), path) for path in layout.checkpoints.glob(f"{CHECKPOINT_PREFIX}_*_steps.zip")
         if (match := _CHECKPOINT_RE.match(path.name))),
        reverse=True,
    )
    for steps, path in checkpoints:
        if best is not None and steps <= best.num_timesteps:
            break
        try:
            best = readable_snapshot(path, normalized)
            break
        except ValueError as err:
            skipped.append(str(err))
    for reason in skipped:
        warnings.warn(f"skipping a snapshot of {layout.root}: {reason}", stacklevel=2)
    if best is None and skipped:
        raise RunError(f"no snapshot of {layout.root} reads back ({'; '.join(skipped)}); "
                       f"delete {layout.model.name} and {layout.checkpoints.name}/ to train it from the start")
    return best


@contextmanager
def run_lock(layout: RunLayout) -> Iterator[None]:
    """Hold ``<run>/.lock`` while training: two processes would interleave the monitor CSV, events and model.

    Creates the run folder. Raises :class:`RunError` at once, without waiting, when another process holds it.
    """
    layout.root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        try:
            stack.enter_context(file_lock(layout.lock, wait=False))
        except BlockingIOError:
            raise RunError(f"another process is training into {layout.root}") from None
        yield


def save_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` next to ``path``, then rename over it: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)
