"""``attnbench crosscheck [RUN.json]``: a saved run's medians against ``triton.testing.do_bench`` on this GPU.

``do_bench`` is the clock most attention kernels publish numbers with (FlashAttention's and Triton's
benchmarks, tritonbench): it flushes the L2 cache before every call and times each call with CUDA events.
For every timed cell of the run (or those ``--variants`` / ``--seq-lens`` pick) this re-creates the cell's
inputs and call exactly as the suite does (``attnbench.runner.CellRunner``) and times each pass with
``do_bench(..., return_mode="median")``; the backward as ``torch.autograd.grad`` of a kept forward
(``retain_graph``), which is how ``do_bench`` users time it. The table gives both medians and suite / do_bench.

Run it on the machine that measured the run, right after it: the two clocks are compared, not two machines.
Exit 0 with the table; 2 when it cannot judge (no CUDA GPU or Triton, an unreadable run, no cell to time);
with ``--tolerance PCT``, 1 when some cell's ratio is off 1 by more than PCT%.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

EXIT_OK, EXIT_OFF, EXIT_CANNOT_JUDGE = 0, 1, 2
PASSES = ("forward", "backward")


@dataclass(frozen=True)
class Row:
    cell: str
    pass_name: str
    suite_s: float
    do_bench_s: float

    @property
    def ratio(self) -> float:
        return self.suite_s / self.do_bench_s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_file", nargs="?", metavar="RUN.json",
                        help="a saved run (default: the newest under .benchmarks/)")
    parser.add_argument("--variants", help="only these variants (comma-separated)")
    parser.add_argument("--seq-lens", help="only these seq_lens (comma-separated)")
    parser.add_argument("--tolerance", type=float, metavar="PCT",
                        help="exit 1 when a cell's suite / do_bench ratio is off 1 by more than PCT%%")
    parser.add_argument("--rep-ms", type=float, default=100.0, metavar="MS",
                        help="do_bench's time budget per pass, in ms (default: 100)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE.json", help="also write the rows as JSON")
    parser.set_defaults(run=main)


def _bad(message: str) -> int:
    print(f"attnbench crosscheck: {message}", file=sys.stderr)
    return EXIT_CANNOT_JUDGE


def _csv(text: str | None, convert=str) -> set | None:
    if text is None:
        return None
    try:
        return {convert(part.strip()) for part in text.split(",") if part.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list") from None


def do_bench_medians(rec, rep_ms: float) -> dict[str, float]:
    """Seconds per pass of the cell of ``rec`` (a CellRecord), timed with do_bench as its users time it."""
    import torch
    from triton.testing import do_bench

    from .runner import CellRunner

    runner = CellRunner(rec.cell, max_time_s=0.0, min_rounds=1)
    q, k, v, grad_out = runner.inputs()
    attention = runner.attention
    medians = {"forward": do_bench(lambda: attention(q, k, v), rep=rep_ms, return_mode="median") / 1e3}
    out = attention(q, k, v)
    medians["backward"] = do_bench(lambda: torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True),
                                   rep=rep_ms, return_mode="median") / 1e3
    del out
    return medians


def crosscheck(run, *, variants: set | None, seq_lens: set | None, rep_ms: float, progress=None) -> list[Row]:
    rows = []
    for key, rec in run.cells.items():
        if rec.status not in ("ok", "wrong") or not all(rec.median_s(p) for p in PASSES):
            continue
        if (variants and rec.cell.variant not in variants) or (seq_lens and rec.cell.seq_len not in seq_lens):
            continue
        medians = do_bench_medians(rec, rep_ms)
        for pass_name in PASSES:
            rows.append(Row(key, pass_name, rec.median_s(pass_name), medians[pass_name]))
        if progress is not None:
            progress(rows[-2:])
    return rows


def table(rows: list[Row]) -> str:
    from . import render

    return render.table(["cell", "pass", "suite median ms", "do_bench median ms", "suite / do_bench"],
                        [[render.code(r.cell), r.pass_name, render.ms(r.suite_s), render.ms(r.do_bench_s),
                          f"{r.ratio:.3f}"] for r in rows])


def main(args: argparse.Namespace) -> int:
    from .record import RunError, load, newest_run

    try:
        variants, seq_lens = _csv(args.variants), _csv(args.seq_lens, int)
    except argparse.ArgumentTypeError as exc:
        return _bad(str(exc))
    try:
        import torch
        import triton.testing  # noqa: F401
    except ImportError as exc:
        return _bad(f"needs Triton's do_bench: {exc}")
    if not torch.cuda.is_available():
        return _bad("needs a CUDA GPU: do_bench times CUDA work, and this machine has none")
    try:
        path = args.run_file or newest_run()
        run = load(path)
    except (RunError, OSError) as exc:
        return _bad(str(exc))
    if run.device != "cuda":
        return _bad(f"{path} was measured on {run.device}, not a CUDA GPU")

    def progress(rows):
        print(f"  {rows[0].cell}: " + ", ".join(f"{r.pass_name} {r.ratio:.3f}" for r in rows), file=sys.stderr)

    rows = crosscheck(run, variants=variants, seq_lens=seq_lens, rep_ms=args.rep_ms, progress=progress)
    if not rows:
        return _bad("no timed cell of the run matches: nothing to compare")
    print(table(rows))
    worst = max(rows, key=lambda r: abs(r.ratio - 1))
    print(f"\n{len(rows)} passes; suite / do_bench from {min(r.ratio for r in rows):.3f} to "
          f"{max(r.ratio for r in rows):.3f} (timing {run.timing.describe()}); the furthest: {worst.cell} "
          f"{worst.pass_name} {worst.ratio:.3f}")
    if args.output is not None:
        args.output.write_text(json.dumps([r.__dict__ | {"ratio": r.ratio} for r in rows], indent=1) + "\n")
    if args.tolerance is not None and abs(worst.ratio - 1) * 100 > args.tolerance:
        print(f"attnbench crosscheck: {worst.cell} {worst.pass_name} is {abs(worst.ratio - 1) * 100:.1f}% off "
              f"do_bench, past --tolerance {args.tolerance:g}%", file=sys.stderr)
        return EXIT_OFF
    return EXIT_OK
