"""Device-time clocks for pytest-benchmark, and an independent CUDA-event measurement to check them.

pytest-benchmark times a round as ``timer()`` after minus ``timer()`` before. For CUDA work a host
clock measures launches, and even CUDA events placed around the call measure the host's launch
gaps whenever the host is slower than the GPU (small cells, many small kernels). So the start of
a round first queues a short GPU spin (``torch.cuda._sleep``) and records the start event behind
it: while the GPU spins, the host queues the whole call, and the events then bracket only the
device's execution of the work. :func:`cuda_event_clock` returns readings whose difference
waits for the end event and is the device time in seconds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

#: host time the spin before a start event must cover, set per benchmark by the runner.
_launch_slack_s = 0.0
_cycles_per_s: float | None = None
_pending_start: _Reading | None = None
#: cycles of the calibration spin (a few ms at Hopper clocks).
_CALIBRATION_CYCLES = 5_000_000


class _Reading:
    """A CUDA event; ``end - start`` waits for ``end`` and gives the seconds between them."""

    __slots__ = ("event",)

    def __init__(self, event: torch.cuda.Event):
        self.event = event

    def __sub__(self, other: _Reading) -> float:
        global _pending_start
        _pending_start = None
        self.event.synchronize()
        return other.event.elapsed_time(self.event) / 1e3


def _spin_cycles_per_s() -> float:
    global _cycles_per_s
    if _cycles_per_s is None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(_CALIBRATION_CYCLES)  # first spin wakes the clocks up
        start.record()
        torch.cuda._sleep(_CALIBRATION_CYCLES)
        end.record()
        end.synchronize()
        _cycles_per_s = _CALIBRATION_CYCLES / (start.elapsed_time(end) / 1e3)
    return _cycles_per_s


def spin(seconds: float) -> None:
    """Queue a GPU busy-wait of about ``seconds`` on the current stream (returns at once)."""
    if seconds > 0:
        torch.cuda._sleep(max(1, int(seconds * _spin_cycles_per_s())))


def set_launch_slack(seconds: float) -> None:
    """How long the spin before each start event should last: at least the host time of one call."""
    global _launch_slack_s, _pending_start
    _launch_slack_s = max(0.0, seconds)
    _pending_start = None


def cuda_event_clock() -> _Reading:
    """pytest-benchmark ``timer`` for CUDA work: alternate calls are a round's start and end."""
    global _pending_start
    event = torch.cuda.Event(enable_timing=True)
    if _pending_start is None:
        spin(_launch_slack_s)
        event.record()
        _pending_start = reading = _Reading(event)
        return reading
    event.record()
    return _Reading(event)


def cuda_event_median_s(
    target: Callable[[], object],
    *,
    rounds: int,
    setup: Callable[[], None] | None = None,
    launch_slack_s: float = 0.0,
) -> float:
    """Median over ``rounds`` of CUDA-event time around ``target()``, ``setup()`` untimed before each.

    With ``launch_slack_s`` > 0 a GPU spin that long precedes the start event, so that the events
    bracket device execution rather than the host's launches.
    """
    times = []
    for _ in range(rounds):
        if setup is not None:
            setup()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        spin(launch_slack_s)
        start.record()
        target()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)
