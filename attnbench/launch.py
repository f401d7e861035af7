"""``attnbench run [--gpus all|0,1,...] [-- PYTEST ARGS]``: the suite in shards, one pytest process per GPU, merged.

Shard i of N runs ``python -m pytest benchmarks --attn-shard i/N`` with ``CUDA_VISIBLE_DEVICES`` set to its GPU;
every line a shard prints is shown as it comes, prefixed with the shard. When all have ended, the shards' runs
are merged (``attnbench merge``) and saved where ``--benchmark-autosave`` would save a run (the next
``.benchmarks/<machine>/NNNN_<commit>_<time>.json``, or ``incomplete_...`` for an incomplete run), or to ``-o``.
A shard that crashes is reported, its cells are kept in the merged run as not measured (and the run is
incomplete, saying why); the other shards' results are kept.

``--cpu-shards N`` runs N CPU shards instead, each pinned to its own share of this process's cores (and as
many torch threads): what the GPU shards do for GPUs, on one machine's cores. Exit codes:

    0  every shard passed; the merged run is complete and saved
    1  a shard failed (a wrong result, a regression against --benchmark-compare) or crashed; what the shards
       measured is saved, an incomplete run as such
    2  nothing was saved: bad arguments, no GPU for --gpus, or no shard run to merge (the reason is printed)
    3  the merged run cannot be written
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .merge import CannotMerge, merge
from .record import DEFAULT_STORAGE, RunError, load, write_json_atomically
from .signals import sigterm_as_ctrl_c

EXIT_OK, EXIT_SHARD_FAILED, EXIT_CANNOT_RUN, EXIT_OUTPUT_ERROR = 0, 1, 2, 3
DEFAULT_TESTS = "benchmarks"
#: pytest options the launcher sets for every shard itself.
OWN_PYTEST_OPTIONS = ("--attn-shard", "--benchmark-json", "--benchmark-save", "--benchmark-autosave")
#: what pytest's exit statuses mean, for the report of a shard that left no run.
PYTEST_EXITS = {1: "tests failed", 2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests collected"}


@dataclass
class Shard:
    """One shard process: where it runs and what it left."""

    index: int
    count: int
    device: str  # cuda or cpu
    gpu: str | None = None  # its CUDA_VISIBLE_DEVICES
    cores: tuple[int, ...] = ()  # the CPU cores it is pinned to (CPU shards)
    json_path: Path | None = None
    process: subprocess.Popen | None = None
    returncode: int | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        where = f"gpu {self.gpu}" if self.device == "cuda" else f"cpu {_ranges(self.cores)}"
        return f"shard {self.index}/{self.count} {where}"


def _ranges(cores: tuple[int, ...]) -> str:
    """(0, 1, 2, 5) -> '0-2,5'."""
    parts, start = [], None
    for i, core in enumerate(cores):
        if start is None:
            start = core
        if i + 1 == len(cores) or cores[i + 1] != core + 1:
            parts.append(str(start) if start == core else f"{start}-{core}")
            start = None
    return ",".join(parts) or "-"


def parse_gpus(text: str) -> tuple[str, ...] | str:
    """'all', or GPU indices as this process sees them, comma-separated: '0,1,3'."""
    if str(text).strip() == "all":
        return "all"
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items or not all(item.isdigit() for item in items):
        raise argparse.ArgumentTypeError(f"{text!r} is not all or a list of GPU indices (expected e.g. all or 0,1,3)")
    if len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"{text!r} names a GPU twice (one shard per GPU)")
    return tuple(str(int(item)) for item in items)


def parse_cpu_shards(text: str) -> int:
    """A number of CPU shards, at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of CPU shards (expected an integer >= 1)")
    return value


class CannotRun(Exception):
    """The shards cannot be started; the message says why."""


