"""``attnbench report``: the seed's tables, a variant comparison and scaling fits, from a saved run.

Exit codes: 0 written; 2 the run cannot be read or trusted (or holds no cells); 3 the markdown or the
plots could not be written.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from . import render
from .grid import NO_MASK
from .record import (DEFAULT_STORAGE, TIMED_STATUSES, CellRecord, Run, RunError, load, newest_run,
                     output_is_an_input)

MIB = 2**20
#: n×n tensors kept for backward as the seed write-up claims them (its "Memory Comparison" table).
SEED_CLAIMED_NXN = {"naive": 3, "torch_softmax": 2, "weights_only": 1, "sdpa_flash": 0}
#: the memory model is held to this relative error on cells at least this large.
MODEL_CHECK_MIN_BYTES = 100 * MIB
#: the timing check covers benchmarks of at least this median.
TIMING_CHECK_MIN_S = 1e-4
#: scaling exponents are fitted on this many of the largest sequence lengths.
SCALING_FIT_POINTS = 3
#: a pass is launch-bound when its device time is below this fraction of one synchronized call's wall time.
LAUNCH_BOUND_RATIO = 0.8
LAUNCH_BOUND_MARK = "†"
WRONG_MARK = " ✗"
#: the accuracy section lists this many worst cells per variant and dtype.
WORST_CELLS = 3
EXIT_OK, EXIT_CANNOT_READ, EXIT_OUTPUT_ERROR = 0, 2, 3
EXIT_USAGE = 2  # as argparse's own usage errors


def _status_text(cell: CellRecord | None, value: str) -> str:
    if cell is None:
        return render.MISSING
    return {"oom-predicted": "OOM (pred.)", "oom-measured": "OOM", "capture-failed": "no graph",
            "pending": "not run"}.get(cell.status, value)


def launch_bound(run: Run, cell: CellRecord, pass_name: str) -> bool:
    """Device time well under what one synchronized call takes on the host clock (device timing only)."""
    result = cell.passes.get(pass_name)
    if result is None or run.timing.mode != "device" or run.device != "cuda":
        return False
    wall = result.checks.get("warmup_wall_s")
    return bool(wall) and result.median_s < LAUNCH_BOUND_RATIO * wall


def _time(run: Run, cell: CellRecord, pass_name: str) -> str:
    text = render.ms(cell.median_s(pass_name))
    if launch_bound(run, cell, pass_name):
        text += LAUNCH_BOUND_MARK
    return text + WRONG_MARK if cell.status == "wrong" else text


def worst_error(cell: CellRecord) -> str | None:
    """The result tensor closest to (or past) its bound; None without accuracy."""
    if cell.accuracy is None:
        return None
    return max(cell.accuracy.tensors, key=cell.accuracy.fraction_of_bound)


def _error_text(cell: CellRecord) -> str:
    """'dk: 1.7× plain, 0.13 of bound' for the tensor closest to its bound."""
    name = worst_error(cell)
    if name is None:
        return render.MISSING
    acc, t = cell.accuracy, cell.accuracy.tensors[name]
    if t.max_abs_error is None:
        return f"{name}: {t.nan_count} NaN, {t.inf_count} Inf"
    ratio = acc.ratio_to_plain(name)
    plain = "no plain" if t.plain_max_abs_error is None else (
        "plain exact" if ratio is None else f"{ratio:.2f}× plain")
    return f"{name}: {plain}, {acc.fraction_of_bound(name):.2f} of bound"


def _mode(cell) -> tuple[bool, str, int]:
    """What, besides shape and dtype, sets a cell's work: (causal, mask label, query heads per k/v head)."""
    return cell.causal, cell.mask, cell.heads // cell.heads_kv


def _mode_text(mode: tuple[bool, str, int], *, plain: str = "non-causal") -> str:
    """(True, 'sliding_window:1024', 4) -> 'causal sliding_window:1024, GQA 4:1'; (False, 'none', 1) -> plain."""
    causal, mask, group = mode
    words = (["causal"] if causal else []) + ([mask] if mask != NO_MASK else [])
    return " ".join(words or [plain]) + (f", GQA {group}:1" if group > 1 else "")


