"""``attnbench history [STORAGE_OR_RUN_FILES...] --html DIR``: every cell's figures over commits, and steps.

Runs are read through ``attnbench.record`` (``.json`` and ``.json.gz``, a storage folder searched whole) and
grouped by environment (``Run.environment``: the device measured, driver major version, CUDA, torch, triton,
timing mode); runs of different environments never share a line. Within an environment, commits are ordered
by commit time (pytest-benchmark's ``commit_info``); several runs of one commit are pooled per cell and
metric: the median of the runs' values, and their spread (min, max).

Steps. Each (cell, metric) series, one value per commit, is taken in log space (a step is a ratio) and divided
by its noise σ: the largest of the commit-to-commit noise (1.4826 × the median absolute difference of
consecutive commits / √2, or the root mean square of those differences without the largest fifth, whichever
is larger: a few steps move neither; times 1 + 2.5/√k for an estimate from k differences),
the spread between runs of one commit, and a floor per kind of figure (NOISE_FLOOR). Change points are the
exact minimum of PELT's objective (squared error around each segment's mean, plus PENALTY_PER_LOG_N × ln n
per change point, segments of at least MIN_SEGMENT commits); a change point is kept as a step only when

- the segments' medians differ by at least STEP_NOISE_MULTIPLE σ and by MIN_STEP_RATIO of the kind,
- at least PERSISTENCE of each segment lies on its own side of the midpoint between the medians (a commit
  that spikes and comes back is not a step), and
- where the rounds were saved (``--benchmark-json``), a one-sided Mann-Whitney test between the rounds of
  the commits next to the step agrees (p < RANK_TEST_ALPHA, the gate's rule).

Change points that fail are dropped and their neighbours judged again over the merged segments. A step is
reported at the first commit of its new segment; a step at the newest commit is listed once one more
commit confirms it (the gate judges a single new run).

Exit codes: 0 written; 2 nothing could be read (every run skipped, or none found) or bad arguments; 3 an
output could not be written.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import render
from .compare import RANK_TEST_ALPHA, mann_whitney_greater_p
from .grid import parse_positive_int
from .record import DEFAULT_STORAGE, PASSES, TIMED_STATUSES, CellRecord, Commit, RunError, load

EXIT_OK, EXIT_NOTHING_READ, EXIT_OUTPUT_ERROR = 0, 2, 3


@dataclass(frozen=True)
class Metric:
    """A figure followed over commits; every one is worse when larger."""

    label: str
    kind: str  # "time" (seconds), "memory" (bytes) or "error" (max |got - float64 reference|)


METRICS: dict[str, Metric] = {
    "forward_time": Metric("forward median time", "time"),
    "backward_time": Metric("backward median time", "time"),
    "mem_before_backward_bytes": Metric("memory before backward", "memory"),
    "peak_bytes": Metric("peak memory", "memory"),
    "saved_bytes": Metric("saved for backward (census)", "memory"),
    "max_error": Metric("max error", "error"),
}
#: the noise σ never goes below this (log units: 0.005 is 0.5%); memory figures are exact.
NOISE_FLOOR = {"time": 0.005, "memory": 1e-4, "error": 0.05}
#: a step smaller than this ratio is not listed, however clear (errors vary with the random inputs).
MIN_STEP_RATIO = {"time": 1.02, "memory": 1.0, "error": 2.0}
#: the commit-to-commit σ read from k differences is multiplied by 1 + SMALL_SAMPLE_INFLATION / √k.
SMALL_SAMPLE_INFLATION = 2.5
PENALTY_PER_LOG_N = 3.0
MIN_SEGMENT = 2
STEP_NOISE_MULTIPLE = 4.0
PERSISTENCE = 0.75
#: commits on each side of a step whose rounds the rank test compares.
RANK_TEST_COMMITS = 3
#: d2: the expected range of n normal samples in σ, to read σ from the spread of a commit's runs.
_RANGE_D2 = {2: 1.128, 3: 1.693, 4: 2.059, 5: 2.326, 6: 2.534, 7: 2.704, 8: 2.847}
#: below this many files, loading in one process is faster than starting workers.
PARALLEL_FROM_FILES = 64


# -- reading runs


@dataclass(frozen=True)
class Skipped:
    """A run the history leaves out, and why."""

    path: str
    reason: str


#: a cell's figure in RunFigures.figures: its value and, for times, the rounds' quartiles (NaN where none).
VALUE, Q1, Q3 = 0, 1, 2


@dataclass
class RunFigures:
    """What the history needs of one run: its commit, environment, and every cell's figures by metric.

    ``figures[metric]`` holds one row per cell, in ``params``' order: (value, q1, q3), NaN where the cell has
    no such figure (a figure read from a run is always finite) or, outside times, no quartiles.
    """

    path: str
    commit: Commit
    environment: tuple[tuple[str, str], ...]
    plants: dict
    params: dict[str, dict]  # cell key -> axes
    status: dict[str, str]
    figures: dict[str, np.ndarray]  # metric -> (cells × 3) array
    rounds: dict[tuple[str, str], tuple[float, ...]]  # (cell key, metric) -> the rounds' times, where saved
    floors: dict[str, float]  # cell key -> accuracy floor


def cell_figures(rec: CellRecord) -> tuple[dict[str, tuple[float, float, float]], dict[str, tuple[float, ...]],
                                           float | None]:
    """The figures of one cell record that can be followed (a cell not measured has none) as (value, q1, q3),
    the rounds' times of its passes where saved, and its error floor."""
    if rec.status not in TIMED_STATUSES:
        return {}, {}, None
    figures: dict[str, tuple[float, float, float]] = {}
    rounds: dict[str, tuple[float, ...]] = {}
    for pass_name in PASSES:
        result = rec.passes.get(pass_name)
        if result is not None:
            stats = result.stats
            figures[f"{pass_name}_time"] = (stats["median"], stats["q1"], stats["q3"])
            if stats.get("data"):
                rounds[f"{pass_name}_time"] = tuple(stats["data"])
    for key in ("mem_before_backward_bytes", "peak_bytes", "saved_bytes"):
        if rec.memory.get(key) is not None:
            figures[key] = (float(rec.memory[key]), math.nan, math.nan)
    floor = None
    if rec.accuracy is not None:
        errors = [t.max_abs_error for t in rec.accuracy.tensors.values()]
        if errors and all(e is not None for e in errors):  # NaN/Inf shows in the cell's status, not on this line
            figures["max_error"] = (max(errors), math.nan, math.nan)
        floor = rec.accuracy.floor
    return figures, rounds, floor


