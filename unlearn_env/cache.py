"""Where trained artefacts (base models, judges) live, and how they are written safely."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from unlearn_env.config import RuntimeConfig

CACHE_ENV_VAR = "UNLEARN_ENV_CACHE"


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