def _mode_slug(mode: tuple[bool, str, int]) -> str:
    """A file-name part: 'full', 'causal', 'causal-sliding_window1024-gqa4'."""
    causal, mask, group = mode
    parts = ["causal" if causal else "full"] + ([mask.replace(":", "")] if mask != NO_MASK else [])
    return "-".join(parts + ([f"gqa{group}"] if group > 1 else []))


def _groups(run: Run) -> dict[tuple, list[CellRecord]]:
    """Cells by (variant, dtype, mode), in the run's order."""
    groups: dict[tuple, list[CellRecord]] = defaultdict(list)
    for cell in run.cells.values():
        groups[(cell.cell.variant, cell.cell.dtype, _mode(cell.cell))].append(cell)
    return groups


def _memory(cell: CellRecord) -> int | None:
    """Memory before backward on CUDA, the census's saved bytes on CPU."""
    return cell.memory.get("mem_before_backward_bytes", cell.memory.get("saved_bytes"))


def _shape_note(cells: list[CellRecord]) -> str:
    """The group's batch and heads: listed, or, where they vary with the shape at a fixed number of tokens and
    model width (the FlashAttention papers' grids), those two products."""
    shapes = sorted({(c.cell.batch, c.cell.heads) for c in cells})
    tokens = {c.cell.batch * c.cell.seq_len for c in cells}
    width = {c.cell.heads * c.cell.head_dim for c in cells}
    if len(shapes) > 2 and len(tokens) == 1 and len(width) == 1:
        return f"batch × seq_len = {tokens.pop()} tokens, heads × head_dim = {width.pop()}"
    return ", ".join(f"batch {b} × heads {h}" for b, h in shapes)


def _memory_title(run: Run) -> str:
    return "Memory before backward (MiB)" if run.device == "cuda" else "Saved for backward, census (MiB)"


def _seq_len_table(title: str, corner: str, columns: list, cell_at: dict, value: Callable) -> list[str]:
    """A titled table, one row per seq_len in ``cell_at``'s keys: ``value`` of each column's cell, or its status."""
    rows = []
    for seq_len in sorted({s for s, _ in cell_at}):
        row = [str(seq_len)]
        for column in columns:
            cell = cell_at.get((seq_len, column))
            row.append(_status_text(cell, value(cell) if cell is not None else ""))
        rows.append(row)
    return [f"**{title}**", "", render.table([corner, *map(str, columns)], rows), ""]


def seed_tables(run: Run) -> list[str]:
    """Per variant/dtype/mask: forward ms, backward ms and memory before backward (rows seq_len, cols head_dim)."""
    lines: list[str] = []
    for (variant, dtype, mode), cells in _groups(run).items():
        head_dims = sorted({c.cell.head_dim for c in cells})
        by_shape = {(c.cell.seq_len, c.cell.head_dim): c for c in cells}
        lines += [f"### {variant} · {dtype} · {_mode_text(mode)} ({_shape_note(cells)})", ""]
        for title, value in (
            ("Forward (ms)", lambda c: _time(run, c, "forward")),
            ("Backward (ms)", lambda c: _time(run, c, "backward")),
            (_memory_title(run), lambda c: render.mib(_memory(c))),
        ):
            lines += _seq_len_table(title, "seq_len \\ head_dim", head_dims, by_shape, value)
    return lines


def _largest_common_cell(run: Run) -> tuple | None:
    """The largest (seq_len, head_dim, batch, heads, dtype, mode) at which every variant present was measured."""
    shape_variants: dict[tuple, set] = defaultdict(set)
    variants_per_mode: dict[tuple, set] = defaultdict(set)
    for rec in run.cells.values():
        c = rec.cell
        mode = (c.dtype, _mode(c))
        variants_per_mode[mode].add(c.variant)
        if rec.status in TIMED_STATUSES:
            shape_variants[(c.seq_len, c.head_dim, c.batch, c.heads, *mode)].add(c.variant)
    complete = [s for s, vs in shape_variants.items() if vs == variants_per_mode[s[4:]]]
    return max(complete, key=lambda s: (s[0], s[1])) if complete else None


def _tflops(cell: CellRecord, pass_name: str) -> str:
    result = cell.passes.get(pass_name)
    return render.tflops(result.flops / result.median_s) if result else render.MISSING