@contextlib.contextmanager
def _collector_paused():
    """Reading a run allocates a few hundred thousand short-lived objects and no reference cycles; the cyclic
    collector would walk them again and again (about a seventh of the reading time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_run(path: str) -> RunFigures | Skipped:
    """One run's figures, or why the history cannot use it."""
    try:
        with _collector_paused():
            run = load(path)
    except RunError as exc:
        return Skipped(path, str(exc))
    if not run.complete:
        return Skipped(path, f"incomplete run ({run.stop_reason or 'stopped early'})")
    commit = run.source_commit
    if commit is None:
        return Skipped(path, "no commit with its time in commit_info (measured outside a git checkout?)")
    if commit.dirty:
        return Skipped(path, f"commit {commit.short_id} had uncommitted changes: the commit does not say what was "
                             "measured")
    # a few arrays instead of an object per figure: cheap to send back from a worker, and to pool
    figures = {metric: np.full((len(run.cells), 3), math.nan) for metric in METRICS}
    rounds, floors = {}, {}
    for row, (key, rec) in enumerate(run.cells.items()):
        cell, cell_rounds, floor = cell_figures(rec)
        for metric, observation in cell.items():
            figures[metric][row] = observation
        rounds.update(((key, metric), times) for metric, times in cell_rounds.items())
        if floor is not None:
            floors[key] = floor
    return RunFigures(str(path), commit, run.environment, run.plants,
                      {key: rec.cell.params() for key, rec in run.cells.items()},
                      {key: rec.status for key, rec in run.cells.items()},
                      {metric: column for metric, column in figures.items() if not np.isnan(column[:, VALUE]).all()},
                      rounds, floors)


