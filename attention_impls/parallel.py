"""Mapping a function over items in spawned processes: what the precompile tools share."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_in_processes(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[fn(item) for item in items]``, ``workers`` processes at a time (1: in this process), in order.

    The processes are spawned, not forked: a forked child of a process that has initialised CUDA cannot use
    it. ``fn`` must be importable by name (a module-level function), as the pool pickles it."""
    if workers <= 1:
        return [fn(item) for item in items]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(fn, items))
