"""Where trained artefacts (base models, judges) live, how they are written safely, and how they travel.

An artefact is a folder ``<root>/<kind>-<key>`` (:func:`artifact_dir`). A process that must not
train one (a grid worker, ``evaluation.grid``) runs with ``$UNLEARN_ENV_NO_BUILD`` set: a builder
then calls :func:`check_may_build` and raises :class:`MissingArtifactError` instead of training.
The artefacts such a process needs reach it in an :class:`ArtifactBundle`, the folders' files
read on the machine that built them and installed into the worker's own cache.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from unlearn_env.config import RuntimeConfig

CACHE_ENV_VAR = "UNLEARN_ENV_CACHE"
NO_BUILD_ENV_VAR = "UNLEARN_ENV_NO_BUILD"
"""Set (non-empty) in a process that must find every artefact built: :func:`check_may_build` refuses to train one."""


def cache_root(runtime: RuntimeConfig) -> Path:
    """The cache folder: ``runtime.cache_dir``, else ``$UNLEARN_ENV_CACHE``, else ``~/.cache/unlearn_env``."""
    root = runtime.cache_dir or os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "unlearn_env"
    return Path(root).expanduser()


def artifact_dir(runtime: RuntimeConfig, kind: str, key: str) -> Path:
    """Folder of one cached artefact, e.g. ``<root>/base-<hash>``; created if missing."""
    path = cache_root(runtime) / f"{kind}-{key}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[None]:
    """Exclusive lock on the file ``path`` (created if missing); without ``wait``, ``BlockingIOError`` if it is held."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def artifact_lock(folder: Path) -> AbstractContextManager[None]:
    """Exclusive lock on a cache folder: one process builds an artefact, the others wait and then reuse it."""
    return file_lock(Path(folder) / ".lock")


class MissingArtifactError(RuntimeError):
    """An artefact is not in the cache, and this process may not build it (``$UNLEARN_ENV_NO_BUILD``)."""


def check_may_build(what: str, path: Path) -> None:
    """Raise :class:`MissingArtifactError` if this process may not build ``what``, missing at ``path``."""
    if os.environ.get(NO_BUILD_ENV_VAR):
        raise MissingArtifactError(
            f"{what} is not in the cache of {socket.gethostname()} ({path}), and this process does not train one "
            f"(${NO_BUILD_ENV_VAR} is set, as in a grid worker, whose artefacts come built from the driver): "
            "build it on the driver's machine first, or give every node one cache ($UNLEARN_ENV_CACHE on a "
            "shared filesystem) that holds it")


@dataclass(frozen=True)
class ArtifactBundle:
    """The files of some artefact folders, by their path under the cache root (what a worker elsewhere needs)."""

    files: dict[str, bytes]

    @classmethod
    def of(cls, folders: Iterable[Path], root: Path) -> ArtifactBundle:
        """The finished files of ``folders`` (under ``root``): lock and temporary files (``.*``) stay behind."""
        files = {}
        for folder in folders:
            for path in sorted(Path(folder).iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    files[str(path.relative_to(root))] = path.read_bytes()
        return cls(files)

    def install(self, root: Path) -> list[Path]:
        """Write every file missing under ``root``, or holding other bytes there; return those written.

        With a cache shared by every node the files are already there, and nothing is written.
        """
        written = []
        for name, data in self.files.items():
            path = Path(root) / name
            if not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data):
                atomic_write(path, lambda handle, data=data: handle.write(data))
                written.append(path)
        return written


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(handle)`` on a temporary file in the same folder, then rename: readers never see half a file.

    The file gets the permissions of a plain ``open`` (0666 less the umask), not mkstemp's
    private 0600, so a shared cache or results folder stays readable by its group.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` that never leaves a truncated file behind."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: Path) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_write_json(obj: Any, path: Path) -> None:
    """Write JSON atomically (indented, keys sorted)."""
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)