def comparison(run: Run) -> list[str]:
    """The seed's memory comparison, measured: every variant at the largest cell all of them ran."""
    shape = _largest_common_cell(run)
    if shape is None:
        return ["No cell was measured for every variant, so there is no like-for-like comparison.", ""]
    seq_len, head_dim, batch, heads, dtype, mode = shape
    cells = [r for r in run.cells.values()
             if (r.cell.seq_len, r.cell.head_dim, r.cell.batch, r.cell.heads, r.cell.dtype, _mode(r.cell)) == shape]
    rows = []
    for c in cells:
        v, m = c.cell.variant, c.memory
        rows.append([
            v, str(m.get("saved_nxn", render.MISSING)), str(SEED_CLAIMED_NXN.get(v, render.MISSING)),
            render.mib(m.get("saved_bytes")), render.mib(m.get("mem_before_backward_bytes")),
            render.mib(m.get("peak_bytes")), _time(run, c, "forward"), _time(run, c, "backward"),
            _tflops(c, "forward"), _tflops(c, "backward"), _error_text(c),
        ])
    header = ["variant", "n×n saved (measured)", "seed claims", "saved MiB", "before backward MiB", "peak MiB",
              "fwd ms", "bwd ms", "fwd TFLOP/s", "bwd TFLOP/s", "accuracy (tensor closest to its bound)"]
    if all(c.accuracy is None for c in cells):  # a run made without the accuracy check
        header, rows = header[:-1], [row[:-1] for row in rows]
    title = (f"### Variants at seq_len {seq_len}, head_dim {head_dim}, batch {batch}, heads {heads}, {dtype}, "
             f"{_mode_text(mode)}")
    return [title, "", render.table(header, rows), ""]


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
    for (variant, dtype, mode), cells in _groups(run).items():
        head_dim = max(c.cell.head_dim for c in cells)
        ok = sorted((c for c in cells if c.cell.head_dim == head_dim and c.status in TIMED_STATUSES),
                    key=lambda c: c.cell.seq_len)[-SCALING_FIT_POINTS:]
        xs = [c.cell.seq_len for c in ok]

        def exponent(values):
            slope = fit_exponent(xs, values)
            return render.MISSING if slope is None else f"{slope:.2f}"

        rows.append([variant, dtype, _mode_text(mode, plain="full"), str(head_dim),
                     f"{xs[0]}–{xs[-1]}" if xs else render.MISSING,
                     exponent([c.median_s("forward") for c in ok]), exponent([c.median_s("backward") for c in ok]),
                     exponent([_memory(c) for c in ok])])
    header = ["variant", "dtype", "mask", "head_dim", "seq_len range", "fwd time ∝ n^", "bwd time ∝ n^",
              "memory ∝ n^"]
    return ["### Scaling exponents", "",
            f"Least-squares slope of log(value) on log(seq_len) over the {SCALING_FIT_POINTS} largest measured "
            "seq_lens: 2 is O(n²), 1 is O(n). Memory is before backward on CUDA, the census on CPU.", "",
            render.table(header, rows), ""]


def memory_model_check(run: Run) -> list[str]:
    """Worst relative error of the current memory model against this run's measured CUDA figures."""
    from .memory_model import predict

    worst: dict[tuple[str, str], tuple[float, str, float, float]] = {}
    checked = 0
    for rec in run.cells.values():
        if rec.status != "ok" or "mem_before_backward_bytes" not in rec.memory:
            continue
        c = rec.cell
        try:
            prediction = predict(c.variant, batch=c.batch, heads=c.heads, seq_len=c.seq_len, head_dim=c.head_dim,
                                 dtype=c.torch_dtype, causal=c.causal, heads_kv=c.heads_kv, mask=c.mask_spec())
        except ValueError:  # a variant this checkout no longer registers
            continue
        for figure, predicted in (("mem_before_backward_bytes", prediction.before_backward_bytes),
                                  ("peak_bytes", prediction.peak_bytes)):
            measured = rec.memory.get(figure)
            if not measured or measured < MODEL_CHECK_MIN_BYTES:
                continue
            checked += 1
            error = abs(predicted - measured) / measured
            key = (c.variant, figure)
            if key not in worst or error > worst[key][0]:
                worst[key] = (error, rec.key, predicted, measured)
    if not worst:
        return []
    overall = max(worst.values())
    rows = [[variant, figure, render.percent(e), cell, render.mib(p), render.mib(m)]
            for (variant, figure), (e, cell, p, m) in worst.items()]
    return ["### Memory model", "",
            f"This checkout's `attnbench.memory_model.predict` against the run's measured figures: "
            f"{checked} figures of at least {MODEL_CHECK_MIN_BYTES // MIB} MiB; worst {render.percent(overall[0])} "
            f"({overall[1]}). Worst cell per variant and figure:", "",
            render.table(["variant", "figure", "worst error", "cell", "predicted MiB", "measured MiB"], rows), ""]


