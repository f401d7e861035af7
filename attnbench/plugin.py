"""The attnbench pytest plugin: hooks only. Options live in ``options``, the grid in ``grid``, measuring in
``runner``, the saved-run format in ``record``, safe saving in ``storage``."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from . import options, pb_compat
from .grid import AXES, DEFAULT_CPU_PRESET, DEFAULT_CUDA_PRESET, Cell, cell_reason, expand
from .record import (
    PER_PROCESS_MACHINE_KEYS,
    TIMED_STATUSES,
    CellRecord,
    Run,
    RunError,
    ShardInfo,
    Timing,
    machine_section,
    parse,
    run_section,
)
from .runner import CellRunner
from .signals import stop_after_the_current_step
from .timing import DeviceClock

#: the exit status of a run asked to compare (--benchmark-compare) that had nothing to compare with: the status
#: of every attnbench tool that cannot judge (pytest itself uses 2 for an interrupted run, which also judged
#: nothing)
EXIT_CANNOT_JUDGE = 2
#: the exit status of a run that measured but could not write its record (disk full, a file size limit): the
#: status of every attnbench tool whose output could not be written
EXIT_OUTPUT_ERROR = 3


@dataclass
class AttnSession:
    """The run's grid, how it is timed, and what has been learned about each cell."""

    device: str
    preset: str
    cells: list[Cell]
    left_out: dict[str, str]
    timing: Timing
    timing_check: bool
    accuracy: bool
    accuracy_compare_fail: float
    memory_compare_fail: float | None
    plants: dict
    max_time_s: float = 0.0
    min_rounds: int = 1
    shard: ShardInfo | None = None  # --attn-shard: this run's shard; ``cells`` are then its cells only
    shard_cost_s: tuple[float, float] | None = None  # predicted seconds of this shard and of the whole grid
    clock: DeviceClock | None = None
    runners: dict[str, CellRunner] = field(default_factory=dict)
    records: dict[str, CellRecord] = field(default_factory=dict)  # every cell's record, in the order run
    planned: list[str] = field(default_factory=list)  # keys of the cells the selected benchmarks cover
    gpu_start: dict | None = None
    exit_status: int = 0
    stop_reason: str = ""
    saved_path: Path | None = None
    storage_lock: object = None
    terminated: bool = False  # SIGTERM arrived: the run stops as on Ctrl-C and is saved, marked incomplete
    sigterm: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # Ctrl-C/SIGTERM stop, until unconfigure
    pytest_session: pytest.Session | None = None
    compared_runs: list[Run] = field(default_factory=list)  # --benchmark-compare's runs, read by our reader
    compare_findings: list = field(default_factory=list)  # regressions against --benchmark-compare's run
    compare_unjudged: bool = False  # --benchmark-compare was asked for and no run could be compared with
    save_failures: list[str] = field(default_factory=list)  # what could not be written, and why

    def runner(self, cell: Cell) -> CellRunner:
        if cell.key not in self.runners:
            runner = self.runners[cell.key] = CellRunner(
                cell, max_time_s=self.max_time_s, min_rounds=self.min_rounds, timing=self.timing,
                timing_check=self.timing_check, accuracy=self.accuracy, clock=self.clock,
                plant=self.plants.get(cell.variant),
            )
            self.records[cell.key] = runner.record
        return self.runners[cell.key]

    def finish_records(self) -> None:
        """Cells planned but never reached get a pending record, and so does a cell the run stopped in before
        any of its passes finished; a run with any is incomplete. A cell whose variant cannot run it (named
        with --attn-variants, its benchmarks skipped with the reason) is recorded as skipped, with the reason."""
        from attention_impls import VARIANTS

        by_key = {c.key: c for c in self.cells}
        for key in self.planned:
            if key not in self.records:
                cell = by_key[key]
                reason = cell_reason(VARIANTS[cell.variant], cell)
                self.records[key] = (CellRecord(cell, "skipped", f"{cell.variant} unavailable: {reason}") if reason
                                     else CellRecord(cell))
        for rec in self.records.values():
            if rec.status in TIMED_STATUSES and not rec.passes:
                rec.status, rec.message = "pending", "not measured: the run stopped while measuring it"
        pending = [key for key, rec in self.records.items() if rec.status == "pending"]
        if pending and not self.stop_reason:
            self.stop_reason = f"{len(pending)} of {len(self.records)} cells never finished"

    @property
    def complete(self) -> bool:
        return not self.stop_reason


