"""``attnbench cp``: ring attention across the GPUs of one host (context parallelism), measured cell by cell.

Run under torchrun, one process per GPU (or let the command start torchrun with ``--nproc N``)::

    torchrun --nproc-per-node 8 -m attnbench cp            # bf16, batch 1, 16 heads, head_dim 128
    python -m attnbench cp --nproc 2 --device cpu --seq-lens 64 --heads 2 --head-dim 16 --dtype fp32

For every (seq_len, causal) of the grid, at the same batch, heads and head_dim:

- ``ring_<block>`` for each block op (triton_flash, sdpa_flash): forward and backward time of ring attention
  (zigzag layout when causal, contiguous otherwise), each statistic the slowest rank's; peak memory per rank
  (the largest); the exchanges alone (``comm_s``: the same batch_isend_irecv pattern, K/V forward, K/V and
  fp32 dK/dV backward), the ring without them (``compute_s``) and the share of comm_s the computation hid;
  the scaling efficiency single-GPU time / (ranks x ring time), against:
- ``triton_flash``: one GPU (rank 0) on the whole problem, the efficiency's yardstick;
- ``context_parallel``: PyTorch's ``torch.distributed.tensor.experimental.context_parallel`` around
  ``F.scaled_dot_product_attention`` (flash backend), where it runs; else the cell says why.

A cell that runs out of memory is recorded (``oom-measured``, or ``oom-predicted`` when the largest local
tensors cannot fit on some rank) and the grid goes on; one that raises is ``failed`` with the reason.
Rank 0 prints progress and a table, and saves the run through attnbench.record (``attnbench report`` and
``attnbench gate`` read it) under .benchmarks/<machine>/ or to ``-o``. docs/context_parallel.md has the design.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from . import render
from .grid import DTYPES, Cell, parse_positive_int, parse_positive_ints
from .machine import available_host_memory_bytes

DEFAULT_SEQ_LENS = (131072, 262144)
DEFAULT_BATCH, DEFAULT_HEADS, DEFAULT_HEAD_DIM, DEFAULT_DTYPE = 1, 16, 128, "bf16"
DEFAULT_BLOCKS = ("triton_flash", "sdpa_flash")
DEFAULT_WARMUP = 3
DEFAULT_ROUNDS = 10
#: PyTorch's context_parallel rotation; "alltoall" passes K/V around the ring like ours.
DEFAULT_CP_ROTATE = "alltoall"
CP_ROTATE_METHODS = ("alltoall", "allgather")
#: the efficiency's yardstick, one device on the whole problem: our kernel on a GPU; on CPU, where Triton
#: only interprets, PyTorch's CPU flash kernel.
SINGLE_VARIANTS = {"cuda": "triton_flash", "cpu": "sdpa_flash"}
CP_VARIANT = "context_parallel"
PRESET = "context-parallel"
#: how long a rank waits in a collective: the others wait at a barrier while rank 0 autotunes and times the
#: whole problem on one GPU, minutes at the longest sequences.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
#: exit statuses: a run saved; bad arguments or not launched right; the run cannot be written.
EXIT_OK, EXIT_USAGE, EXIT_OUTPUT_ERROR = 0, 2, 3


def ring_variant(block: str) -> str:
    return f"ring_{block}"


# -- measuring


class _Clock:
    """Seconds of ``fn()``: CUDA events around it on a GPU (synchronised after), the host clock on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def _max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _slowest_stats(rounds: list[float], device: torch.device) -> dict:
    """pytest-benchmark's statistics of this rank's rounds, each numeric one replaced by the slowest rank's."""
    from .pb_compat import Stats

    stats = Stats()
    for seconds in rounds:
        stats.update(seconds)
    fields = stats.as_dict()
    names = [k for k, v in fields.items() if isinstance(v, float) and k != "ops"]
    for name, value in zip(names, _max_over_ranks([fields[k] for k in names], device)):
        fields[name] = value
    fields["ops"] = 1.0 / fields["mean"] if fields["mean"] else 0.0
    return fields


