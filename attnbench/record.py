"""The saved run: one typed model, one writer, one reader. No other module knows the JSON's keys.

A run is the JSON pytest-benchmark saves (``--benchmark-autosave``, ``--benchmark-json``), with
attnbench's facts added where they belong, each written once (schema 2)::

    benchmarks[]                one entry per (cell, pass), written by pytest-benchmark
      .params                   the cell's axes as plain scalars (grid.AXES), from pytest's parametrization
      .stats                    pytest-benchmark's statistics of the timed rounds
      .extra_info               the pass's own facts (PASS_KEYS): pass, flops, and the checks that ran
    attnbench                   the run's own facts (RUN_KEYS) and one record per cell (CELL_KEYS)
      .shard                    a shard's run only (SHARD_KEYS): which shard, and every cell of the whole grid
    machine_info.attnbench      env (versions, the device measured), which GPU, GPU samples, flags (MACHINE_KEYS)
      .shards                   a merged run only: where each shard measured (SHARD_MACHINE_KEYS)

A run made in N shards (``--attn-shard I/N``) and merged (``attnbench merge``) reads like a run made in one
process; each of its cells names the shard that measured it.

:func:`load` reads schema 2 and schema 1 (the runs saved before; their cell facts were copied into
every benchmark's extra_info) into the same :class:`Run`, and refuses with :class:`RunError`,
naming the entry and the field, what it cannot trust: an unknown schema, a missing or non-numeric
figure, a benchmark without its cell. It never guesses.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .accuracy import TENSORS, Accuracy, TensorError
from .grid import AXES, DTYPES, LATER_AXES, NO_MASK, Cell, axis_defaults, cell_key

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
DEFAULT_STORAGE = ".benchmarks"

PASSES = ("forward", "backward")
#: ok: measured; wrong: measured, but a result is past its accuracy bound; oom-*: does not fit (predicted
#: before running, or the allocator failed); capture-failed: the variant cannot be captured in a CUDA graph
#: (timing mode cudagraph); pending: the run stopped before the cell finished; failed: the cell raised (the
#: message says what); skipped: not attempted here (the message says why).
STATUSES = ("ok", "wrong", "oom-predicted", "oom-measured", "capture-failed", "pending", "failed", "skipped")
#: statuses whose benchmarks were timed.
TIMED_STATUSES = ("ok", "wrong")
TIMING_MODES = ("device", "wall", "cudagraph")
#: a cell's memory figures: census, memory model, and on CUDA the allocator's.
MEMORY_KEYS = ("saved_nxn", "saved_bytes", "predicted_before_backward_bytes", "predicted_peak_bytes",
               "mem_before_backward_bytes", "peak_bytes", "free_bytes")
#: figures every measured cell has, and those a measured CUDA cell has too.
REQUIRED_MEMORY = ("saved_nxn", "saved_bytes", "predicted_before_backward_bytes", "predicted_peak_bytes")
REQUIRED_CUDA_MEMORY = ("mem_before_backward_bytes", "peak_bytes")
#: in a run across ranks (``attnbench cp``) the memory model does not apply: census and allocator only.
REQUIRED_MULTI_RANK_MEMORY = ("saved_nxn", "saved_bytes")
#: a pass's own facts in its benchmark's extra_info (the optional ones only when measured).
#: ``attnbench cp`` adds, per pass: ``comm_s`` the ring's exchanges alone, ``compute_s`` the ring without them,
#: ``hidden_comm_fraction`` the share of comm_s the computation hid, ``single_device_s`` one GPU on the whole
#: problem, ``scaling_efficiency`` single_device_s / (world_size x the ring's median).
CP_PASS_KEYS = ("comm_s", "compute_s", "hidden_comm_fraction", "single_device_s", "scaling_efficiency")
PASS_KEYS = ("pass", "flops", "warmup_wall_s", "event_median_s", "launch_slack_s", *CP_PASS_KEYS)
OPTIONAL_PASS_KEYS = ("warmup_wall_s", "event_median_s", "launch_slack_s", *CP_PASS_KEYS)
#: pytest-benchmark statistics a reader relies on.
REQUIRED_STATS = ("min", "max", "mean", "median", "q1", "q3", "iqr")
#: keys of the run's attnbench section, and of each cell record in it.
RUN_KEYS = ("schema_version", "preset", "timing", "plants", "complete", "stop_reason", "shard", "cells")
#: ``world_size``: the ranks one measurement ran across (``attnbench cp``); absent in a single-process run.
OPTIONAL_RUN_KEYS = ("world_size",)
#: a cell's ``shard``: in a merged run, the index of the shard that measured it; ``prepare_s``: the seconds
#: of the variant's per-cell setup (flex's block mask), run once outside the timed calls, where it has one;
#: ``accuracy_s``: the seconds the accuracy check took (reference, plain computation, the variant's own pass),
#: outside the timed calls, where it ran.
#: Runs saved before masks and GQA lack the axes heads_kv and mask: they read as heads_kv = heads, mask "none".
CELL_KEYS = (*AXES, "status", "message", *MEMORY_KEYS, "accuracy", "shard", "prepare_s", "accuracy_s")
#: keys of a shard's ``attnbench.shard``: shard ``index`` (1-based) of ``count``, the key of every cell of the
#: whole grid, and the device memory the split predicted against (attnbench.shard).
SHARD_KEYS = ("index", "count", "grid_cells", "partition_memory_bytes")
#: keys of a cell's ``accuracy`` record, and of each of its tensors' (attnbench.accuracy).
ACCURACY_KEYS = ("plain_fits", "floor", "tensors")
TENSOR_ERROR_KEYS = ("max_abs_error", "rel_rms_error", "plain_max_abs_error", "bound", "nan_count", "inf_count",
                     "ref_max_abs", "floor")
#: tensor-error keys that runs saved before them do not hold: left out when None
_OPTIONAL_TENSOR_KEYS = ("ref_max_abs", "floor")
#: keys of machine_info.attnbench.env.
ENV_KEYS = ("device", "gpu_name", "driver", "cuda", "torch", "triton", "python", "gpu_memory_bytes", "sm_count")
#: keys of machine_info.attnbench: the environment, which GPU measured (its UUID and the process's
#: CUDA_VISIBLE_DEVICES; null on CPU), the GPU's state at start and end, and in a merged run every shard's.
MACHINE_KEYS = ("env", "gpu_uuid", "cuda_visible_devices", "gpu_start", "gpu_end", "flags", "shards")
#: keys of each of a merged run's machine_info.attnbench.shards: where that shard measured.
SHARD_MACHINE_KEYS = ("index", "node", "gpu_uuid", "cuda_visible_devices", "gpu_start", "gpu_end", "flags")
#: machine_info.attnbench keys that differ in every process by design (samples, the card's identity).
PER_PROCESS_MACHINE_KEYS = ("gpu_uuid", "cuda_visible_devices", "gpu_start", "gpu_end", "flags", "shards")
#: keys of pytest-benchmark's ``commit_info`` a reader uses: the commit measured, its commit time (ISO 8601),
#: whether the tree had uncommitted changes, and the branch.
COMMIT_KEYS = ("id", "time", "dirty", "branch")
#: pytest-benchmark's stand-ins for a commit it could not name (no git, or git failed).
UNNAMED_COMMITS = ("unversioned", "unknown", "")

RUN_HINT = "pass the JSON written by `pytest benchmarks --benchmark-autosave` (under .benchmarks/) or --benchmark-json"


class RunError(Exception):
    """A run file that cannot be used; the message names the file, the entry and the field."""


# -- the model


@dataclass(frozen=True)
class Timing:
    """How the run's rounds were timed (runs of different timings do not compare)."""

    mode: str = "device"
    flush_l2: bool = False

    def describe(self) -> str:
        return self.mode + (" + L2 flushed" if self.flush_l2 else "")


