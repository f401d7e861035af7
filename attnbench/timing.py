"""Clocks for pytest-benchmark, the timing modes, and an independent CUDA-event measurement to check them.

Timing modes (``--attn-timing``), recorded in every run; runs of different modes never compare:

``device``
    The GPU's execution of the call, host launch time hidden. pytest-benchmark times a round as
    ``timer()`` after minus ``timer()`` before. For CUDA work a host clock measures launches, and even
    CUDA events placed around the call measure the host's launch gaps whenever the host is slower than
    the GPU (small cells, many small kernels). So :class:`DeviceClock` first queues a short GPU spin
    (``torch.cuda._sleep``) and records the start event behind it: while the GPU spins, the host queues
    the whole call, and the events then bracket only the device's execution of the work.
``wall``
    What a training step pays: the host clock around the call and a synchronize, launches included.
``cudagraph``
    The call captured once in a CUDA graph and replayed (``torch.cuda.make_graphed_callables``):
    launch overhead removed, timed by :class:`DeviceClock`. A variant that cannot be captured says so
    in its cell.

On CPU, ``device`` and ``wall`` are the same host clock; ``cudagraph`` needs CUDA.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import torch

TIMING_MODES = ("device", "wall", "cudagraph")
#: cycles of the calibration spin (a few ms at Hopper clocks).
_CALIBRATION_CYCLES = 5_000_000


class _Reading:
    """A CUDA event; ``end - start`` waits for ``end`` and gives the seconds between them."""

    __slots__ = ("clock", "event")

    def __init__(self, clock: DeviceClock, event: torch.cuda.Event):
        self.clock, self.event = clock, event

    def __sub__(self, other: _Reading) -> float:
        self.clock.pending_start = None
        self.event.synchronize()
        return other.event.elapsed_time(self.event) / 1e3


@functools.cache
def _spin_cycles_per_s() -> float:
    """The GPU's spin rate in cycles per second, measured once per process."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(_CALIBRATION_CYCLES)  # the first spin wakes the clocks up
    start.record()
    torch.cuda._sleep(_CALIBRATION_CYCLES)
    end.record()
    end.synchronize()
    return _CALIBRATION_CYCLES / (start.elapsed_time(end) / 1e3)


def spin(seconds: float) -> None:
    """Queue a GPU busy-wait of about ``seconds`` on the current stream (returns at once)."""
    if seconds > 0:
        torch.cuda._sleep(max(1, int(seconds * _spin_cycles_per_s())))


class DeviceClock:
    """pytest-benchmark ``timer`` for CUDA work: alternate calls are a round's start and end.

    One per run, owned by the run's session; the runner sets ``launch_slack_s`` (how long the spin before
    each start event lasts: at least the host time of one call) before each benchmark.
    """

    __name__ = "DeviceClock"  # what pytest-benchmark records as the timer

    def __init__(self) -> None:
        self.launch_slack_s = 0.0
        self.pending_start: _Reading | None = None

    def set_launch_slack(self, seconds: float) -> None:
        self.launch_slack_s = max(0.0, seconds)
        self.pending_start = None

    def __call__(self) -> _Reading:
        event = torch.cuda.Event(enable_timing=True)
        if self.pending_start is None:
            spin(self.launch_slack_s)
            event.record()
            self.pending_start = reading = _Reading(self, event)
            return reading
        event.record()
        return _Reading(self, event)

    def __repr__(self) -> str:
        return "DeviceClock"


def synchronized(fn: Callable[[], object] | None) -> Callable[[], None] | None:
    """``fn`` followed by a device synchronize (wall mode: the host waits for the work it timed)."""
    if fn is None:
        return None

    def call() -> None:
        fn()
        torch.cuda.synchronize()

    return call


def wall_s(target: Callable[[], object], device: str) -> float:
    """Host seconds for one call of ``target``, from a quiet device to its work finished."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    target()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


class L2Flush:
    """Writes a buffer twice the size of the GPU's L2 cache, so the timed call starts with a cold cache
    (what ``triton.testing.do_bench`` does before every call)."""

    def __init__(self, device: str = "cuda"):
        l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 * 2**20
        self.buffer = torch.empty(2 * l2_bytes // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()

    def after(self, setup: Callable[[], object] | None) -> Callable[[], None]:
        """``setup`` (the backward's untimed forward, say) followed by the flush: what the timed call then
        reads comes from memory, not from an L2 the setup just warmed."""

        def setup_then_flush() -> None:
            if setup is not None:
                setup()
            self()

        return setup_then_flush


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
