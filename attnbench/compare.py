"""Cell-by-cell comparison of two runs: the memory gate (exact), the latency gate (noise-aware) and OOM changes.

The figure-level functions work on pytest-benchmark entries keyed by ``fullname``:
``{"stats": {...}, "extra_info": {...}}``. ``compare_runs`` takes two whole saved runs (the JSON that
``--benchmark-autosave`` or ``--benchmark-json`` writes) and is what ``attnbench gate`` judges with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .grid import cell_key as grid_cell_key

#: memory figures compared per cell; census bytes are exact, the allocator's figures nearly so.
MEMORY_KEYS = ("saved_bytes", "mem_before_backward_bytes", "peak_bytes")
#: the default latency gate: median more than 10% slower, and outside both runs' noise.
DEFAULT_TIME_STAT = "median"
DEFAULT_TIME_PCT = 10.0
DEFAULT_MEMORY_PCT = 0.0
#: time statistics a gate may use (pytest-benchmark's names).
TIME_STATS = ("min", "max", "mean", "median")
#: one-sided Mann-Whitney p-value below which per-round times count as a real shift (only when both
#: runs saved their rounds, --benchmark-json or --benchmark-save-data).
RANK_TEST_ALPHA = 0.01
#: environment keys under machine_info.attnbench.env that must match for two runs to be compared.
ENV_KEYS = ("device", "gpu_name", "driver", "cuda", "torch", "triton")


@dataclass(frozen=True)
class Finding:
    """One cell's figure compared across two runs: a regression, an improvement, or a change judged neither."""

    name: str
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
        return f"{self.name} {self.metric}: {self.baseline} -> {self.current}{change}{' ' + self.note if self.note else ''}"


# -- figures of two runs' entries


def compare_memory(baseline: dict, current: dict, *, threshold_pct: float) -> list[Finding]:
    """Every memory figure that changed for a cell present in both runs.

    Growth by more than ``threshold_pct`` regresses; shrinking by as much (current × (1 + pct) < baseline)
    is an improvement; anything between is returned with neither flag.
    """
    factor = 1 + threshold_pct / 100.0
    findings = []
    for name in sorted(baseline.keys() & current.keys()):
        before, after = baseline[name].get("extra_info", {}), current[name].get("extra_info", {})
        for key in MEMORY_KEYS:
            if before.get(key) is None or after.get(key) is None or before[key] == after[key]:
                continue
            grew = after[key] > before[key] * factor
            shrank = before[key] > after[key] * factor
            findings.append(Finding(name, key, before[key], after[key], regression=grew, improvement=shrank))
    return findings


def compare_time(baseline: dict, current: dict, *, stat: str = DEFAULT_TIME_STAT,
                 threshold_pct: float = DEFAULT_TIME_PCT) -> list[Finding]:
    """Every benchmark whose ``stat`` moved by more than ``threshold_pct``, judged against both runs' noise.

    Slower by more than the threshold is a regression only when the two runs' interquartile ranges do not
    overlap (current q1 > baseline q3) and, where both saved their rounds, a one-sided Mann-Whitney test
    agrees (p < RANK_TEST_ALPHA). Faster is judged the same way with the runs swapped. A move past the
    threshold that the noise explains is returned with neither flag and the note "within noise".
    """
    if stat not in TIME_STATS:
        raise ValueError(f"unknown time statistic {stat!r}; allowed: {', '.join(TIME_STATS)}")
    factor = 1 + threshold_pct / 100.0
    findings = []
    for name in sorted(baseline.keys() & current.keys()):
        before, after = baseline[name].get("stats") or {}, current[name].get("stats") or {}
        if before.get(stat) is None or after.get(stat) is None:
            continue
        if after[stat] > before[stat] * factor:
            separated, note = _outside_noise(before, after)
            findings.append(Finding(name, f"{stat} time", before[stat], after[stat], regression=separated, note=note))
        elif before[stat] > after[stat] * factor:
            separated, note = _outside_noise(after, before)
            findings.append(Finding(name, f"{stat} time", before[stat], after[stat], regression=False,
                                    improvement=separated, note=note))
    return findings