def _time_passes(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor], clock: _Clock, warmup: int,
                 rounds: int, synchronize: Callable[[], None]) -> tuple[list[float], list[float]]:
    """Forward and backward seconds per round; ranks start every pass together (barrier outside the timing)."""
    times: dict[str, list[float]] = {"forward": [], "backward": []}
    held: dict[str, torch.Tensor] = {}

    def run_forward():
        held["out"] = forward()
        held["grad"] = torch.randn_like(held["out"])

    def run_backward():
        torch.autograd.grad(held.pop("out"), inputs, held.pop("grad"))

    for i in range(warmup + rounds):
        synchronize()
        fwd = clock(run_forward)
        synchronize()
        bwd = clock(run_backward)
        if i >= warmup:
            times["forward"].append(fwd)
            times["backward"].append(bwd)
    return times["forward"], times["backward"]


def _barrier_and_sync(device: torch.device) -> Callable[[], None]:
    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier()
    return synchronize


def _exchange_seconds(shape, dtype, device, seq_len, layout, clock, warmup, rounds, synchronize):
    """The ring's exchanges alone, medians (forward, backward): world_size-1 K/V hops; and those plus
    world_size fp32 dK/dV hops. The same batch_isend_irecv pattern and buffer sizes as ring_attention."""
    from attention_impls.ring import _kv_buffers, _packed, _Ring, _wait

    rank, world_size = dist.get_rank(), dist.get_world_size()
    ring = _Ring(None, rank, world_size, layout, seq_len)
    acc_dtype = torch.promote_types(dtype, torch.float32)
    kv_buffers = _kv_buffers(torch.empty(shape, dtype=dtype, device=device), ring, dtype)
    grad_buffers = _kv_buffers(torch.empty(shape, dtype=dtype, device=device), ring, acc_dtype)

    def hops(buffers, count):
        held = _packed(buffers[0], shape, shape[2])
        for step in range(count):
            incoming = _packed(buffers[(step + 1) % 2], shape, ring.local_len(rank - step - 1))
            _wait(ring.exchange(held, incoming))
            held = incoming

    def forward():
        hops(kv_buffers, world_size - 1)

    def backward():
        hops(kv_buffers, world_size - 1)
        hops(grad_buffers, world_size)

    medians = []
    for fn in (forward, backward):
        times = []
        for i in range(warmup + rounds):
            synchronize()
            seconds = clock(fn)
            if i >= warmup:
                times.append(seconds)
        medians.append(_max_over_ranks([statistics.median(times)], device)[0])
    return medians


