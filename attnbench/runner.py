"""Measuring one grid cell: the memory probe, then forward and backward timing through pytest-benchmark.

Setup (inputs, the warm-up that compiles and autotunes, the memory probe) happens outside the
timed region; only a zero-argument callable is timed, the same way for every variant.
"""

from __future__ import annotations

import gc
import math
import os
import time
from dataclasses import dataclass, field

import pytest
import torch

from attention_impls import get_variant

from .census import census_of_attention
from .grid import Cell
from .memory_model import predict
from .timing import cuda_event_median_s, set_launch_slack, spin

#: calls before timing: the first compiles/autotunes, the rest settle clocks and caches.
DEFAULT_WARMUP_CALLS = 3
#: time budget per benchmark (seconds) and the bounds on its number of rounds.
DEFAULT_MAX_TIME_S = 0.25
DEFAULT_MIN_ROUNDS = 10
MAX_ROUNDS = 100
#: fraction of the free device memory a cell may be predicted to need and still be attempted.
OOM_SAFETY_FRACTION = 0.97
#: rounds of the independent CUDA-event measurement (--attn-timing-check).
TIMING_CHECK_ROUNDS = 20
#: the GPU spin before each timed call lasts this many times the host's time to launch the call ...
LAUNCH_SLACK_FACTOR = 2.0
#: ... plus this much, and at most MAX_LAUNCH_SLACK_S (a call that takes longer to launch is host-bound).
LAUNCH_SLACK_MARGIN_S = 50e-6
MAX_LAUNCH_SLACK_S = 0.05
#: test-only planted regressions, e.g. "slow:torch_softmax:0.15,extra_nxn:weights_only".
PLANT_ENV = "ATTNBENCH_PLANT"


class CellOOM(Exception):
    """A cell does not fit: predicted before running, or measured when the allocator failed."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class CellRecord:
    """What a run learned about one cell; written to the run's JSON under ``attnbench.cells``."""

    cell: Cell
    status: str = "pending"  # ok | oom-predicted | oom-measured
    message: str = ""
    saved_nxn: int | None = None
    saved_bytes: int | None = None
    predicted_before_backward_bytes: int | None = None
    predicted_peak_bytes: int | None = None
    mem_before_backward_bytes: int | None = None
    peak_bytes: int | None = None
    free_bytes: int | None = None
    timings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        data = {"key": self.cell.key, **self.cell.as_dict()}
        data.update({k: v for k, v in vars(self).items() if k != "cell"})
        return data

    def memory_info(self) -> dict:
        """The memory figures every benchmark of this cell carries in ``extra_info``."""
        keys = ("saved_nxn", "saved_bytes", "predicted_before_backward_bytes", "predicted_peak_bytes",
                "mem_before_backward_bytes", "peak_bytes")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def parse_plants(text: str | None) -> dict[str, dict[str, float]]:
    """``ATTNBENCH_PLANT`` -> {variant: {"slow": fraction, "extra_nxn": 1}}; empty when unset."""
    plants: dict[str, dict[str, float]] = {}
    expected = "expected slow:VARIANT:FRACTION or extra_nxn:VARIANT"
    for item in filter(None, (text or "").split(",")):
        parts = item.strip().split(":")
        if parts[0] == "slow" and len(parts) == 3:
            try:
                fraction = float(parts[2])
            except ValueError:
                raise ValueError(f"{PLANT_ENV}: cannot parse {item!r}; FRACTION is not a number; {expected}") from None
            plants.setdefault(parts[1], {})["slow"] = fraction
        elif parts[0] == "extra_nxn" and len(parts) == 2:
            plants.setdefault(parts[1], {})["extra_nxn"] = 1
        else:
            raise ValueError(f"{PLANT_ENV}: cannot parse {item!r}; {expected}")
    return plants