def timing_check(run: Run) -> list[str]:
    """Suite median against the independent CUDA-event median (runs made with --attn-timing-check)."""
    ratios = []
    for rec in run.cells.values():
        for pass_name, result in rec.passes.items():
            event = result.checks.get("event_median_s")
            if event and result.median_s >= TIMING_CHECK_MIN_S:
                ratios.append((abs(result.median_s / event - 1), result.median_s, event, f"{pass_name} {rec.key}"))
    if not ratios:
        return []
    worst = max(ratios)
    within = sum(r[0] <= 0.05 for r in ratios)
    return ["### Timing check", "",
            f"{within} of {len(ratios)} benchmarks of at least {TIMING_CHECK_MIN_S * 1e3:.1f} ms have a suite median "
            f"within 5% of an independent CUDA-event median; worst: {worst[3]}: {render.ms(worst[1])} ms vs "
            f"{render.ms(worst[2])} ms ({render.percent(worst[0])}).", ""]


def accuracy_section(run: Run) -> list[str]:
    """Per variant and dtype: how many cells were checked, how many were wrong, and the worst cells."""
    groups: dict[tuple, list[CellRecord]] = defaultdict(list)
    for rec in run.cells.values():
        if rec.accuracy is not None:
            groups[(rec.cell.variant, rec.cell.dtype)].append(rec)
    if not groups:
        return []

    def badness(rec: CellRecord) -> float:
        return rec.accuracy.fraction_of_bound(worst_error(rec))

    rows = []
    for (variant, dtype), cells in groups.items():
        worst = sorted(cells, key=badness, reverse=True)[:WORST_CELLS]
        rows.append([variant, dtype, str(len(cells)), str(sum(c.status == "wrong" for c in cells)),
                     str(sum(not c.accuracy.plain_fits for c in cells)),
                     f"{max((c.accuracy.ratio_to_plain(n) or 0) for c in cells for n in c.accuracy.tensors):.2f}×",
                     "<br>".join(f"{c.key}: {_error_text(c)}" for c in worst)])
    return ["### Accuracy", "",
            "Each cell's output and dq, dk, dv against a float64 reference at the cell's shape (the tiled algorithm "
            "in float64): the error as a multiple of the plain same-precision computation's, and as a fraction of "
            "the bound (above 1 is wrong); a cell past its bound "
            f"(2× for the output, 3× for gradients, plus a floor: docs/accuracy.md) is wrong ({WRONG_MARK.strip()} "
            "in the tables). \"no plain\": the plain computation did not fit, the bound is the floor alone.", "",
            render.table(["variant", "dtype", "cells", "wrong", "no plain", "worst error / plain",
                          f"closest to the bound ({WORST_CELLS})"], rows), ""]


def launch_bound_section(run: Run) -> list[str]:
    """Passes whose device time is well under one synchronized call's wall time: launch-bound."""
    rows = []
    for rec in run.cells.values():
        for pass_name, result in rec.passes.items():
            if launch_bound(run, rec, pass_name):
                wall = result.checks["warmup_wall_s"]
                rows.append([rec.key, pass_name, render.ms(result.median_s), render.ms(wall),
                             render.percent(result.median_s / wall)])
    if not rows:
        return []
    return ["### Launch-bound cells", "",
            f"{LAUNCH_BOUND_MARK} in the tables: the device time (this run's clock, host launches hidden) is below "
            f"{LAUNCH_BOUND_RATIO:.0%} of the wall-clock time of one synchronized call (taken during warm-up). "
            "The host's launches bound these calls: a training step pays the wall time (`--attn-timing wall` "
            "measures it; `--attn-timing cudagraph` removes launch overhead).", "",
            render.table(["cell", "pass", "device ms", "wall ms (one call)", "device / wall"], rows), ""]


