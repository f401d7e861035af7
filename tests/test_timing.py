"""The device clock, the timing modes and the independent CUDA-event measurement.

On CPU the clock's bookkeeping is checked against stand-in events (which call starts a round, where the spin
goes, what a difference means); on a GPU the real thing, including the suite's timing-fidelity check.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnbench import timing
from conftest import requires_cuda

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the suite's median must be within this of an independent CUDA-event median ...
TIMING_FIDELITY = 0.05
#: ... for benchmarks at least this long (shorter ones are dominated by a few microseconds of jitter).
TIMING_FIDELITY_MIN_S = 1e-4


class FakeEvent:
    """Stands in for torch.cuda.Event: records into a shared log; elapsed times come from a script."""

    log: list = []
    elapsed_ms: list = []

    def __init__(self, enable_timing: bool = False):
        assert enable_timing, "timing events must be created with enable_timing=True"

    def record(self):
        FakeEvent.log.append(("record", self))

    def synchronize(self):
        FakeEvent.log.append(("synchronize", self))

    def elapsed_time(self, end):
        FakeEvent.log.append(("elapsed", self, end))
        return FakeEvent.elapsed_ms.pop(0)


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda.Event, synchronize and the spin replaced by stand-ins that log what they were asked."""
    FakeEvent.log, FakeEvent.elapsed_ms = [], []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: FakeEvent.log.append(("device_sync",)))
    monkeypatch.setattr(timing, "spin", lambda seconds: FakeEvent.log.append(("spin", seconds)))
    return FakeEvent


@pytest.fixture
def clock() -> timing.DeviceClock:
    return timing.DeviceClock()


# -- CPU: the clock's bookkeeping


def test_clock_alternates_start_and_end_and_spins_only_before_a_start(fake_cuda, clock):
    clock.set_launch_slack(0.002)
    start = clock()
    end = clock()
    assert fake_cuda.log == [("spin", 0.002), ("record", start.event), ("record", end.event)], (
        f"a round's start should queue the launch-slack spin, then record; its end only record: {fake_cuda.log}"
    )
    fake_cuda.elapsed_ms = [1.5]
    assert end - start == pytest.approx(1.5e-3), "the difference of two readings is the elapsed time in seconds"
    assert fake_cuda.log[-2:] == [("synchronize", end.event), ("elapsed", start.event, end.event)], (
        "the difference should wait for the end event, then measure start -> end"
    )
    fake_cuda.log.clear()
    clock()  # the difference closed the round: the next reading starts a new one
    assert fake_cuda.log[0] == ("spin", 0.002), fake_cuda.log


def test_set_launch_slack_resets_a_pending_start_and_clamps_at_zero(fake_cuda, clock):
    clock()  # a start whose round never ended
    clock.set_launch_slack(-1.0)
    fake_cuda.log.clear()
    clock()
    assert fake_cuda.log[0] == ("spin", 0.0), (
        f"a new start after set_launch_slack, with no negative spin: {fake_cuda.log}"
    )


def test_spin_converts_seconds_to_cycles_and_skips_nonpositive(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "_sleep", calls.append)
    monkeypatch.setattr(timing, "_spin_cycles_per_s", lambda: 1.5e9)
    timing.spin(0.0)
    timing.spin(-0.1)
    assert calls == [], "no spin is queued for zero or negative seconds"
    timing.spin(0.002)
    timing.spin(1e-12)
    assert calls == [3_000_000, 1], f"2 ms at 1.5 GHz is 3e6 cycles, and a spin is at least one cycle: {calls}"


def test_cuda_event_median_s_times_only_the_target(fake_cuda):
    rounds = 5
    fake_cuda.elapsed_ms = [4.0, 1.0, 3.0, 100.0, 2.0]
    calls = []

    def setup():
        calls.append("setup")
        fake_cuda.log.append(("setup",))

    def target():
        calls.append("target")
        fake_cuda.log.append(("target",))

    median = timing.cuda_event_median_s(target, rounds=rounds, setup=setup, launch_slack_s=0.001)
    assert median == pytest.approx(statistics.median([4.0, 1.0, 3.0, 100.0, 2.0]) / 1e3)
    assert calls == ["setup", "target"] * rounds
    first_round = [entry[0] for entry in fake_cuda.log[:7]]
    assert first_round == ["setup", "device_sync", "spin", "record", "target", "record", "synchronize"], (
        f"setup and the spin must come before the start event, the target between the events: {first_round}"
    )


