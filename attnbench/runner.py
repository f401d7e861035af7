"""Measuring one grid cell: the memory probe, then forward and backward timing through pytest-benchmark.

Setup (inputs, the warm-up that compiles and autotunes, the memory probe) happens outside the
timed region; only a zero-argument callable is timed, the same way for every variant. What the
runner learns goes into the cell's :class:`attnbench.record.CellRecord`.
"""

from __future__ import annotations

import gc
import math
import time
import traceback
import zlib
from collections.abc import Callable

import pytest
import torch

from attention_impls import get_variant
from attention_impls.reference import plain_yardstick

from . import accuracy
from .census import census_of_attention
from .grid import Cell
from .machine import available_host_memory_bytes
from .memory_model import predict
from .record import CellRecord, PassResult, Timing, pass_extra_info
from .timing import DeviceClock, L2Flush, cuda_event_median_s, synchronized, wall_s

#: calls before timing: the first compiles/autotunes, the rest settle clocks and caches.
DEFAULT_WARMUP_CALLS = 3
#: at most this many timed rounds per benchmark, whatever --benchmark-max-time allows.
MAX_ROUNDS = 100
#: fraction of the free memory (device memory on CUDA, available RAM on CPU) a cell may be predicted
#: to need and still be attempted.
OOM_SAFETY_FRACTION = 0.97
CPU_OOM_SAFETY_FRACTION = 0.8
#: rounds of the independent CUDA-event measurement (--attn-timing-check).
TIMING_CHECK_ROUNDS = 20
#: the GPU spin before each timed call lasts this many times the host's time to launch the call ...
LAUNCH_SLACK_FACTOR = 2.0
#: ... plus this much, and at most MAX_LAUNCH_SLACK_S (a call that takes longer to launch is host-bound).
LAUNCH_SLACK_MARGIN_S = 50e-6
MAX_LAUNCH_SLACK_S = 0.05
#: rounds of the median the planted slowdown is sized from.
PLANT_BASE_ROUNDS = 5


