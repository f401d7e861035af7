"""Synthetic saved runs across fake commits, written through attnbench.record's writer, for the history tests.

Every figure is made up (a "Synthetic GPU"): these runs test the tools that read runs, they measure nothing.
A run's times are ``BASE_TIME_S`` × the cell's factor × lognormal noise; ``factor(cell_key, commit_index)``
plants steps and blips.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from attnbench.accuracy import TENSORS, Accuracy, TensorError
from attnbench.grid import Cell
from attnbench.record import PASSES, CellRecord, Commit, PassResult, run_data

BASE_TIME_S = 1e-3
BASE_MEMORY_BYTES = 64 * 2**20
FIRST_COMMIT_TIME = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
ENV = {"device": "cuda", "gpu_name": "Synthetic GPU", "driver": "550.54.15", "cuda": "12.4", "torch": "2.13.0",
       "triton": "3.2.0", "python": "3.11.7", "gpu_memory_bytes": 80 * 2**30, "sm_count": 132}
#: relative spread of a run's median from commit to commit, and of its rounds around it
RUN_NOISE = 0.01
ROUND_NOISE = 0.02


def grid(variants=("naive", "tiled", "sdpa_flash"), seq_lens=(256, 1024), head_dims=(32, 64),
         dtypes=("fp32", "bf16")) -> list[Cell]:
    return [Cell(v, s, d, 8, 1, dt, False, "cuda") for v in variants for s in seq_lens for d in head_dims
            for dt in dtypes]


def commit(index: int, *, dirty: bool = False) -> Commit:
    """Commit number ``index``, one hour after the one before it."""
    return Commit(f"{index:04d}" + "c0ffee" * 6, FIRST_COMMIT_TIME + timedelta(hours=index), dirty, "main")


def cell_record(cell: Cell, rng: np.random.Generator, *, time_factor: float = 1.0, memory_factor: float = 1.0,
                error_factor: float = 1.0, rounds: int | None = None, status: str = "ok") -> CellRecord:
    """A measured cell: both passes' statistics, memory figures, and an accuracy record."""
    passes = {}
    for i, pass_name in enumerate(PASSES):
        noise = float(np.exp(rng.normal(0, RUN_NOISE)))
        median = BASE_TIME_S * (1 + 1.5 * i) * cell.seq_len / 256 * time_factor * noise
        stats = {"min": median * 0.95, "max": median * 1.1, "mean": median * 1.01, "median": median,
                 "q1": median * (1 - ROUND_NOISE), "q3": median * (1 + ROUND_NOISE), "iqr": median * 2 * ROUND_NOISE,
                 "stddev": median * ROUND_NOISE, "rounds": rounds or 20, "iterations": 1, "ops": 1 / median}
        if rounds:
            stats["data"] = [float(x) for x in median * np.exp(rng.normal(0, ROUND_NOISE, rounds))]
        passes[pass_name] = PassResult(f"benchmarks/test_{pass_name}.py::test_{pass_name}[{cell.key}]", pass_name,
                                       stats, cell.flops(pass_name), {}, {"min_rounds": 10, "max_time": 0.25})
    memory = int(BASE_MEMORY_BYTES * cell.seq_len / 256 * memory_factor)
    error = 1e-6 * error_factor * float(np.exp(rng.normal(0, 0.2)))
    accuracy = Accuracy({name: TensorError(error, error / 10, error, 1e-3) for name in TENSORS}, True, 1e-8)
    return CellRecord(cell, status, "", {"saved_nxn": 0, "saved_bytes": memory // 4,
                                         "predicted_before_backward_bytes": memory,
                                         "predicted_peak_bytes": 2 * memory, "mem_before_backward_bytes": memory,
                                         "peak_bytes": 2 * memory}, passes, accuracy)


Factor = Callable[[str, int], float]


def make_run(index: int, cells: list[Cell], rng: np.random.Generator, *, time_factor: Factor | None = None,
             memory_factor: Factor | None = None, rounds: int | None = None, env: dict | None = None,
             **run_fields) -> dict:
    """The run measured at commit ``index``: the factors (default 1) scale each cell's times and memory."""
    records = [cell_record(c, rng, time_factor=time_factor(c.key, index) if time_factor else 1.0,
                           memory_factor=memory_factor(c.key, index) if memory_factor else 1.0, rounds=rounds)
               for c in cells]
    fields = {"commit": commit(index), "datetime_text": (commit(index).time + timedelta(minutes=30)).isoformat(),
              **run_fields}
    return run_data(records, env={**ENV, **(env or {})}, **fields)


def save(data: dict, path: Path, *, compress: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(text.encode(), compresslevel=1))
    else:
        path.write_text(text)
    return path