def _outside_noise(faster: dict, slower: dict) -> tuple[bool, str]:
    """Whether ``slower`` is slower than ``faster`` beyond both runs' noise, and a note saying why (not)."""
    if faster.get("q3") is None or slower.get("q1") is None:
        return False, "within noise (no quartiles saved)"
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
    with tie correction; fine for the 10+ rounds every benchmark has)."""
    n_x, n_y = len(xs), len(ys)
    pooled = sorted([(v, 0) for v in xs] + [(v, 1) for v in ys])
    rank_sum_x, tie_term, i = 0.0, 0.0, 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        mid_rank = (i + j) / 2 + 1  # ranks are 1-based; tied values share the middle rank
        rank_sum_x += mid_rank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 0)
        ties = j - i + 1
        tie_term += ties**3 - ties
        i = j + 1
    u_x = rank_sum_x - n_x * (n_x + 1) / 2
    n = n_x + n_y
    variance = n_x * n_y / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:
        return 1.0
    z = (u_x - n_x * n_y / 2 - 0.5) / math.sqrt(variance)  # 0.5: continuity correction
    return 0.5 * math.erfc(z / math.sqrt(2))


def oom_changes(baseline: dict, current: dict, current_status: dict[str, str]) -> list[Finding]:
    """Cells measured in the baseline that are OOM now (a regression), by cell key in extra_info.

    The in-run gate's view (--attn-memory-compare-fail): only the baseline's entries are known, not its cell
    statuses. ``compare_runs`` uses ``status_changes``, which sees both directions.
    """
    findings, seen = [], set()
    for name, entry in baseline.items():
        key = cell_key(entry)
        status = current_status.get(key)
        if name not in current and key not in seen and status is not None and status.startswith("oom"):
            seen.add(key)
            findings.append(Finding(key, "status", "ok", status, regression=True))
    return findings


def status_changes(baseline_status: dict[str, str], current_status: dict[str, str]) -> list[Finding]:
    """Cells OOM in one run and measured in the other: a new OOM regresses, one that went away improves."""
    findings = []
    for key in sorted(baseline_status.keys() & current_status.keys()):
        before, after = baseline_status[key], current_status[key]
        was_oom, is_oom = before.startswith("oom"), after.startswith("oom")
        if was_oom != is_oom:
            findings.append(Finding(key, "status", before, after, regression=is_oom, improvement=was_oom))
    return findings


def cell_key(entry: dict) -> str | None:
    """The grid cell of a benchmark entry, as ``Cell.key`` spells it (None for a non-attnbench benchmark)."""
    try:
        return grid_cell_key(entry.get("extra_info", {}))
    except KeyError:
        return entry.get("param")


# -- whole runs


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


def entries_by_fullname(run: dict) -> dict[str, dict]:
    """A saved run's benchmark entries keyed by fullname."""
    return {b["fullname"]: b for b in run.get("benchmarks", [])}


def cell_statuses(run: dict) -> dict[str, str]:
    """Each cell's status: from the run's ``attnbench.cells`` records, else ``ok`` for a cell with benchmarks."""
    statuses = {cell_key(b): "ok" for b in run.get("benchmarks", [])}
    statuses.pop(None, None)
    for record in (run.get("attnbench") or {}).get("cells", []):
        if record.get("key") and record.get("status") in ("ok", "oom-predicted", "oom-measured"):
            statuses[record["key"]] = record["status"]
    return statuses


def environment_mismatches(baseline: dict, current: dict) -> list[str]:
    """What differs between the environments of two runs (``ENV_KEYS``; the driver by its major version)."""
    envs = []
    for run in (baseline, current):
        env = dict(((run.get("machine_info") or {}).get("attnbench") or {}).get("env") or {})
        if env.get("driver"):
            env["driver"] = str(env["driver"]).split(".")[0]
        envs.append(env)
    run_devices = [(run.get("attnbench") or {}).get("device") for run in (baseline, current)]
    mismatches = [f"{key}: {envs[0].get(key)} vs {envs[1].get(key)}"
                  for key in ENV_KEYS if envs[0].get(key) != envs[1].get(key)]
    if run_devices[0] != run_devices[1]:
        mismatches.append(f"run device: {run_devices[0]} vs {run_devices[1]}")
    return mismatches


def compare_runs(baseline: dict, current: dict, *, time_stat: str = DEFAULT_TIME_STAT,
                 time_pct: float = DEFAULT_TIME_PCT, memory_pct: float = DEFAULT_MEMORY_PCT) -> Comparison:
    """Latency per benchmark, memory per cell, and OOM per cell, of two saved runs."""
    before, after = entries_by_fullname(baseline), entries_by_fullname(current)
    common = sorted(before.keys() & after.keys())
    findings = compare_time(before, after, stat=time_stat, threshold_pct=time_pct)
    # memory figures belong to the cell, not the pass: compare each cell once
    cell_before, cell_after = {}, {}
    for name in common:
        key = cell_key(before[name]) or name
        cell_before.setdefault(key, before[name])
        cell_after.setdefault(key, after[name])
    findings += compare_memory(cell_before, cell_after, threshold_pct=memory_pct)
    status_before, status_after = cell_statuses(baseline), cell_statuses(current)
    oom_cells = {k for k in status_before.keys() & status_after.keys()
                 if status_before[k].startswith("oom") or status_after[k].startswith("oom")}
    findings += status_changes(status_before, status_after)
    return Comparison(
        findings=findings,
        benchmarks_compared=len(common),
        cells_compared=len(cell_before.keys() | oom_cells),
        only_in_baseline=sorted(before.keys() - after.keys()),
        only_in_current=sorted(after.keys() - before.keys()),
    )
