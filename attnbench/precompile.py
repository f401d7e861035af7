"""``attnbench precompile``: compile a grid's kernels and graphs before measuring it.

Two kinds of work happen on a cell's first call, inside the measuring process, one after another:

- triton_flash's autotuner compiles every candidate of a new key. :func:`attention_impls.triton_flash.precompile`
  compiles them all in parallel processes into Triton's on-disk cache, which the suite then reads. Without a
  CUDA GPU (or under TRITON_INTERPRET=1) there is nothing to compile: it says so.
- The variants that compile a graph per cell (``Variant.compiles_on``: flex and compiled under
  ``torch.compile``) run Dynamo, Inductor and Triton on it. :func:`compile_graphs` makes each cell's first
  forward and backward in parallel processes, which leaves Inductor's generated code and its Triton kernels
  in their on-disk caches; the run's own first call still traces the function, then finds the rest compiled.

Both only fill caches: a cell they could not prepare is compiled by the run itself, as without them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass

from attention_impls.parallel import map_in_processes

from .grid import (
    NO_MASK,
    PRESETS,
    Cell,
    cell_reason,
    expand,
    parse_causal,
    parse_dtypes,
    parse_positive_int,
    parse_positive_ints,
    parse_preset,
    parse_variants,
    split_mask_label,
)

#: graph-compiling processes at once by default: each holds a CUDA context and Inductor starts compile workers
#: of its own, so a few processes already keep the CPU busy.
DEFAULT_GRAPH_WORKERS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0].split(": ", 1)[1]
    parser.add_argument("--preset", type=parse_preset, default="seed", metavar="NAME",
                        help=f"the grid whose head_dims, dtypes and causal values to compile: {', '.join(PRESETS)} "
                             "(default: seed)")
    parser.add_argument("--head-dims", type=parse_positive_ints, metavar="D,D", help="instead of the preset's")
    parser.add_argument("--dtypes", type=parse_dtypes, metavar="DT,DT", help="instead of the preset's")
    parser.add_argument("--causal", type=parse_causal, metavar="BOOL,BOOL", help="instead of the preset's")
    parser.add_argument("--seq-lens", type=parse_positive_ints, metavar="N,N",
                        help="instead of the preset's (the graphs are compiled per cell; kernels for any length)")
    parser.add_argument("--variants", type=parse_variants, metavar="V,V",
                        help="the variants to compile for, among the preset's (default: all of them): "
                             "triton_flash's kernels, and a graph per cell for each variant that compiles one")
    parser.add_argument("--workers", type=parse_positive_int, metavar="N",
                        help="compiling processes (default: one per CPU core, at most 16, for kernels; "
                             f"at most {DEFAULT_GRAPH_WORKERS} for graphs)")
    parser.set_defaults(run=run)


@dataclass(frozen=True)
class GraphResult:
    """What :func:`compile_graphs` did: the cells whose graphs it compiled, those it could not (each a
    sentence; the run compiles them itself) and the wall time."""

    compiled: int
    failed: tuple[str, ...] = ()
    seconds: float = 0.0
    slowest: tuple[str, float] | None = None


def compile_cell(cell: Cell) -> tuple[str, float, str | None]:
    """The cell's first forward and backward, as the run makes them (same inputs, same per-cell preparation):
    returns (cell key, seconds, None) or (cell key, seconds, why it failed)."""
    import torch

    from .runner import CellRunner, release_memory

    def first_call() -> None:  # its tensors are gone when it returns, before the memory is released
        runner = CellRunner(cell, max_time_s=0.0, min_rounds=1)
        runner.prepare()
        q, k, v, grad_out = runner.inputs()
        runner.attention(q, k, v).backward(grad_out)
        if cell.device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    error = None
    try:
        first_call()
    except Exception as exc:  # noqa: BLE001 - a cell that cannot compile here is compiled (or fails) in the run
        error = _failure(cell, exc)
    try:
        release_memory()  # synchronizes: a device error the cell left behind surfaces here
    except Exception as exc:  # noqa: BLE001
        error = error or _failure(cell, exc)
    return cell.key, time.perf_counter() - start, error


def _failure(cell: Cell, exc: Exception) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{cell.key}: {type(exc).__name__}: {first_line}"


def compile_graphs(cells: list[Cell], *, workers: int | None = None,
                   progress: Callable[[str], None] | None = None) -> GraphResult:
    """Compile the graphs of the cells whose variant compiles one per cell on the cell's device, ``workers``
    processes at a time (default: at most DEFAULT_GRAPH_WORKERS; 1 compiles in this process). Other cells are
    passed over; ``progress`` is given a line as each cell finishes. TypeError for a ``workers`` that is not a
    positive int."""
    from attention_impls import get_variant

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise TypeError(f"workers must be a positive int or None, got {workers!r}")
    cells = [c for c in cells if c.device in get_variant(c.variant).compiles_on]
    if not cells:
        return GraphResult(compiled=0)
    start = time.perf_counter()
    workers = min(len(cells), workers or min(DEFAULT_GRAPH_WORKERS, os.cpu_count() or 1))
    done = 0

    def report(_index: int, result: tuple[str, float, str | None]) -> None:
        nonlocal done
        done += 1
        key, seconds, error = result
        if progress is not None:
            progress(f"[{done}/{len(cells)}] {key}: {'not compiled' if error else 'compiled'} in {seconds:.0f} s")

    try:
        results = map_in_processes(compile_cell, cells, workers, on_result=report)
    except (BrokenExecutor, OSError) as exc:  # a compiling process died (out of host memory, a crash) or could not
        # start: the run compiles what is left itself, as without precompiling
        why = (f"the compiling processes stopped ({type(exc).__name__}: {exc}); "
               f"none of the {len(cells)} cells is known to be compiled")
        return GraphResult(compiled=0, failed=(why,), seconds=time.perf_counter() - start)
    failed = tuple(error for _key, _s, error in results if error is not None)
    key, seconds, _ = max(results, key=lambda r: r[1])
    return GraphResult(compiled=len(cells) - len(failed), failed=failed, seconds=time.perf_counter() - start,
                       slowest=(key, seconds))


def _mask_kinds(preset) -> tuple[str, ...]:
    """The kernels' mask kinds the preset's cells use ("none" for plain and causal cells), among those
    triton_flash runs: its cells of other masks are left out of the grid, so nothing is compiled for them."""
    from attention_impls import get_variant

    supported = get_variant("triton_flash").masks
    kinds = (split_mask_label(label)[1].split(":", 1)[0] for label in preset.mask_labels())
    return tuple(dict.fromkeys(k for k in kinds if k == NO_MASK or k in supported))


def run(args: argparse.Namespace) -> int:
    import torch

    from attention_impls import VARIANTS

    preset = PRESETS[args.preset]
    variants = args.variants or preset.variants or tuple(VARIANTS)
    status = _kernels(args, preset) if "triton_flash" in variants else 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    graph_variants = tuple(name for name in variants if device in VARIANTS[name].compiles_on)
    if not graph_variants:
        return status
    try:
        cells, _left_out = expand(device, args.preset, variants=graph_variants, seq_lens=args.seq_lens,
                                  head_dims=args.head_dims, dtypes=args.dtypes, causal=args.causal)
    except ValueError as exc:
        print(f"attnbench precompile: {exc}", file=sys.stderr)
        return 2
    cells = [c for c in cells if cell_reason(VARIANTS[c.variant], c) is None]
    result = compile_graphs(cells, workers=args.workers,
                            progress=lambda line: print(f"attnbench precompile: {line}", flush=True))
    print(f"attnbench precompile: graphs of {result.compiled} {', '.join(graph_variants)} cells ({device}) compiled "
          f"in {result.seconds:.0f} s" + (f", the slowest {result.slowest[1]:.0f} s ({result.slowest[0]})"
                                          if result.slowest else ""))
    for error in result.failed:
        print(f"attnbench precompile: not compiled here (the run compiles it itself): {error}")
    return status


def _kernels(args: argparse.Namespace, preset) -> int:
    """triton_flash's kernels for the preset's (or the arguments') head_dims, dtypes, causal values and masks."""
    from attention_impls import triton_flash

    dtypes = [d for d in (args.dtypes or preset.dtypes) if d in ("fp16", "bf16", "fp32")]
    if not dtypes:
        print(f"attnbench precompile: triton_flash runs fp16, bf16 and fp32, not {', '.join(args.dtypes)}",
              file=sys.stderr)
        return 2
    try:
        result = triton_flash.precompile(args.head_dims or preset.head_dims, dtypes,
                                         causal=args.causal or preset.causal_values(),
                                         masks=_mask_kinds(preset), workers=args.workers)
    except (TypeError, ValueError) as exc:
        print(f"attnbench precompile: {exc}", file=sys.stderr)
        return 2
    if result.skipped:
        print(f"attnbench precompile: {result.skipped}")
        return 0
    print(f"attnbench precompile: {result.compiled} kernel variants in Triton's cache in {result.seconds:.0f} s"
          + (f"; {len(result.failed)} candidates do not compile on this GPU (the autotuner skips them too)"
             if result.failed else ""))
    return 0
