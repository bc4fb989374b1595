"""Shared fixtures: every test run caches its base models and judges in a fresh folder of its own."""

from __future__ import annotations

import os
import signal

import pytest

from unlearn_env.cache import CACHE_ENV_VAR


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point the artefact cache at a temporary folder so tests never touch (or depend on) the user's.

    Under ``pytest -n K`` the K workers share one folder (their base temporary folders' common
    parent belongs to this run alone), so each artefact is built once, by whichever worker needs it
    first, while the others wait on its lock, as concurrent processes do outside the tests.
    """
    previous = os.environ.get(CACHE_ENV_VAR)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.getbasetemp().parent / "unlearn_env_cache"
        folder.mkdir(exist_ok=True)
    else:
        folder = tmp_path_factory.mktemp("unlearn_env_cache")
    os.environ[CACHE_ENV_VAR] = str(folder)
    yield
    if previous is None:
        os.environ.pop(CACHE_ENV_VAR, None)
    else:
        os.environ[CACHE_ENV_VAR] = previous


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_xdist_worker():
    """Under ``pytest -n K`` each worker gets one torch thread, so K workers do not oversubscribe the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_interrupts():
    """Started in the background by a non-interactive shell (``cmd &``, ``nohup``), the tests inherit SIGINT
    ignored, and so would every command they start: the Ctrl-C tests would time out with their commands left
    training. Python's KeyboardInterrupt handler here is reset to the default in each command it starts."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
