"""Mapping a function over items in spawned processes: what the precompile tools share."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_in_processes(fn: Callable[[T], R], items: Sequence[T], workers: int,
                     on_result: Callable[[int, R], None] | None = None) -> list[R]:
    """``[fn(item) for item in items]``, ``workers`` processes at a time (1: in this process), in order;
    ``on_result(index, result)`` is called as each result arrives (for progress), in the order they finish.

    The processes are spawned, not forked: a forked child of a process that has initialised CUDA cannot use
    it. ``fn`` must be importable by name (a module-level function), as the pool pickles it."""
    if workers <= 1:
        results = []
        for index, item in enumerate(items):
            results.append(fn(item))
            if on_result is not None:
                on_result(index, results[-1])
        return results
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(fn, item): index for index, item in enumerate(items)}
        by_index: dict[int, R] = {}
        for future in concurrent.futures.as_completed(futures):
            index = futures[future]
            by_index[index] = future.result()
            if on_result is not None:
                on_result(index, by_index[index])
    return [by_index[index] for index in range(len(items))]