_SESSION = pytest.StashKey[AttnSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--attn-*`` options and their ini twins."""
    options.add_options(parser)


def _build_session(config: pytest.Config) -> AttnSession:
    opts = options.resolve(config)
    device = opts["device"] or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--attn-device cuda: no CUDA device is available (use auto or cpu)")
    preset = opts["preset"] or (DEFAULT_CUDA_PRESET if device == "cuda" else DEFAULT_CPU_PRESET)
    l2 = opts["l2"]
    if opts["flush-l2"]:
        if l2 == "warm":
            raise pytest.UsageError("--attn-flush-l2 and --attn-l2 warm contradict each other: give one")
        l2 = "flush"
    if device == "cpu" and l2 == "flush":
        raise pytest.UsageError("--attn-l2 flush (--attn-flush-l2) flushes a GPU's L2 cache and needs CUDA")
    timing = Timing(opts["timing"] or options.DEFAULT_TIMING, device == "cuda" and l2 != "warm")
    if device == "cpu" and timing.mode == "cudagraph":
        raise pytest.UsageError("--attn-timing cudagraph needs CUDA (on CPU use device or wall)")
    try:
        cells, left_out = expand(
            device, preset, variants=opts["variants"], seq_lens=opts["seq-lens"], head_dims=opts["head-dims"],
            batch=opts["batch"], heads=opts["heads"], dtypes=opts["dtypes"], causal=opts["causal"],
            heads_kv=opts["heads-kv"], masks=opts["masks"],
        )
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    if any(cell.variant == "triton_flash" for cell in cells):
        from attention_impls import triton_flash

        problem = triton_flash.environment_problem()
        if problem is not None:  # refused before the grid, not once per cell after it
            raise pytest.UsageError(f"{problem} (triton_flash reads it)")
    return AttnSession(
        device=device, preset=preset, cells=cells, left_out=left_out, timing=timing,
        timing_check=opts["timing-check"], memory_compare_fail=opts["memory-compare-fail"], plants=_plants(),
        accuracy=(opts["accuracy"] or options.DEFAULT_ACCURACY) == "on",
        accuracy_compare_fail=opts["accuracy-compare-fail"] or options.DEFAULT_ACCURACY_COMPARE_FACTOR,
        clock=DeviceClock() if device == "cuda" and timing.mode != "wall" else None,
    )


def _plants() -> dict:
    """Planted regressions from ATTNBENCH_PLANT; the plants module is imported only when it is set."""
    import os

    text = os.environ.get("ATTNBENCH_PLANT")
    if not text:
        return {}
    from attention_impls import VARIANTS

    from .plants import parse_plants

    try:
        return parse_plants(text, variants=list(VARIANTS))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _round_options(config: pytest.Config) -> tuple[float, int]:
    """pytest-benchmark's --benchmark-max-time and --benchmark-min-rounds, checked."""
    max_time = float(config.getoption("benchmark_max_time", 1.0))
    min_rounds = int(config.getoption("benchmark_min_rounds", 5))
    if not math.isfinite(max_time) or max_time <= 0:
        raise pytest.UsageError(f"--benchmark-max-time {max_time}: expected a positive, finite number of seconds")
    return max_time, min_rounds


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Resolve the grid from options, ini and preset; fail early with a usage error."""
    session = config.stash[_SESSION] = _build_session(config)
    session.max_time_s, session.min_rounds = _round_options(config)
    resolved = options.resolve(config)
    spec = resolved["shard"]
    if spec is not None:
        _take_shard(session, spec, resolved["shard-by"] or "cell")
    elif config.getoption(options.dest("shard-by")) is not None:  # an ini default alone is fine without shards
        raise pytest.UsageError("--attn-shard-by says what --attn-shard splits: give --attn-shard I/N too")
    if session.memory_compare_fail is not None and not config.getoption("benchmark_compare", None):
        raise pytest.UsageError("--attn-memory-compare-fail requires --benchmark-compare (the run to compare with)")


def _take_shard(s: AttnSession, spec, by: str) -> None:
    """Keep only this shard's cells of the grid (attnbench.shard); the whole grid's keys go into the record."""
    from .machine import device_memory_bytes
    from .shard import partition, partition_memory_bytes, shard_units

    units = len(shard_units(s.cells, by))
    if spec.count > units:
        what = "cells" if by == "cell" else "shapes"
        raise pytest.UsageError(f"--attn-shard {spec}: the grid has {units} {what}, so at most {units} shards can "
                                "each get one")
    memory = partition_memory_bytes(device_memory_bytes(s.device))
    split = partition(s.cells, spec.count, memory_bytes=memory, max_time_s=s.max_time_s, min_rounds=s.min_rounds,
                      by=by)
    s.shard = ShardInfo(spec.index, spec.count, tuple(c.key for c in s.cells), memory)
    s.shard_cost_s = (split.costs_s[spec.index - 1], split.total_s)
    s.cells = split.cells_of(spec)


def attn_session(config: pytest.Config) -> AttnSession:
    """The run's AttnSession (for tools and tests)."""
    return config.stash[_SESSION]


def pytest_report_header(config: pytest.Config) -> list[str]:
    """One line for the grid, one per variant left out and why."""
    s = attn_session(config)
    lines = [f"attnbench: device={s.device} preset={s.preset} cells={len(s.cells)} timing={s.timing.describe()} "
             f"accuracy={'on' if s.accuracy else 'off'} max_time={s.max_time_s:g}s min_rounds={s.min_rounds}"]
    if s.shard is not None:
        mine, total = s.shard_cost_s
        lines.append(f"attnbench: shard {s.shard.label}: {len(s.cells)} of {len(s.shard.grid_cells)} cells, "
                     f"predicted {mine:.0f} s of the grid's {total:.0f} s")
    lines += [f"attnbench: left out {name}: {reason}" for name, reason in s.left_out.items()]
    if s.plants:
        lines.append(f"attnbench: PLANTED REGRESSIONS ACTIVE: { {k: p.as_dict() for k, p in s.plants.items()} }")
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parameterize every test that asks for ``attn_cell`` over the grid, one plain parameter per axis."""
    if "attn_cell" not in metafunc.fixturenames:
        return
    from attention_impls import VARIANTS

    s = attn_session(metafunc.config)
    params = []
    for cell in s.cells:
        reason = cell_reason(VARIANTS[cell.variant], cell)
        marks = [pytest.mark.skip(reason=f"{cell.variant} unavailable: {reason}")] if reason else []
        params.append(pytest.param(*cell.params().values(), id=cell.key, marks=marks))
    metafunc.parametrize(AXES, params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every benchmark its variant-comparison group, and the run's device clock where it has one."""
    s = attn_session(config)
    for item in items:
        cell = _cell_of(item, s.device)
        if cell is None:
            continue
        marker = {"group": cell.group}
        if s.clock is not None:
            marker["timer"] = s.clock
        item.add_marker(pytest.mark.benchmark(**marker))


def _cell_of(item: pytest.Item, device: str) -> Cell | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "attn_cell" not in getattr(item, "fixturenames", ()) or not all(a in params for a in AXES):
        return None
    return Cell(device=device, **{a: params[a] for a in AXES})


def pytest_collection_finish(session: pytest.Session) -> None:
    """Remember which cells the selected benchmarks cover: a run that stops before them is incomplete."""
    s = attn_session(session.config)
    s.planned = list(dict.fromkeys(c.key for c in (_cell_of(i, s.device) for i in session.items) if c))
    unsupported = pb_compat.unsupported_reason()
    if s.planned and unsupported and not pb_compat.benchmarks_disabled(session.config):
        raise pytest.UsageError(unsupported)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Take the storage's lock when saving into it, save atomically, take SIGTERM as Ctrl-C (what was measured is
    saved, marked incomplete), and sample the GPU before anything runs."""
    config = session.config
    s = attn_session(config)
    s.pytest_session = session
    _guard_saving(config, s)
    s.sigterm.enter_context(stop_after_the_current_step(lambda signum, reason: _request_stop(s, signum, reason)))
    if s.device == "cuda":
        from .machine import gpu_sample

        s.gpu_start = gpu_sample()


def _request_stop(s: AttnSession, signum: int, reason: str) -> None:
    """Ctrl-C or SIGTERM: pytest stops after the running benchmark (``session.shouldstop``), exits 2 and saves
    the run apart, marked incomplete; the signal never lands inside a benchmark's record or the save."""
    import signal

    if signum == signal.SIGTERM:
        s.terminated = True
    message = f"attnbench: {reason}: stopping after the running benchmark, saving what was measured " \
              "(again to stop at once)"
    if s.pytest_session is not None:
        s.pytest_session.shouldstop = reason
        _warn(s.pytest_session.config, message)
    else:
        import sys

        print(message, file=sys.stderr)