# -- GPU


@requires_cuda
@pytest.mark.gpu
def test_suite_medians_agree_with_independent_cuda_events(tmp_path):
    """THE timing-fidelity test: what pytest-benchmark reports is what plain CUDA events measure."""
    json_path = tmp_path / "timing_check.json"
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "-q", "--attn-timing-check",
           "--attn-variants", "naive,torch_softmax,sdpa_efficient", "--attn-seq-lens", "1024,4096",
           "--attn-head-dims", "64", f"--benchmark-json={json_path}"]
    env = {k: v for k, v in os.environ.items() if k != "ATTNBENCH_PLANT"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and json_path.exists(), f"the suite failed (exit {proc.returncode}):\n{output[-3000:]}"
    benchmarks = json.loads(json_path.read_text())["benchmarks"]
    assert len(benchmarks) == 3 * 2 * 2, f"expected 3 variants x 2 seq_lens x 2 passes:\n{output[-3000:]}"
    checked, offenders = 0, []
    for b in benchmarks:
        info = b["extra_info"]
        assert info.get("event_median_s"), f"{b['name']}: --attn-timing-check saved no event_median_s"
        median = b["stats"]["median"]
        if median < TIMING_FIDELITY_MIN_S:
            continue
        checked += 1
        ratio = median / info["event_median_s"]
        if abs(ratio - 1) > TIMING_FIDELITY:
            event_ms = info["event_median_s"] * 1e3
            offenders.append(f"{b['name']}: suite {median * 1e3:.4g} ms vs events {event_ms:.4g} ms ({ratio - 1:+.1%})")
    assert checked, "no benchmark was long enough to check"
    assert not offenders, (
        f"{len(offenders)} of {checked} suite medians differ from the CUDA-event median by more than "
        f"{TIMING_FIDELITY:.0%}:\n" + "\n".join(offenders)
    )


@requires_cuda
@pytest.mark.gpu
def test_clock_readings_measure_a_known_sleep():
    cycles_per_ms = timing._spin_cycles_per_s() / 1e3
    torch.cuda.synchronize()
    clock = timing.DeviceClock()

    def measured(ms: float) -> float:
        start = clock()
        torch.cuda._sleep(int(ms * cycles_per_ms))
        end = clock()
        return end - start

    measured(1.0)  # warm-up
    short, long = measured(1.0), measured(4.0)
    assert 0 < short < long, (
        f"a 4 ms sleep should read longer than a 1 ms one: {short * 1e3:.3f} vs {long * 1e3:.3f} ms"
    )
    assert 2.0 < long / short < 8.0, (
        f"four times the cycles should read about four times as long: {long / short:.2f}"
    )
    assert 0.5e-3 < short < 2e-3, f"the 1 ms sleep read {short * 1e3:.3f} ms"


@requires_cuda
@pytest.mark.gpu
def test_cuda_event_median_matches_a_plain_event_measurement():
    a = torch.randn(4096, 4096, device="cuda")
    b = torch.randn(4096, 4096, device="cuda")

    def target():
        return a @ b

    for _ in range(3):
        target()
    times = []
    for _ in range(30):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        target()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    plain = statistics.median(times)
    measured = timing.cuda_event_median_s(target, rounds=30)
    assert abs(measured / plain - 1) <= 0.2, (
        f"cuda_event_median_s {measured * 1e3:.3f} ms vs plain events {plain * 1e3:.3f} ms: more than 20% apart"
    )


# -- the timing modes through the suite


def test_wall_mode_runs_and_is_recorded_on_cpu(tmp_path):
    from suite_runs import run_suite

    from attnbench import record

    run = run_suite(tmp_path / "wall.json", "--attn-timing", "wall")
    assert run.returncode == 0, run.output[-3000:]
    saved = record.load(run.json_path)
    assert saved.timing == record.Timing("wall", False) and saved.complete
    assert all(rec.status == "ok" and len(rec.passes) == 2 for rec in saved.cells.values())
    assert run.data()["benchmarks"][0]["options"]["timer"] == "perf_counter", "wall mode uses the host clock"


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize(("mode", "flush"), [("device", False), ("wall", False), ("cudagraph", False),
                                             ("device", True)])  # flush: the CUDA default
def test_every_timing_mode_runs_a_cuda_grid_and_records_itself(tmp_path, mode, flush):
    from attnbench import record

    json_path = tmp_path / f"{mode}.json"
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "-q", "--attn-timing", mode,
           "--attn-variants", "naive,tiled,sdpa_efficient", "--attn-seq-lens", "256", "--attn-head-dims", "64",
           "--benchmark-max-time", "0.02", f"--benchmark-json={json_path}", *([] if flush else ["--attn-l2", "warm"])]
    env = {k: v for k, v in os.environ.items() if k != "ATTNBENCH_PLANT"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"--attn-timing {mode} failed:\n{output[-3000:]}"
    run = record.load(json_path)
    assert run.timing == record.Timing(mode, flush) and run.complete
    for key, rec in run.cells.items():
        assert rec.status in ("ok", "capture-failed"), f"{key}: {rec.status} {rec.message}"
        if rec.status == "capture-failed":
            assert mode == "cudagraph" and "capture failed" in rec.message, rec.message
    assert run.cells["sdpa_efficient-s256-d64-b8-h1-fp32-full"].status == "ok", "SDPA captures in a CUDA graph"
    timer = json.loads(json_path.read_text())["benchmarks"][0]["options"]["timer"]
    assert timer == ("perf_counter" if mode == "wall" else "DeviceClock"), timer


@requires_cuda
@pytest.mark.gpu
def test_a_failed_capture_does_not_poison_the_cells_after_it():
    """A capture that fails (here: a host sync inside the captured call) leaves the default CUDA generator
    registered with the dead graph; the next cell must still draw its inputs and capture."""
    from attnbench.grid import Cell
    from attnbench.record import Timing
    from attnbench.runner import CellRunner, _CaptureFailed

    def cell(variant: str) -> Cell:
        return Cell(variant=variant, seq_len=256, head_dim=64, batch=2, heads=2, dtype="fp32", causal=False,
                    device="cuda")

    broken = CellRunner(cell("tiled"), max_time_s=0.01, min_rounds=1, timing=Timing("cudagraph", False))
    syncing = broken._attention
    broken._attention = lambda q, k, v: syncing(q, k, v) * (q.sum().item() == q.sum().item())
    with pytest.raises(_CaptureFailed, match="capture failed"):
        broken.targets("forward")
    after = CellRunner(cell("sdpa_efficient"), max_time_s=0.01, min_rounds=1, timing=Timing("cudagraph", False))
    target, _ = after.targets("forward")
    out = target()
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), "the cell after a failed capture replays its graph"


