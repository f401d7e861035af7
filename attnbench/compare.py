"""Cell-by-cell comparison of two runs: the latency gate (noise-aware), the memory gate (exact) and status changes.

Both runs are :class:`attnbench.record.Run` objects, read (and checked) by ``attnbench.record``; nothing
here reads JSON. ``attnbench gate`` and the in-run memory gate (``--attn-memory-compare-fail``) judge
with :func:`compare_runs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scipy.stats import mannwhitneyu

from .accuracy import Accuracy
from .record import TIMED_STATUSES, PassResult, Run

#: memory figures compared per cell; census bytes are exact, the allocator's figures nearly so.
MEMORY_KEYS = ("saved_bytes", "mem_before_backward_bytes", "peak_bytes")
#: the default latency gate: median more than 10% slower, and outside both runs' noise.
DEFAULT_TIME_STAT = "median"
DEFAULT_TIME_PCT = 10.0
DEFAULT_MEMORY_PCT = 0.0
#: an error that grows by more than this factor regresses, even within its bound.
DEFAULT_ACCURACY_FACTOR = 4.0
#: time statistics a gate may use (pytest-benchmark's names).
TIME_STATS = ("min", "max", "mean", "median")
#: one-sided Mann-Whitney p-value below which per-round times count as a real shift (only when both
#: runs saved their rounds, --benchmark-json or --benchmark-save-data).
RANK_TEST_ALPHA = 0.01
#: environment keys that must match for two runs' times to compare (the driver by its major version).
ENV_KEYS = ("device", "gpu_name", "driver", "cuda", "torch", "triton")


@dataclass(frozen=True)
class Finding:
    """One figure compared across two runs: a regression, an improvement, or a change judged neither."""

    name: str  # the benchmark (time) or the cell (memory, status)
    metric: str
    baseline: float | str | None
    current: float | str | None
    regression: bool
    note: str = ""
    improvement: bool = False

    @property
    def change_pct(self) -> float | None:
        if not isinstance(self.baseline, (int, float)) or not isinstance(self.current, (int, float)):
            return None
        if self.baseline == 0:
            return None
        return 100.0 * (self.current - self.baseline) / self.baseline

    @property
    def verdict(self) -> str:
        return "regression" if self.regression else "improvement" if self.improvement else "unchanged"

    def describe(self) -> str:
        change = f" ({self.change_pct:+.1f}%)" if self.change_pct is not None else ""
        note = f" {self.note}" if self.note else ""
        return f"{self.name} {self.metric}: {self.baseline} -> {self.current}{change}{note}"


@dataclass
class Comparison:
    """What ``compare_runs`` found: every finding, and how much of the two runs could be compared."""

    findings: list[Finding] = field(default_factory=list)
    benchmarks_compared: int = 0
    cells_compared: int = 0
    only_in_baseline: list[str] = field(default_factory=list)
    only_in_current: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.regression]

    @property
    def improvements(self) -> list[Finding]:
        return [f for f in self.findings if f.improvement]

    @property
    def within_noise(self) -> list[Finding]:
        return [f for f in self.findings if not f.regression and not f.improvement and f.note.startswith("within")]


# -- time


def compare_time(before: PassResult, after: PassResult, *, stat: str = DEFAULT_TIME_STAT,
                 threshold_pct: float = DEFAULT_TIME_PCT) -> Finding | None:
    """A finding when ``stat`` moved by more than ``threshold_pct``, judged against both runs' noise.

    Slower by more than the threshold is a regression only when the two runs' interquartile ranges do not
    overlap (current q1 > baseline q3) and, where both saved their rounds, a one-sided Mann-Whitney test
    agrees (p < RANK_TEST_ALPHA). Faster is judged the same way with the runs swapped. A move past the
    threshold that the noise explains is returned with neither flag and the note "within noise".
    """
    if stat not in TIME_STATS:
        raise ValueError(f"unknown time statistic {stat!r}; allowed: {', '.join(TIME_STATS)}")
    factor = 1 + threshold_pct / 100.0
    b, a = before.stats[stat], after.stats[stat]
    metric = f"{before.pass_name} {stat} time"
    if a > b * factor:
        separated, note = _outside_noise(before.stats, after.stats)
        return Finding(after.short_name, metric, b, a, regression=separated, note=note)
    if b > a * factor:
        separated, note = _outside_noise(after.stats, before.stats)
        return Finding(after.short_name, metric, b, a, regression=False, improvement=separated, note=note)
    return None


def _outside_noise(faster: dict, slower: dict) -> tuple[bool, str]:
    """Whether ``slower`` is slower than ``faster`` beyond both runs' noise, and a note saying why (not)."""
    if slower["q1"] <= faster["q3"]:
        return False, "within noise (IQRs overlap)"
    if faster.get("data") and slower.get("data"):
        p = mann_whitney_greater_p(slower["data"], faster["data"])
        if p >= RANK_TEST_ALPHA:
            return False, f"within noise (rank test p={p:.2g})"
        return True, f"IQRs apart, rank test p={p:.2g}"
    return True, "IQRs apart"


