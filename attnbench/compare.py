"""Cell-by-cell comparison of two runs: the memory gate (exact) and the latency gate (noise-aware).

Both work on pytest-benchmark entries keyed by ``fullname``: ``{"stats": {...}, "extra_info": {...}}``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: memory figures compared per cell; census bytes are exact, the allocator's figures nearly so.
MEMORY_KEYS = ("saved_bytes", "mem_before_backward_bytes", "peak_bytes")
#: the default latency gate: median more than 10% slower, and outside both runs' noise.
DEFAULT_TIME_STAT = "median"
DEFAULT_TIME_PCT = 10.0
DEFAULT_MEMORY_PCT = 0.0
#: time statistics a gate may use (pytest-benchmark's names).
TIME_STATS = ("min", "max", "mean", "median")


@dataclass(frozen=True)
class Finding:
    """One cell's figure compared across two runs."""

    name: str
    metric: str
    baseline: float | None
    current: float | None
    regression: bool
    note: str = ""

    @property
    def change_pct(self) -> float | None:
        if self.baseline in (None, 0) or self.current is None:
            return None
        return 100.0 * (self.current - self.baseline) / self.baseline

    def describe(self) -> str:
        change = f" ({self.change_pct:+.1f}%)" if self.change_pct is not None else ""
        return f"{self.name} {self.metric}: {self.baseline} -> {self.current}{change}{' ' + self.note if self.note else ''}"


def compare_memory(baseline: dict, current: dict, *, threshold_pct: float) -> list[Finding]:
    """Every memory figure that changed for a cell present in both runs; growth over the threshold regresses."""
    findings = []
    for name in sorted(baseline.keys() & current.keys()):
        before, after = baseline[name].get("extra_info", {}), current[name].get("extra_info", {})
        for key in MEMORY_KEYS:
            if key not in before or key not in after or before[key] == after[key]:
                continue
            grew = after[key] > before[key] * (1 + threshold_pct / 100.0)
            findings.append(Finding(name, key, before[key], after[key], regression=grew))
    return findings


def oom_changes(baseline: dict, current: dict, current_status: dict[str, str]) -> list[Finding]:
    """Cells measured in the baseline that are OOM now (a regression), by cell key in extra_info."""
    findings = []
    for name, entry in baseline.items():
        key = _cell_key(entry.get("extra_info", {}))
        status = current_status.get(key)
        if name not in current and status is not None and status.startswith("oom"):
            findings.append(Finding(name, "status", None, None, regression=True, note=f"ok -> {status}"))
    return findings


def _cell_key(info: dict) -> str | None:
    try:
        mask = "causal" if info["causal"] else "full"
        return (f"{info['variant']}-s{info['seq_len']}-d{info['head_dim']}-b{info['batch']}-h{info['heads']}-"
                f"{info['dtype']}-{mask}")
    except KeyError:
        return None
