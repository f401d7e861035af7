"""The attnbench pytest plugin: ``--attn-*`` options, the grid, fixtures, machine info, JSON and memory gate."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest
import torch

from .grid import (
    DEFAULT_CPU_PRESET,
    DEFAULT_CUDA_PRESET,
    DTYPES,
    PRESETS,
    Cell,
    parse_causal,
    parse_device,
    parse_dtypes,
    parse_percent,
    parse_positive_int,
    parse_positive_ints,
    parse_preset,
    parse_variants,
)
from .runner import (
    DEFAULT_MAX_TIME_S,
    DEFAULT_MIN_ROUNDS,
    CellRunner,
    plants_from_env,
)

JSON_SCHEMA_VERSION = 1


def _parse_seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (e.g. 0.3)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


# (name, parser, metavar, help). Each is a CLI option --attn-NAME and an ini key attn_NAME.
_OPTIONS = [
    ("preset", parse_preset, "NAME",
     f"named grid: {', '.join(PRESETS)} (default: {DEFAULT_CUDA_PRESET} on CUDA, {DEFAULT_CPU_PRESET} on CPU)"),
    ("device", parse_device, "DEVICE", "where to run: auto, cuda or cpu (default: auto = cuda when available)"),
    ("variants", parse_variants, "NAMES",
     "comma-separated variants, or all (default: every variant available on the device and dtype)"),
    ("seq-lens", parse_positive_ints, "N,N", "sequence lengths (default: the preset's)"),
    ("head-dims", parse_positive_ints, "D,D", "head dimensions (default: the preset's)"),
    ("batch", parse_positive_int, "B", "batch size (default: the preset's)"),
    ("heads", parse_positive_int, "H", "number of heads (default: the preset's)"),
    ("dtypes", parse_dtypes, "DT,DT", f"dtypes among {', '.join(DTYPES)} (default: the preset's)"),
    ("causal", parse_causal, "BOOL,BOOL", "false, true or false,true (default: the preset's)"),
    ("max-time", _parse_seconds, "SECONDS",
     f"time budget per benchmark; rounds = budget / one call's time, clamped (default: {DEFAULT_MAX_TIME_S})"),
    ("min-rounds", parse_positive_int, "N", f"fewest timed rounds per benchmark (default: {DEFAULT_MIN_ROUNDS})"),
    ("memory-compare-fail", parse_percent, "PCT",
     "fail when a cell's saved bytes, memory before backward or peak grows by more than PCT%% against "
     "--benchmark-compare's run (default: off)"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--attn-*`` options and their ini twins."""
    group = parser.getgroup("attnbench", "attnbench: attention benchmark grid")
    for name, parse, metavar, help_text in _OPTIONS:
        dest = "attn_" + name.replace("-", "_")
        group.addoption(f"--attn-{name}", dest=dest, type=parse, metavar=metavar, default=None, help=help_text)
        parser.addini(dest, help=help_text.replace("%%", "%"), type="string", default="")
    group.addoption(
        "--attn-timing-check",
        dest="attn_timing_check",
        action="store_true",
        default=False,
        help="also time every CUDA benchmark with plain CUDA events and save it as extra_info.event_median_s",
    )


def _resolve(config: pytest.Config, name: str, parse):
    dest = "attn_" + name.replace("-", "_")
    value = config.getoption(dest)
    if value is not None:
        return value
    raw = config.getini(dest)
    if not raw:
        return None
    try:
        return parse(raw)
    except argparse.ArgumentTypeError as exc:
        raise pytest.UsageError(f"ini option {dest} = {raw!r}: {exc}") from None


@dataclass
class AttnSession:
    """The run's grid and what has been learned about each cell."""

    device: str
    preset: str
    cells: list[Cell]
    left_out: dict[str, str]
    explicit_variants: bool
    max_time_s: float
    min_rounds: int
    timing_check: bool
    memory_compare_fail: float | None
    plants: dict
    runners: dict[str, CellRunner] = field(default_factory=dict)
    gpu_start: dict | None = None
    memory_findings: list = field(default_factory=list)

    def runner(self, cell: Cell) -> CellRunner:
        if cell.key not in self.runners:
            self.runners[cell.key] = CellRunner(
                cell, max_time_s=self.max_time_s, min_rounds=self.min_rounds,
                timing_check=self.timing_check, plants=self.plants,
            )
        return self.runners[cell.key]