def mann_whitney_greater_p(xs: list[float], ys: list[float]) -> float:
    """One-sided p-value that ``xs`` tend to be larger than ``ys`` (Mann-Whitney U, normal approximation
    with tie and continuity correction; fine for the 10+ rounds every benchmark has)."""
    return float(mannwhitneyu(xs, ys, alternative="greater", method="asymptotic", use_continuity=True).pvalue)


# -- memory and status


def compare_memory(cell: str, before: dict, after: dict, *, threshold_pct: float) -> list[Finding]:
    """Every memory figure of one cell that changed.

    Growth by more than ``threshold_pct`` regresses; shrinking by as much (current × (1 + pct) < baseline)
    is an improvement; anything between is returned with neither flag.
    """
    factor = 1 + threshold_pct / 100.0
    findings = []
    for key in MEMORY_KEYS:
        if before.get(key) is None or after.get(key) is None or before[key] == after[key]:
            continue
        grew = after[key] > before[key] * factor
        shrank = before[key] > after[key] * factor
        findings.append(Finding(cell, key, before[key], after[key], regression=grew, improvement=shrank))
    return findings


def compare_accuracy(cell: str, before: Accuracy, after: Accuracy, *, factor: float) -> list[Finding]:
    """Each result tensor whose max error grew (or shrank) by more than ``factor``.

    Errors below the tensor's floor count as the floor, so a move between two round-off-sized errors (or from
    an exact zero) is not a finding; an error that became NaN/Inf regresses.
    """
    findings = []
    for name, a in after.tensors.items():
        b = before.tensors.get(name)
        if b is None:
            continue
        metric = f"{name} max error"
        if a.max_abs_error is None or b.max_abs_error is None:
            if (a.max_abs_error is None) != (b.max_abs_error is None):
                findings.append(Finding(cell, metric, _error_text(b), _error_text(a),
                                        regression=a.max_abs_error is None, improvement=b.max_abs_error is None))
            continue
        floor = max(before.floor_of(name), after.floor_of(name))
        grown, was = max(a.max_abs_error, floor), max(b.max_abs_error, floor)
        if grown > factor * was or was > factor * grown:
            findings.append(Finding(cell, metric, b.max_abs_error, a.max_abs_error, regression=grown > factor * was,
                                    improvement=was > factor * grown, note=f"factor {factor:g}, floor {floor:.3g}"))
    return findings


def _error_text(t) -> str | float:
    return t.max_abs_error if t.max_abs_error is not None else f"{t.nan_count} NaN, {t.inf_count} Inf"


def status_change(cell: str, before: str, after: str) -> Finding | None:
    """A cell fine in one run and not in the other (wrong, OOM, capture failed): regression or improvement."""
    was_ok, is_ok = before == "ok", after == "ok"
    if was_ok == is_ok:
        return None
    return Finding(cell, "status", before, after, regression=was_ok, improvement=is_ok)


def environment_mismatches(baseline: Run, current: Run) -> list[str]:
    """What differs between the environments of two runs (``ENV_KEYS``; the driver by its major version)."""
    envs = []
    for run in (baseline, current):
        env = dict(run.env)
        if env.get("driver"):
            env["driver"] = str(env["driver"]).split(".")[0]
        envs.append(env)
    return [f"{key}: {envs[0].get(key)} vs {envs[1].get(key)}"
            for key in ENV_KEYS if envs[0].get(key) != envs[1].get(key)]


# -- whole runs


def compare_runs(baseline: Run, current: Run, *, time_stat: str = DEFAULT_TIME_STAT,
                 time_pct: float | None = DEFAULT_TIME_PCT, memory_pct: float | None = DEFAULT_MEMORY_PCT,
                 accuracy_factor: float | None = DEFAULT_ACCURACY_FACTOR) -> Comparison:
    """Latency per benchmark; memory, accuracy and status per cell, of two runs (None: that gate off)."""
    findings: list[Finding] = []
    before_passes, after_passes = baseline.passes(), current.passes()
    common = sorted(before_passes.keys() & after_passes.keys())
    if time_pct is not None:
        for key in common:
            finding = compare_time(before_passes[key], after_passes[key], stat=time_stat, threshold_pct=time_pct)
            if finding is not None:
                findings.append(finding)
    cells = sorted(baseline.cells.keys() & current.cells.keys())
    compared_cells = 0
    for key in cells:
        before, after = baseline.cells[key], current.cells[key]
        if "pending" in (before.status, after.status):
            continue
        compared_cells += 1
        change = status_change(key, before.status, after.status)
        if change is not None:
            findings.append(change)
        if before.status in TIMED_STATUSES and after.status in TIMED_STATUSES and memory_pct is not None:
            findings += compare_memory(key, before.memory, after.memory, threshold_pct=memory_pct)
        if before.status in TIMED_STATUSES and after.status in TIMED_STATUSES:
            if accuracy_factor is not None and before.accuracy is not None and after.accuracy is not None:
                findings += compare_accuracy(key, before.accuracy, after.accuracy, factor=accuracy_factor)

    def names(passes: dict, keys) -> list[str]:
        return sorted(passes[k].short_name for k in keys)

    return Comparison(
        findings=findings,
        benchmarks_compared=len(common),
        cells_compared=compared_cells,
        only_in_baseline=names(before_passes, before_passes.keys() - after_passes.keys()),
        only_in_current=names(after_passes, after_passes.keys() - before_passes.keys()),
    )