def machine(run: Run) -> list[str]:
    env = run.env
    parts = [f"**Device:** {run.device_label}"]
    for label, key in (("driver", "driver"), ("CUDA", "cuda"), ("torch", "torch"), ("triton", "triton")):
        if env.get(key):
            parts.append(f"{label} {env[key]}")
    commit = run.commit
    dirty = " (uncommitted changes)" if commit.get("dirty") else ""
    name = run.path.name if run.path else "?"
    lines = [" · ".join(parts), "",
             f"Run: `{name}` ({run.datetime or '?'}); commit {str(commit.get('id', '?'))[:12]}{dirty}; "
             f"preset {run.preset}; timing {run.timing.describe()}", ""]
    if run.shard is not None:
        lines += [f"**Shard {run.shard.label}** of a grid of {len(run.shard.grid_cells)} cells: this run holds "
                  f"{len(run.cells)} of them; `attnbench merge` joins the shards into one run.", ""]
    if run.shard_machines:
        measured = {m.index: sum(rec.shard == m.index for rec in run.cells.values()) for m in run.shard_machines}
        lines += [f"Merged from {len(run.shard_machines)} shards: " + "; ".join(
            f"{m.describe()}: {measured[m.index]} cells" for m in run.shard_machines) + ".", ""]
    if not run.complete:
        lines += [f"**Incomplete run:** {run.stop_reason}. Cells marked \"not run\" were never measured; do not "
                  "compare this run as a whole.", ""]
    for flag in run.flags:
        lines += [f"**Warning:** {flag}", ""]
    if run.plants:
        lines += [f"**Planted regressions were active in this run:** `{run.plants}`", ""]
    return lines


def side_by_side(run: Run) -> list[str]:
    """Per dtype, mode and head_dim that more than one variant ran: TFLOP/s forward / backward and memory before
    backward, rows seq_len, a column per variant (the FLOPs count only the pairs the mask lets through)."""
    groups: dict[tuple, list[CellRecord]] = defaultdict(list)
    for rec in run.cells.values():
        groups[(rec.cell.dtype, _mode(rec.cell), rec.cell.head_dim)].append(rec)
    lines: list[str] = []
    for (dtype, mode, head_dim), cells in groups.items():
        variants = list(dict.fromkeys(c.cell.variant for c in cells))
        if len(variants) < 2:
            continue
        by_cell = {(c.cell.seq_len, c.cell.variant): c for c in cells}
        lines += [f"### {dtype} · {_mode_text(mode)} · head_dim {head_dim} ({_shape_note(cells)})", ""]
        for title, value in (
            ("TFLOP/s, forward / backward", lambda c: f"{_tflops(c, 'forward')} / {_tflops(c, 'backward')}"
             + (WRONG_MARK if c.status == "wrong" else "")),
            (_memory_title(run), lambda c: render.mib(_memory(c))),
        ):
            lines += _seq_len_table(title, "seq_len \\ variant", variants, by_cell, value)
    return lines


def parse_ratio(text: str) -> tuple[str, str]:
    """'triton_flash/flex' -> ('triton_flash', 'flex') (``--ratio``)."""
    first, sep, second = str(text).strip().partition("/")
    if not sep or not first.strip() or not second.strip() or "/" in second:
        raise argparse.ArgumentTypeError(f"{text!r} is not A/B (two variant names, e.g. triton_flash/flex)")
    return first.strip(), second.strip()


