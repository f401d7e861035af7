"""``attnbench gate BASELINE.json CURRENT.json``: exit 1 when the current run regressed, 2 when it cannot judge.

Reads two saved pytest-benchmark runs, compares them cell by cell (``attnbench.compare.compare_runs``) and
prints a markdown table of every regression and improvement. Exit codes: 0 nothing regressed, 1 something
did, 2 the runs cannot be judged (unreadable, not pytest-benchmark runs, nothing in common, or measured in
different environments without --allow-env-mismatch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .compare import (
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
from .grid import parse_percent
from .results import RunError, read_run_json

EXIT_OK, EXIT_REGRESSION, EXIT_CANNOT_JUDGE = 0, 1, 2


class CannotJudge(Exception):
    """The two runs cannot be compared; the message says why and what to do."""


def parse_time_rule(text: str) -> tuple[str, float]:
    """'median:10' or 'median:10%' -> ('median', 10.0); STAT one of min, max, mean, median."""
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
        "2: cannot judge (unreadable files, no cells in common, different environments)."
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
        "--allow-env-mismatch", action="store_true",
        help=f"compare runs whose environments differ ({', '.join(ENV_KEYS)}); a warning is printed",
    )
    parser.add_argument(
        "--summary", type=Path, metavar="FILE",
        help="also append the markdown to FILE (e.g. $GITHUB_STEP_SUMMARY)",
    )
    parser.set_defaults(run=run)


def load_run(path: Path, role: str) -> dict:
    """A saved pytest-benchmark run, or CannotJudge saying what is wrong with the file."""
    try:
        return read_run_json(path, role)
    except RunError as exc:
        raise CannotJudge(str(exc)) from None


def judge(args) -> tuple[int, str]:
    """The exit code and the markdown report for two runs; raises CannotJudge."""
    baseline, current = load_run(args.baseline, "baseline"), load_run(args.current, "current")
    lines = []
    mismatches = environment_mismatches(baseline, current)
    if mismatches and not args.allow_env_mismatch:
        raise CannotJudge(
            "the runs come from different environments (" + "; ".join(mismatches) + "), so their times do not "
            "compare. Measure the baseline again in the current run's environment, or pass --allow-env-mismatch "
            "to compare anyway."
        )
    stat, time_pct = args.time_rule
    comparison = compare_runs(baseline, current, time_stat=stat, time_pct=time_pct, memory_pct=args.memory_pct)
    if comparison.cells_compared == 0:
        raise CannotJudge(
            f"no cells in common between {args.baseline} ({len(baseline['benchmarks'])} benchmarks) and "
            f"{args.current} ({len(current['benchmarks'])} benchmarks); run the same grid (--attn-* options) "
            "for both"
        )
    code = EXIT_REGRESSION if comparison.regressions else EXIT_OK
    headline = (f"{len(comparison.regressions)} regression(s), {len(comparison.improvements)} improvement(s)"
                if comparison.regressions or comparison.improvements else "no change beyond the thresholds")
    lines.append(f"### attnbench gate: {'FAIL' if code else 'OK'}: {headline}")
    lines.append("")
    lines.append(f"Baseline `{args.baseline}`{_run_label(baseline)} vs current `{args.current}`{_run_label(current)}.")
    lines.append(
        f"Rules: time {stat} more than {time_pct:g}% slower/faster and outside both runs' IQRs; memory more than "
        f"{args.memory_pct:g}% larger/smaller; a cell OOM in one run only. "
        f"Compared {comparison.benchmarks_compared} benchmarks in {comparison.cells_compared} cells."
    )
    if mismatches:
        lines.append(f"WARNING: environments differ ({'; '.join(mismatches)}); compared anyway (--allow-env-mismatch).")
    lines += _notes(comparison)
    table = _table(comparison.regressions + comparison.improvements)
    if table:
        lines += [""] + table
    return code, "\n".join(lines) + "\n"


def run(args) -> int:
    """Entry point of ``attnbench gate``."""
    try:
        code, report = judge(args)
    except CannotJudge as exc:
        code, report = EXIT_CANNOT_JUDGE, f"### attnbench gate: cannot judge\n\n{exc}\n"
        print(f"attnbench gate: cannot judge: {exc}", file=sys.stderr)
    else:
        print(report, end="")
    if args.summary is not None:
        with open(args.summary, "a") as out:
            out.write(report + "\n")
    return code


def main(argv: list[str] | None = None) -> int:
    """``attnbench gate`` alone (for tests and ``python -m attnbench.gate``)."""
    parser = argparse.ArgumentParser(prog="attnbench gate")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args.run(args)


# -- rendering


def _run_label(run: dict) -> str:
    parts = [(run.get("datetime") or "")[:19]]
    commit = run.get("commit_info") or {}
    if commit.get("id"):
        parts.append(f"commit {commit['id'][:10]}{' (dirty)' if commit.get('dirty') else ''}")
    parts = [p for p in parts if p]
    return f" ({', '.join(parts)})" if parts else ""


def _notes(comparison: Comparison) -> list[str]:
    notes = []
    if comparison.within_noise:
        notes.append(f"{len(comparison.within_noise)} benchmark(s) moved past the time threshold but within noise "
                     "(not counted).")
    for label, names in (("only in the baseline", comparison.only_in_baseline),
                         ("only in the current run", comparison.only_in_current)):
        if names:
            shown = ", ".join(f"`{_short(n)}`" for n in names[:5]) + (", …" if len(names) > 5 else "")
            notes.append(f"{len(names)} benchmark(s) {label}, not compared: {shown}.")
    return notes


def _table(findings: list[Finding]) -> list[str]:
    if not findings:
        return []
    rows = ["| cell | metric | baseline | current | change | verdict | noise |", "|---|---|---|---|---|---|---|"]
    for f in findings:
        change = f"{f.change_pct:+.1f}%" if f.change_pct is not None else "—"
        rows.append(f"| `{_short(f.name)}` | {f.metric} | {_value(f.metric, f.baseline)} | "
                    f"{_value(f.metric, f.current)} | {change} | **{f.verdict}** | {f.note or '—'} |")
    return rows


def _short(fullname: str) -> str:
    """'benchmarks/test_forward.py::test_forward[naive-…]' -> 'test_forward[naive-…]'."""
    return fullname.rsplit("::", 1)[-1]


def _value(metric: str, value) -> str:
    if not isinstance(value, (int, float)):
        return str(value)
    if metric.endswith("time"):
        for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
            if value >= scale:
                return f"{value / scale:.4g} {unit}"
        return f"{value / 1e-9:.4g} ns"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.4g} {unit}"
    return f"{value} B"


if __name__ == "__main__":
    sys.exit(main())