def find_run_files(sources: Iterable[str | Path]) -> tuple[list[str], list[Skipped]]:
    """Every run file named or under a named folder (``*.json``, ``*.json.gz``), and sources that are neither."""
    files, missing = [], []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            found = sorted(p for p in source.rglob("*") if p.is_file() and p.name.endswith((".json", ".json.gz")))
            if not found:
                missing.append(Skipped(str(source), "a folder with no run files (*.json, *.json.gz)"))
            files += [str(p) for p in found]
        elif source.exists():
            files.append(str(source))
        else:
            missing.append(Skipped(str(source), "no such file or folder"))
    return list(dict.fromkeys(files)), missing


def read_runs(files: list[str], *, workers: int = 1) -> tuple[list[RunFigures], list[Skipped]]:
    """Every file's figures (in worker processes when there are many), and the runs skipped with the reason."""
    if workers > 1 and len(files) >= PARALLEL_FROM_FILES:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(read_run, files, chunksize=16))
    else:
        results = [read_run(f) for f in files]
    return [r for r in results if isinstance(r, RunFigures)], [r for r in results if isinstance(r, Skipped)]


# -- pooling by environment and commit


@dataclass
class CommitPoint:
    """One commit of an environment's history: the commit and the runs pooled at it."""

    commit: Commit
    runs: list[str]
    plants: list[dict]


@dataclass
class Series:
    """One metric of one cell across an environment's commits (None where the cell has no figure)."""

    values: list[float | None]
    q1: list[float | None]
    q3: list[float | None]
    low: list[float | None]  # the lowest of the runs pooled at each commit
    high: list[float | None]
    rounds: list[tuple[float, ...] | None]
    run_values: list[list[float] | None] | None = None  # every run's value, at commits with more than one run


@dataclass(frozen=True)
class Step:
    """Where a cell's figure changed and stayed changed: the commit it began at, and by how much."""

    environment: str
    cell: str
    metric: str
    commit_index: int
    commit: Commit
    before: float
    after: float
    noise_multiple: float  # |ln(after / before)| / σ
    p_value: float | None = None  # rank test between rounds next to the step, where rounds were saved

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before else math.inf

    @property
    def regression(self) -> bool:
        return self.after > self.before

    @property
    def verdict(self) -> str:
        return "regression" if self.regression else "improvement"


@dataclass
class EnvironmentHistory:
    """The commits measured in one environment, every cell's series, and the steps found in them."""

    environment: tuple[tuple[str, str], ...]
    commits: list[CommitPoint]
    params: dict[str, dict]
    status: dict[str, list[str | None]]
    series: dict[str, dict[str, Series]]  # cell key -> metric -> series
    floors: dict[str, float]
    steps: list[Step] = field(default_factory=list)

    @property
    def label(self) -> str:
        return describe_environment(self.environment)


@dataclass
class History:
    environments: list[EnvironmentHistory]
    skipped: list[Skipped]
    runs_read: int

    @property
    def steps(self) -> list[Step]:
        """Every step, the newest commit first."""
        steps = [s for env in self.environments for s in env.steps]
        return sorted(steps, key=lambda s: (s.commit.time, s.commit_index), reverse=True)


def describe_environment(environment: tuple[tuple[str, str], ...]) -> str:
    """'NVIDIA H200, driver 550, cuda 12.4, torch 2.13.0, triton 3.2.0, timing device'."""
    fields = dict(environment)
    return ", ".join([fields.get("device", "?")] + [f"{k} {v}" for k, v in environment if k != "device"])