def plan(args) -> list[Shard]:
    """The shards: one per GPU asked for, or ``--cpu-shards`` shards pinned to disjoint cores."""
    if args.cpu_shards is not None:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))
        count = args.cpu_shards
        if count > len(cores):
            raise CannotRun(f"--cpu-shards {count}: this process may use {len(cores)} core(s), so at most "
                            f"{len(cores)} CPU shards can each have one")
        per, extra = divmod(len(cores), count)
        shares, first = [], 0
        for i in range(count):
            size = per + (1 if i < extra else 0)  # contiguous cores, the first shards one more when uneven
            shares.append(tuple(cores[first:first + size]))
            first += size
        return [Shard(i + 1, count, "cpu", cores=shares[i]) for i in range(count)]
    import torch

    if not torch.cuda.is_available():
        raise CannotRun("no CUDA GPU is visible on this machine (torch.cuda.is_available() is False), so there is "
                        "no GPU to give each shard; run CPU shards with --cpu-shards N")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = [g.strip() for g in visible.split(",") if g.strip()] if visible else []
    seen = seen[:torch.cuda.device_count()] or [str(i) for i in range(torch.cuda.device_count())]
    if args.gpus in (None, "all"):
        gpus = seen
    else:
        beyond = [g for g in args.gpus if int(g) >= len(seen)]
        if beyond:
            raise CannotRun(f"--gpus {','.join(args.gpus)}: GPU {', '.join(beyond)} does not exist here; this process "
                            f"sees {len(seen)} GPU(s), 0 to {len(seen) - 1}")
        gpus = [seen[int(g)] for g in args.gpus]
    return [Shard(i + 1, len(gpus), "cuda", gpu=gpu) for i, gpu in enumerate(gpus)]


def _own_option(arg: str) -> str | None:
    for option in OWN_PYTEST_OPTIONS:
        if arg == option or arg.startswith(option + "="):
            return option
    return None


def pytest_command(shard: Shard, pytest_args: list[str]) -> list[str]:
    """The shard's pytest command line: the suite, its shard, where it saves, then the user's arguments."""
    paths = [a for a in pytest_args if not a.startswith("-") and Path(a.split("::")[0]).exists()]
    return [sys.executable, "-m", "pytest", *([] if paths else [DEFAULT_TESTS]), "-v",
            f"--attn-shard={shard.index}/{shard.count}", f"--benchmark-json={shard.json_path}", *pytest_args]


def _environment(shard: Shard) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if shard.device == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = shard.gpu
    else:
        threads = str(max(1, len(shard.cores)))
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


def log_path(shard: Shard) -> Path:
    """Where the shard's output goes: a file beside its run, never a pipe, so a shard outlives this command."""
    return shard.json_path.with_suffix(".log")


def _stream(shard: Shard, out, lock: threading.Lock) -> None:
    """Print each line of the shard's output as it comes, prefixed with the shard: read from its log file until
    the shard has ended and the file is read to its end."""
    with open(log_path(shard), encoding="utf-8", errors="replace") as log:
        pending = ""
        while True:
            ended = shard.process.poll() is not None  # checked before reading: what it wrote before ending is read
            chunk = log.readline()
            if not chunk:
                if ended:
                    break
                time.sleep(0.05)
                continue
            pending += chunk
            if not pending.endswith("\n") and not ended:
                continue
            shard.lines.append(pending)
            with lock:
                out.write(f"[{shard.label}] {pending}" if pending.endswith("\n") else f"[{shard.label}] {pending}\n")
                out.flush()
            pending = ""


def start(shards: list[Shard], pytest_args: list[str], out) -> list[threading.Thread]:
    """Start every shard's pytest, then a thread per shard showing its output. Each shard has a session of its
    own: a signal to this command's process group (Ctrl-C in a terminal, a job timeout) reaches this process
    alone, and ``wait`` passes Ctrl-C on to every shard once, so none is interrupted again while it saves."""
    for shard in shards:  # all started before any thread: a pinning preexec_fn must not fork beside threads

        def pin(cores=shard.cores):
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(0, cores)

        with open(log_path(shard), "wb") as log:  # a file, not a pipe: killing this command breaks no shard
            shard.process = subprocess.Popen(pytest_command(shard, pytest_args), env=_environment(shard),
                                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             preexec_fn=pin if shard.cores else None, start_new_session=True)
    lock = threading.Lock()
    threads = [threading.Thread(target=_stream, args=(shard, out, lock), daemon=True) for shard in shards]
    for thread in threads:
        thread.start()
    return threads