def ratio_section(run: Run, first: str, second: str) -> list[str]:
    """``first``'s speed over ``second``'s in every cell both timed (the second's median time over the first's,
    forward / backward: above 1, the first is faster): per dtype and mode a table, rows head_dim and seq_len."""
    # a pair is two cells of one shape; a grid has one batch per seq_len and one heads per head_dim, so the table
    # needs only head_dim and seq_len to place it
    timed = {(rec.cell.variant, rec.cell.dtype, _mode(rec.cell), rec.cell.head_dim, rec.cell.seq_len, rec.cell.batch,
              rec.cell.heads): rec for rec in run.cells.values() if rec.status in TIMED_STATUSES}
    groups: dict[tuple, dict[tuple[int, int], tuple[CellRecord, CellRecord]]] = defaultdict(dict)
    for (variant, dtype, mode, head_dim, seq_len, batch, heads), rec in timed.items():
        other = timed.get((second, dtype, mode, head_dim, seq_len, batch, heads))
        if variant == first and other is not None:
            groups[(dtype, mode)][(head_dim, seq_len)] = (rec, other)

    def speedup(pair: tuple[CellRecord, CellRecord], pass_name: str) -> str:
        mine, theirs = (rec.median_s(pass_name) for rec in pair)
        return render.MISSING if not mine or not theirs else f"{theirs / mine:.2f}"

    lines = [f"### {first} / {second}", "",
             f"{second}'s median time over {first}'s, forward / backward, in every cell both timed: above 1, "
             f"{first} is faster.", ""]
    for (dtype, mode), pairs in groups.items():
        seq_lens = sorted({s for _, s in pairs})
        rows = [[str(head_dim)] + [f"{speedup(pairs[(head_dim, s)], 'forward')} / "
                                   f"{speedup(pairs[(head_dim, s)], 'backward')}" if (head_dim, s) in pairs
                                   else render.MISSING for s in seq_lens]
                for head_dim in sorted({d for d, _ in pairs})]
        lines += [f"**{dtype} · {_mode_text(mode)}**", "",
                  render.table(["head_dim \\ seq_len", *map(str, seq_lens)], rows), ""]
    if not groups:
        lines += [f"No cell was timed for both {first} and {second}.", ""]
    return lines


def render_report(run: Run, ratios: Sequence[tuple[str, str]] = ()) -> str:
    """The whole markdown report (with a section per pair of variants in ``ratios``)."""
    not_measured = [c for c in run.cells.values() if c.status not in ("ok", "wrong", "pending")]
    lines = [f"# attnbench results: {run.device_label}", ""] + machine(run)
    lines += ["## Comparison", ""] + comparison(run) + scaling(run) + memory_model_check(run) + timing_check(run)
    lines += accuracy_section(run) + launch_bound_section(run)
    wrong = [c for c in run.cells.values() if c.status == "wrong"]
    if wrong:
        lines += ["## Wrong results", ""]
        lines += [f"- `{c.key}`: {c.message}" for c in wrong] + [""]
    if not_measured:
        lines += ["## Not measured", ""]
        lines += [f"- `{c.key}`: {c.status} ({c.message})" for c in not_measured] + [""]
    compared = side_by_side(run)
    if compared:
        lines += ["## Side by side", "", "The FLOPs of a masked cell count only the (query, key) pairs its mask "
                  "lets through: TFLOP/s is work actually done.", ""] + compared
    if ratios:
        lines += ["## Ratios", ""]
        for first, second in ratios:
            lines += ratio_section(run, first, second)
    lines += ["## Tables (the seed's layout)", ""] + seed_tables(run)
    return "\n".join(lines).rstrip() + "\n"