@dataclass(frozen=True)
class Commit:
    """The commit a run measured, from pytest-benchmark's ``commit_info``."""

    id: str
    time: datetime  # the commit's time (git's %cI), with its UTC offset
    dirty: bool = False  # the tree had uncommitted changes: the commit does not say what was measured
    branch: str | None = None

    @property
    def short_id(self) -> str:
        return self.id[:10]


@dataclass(frozen=True)
class ShardInfo:
    """A shard's run: shard ``index`` (1-based) of ``count``, and the key of every cell of the whole grid."""

    index: int
    count: int
    grid_cells: tuple[str, ...]
    partition_memory_bytes: int

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class ShardMachine:
    """Where one shard of a merged run measured: its host, its GPU (null on CPU) and the GPU's state."""

    index: int
    node: str | None = None
    gpu_uuid: str | None = None
    cuda_visible_devices: str | None = None
    gpu_start: dict | None = None
    gpu_end: dict | None = None
    flags: tuple[str, ...] = ()

    def describe(self) -> str:
        """'shard 2 on host-a, GPU GPU-5c1e… (CUDA_VISIBLE_DEVICES=1)'."""
        where = [f"on {self.node}"] if self.node else []
        if self.gpu_uuid:
            where.append(f"GPU {self.gpu_uuid}")
        if self.cuda_visible_devices is not None:
            where.append(f"CUDA_VISIBLE_DEVICES={self.cuda_visible_devices}")
        return f"shard {self.index}" + (" " + ", ".join(where) if where else "")


@dataclass
class PassResult:
    """One benchmark: a pass of a cell, its statistics and its own facts."""

    name: str  # pytest-benchmark's fullname
    pass_name: str
    stats: dict
    flops: float
    checks: dict = field(default_factory=dict)  # OPTIONAL_PASS_KEYS that were measured
    options: dict = field(default_factory=dict)  # pytest-benchmark's round options, as it saved them

    @property
    def median_s(self) -> float:
        return self.stats["median"]

    @property
    def tflops(self) -> float:
        return self.flops / self.median_s / 1e12

    @property
    def short_name(self) -> str:
        """'benchmarks/test_forward.py::test_forward[naive-…]' -> 'test_forward[naive-…]'."""
        return self.name.rsplit("::", 1)[-1]


@dataclass
class CellRecord:
    """What a run learned about one cell: its status, memory figures, and its passes' results."""

    cell: Cell
    status: str = "pending"
    message: str = ""
    memory: dict[str, int] = field(default_factory=dict)
    passes: dict[str, PassResult] = field(default_factory=dict)
    accuracy: Accuracy | None = None
    shard: int | None = None  # in a merged run: the shard that measured the cell
    prepare_s: float | None = None  # the variant's per-cell setup, timed once apart from the calls
    accuracy_s: float | None = None  # the accuracy check's seconds, outside the timed calls

    @property
    def key(self) -> str:
        return self.cell.key

    def median_s(self, pass_name: str) -> float | None:
        result = self.passes.get(pass_name)
        return result.median_s if result else None

    @property
    def is_oom(self) -> bool:
        return self.status.startswith("oom")