def wait(shards: list[Shard], threads: list[threading.Thread]) -> bool:
    """Wait for every shard; on Ctrl-C or SIGTERM pass Ctrl-C on to the shards (they save what they measured,
    and this process merges it). True when interrupted."""
    interrupted = False
    with sigterm_as_ctrl_c():
        while True:
            try:
                for shard in shards:
                    shard.returncode = shard.process.wait()
                break
            except KeyboardInterrupt:
                interrupted = True
                for shard in shards:
                    if shard.process.poll() is None:
                        shard.process.send_signal(signal.SIGINT)
    for thread in threads:
        thread.join()
    return interrupted


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}" + (f", {PYTEST_EXITS[code]}" if code in PYTEST_EXITS else "")


def collect(shards: list[Shard]):
    """The runs the shards saved, and for each shard without a usable run, why."""
    runs, lost = [], {}
    for shard in shards:
        # pytest-benchmark creates --benchmark-json's file when it parses its options: empty is no run
        if not shard.json_path.exists() or shard.json_path.stat().st_size == 0:
            lost[shard.index] = f"left no run ({_exit_text(shard.returncode)})"
            continue
        try:
            run = load(shard.json_path, f"shard {shard.index}/{shard.count}")
        except RunError as exc:
            lost[shard.index] = f"saved a run that cannot be read ({_exit_text(shard.returncode)}): {exc}"
            continue
        if run.shard is None or (run.shard.index, run.shard.count) != (shard.index, shard.count):
            lost[shard.index] = f"saved a run that is not shard {shard.index}/{shard.count}"
            continue
        runs.append(run)
    return runs, lost


def storage_directory(storage: str) -> Path:
    """The folder pytest-benchmark's autosave would use in ``storage``: ``<storage>/<machine id>``."""
    from .pb_compat import get_machine_id

    if "://" in storage and not storage.startswith("file://"):
        raise CannotRun(f"--storage {storage}: attnbench run saves into a folder (file://PATH or PATH)")
    return Path(storage.removeprefix("file://")) / get_machine_id()


def _option_value(pytest_args: list[str], option: str) -> str | None:
    """The value of ``option`` among pytest's arguments (``--opt VALUE`` or ``--opt=VALUE``; the last wins)."""
    value = None
    for i, arg in enumerate(pytest_args):
        if arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
        elif arg == option and i + 1 < len(pytest_args):
            value = pytest_args[i + 1]
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``run`` subcommand's arguments."""
    parser.description = (
        "Run the benchmark suite in shards, one pytest process per GPU (pinned with CUDA_VISIBLE_DEVICES), "
        "show every shard's progress, merge their runs and save the merged run where --benchmark-autosave "
        "would. Arguments after -- go to every shard's pytest. Exit 0: all passed; 1: a shard failed or "
        "crashed (what was measured is saved); 2: nothing saved (bad arguments, no GPU, nothing to merge); "
        "3: the merged run cannot be written."
    )
    devices = parser.add_mutually_exclusive_group()
    devices.add_argument("--gpus", type=parse_gpus, metavar="all|0,1,...",
                         help="the GPUs, one shard each, by the index this process sees (default: all)")
    devices.add_argument("--cpu-shards", type=parse_cpu_shards, metavar="N",
                         help="run N CPU shards instead, each pinned to its own share of the cores")
    parser.add_argument("-o", "--output", type=Path, metavar="RUN.json",
                        help="write the merged run here instead of autosaving it into the storage")
    parser.add_argument("--storage", metavar="PATH",
                        help="where to autosave (default: --benchmark-storage among the pytest arguments, "
                             f"else {DEFAULT_STORAGE})")
    parser.add_argument("pytest_args", nargs="*", metavar="PYTEST ARGS",
                        help="after --: arguments for every shard's pytest (e.g. --attn-preset fa2-paper)")
    parser.set_defaults(run=run)