def _guard_saving(config: pytest.Config, s: AttnSession) -> None:
    """One run at a time per storage; runs written atomically, incomplete ones set apart (``storage``), through
    the one adapter that knows pytest-benchmark's saving (``pb_compat``)."""
    from .record import write_json_atomically
    from .storage import StorageBusy, StorageLock, save_numbered

    directory = pb_compat.file_storage_path(config)
    if directory is not None:
        try:
            s.storage_lock = StorageLock(directory)
        except StorageBusy as exc:
            raise pytest.UsageError(str(exc)) from None
        except OSError as exc:  # read-only, a file where the folder should be, no permission: before measuring
            raise pytest.UsageError(f"--benchmark-storage {directory}: cannot save runs there "
                                    f"({exc.strerror or exc}); pass a folder this user can write") from None

    def write_json(path: Path, output_json: dict) -> None:
        try:
            write_json_atomically(path, output_json)
        except OSError as exc:
            _save_failed(config, s, f"--benchmark-json {path}", exc)

    def save(run_directory: Path, name: str, output_json: dict) -> Path | None:
        complete = output_json.get("attnbench", {}).get("complete", True)
        try:
            s.saved_path = save_numbered(run_directory, name, output_json, complete=complete)
        except OSError as exc:
            _save_failed(config, s, f"the run into {run_directory}", exc)
        return s.saved_path

    pb_compat.install_saving(config, write_json=write_json, save_run=save, warn=lambda message: _warn(config, message))