# -- one cell


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class _CellRun:
    """Measures the cells of one (seq_len, causal) on every rank; rank 0 keeps the records."""

    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.clock = _Clock(device)
        self.synchronize = _barrier_and_sync(device)
        self.dtype = DTYPES[args.dtype]
        self.mesh = None  # context_parallel's DeviceMesh, made on first use

    def cell(self, variant: str, seq_len: int, causal: bool) -> Cell:
        a = self.args
        return Cell(variant=variant, seq_len=seq_len, head_dim=a.head_dim, batch=a.batch, heads=a.heads,
                    dtype=a.dtype, causal=causal, device=self.device.type)

    def _reset_memory(self):
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def _memory(self, before_backward: int) -> dict:
        if self.device.type != "cuda":
            return {}
        peak, before = _max_over_ranks([float(torch.cuda.max_memory_allocated(self.device)), float(before_backward)],
                                       self.device)
        return {"peak_bytes": int(peak), "mem_before_backward_bytes": int(before)}

    def _fits(self, local_bytes: int, copies: int, ranks: int | None = None) -> str | None:
        """Why ``copies`` tensors of ``local_bytes`` on each of ``ranks`` ranks (default: all) cannot fit: on CUDA
        the rank with the least free memory; on CPU the host's available memory, which the ranks share."""
        need = copies * local_bytes
        if self.device.type == "cuda":
            free = _max_over_ranks([-float(torch.cuda.mem_get_info(self.device)[0])], self.device)[0] * -1
            if need > free:
                return f"needs about {render.size(need)} per rank, {render.size(free)} free on the fullest rank"
            return None
        available = available_host_memory_bytes()
        ranks = self.world_size if ranks is None else ranks
        if available is not None and need * ranks > available:
            return (f"needs about {render.size(need)} per rank, {ranks} rank(s) on this host, "
                    f"{render.size(available)} available")
        return None

    def ring(self, block: str, seq_len: int, causal: bool) -> dict:
        """One ring cell: status, message, memory and per pass stats plus the exchange figures."""
        from attention_impls.ring import get_block_op, local_seq_len, ring_attention

        from .census import take_census

        a = self.args
        reason = get_block_op(block).unavailable_reason(self.device, self.dtype)
        if reason is not None:
            return {"status": "skipped", "message": reason}
        layout = "zigzag" if causal else "contiguous"
        local_len = local_seq_len(seq_len, self.rank, self.world_size, layout)
        shape = (a.batch, a.heads, local_len, a.head_dim)
        element = torch.empty(0, dtype=self.dtype).element_size()
        # inputs, output, grads, K/V buffers, fp32 accumulators: about 24 local tensors at the peak
        reason = self._fits(a.batch * a.heads * local_len * a.head_dim * element, 24)
        if reason:
            return {"status": "oom-predicted", "message": reason}
        self._reset_memory()
        q, k, v = (torch.randn(shape, dtype=self.dtype, device=self.device, requires_grad=True) for _ in range(3))

        def forward(exchange_blocks=True):
            return ring_attention(q, k, v, causal=causal, block=block, layout=layout, seq_len=seq_len,
                                  exchange_blocks=exchange_blocks)

        census, out = take_census(forward, nxn_elements=a.batch * a.heads * local_len * seq_len)
        before_backward = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
        del out
        fwd, bwd = _time_passes(forward, [q, k, v], self.clock, a.warmup, a.rounds, self.synchronize)
        record = {"status": "ok", "message": f"{self.world_size} ranks, {layout}, block {block}",
                  "memory": {"saved_nxn": census.nxn_count, "saved_bytes": census.saved_bytes,
                             **self._memory(before_backward)},
                  "passes": {"forward": _slowest_stats(fwd, self.device), "backward": _slowest_stats(bwd, self.device)}}
        compute = _time_passes(lambda: forward(False), [q, k, v], self.clock, a.warmup, a.rounds, self.synchronize)
        comm = _exchange_seconds(shape, self.dtype, self.device, seq_len, layout, self.clock, a.warmup, a.rounds,
                                 self.synchronize)
        for pass_name, compute_rounds, comm_s in zip(("forward", "backward"), compute, comm):
            compute_s = _max_over_ranks([statistics.median(compute_rounds)], self.device)[0]
            total_s = record["passes"][pass_name]["median"]
            hidden = (compute_s + comm_s - total_s) / comm_s if comm_s > 0 else 0.0
            record.setdefault("extra", {})[pass_name] = {"comm_s": comm_s, "compute_s": compute_s,
                                                         "hidden_comm_fraction": min(1.0, max(0.0, hidden))}
        return record

    def single(self, seq_len: int, causal: bool) -> dict | None:
        """The whole problem on one device (rank 0's; SINGLE_VARIANTS): the other ranks wait."""
        from attention_impls import get_variant

        record = None
        if self.rank == 0:
            variant = get_variant(SINGLE_VARIANTS[self.device.type])
            reason = variant.unavailable_reason(self.device, self.dtype)
            if reason is not None:
                record = {"status": "skipped", "message": reason}
            else:
                a = self.args
                element = torch.empty(0, dtype=self.dtype).element_size()
                # the other ranks wait at a barrier, holding what their last cell left: counted as one rank
                reason = self._fits(a.batch * a.heads * seq_len * a.head_dim * element, 24, ranks=1)
                record = ({"status": "oom-predicted", "message": reason} if reason else
                          self._guarded(lambda: self._single(variant, seq_len, causal)))
        self.synchronize()
        return record

    def _single(self, variant, seq_len: int, causal: bool) -> dict:
        from .census import census_of_attention

        a = self.args
        self._reset_memory()
        shape = (a.batch, a.heads, seq_len, a.head_dim)
        q, k, v = (torch.randn(shape, dtype=self.dtype, device=self.device, requires_grad=True) for _ in range(3))
        census = census_of_attention(variant.fn, q, k, v, causal=causal)
        out = variant.fn(q, k, v, causal=causal)
        before = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        del out
        times = _time_passes(lambda: variant.fn(q, k, v, causal=causal), [q, k, v], self.clock, a.warmup, a.rounds,
                             self._sync_here)
        memory = {"saved_nxn": census.nxn_count, "saved_bytes": census.saved_bytes}
        if self.device.type == "cuda":
            memory.update(peak_bytes=torch.cuda.max_memory_allocated(self.device), mem_before_backward_bytes=before)
        from .pb_compat import Stats

        passes = {}
        for pass_name, rounds in zip(("forward", "backward"), times):
            stats = Stats()
            for seconds in rounds:
                stats.update(seconds)
            passes[pass_name] = stats.as_dict()
        return {"status": "ok", "message": "one device, the whole sequence", "memory": memory, "passes": passes}

    def _sync_here(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def context_parallel(self, seq_len: int, causal: bool) -> dict:
        """PyTorch's context_parallel around SDPA's flash backend, on every rank."""
        if self.device.type != "cuda":
            return {"status": "skipped", "message": "context_parallel shards SDPA's CUDA kernels; CUDA only"}
        return self._guarded(lambda: self._context_parallel(seq_len, causal), collective=True)

    def _context_parallel(self, seq_len: int, causal: bool) -> dict:
        import torch.nn.functional as F
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.experimental import context_parallel
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from .census import take_census

        try:
            from torch.distributed.tensor.experimental._attention import set_rotate_method
        except ImportError:
            set_rotate_method = None
        a = self.args
        if set_rotate_method is not None:
            set_rotate_method(a.cp_rotate)
        self._reset_memory()
        if self.mesh is None:
            self.mesh = init_device_mesh("cuda", (self.world_size,))
        shape = (a.batch, a.heads, seq_len, a.head_dim)
        # context_parallel takes the whole sequence on every rank and shards the buffers in place
        q, k, v = (torch.randn(shape, dtype=self.dtype, device=self.device) for _ in range(3))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), context_parallel(
                self.mesh, buffers=[q, k, v], buffer_seq_dims=[2, 2, 2], no_restore_buffers={q, k, v}):
            for t in (q, k, v):  # the buffers are this rank's shard now
                t.requires_grad_(True)

            def forward():
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

            census, out = take_census(forward, nxn_elements=a.batch * a.heads * q.shape[2] * seq_len)
            before = torch.cuda.memory_allocated(self.device)
            del out
            fwd, bwd = _time_passes(forward, [q, k, v], self.clock, a.warmup, a.rounds, self.synchronize)
            for t in (q, k, v):  # leaves that require grad cannot be written in place on the way out
                t.requires_grad_(False)
        rotate = a.cp_rotate if set_rotate_method is not None else "default"
        return {"status": "ok", "message": f"{self.world_size} ranks, rotate {rotate}",
                "memory": {"saved_nxn": census.nxn_count, "saved_bytes": census.saved_bytes, **self._memory(before)},
                "passes": {"forward": _slowest_stats(fwd, self.device), "backward": _slowest_stats(bwd, self.device)}}

    def _guarded(self, measure: Callable[[], dict], collective: bool = False) -> dict:
        """``measure()``, with an OOM recorded as oom-measured and any other error as failed (the grid goes on).
        ``collective``: every rank measures; the ranks then agree on the worst status."""
        try:
            record = measure()
            failed = 0.0
        except Exception as exc:  # noqa: BLE001  (recorded as the cell's status, with the reason)
            status = "oom-measured" if _is_oom(exc) else "failed"
            record = {"status": status, "message": f"rank {self.rank}: {type(exc).__name__}: {str(exc)[:300]}"}
            failed = 1.0
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        if collective and _max_over_ranks([failed], self.device)[0] and not failed:
            record = {"status": "failed", "message": "another rank failed (its message is on its stderr)"}
        return record


