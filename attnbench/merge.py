"""``attnbench merge SHARD.json... -o RUN.json``: the runs of N shards (``--attn-shard I/N``) as one run.

The merged file is a pytest-benchmark run like any other (``pytest-benchmark compare`` reads it) that the
gate and the report read as if one process had made it; each cell names the shard that measured it, and
``machine_info.attnbench.shards`` says where each shard ran (host, GPU). Shards that do not make one run
are refused, with the reason: a run that is not a shard or is incomplete, different grids, environments,
timing modes, round options, planted regressions or commits, and cells measured twice or by no shard
(named). Exit codes:

    0  merged
    2  the shards do not make one run (the message says why), or bad arguments
    3  the merged run cannot be written
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .compare import environment_mismatches
from .record import (CellRecord, Run, RunError, ShardMachine, load, merged_run, output_is_an_input, parse,
                     write_json_atomically)

EXIT_OK, EXIT_CANNOT_MERGE, EXIT_OUTPUT_ERROR = 0, 2, 3
#: cells named in a message, at most.
SHOWN_CELLS = 8


class CannotMerge(Exception):
    """The shards do not make one run; the message says why."""


def _names(keys) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:SHOWN_CELLS])
    return shown + (f" and {len(keys) - SHOWN_CELLS} more" if len(keys) > SHOWN_CELLS else "")


def _where(run: Run) -> str:
    return f"{run.path} (shard {run.shard.label})" if run.shard else str(run.path)


def check_same_run(runs: list[Run]) -> None:
    """CannotMerge unless ``runs`` are shards of one grid, measured alike, from one commit."""
    for run in runs:
        if run.shard is None:
            raise CannotMerge(f"{run.path} is not a shard's run (no attnbench.shard): measure each shard with "
                              "`pytest benchmarks --attn-shard I/N --benchmark-json=SHARD.json`")
    first = runs[0]
    for run in runs[1:]:
        if run.shard.count != first.shard.count:
            raise CannotMerge(f"{_where(first)} is one of {first.shard.count} shards, {_where(run)} one of "
                              f"{run.shard.count}: merge the shards of one split")
        if run.preset != first.preset or run.shard.grid_cells != first.shard.grid_cells:
            only_first = [k for k in first.shard.grid_cells if k not in set(run.shard.grid_cells)]
            only_run = [k for k in run.shard.grid_cells if k not in set(first.shard.grid_cells)]
            detail = "; ".join(filter(None, [
                f"preset {first.preset} vs {run.preset}" if run.preset != first.preset else "",
                f"only in {first.path}: {_names(only_first)}" if only_first else "",
                f"only in {run.path}: {_names(only_run)}" if only_run else "",
                "the same cells in another order" if not only_first and not only_run else ""]))
            raise CannotMerge(f"the shards split different grids ({detail}): run every shard with the same "
                              "--attn-* options")
        if run.shard.partition_memory_bytes != first.shard.partition_memory_bytes:
            raise CannotMerge(f"the shards split the grid for different device memory ({_where(first)}: "
                              f"{first.shard.partition_memory_bytes} bytes, {_where(run)}: "
                              f"{run.shard.partition_memory_bytes}): run every shard on the same kind of device")
        mismatches = environment_mismatches(first, run)
        if mismatches:
            raise CannotMerge(f"the shards ran in different environments ({'; '.join(mismatches)}; {_where(first)} "
                              f"vs {_where(run)}): their times do not belong in one run")
        if run.timing != first.timing:
            raise CannotMerge(f"the shards were timed differently ({_where(first)}: {first.timing.describe()}, "
                              f"{_where(run)}: {run.timing.describe()}): use the same --attn-timing and "
                              "--attn-flush-l2")
        if _options_key(run) and _options_key(first) and _options_key(run) != _options_key(first):
            raise CannotMerge(f"the shards ran with different round options ({_where(first)}: "
                              f"{_options_key(first)}, {_where(run)}: {_options_key(run)}): use the same "
                              "--benchmark-* options")
        if run.plants != first.plants:
            raise CannotMerge(f"the shards had different planted regressions ({_where(first)}: {first.plants}, "
                              f"{_where(run)}: {run.plants})")
        if _commit(run) != _commit(first):
            raise CannotMerge(f"the shards measured different code ({_where(first)}: {_commit_text(first)}, "
                              f"{_where(run)}: {_commit_text(run)}): measure every shard at one commit")


def _commit(run: Run) -> tuple:
    """The commit a run measured, and whether the tree had uncommitted changes."""
    return run.commit.get("id"), bool(run.commit.get("dirty"))


def _commit_text(run: Run) -> str:
    commit, dirty = _commit(run)
    return f"commit {str(commit)[:12]}" + (" with uncommitted changes" if dirty else "")


def _options_key(run: Run) -> list[str]:
    return sorted(json.dumps(options, sort_keys=True) for options in run.round_options())


def merge(runs: list[Run], *, lost: dict[int, str] | None = None, visible_devices: dict[int, str] | None = None,
          partial: bool = False) -> Run:
    """One run from shards' runs (its JSON in ``Run.data``); CannotMerge naming what does not fit.

    ``lost`` maps the index of a shard without a run to why (``attnbench run``: it crashed); the cells no
    run recorded are then kept as not measured (pending, with the reason) and the merged run is incomplete.
    ``partial`` (``attnbench run`` stopped by Ctrl-C or SIGTERM) takes the incomplete runs the stopped shards
    saved the same way. Otherwise every cell of the grid must be measured by exactly one shard, and every
    shard complete. ``visible_devices`` gives the CUDA_VISIBLE_DEVICES of lost shards.
    """
    lost = dict(lost or {})
    partial = partial or bool(lost)
    if not runs:
        raise CannotMerge("no shard left a run to merge" + (
            f" ({'; '.join(f'shard {i}: {why}' for i, why in sorted(lost.items()))})" if lost else ""))
    check_same_run(runs)
    count = runs[0].shard.count
    by_index: dict[int, list[Run]] = {}
    for run in runs:
        by_index.setdefault(run.shard.index, []).append(run)
    measured_by: dict[str, list[Run]] = {}
    for run in runs:
        for key in run.cells:
            measured_by.setdefault(key, []).append(run)
    twice = {key: found for key, found in measured_by.items() if len(found) > 1}
    if twice:
        repeated = sorted({i for i, found in by_index.items() if len(found) > 1})
        cause = f" (shard {', '.join(f'{i}/{count}' for i in repeated)} given more than once)" if repeated else ""
        raise CannotMerge(f"{len(twice)} cell(s) measured by more than one shard{cause}: " + _names(
            f"{key} (in {', '.join(str(r.path) for r in found)})" for key, found in twice.items()))
    grid = runs[0].shard.grid_cells
    missing = [key for key in grid if key not in measured_by]
    absent = [i for i in range(1, count + 1) if i not in by_index]
    if missing and not partial:
        cause = f" (no run of shard {', '.join(f'{i}/{count}' for i in absent)})" if absent else ""
        raise CannotMerge(f"{len(missing)} cell(s) of the grid measured by no shard{cause}: {_names(missing)}")
    if not partial:
        incomplete = [run for run in runs if not run.complete]
        if incomplete:
            run = incomplete[0]
            raise CannotMerge(f"{_where(run)} is an incomplete run ({run.stop_reason}): its shard did not finish; "
                              "measure it again")

    reasons = [f"shard {i}/{count} {why}" for i, why in sorted(lost.items())]
    reasons += [f"shard {run.shard.label} stopped: {run.stop_reason}" for run in runs if not run.complete]
    if missing:
        reasons.append(f"{len(missing)} of {len(grid)} cells not measured")
    records = [_merged_record(key, measured_by, runs[0].device, lost) for key in grid]
    runs = sorted(runs, key=lambda r: r.shard.index)
    machines = [ShardMachine(run.shard.index, run.node, run.gpu_uuid, run.cuda_visible_devices,
                             run.machine.get("gpu_start"), run.machine.get("gpu_end"), tuple(run.flags))
                for run in runs]
    machines += [ShardMachine(i, cuda_visible_devices=(visible_devices or {}).get(i)) for i in lost]
    data = merged_run(runs, cells=records, complete=not reasons, stop_reason="; ".join(reasons),
                      shard_machines=sorted(machines, key=lambda m: m.index))
    return parse(data, role="merged run")  # what was written reads back (a RunError here is a bug in the merge)


def _merged_record(key: str, measured_by: dict[str, list[Run]], device: str, lost: dict[int, str]) -> CellRecord:
    """A cell's record in the merged run, naming its shard; a cell no shard measured is pending, saying why."""
    if key not in measured_by:
        shards = ", ".join(str(i) for i in sorted(lost))
        return CellRecord(_cell_from_key(key, device), "pending", f"not measured: shard {shards} left no run")
    run = measured_by[key][0]
    rec = run.cells[key]
    message = rec.message
    if rec.status == "pending":
        message = f"not measured: shard {run.shard.label} stopped ({run.stop_reason})"
    return dataclasses.replace(rec, message=message, shard=run.shard.index)