_SESSION = pytest.StashKey[AttnSession]()


def _build_session(config: pytest.Config) -> AttnSession:
    from attention_impls import VARIANTS

    opts = {name: _resolve(config, name, parse) for name, parse, _, _ in _OPTIONS}
    device = opts["device"] or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--attn-device cuda: no CUDA device is available (use auto or cpu)")
    preset_name = opts["preset"] or (DEFAULT_CUDA_PRESET if device == "cuda" else DEFAULT_CPU_PRESET)
    preset = PRESETS[preset_name]
    seq_lens = opts["seq-lens"] or preset.seq_lens
    head_dims = opts["head-dims"] or preset.head_dims
    dtypes = opts["dtypes"] or preset.dtypes
    causals = opts["causal"] or preset.causal
    explicit = opts["variants"] is not None
    variants = opts["variants"] or tuple(VARIANTS)

    cells, left_out = [], {}
    for dtype in dtypes:
        for causal in causals:
            for seq_len in seq_lens:
                for head_dim in head_dims:
                    for name in variants:
                        variant = VARIANTS[name]
                        reason = variant.unavailable_reason(device, DTYPES[dtype]) or variant.check_head_dim(head_dim)
                        if not reason and device == "cpu" and variant.cpu_interpreted:
                            reason = "runs in an interpreter on CPU: too slow to time (ask for it with --attn-variants)"
                        if reason and not explicit:
                            left_out.setdefault(name, reason)
                            continue
                        cells.append(Cell(
                            variant=name, seq_len=seq_len, head_dim=head_dim,
                            batch=opts["batch"] or preset.batch_for(seq_len),
                            heads=opts["heads"] or preset.heads_for(head_dim),
                            dtype=dtype, causal=causal, device=device,
                        ))
    return AttnSession(
        device=device, preset=preset_name, cells=cells, left_out=left_out, explicit_variants=explicit,
        max_time_s=opts["max-time"] or DEFAULT_MAX_TIME_S, min_rounds=opts["min-rounds"] or DEFAULT_MIN_ROUNDS,
        timing_check=config.getoption("attn_timing_check"), memory_compare_fail=opts["memory-compare-fail"],
        plants=_plants(),
    )


def _plants() -> dict:
    try:
        return plants_from_env()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Resolve the grid from options, ini and preset; fail early with a usage error."""
    config.stash[_SESSION] = _build_session(config)
    if config.stash[_SESSION].memory_compare_fail is not None and not config.getoption("benchmark_compare", None):
        raise pytest.UsageError("--attn-memory-compare-fail requires --benchmark-compare (the run to compare with)")


def attn_session(config: pytest.Config) -> AttnSession:
    """The run's AttnSession (for tools and tests)."""
    return config.stash[_SESSION]


def pytest_report_header(config: pytest.Config) -> list[str]:
    """One line for the grid, one per variant left out and why."""
    s = attn_session(config)
    lines = [f"attnbench: device={s.device} preset={s.preset} cells={len(s.cells)}"]
    lines += [f"attnbench: left out {name}: {reason}" for name, reason in s.left_out.items()]
    if s.plants:
        lines.append(f"attnbench: PLANTED REGRESSIONS ACTIVE: {s.plants}")
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parameterize every test that asks for ``attn_cell`` (or ``attn_runner``) over the grid."""
    if "attn_cell" not in metafunc.fixturenames:
        return
    from attention_impls import VARIANTS

    s = attn_session(metafunc.config)
    params = []
    for cell in s.cells:
        variant = VARIANTS[cell.variant]
        reason = variant.unavailable_reason(cell.device, cell.torch_dtype) or variant.check_head_dim(cell.head_dim)
        marks = [pytest.mark.skip(reason=f"{cell.variant} unavailable: {reason}")] if reason else []
        params.append(pytest.param(cell, id=cell.key, marks=marks))
    metafunc.parametrize("attn_cell", params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every CUDA benchmark the CUDA-event clock and its variant-comparison group."""
    from .timing import cuda_event_clock

    for item in items:
        cell = getattr(getattr(item, "callspec", None), "params", {}).get("attn_cell")
        if cell is None:
            continue
        options = {"group": cell.group}
        if cell.device == "cuda":
            options["timer"] = cuda_event_clock
        item.add_marker(pytest.mark.benchmark(**options))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Sample the GPU's state before anything runs."""
    s = attn_session(session.config)
    if s.device == "cuda":
        from .machine import gpu_sample

        s.gpu_start = gpu_sample()