# -- the grid, the records, the table


def _records(cells: list[tuple[Cell, dict]], world_size: int, single: dict[tuple[int, bool], dict]):
    """CellRecords and benchmark entries, with each ring pass's efficiency against the single-GPU run."""
    from .record import CellRecord, PassResult, benchmark_entry

    records, benchmarks = [], []
    for cell, result in cells:
        records.append(CellRecord(cell, result["status"], result.get("message", ""), result.get("memory", {})))
        base = single.get((cell.seq_len, cell.causal))
        for pass_name, stats in result.get("passes", {}).items():
            facts = dict(result.get("extra", {}).get(pass_name, {}))
            if cell.variant.startswith("ring_") and base and base.get("status") == "ok":
                single_s = base["passes"][pass_name]["median"]
                facts.update(single_device_s=single_s, scaling_efficiency=single_s / (world_size * stats["median"]))
            measured = PassResult(name=f"attnbench cp::{pass_name}[{cell.key}]", pass_name=pass_name, stats=stats,
                                 flops=cell.flops(pass_name), checks=facts)
            benchmarks.append(benchmark_entry(cell, measured))
    return records, benchmarks


def _table_rows(cells: list[tuple[Cell, dict]], benchmarks: list[dict]) -> list[list[str]]:
    facts = {(b["param"], b["extra_info"]["pass"]): b for b in benchmarks}
    cp = {(c.seq_len, c.causal): r for c, r in cells if c.variant == CP_VARIANT}
    rows = []
    for cell, result in cells:
        if not cell.variant.startswith("ring_"):
            continue
        fwd, bwd = facts.get((cell.key, "forward")), facts.get((cell.key, "backward"))
        cp_result = cp.get((cell.seq_len, cell.causal), {})

        def median(entry, status=result["status"]):
            return render.ms(entry["stats"]["median"]) if entry else status

        def fact(entry, key, fmt):
            value = entry["extra_info"].get(key) if entry else None
            return fmt(value) if value is not None else render.MISSING

        cp_passes = cp_result.get("passes")
        rows.append([cell.seq_len, "causal" if cell.causal else "full", cell.variant.removeprefix("ring_"),
                     median(fwd), median(bwd), render.gib(result.get("memory", {}).get("peak_bytes")),
                     f"{fact(fwd, 'comm_s', render.ms)} / {fact(bwd, 'comm_s', render.ms)}",
                     (f"{fact(fwd, 'hidden_comm_fraction', render.percent)} / "
                      f"{fact(bwd, 'hidden_comm_fraction', render.percent)}"),
                     f"{fact(fwd, 'scaling_efficiency', _two)} / {fact(bwd, 'scaling_efficiency', _two)}",
                     (f"{render.ms(cp_passes['forward']['median'])} / {render.ms(cp_passes['backward']['median'])}"
                      if cp_passes else cp_result.get("status", render.MISSING))])
    return rows