def _save_failed(config: pytest.Config, s: AttnSession, what: str, exc: OSError) -> None:
    """A save that failed (disk full, a file size limit, permissions): said in one line, exit 3, and the other
    saves of the run still tried. Writes are atomic, so nothing half-written is left and an earlier file of the
    same name is as it was."""
    failure = f"could not write {what}: {exc.strerror or exc}"
    s.save_failures.append(failure)
    _warn(config, f"attnbench: {failure}; nothing was written there (an earlier file of that name is unchanged). "
                  f"Free space, or save elsewhere, and run again (exit {EXIT_OUTPUT_ERROR})")
    if s.pytest_session is not None:
        s.pytest_session.exitstatus = EXIT_OUTPUT_ERROR


def _warn(config: pytest.Config, message: str) -> None:
    """One plain line on the terminal (standard error when there is no terminal reporter)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(message, yellow=True, bold=True)
    else:
        import sys

        print(message, file=sys.stderr)


@pytest.fixture
def attn_cell(request, variant, seq_len, head_dim, batch, heads, heads_kv, dtype, causal, mask) -> Cell:
    """The grid cell of this benchmark (its axes are the benchmark's parameters)."""
    return Cell(variant=variant, seq_len=seq_len, head_dim=head_dim, batch=batch, heads=heads, heads_kv=heads_kv,
                dtype=dtype, causal=causal, mask=mask, device=attn_session(request.config).device)


@pytest.fixture
def attn_runner(request, attn_cell: Cell) -> CellRunner:
    """The cell's runner, its memory probe done (once per cell); OOM cells are recorded and skipped."""
    runner = attn_session(request.config).runner(attn_cell)
    runner.ensure_probed()
    return runner


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Add versions, the device measured, its identity and its state at the start and end of the run."""
    from .machine import environment, flags, gpu_identity, gpu_sample

    s = attn_session(config)
    gpu_uuid, visible = gpu_identity(s.device)
    if s.device == "cuda":
        start = s.gpu_start or gpu_sample()
        end = gpu_sample()
        machine_info["attnbench"] = machine_section(environment("cuda"), gpu_uuid=gpu_uuid,
                                                    cuda_visible_devices=visible, gpu_start=start, gpu_end=end,
                                                    flags=flags(start, end))
    else:
        machine_info["attnbench"] = machine_section(environment("cpu"))


@contextlib.contextmanager
def gpu_samples_set_aside(*machine_infos: dict):
    """Take the GPU samples and the card's identity (record.PER_PROCESS_MACHINE_KEYS) out of ``machine_infos``
    for the duration, then put them back."""
    set_aside = []
    for info in machine_infos:
        ours = (info or {}).get("attnbench")
        if isinstance(ours, dict):
            set_aside.append((ours, {k: ours.pop(k) for k in PER_PROCESS_MACHINE_KEYS if k in ours}))
    try:
        yield
    finally:
        for ours, samples in set_aside:
            ours.update(samples)


@pytest.hookimpl(hookwrapper=True)
def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    """Refuse to compare with a run that cannot be trusted; judge the environment, not the GPU's state.

    pytest-benchmark warns when the compared run's machine_info differs in any way (and crashes while
    warning when the storage lies outside the working directory). The GPU samples differ in every
    run, so the built-in check sees them only with the samples set aside; versions and the GPU's
    identity still count.
    """
    try:
        compared = parse(compared_benchmark, role="the --benchmark-compare run")
    except RunError as exc:
        raise pytest.UsageError(str(exc)) from None
    timing = attn_session(config).timing
    if not compared.complete:
        raise pytest.UsageError(f"--benchmark-compare: the run to compare with is incomplete ({compared.stop_reason});"
                                " compare with a complete run")
    if compared.timing != timing:
        raise pytest.UsageError(f"--benchmark-compare: that run was timed with {compared.timing.describe()}, this run "
                                f"with {timing.describe()}; their times do not compare")
    attn_session(config).compared_runs.append(compared)
    with gpu_samples_set_aside(machine_info, compared_benchmark.get("machine_info")):
        yield


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    """Save the run's facts and every cell's record, OOM and unfinished cells included, under ``attnbench``."""
    s = attn_session(config)
    s.finish_records()
    # a benchmark stopped mid-rounds (Ctrl-C, SIGTERM) has a few rounds and none of its pass's facts: not saved
    finished = {p.name for rec in s.records.values() for p in rec.passes.values()}
    output_json["benchmarks"] = [b for b in output_json["benchmarks"]
                                 if b.get("fullname") in finished or not _suite_benchmark(b)]
    output_json["attnbench"] = run_section(
        preset=s.preset, timing=s.timing, plants={k: p.as_dict() for k, p in s.plants.items()},
        complete=s.complete, stop_reason=s.stop_reason, cells=list(s.records.values()), shard=s.shard,
    )


def _suite_benchmark(entry: dict) -> bool:
    """Whether a saved benchmark is one of the grid's (it has the grid's parameters)."""
    return isinstance(entry.get("params"), dict) and set(AXES) <= set(entry["params"])


_STOPS = {
    pytest.ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    pytest.ExitCode.INTERNAL_ERROR: "stopped by an internal error",
}


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    """Note how the run ended before pytest-benchmark saves it (its wrapper saves first); apply
    --attn-memory-compare-fail."""
    s = attn_session(session.config)
    s.exit_status = exitstatus
    if s.terminated:
        s.stop_reason = "terminated (SIGTERM)"
    elif exitstatus in _STOPS:
        s.stop_reason = _STOPS[exitstatus]
    elif session.shouldstop or session.shouldfail:
        s.stop_reason = f"stopped early: {session.shouldstop or session.shouldfail}"
    if (session.config.getoption("benchmark_compare", None) and not s.compared_runs and s.records
            and not pb_compat.benchmarks_disabled(session.config)):
        # pytest-benchmark only warns when the run to compare with cannot be read (truncated, empty): a gate
        # that compared nothing must not pass
        s.compare_unjudged = True
        if session.exitstatus == 0:
            session.exitstatus = EXIT_CANNOT_JUDGE
    compare = s.memory_compare_fail is not None or (s.accuracy and s.compared_runs)
    if compare:
        from .compare import compare_runs

        current = _current_run(s)
        for baseline in s.compared_runs:
            comparison = compare_runs(baseline, current, time_pct=None, memory_pct=s.memory_compare_fail,
                                      accuracy_factor=s.accuracy_compare_fail if s.accuracy else None)
            s.compare_findings += [f for f in comparison.regressions if f.metric != "status" or f.current != "wrong"]
    wrong = [r for r in s.records.values() if r.status == "wrong"]
    if (s.compare_findings or wrong) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    yield


def _current_run(s: AttnSession) -> Run:
    """This run's cells as a :class:`Run`, for comparing before anything is saved."""
    return Run(path=None, schema_version=0, preset=s.preset, device=s.device, timing=s.timing, plants={},
               complete=True, stop_reason="", env={"device": s.device}, machine={},
               cells={k: r for k, r in s.records.items() if r.status != "pending"}, commit={}, datetime="",
               cpu_brand="")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config):
    """After pytest-benchmark's tables: OOM and unmeasured cells, an incomplete run, untrustworthy-GPU flags,
    memory regressions, and --benchmark-compare-fail's verdict as a line and an exit status (pytest-benchmark
    raises it through the terminal summary, which pytest would print as a traceback)."""
    regressed, result = False, None
    try:
        result = yield
    except pb_compat.PerformanceRegression:
        regressed = True
    _summary(terminalreporter, config)
    if regressed:
        terminalreporter.write_line("FAIL: performance has regressed (--benchmark-compare-fail; listed above)",
                                    red=True, bold=True)
        session = attn_session(config).pytest_session
        if session is not None:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    return result