@dataclass
class Run:
    """A saved run, read and checked: the run's facts, and its cells by key in the run's order."""

    path: Path | None
    schema_version: int
    preset: str
    device: str
    timing: Timing
    plants: dict
    complete: bool
    stop_reason: str
    env: dict
    machine: dict  # machine_info.attnbench: env, gpu_start, gpu_end, flags
    cells: dict[str, CellRecord]
    commit: dict
    datetime: str
    cpu_brand: str
    other_benchmarks: int = 0
    shard: ShardInfo | None = None  # a shard's run: which shard of which grid
    shard_machines: list[ShardMachine] = field(default_factory=list)  # a merged run: where each shard measured
    data: dict | None = field(default=None, repr=False)  # the JSON as read (for merging runs)
    world_size: int = 1  # ranks per measurement (attnbench cp); 1 in a single-process run

    @property
    def device_label(self) -> str:
        """The GPU's name for a run on CUDA; "CPU (brand)" for a run on the CPU."""
        if self.device == "cuda" and self.env.get("gpu_name"):
            return self.env["gpu_name"]
        return f"CPU ({self.cpu_brand})"

    @property
    def flags(self) -> list[str]:
        return list(self.machine.get("flags") or [])

    @property
    def source_commit(self) -> Commit | None:
        """The commit measured, with its time; None when pytest-benchmark could not name it or its time."""
        commit_id, when = self.commit.get("id"), self.commit.get("time")
        if not isinstance(commit_id, str) or commit_id in UNNAMED_COMMITS or not isinstance(when, str):
            return None
        try:
            time = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            return None
        if time.tzinfo is None:
            return None  # a naive time cannot be ordered against others
        branch = self.commit.get("branch")
        return Commit(commit_id, time, bool(self.commit.get("dirty")), branch if isinstance(branch, str) else None)

    @property
    def environment(self) -> tuple[tuple[str, str], ...]:
        """What must match for two runs' figures to lie on one line: the device measured (the GPU's name, or
        the CPU's brand), the driver's major version, CUDA, torch, triton and the timing mode, as (name, value)."""
        driver = str(self.env.get("driver") or "").split(".")[0]
        return (("device", self.device_label), ("driver", driver or "–"), ("cuda", str(self.env.get("cuda") or "–")),
                ("torch", str(self.env.get("torch") or "–")), ("triton", str(self.env.get("triton") or "–")),
                ("timing", self.timing.describe()))

    @property
    def label(self) -> str:
        """File, date and commit, for headers."""
        parts = [self.datetime[:19]] if self.datetime else []
        if self.commit.get("id"):
            dirty = " (uncommitted changes)" if self.commit.get("dirty") else ""
            parts.append(f"commit {str(self.commit['id'])[:10]}{dirty}")
        name = self.path.name if self.path else "current run"
        return f"`{name}`" + (f" ({', '.join(parts)})" if parts else "")

    def passes(self) -> dict[tuple[str, str], PassResult]:
        """Every benchmark by (cell key, pass)."""
        return {(key, p): result for key, rec in self.cells.items() for p, result in rec.passes.items()}

    @property
    def pending(self) -> list[str]:
        return [key for key, rec in self.cells.items() if rec.status == "pending"]

    @property
    def node(self) -> str | None:
        """The host that measured the run (pytest-benchmark's machine_info.node)."""
        node = ((self.data or {}).get("machine_info") or {}).get("node")
        return str(node) if node else None

    @property
    def gpu_uuid(self) -> str | None:
        return self.machine.get("gpu_uuid")

    @property
    def cuda_visible_devices(self) -> str | None:
        return self.machine.get("cuda_visible_devices")

    def round_options(self) -> list[dict]:
        """pytest-benchmark's options of every benchmark, each distinct one once."""
        distinct: list[dict] = []
        for result in self.passes().values():
            if result.options not in distinct:
                distinct.append(result.options)
        return distinct


# -- the writer


def pass_extra_info(pass_name: str, flops: float, **checks: float) -> dict:
    """A benchmark's ``extra_info``: its pass, its FLOPs, and whichever of OPTIONAL_PASS_KEYS were measured."""
    unknown = set(checks) - set(OPTIONAL_PASS_KEYS)
    if unknown:
        raise ValueError(f"unknown pass facts {sorted(unknown)}; allowed: {', '.join(OPTIONAL_PASS_KEYS)}")
    return {"pass": pass_name, "flops": flops, **{k: v for k, v in checks.items() if v is not None}}


def cell_section(rec: CellRecord) -> dict:
    """One cell's record under ``attnbench.cells``."""
    section = {**rec.cell.params(), "status": rec.status, "message": rec.message,
               **{k: rec.memory[k] for k in MEMORY_KEYS if rec.memory.get(k) is not None}}
    if rec.accuracy is not None:
        section["accuracy"] = accuracy_section(rec.accuracy)
    if rec.shard is not None:
        section["shard"] = rec.shard
    for name in ("prepare_s", "accuracy_s"):
        if getattr(rec, name) is not None:
            section[name] = getattr(rec, name)
    return section


def accuracy_section(acc: Accuracy) -> dict:
    """A cell's ``accuracy``: whether the plain computation fitted, the floor, and each tensor's errors."""
    return {"plain_fits": acc.plain_fits, "floor": acc.floor,
            "tensors": {name: {k: getattr(t, k) for k in TENSOR_ERROR_KEYS if getattr(t, k) is not None
                               or k not in _OPTIONAL_TENSOR_KEYS} for name, t in acc.tensors.items()}}


def run_section(*, preset: str, timing: Timing, plants: dict, complete: bool, stop_reason: str,
                cells: list[CellRecord], shard: ShardInfo | None = None, world_size: int | None = None) -> dict:
    """The run's ``attnbench`` section; ``shard`` for a shard's run (null in a whole run); ``world_size`` for a
    run measured across several ranks (left out otherwise)."""
    extra = {} if world_size is None else {"world_size": world_size}
    return {**extra,
        "schema_version": SCHEMA_VERSION,
        "preset": preset,
        "timing": {"mode": timing.mode, "flush_l2": timing.flush_l2},
        "plants": plants,
        "complete": complete,
        "stop_reason": stop_reason,
        "shard": None if shard is None else {"index": shard.index, "count": shard.count,
                                             "grid_cells": list(shard.grid_cells),
                                             "partition_memory_bytes": shard.partition_memory_bytes},
        "cells": [cell_section(rec) for rec in cells],
    }


def machine_section(env: dict, *, gpu_uuid: str | None = None, cuda_visible_devices: str | None = None,
                    gpu_start: dict | None = None, gpu_end: dict | None = None, flags: list[str] | None = None,
                    shards: list[ShardMachine] | None = None) -> dict:
    """``machine_info.attnbench``: the environment, which GPU (null on CPU), on CUDA the GPU's state at start
    and end, and in a merged run where each shard measured (then ``flags`` are every shard's)."""
    section: dict = {"env": {k: env.get(k) for k in ENV_KEYS}, "gpu_uuid": gpu_uuid,
                     "cuda_visible_devices": cuda_visible_devices}
    if gpu_start is not None:
        section.update(gpu_start=gpu_start, gpu_end=gpu_end)
    if gpu_start is not None or flags:
        section["flags"] = list(flags or [])
    if shards is not None:
        section["shards"] = [{k: (list(v) if k == "flags" else v) for k, v in
                              ((k, getattr(m, k)) for k in SHARD_MACHINE_KEYS)} for m in shards]
    return section