def _two(value: float) -> str:
    return f"{value:.2f}"


TABLE_HEADERS = ("seq_len", "mask", "block", "fwd ms", "bwd ms", "mem/GPU GiB", "comm ms fwd / bwd",
                 "comm hidden fwd / bwd", "efficiency fwd / bwd", "context_parallel fwd / bwd ms")


def measure(args, device: torch.device, progress: Callable[[list, dict], None] | None = None
            ) -> tuple[list[tuple[Cell, dict]], dict]:
    """Every cell of the grid, on every rank; rank 0 prints progress. Returns (cell, result) and the
    single-GPU results by (seq_len, causal) (meaningful on rank 0). ``progress(cells, single)`` is called
    on rank 0 after every cell, so a run stopped half-way keeps what it measured."""
    runner = _CellRun(args, device)
    say = print if runner.rank == 0 else (lambda *a, **k: None)
    cells, single = [], {}

    def measured(line: str) -> None:
        say(line, flush=True)
        if progress is not None and runner.rank == 0:
            progress(cells, single)

    for seq_len in args.seq_lens:
        for causal in args.causal:
            mask = "causal" if causal else "full"
            for block in args.blocks:
                cell = runner.cell(ring_variant(block), seq_len, causal)
                result = runner._guarded(functools.partial(runner.ring, block, seq_len, causal), collective=True)
                cells.append((cell, result))
                measured(f"[cp] seq_len {seq_len} {mask} ring {block}: {_progress(result)}")
            if args.single:
                result = runner.single(seq_len, causal)
                if result is not None:
                    single[(seq_len, causal)] = result
                    variant = SINGLE_VARIANTS[device.type]
                    cells.append((runner.cell(variant, seq_len, causal), result))
                    measured(f"[cp] seq_len {seq_len} {mask} one device {variant}: {_progress(result)}")
            if args.context_parallel:
                result = runner.context_parallel(seq_len, causal)
                cells.append((runner.cell(CP_VARIANT, seq_len, causal), result))
                measured(f"[cp] seq_len {seq_len} {mask} {CP_VARIANT}: {_progress(result)}")
    return cells, single