def pool(runs: list[RunFigures]) -> list[EnvironmentHistory]:
    """Runs grouped by environment, each group's commits in commit-time order, runs of one commit pooled."""
    by_env: dict[tuple, list[RunFigures]] = {}
    for run in runs:
        by_env.setdefault(run.environment, []).append(run)
    histories = []
    for environment, env_runs in by_env.items():
        by_commit: dict[str, list[RunFigures]] = {}
        for run in env_runs:
            by_commit.setdefault(run.commit.id, []).append(run)
        ordered = sorted(by_commit.values(), key=lambda rs: (rs[0].commit.time, rs[0].commit.id))
        commits = [CommitPoint(rs[0].commit, [r.path for r in rs], [r.plants for r in rs if r.plants])
                   for rs in ordered]
        params: dict[str, dict] = {}
        floors: dict[str, float] = {}
        for run in env_runs:
            params.update(run.params)
            floors.update(run.floors)
        keys = sorted(params)
        status = _pooled_statuses(keys, ordered)
        series = _pooled_series(keys, ordered)
        histories.append(EnvironmentHistory(environment, commits, params, status, series, floors))
    return sorted(histories, key=lambda h: h.label)


def _pooled_statuses(keys: list[str], ordered: list[list[RunFigures]]) -> dict[str, list[str | None]]:
    status: dict[str, list[str | None]] = {key: [None] * len(ordered) for key in keys}
    for i, runs in enumerate(ordered):
        if len(runs) == 1:  # one run at the commit (the usual case): its statuses as they are
            for key, cell_status in runs[0].status.items():
                status[key][i] = cell_status
            continue
        for key in {key for run in runs for key in run.status}:
            status[key][i] = _pooled_status([run.status.get(key) for run in runs])
    return status


def _pooled_status(statuses: list[str | None]) -> str | None:
    present = [s for s in statuses if s is not None]
    if not present:
        return None
    return "ok" if all(s == "ok" for s in present) else next(s for s in present if s != "ok")


def _pooled_series(keys: list[str], ordered: list[list[RunFigures]]) -> dict[str, dict[str, Series]]:
    """Every cell's series, metric by metric: at each commit the median of its runs' values (and quartiles),
    their lowest and highest, and the rounds of them all where each of those runs saved its rounds."""
    n = len(ordered)
    row = {key: i for i, key in enumerate(keys)}
    rows = {id(run): np.array([row[key] for key in run.params], dtype=np.int64) for runs in ordered for run in runs}
    series: dict[str, dict[str, Series]] = {key: {} for key in keys}
    for metric in METRICS:
        if not any(metric in run.figures for runs in ordered for run in runs):
            continue
        pooled = np.full((len(keys), n, 5), math.nan)  # cell, commit, (value, q1, q3, low, high)
        several: dict[int, dict[int, list[float]]] = {}  # cell -> commit -> the values of its runs
        rounds: dict[tuple[int, int], tuple[float, ...]] = {}  # (cell, commit) -> the rounds of its runs
        for i, runs in enumerate(ordered):
            found = [run for run in runs if metric in run.figures]
            if len(found) == 1:  # one run at the commit (the usual case): its figures as they are
                at, figures = rows[id(found[0])], found[0].figures[metric]
                pooled[at, i, :3] = figures
                pooled[at, i, 3] = pooled[at, i, 4] = figures[:, VALUE]
                rounds.update(((row[key], i), times) for (key, m), times in found[0].rounds.items() if m == metric)
            elif found:
                _pool_commit(pooled[:, i], found, metric, row, rows, several, rounds, i)
        for k, key in enumerate(keys):
            values = _optional(pooled[k, :, VALUE])
            if all(v is None for v in values):
                continue
            columns = [values, _optional(pooled[k, :, Q1]), _optional(pooled[k, :, Q3])]
            cell_rounds = [rounds.get((k, i)) for i in range(n)] if rounds else [None] * n
            if k in several:
                spread = [several[k].get(i) for i in range(n)]
                series[key][metric] = Series(*columns, _optional(pooled[k, :, 3]), _optional(pooled[k, :, 4]),
                                             cell_rounds, spread)
            else:
                series[key][metric] = Series(*columns, values, values, cell_rounds)
    return series