class _KeepExtraNxN(torch.autograd.Function):
    """Planted regression: pass ``out`` through and keep one extra n×n tensor for backward."""

    @staticmethod
    def forward(ctx, out, extra):
        ctx.save_for_backward(extra)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _burn(device: str, seconds: float) -> None:
    """Planted regression: spend ``seconds`` more on the device (or the host, on CPU)."""
    if device == "cuda":
        spin(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def release_memory() -> None:
    """Drop everything a cell left behind so the next one starts from an empty allocator."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class CellRunner:
    """Measures one cell; shared by its forward and backward benchmarks."""

    def __init__(self, cell: Cell, *, max_time_s: float, min_rounds: int, timing_check: bool, plants: dict):
        self.cell = cell
        self.variant = get_variant(cell.variant)
        self.max_time_s = max_time_s
        self.min_rounds = min_rounds
        self.timing_check = timing_check
        self.plant = plants.get(cell.variant, {})
        self.record = CellRecord(cell)
        self.launch_slack_s = 0.0

    # -- inputs and the call being measured

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fresh standard-normal q, k, v (requiring grad) and grad_out on the cell's device."""
        c = self.cell
        shape = (c.batch, c.heads, c.seq_len, c.head_dim)
        q, k, v, grad_out = (torch.randn(shape, device=c.device, dtype=c.torch_dtype) for _ in range(4))
        return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), grad_out

    def attention(self, q, k, v) -> torch.Tensor:
        out = self.variant.fn(q, k, v, causal=self.cell.causal)
        if self.plant.get("extra_nxn"):
            extra = torch.empty(q.shape[0], q.shape[1], q.shape[2], k.shape[2], device=q.device, dtype=q.dtype)
            out = _KeepExtraNxN.apply(out, extra)
        return out

    # -- memory

    def predicted(self):
        c = self.cell
        return predict(self.variant, batch=c.batch, heads=c.heads, seq_len=c.seq_len, head_dim=c.head_dim,
                       dtype=c.torch_dtype, causal=c.causal)

    def probe(self) -> CellRecord:
        """Census and memory figures of one forward and backward; raises CellOOM when it cannot fit."""
        rec = self.record
        prediction = self.predicted()
        rec.predicted_before_backward_bytes = prediction.before_backward_bytes
        rec.predicted_peak_bytes = prediction.peak_bytes
        on_cuda = self.cell.device == "cuda"
        release_memory()
        if on_cuda:
            rec.free_bytes = torch.cuda.mem_get_info()[0]
            if prediction.peak_bytes > OOM_SAFETY_FRACTION * rec.free_bytes:
                raise CellOOM(
                    "oom-predicted",
                    f"predicted peak {prediction.peak_bytes / 2**20:.0f} MiB > "
                    f"{OOM_SAFETY_FRACTION:.0%} of {rec.free_bytes / 2**20:.0f} MiB free",
                )
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
        census = census_of_attention(lambda *a, causal: self.attention(*a), q, k, v, causal=self.cell.causal)
        rec.saved_nxn, rec.saved_bytes = census.nxn_count, census.saved_bytes
        out = self.attention(q, k, v)
        if on_cuda:
            torch.cuda.synchronize()
            rec.mem_before_backward_bytes = torch.cuda.memory_allocated() - base
            grad_out = torch.randn_like(out)
            torch.cuda.reset_peak_memory_stats()
        torch.autograd.grad(out, (q, k, v), grad_out)
        if on_cuda:
            torch.cuda.synchronize()
            rec.peak_bytes = torch.cuda.max_memory_allocated() - base
        return rec

    def ensure_probed(self) -> None:
        """Probe once; an OOM cell is recorded as such and its benchmarks skip with the numbers."""
        rec = self.record
        if rec.status == "pending":
            try:
                self.probe()
                rec.status = "ok"
            except CellOOM as exc:
                rec.status, rec.message = exc.kind, str(exc)
            except torch.OutOfMemoryError as exc:
                rec.status, rec.message = "oom-measured", str(exc).splitlines()[0]
            release_memory()  # outside the except: the traceback no longer pins the tensors
        if rec.status != "ok":
            pytest.skip(f"{rec.status}: {rec.message}")

    # -- timing

    def _rounds(self, target, setup=None) -> int:
        """Warm up, then size the launch slack and the number of rounds from one call."""
        for _ in range(DEFAULT_WARMUP_CALLS):
            if setup is not None:
                setup()
            target()
        if setup is not None:
            setup()
        if self.cell.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        target()
        host_s = time.perf_counter() - start  # launches only, unless the call synchronizes
        if self.cell.device == "cuda":
            self.launch_slack_s = min(MAX_LAUNCH_SLACK_S, LAUNCH_SLACK_FACTOR * host_s + LAUNCH_SLACK_MARGIN_S)
            estimate = cuda_event_median_s(target, rounds=1, setup=setup, launch_slack_s=self.launch_slack_s)
        else:
            estimate = host_s
        return max(self.min_rounds, min(MAX_ROUNDS, math.ceil(self.max_time_s / max(estimate, 1e-9))))

    def _slowed(self, target, setup=None):
        fraction = self.plant.get("slow")
        if not fraction:
            return target
        if self.cell.device == "cuda":
            base = cuda_event_median_s(target, rounds=5, setup=setup, launch_slack_s=self.launch_slack_s)
        else:
            if setup is not None:
                setup()
            start = time.perf_counter()
            target()
            base = time.perf_counter() - start

        def slowed():
            target()
            _burn(self.cell.device, fraction * base)

        return slowed

    def forward_target(self):
        q, k, v, _ = self.inputs()
        return (lambda: self.attention(q, k, v)), None

    def backward_target(self):
        q, k, v, grad_out = self.inputs()
        state: dict = {}

        def setup():
            state["out"] = self.attention(q, k, v)

        def run():
            torch.autograd.grad(state.pop("out"), (q, k, v), grad_out)

        return run, setup

    def bench(self, benchmark, pass_name: str) -> None:
        """Time ``pass_name`` ('forward' or 'backward') with pytest-benchmark and fill its extra_info.

        An out-of-memory error here is recorded as ``oom-measured`` and the benchmark skips;
        the rest of the grid goes on.
        """
        if pass_name not in ("forward", "backward"):
            raise ValueError(f"pass_name must be 'forward' or 'backward', got {pass_name!r}")
        try:
            self._bench(benchmark, pass_name)
            return
        except torch.OutOfMemoryError as exc:
            self.record.status, self.record.message = "oom-measured", f"{pass_name}: {str(exc).splitlines()[0]}"
        release_memory()
        pytest.skip(f"{self.record.status}: {self.record.message}")

    def _bench(self, benchmark, pass_name: str) -> None:
        target, setup = self.forward_target() if pass_name == "forward" else self.backward_target()
        rounds = self._rounds(target, setup)
        target = self._slowed(target, setup)
        if self.cell.device == "cuda":
            set_launch_slack(self.launch_slack_s)
        if setup is None:
            benchmark.pedantic(target, rounds=rounds, warmup_rounds=0, iterations=1)
        else:
            benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=0, iterations=1)
        median_s = benchmark.stats.stats.median
        flops = self.cell.forward_flops() if pass_name == "forward" else self.cell.backward_flops()
        info = {
            **{k: v for k, v in self.cell.as_dict().items()},
            "pass": pass_name,
            "flops": flops,
            "tflops": flops / median_s / 1e12,
            **self.record.memory_info(),
        }
        timing = {"median_s": median_s, "rounds": rounds}
        if self.timing_check and self.cell.device == "cuda":
            info["event_median_s"] = timing["event_median_s"] = cuda_event_median_s(
                target, rounds=TIMING_CHECK_ROUNDS, setup=setup, launch_slack_s=self.launch_slack_s
            )
            info["launch_slack_s"] = self.launch_slack_s
        benchmark.extra_info.update(info)
        self.record.timings[pass_name] = timing


def plants_from_env() -> dict:
    return parse_plants(os.environ.get(PLANT_ENV))
