"""Wall-clock timing shared by the benchmark scripts."""

from __future__ import annotations

import time
from typing import Callable

import torch


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