def run(args) -> int:
    """Entry point of ``attnbench run``."""
    from .storage import StorageBusy, StorageLock, save_numbered

    out = sys.stdout
    pytest_args = list(args.pytest_args)
    own = sorted({o for a in pytest_args if (o := _own_option(a))})
    if own:
        print(f"attnbench run: {', '.join(own)} among the pytest arguments: attnbench run sets these for every "
              "shard itself (save with -o or --storage)", file=sys.stderr)
        return EXIT_CANNOT_RUN
    lock = None
    try:
        shards = plan(args)
        device = _option_value(pytest_args, "--attn-device")
        if device not in (None, "auto", shards[0].device):
            raise CannotRun(f"--attn-device {device} among the pytest arguments, but the shards run on "
                            f"{'GPUs (--gpus)' if shards[0].device == 'cuda' else 'the CPU (--cpu-shards)'}")
        directory = None
        if args.output is None:
            storage = args.storage or _option_value(pytest_args, "--benchmark-storage") or DEFAULT_STORAGE
            directory = storage_directory(storage)
            lock = StorageLock(directory.parent)
    except (CannotRun, StorageBusy) as exc:
        print(f"attnbench run: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    work = Path(tempfile.mkdtemp(prefix="attnbench-shards-"))
    keep = False
    try:
        for shard in shards:
            shard.json_path = work / f"shard-{shard.index}-of-{shard.count}.json"
        print(f"attnbench run: {len(shards)} shard(s): " + "; ".join(s.label for s in shards), file=out, flush=True)
        threads = start(shards, pytest_args, out)
        interrupted = wait(shards, threads)
        runs, lost = collect(shards)
        for shard in shards:
            if shard.index in lost:
                print(f"attnbench run: {shard.label} {lost[shard.index]}; its cells are marked not measured",
                      file=out, flush=True)
            elif shard.returncode != 0:
                print(f"attnbench run: {shard.label} ended with {_exit_text(shard.returncode)}", file=out, flush=True)
        try:
            merged = merge(runs, lost=lost, visible_devices={s.index: s.gpu for s in shards if s.gpu is not None},
                           partial=interrupted)
        except CannotMerge as exc:
            keep = True
            print(f"attnbench run: cannot merge: {exc} (the shards' runs are kept in {work})", file=sys.stderr)
            return EXIT_CANNOT_RUN
        try:
            if args.output is not None:
                write_json_atomically(args.output, merged.data)
                saved = args.output
            else:
                saved = save_numbered(directory, _autosave_name(), merged.data, complete=merged.complete)
        except OSError as exc:
            keep = True
            print(f"attnbench run: cannot write the merged run: {exc.strerror or exc} (the shards' runs are kept "
                  f"in {work})", file=sys.stderr)
            return EXIT_OUTPUT_ERROR
        measured = sum(rec.status in ("ok", "wrong") for rec in merged.cells.values())
        print(f"attnbench run: merged {len(runs)} of {len(shards)} shard run(s), {measured} of {len(merged.cells)} "
              f"cells measured -> {saved}", file=out, flush=True)
        if not merged.complete:
            print(f"attnbench run: INCOMPLETE RUN: {merged.stop_reason}", file=out, flush=True)
        failed = interrupted or lost or any(s.returncode != 0 for s in shards) or not merged.complete
        return EXIT_SHARD_FAILED if failed else EXIT_OK
    finally:
        if lock is not None:
            lock.release()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _autosave_name() -> str:
    """The name --benchmark-autosave gives a run: the commit and the time (pytest-benchmark's tag)."""
    from .pb_compat import get_tag

    return get_tag()