class CellOOM(Exception):
    """A cell does not fit: predicted before running, or measured when the allocator failed."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class CellUnavailable(Exception):
    """The variant refuses the cell's tensors for a reason only this machine's libraries know (an SDPA backend's
    own check, say): the cell is recorded skipped with the reason, as the grid does with what it knows ahead."""


#: lines of a failing variant's traceback kept in the test's failure report
TRACEBACK_LINES = 12


def release_memory() -> None:
    """Drop everything a cell left behind so the next one starts from an empty allocator (CUDA graphs sit in
    reference cycles: only the collector frees their pools).

    cuBLAS's workspaces stay: PyTorch keeps one per (handle, stream) for the life of the process, and each CUDA
    graph capture warms up on a side stream from PyTorch's pool of 32, so cudagraph runs accumulate at most 32
    of them (64 MiB each on an H200). Freeing them would make the next cell's first matmul allocate its
    workspace inside the measured region: an H200 run that did so (34e143d) measured 32 MiB more before
    backward and 64 MiB more at the peak for every cuBLAS variant.

    Without CUDA there is no allocator to empty and no graph to free, and a full collection costs about 0.1 s
    with torch loaded (five per cell: most of a small CPU grid's time): CPU memory goes back as tensors die."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class CellRunner:
    """Measures one cell; shared by its forward and backward benchmarks."""

    def __init__(self, cell: Cell, *, max_time_s: float, min_rounds: int, timing: Timing = Timing(),
                 timing_check: bool = False, accuracy: bool = False, clock: DeviceClock | None = None, plant=None):
        self.cell = cell
        self.variant = get_variant(cell.variant)
        self.max_time_s = max_time_s
        self.min_rounds = min_rounds
        self.timing = timing
        self.timing_check = timing_check
        self.check_accuracy = accuracy
        self.clock = clock
        self.record = CellRecord(cell)
        self._generator: torch.Generator | None = None
        self.mask = cell.mask_spec()
        self._attention = (lambda q, k, v: self.variant.fn(q, k, v, causal=cell.causal, mask=self.mask))
        if plant is not None:  # a planted regression (attnbench.plants), only when asked for
            self._attention = plant.wrap_attention(self._attention)
        self.plant = plant

    # -- inputs and the call being measured

    @property
    def generator(self) -> torch.Generator:
        """The cell's own generator, seeded from its key, not the device's default one: a failed CUDA graph
        capture leaves the default CUDA generator registered with the dead graph, and every later draw from it
        raises."""
        if self._generator is None:
            self._generator = torch.Generator(device=self.cell.device).manual_seed(zlib.crc32(self.cell.key.encode()))
        return self._generator

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fresh standard-normal q, k, v (requiring grad; k and v with heads_kv heads) and grad_out on the
        cell's device, from the cell's generator."""
        c = self.cell
        q_shape, kv_shape = (c.batch, c.heads, c.seq_len, c.head_dim), (c.batch, c.heads_kv, c.seq_len, c.head_dim)
        q, k, v, grad_out = (torch.randn(shape, device=c.device, dtype=c.torch_dtype, generator=self.generator)
                             for shape in (q_shape, kv_shape, kv_shape, q_shape))
        return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), grad_out

    def _shape_reason(self) -> str | None:
        """Why the variant refuses tensors of the cell's shapes, dtype and device (None when it accepts them),
        asked of uninitialised tensors: the cell's generator is left for its inputs."""
        c = self.cell
        q_shape, kv_shape = (c.batch, c.heads, c.seq_len, c.head_dim), (c.batch, c.heads_kv, c.seq_len, c.head_dim)
        q, k, v = (torch.empty(shape, device=c.device, dtype=c.torch_dtype).requires_grad_()
                   for shape in (q_shape, kv_shape, kv_shape))
        return self.variant.shape_reason(q, k, v, causal=c.causal, mask=self.mask)

    def prepare(self) -> None:
        """The variant's per-cell setup (flex: its block mask), run once and timed apart from the calls."""
        if self.variant.prepare is None:
            return
        c = self.cell
        if c.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.variant.prepare(c.seq_len, c.causal, self.mask, c.device)
        if c.device == "cuda":
            torch.cuda.synchronize()
        self.record.prepare_s = time.perf_counter() - start

    def attention(self, q, k, v) -> torch.Tensor:
        return self._attention(q, k, v)

    # -- memory

    def predicted(self):
        c = self.cell
        return predict(self.variant, batch=c.batch, heads=c.heads, seq_len=c.seq_len, head_dim=c.head_dim,
                       dtype=c.torch_dtype, causal=c.causal, heads_kv=c.heads_kv, mask=self.mask)

    def _check_fits(self, peak_bytes: int) -> None:
        """CellOOM("oom-predicted") when the predicted peak cannot fit where the cell runs."""
        memory = self.record.memory
        if self.cell.device == "cuda":
            free, fraction, where = torch.cuda.mem_get_info()[0], OOM_SAFETY_FRACTION, "free"
        else:
            free, fraction, where = available_host_memory_bytes(), CPU_OOM_SAFETY_FRACTION, "of RAM available"
            if free is None:
                return  # this platform does not say; the allocator will
        memory["free_bytes"] = free
        if peak_bytes > fraction * free:
            raise CellOOM("oom-predicted",
                          f"predicted peak {peak_bytes / 2**20:.0f} MiB > {fraction:.0%} of {free / 2**20:.0f} MiB "
                          f"{where}")

    def probe(self) -> CellRecord:
        """Census and memory figures of one forward and backward; raises CellOOM when it cannot fit."""
        memory = self.record.memory
        prediction = self.predicted()
        memory["predicted_before_backward_bytes"] = prediction.before_backward_bytes
        memory["predicted_peak_bytes"] = prediction.peak_bytes
        on_cuda = self.cell.device == "cuda"
        release_memory()
        self._check_fits(prediction.peak_bytes)
        reason = self._shape_reason()
        if reason is not None:
            raise CellUnavailable(f"{self.cell.variant} unavailable: {reason}")
        self.prepare()
        # One untimed forward and backward first: compilation, autotuning (Triton's benchmarking
        # allocates a 256 MiB cache-flush buffer) and library workspaces must not count as the cell's.
        q, k, v, grad_out = self.inputs()
        torch.autograd.grad(self.attention(q, k, v), (q, k, v), grad_out)
        del q, k, v, grad_out
        release_memory()
        if on_cuda:
            base = torch.cuda.memory_allocated()
        q, k, v, grad_out = self.inputs()
        if on_cuda:
            del grad_out  # the seed's figure: inputs and output live, nothing else
        census = census_of_attention(lambda *a, **_: self.attention(*a), q, k, v, causal=self.cell.causal,
                                     mask=self.mask)
        memory["saved_nxn"], memory["saved_bytes"] = census.nxn_count, census.saved_bytes
        out = self.attention(q, k, v)
        if on_cuda:
            torch.cuda.synchronize()
            memory["mem_before_backward_bytes"] = torch.cuda.memory_allocated() - base
            grad_out = torch.randn(out.shape, device=out.device, dtype=out.dtype, generator=self.generator)
            torch.cuda.reset_peak_memory_stats()
        torch.autograd.grad(out, (q, k, v), grad_out)
        if on_cuda:
            torch.cuda.synchronize()
            memory["peak_bytes"] = torch.cuda.max_memory_allocated() - base
        return self.record

    def measure_accuracy(self) -> None:
        """Errors of the output and gradients at the cell's shape against float64; status wrong past the bound."""
        rec, c = self.record, self.cell
        plain_peak = predict("torch_softmax", batch=c.batch, heads=c.heads, seq_len=c.seq_len, head_dim=c.head_dim,
                             dtype=c.torch_dtype, causal=c.causal, heads_kv=c.heads_kv, mask=self.mask).peak_bytes
        try:
            self._check_fits(plain_peak)
            plain_fits = True
        except CellOOM:
            plain_fits = False
        q, k, v, grad_out = self.inputs()
        start = time.perf_counter()
        try:
            rec.accuracy = accuracy.measure(self.attention, q, k, v, grad_out, causal=c.causal, mask=self.mask,
                                            plain_fits=plain_fits,
                                            yardstick=plain_yardstick(self.variant, c.causal, self.mask))
        except torch.OutOfMemoryError as exc:
            rec.message = f"accuracy not measured: {str(exc).splitlines()[0]}"
            return
        finally:
            del q, k, v, grad_out
            rec.accuracy_s = time.perf_counter() - start
        if rec.accuracy.wrong:
            rec.status, rec.message = "wrong", rec.accuracy.describe_wrong()

    def ensure_probed(self) -> None:
        """Probe once (and check accuracy); an OOM cell is recorded as such and its benchmarks skip with the
        numbers; a cell whose tensors the variant refuses (``Variant.shape_reason``) is recorded skipped with the
        reason. A wrong cell is timed all the same: how fast a wrong kernel is belongs in the record. A variant
        that raises is recorded as failed: its first benchmark fails with the error, the next one skips."""
        rec = self.record
        failure = None
        if rec.status == "pending":
            try:
                self.probe()
                rec.status = "ok"
                release_memory()
                if self.check_accuracy:
                    self.measure_accuracy()
            except CellOOM as exc:
                rec.status, rec.message = exc.kind, str(exc)
            except CellUnavailable as exc:
                rec.status, rec.message = "skipped", str(exc)
            except torch.OutOfMemoryError as exc:
                rec.status, rec.message = "oom-measured", str(exc).splitlines()[0]
            except Exception as exc:  # noqa: BLE001  (the variant raised: recorded, reported, the grid goes on)
                failure = self._record_failure(exc)
            release_memory()  # outside the except: the traceback no longer pins the tensors
        if failure is not None:
            pytest.fail(failure, pytrace=False)
        if rec.status not in ("ok", "wrong", "capture-failed"):
            pytest.skip(f"{rec.status}: {rec.message}")

    def _record_failure(self, exc: Exception, pass_name: str | None = None) -> str:
        """Status failed with the error's first line; returns the failure text with the traceback as text (no
        frames are kept, so the cell's tensors can be freed)."""
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        where = f"{pass_name}: " if pass_name else ""
        self.record.status, self.record.message = "failed", f"{where}{type(exc).__name__}: {first_line}"
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-TRACEBACK_LINES:])
        return f"{self.cell.key}: {self.record.message}\n{trace}"

    # -- what is timed

    def _eager_targets(self, pass_name: str) -> tuple[Callable[[], object], Callable[[], None] | None]:
        q, k, v, grad_out = self.inputs()
        if pass_name == "forward":
            return (lambda: self.attention(q, k, v)), None
        state: dict = {}

        def setup():
            state["out"] = self.attention(q, k, v)

        def run():
            torch.autograd.grad(state.pop("out"), (q, k, v), grad_out)

        return run, setup

    def _graphed_targets(self, pass_name: str):
        """The pass replayed from CUDA graphs captured once; RuntimeError when capture fails."""
        # The graphs of the pass measured before this one are garbage only once the collector has run (the
        # autograd.Function class that make_graphed_callables builds sits in a reference cycle): until then their
        # private memory pools stay reserved, and capturing near a full allocator fails or runs out of memory.
        release_memory()
        q, k, v, grad_out = self.inputs()
        graphed = torch.cuda.make_graphed_callables(self.attention, (q, k, v))
        if pass_name == "forward":
            return (lambda: graphed(q, k, v)), None
        state: dict = {}

        def setup():
            state["out"] = graphed(q, k, v)

        def run():
            torch.autograd.grad(state.pop("out"), (q, k, v), grad_out)

        return run, setup

    def targets(self, pass_name: str):
        """``(target, setup)`` for the run's timing mode: only ``target`` is timed."""
        if self.timing.mode != "cudagraph":
            return self._eager_targets(pass_name)
        try:
            return self._graphed_targets(pass_name)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # capture rejects host syncs, CPU-side control flow, some library calls
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise _CaptureFailed(f"{pass_name}: CUDA graph capture failed: {type(exc).__name__}: "
                                 f"{first_line[:300]}") from None

    # -- timing

    def _rounds(self, target, setup) -> tuple[int, float]:
        """Warm up, size the launch slack and the number of rounds; returns (rounds, warm-up wall seconds)."""
        device = self.cell.device
        walls = []
        for _ in range(DEFAULT_WARMUP_CALLS):
            if setup is not None:
                setup()
            walls.append(wall_s(target, device))
        warmup_wall = min(walls[1:] or walls)  # the first call compiles and autotunes
        if setup is not None:
            setup()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        target()
        host_s = time.perf_counter() - start  # launches only, unless the call synchronizes
        if device == "cuda" and self.timing.mode != "wall":
            self.launch_slack_s = min(MAX_LAUNCH_SLACK_S, LAUNCH_SLACK_FACTOR * host_s + LAUNCH_SLACK_MARGIN_S)
            estimate = cuda_event_median_s(target, rounds=1, setup=setup, launch_slack_s=self.launch_slack_s)
        else:
            self.launch_slack_s = 0.0
            estimate = warmup_wall
        rounds = max(self.min_rounds, min(MAX_ROUNDS, math.ceil(self.max_time_s / max(estimate, 1e-9))))
        return rounds, warmup_wall

    def _median_s(self, target, setup) -> Callable[[], float]:
        """A function measuring ``target``'s median as this run's clock sees it (for planted slowdowns)."""
        if self.cell.device == "cuda" and self.timing.mode != "wall":
            return lambda: cuda_event_median_s(target, rounds=PLANT_BASE_ROUNDS, setup=setup,
                                               launch_slack_s=self.launch_slack_s)

        def median() -> float:
            times = []
            for _ in range(PLANT_BASE_ROUNDS):
                if setup is not None:
                    setup()
                times.append(wall_s(target, self.cell.device))
            return sorted(times)[len(times) // 2]

        return median

    def bench(self, benchmark, pass_name: str) -> None:
        """Time ``pass_name`` ('forward' or 'backward') with pytest-benchmark and record the result.

        An out-of-memory error here is recorded as ``oom-measured``, a failed CUDA graph capture as
        ``capture-failed``, and the benchmark skips; the rest of the grid goes on.
        """
        if pass_name not in ("forward", "backward"):
            raise ValueError(f"pass_name must be 'forward' or 'backward', got {pass_name!r}")
        failure = None
        try:
            self._bench(benchmark, pass_name)
            return
        except torch.OutOfMemoryError as exc:
            self.record.status, self.record.message = "oom-measured", f"{pass_name}: {str(exc).splitlines()[0]}"
        except _CaptureFailed as exc:
            self.record.status = "capture-failed"
            self.record.message = "; ".join(filter(None, (self.record.message, str(exc))))
        except Exception as exc:  # noqa: BLE001  (the variant raised: recorded, reported, the grid goes on)
            failure = self._record_failure(exc, pass_name)
        release_memory()
        if failure is not None:
            pytest.fail(failure, pytrace=False)
        pytest.skip(f"{self.record.status}: {self.record.message}")

    def _bench(self, benchmark, pass_name: str) -> None:
        target, setup = self.targets(pass_name)
        rounds, warmup_wall = self._rounds(target, setup)
        on_cuda = self.cell.device == "cuda"
        if self.plant is not None:
            target = self.plant.slow_target(target, self._median_s(target, setup), self.cell.device)
        timed_target, timed_setup = target, setup
        if self.timing.flush_l2:
            timed_setup = L2Flush(self.cell.device).after(setup)
        checked_setup = timed_setup  # the event check starts each call as the suite does: flushed or warm
        if on_cuda and self.timing.mode == "wall":
            timed_target, timed_setup = synchronized(timed_target), synchronized(timed_setup)
        elif on_cuda:
            self.clock.set_launch_slack(self.launch_slack_s)
        if timed_setup is None:
            benchmark.pedantic(timed_target, rounds=rounds, warmup_rounds=0, iterations=1)
        else:
            benchmark.pedantic(timed_target, setup=timed_setup, rounds=rounds, warmup_rounds=0, iterations=1)
        checks = {"warmup_wall_s": warmup_wall}
        if self.timing_check and on_cuda:
            checks["event_median_s"] = cuda_event_median_s(target, rounds=TIMING_CHECK_ROUNDS, setup=checked_setup,
                                                           launch_slack_s=self.launch_slack_s)
            checks["launch_slack_s"] = self.launch_slack_s
        flops = self.cell.flops(pass_name)
        benchmark.extra_info.update(pass_extra_info(pass_name, flops, **checks))
        stats = benchmark.stats.stats
        self.record.passes[pass_name] = PassResult(
            name=benchmark.fullname, pass_name=pass_name, flops=flops, checks=checks,
            stats={name: getattr(stats, name) for name in ("min", "max", "mean", "median", "q1", "q3", "iqr",
                                                            "stddev", "rounds")},
        )


class _CaptureFailed(Exception):
    """The cell's call cannot be captured in a CUDA graph."""