def command_run(*, machine_info: dict, commit_info: dict, benchmarks: list[dict], section: dict, version: str,
                datetime: str) -> dict:
    """A whole run written by an attnbench command instead of pytest-benchmark, in the same shape: pytest-benchmark's
    ``machine_info`` (with ``attnbench`` from machine_section), ``commit_info``, ``version``; ``section`` from
    run_section; ``benchmarks`` from benchmark_entry."""
    return {"machine_info": machine_info, "commit_info": commit_info, "benchmarks": benchmarks,
            "datetime": datetime, "version": version, "attnbench": section}


def merged_run(parts: list[Run], *, cells: list[CellRecord], complete: bool, stop_reason: str,
               shard_machines: list[ShardMachine]) -> dict:
    """One run from shards' runs (read by :func:`load`, checked by the caller to belong together).

    pytest-benchmark's part is the first shard's (machine, commit, version) with every shard's benchmarks,
    in the whole grid's order for each test; attnbench's is a whole run's: ``cells`` (each naming its shard),
    and where each shard measured under ``machine_info.attnbench.shards``.
    """
    first = parts[0]
    data = {k: v for k, v in first.data.items() if k not in ("benchmarks", "attnbench", "machine_info")}
    order = {rec.key: i for i, rec in enumerate(cells)}
    ours, others = [], []
    for part in parts:
        names = {result.name for result in part.passes().values()}
        for entry in part.data["benchmarks"]:
            (ours if entry.get("fullname") in names else others).append(entry)

    def position(entry: dict) -> tuple:
        test = entry["fullname"].split("[", 1)[0]
        return test, order.get(cell_key(entry["params"]), len(order))

    data["benchmarks"] = sorted(ours, key=position) + others
    data["datetime"] = max((part.data.get("datetime") or "" for part in parts), default="")  # the last to end
    flags = [f"shard {m.index}: {flag}" for m in shard_machines for flag in m.flags]
    data["machine_info"] = {**first.data["machine_info"],
                            "attnbench": machine_section(first.env, flags=flags, shards=shard_machines)}
    data["attnbench"] = run_section(preset=first.preset, timing=first.timing, plants=first.plants, complete=complete,
                                    stop_reason=stop_reason, cells=cells)
    return data


def commit_info(commit: Commit) -> dict:
    """pytest-benchmark's ``commit_info`` for ``commit`` (what it saves from git)."""
    return {"id": commit.id, "time": commit.time.isoformat(), "dirty": commit.dirty, "branch": commit.branch}


def benchmark_entry(cell: Cell, result: PassResult) -> dict:
    """One entry of ``benchmarks``, as pytest-benchmark saves a benchmark of this suite."""
    return {"group": cell.group, "name": result.short_name, "fullname": result.name, "params": cell.params(),
            "param": cell.key, "extra_info": pass_extra_info(result.pass_name, result.flops, **result.checks),
            "options": result.options, "stats": result.stats}


def run_data(cells: list[CellRecord], *, env: dict, commit: Commit | None, datetime_text: str = "",
             preset: str = "seed", timing: Timing = Timing(), plants: dict | None = None, complete: bool = True,
             stop_reason: str = "", cpu_brand: str = "unknown", node: str | None = None) -> dict:
    """A whole run, shaped as pytest-benchmark saves it with this suite's facts: for tools that make runs
    without measuring them (examples, and the tests of the tools that read runs); :func:`parse` reads it."""
    return {
        "machine_info": {"node": node, "cpu": {"brand_raw": cpu_brand}, "attnbench": machine_section(env)},
        "commit_info": commit_info(commit) if commit is not None else {"id": "unversioned", "time": None},
        "benchmarks": [benchmark_entry(rec.cell, result) for rec in cells for result in rec.passes.values()],
        "datetime": datetime_text,
        "version": _pytest_benchmark_version(),
        "attnbench": run_section(preset=preset, timing=timing, plants=plants or {}, complete=complete,
                                 stop_reason=stop_reason, cells=cells),
    }


def _pytest_benchmark_version() -> str:
    from .pb_compat import pb_version

    return pb_version()


def write_json_atomically(path: Path, data: dict, *, exclusive: bool = False) -> None:
    """Write ``data`` as JSON with :func:`write_atomically`."""
    text = json.dumps(data, indent=4, ensure_ascii=True, default=_unserializable)
    write_atomically(path, text.encode(), exclusive=exclusive)


def write_atomically(path: Path, content: bytes, *, exclusive: bool = False) -> None:
    """Write ``content`` to a temporary file beside ``path``, then move it into place in one step.

    A reader never sees half a file. With ``exclusive``, an existing ``path`` is never replaced:
    FileExistsError instead (two runs that picked the same name cannot overwrite each other).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600; the file gets the mode any new or replaced file would
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        if exclusive:
            os.link(tmp, path)  # fails when path exists; rename would replace it
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _mode_for(path: Path) -> int:
    """The permissions of the file being replaced, or what the umask gives a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def output_is_an_input(output: Path, inputs) -> Path | None:
    """The input that ``output`` would overwrite (the same file, by path or by inode), or None."""
    output = Path(output)
    for given in inputs:
        given = Path(given)
        try:
            if output.resolve() == given.resolve() or (output.exists() and os.path.samefile(output, given)):
                return given
        except OSError:
            continue
    return None


def _unserializable(value) -> str:
    return f"UNSERIALIZABLE[{value!r}]"


# -- the reader


def newest_run(storage: str | Path = DEFAULT_STORAGE) -> Path:
    """The newest numbered run under ``storage``, in pytest-benchmark's own order (by file name).

    Runs saved incomplete (``incomplete_*.json``) are never picked.
    """
    runs = sorted(Path(storage).glob("*/[0-9][0-9][0-9][0-9]_*.json"), key=lambda p: (p.name, p.parent))
    if not runs:
        raise RunError(
            f"no saved runs under {storage}/; run `pytest benchmarks --benchmark-autosave` first, or pass RUN.json"
        )
    return runs[-1]