@pytest.fixture
def attn_cell(request) -> Cell:
    """The grid cell of this benchmark (parameterized by the plugin)."""
    return request.param


@pytest.fixture
def attn_runner(request, attn_cell: Cell) -> CellRunner:
    """The cell's runner, its memory probe done (once per cell); OOM cells are recorded and skipped."""
    runner = attn_session(request.config).runner(attn_cell)
    runner.ensure_probed()
    return runner


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Add versions, GPU identity and GPU state at the start and end of the run."""
    from .machine import environment, flags, gpu_sample

    s = attn_session(config)
    info = {"env": environment()}
    if s.device == "cuda":
        start = s.gpu_start or gpu_sample()
        end = gpu_sample()
        info.update(gpu_start=start, gpu_end=end, flags=flags(start, end))
    machine_info["attnbench"] = info


#: machine_info["attnbench"] keys that are samples of the GPU's state, different in every run by design
_SAMPLE_KEYS = ("gpu_start", "gpu_end", "flags")


@pytest.hookimpl(hookwrapper=True)
def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    """Let ``--benchmark-compare`` judge the environment, not the GPU's clocks and temperature.

    pytest-benchmark warns when the compared run's machine_info differs in any way (and crashes while
    warning when the storage lies outside the working directory). The GPU samples differ in every
    run, so the built-in check sees them only with the samples set aside; versions and the GPU's
    identity still count.
    """
    set_aside = []
    for info in (machine_info, (compared_benchmark or {}).get("machine_info") or {}):
        ours = info.get("attnbench")
        if isinstance(ours, dict):
            set_aside.append((ours, {k: ours.pop(k) for k in _SAMPLE_KEYS if k in ours}))
    try:
        yield
    finally:
        for ours, samples in set_aside:
            ours.update(samples)


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    """Save every cell's record, OOM cells included, under ``attnbench``."""
    s = attn_session(config)
    output_json["attnbench"] = {
        "schema_version": JSON_SCHEMA_VERSION,
        "preset": s.preset,
        "device": s.device,
        "plants": s.plants,
        "cells": [r.record.as_dict() for r in s.runners.values()],
    }


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Apply --attn-memory-compare-fail against pytest-benchmark's compared run."""
    s = attn_session(session.config)
    if s.memory_compare_fail is None:
        return
    from .compare import compare_memory, oom_changes

    bs = session.config._benchmarksession
    baseline = {}
    for mapping in (bs.compared_mapping or {}).values():
        baseline.update(mapping)
    current = {b.fullname: b for b in bs.benchmarks if not b.has_error}
    current_entries = {name: {"extra_info": b.extra_info} for name, b in current.items()}
    findings = compare_memory(baseline, current_entries, threshold_pct=s.memory_compare_fail)
    findings += oom_changes(
        {k: v for k, v in baseline.items()},
        current_entries,
        {r.cell.key: r.record.status for r in s.runners.values()},
    )
    s.memory_findings = [f for f in findings if f.regression]
    if s.memory_findings and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """OOM cells, untrustworthy-GPU flags and memory regressions, where the user will read them."""
    s = attn_session(config)
    records = [r.record for r in s.runners.values()]
    ooms = [r for r in records if r.status.startswith("oom")]
    if not records:
        return
    tr = terminalreporter
    tr.section("attnbench")
    tr.write_line(f"{sum(r.status == 'ok' for r in records)} cells measured, {len(ooms)} OOM")
    for r in ooms:
        tr.write_line(f"  {r.status}: {r.cell.key}: {r.message}")
    if s.device == "cuda" and s.gpu_start is not None:
        from .machine import flags, gpu_sample

        for flag in flags(s.gpu_start, gpu_sample()):
            tr.write_line(f"WARNING: {flag}; timings from this run may not be trustworthy", yellow=True, bold=True)
    if s.memory_findings:
        tr.write_line(f"Memory has regressed (threshold {s.memory_compare_fail}%):", red=True, bold=True)
        for f in s.memory_findings:
            tr.write_line(f"  {f.describe()}", red=True)