def _summary(terminalreporter, config: pytest.Config) -> None:
    s = attn_session(config)
    records = list(s.records.values())
    if not records and not s.planned:
        return
    tr = terminalreporter
    if s.compare_unjudged:
        tr.write_line(f"CANNOT JUDGE (exit {EXIT_CANNOT_JUDGE}): --benchmark-compare had no run to compare with: "
                      "pytest-benchmark could not read the stored run (see its warning above), so nothing was "
                      "compared; save a complete run first (--benchmark-autosave), or name one", red=True, bold=True)
    tr.section("attnbench")
    not_ok = [r for r in records if r.status not in ("ok", "wrong", "pending")]
    tr.write_line(f"{sum(r.status in ('ok', 'wrong') for r in records)} cells measured, "
                  f"{sum(r.is_oom for r in records)} OOM, timing {s.timing.describe()}")
    for r in not_ok:
        tr.write_line(f"  {r.status}: {r.key}: {r.message}")
    if not s.complete:
        where = f"; saved apart as {s.saved_path}" if s.saved_path else ""
        tr.write_line(f"INCOMPLETE RUN: {s.stop_reason}{where}. It is marked incomplete: the gate, the report and "
                      "--benchmark-compare will not take it for a whole run.", red=True, bold=True)
    for failure in s.save_failures:
        tr.write_line(f"NOT SAVED (exit {EXIT_OUTPUT_ERROR}): {failure}", red=True, bold=True)
    if s.device == "cuda" and s.gpu_start is not None:
        from .machine import flags, gpu_sample

        for flag in flags(s.gpu_start, gpu_sample()):
            tr.write_line(f"WARNING: {flag}; timings from this run may not be trustworthy", yellow=True, bold=True)
    wrong = [r for r in records if r.status == "wrong"]
    if wrong:
        tr.write_line(f"FAIL: {len(wrong)} cell(s) computed wrong results (past the accuracy bound; "
                      "--attn-accuracy off skips the check):", red=True, bold=True)
        for r in wrong:
            tr.write_line(f"  {r.key}: {r.message}", red=True)
    if s.compare_findings:
        memory_rule = "off" if s.memory_compare_fail is None else f"{s.memory_compare_fail:g}%"
        accuracy_rule = f"{s.accuracy_compare_fail:g}" if s.accuracy else "off"
        tr.write_line(f"Regressed against --benchmark-compare's run (memory {memory_rule}, "
                      f"accuracy factor {accuracy_rule}):", red=True, bold=True)
        for f in s.compare_findings:
            tr.write_line(f"  {f.describe()}", red=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Release the storage's lock; give SIGTERM back its default action."""
    s = config.stash.get(_SESSION, None)
    if s is not None:
        s.sigterm.close()
    if s is not None and s.storage_lock is not None:
        s.storage_lock.release()
