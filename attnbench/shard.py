"""Sharding the grid: a predicted cost per cell, and a deterministic split of the grid into N shards.

Every shard process expands the same grid and computes the same split, so ``--attn-shard I/N`` needs no
coordination: cell c lands in exactly one shard, and the N shards together are the whole grid.

What a cell costs is predicted from what pytest-benchmark and the runner will do with it (seconds):

    t(pass)     = CALL_OVERHEAD_S + flops / FLOPS_PER_S + bytes / BYTES_PER_S     one call, a roofline
                  (flops: Cell.flops; bytes: the memory model's figure for the pass, so the variants
                  that materialise n×n tensors weigh more than the ones that do not)
    rounds      = clamp(ceil(max_time / t), min_rounds, MAX_ROUNDS)               as the runner sizes them
    cell        = CELL_OVERHEAD_S + sum over passes of (rounds + UNTIMED_CALLS_PER_PASS) · t
                  + UNTIMED_CELL_CALLS · (t(forward) + t(backward))
    a cell predicted not to fit (peak > the device's memory): OOM_CELL_S, the probe that finds out

The rates are least-squares fits of the measured medians: on CUDA, of the H200 run of the default grid
(docs/results/NVIDIA-H200/2026-11-29-device.json.gz; predicted over measured: median 0.75, 90% of the 280
benchmarks between 0.21 and 1.49), on CPU of the cpu-small grid on one thread (median 0.88, 90% between 0.38
and 1.36). They only need to rank cells and add up: balance is what they are for.

The split is longest-processing-time first: the cells that fit, by cost (largest first, ties by key), each
to the least-loaded shard (ties: the lowest index); then the cells predicted not to fit, dealt in key order
from the least-loaded shard on, so they spread over the shards instead of piling up on one.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from .grid import Cell
from .memory_model import predict

#: the device a cell costs: one call's fixed cost (launches), compute rate and memory traffic rate per
#: byte the memory model predicts the pass holds.
RATES: dict[str, tuple[float, float, float]] = {
    # (CALL_OVERHEAD_S, FLOPS_PER_S, BYTES_PER_S)
    "cuda": (20e-6, 38e12, 1.4e12),
    "cpu": (80e-6, 140e9, 11e9),
}
#: at most this many timed rounds (attnbench.runner.MAX_ROUNDS).
MAX_ROUNDS = 100
#: calls outside the timed rounds: per pass the warm-up (3), the launch probe and the round estimate ...
UNTIMED_CALLS_PER_PASS = 5
#: ... and per cell the memory probe (warm-up and census: 2 forward and backward) and the accuracy check
#: (the variant, the plain computation and the float64 reference: about 4).
UNTIMED_CELL_CALLS = 6
#: per cell: pytest, inputs, releasing the allocator, compilation (the H200 grid spent ~1.3 s per cell
#: outside its timed rounds, most of it compiling Triton kernels).
CELL_OVERHEAD_S = 1.0
#: a cell predicted not to fit is only probed against the memory model.
OOM_CELL_S = 0.01
#: the memory a shard predicts against is rounded down to whole GiB, so that machines of one kind agree.
MEMORY_ROUNDING_BYTES = 2**30


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self):
        if not (isinstance(self.count, int) and self.count >= 1 and isinstance(self.index, int)
                and 1 <= self.index <= self.count):
            raise ValueError(f"shard {self.index}/{self.count}: expected 1 <= I <= N")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> ShardSpec:
    """'2/4' -> ShardSpec(2, 4): shard I of N, I from 1 to N."""
    index, sep, count = str(text).strip().partition("/")
    try:
        index_, count_ = int(index), int(count)
    except ValueError:
        index_ = count_ = None
    if not sep or index_ is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N (expected e.g. 1/4: shard 1 of 4, I from 1 to N)")
    if count_ < 1 or not 1 <= index_ <= count_:
        raise argparse.ArgumentTypeError(f"{text!r}: shard I of N needs 1 <= I <= N (e.g. 1/4 ... 4/4)")
    return ShardSpec(index_, count_)


def partition_memory_bytes(total_bytes: int) -> int:
    """The device's memory as the split predicts against it: rounded down to whole GiB."""
    return max(MEMORY_ROUNDING_BYTES, total_bytes // MEMORY_ROUNDING_BYTES * MEMORY_ROUNDING_BYTES)


def call_s(cell: Cell, pass_name: str) -> float:
    """Predicted seconds of one call of ``pass_name`` on ``cell``'s device."""
    overhead_s, flops_per_s, bytes_per_s = RATES[cell.device]
    prediction = _prediction(cell)
    moved = prediction.before_backward_bytes if pass_name == "forward" else prediction.peak_bytes
    return overhead_s + cell.flops(pass_name) / flops_per_s + moved / bytes_per_s


def fits(cell: Cell, memory_bytes: int) -> bool:
    """Whether the memory model predicts ``cell``'s peak within ``memory_bytes``."""
    return _prediction(cell).peak_bytes <= memory_bytes


def cell_cost_s(cell: Cell, *, memory_bytes: int, max_time_s: float, min_rounds: int) -> float:
    """Predicted seconds the suite spends on ``cell`` (the module docstring's model)."""
    if not fits(cell, memory_bytes):
        return OOM_CELL_S
    cost = CELL_OVERHEAD_S
    calls = {p: call_s(cell, p) for p in ("forward", "backward")}
    for t in calls.values():
        rounds = max(min_rounds, min(MAX_ROUNDS, math.ceil(max_time_s / t)))
        cost += (rounds + UNTIMED_CALLS_PER_PASS) * t
    return cost + UNTIMED_CELL_CALLS * sum(calls.values())


def _prediction(cell: Cell):
    return predict(cell.variant, batch=cell.batch, heads=cell.heads, seq_len=cell.seq_len, head_dim=cell.head_dim,
                   dtype=cell.torch_dtype, causal=cell.causal, heads_kv=cell.heads_kv, mask=cell.mask_spec())


@dataclass(frozen=True)
class Partition:
    """The grid split into shards: the cells of each (in grid order) and each shard's predicted cost."""

    shards: tuple[tuple[Cell, ...], ...]
    costs_s: tuple[float, ...]

    @property
    def total_s(self) -> float:
        return sum(self.costs_s)

    @property
    def imbalance(self) -> float:
        """The largest shard's cost over an even share (1.0: perfectly balanced)."""
        return max(self.costs_s) / (self.total_s / len(self.costs_s)) if self.total_s else 1.0

    def cells_of(self, shard: ShardSpec) -> list[Cell]:
        return list(self.shards[shard.index - 1])


#: what a shard is made of: single cells (the best balance), or every variant of one shape together (the
#: report's comparison group: each comparison between variants then comes from one process on one device).
SHARD_UNITS = ("cell", "shape")


def parse_shard_unit(text: str) -> str:
    """'cell' or 'shape' (``--attn-shard-by``)."""
    value = str(text).strip().lower()
    if value not in SHARD_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {' or '.join(SHARD_UNITS)}")
    return value


def shard_units(cells: list[Cell], by: str = "cell") -> list[tuple[Cell, ...]]:
    """The grid's cells in the units shards are made of, in grid order: one cell each, or (``by="shape"``) every
    cell of one comparison group (``Cell.group``: one shape, dtype and mask, every variant)."""
    if by not in SHARD_UNITS:
        raise ValueError(f"by must be one of {', '.join(SHARD_UNITS)}, got {by!r}")
    if by == "cell":
        return [(c,) for c in cells]
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.group, []).append(cell)
    return [tuple(members) for members in groups.values()]