def _progress(result: dict) -> str:
    """A cell's line in the log: its times, and where measured its peak memory per GPU and exchange time."""
    if result["status"] != "ok":
        return f"{result['status']} ({result.get('message', '')})"
    passes = result["passes"]
    line = f"fwd {render.ms(passes['forward']['median'])} ms, bwd {render.ms(passes['backward']['median'])} ms"
    peak = result.get("memory", {}).get("peak_bytes")
    if peak is not None:
        line += f", peak {render.size(peak)} per GPU"
    extra = result.get("extra", {})
    if extra:
        line += ", comm " + " / ".join(f"{render.ms(extra[p]['comm_s'])}" for p in ("forward", "backward")) + " ms"
    return line


def planned_cells(args) -> int:
    """How many cells the grid has: ring blocks, the single-GPU run and context_parallel per (seq_len, causal)."""
    per_point = len(args.blocks) + bool(args.single) + bool(args.context_parallel)
    return len(args.seq_lens) * len(args.causal) * per_point


def run_data(args, device: torch.device, cells, single, world_size: int, *, complete: bool,
             stop_reason: str = "") -> dict:
    """The run as attnbench.record writes it, from the cells measured so far."""
    from .pb_compat import generate_machine_info, get_commit_info, pb_version

    from .machine import environment, gpu_identity
    from .record import Timing, command_run, machine_section, run_section

    records, benchmarks = _records(cells, world_size, single)
    uuid, visible = gpu_identity(device.type)
    machine_info = {**generate_machine_info(),
                    "attnbench": machine_section(environment(device.type), gpu_uuid=uuid,
                                                 cuda_visible_devices=visible)}
    section = run_section(preset=PRESET, timing=Timing("device" if device.type == "cuda" else "wall"), plants={},
                          complete=complete, stop_reason=stop_reason, cells=records, world_size=world_size)
    return command_run(machine_info=machine_info, commit_info=get_commit_info(), benchmarks=benchmarks,
                       section=section, version=pb_version(),
                       datetime=datetime.datetime.now(datetime.timezone.utc).isoformat())


