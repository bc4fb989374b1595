"""Wall-clock timing and command-line argument types shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch

from unlearn_env.config import positive_int


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock times are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(step: Callable[[], None], count: int, device: torch.device, min_seconds: float = 0.0) -> float:
    """Mean seconds per call of ``step`` over at least ``count`` calls and ``min_seconds``."""
    synchronize(device)
    calls, started = 0, time.perf_counter()
    while calls < count or time.perf_counter() - started < min_seconds:
        step()
        calls += 1
    synchronize(device)
    return (time.perf_counter() - started) / calls


def positive_int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers, sorted, e.g. ``1,2,4``."""
    return sorted(positive_int(item.strip()) for item in text.split(",") if item.strip())


def json_target(text: str) -> Path:
    """argparse type: where to write the JSON figures; its folder is created now, not after the run."""
    path = Path(text)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot create the folder of {path}: {err}") from None
    return path