def _pool_commit(at: np.ndarray, found: list[RunFigures], metric: str, row: dict[str, int],
                 rows: dict[int, np.ndarray], several: dict[int, dict[int, list[float]]],
                 rounds: dict[tuple[int, int], tuple[float, ...]], commit_index: int) -> None:
    """Pool one metric of the runs ``found`` at one commit: into ``at`` (cell × (value, q1, q3, low, high)),
    ``several`` (each cell's runs' values, where more than one run has it) and ``rounds``."""
    stacked = np.full((len(found), len(at), 3), math.nan)
    for j, run in enumerate(found):
        stacked[j, rows[id(run)]] = run.figures[metric]
    present = ~np.isnan(stacked[:, :, VALUE])
    counts = present.sum(axis=0)
    some = counts > 0
    measured = 3 if METRICS[metric].kind == "time" else 1  # only times have quartiles
    at[some, :measured] = np.nanmedian(stacked[:, some, :measured], axis=0)
    at[some, 3] = np.nanmin(stacked[:, some, VALUE], axis=0)
    at[some, 4] = np.nanmax(stacked[:, some, VALUE], axis=0)
    for k in np.flatnonzero(counts > 1).tolist():
        several.setdefault(k, {})[commit_index] = stacked[present[:, k], k, VALUE].tolist()
    for key in {key for run in found for key, m in run.rounds if m == metric}:
        having = [run for j, run in enumerate(found) if present[j, row[key]]]
        if all((key, metric) in run.rounds for run in having):
            rounds[row[key], commit_index] = tuple(x for run in having for x in run.rounds[key, metric])


def _optional(column: np.ndarray) -> list[float | None]:
    """A column's values as floats, None where NaN (no figure)."""
    return [None if math.isnan(v) else v for v in column.tolist()]


# -- steps


def optimal_partitions(signals: np.ndarray, penalty: float, min_size: int = MIN_SEGMENT) -> list[list[int]]:
    """The change points minimising PELT's objective for each row of ``signals`` (m series × n points).

    The objective is ruptures' ``Pelt(model="l2", min_size=min_size, jump=1)``: the squared error around each
    segment's mean, plus ``penalty`` per segment. PELT finds the same minimum with pruning, which saves nothing
    on a series without changes (no candidate can be pruned) and runs in Python per series; here every series
    of one length is solved at once, exactly, in O(n²) array work. Returns each row's segment starts (the
    indices where a new segment begins), ascending.
    """
    m, n = signals.shape
    rows = np.arange(m)
    # rows are positions, columns series: the candidate starts of a segment are a contiguous block of rows
    c1 = np.zeros((n + 1, m))
    c2 = np.zeros((n + 1, m))
    np.cumsum(signals.T, axis=0, out=c1[1:])
    np.cumsum((signals * signals).T, axis=0, out=c2[1:])
    # reach[s] = (best objective of the points before s) - c2[s]: the part of a segment's cost that its start fixes
    reach = np.full((n + 1, m), np.inf)
    reach[0] = -penalty
    previous = np.zeros((n + 1, m), dtype=np.int64)
    for end in range(min_size, n + 1):
        # -- the last segment starts at 0, or at any s with min_size <= s <= end - min_size
        d = c1[end] - c1[0]
        total = reach[0] - d * d / end
        choice = np.zeros(m, dtype=np.int64)
        last = end - min_size
        if last >= min_size:
            d = c1[end] - c1[min_size:last + 1]
            np.square(d, out=d)
            d /= (end - np.arange(min_size, last + 1))[:, None]
            candidates = reach[min_size:last + 1] - d
            best = np.argmin(candidates, axis=0)
            value = candidates[best, rows]
            better = value < total
            total = np.where(better, value, total)
            choice = np.where(better, best + min_size, choice)
        previous[end] = choice
        reach[end] = total + penalty  # + c2[end] for the objective, - c2[end] for reach
    partitions = []
    for row in range(m):
        cuts, end = [], n
        while end > 0:
            end = int(previous[end, row])
            if end > 0:
                cuts.append(end)
        partitions.append(sorted(cuts))
    return partitions