@requires_cuda
@pytest.mark.gpu
def test_cudagraph_passes_give_their_graph_memory_back():
    """Cell after cell in cudagraph mode, the memory in use returns to where it was: no graph pool is kept."""
    from attnbench.grid import Cell
    from attnbench.record import Timing
    from attnbench.runner import CellRunner, release_memory

    def graphed_cell(seq_len: int) -> None:
        cell = Cell(variant="tiled", seq_len=seq_len, head_dim=64, batch=4, heads=2, dtype="fp32", causal=False,
                    device="cuda")
        target, _ = CellRunner(cell, max_time_s=0.01, min_rounds=1, timing=Timing("cudagraph", False)).targets(
            "forward")
        target()

    def release_all() -> None:
        # cuBLAS keeps a workspace per capture's side stream (runner.release_memory says why they stay): they
        # are set aside here, so what is left is the graphs' own memory
        release_memory()
        torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()

    graphed_cell(256)
    release_all()
    baseline = torch.cuda.memory_allocated()
    for seq_len in (1024, 2048, 4096):
        graphed_cell(seq_len)
    release_all()
    left = torch.cuda.memory_allocated() - baseline
    assert left == 0, f"{left / 2**20:.1f} MiB still held after three graphed cells were dropped"


def test_the_l2_flush_comes_after_the_untimed_setup():
    """The backward's setup runs the forward, which warms L2 with q, k, v and the output: the flush must come
    after it, right before the timed call, as do_bench flushes right before each call it times."""
    from attnbench.timing import L2Flush

    calls = []

    class RecordingFlush(L2Flush):
        def __init__(self):  # no GPU buffer: only the order is under test
            pass

        def __call__(self):
            calls.append("flush")

    RecordingFlush().after(lambda: calls.append("setup"))()
    RecordingFlush().after(None)()
    assert calls == ["setup", "flush", "flush"]