def partition(cells: list[Cell], count: int, *, memory_bytes: int, max_time_s: float,
              min_rounds: int, by: str = "cell") -> Partition:
    """Split ``cells`` into ``count`` shards (the module docstring's rule, over the units of ``by``: single cells,
    or whole shapes); deterministic for equal inputs."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    order = {c.key: i for i, c in enumerate(cells)}
    if len(order) != len(cells):
        raise ValueError("the grid holds a cell twice")
    costs = {c.key: cell_cost_s(c, memory_bytes=memory_bytes, max_time_s=max_time_s, min_rounds=min_rounds)
             for c in cells}
    units = shard_units(cells, by)
    loads = [0.0] * count
    members: list[list[Cell]] = [[] for _ in range(count)]

    def least_loaded() -> int:
        return min(range(count), key=lambda i: (loads[i], i))

    def cost(unit) -> float:
        return sum(costs[c.key] for c in unit)

    def unit_fits(unit) -> bool:
        return any(fits(c, memory_bytes) for c in unit)

    fitting = sorted((u for u in units if unit_fits(u)), key=lambda u: (-cost(u), u[0].key))
    for unit in fitting:
        i = least_loaded()
        members[i].extend(unit)
        loads[i] += cost(unit)
    not_fitting = sorted((u for u in units if not unit_fits(u)), key=lambda u: u[0].key)
    start = sorted(range(count), key=lambda i: (loads[i], i))
    for n, unit in enumerate(not_fitting):
        i = start[n % count]
        members[i].extend(unit)
        loads[i] += cost(unit)
    shards = tuple(tuple(sorted(m, key=lambda c: order[c.key])) for m in members)
    return Partition(shards, tuple(loads))