def read_json(path: str | Path, role: str = "run") -> dict:
    """A saved pytest-benchmark run as a dict; RunError naming the ``role`` and what to do otherwise."""
    path = Path(path)
    try:
        # a run kept compressed (``.json.gz``, e.g. under docs/results) reads like the run itself
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    except FileNotFoundError:
        raise RunError(f"{role} file {path} does not exist (no such file); {RUN_HINT}") from None
    except IsADirectoryError:
        raise RunError(f"{role} file {path} is a directory, not a run file; {RUN_HINT}") from None
    except (OSError, UnicodeDecodeError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise RunError(f"cannot read {role} file {path}: {getattr(exc, 'strerror', None) or exc}; {RUN_HINT}") from None
    try:
        data = json.loads(text)  # NaN and Infinity parse; the field checks below name where they are
    except (json.JSONDecodeError, ValueError) as exc:
        raise RunError(f"{role} file {path} is not JSON, not readable as JSON ({exc}); {RUN_HINT}") from None
    except RecursionError:
        raise RunError(f"{role} file {path} nests too deeply to be read (no run of this suite does); "
                       f"{RUN_HINT}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list) \
            or not isinstance(data.get("machine_info"), dict):
        raise RunError(f"{role} file {path} is not a pytest-benchmark run (no 'benchmarks' or 'machine_info'); "
                       f"{RUN_HINT}")
    return data


def load(path: str | Path, role: str = "run") -> Run:
    """Read and check a saved run (schema 1 or 2); RunError saying what cannot be trusted."""
    path = Path(path)
    return parse(read_json(path, role), path=path, role=role)


def parse(data: dict, *, path: Path | None = None, role: str = "run") -> Run:
    """The :class:`Run` a saved run's dict describes; RunError naming what cannot be trusted."""
    where = f"{role} file {path}" if path else role
    section = data.get("attnbench")
    if not isinstance(section, dict):
        raise RunError(f"{where} has no 'attnbench' section: not a run of this suite; {RUN_HINT}")
    version = section.get("schema_version")
    if version not in READABLE_SCHEMAS:
        raise RunError(f"{where}: unknown attnbench schema_version {version!r}; this attnbench reads "
                       f"{', '.join(map(str, READABLE_SCHEMAS))} (a newer attnbench wrote it?)")
    try:
        return _Reader(where, data, section, version).run(path)
    except (TypeError, KeyError, AttributeError, ValueError) as exc:  # a shape no check above foresaw
        raise RunError(f"{where}: malformed ({type(exc).__name__}: {exc}); the run cannot be trusted") from None
    except RecursionError:  # a field nested past what any check walks
        raise RunError(f"{where}: nested too deeply; the run cannot be trusted") from None


_NUMBER_TYPES = frozenset((int, float))
_INTEGER_TYPES = frozenset((int,))
_SIZE_AXES = ("seq_len", "head_dim", "batch", "heads")


def _plain_numbers(values: list, *, integer: bool = False, positive: bool = False) -> bool:
    """Whether every value is an int (or, unless ``integer``, a float), finite and >= 0 (> 0 if ``positive``):
    what a run holds almost everywhere, checked in bulk.

    A run holds hundreds of thousands of numbers; the reader checks each group of them here first, and only
    when this says no does it go field by field, to name what is wrong. It never says yes to a value the
    field-by-field checks would refuse or change (a float that is an integer, where an integer is expected).
    """
    if not values or not {*map(type, values)} <= (_INTEGER_TYPES if integer else _NUMBER_TYPES):
        return False  # bool is not int here: type(), not isinstance
    try:
        total = sum(values)  # NaN if any value is NaN, inf if any is infinite
    except OverflowError:  # an integer too large for a float, among floats
        return False
    lowest = min(values)
    return total < math.inf and (lowest > 0 if positive else lowest >= 0)


def _plain_cell(fields: dict) -> bool:
    """Whether a cell's axes are plainly valid (what :meth:`_Reader.cell` accepts as it is), checked in one step."""
    variant, dtype, mask = fields.get("variant"), fields.get("dtype"), fields.get("mask")
    return (type(variant) is str and variant != "" and type(dtype) is str and dtype in DTYPES
            and type(fields.get("causal")) is bool and type(mask) is str and (mask == NO_MASK or ":" in mask)
            and _plain_numbers([fields.get(a) for a in (*_SIZE_AXES, "heads_kv")], integer=True, positive=True)
            and fields["heads"] % fields["heads_kv"] == 0)


class _Reader:
    """Checks one run's JSON field by field; every complaint names the entry and the field.

    Each group of figures is first checked in bulk (:func:`_plain_numbers`); the checks that name the entry and
    the field run when that fails, so a refusal reads the same whichever way the figures were checked.
    """

    def __init__(self, where: str, data: dict, section: dict, version: int):
        self.where, self.data, self.section, self.version = where, data, section, version
        self.world_size: int | None = None  # a run across ranks (attnbench cp) says how many
        self._later_axes_saved: bool | None = None  # whether this run saves grid.LATER_AXES (all entries alike)

    def fail(self, entry: str, problem: str):
        raise RunError(f"{self.where}: {entry}: {problem}; the run cannot be trusted (re-run it, or pass another)")

    # -- small checks

    def number(self, entry: str, name: str, value, *, integer: bool = False, positive: bool = False) -> float:
        kind = type(value)
        if (kind is float and not integer or kind is int) and (0 < value < math.inf or value == 0 and not positive):
            return value  # the common case, checked in one step (a run holds hundreds of thousands of numbers)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(entry, f"{name} is {value!r}, not a number")
        if not math.isfinite(value):
            self.fail(entry, f"{name} is {value}, not a finite number")
        if integer and not isinstance(value, int) and not float(value).is_integer():
            self.fail(entry, f"{name} is {value!r}, not an integer")
        if value < 0 or (positive and value == 0):
            self.fail(entry, f"{name} is {value!r}, expected {'> 0' if positive else '>= 0'}")
        return int(value) if integer else value

    def mapping(self, entry: str, name: str, value) -> dict:
        if not isinstance(value, dict):
            self.fail(entry, f"{name} is {'missing' if value is None else repr(value)[:60]}, expected an object")
        return value

    def cell(self, entry: str, fields: dict, device: str) -> Cell:
        if _plain_cell(fields):
            self.later_axes(entry, saved=True)
            return Cell(**{a: fields[a] for a in AXES}, device=device)
        for axis in LATER_AXES:
            if axis in fields and fields[axis] is None:
                self.fail(entry, f"{axis} is null; a run saved before it lacks the key, it never saves null")
        self.later_axes(entry, saved=all(a in fields for a in LATER_AXES))
        missing = [a for a in AXES if a not in fields and a not in LATER_AXES]
        if missing:
            self.fail(entry, f"missing {', '.join(missing)}")
        fields = axis_defaults({a: fields.get(a) for a in AXES})
        if not isinstance(fields["variant"], str) or not fields["variant"]:
            self.fail(entry, f"variant is {fields['variant']!r}, expected a variant name")
        if not isinstance(fields["dtype"], str) or fields["dtype"] not in DTYPES:
            self.fail(entry, f"dtype is {fields['dtype']!r}, expected one of {', '.join(DTYPES)}")
        if not isinstance(fields["causal"], bool):
            self.fail(entry, f"causal is {fields['causal']!r}, expected true or false")
        sizes = {a: self.number(entry, a, fields[a], integer=True, positive=True)
                 for a in ("seq_len", "head_dim", "batch", "heads", "heads_kv")}
        if sizes["heads"] % sizes["heads_kv"]:
            self.fail(entry, f"heads_kv is {sizes['heads_kv']}, which does not divide heads ({sizes['heads']})")
        mask = fields["mask"]
        if not isinstance(mask, str) or not mask or (mask != NO_MASK and ":" not in mask):
            self.fail(entry, f"mask is {mask!r}, expected a mask label such as none or sliding_window:1024")
        return Cell(variant=fields["variant"], dtype=fields["dtype"], causal=fields["causal"], mask=mask,
                    device=device, **sizes)

    def later_axes(self, entry: str, *, saved: bool) -> None:
        """A run saved before heads_kv and mask lacks them everywhere; one that has them has them everywhere."""
        if self._later_axes_saved is None:
            self._later_axes_saved = saved
        elif saved != self._later_axes_saved:
            self.fail(entry, f"{' and '.join(LATER_AXES)} {'are' if saved else 'are not'} saved here but "
                             f"{'not ' if saved else ''}in the entries before it")

    def cell_key(self, entry: str, fields: dict, device: str) -> str:
        """The key of the cell ``fields`` name (a benchmark's params), checked as :meth:`cell` checks it."""
        if _plain_cell(fields):
            self.later_axes(entry, saved=True)
            return cell_key(fields)
        return self.cell(entry, fields, device).key

    def stats(self, entry: str, stats) -> dict:
        stats = self.mapping(entry, "stats", stats)
        for name in REQUIRED_STATS:
            if name not in stats:
                self.fail(entry, f"stats.{name} is missing")
            self.number(entry, f"stats.{name}", stats[name])
        self.number(entry, "stats.rounds", stats.get("rounds"), integer=True, positive=True)
        data = stats.get("data")
        if data is not None:
            if not isinstance(data, list) or not data:
                self.fail(entry, "stats.data is not a list of round times")
            for value in data:
                self.number(entry, "a value in stats.data", value)
        return stats

    # -- the run

    def run(self, path: Path | None) -> Run:
        sec = self.section
        machine = self.data["machine_info"].get("attnbench")
        machine = self.mapping("machine_info", "attnbench", machine)
        env = self.mapping("machine_info.attnbench", "env", machine.get("env"))
        if self.version == 1:
            # schema 1 recorded the run's device in the attnbench section (env.device was the machine's)
            device, timing, complete, stop_reason = sec.get("device"), Timing(), True, ""
        else:
            device = env.get("device")
            timing_fields = self.mapping("attnbench", "timing", sec.get("timing"))
            if timing_fields.get("mode") not in TIMING_MODES:
                self.fail("attnbench.timing", f"mode is {timing_fields.get('mode')!r}, expected one of "
                                              f"{', '.join(TIMING_MODES)}")
            if not isinstance(timing_fields.get("flush_l2"), bool):
                self.fail("attnbench.timing", "flush_l2 is not true or false")
            timing = Timing(timing_fields["mode"], timing_fields["flush_l2"])
            complete, stop_reason = sec.get("complete"), sec.get("stop_reason")
            if not isinstance(complete, bool):
                self.fail("attnbench", f"complete is {complete!r}, expected true or false")
            stop_reason = str(stop_reason or "")
        if device not in ("cpu", "cuda"):
            self.fail("machine_info.attnbench.env", f"device is {device!r}, expected cpu or cuda")
        if sec.get("world_size") is not None:
            self.world_size = self.number("attnbench", "world_size", sec["world_size"], integer=True, positive=True)
        cells = self.cells(device)
        other = self.benchmarks(cells, device)
        for key, rec in cells.items():
            if rec.status in TIMED_STATUSES and not rec.passes:
                self.fail(f"cell {key}", f"measured (status {rec.status}) but has no benchmark in the run")
        pending = [k for k, rec in cells.items() if rec.status == "pending"]
        if pending and complete:
            # a schema-1 run interrupted before its cells finished (schema 2 records that itself)
            complete, stop_reason = False, stop_reason or f"{len(pending)} cell(s) never finished"
        plants = sec.get("plants") or {}
        commit = self.data.get("commit_info") or {}
        cpu = (self.data["machine_info"].get("cpu") or {})
        shard = self.shard(cells) if sec.get("shard") is not None else None
        shard_machines = self.shard_machines(machine.get("shards"), cells)
        return Run(
            path=path, schema_version=self.version, preset=str(sec.get("preset", "?")), device=device,
            timing=timing, plants=plants if isinstance(plants, dict) else {}, complete=complete,
            stop_reason=stop_reason, env={**env, "device": device}, machine=machine, cells=cells,
            commit=commit if isinstance(commit, dict) else {}, datetime=str(self.data.get("datetime") or ""),
            cpu_brand=str(cpu.get("brand_raw") or "unknown") if isinstance(cpu, dict) else "unknown",
            other_benchmarks=other, shard=shard, shard_machines=shard_machines, data=self.data,
            world_size=self.world_size or 1,
        )

    def shard(self, cells: dict[str, CellRecord]) -> ShardInfo:
        fields = self.mapping("attnbench", "shard", self.section.get("shard"))
        count = self.number("attnbench.shard", "count", fields.get("count"), integer=True, positive=True)
        index = self.number("attnbench.shard", "index", fields.get("index"), integer=True, positive=True)
        if index > count:
            self.fail("attnbench.shard", f"index is {index}, expected 1 to count ({count})")
        grid = fields.get("grid_cells")
        if not isinstance(grid, list) or not all(isinstance(key, str) and key for key in grid):
            self.fail("attnbench.shard", "grid_cells is not a list of cell keys")
        if len(set(grid)) != len(grid):
            self.fail("attnbench.shard", "grid_cells names a cell twice")
        outside = [key for key in cells if key not in set(grid)]
        if outside:
            self.fail("attnbench.shard", f"cell(s) {', '.join(outside[:5])} are not in grid_cells")
        memory = self.number("attnbench.shard", "partition_memory_bytes", fields.get("partition_memory_bytes"),
                             integer=True, positive=True)
        return ShardInfo(index, count, tuple(grid), memory)

    def shard_machines(self, entries, cells: dict[str, CellRecord]) -> list[ShardMachine]:
        if entries is None:
            if any(rec.shard is not None for rec in cells.values()):
                self.fail("machine_info.attnbench", "shards is missing, and cells name the shard that measured them")
            return []
        if not isinstance(entries, list) or not entries:
            self.fail("machine_info.attnbench", "shards is not a list of shards")
        machines = []
        for i, fields in enumerate(entries):
            entry = f"machine_info.attnbench.shards[{i}]"
            fields = self.mapping(entry, "the record", fields)
            index = self.number(entry, "index", fields.get("index"), integer=True, positive=True)
            texts = {}
            for k in ("node", "gpu_uuid", "cuda_visible_devices"):
                if fields.get(k) is not None and not isinstance(fields[k], str):
                    self.fail(entry, f"{k} is {fields[k]!r}, expected text or null")
                texts[k] = fields.get(k)
            samples = {k: self.mapping(entry, k, fields[k]) if fields.get(k) is not None else None
                       for k in ("gpu_start", "gpu_end")}
            flags = fields.get("flags") or []
            if not isinstance(flags, list):
                self.fail(entry, "flags is not a list")
            machines.append(ShardMachine(index, **texts, **samples, flags=tuple(map(str, flags))))
        indices = [m.index for m in machines]
        if len(set(indices)) != len(indices):
            self.fail("machine_info.attnbench.shards", "a shard is listed twice")
        for key, rec in cells.items():
            if rec.shard is not None and rec.shard not in indices:
                self.fail(f"cell {key}", f"shard is {rec.shard}, not one of the run's shards {indices}")
        return machines

    def cells(self, device: str) -> dict[str, CellRecord]:
        records = self.section.get("cells")
        if not isinstance(records, list):
            self.fail("attnbench", "cells is not a list of cell records")
        cells: dict[str, CellRecord] = {}
        for i, fields in enumerate(records):
            entry = f"attnbench.cells[{i}]"
            fields = self.mapping(entry, "the record", fields)
            cell = self.cell(entry, fields, device)
            entry = f"cell {cell.key}"
            if cell.key in cells:
                self.fail(entry, "recorded twice")
            status = fields.get("status")
            if status not in STATUSES:
                self.fail(entry, f"status is {status!r}, expected one of {', '.join(STATUSES)}")
            memory = {name: fields[name] for name in MEMORY_KEYS if fields.get(name) is not None}
            if not _plain_numbers(list(memory.values()), integer=True):
                memory = {name: self.number(entry, name, value, integer=True) for name, value in memory.items()}
            if status in TIMED_STATUSES:
                model = REQUIRED_MEMORY if self.world_size is None else REQUIRED_MULTI_RANK_MEMORY
                required = model + (REQUIRED_CUDA_MEMORY if device == "cuda" else ())
                missing = [name for name in required if name not in memory]
                if missing:
                    self.fail(entry, f"measured (status {status}) but {', '.join(missing)} missing")
            accuracy = self.accuracy(entry, fields["accuracy"]) if fields.get("accuracy") is not None else None
            if status == "wrong" and accuracy is None:
                self.fail(entry, "status wrong but no accuracy record")
            shard = None
            if fields.get("shard") is not None:
                shard = self.number(entry, "shard", fields["shard"], integer=True, positive=True)
            seconds = {name: self.number(entry, name, fields[name])
                       for name in ("prepare_s", "accuracy_s") if fields.get(name) is not None}
            cells[cell.key] = CellRecord(cell, status, str(fields.get("message") or ""), memory, accuracy=accuracy,
                                         shard=shard, **seconds)
        return cells

    def accuracy(self, entry: str, fields) -> Accuracy:
        plain = _plain_accuracy(fields)
        if plain is not None:
            return plain
        fields = self.mapping(entry, "accuracy", fields)
        if not isinstance(fields.get("plain_fits"), bool):
            self.fail(entry, "accuracy.plain_fits is not true or false")
        floor = self.number(entry, "accuracy.floor", fields.get("floor"), positive=True)  # a bound divides by it
        tensors_fields = self.mapping(entry, "accuracy.tensors", fields.get("tensors"))
        if set(tensors_fields) != set(TENSORS):
            self.fail(entry, f"accuracy.tensors holds {sorted(tensors_fields)}, expected {', '.join(TENSORS)}")
        tensors = {}
        for name in TENSORS:
            t = self.mapping(entry, f"accuracy.tensors.{name}", tensors_fields[name])
            where = f"accuracy.tensors.{name}"
            counts = {k: self.number(entry, f"{where}.{k}", t.get(k), integer=True) for k in ("nan_count", "inf_count")}
            errors = {}
            for k in ("max_abs_error", "rel_rms_error"):
                if t.get(k) is None and not (counts["nan_count"] or counts["inf_count"]):
                    self.fail(entry, f"{where}.{k} is missing, and the result was finite")
                errors[k] = None if t.get(k) is None else self.number(entry, f"{where}.{k}", t[k])
            plain = t.get("plain_max_abs_error")
            plain = None if plain is None else self.number(entry, f"{where}.plain_max_abs_error", plain)
            bound = self.number(entry, f"{where}.bound", t.get("bound"), positive=True)
            optional = {k: None if t.get(k) is None else self.number(entry, f"{where}.{k}", t[k], positive=k == "floor")
                        for k in _OPTIONAL_TENSOR_KEYS}
            tensors[name] = TensorError(errors["max_abs_error"], errors["rel_rms_error"], plain, bound, **counts,
                                        **optional)
        return Accuracy(tensors, fields["plain_fits"], floor)

    def benchmarks(self, cells: dict[str, CellRecord], device: str) -> int:
        """Attach each benchmark to its cell; returns how many benchmarks are not attnbench's."""
        other = 0
        entries = self.data["benchmarks"]
        plain_stats = _plain_stats(entries)  # every benchmark's statistics at once; else each one's, named
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                self.fail(f"benchmarks[{i}]", "not an object")
            name = entry.get("fullname")
            if not isinstance(name, str) or not name:
                self.fail(f"benchmarks[{i}]", "fullname is missing")
            info, params = entry.get("extra_info"), entry.get("params")
            ours = (isinstance(info, dict) and ("pass" in info or "variant" in info)) or (
                self.version > 1 and isinstance(params, dict) and "variant" in params)
            if not ours:
                other += 1  # a benchmark of another suite in the same run
                continue
            where = f"benchmark {name}"
            info = self.mapping(where, "extra_info", info)
            fields = self.mapping(where, "params", info if self.version == 1 else params)
            key = self.cell_key(where, fields, device)
            pass_name = info.get("pass")
            if pass_name not in PASSES:
                self.fail(where, f"pass is {pass_name!r}, expected one of {', '.join(PASSES)}")
            rec = cells.get(key)
            if rec is None:
                self.fail(where, f"its cell {key} has no record under attnbench.cells")
            if pass_name in rec.passes:
                self.fail(where, f"a second {pass_name} result for cell {key}")
            stats = entry["stats"] if plain_stats else self.stats(where, entry.get("stats"))
            problem = _impossible_stats(stats)
            if problem is not None:
                self.fail(where, problem)
            flops = self.number(where, "extra_info.flops", info.get("flops"), positive=True)
            checks = {k: info[k] for k in OPTIONAL_PASS_KEYS if info.get(k) is not None}
            if checks and not _plain_numbers(list(checks.values())):
                checks = {k: self.number(where, f"extra_info.{k}", value) for k, value in checks.items()}
            options = entry.get("options") if isinstance(entry.get("options"), dict) else {}
            rec.passes[pass_name] = PassResult(name, pass_name, stats, flops, checks, options)
        return other


#: what the order of a benchmark's statistics may be off by: float rounding of the same numbers
_ORDER_SLACK = 1e-9
#: statistics that are times of a round: a round takes time, so none may be 0
TIME_STATS = ("min", "max", "mean", "median", "q1", "q3")


def _impossible_stats(stats: dict) -> str | None:
    """Why well-typed statistics cannot be a benchmark's (a time of 0, min above the median, ...), or None.

    Every figure the reader accepts is one the tools can use: a median of 0 would divide by zero in the report
    and read as a -100% change in the gate."""
    for name in TIME_STATS:
        if stats[name] <= 0:
            return f"stats.{name} is {stats[name]!r}: a round takes time, expected > 0"
    order = [("min", stats["min"]), ("q1", stats["q1"]), ("median", stats["median"]), ("q3", stats["q3"]),
             ("max", stats["max"])]
    for (low_name, low), (high_name, high) in zip(order, order[1:]):
        if low > high * (1 + _ORDER_SLACK):
            return f"stats.{low_name} ({low!r}) is above stats.{high_name} ({high!r})"
    if not stats["min"] * (1 - _ORDER_SLACK) <= stats["mean"] <= stats["max"] * (1 + _ORDER_SLACK):
        return f"stats.mean ({stats['mean']!r}) is outside [min, max] ({stats['min']!r}, {stats['max']!r})"
    return None


def _plain_accuracy(fields) -> Accuracy | None:
    """A cell's accuracy record read in bulk when it is plainly valid: every figure a finite number >= 0, the
    counts integers, only the plain computation's error absent (it did not fit). None: check it field by field."""
    if type(fields) is not dict or type(fields.get("plain_fits")) is not bool:
        return None
    tensors_fields = fields.get("tensors")
    if type(tensors_fields) is not dict or tensors_fields.keys() != set(TENSORS):
        return None
    tensors = [tensors_fields[name] for name in TENSORS]
    if not all(type(t) is dict for t in tensors):
        return None
    figures = [fields.get("floor"), *(t.get(k) for t in tensors for k in ("max_abs_error", "rel_rms_error", "bound")),
               *(t[k] for t in tensors for k in ("plain_max_abs_error", *_OPTIONAL_TENSOR_KEYS) if t.get(k) is not None)]
    counts = [t.get(k) for t in tensors for k in ("nan_count", "inf_count")]
    if not (_plain_numbers(figures) and _plain_numbers(counts, integer=True)):
        return None
    if not (fields["floor"] > 0 and all(t["bound"] > 0 and t.get("floor", 1) > 0 for t in tensors)):
        return None  # a bound or floor of 0: the field checks name it
    return Accuracy({name: TensorError(t["max_abs_error"], t["rel_rms_error"], t.get("plain_max_abs_error"), t["bound"],
                                       t["nan_count"], t["inf_count"], t.get("ref_max_abs"), t.get("floor"))
                     for name, t in zip(TENSORS, tensors)},
                    fields["plain_fits"], fields["floor"])


def _plain_stats(entries: list) -> bool:
    """Whether every benchmark's statistics are plainly valid (what :meth:`_Reader.stats` accepts as they are:
    REQUIRED_STATS finite numbers >= 0, rounds a positive integer, the rounds' times where saved), checked at
    once for the whole run."""
    stats = [entry.get("stats") if type(entry) is dict else None for entry in entries]
    if not all(type(s) is dict for s in stats):
        return False
    saved = [s["data"] for s in stats if s.get("data") is not None]
    if not all(type(data) is list and data for data in saved):
        return False
    return (_plain_numbers([s.get(name) for s in stats for name in REQUIRED_STATS])
            and _plain_numbers([s.get("rounds") for s in stats], integer=True, positive=True)
            and (not saved or _plain_numbers([x for data in saved for x in data])))
