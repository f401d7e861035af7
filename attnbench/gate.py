"""``attnbench gate BASELINE.json CURRENT.json``: exit 1 when the current run regressed, 2 when it cannot judge.

Reads two saved runs through ``attnbench.record`` (which refuses what it cannot trust), compares them cell
by cell (``attnbench.compare.compare_runs``) and prints a markdown table of every regression and
improvement. Exit codes:

    0  nothing regressed
    1  something regressed (the table says what)
    2  the runs cannot be judged: unreadable or untrustworthy files, an incomplete run, no cells in common,
       different timing modes, different environments without --allow-env-mismatch, or bad arguments
    3  the gate could not write its --summary file
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import render
from .compare import (
    DEFAULT_ACCURACY_FACTOR,
    DEFAULT_MEMORY_PCT,
    DEFAULT_TIME_PCT,
    DEFAULT_TIME_STAT,
    ENV_KEYS,
    TIME_STATS,
    Comparison,
    Finding,
    compare_runs,
    environment_mismatches,
)
from .grid import parse_factor, parse_percent
from .record import Run, RunError, load, output_is_an_input

EXIT_OK, EXIT_REGRESSION, EXIT_CANNOT_JUDGE, EXIT_OUTPUT_ERROR = 0, 1, 2, 3


class CannotJudge(Exception):
    """The two runs cannot be compared; the message says why and what to do."""


def parse_time_rule(text: str) -> tuple[str, float]:
    """'median:10' or 'median:10%' -> ('median', 10.0); STAT one of min, max, mean, median; PCT finite."""
    stat, sep, pct = str(text).partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not STAT:PCT (expected e.g. median:10; STAT one of {', '.join(TIME_STATS)})"
        )
    if stat not in TIME_STATS:
        raise argparse.ArgumentTypeError(f"unknown statistic {stat!r} in {text!r}; allowed: {', '.join(TIME_STATS)}")
    try:
        return stat, parse_percent(pct)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}; expected STAT:PCT, e.g. median:10") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gate`` subcommand's arguments."""
    parser.description = (
        "Compare two saved runs cell by cell. Exit 0: nothing regressed; 1: a regression (table printed); "
        "2: cannot judge (unreadable or untrustworthy files, an incomplete run, no cells in common, different "
        "timing modes or environments); 3: the --summary file could not be written."
    )
    parser.add_argument("baseline", metavar="BASELINE.json", type=Path, help="the reference run (e.g. main's)")
    parser.add_argument("current", metavar="CURRENT.json", type=Path, help="the run being judged")
    parser.add_argument(
        "--time", dest="time_rule", type=parse_time_rule, metavar="STAT:PCT",
        default=(DEFAULT_TIME_STAT, DEFAULT_TIME_PCT),
        help=f"a benchmark regresses when STAT ({', '.join(TIME_STATS)}) is more than PCT%% slower and the "
             f"runs' IQRs do not overlap (default: {DEFAULT_TIME_STAT}:{DEFAULT_TIME_PCT:g})",
    )
    parser.add_argument(
        "--memory", dest="memory_pct", type=parse_percent, metavar="PCT", default=DEFAULT_MEMORY_PCT,
        help=f"a cell regresses when saved bytes, memory before backward or peak grows by more than PCT%% "
             f"(default: {DEFAULT_MEMORY_PCT:g}: census bytes are exact, any growth counts)",
    )
    parser.add_argument(
        "--accuracy", dest="accuracy_factor", type=parse_factor, metavar="FACTOR", default=DEFAULT_ACCURACY_FACTOR,
        help=f"a cell regresses when a result's max error against the float64 reference grows by more than FACTOR "
             f"(errors below the cell's floor count as the floor), or the cell became wrong "
             f"(default: {DEFAULT_ACCURACY_FACTOR:g})",
    )
    parser.add_argument(
        "--allow-env-mismatch", action="store_true",
        help=f"compare runs whose environments differ ({', '.join(ENV_KEYS)}); a warning is printed",
    )
    parser.add_argument(
        "--summary", type=Path, metavar="FILE",
        help="also append the markdown to FILE (e.g. $GITHUB_STEP_SUMMARY)",
    )
    parser.set_defaults(run=run)


def load_run(path: Path, role: str) -> Run:
    """A saved run, complete and trustworthy, or CannotJudge saying what is wrong with it."""
    try:
        run_ = load(path, role)
    except RunError as exc:
        raise CannotJudge(str(exc)) from None
    if not run_.complete:
        raise CannotJudge(f"{role} file {path} is an incomplete run ({run_.stop_reason}); a partial run cannot be "
                          "judged: measure it again")
    return run_