class RunWriter:
    """Rank 0's saved run: rewritten after every cell as an incomplete run (``-o`` itself, or
    ``incomplete_cp_<commit>_<time>.json`` in the storage), then written complete at the end (``-o``, or the
    next numbered file, the incomplete one removed)."""

    def __init__(self, args, device: torch.device, world_size: int):
        from .pb_compat import get_commit_info, get_machine_id

        from .storage import INCOMPLETE_PREFIX

        self.args, self.device, self.world_size = args, device, world_size
        commit = (get_commit_info().get("id") or "nocommit")[:8]
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d_%H%M%S")
        self.name = f"cp_{commit}_{stamp}"
        self.directory = Path(args.storage) / get_machine_id()
        self.partial = args.output or self.directory / f"{INCOMPLETE_PREFIX}{self.name}.json"
        self.total = planned_cells(args)

    def progress(self, cells, single) -> None:
        """Rewrite the incomplete run; a failed write is reported and the grid goes on (the end says again)."""
        from .record import write_json_atomically

        stop_reason = f"stopped after {len(cells)} of {self.total} cells"
        data = run_data(self.args, self.device, cells, single, self.world_size, complete=False,
                        stop_reason=stop_reason)
        try:
            Path(self.partial).parent.mkdir(parents=True, exist_ok=True)
            write_json_atomically(Path(self.partial), data)
        except OSError as exc:
            print(f"attnbench cp: cannot write the run so far to {self.partial}: {exc}", file=sys.stderr)

    def finish(self, cells, single) -> Path:
        from .record import write_json_atomically
        from .storage import save_numbered

        data = run_data(self.args, self.device, cells, single, self.world_size, complete=True)
        print(render.table(TABLE_HEADERS, _table_rows(cells, data["benchmarks"])))
        if self.args.output is not None:
            write_json_atomically(self.args.output, data)
            return self.args.output
        path = save_numbered(self.directory, self.name, data, complete=True)
        Path(self.partial).unlink(missing_ok=True)
        return path


# -- the command line


def _causal(text: str) -> tuple[bool, ...]:
    choices = {"both": (False, True), "on": (True,), "off": (False,)}
    if text not in choices:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")
    return choices[text]


def _blocks(text: str) -> tuple[str, ...]:
    from attention_impls.ring import BLOCK_OPS

    blocks = tuple(text.split(","))
    unknown = [b for b in blocks if b not in BLOCK_OPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown block {unknown[0]!r}; allowed: {', '.join(BLOCK_OPS)}")
    return blocks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``cp`` subcommand's arguments."""
    parser.description = __doc__.split("\n\n")[0]
    group = parser.add_argument_group("grid")
    group.add_argument("--seq-lens", type=parse_positive_ints, default=DEFAULT_SEQ_LENS, metavar="N,N",
                       help=f"global sequence lengths (default: {','.join(map(str, DEFAULT_SEQ_LENS))})")
    group.add_argument("--causal", type=_causal, default=(False, True), metavar="both|on|off",
                       help="causal, non-causal or both (default: both)")
    group.add_argument("--blocks", type=_blocks, default=DEFAULT_BLOCKS, metavar="NAME,NAME",
                       help=f"ring block ops (default: {','.join(DEFAULT_BLOCKS)})")
    group.add_argument("--batch", type=parse_positive_int, default=DEFAULT_BATCH, help=f"default {DEFAULT_BATCH}")
    group.add_argument("--heads", type=parse_positive_int, default=DEFAULT_HEADS, help=f"default {DEFAULT_HEADS}")
    group.add_argument("--head-dim", type=parse_positive_int, default=DEFAULT_HEAD_DIM,
                       help=f"default {DEFAULT_HEAD_DIM}")
    group.add_argument("--dtype", choices=tuple(DTYPES), default=DEFAULT_DTYPE, help=f"default {DEFAULT_DTYPE}")
    group.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                       help="cuda with NCCL, cpu with gloo (default: auto, cuda when there is a GPU)")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--warmup", type=parse_positive_int, default=DEFAULT_WARMUP, help=f"default {DEFAULT_WARMUP}")
    timing.add_argument("--rounds", type=parse_positive_int, default=DEFAULT_ROUNDS, help=f"default {DEFAULT_ROUNDS}")
    parser.add_argument("--no-single", dest="single", action="store_false",
                        help="leave out the single-GPU triton_flash run (and so the efficiency)")
    parser.add_argument("--no-context-parallel", dest="context_parallel", action="store_false",
                        help="leave out PyTorch's context_parallel")
    parser.add_argument("--cp-rotate", choices=CP_ROTATE_METHODS, default=DEFAULT_CP_ROTATE,
                        help=f"context_parallel's K/V rotation (default: {DEFAULT_CP_ROTATE})")
    parser.add_argument("--nproc", type=parse_positive_int, metavar="N",
                        help="start torchrun with N processes on this host (default: expect to run under torchrun)")
    parser.add_argument("-o", "--output", type=Path, metavar="RUN.json", help="write the run here")
    parser.add_argument("--storage", default=".benchmarks",
                        help="else save the next numbered run under STORAGE/<machine>/ (default: .benchmarks)")
    parser.set_defaults(run=run)


