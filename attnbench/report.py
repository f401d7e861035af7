"""``attnbench report``: the seed's tables, a variant comparison and scaling fits, from a saved run."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

from .results import DEFAULT_STORAGE, CellResult, Run, RunError, load_run, newest_run

MIB = 2**20
#: n×n tensors kept for backward as the seed write-up claims them (its "Memory Comparison" table).
SEED_CLAIMED_NXN = {"naive": 3, "torch_softmax": 2, "weights_only": 1, "sdpa_flash": 0}
#: the memory model is held to this relative error on cells at least this large.
MODEL_CHECK_MIN_BYTES = 100 * MIB
#: the timing check covers benchmarks of at least this median.
TIMING_CHECK_MIN_S = 1e-4
#: scaling exponents are fitted on this many of the largest sequence lengths.
SCALING_FIT_POINTS = 3


def _fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt_mib(nbytes: float | None) -> str:
    return "–" if nbytes is None else f"{nbytes / MIB:.1f}"


def _cell_text(cell: CellResult | None, value: str) -> str:
    if cell is None:
        return "–"
    if cell.status == "oom-predicted":
        return "OOM (pred.)"
    if cell.status == "oom-measured":
        return "OOM"
    return value


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _groups(run: Run) -> dict[tuple, list[CellResult]]:
    """Cells by (variant, dtype, causal), in the run's order."""
    groups: dict[tuple, list[CellResult]] = defaultdict(list)
    for cell in run.cells.values():
        groups[(cell.info["variant"], cell.info["dtype"], cell.info["causal"])].append(cell)
    return groups


def _memory_before_backward(cell: CellResult) -> float | None:
    return cell.extra("mem_before_backward_bytes")


def seed_tables(run: Run) -> list[str]:
    """Per variant/dtype/mask: forward ms, backward ms and memory before backward (rows seq_len, cols head_dim)."""
    lines: list[str] = []
    on_cuda = any(_memory_before_backward(c) is not None for c in run.cells.values())
    memory_title = "Memory before backward (MiB)" if on_cuda else "Saved for backward, census (MiB)"
    for (variant, dtype, causal), cells in _groups(run).items():
        seq_lens = sorted({c.info["seq_len"] for c in cells})
        head_dims = sorted({c.info["head_dim"] for c in cells})
        by_shape = {(c.info["seq_len"], c.info["head_dim"]): c for c in cells}
        shapes = sorted({(c.info["batch"], c.info["heads"]) for c in cells})
        shape_note = ", ".join(f"batch {b} × heads {h}" for b, h in shapes)
        lines += [f"### {variant} · {dtype} · {'causal' if causal else 'non-causal'} ({shape_note})", ""]
        for title, value in (
            ("Forward (ms)", lambda c: _fmt_ms(c.median_s("forward"))),
            ("Backward (ms)", lambda c: _fmt_ms(c.median_s("backward"))),
            (memory_title, lambda c: _fmt_mib(_memory_before_backward(c) if on_cuda else c.extra("saved_bytes"))),
        ):
            rows = []
            for s in seq_lens:
                row = [str(s)]
                for d in head_dims:
                    cell = by_shape.get((s, d))
                    row.append(_cell_text(cell, value(cell) if cell is not None else ""))
                rows.append(row)
            lines += [f"**{title}**", ""] + _table(["seq_len \\ head_dim"] + [str(d) for d in head_dims], rows) + [""]
    return lines


def _largest_common_cell(run: Run) -> tuple | None:
    """The largest (seq_len, head_dim, batch, heads, dtype, causal) at which every variant present was measured."""
    shape_variants: dict[tuple, dict[str, CellResult]] = defaultdict(dict)
    variants_per_mode: dict[tuple, set] = defaultdict(set)
    for cell in run.cells.values():
        i = cell.info
        mode = (i["dtype"], i["causal"])
        variants_per_mode[mode].add(i["variant"])
        if cell.status == "ok":
            shape_variants[(i["seq_len"], i["head_dim"], i["batch"], i["heads"], *mode)][i["variant"]] = cell
    complete = [s for s, vs in shape_variants.items() if set(vs) == variants_per_mode[s[4:]]]
    if not complete:
        return None
    return max(complete, key=lambda s: (s[0], s[1]))


