"""Clocks for pytest-benchmark, and an independent CUDA-event measurement to check them against.

pytest-benchmark times a round as ``timer()`` after minus ``timer()`` before. For CUDA work the
host clock would measure launches, so :func:`cuda_event_clock` records a CUDA event, waits for
it, and returns the device time elapsed since a reference event: the difference of two readings
is the device time between them, i.e. the time of the work launched in between.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

_reference_event: torch.cuda.Event | None = None


def cuda_event_clock() -> float:
    """Seconds of device time since the first call (pytest-benchmark ``timer`` for CUDA work)."""
    global _reference_event
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    event.synchronize()
    if _reference_event is None:
        _reference_event = event
        return 0.0
    return _reference_event.elapsed_time(event) / 1e3


def cuda_event_median_s(
    target: Callable[[], object], *, rounds: int, setup: Callable[[], None] | None = None
) -> float:
    """Median over ``rounds`` of CUDA-event time around ``target()``, ``setup()`` untimed before each."""
    times = []
    for _ in range(rounds):
        if setup is not None:
            setup()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        target()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)