def run(args) -> int:
    """Entry point of ``attnbench cp``."""
    unwritable = _unwritable_output(args)
    if unwritable:
        print(f"attnbench cp: {unwritable}; nothing was measured", file=sys.stderr)
        return EXIT_OUTPUT_ERROR
    device_type = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    launching = "RANK" not in os.environ or "WORLD_SIZE" not in os.environ
    unrunnable = _device_problem(device_type, args.nproc if launching else None)
    if unrunnable:  # before torchrun starts: its workers would each fail and end in its traceback
        print(f"attnbench cp: {unrunnable}; nothing was measured", file=sys.stderr)
        return EXIT_USAGE
    if launching:
        if args.nproc is None:
            print("attnbench cp: run it under torchrun (torchrun --nproc-per-node N -m attnbench cp ...), "
                  "or pass --nproc N to start torchrun", file=sys.stderr)
            return EXIT_USAGE
        return _start_torchrun(args.nproc, args.argv)
    if device_type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=COLLECTIVE_TIMEOUT)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    status = EXIT_OK
    try:
        writer = RunWriter(args, device, dist.get_world_size()) if dist.get_rank() == 0 else None
        cells, single = measure(args, device, progress=writer.progress if writer else None)
        if writer is not None:
            try:
                print(f"[cp] saved {writer.finish(cells, single)}")
            except OSError as exc:
                print(f"attnbench cp: cannot write the run: {exc}", file=sys.stderr)
                status = EXIT_OUTPUT_ERROR
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return status


def _device_problem(device_type: str, nproc: int | None) -> str | None:
    """Why ``nproc`` ranks (None: already launched) cannot run on ``device_type`` here, or None."""
    if device_type != "cuda":
        return None
    if not torch.cuda.is_available():
        return "--device cuda, and torch sees no GPU (pass --device cpu to run the ranks on gloo)"
    if nproc is not None and nproc > torch.cuda.device_count():
        return f"--nproc {nproc} needs {nproc} GPUs, and torch sees {torch.cuda.device_count()}"
    return None


def _unwritable_output(args) -> str | None:
    """Why the run could not be saved where it is asked for (checked before anything is measured), or None."""
    if args.output is not None:
        folder = Path(args.output).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            return f"cannot write the run to {args.output}: {folder} is not a writable folder"
        return None
    try:
        Path(args.storage).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot save runs under {args.storage}: {exc}"
    return None if os.access(args.storage, os.W_OK) else f"cannot save runs under {args.storage}: not writable"


def _start_torchrun(nproc: int, argv: list[str]) -> int:
    """Run this same command line (``argv``) under torchrun, ``nproc`` processes on this host; its exit
    status is ours."""
    argv = list(argv)
    for i, arg in enumerate(argv):  # drop --nproc N / --nproc=N: the children are launched already
        if arg == "--nproc":
            del argv[i:i + 2]
            break
        if arg.startswith("--nproc="):
            del argv[i]
            break
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "attnbench", *argv]
    return subprocess.call(command)