def write_plots(run: Run, directory: Path) -> list[Path]:
    """Log-log time and memory against seq_len, one figure per (dtype, mask, head_dim), a line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[tuple, list[CellRecord]] = defaultdict(list)
    for rec in run.cells.values():
        figures[(rec.cell.dtype, _mode(rec.cell), rec.cell.head_dim)].append(rec)
    written = []
    for (dtype, mode, head_dim), cells in sorted(figures.items()):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        panels = (("forward ms", lambda c: (c.median_s("forward") or 0) * 1e3),
                  ("backward ms", lambda c: (c.median_s("backward") or 0) * 1e3),
                  ("memory MiB", lambda c: (_memory(c) or 0) / MIB))
        by_variant: dict[str, list[CellRecord]] = defaultdict(list)
        for c in cells:
            if c.status in TIMED_STATUSES:
                by_variant[c.cell.variant].append(c)
        for ax, (label, value) in zip(axes, panels, strict=True):
            for variant, vcells in by_variant.items():
                vcells.sort(key=lambda c: c.cell.seq_len)
                ax.plot([c.cell.seq_len for c in vcells], [value(c) for c in vcells], marker="o", label=variant)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("seq_len")
            ax.set_title(label)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{run.device_label} · {dtype} · {_mode_text(mode, plain='full')} · head_dim {head_dim}")
        fig.tight_layout()
        path = directory / f"{dtype}-{_mode_slug(mode)}-d{head_dim}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Markdown tables (and plots) from a saved run. Exit 0: written; 2: the run cannot be read "
                          "or trusted, or bad arguments; 3: the output could not be written.")
    parser.add_argument("run_json", nargs="?", metavar="RUN.json",
                        help=f"a saved run (default: the newest numbered run under --storage, {DEFAULT_STORAGE}/)")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, metavar="DIR",
                        help=f"where autosaved runs live (default: {DEFAULT_STORAGE})")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="also write log-log PNG plots into DIR")
    parser.add_argument("--output", "-o", type=Path, metavar="FILE", help="write the markdown here, not stdout")
    parser.add_argument("--ratio", type=parse_ratio, action="append", default=[], metavar="A/B",
                        help="also a table of variant A's speed over variant B's (B's median time over A's) in every "
                             "cell both timed; repeatable")
    parser.set_defaults(run=run)


def _writable_directory(path: Path, what: str) -> str | None:
    """None when ``path`` is (or can be made) a writable directory; else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{what} {path} exists and is not a directory"
    except OSError as exc:
        return f"cannot create {what} {path}: {exc.strerror or exc}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{what} {path} is not writable"
    return None


def run(args: argparse.Namespace) -> int:
    try:
        run_obj = load(args.run_json or newest_run(args.storage))
    except RunError as exc:
        print(f"attnbench report: {exc}", file=sys.stderr)
        return EXIT_CANNOT_READ
    if not run_obj.cells:
        print(f"attnbench report: {run_obj.path} holds no cells of this suite (no benchmark was run); nothing to "
              "report", file=sys.stderr)
        return EXIT_CANNOT_READ
    variants = sorted({rec.cell.variant for rec in run_obj.cells.values()})
    unknown = sorted({name for pair in args.ratio for name in pair if name not in variants})
    if unknown:
        print(f"attnbench report: --ratio names {', '.join(unknown)}, not in {run_obj.path}; its variants: "
              f"{', '.join(variants)}", file=sys.stderr)
        return EXIT_USAGE
    if not run_obj.complete:
        print(f"attnbench report: WARNING: {run_obj.path} is an incomplete run ({run_obj.stop_reason})",
              file=sys.stderr)
    # every output place is checked before anything is written: no half-written report
    problems = []
    if args.output is not None and output_is_an_input(args.output, [run_obj.path]) is not None:
        print(f"attnbench report: --output {args.output} is the run being reported; write the report elsewhere",
              file=sys.stderr)
        return EXIT_USAGE
    if args.output is not None:
        if args.output.is_dir():
            problems.append(f"--output {args.output} is a directory, expected a file")
        else:
            problems.append(_writable_directory(args.output.parent, "the directory of --output"))
    if args.plots is not None:
        problems.append(_writable_directory(args.plots, "--plots directory"))
    problems = [p for p in problems if p]
    if problems:
        print(f"attnbench report: {'; '.join(problems)}", file=sys.stderr)
        return EXIT_OUTPUT_ERROR
    text = render_report(run_obj, args.ratio)
    try:
        if args.plots:
            paths = write_plots(run_obj, args.plots)

            def link(path: Path) -> str:  # relative to the markdown file when there is one
                if args.output is None:
                    return path.as_posix()
                return Path(os.path.relpath(path.resolve(), args.output.parent.resolve())).as_posix()

            text += "\n## Plots\n\n" + "".join(f"![{p.stem}]({link(p)})\n" for p in paths)
        if args.output:
            args.output.write_text(text)
        else:
            sys.stdout.write(text)
    except OSError as exc:
        print(f"attnbench report: cannot write the report: {exc}", file=sys.stderr)
        return EXIT_OUTPUT_ERROR
    return EXIT_OK