def comparison(run: Run) -> list[str]:
    """The seed's memory comparison, measured: every variant at the largest cell all of them ran."""
    shape = _largest_common_cell(run)
    if shape is None:
        return ["No cell was measured for every variant, so there is no like-for-like comparison.", ""]
    seq_len, head_dim, batch, heads, dtype, causal = shape
    cells = [c for c in run.cells.values()
             if (c.info["seq_len"], c.info["head_dim"], c.info["batch"], c.info["heads"], c.info["dtype"],
                 c.info["causal"]) == shape]
    rows = []
    for c in cells:
        v = c.info["variant"]
        rows.append([
            v, str(c.extra("saved_nxn")), str(SEED_CLAIMED_NXN.get(v, "–")), _fmt_mib(c.extra("saved_bytes")),
            _fmt_mib(_memory_before_backward(c)), _fmt_mib(c.extra("peak_bytes")),
            _fmt_ms(c.median_s("forward")), _fmt_ms(c.median_s("backward")),
            _tflops(c, "forward"), _tflops(c, "backward"),
        ])
    header = ["variant", "n×n saved (measured)", "seed claims", "saved MiB", "before backward MiB", "peak MiB",
              "fwd ms", "bwd ms", "fwd TFLOP/s", "bwd TFLOP/s"]
    title = (f"### Variants at seq_len {seq_len}, head_dim {head_dim}, batch {batch}, heads {heads}, {dtype}, "
             f"{'causal' if causal else 'non-causal'}")
    return [title, ""] + _table(header, rows) + [""]


def _tflops(cell: CellResult, pass_name: str) -> str:
    entry = cell.passes.get(pass_name)
    if not entry:
        return "–"
    return f"{entry['extra_info']['flops'] / entry['stats']['median'] / 1e12:.2f}"


def fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x): the scaling exponent (None with fewer than 2 points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def scaling(run: Run) -> list[str]:
    """Fitted exponents of time and memory in seq_len, per variant, at its largest head_dim."""
    rows = []
    for (variant, dtype, causal), cells in _groups(run).items():
        head_dim = max(c.info["head_dim"] for c in cells)
        ok = sorted((c for c in cells if c.info["head_dim"] == head_dim and c.status == "ok"),
                    key=lambda c: c.info["seq_len"])[-SCALING_FIT_POINTS:]
        xs = [c.info["seq_len"] for c in ok]

        def exponent(values):
            slope = fit_exponent(xs, values)
            return "–" if slope is None else f"{slope:.2f}"

        memory = [(_memory_before_backward(c) or c.extra("saved_bytes")) for c in ok]
        rows.append([variant, dtype, "causal" if causal else "full", str(head_dim),
                     f"{xs[0]}–{xs[-1]}" if xs else "–",
                     exponent([c.median_s("forward") for c in ok]), exponent([c.median_s("backward") for c in ok]),
                     exponent(memory)])
    header = ["variant", "dtype", "mask", "head_dim", "seq_len range", "fwd time ∝ n^", "bwd time ∝ n^",
              "memory ∝ n^"]
    return (["### Scaling exponents", "",
             f"Least-squares slope of log(value) on log(seq_len) over the {SCALING_FIT_POINTS} largest measured "
             "seq_lens: 2 is O(n²), 1 is O(n). Memory is before backward on CUDA, the census on CPU.", ""]
            + _table(header, rows) + [""])


def memory_model_check(run: Run) -> list[str]:
    """Worst relative error of the current memory model against this run's measured CUDA figures."""
    import torch

    from .grid import DTYPES
    from .memory_model import predict

    worst: dict[tuple[str, str], tuple[float, str, float, float]] = {}
    checked = 0
    for c in run.cells.values():
        if c.status != "ok" or c.extra("mem_before_backward_bytes") is None:
            continue
        i = c.info
        try:
            prediction = predict(i["variant"], batch=i["batch"], heads=i["heads"], seq_len=i["seq_len"],
                                 head_dim=i["head_dim"], dtype=DTYPES.get(i["dtype"], torch.float32),
                                 causal=i["causal"])
        except ValueError:  # a variant this checkout no longer registers
            continue
        for figure, predicted in (("mem_before_backward_bytes", prediction.before_backward_bytes),
                                  ("peak_bytes", prediction.peak_bytes)):
            measured = c.extra(figure)
            if not measured or measured < MODEL_CHECK_MIN_BYTES:
                continue
            checked += 1
            error = abs(predicted - measured) / measured
            key = (i["variant"], figure)
            if key not in worst or error > worst[key][0]:
                worst[key] = (error, c.key, predicted, measured)
    if not worst:
        return []
    overall = max(worst.values())
    rows = [[variant, figure, f"{e:.1%}", cell, _fmt_mib(p), _fmt_mib(m)]
            for (variant, figure), (e, cell, p, m) in worst.items()]
    return (["### Memory model", "",
             f"This checkout's `attnbench.memory_model.predict` against the run's measured figures: "
             f"{checked} figures of at least {MODEL_CHECK_MIN_BYTES // MIB} MiB; worst {overall[0]:.1%} "
             f"({overall[1]}). Worst cell per variant and figure:", ""]
            + _table(["variant", "figure", "worst error", "cell", "predicted MiB", "measured MiB"], rows) + [""])


def timing_check(run: Run) -> list[str]:
    """Suite median against the independent CUDA-event median (runs made with --attn-timing-check)."""
    ratios = []
    for c in run.cells.values():
        for pass_name, entry in c.passes.items():
            event = entry.get("extra_info", {}).get("event_median_s")
            median = entry["stats"]["median"]
            if event and median >= TIMING_CHECK_MIN_S:
                ratios.append((abs(median / event - 1), median, event, f"{pass_name} {c.key}"))
    if not ratios:
        return []
    worst = max(ratios)
    within = sum(r[0] <= 0.05 for r in ratios)
    return ["### Timing check", "",
            f"{within} of {len(ratios)} benchmarks of at least {TIMING_CHECK_MIN_S * 1e3:.1f} ms have a suite median "
            f"within 5% of an independent CUDA-event median; worst: {worst[3]}: {_fmt_ms(worst[1])} ms vs "
            f"{_fmt_ms(worst[2])} ms ({worst[0]:.1%}).", ""]


def machine(run: Run) -> list[str]:
    env = run.env
    parts = [f"**Device:** {run.device_label}"]
    for label, key in (("driver", "driver"), ("CUDA", "cuda"), ("torch", "torch"), ("triton", "triton")):
        if env.get(key):
            parts.append(f"{label} {env[key]}")
    commit = run.data.get("commit_info") or {}
    dirty = " (uncommitted changes)" if commit.get("dirty") else ""
    lines = [" · ".join(parts), "", f"Run: `{run.path.name}` ({run.data.get('datetime', '?')}); "
             f"commit {str(commit.get('id', '?'))[:12]}{dirty}", ""]
    for flag in run.machine.get("flags", []):
        lines += [f"**Warning:** {flag}", ""]
    plants = run.data.get("attnbench", {}).get("plants")
    if plants:
        lines += [f"**Planted regressions were active in this run:** `{plants}`", ""]
    return lines


def render(run: Run) -> str:
    """The whole markdown report."""
    ooms = [c for c in run.cells.values() if c.status.startswith("oom")]
    lines = [f"# attnbench results: {run.device_label}", ""] + machine(run)
    lines += ["## Comparison", ""] + comparison(run) + scaling(run) + memory_model_check(run) + timing_check(run)
    if ooms:
        lines += ["## Out of memory", ""]
        lines += [f"- `{c.key}`: {c.status} ({c.message})" for c in ooms] + [""]
    lines += ["## Tables (the seed's layout)", ""] + seed_tables(run)
    return "\n".join(lines).rstrip() + "\n"


def write_plots(run: Run, directory: Path) -> list[Path]:
    """Log-log time and memory against seq_len, one figure per (dtype, mask, head_dim), a line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    figures: dict[tuple, list[CellResult]] = defaultdict(list)
    for c in run.cells.values():
        figures[(c.info["dtype"], c.info["causal"], c.info["head_dim"])].append(c)
    written = []
    for (dtype, causal, head_dim), cells in sorted(figures.items()):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        panels = (("forward ms", lambda c: (c.median_s("forward") or 0) * 1e3),
                  ("backward ms", lambda c: (c.median_s("backward") or 0) * 1e3),
                  ("memory MiB", lambda c: (_memory_before_backward(c) or c.extra("saved_bytes") or 0) / MIB))
        by_variant: dict[str, list[CellResult]] = defaultdict(list)
        for c in cells:
            if c.status == "ok":
                by_variant[c.info["variant"]].append(c)
        for ax, (label, value) in zip(axes, panels, strict=True):
            for variant, vcells in by_variant.items():
                vcells.sort(key=lambda c: c.info["seq_len"])
                ax.plot([c.info["seq_len"] for c in vcells], [value(c) for c in vcells], marker="o", label=variant)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("seq_len")
            ax.set_title(label)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        mask = "causal" if causal else "full"
        fig.suptitle(f"{run.device_label} · {dtype} · {mask} · head_dim {head_dim}")
        fig.tight_layout()
        path = directory / f"{dtype}-{mask}-d{head_dim}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_json", nargs="?", metavar="RUN.json",
                        help=f"a saved run (default: the newest under --storage, {DEFAULT_STORAGE}/)")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, metavar="DIR",
                        help=f"where autosaved runs live (default: {DEFAULT_STORAGE})")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="also write log-log PNG plots into DIR")
    parser.add_argument("--output", "-o", type=Path, metavar="FILE", help="write the markdown here, not stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        run_obj = load_run(args.run_json or newest_run(args.storage))
    except RunError as exc:
        print(f"attnbench report: {exc}", file=sys.stderr)
        return 2
    text = render(run_obj)
    if args.plots:
        paths = write_plots(run_obj, args.plots)
        def link(path: Path) -> str:  # relative to the markdown file when there is one
            if args.output is None:
                return path.as_posix()
            return Path(os.path.relpath(path.resolve(), args.output.parent.resolve())).as_posix()

        text += "\n## Plots\n\n" + "".join(f"![{p.stem}]({link(p)})\n" for p in paths)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