def _cell_from_key(key: str, device: str):
    """The cell a key names (grid.cell_key's inverse), for a cell only the grid's list of keys knows."""
    from .grid import Cell, parse_cell_key

    return Cell(device=device, **parse_cell_key(key))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``merge`` subcommand's arguments."""
    parser.description = (
        "Merge the runs of the N shards of one grid (pytest benchmarks --attn-shard I/N --benchmark-json=...) "
        "into one run. Exit 0: merged; 2: the shards do not make one run (the reason and the cells are named); "
        "3: the output cannot be written."
    )
    parser.add_argument("shards", metavar="SHARD.json", type=Path, nargs="+", help="the shards' runs")
    parser.add_argument("-o", "--output", metavar="RUN.json", type=Path, required=True,
                        help="where to write the merged run")
    parser.set_defaults(run=run)


def run(args) -> int:
    """Entry point of ``attnbench merge``."""
    clash = output_is_an_input(args.output, args.shards)
    if clash is not None:
        print(f"attnbench merge: -o {args.output} is the shard {clash}: merging would overwrite it; write the merged "
              "run elsewhere", file=sys.stderr)
        return EXIT_CANNOT_MERGE
    try:
        runs = [load(path, "shard") for path in args.shards]
        merged = merge(runs)
    except (RunError, CannotMerge) as exc:
        print(f"attnbench merge: cannot merge: {exc}", file=sys.stderr)
        return EXIT_CANNOT_MERGE
    try:
        write_json_atomically(args.output, merged.data)
    except OSError as exc:
        print(f"attnbench merge: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_OUTPUT_ERROR
    print(f"attnbench merge: {len(runs)} shards, {len(runs[0].shard.grid_cells)} cells -> {args.output}")
    return EXIT_OK
