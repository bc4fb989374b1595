"""Run records of the benchmark and their resumption: one JSON file per (task, method, seed), written atomically.

``evaluate.py`` writes a :class:`RunRecord` after every run, failed ones included, into
``<out>/runs/`` (``<out>/runs/<task>/`` with ``--tasks``) beside the scored samples in
``<out>/samples/``. A later command with the same ``--out`` reuses a finished record
(:meth:`RunStore.finished`) unless its spec or its policy file changed, and retries failed
ones. ``settings.json`` holds what the runs depend on; :func:`check_settings` refuses a
command whose settings differ once a run has succeeded, naming every field that differs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from unlearn_env.cache import atomic_write, atomic_write_json, atomic_write_text

RunStatus = Literal["ok", "failed", "diverged"]
"""``ok``: scored. ``failed``: the run raised (retried by the next command). ``diverged``: the episode diverged and
left weights that cannot be sampled, an outcome of the method (kept, not retried, not scored)."""
DONE: tuple[RunStatus, ...] = ("ok", "diverged")


@dataclass
class RunRecord:
    """One method scored after one seed's episode on one task; stored as JSON (see :class:`RunStore`)."""

    method: str
    """Name in the outputs, e.g. ``static_0.5``."""
    spec: str
    """The ``--methods`` entry it came from, e.g. ``static:0.5``."""
    seed: int
    status: RunStatus
    task: str = ""
    """The forget task's text form, e.g. ``1-trouser-0.2-s0``."""
    policy_model: str = ""
    """The model file an RL method loaded (a run folder's latest snapshot); empty for the other methods."""
    policy_sha256: str = ""
    """That file's SHA-256: a finished run is redone when the spec resolves to another file (training went on)."""
    policy_timesteps: int | None = None
    """The training steps of that model."""
    metrics: dict[str, float] = field(default_factory=dict)
    episode_return: float | None = None
    """``None`` for a method without an episode (``base``, ``oracle``)."""
    diverged: bool = False
    lambdas: list[float] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    """Per-step env scalars (``step/loss_retain``, ``reward/total``, ...), as in TensorBoard."""
    curve: list[dict[str, float]] = field(default_factory=list)
    """Mid-episode probes every ``eval_every`` steps: ``step``, ``forget_rate``, ``forget_digit_share``,
    ``neither_forget`` (judge calls on the probe sample) and the env's ``probe_loss_retain``, ``probe_loss_forget``."""
    steps_to_forget: int | None = None
    """First probe step whose forget rate is at most 5 % (:func:`evaluation.probing.steps_to_forget`); None if none."""
    wall_seconds: float = 0.0
    """Episode plus evaluation."""
    episode_seconds: float = 0.0
    """The episode alone, without the mid-episode probes."""
    eval_seconds: float = 0.0
    error: str = ""
    traceback: str = ""

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        """Read a record written by :meth:`to_json`."""
        return cls(**json.loads(Path(path).read_text()))

    def to_json(self) -> str:
        """The record as indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    @property
    def has_episode(self) -> bool:
        """Whether the method ran unlearning updates (``base`` and ``oracle`` run none)."""
        return bool(self.steps)

    @property
    def ms_per_update(self) -> float | None:
        """Measured milliseconds per update: episode seconds (probes excluded) over the updates run."""
        return 1e3 * self.episode_seconds / len(self.steps) if self.steps else None


@dataclass(frozen=True)
class RunStore:
    """Where the records and samples of one ``--out`` folder live.

    Without tasks (``per_task=False``) the layout is flat, ``runs/<method>_seed<k>.json`` and
    ``samples/<method>_seed<k>.npz``; with ``--tasks`` each task has its own subfolder
    (``runs/<task>/...``, ``samples/<task>/...``).
    """

    root: Path
    per_task: bool = False

    def _folder(self, kind: str, task: str) -> Path:
        return self.root / kind / task if self.per_task else self.root / kind

    def record_path(self, task: str, method: str, seed: int) -> Path:
        """The JSON record of a run."""
        return self._folder("runs", task) / f"{method}_seed{seed}.json"

    def samples_path(self, task: str, method: str, seed: int) -> Path:
        """The scored samples of a run (uint8 images and labels)."""
        return self._folder("samples", task) / f"{method}_seed{seed}.npz"

    def finished(self, task: str, method: str, spec: str, seed: int, policy_sha256: str) -> tuple[RunRecord | None, str]:
        """The earlier record of this run if it can be reused, else ``None``, with a line saying why.

        Reused: a finished record (``ok`` with its samples, or ``diverged``) of the same spec, whose
        policy file (RL methods) has the SHA-256 the spec resolves to now. Records older than the policy
        hash have none: redone.
        """
        path = self.record_path(task, method, seed)
        if not path.exists():
            return None, ""
        previous = RunRecord.load(path)
        if previous.status not in DONE or previous.spec != spec:
            return None, ""
        if previous.status == "ok" and not self.samples_path(task, method, seed).exists():
            return None, ""
        if previous.policy_sha256 != policy_sha256:
            return None, (f"rerun {method} seed {seed}: the policy changed since the earlier run "
                          f"(SHA-256 {previous.policy_sha256[:12] or 'unknown'} -> {policy_sha256[:12]})")
        return previous, f"skip {method} seed {seed}{f' ({task})' if self.per_task else ''}: done in an earlier run"

    def save(self, record: RunRecord, images: np.ndarray | None = None, labels: np.ndarray | None = None) -> None:
        """Write the record (and, for a successful run, its samples first, so a record never lacks them)."""
        if images is not None and labels is not None:
            save_samples(self.samples_path(record.task, record.method, record.seed), images, labels)
        atomic_write_text(record.to_json(), self.record_path(record.task, record.method, record.seed))

    def any_done(self) -> bool:
        """Whether any run in the folder finished (what makes its settings final)."""
        return any(RunRecord.load(path).status in DONE for path in (self.root / "runs").rglob("*.json"))


def save_samples(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """``np.savez_compressed`` through a temporary file, so a reader never sees half an archive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: np.savez_compressed(handle, images=images, labels=labels))


def check_settings(path: Path, settings: dict[str, Any], final: bool, stale: list[Path] | None = None) -> None:
    """Refuse to mix runs of different settings; (re)write ``path`` (a ``settings.json``) while nothing is final.

    ``final``: whether a run made with the stored settings succeeded. While none did (the env could
    not be built, every run failed, Ctrl-C during the first run), other settings replace the stored
    ones, and the ``stale`` files (caches made with the old settings) are deleted.
    """
    try:
        previous = json.loads(path.read_text()) if path.exists() else None
    except ValueError as err:
        raise SystemExit(f"{path} is not valid JSON ({err}): repair or delete it") from None
    if previous == settings:
        return
    if previous is not None:
        if final:
            raise SystemExit(f"{path.parent} holds runs made with other settings (this command's != the folder's: "
                             f"{'; '.join(differences(settings, previous))}): use another --out, or delete the folder")
        for old in stale or []:
            old.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(settings, path)


def differences(new: Any, old: Any, key: str = "") -> list[str]:
    """``key: new != old`` for every leaf of two JSON values that differs; keys are dotted paths."""
    if isinstance(new, dict) and isinstance(old, dict):
        return [line for k in sorted(new.keys() | old.keys())
                for line in differences(new.get(k), old.get(k), f"{key}.{k}" if key else k)]
    return [] if new == old else [f"{key}: {json.dumps(new)} != {json.dumps(old)}"]