def noise_sigma(log_values: np.ndarray, run_spread: list[list[float]], kind: str) -> float:
    """The series' noise σ in log units: commit-to-commit (robust to a few steps), between runs of one commit,
    and the kind's floor, whichever is largest."""
    sigma = NOISE_FLOOR[kind]
    if len(log_values) >= 3:
        differences = np.abs(np.diff(log_values))
        # two estimates a few steps do not move: the median difference, and the root mean square of the
        # differences without the largest fifth (at least two: a change and its undoing); whichever is larger
        k = len(differences)
        kept = np.sort(differences)[:k - min(max(2, k // 5), k - 2)]
        spread = max(1.4826 * float(np.median(differences)), math.sqrt(float(np.mean(kept * kept))))
        # an estimate from few differences is itself uncertain: it comes out low often enough to call noise a step
        inflation = 1 + SMALL_SAMPLE_INFLATION / math.sqrt(len(differences))
        sigma = max(sigma, inflation * spread / math.sqrt(2))
    ranges = [(max(v) - min(v)) / _RANGE_D2[min(len(v), 8)] for v in run_spread if len(v) >= 2]
    if ranges:
        sigma = max(sigma, float(np.median(ranges)))
    return sigma


def _log(values, floor: float) -> np.ndarray:
    return np.log(np.maximum(np.asarray(values, dtype=float), floor))


@dataclass
class _Candidate:
    cell: str
    metric: str
    points: np.ndarray  # commit index of each value
    log_values: np.ndarray
    sigma: float
    rounds: list


def _judge(c: _Candidate, cuts: list[int], kind: str) -> list[tuple[int, float, float, float, float | None]]:
    """The change points that are steps, as (cut, before, after, noise multiple, p); the others dropped
    one at a time, weakest first, and their neighbours judged again."""
    cuts = list(cuts)
    while cuts:
        bounds = [0, *cuts, len(c.log_values)]
        verdicts = []
        for i, cut in enumerate(cuts):
            before_seg, after_seg = c.log_values[bounds[i]:cut], c.log_values[cut:bounds[i + 2]]
            before, after = float(np.median(before_seg)), float(np.median(after_seg))
            delta = after - before
            multiple = abs(delta) / c.sigma
            mid = (before + after) / 2
            up = delta > 0
            persists = (np.mean((after_seg > mid) == up) >= PERSISTENCE
                        and np.mean((before_seg < mid) == up) >= PERSISTENCE)
            big = multiple >= STEP_NOISE_MULTIPLE and math.exp(abs(delta)) >= MIN_STEP_RATIO[kind] and delta != 0
            p = _rank_p(c.rounds[max(bounds[i], cut - RANK_TEST_COMMITS):cut],
                        c.rounds[cut:min(bounds[i + 2], cut + RANK_TEST_COMMITS)], up)
            ok = big and persists and (p is None or p < RANK_TEST_ALPHA)
            verdicts.append((ok, multiple, (cut, before, after, multiple, p)))
        failing = [(multiple, i) for i, (ok, multiple, _) in enumerate(verdicts) if not ok]
        if not failing:
            return [v[2] for v in verdicts]
        cuts.pop(min(failing)[1])
    return []


def _rank_p(before: list, after: list, up: bool) -> float | None:
    """One-sided Mann-Whitney p that the rounds after moved in the step's direction; None without rounds."""
    if not before or not after or any(r is None for r in before + after):
        return None
    xs = [x for r in after for x in r]
    ys = [x for r in before for x in r]
    return mann_whitney_greater_p(xs, ys) if up else mann_whitney_greater_p(ys, xs)


def find_steps(history: EnvironmentHistory) -> list[Step]:
    """The steps of every cell and metric of one environment (see the module's docstring for the rule)."""
    candidates: dict[int, list[_Candidate]] = {}
    for key, metrics in history.series.items():
        for metric, series in metrics.items():
            kind = METRICS[metric].kind
            points = np.array([i for i, v in enumerate(series.values) if v is not None], dtype=np.int64)
            if len(points) < 2 * MIN_SEGMENT:
                continue
            floor = history.floors.get(key, 0.0) if kind == "error" else 0.0
            floor = max(floor, 1e-300)
            log_values = _log([series.values[i] for i in points], floor)
            spread = [[math.log(max(x, floor)) for x in v] for v in (series.run_values or []) if v]
            sigma = noise_sigma(log_values, spread, kind)
            if float(np.ptp(log_values)) < STEP_NOISE_MULTIPLE * sigma:
                continue  # no two segments' medians can be that far apart
            candidates.setdefault(len(points), []).append(
                _Candidate(key, metric, points, log_values, sigma, [series.rounds[i] for i in points]))
    steps = []
    for n, group in candidates.items():
        signals = np.stack([(c.log_values - np.median(c.log_values)) / c.sigma for c in group])
        for c, cuts in zip(group, optimal_partitions(signals, PENALTY_PER_LOG_N * math.log(n))):
            for cut, before, after, multiple, p in _judge(c, cuts, METRICS[c.metric].kind):
                index = int(c.points[cut])
                steps.append(Step(history.label, c.cell, c.metric, index, history.commits[index].commit,
                                  math.exp(before), math.exp(after), multiple, p))
    return sorted(steps, key=lambda s: (s.commit_index, s.cell, s.metric))


def build_history(sources: Iterable[str | Path], *, workers: int = 1) -> History:
    """Read every run under ``sources``, pool it by environment and commit, and find the steps."""
    files, skipped = find_run_files(sources)
    runs, unreadable = read_runs(files, workers=workers)
    environments = pool(runs)
    for env in environments:
        env.steps = find_steps(env)
    return History(environments, skipped + unreadable, len(runs))


# -- markdown

#: steps listed in the markdown summary, at most (the page lists every one).
SUMMARY_STEPS = 20
SUMMARY_SKIPPED = 10


def format_value(metric: str, value: float | None) -> str:
    kind = METRICS[metric].kind
    if value is None:
        return render.MISSING
    if kind == "time":
        return render.duration(value)
    if kind == "memory":
        return render.size(value)
    return f"{value:.3g}"


def markdown(history: History, *, page: str | None = None) -> str:
    """A short summary for a GitHub job summary: counts, the latest steps, the runs skipped."""
    commits = sum(len(env.commits) for env in history.environments)
    cells = sum(len(env.series) for env in history.environments)
    steps = history.steps
    regressions = sum(s.regression for s in steps)
    lines = [f"### attnbench history: {len(steps)} step(s) ({regressions} regression(s), "
             f"{len(steps) - regressions} improvement(s))", ""]
    lines.append(f"{history.runs_read} run(s) read at {commits} commit(s) in {len(history.environments)} "
                 f"environment(s), {cells} cell line(s); {len(history.skipped)} run(s) skipped."
                 + (f" Every cell's plot: {render.text(page)}." if page else ""))
    for env in history.environments:
        planted = sum(1 for c in env.commits if c.plants)
        lines.append(f"- {render.text(env.label)}: {len(env.commits)} commit(s) from "
                     f"{render.code(env.commits[0].commit.short_id)} to {render.code(env.commits[-1].commit.short_id)}, "
                     f"{len(env.series)} cell(s)"
                     + (f"; {planted} commit(s) measured with planted regressions" if planted else ""))
    if steps:
        shown = steps[:SUMMARY_STEPS]
        lines += ["", f"Latest steps{f' ({len(shown)} of {len(steps)})' if len(steps) > len(shown) else ''}:", ""]
        rows = [[render.code(s.commit.short_id), s.commit.time.date().isoformat(), render.code(s.cell),
                 METRICS[s.metric].label,
                 format_value(s.metric, s.before), format_value(s.metric, s.after), f"{s.ratio:.3g}×",
                 f"{s.noise_multiple:.1f}σ" + (f", p={s.p_value:.2g}" if s.p_value is not None else ""),
                 f"**{s.verdict}**"] for s in shown]
        lines.append(render.table(["commit", "date", "cell", "metric", "before", "after", "change", "noise",
                                   "verdict"], rows))
    if len(history.environments) > 1:
        lines += ["", "Runs of different environments are kept on separate lines; each step names its own."]
    if history.skipped:
        shown = history.skipped[:SUMMARY_SKIPPED]
        count = f" ({len(shown)} of {len(history.skipped)})" if len(history.skipped) > len(shown) else ""
        lines += ["", f"Skipped runs{count}:", ""]
        lines.append(render.table(["run", "why skipped"], [[render.code(s.path), render.text(s.reason)] for s in shown]))
    return "\n".join(lines) + "\n"


# -- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``history`` subcommand's arguments."""
    parser.description = (
        "Every cell's time, memory and accuracy over commits, from saved runs, and the commit where each step "
        "began: a self-contained HTML page (--html) and a markdown summary (stdout, and --markdown). Exit 0: "
        "written; 2: no run could be read, or bad arguments; 3: an output could not be written."
    )
    parser.add_argument("sources", nargs="*", metavar="STORAGE_OR_RUN_FILE", default=[DEFAULT_STORAGE],
                        help=f"saved runs (.json, .json.gz) and folders searched for them (default: {DEFAULT_STORAGE})")
    parser.add_argument("--html", type=Path, metavar="DIR", help="write the page to DIR/index.html")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="also append the summary to FILE (e.g. $GITHUB_STEP_SUMMARY)")
    parser.add_argument("--screenshot", type=Path, metavar="PNG",
                        help="with --html: open the page in headless Chromium and save a screenshot (needs selenium "
                             "and chromium with chromium-driver)")
    parser.add_argument("--workers", type=parse_positive_int, metavar="N", default=min(os.cpu_count() or 1, 8),
                        help="processes reading runs (default: the CPU count, at most 8)")
    parser.set_defaults(run=run)


def run(args) -> int:
    """Entry point of ``attnbench history``."""
    from . import history_page

    if args.screenshot is not None and args.html is None:
        print("attnbench history: --screenshot needs --html DIR (the page to photograph)", file=sys.stderr)
        return EXIT_NOTHING_READ
    history = build_history(args.sources, workers=args.workers)
    if not history.environments:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in history.skipped[:5]) or "no run files found"
        print(f"attnbench history: no run could be read ({len(history.skipped)} skipped: {reasons}); pass saved runs "
              f"or the folder holding them (default {DEFAULT_STORAGE}/)", file=sys.stderr)
        return EXIT_NOTHING_READ
    page = None
    if args.html is not None:
        try:
            page = history_page.write(history, args.html)
        except OSError as exc:
            print(f"attnbench history: cannot write {args.html}/index.html: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_OUTPUT_ERROR
    summary = markdown(history, page=str(page) if page else None)
    print(summary, end="")
    if args.markdown is not None:
        try:
            with open(args.markdown, "a") as out:
                out.write(summary + "\n")
        except OSError as exc:
            print(f"attnbench history: cannot write --markdown {args.markdown}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_OUTPUT_ERROR
    if args.screenshot is not None:
        try:
            history_page.screenshot(page, args.screenshot)
        except history_page.BrowserUnavailable as exc:
            print(f"attnbench history: cannot take the screenshot: {exc}", file=sys.stderr)
            return EXIT_OUTPUT_ERROR
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """``attnbench history`` alone (``python -m attnbench.history``)."""
    parser = argparse.ArgumentParser(prog="attnbench history")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