def judge(args) -> tuple[int, str]:
    """The exit code and the markdown report for two runs; raises CannotJudge."""
    baseline, current = load_run(args.baseline, "baseline"), load_run(args.current, "current")
    if baseline.timing != current.timing:
        raise CannotJudge(f"the runs were timed differently (baseline: {baseline.timing.describe()}, current: "
                          f"{current.timing.describe()}); measure both with the same --attn-timing and --attn-flush-l2")
    mismatches = environment_mismatches(baseline, current)
    if mismatches and not args.allow_env_mismatch:
        raise CannotJudge(
            "the runs come from different environments (" + "; ".join(mismatches) + "), so their times do not "
            "compare. Measure the baseline again in the current run's environment, or pass --allow-env-mismatch "
            "to compare anyway."
        )
    stat, time_pct = args.time_rule
    comparison = compare_runs(baseline, current, time_stat=stat, time_pct=time_pct, memory_pct=args.memory_pct,
                              accuracy_factor=args.accuracy_factor)
    if comparison.cells_compared == 0:
        raise CannotJudge(
            f"no cells in common between {args.baseline} ({len(baseline.cells)} cells) and {args.current} "
            f"({len(current.cells)} cells); run the same grid (--attn-* options) for both"
        )
    if comparison.benchmarks_compared == 0 and not comparison.regressions:
        raise CannotJudge(
            f"no benchmark was measured in both runs ({comparison.cells_compared} cells in common, none of them "
            f"timed in both: {_statuses(baseline)} in the baseline, {_statuses(current)} in the current run); "
            "nothing was judged"
        )
    code = EXIT_REGRESSION if comparison.regressions else EXIT_OK
    headline = (f"{len(comparison.regressions)} regression(s), {len(comparison.improvements)} improvement(s)"
                if comparison.regressions or comparison.improvements else "no change beyond the thresholds")
    lines = [f"### attnbench gate: {'FAIL' if code else 'OK'}: {headline}", ""]
    lines.append(f"Baseline {baseline.label} vs current {current.label}; timing {current.timing.describe()}.")
    lines.append(
        f"Rules: time {stat} more than {time_pct:g}% slower/faster and outside both runs' IQRs; memory more than "
        f"{args.memory_pct:g}% larger/smaller; max error {args.accuracy_factor:g}× larger/smaller; a cell fine in "
        f"one run only (wrong, OOM, capture failed). "
        f"Compared {comparison.benchmarks_compared} benchmarks in {comparison.cells_compared} cells."
    )
    if mismatches:
        lines.append(f"WARNING: environments differ ({'; '.join(mismatches)}); compared anyway (--allow-env-mismatch).")
    for role, run_ in (("baseline", baseline), ("current", current)):
        if run_.plants:
            lines.append(f"Note: the {role} run had planted regressions: `{run_.plants}`.")
    lines += _notes(comparison)
    findings = comparison.regressions + comparison.improvements
    if findings:
        lines += ["", _table(findings)]
    return code, "\n".join(lines) + "\n"


def run(args) -> int:
    """Entry point of ``attnbench gate``."""
    summary = None
    if args.summary is not None:
        clash = output_is_an_input(args.summary, [args.baseline, args.current])
        if clash is not None:
            print(f"attnbench gate: --summary {args.summary} is the run {clash}: the summary would be appended to "
                  "it; write the summary elsewhere", file=sys.stderr)
            return EXIT_CANNOT_JUDGE
        try:
            summary = open(args.summary, "a")  # opened first: a summary that cannot be written is no verdict
        except OSError as exc:
            print(f"attnbench gate: cannot write --summary {args.summary}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_OUTPUT_ERROR
    try:
        try:
            code, report = judge(args)
        except CannotJudge as exc:
            code, report = EXIT_CANNOT_JUDGE, f"### attnbench gate: cannot judge\n\n{exc}\n"
            print(f"attnbench gate: cannot judge: {exc}", file=sys.stderr)
        else:
            print(report, end="")
        if summary is not None:
            try:
                summary.write(report + "\n")
                summary.flush()
            except OSError as exc:
                print(f"attnbench gate: cannot write --summary {args.summary}: {exc.strerror or exc}",
                      file=sys.stderr)
                return EXIT_OUTPUT_ERROR
        return code
    finally:
        if summary is not None:
            try:
                summary.close()
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    """``attnbench gate`` alone (for tests and ``python -m attnbench.gate``)."""
    parser = argparse.ArgumentParser(prog="attnbench gate")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args.run(args)


def _statuses(run_) -> str:
    counts: dict[str, int] = {}
    for rec in run_.cells.values():
        counts[rec.status] = counts.get(rec.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


# -- rendering


def _notes(comparison: Comparison) -> list[str]:
    notes = []
    if comparison.within_noise:
        notes.append(f"{len(comparison.within_noise)} benchmark(s) moved past the time threshold but within noise "
                     "(not counted).")
    for label, names in (("only in the baseline", comparison.only_in_baseline),
                         ("only in the current run", comparison.only_in_current)):
        if names:
            shown = ", ".join(f"`{n}`" for n in names[:5]) + (", …" if len(names) > 5 else "")
            notes.append(f"{len(names)} benchmark(s) {label}, not compared: {shown}.")
    return notes


def _table(findings: list[Finding]) -> str:
    rows = []
    for f in findings:
        change = f"{f.change_pct:+.1f}%" if f.change_pct is not None else "—"
        rows.append([f"`{f.name}`", f.metric, _value(f.metric, f.baseline), _value(f.metric, f.current), change,
                     f"**{f.verdict}**", f.note or "—"])
    return render.table(["cell", "metric", "baseline", "current", "change", "verdict", "noise"], rows)


def _value(metric: str, value) -> str:
    if not isinstance(value, (int, float)):
        return str(value)
    if metric.endswith("time"):
        return render.duration(value)
    if metric.endswith("error"):
        return f"{value:.3g}"
    return render.size(value)


if __name__ == "__main__":
    sys.exit(main())
