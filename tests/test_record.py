"""The saved-run record: the previous schema still reads with the same verdicts, untrustworthy runs are refused
by every tool (exit 2, the entry and field named, never a traceback, never a verdict), and a run cannot be
spoiled by an interruption or by a second run saving into the same storage.
"""

from __future__ import annotations

import copy
import gzip
import json
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from suite_runs import REPO_ROOT, SUITE_ENV, TINY_GRID, tiny_suite_run

from attnbench import cli, record, storage
from attnbench.grid import AXES, cell_key

V1 = Path(__file__).parent / "data" / "v1"


def v1_run(name: str, tmp_path: Path) -> Path:
    """A run saved by the previous schema on an H200 (2026-11-28), unpacked."""
    path = tmp_path / f"{name}.json"
    path.write_bytes(gzip.decompress((V1 / f"{name}.json.gz").read_bytes()))
    return path


def gate(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["gate", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return code, out, err


def report(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["report", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return code, out, err


def table_rows(markdown: str) -> list[tuple[str, ...]]:
    return [tuple(c.strip() for c in line.strip().strip("|").split("|")) for line in markdown.splitlines()
            if line.startswith("|") and not set(line.strip()) <= set("|-: ")]


def gate_findings(markdown: str) -> list[list[str]]:
    """(cell key, metric, verdict) of every row of the gate's table."""
    found = []
    for row in table_rows(markdown):
        if not row[0].startswith("`"):
            continue
        name = row[0].strip("`")
        key = re.fullmatch(r"test_\w+\[(.+)\]", name)
        found.append([key.group(1) if key else name, row[1], row[5].strip("*")])
    return sorted(found)


# -- schema 1: the runs committed before the record changed


@pytest.mark.parametrize(("baseline", "current"), [("aa1", "aa2"), ("base", "planted")])
def test_previous_schema_gates_with_the_verdicts_it_gave(capsys, tmp_path, baseline, current):
    """Verdicts of the previous gate (commit e5d1fef) on these H200 runs, kept in gate_verdicts.json."""
    expected = json.loads((V1 / "gate_verdicts.json").read_text())[f"{baseline}-{current}"]
    code, out, err = gate(capsys, v1_run(baseline, tmp_path), v1_run(current, tmp_path))
    assert code == expected["exit"], f"expected exit {expected['exit']}, got {code}:\n{out}{err}"
    assert gate_findings(out) == expected["findings"], "the findings should be the previous gate's, cell by cell"
    assert "Compared 280 benchmarks in 140 cells" in out


def _without_later_sections(markdown: str) -> str:
    """The report without the sections added after the previous report was made ("Side by side")."""
    start = markdown.index("## Side by side")
    return markdown[:start] + markdown[markdown.index("## Tables (the seed's layout)", start):]


def test_previous_schema_reports_the_tables_it_gave(capsys, tmp_path):
    """Every table row of the previous report (commit e5d1fef) of an H200 run, unchanged; the sections added
    since come on top."""
    code, out, err = report(capsys, v1_run("base", tmp_path))
    assert code == 0, err
    assert table_rows(_without_later_sections(out)) == table_rows((V1 / "report_base.md").read_text())


def test_a_compressed_run_reads_like_the_run(capsys, tmp_path):
    code, out, _ = report(capsys, V1 / "base.json.gz")
    assert code == 0 and table_rows(_without_later_sections(out)) == table_rows((V1 / "report_base.md").read_text())
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes((V1 / "base.json.gz").read_bytes()[:1000])
    code, _, err = report(capsys, broken)
    assert code == 2 and "cannot read run file" in err, err


def test_previous_schema_reads_into_the_same_model(tmp_path):
    run = record.load(v1_run("base", tmp_path))
    assert (run.schema_version, run.device, run.timing, run.complete) == (1, "cuda", record.Timing(), True)
    assert run.device_label == "NVIDIA H200" and len(run.cells) == 140
    cell = run.cells["naive-s16384-d16-b8-h1-fp32-full"]
    assert cell.memory["mem_before_backward_bytes"] == 16417.5 * 2**20 and set(cell.passes) == {"forward",
                                                                                               "backward"}


# -- refusals: what the reader cannot trust, named


def _first_benchmark(data):
    return data["benchmarks"][0]


def _first_cell(data):
    return data["attnbench"]["cells"][0]


REFUSALS = {
    "stats missing": (lambda d: _first_benchmark(d).pop("stats"), "stats is missing"),
    "stats null": (lambda d: _first_benchmark(d).update(stats=None), "stats is missing"),
    "median NaN": (lambda d: _first_benchmark(d)["stats"].update(median=math.nan), "median is nan, not a finite"),
    "median a string": (lambda d: _first_benchmark(d)["stats"].update(median="0.1"), "stats.median is '0.1'"),
    "median missing": (lambda d: _first_benchmark(d)["stats"].pop("median"), "stats.median is missing"),
    "no fullname": (lambda d: _first_benchmark(d).pop("fullname"), "fullname is missing"),
    "flops negative": (lambda d: _first_benchmark(d)["extra_info"].update(flops=-1.0), "extra_info.flops"),
    "memory removed": (lambda d: _first_cell(d).pop("saved_bytes"), "saved_bytes missing"),
    "memory a string": (lambda d: _first_cell(d).update(saved_bytes="lots"), "saved_bytes is 'lots'"),
    "unknown status": (lambda d: _first_cell(d).update(status="great"), "status is 'great'"),
    "unknown schema": (lambda d: d["attnbench"].update(schema_version=99), "unknown attnbench schema_version 99"),
    "no benchmarks for a measured cell": (lambda d: d.update(benchmarks=[]), "has no benchmark"),
    "attnbench null": (lambda d: d.update(attnbench=None), "no 'attnbench' section"),
    "cell without record": (lambda d: d["attnbench"]["cells"].pop(0), "has no record under attnbench.cells"),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_suite_run(tmp_path_factory)


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("side", ["baseline", "current"])
def test_gate_refuses_an_untrustworthy_run_naming_what(tiny, capsys, tmp_path, case, side):
    edit, message = REFUSALS[case]
    data = tiny.data()
    edit(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    pair = (bad, tiny.json_path) if side == "baseline" else (tiny.json_path, bad)
    code, out, err = gate(capsys, *pair)
    assert code == 2 and "cannot judge" in err and message in err, f"{case}: exit {code}, stderr:\n{err}"
    assert "attnbench gate: OK" not in out and "attnbench gate: FAIL" not in out


@pytest.mark.parametrize("case", list(REFUSALS))
def test_report_refuses_an_untrustworthy_run_naming_what(tiny, capsys, tmp_path, case):
    edit, message = REFUSALS[case]
    data = tiny.data()
    edit(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    code, out, err = report(capsys, bad)
    assert code == 2 and message in err and out == "", f"{case}: exit {code}, stderr:\n{err}"


# -- mutated runs: whatever is broken, the tools say so and never pass


def _sites(data: dict) -> list[tuple]:
    """Paths to every value the reader relies on, in one saved run."""
    sites: list[tuple] = [("attnbench", "schema_version"), ("attnbench", "timing", "mode"),
                          ("attnbench", "timing", "flush_l2"), ("attnbench", "complete"), ("attnbench", "cells"),
                          ("attnbench",), ("machine_info",), ("machine_info", "attnbench", "env"),
                          ("machine_info", "attnbench", "env", "device"), ("benchmarks",)]
    for i, _ in enumerate(data["benchmarks"]):
        sites += [("benchmarks", i, "stats"), ("benchmarks", i, "params"), ("benchmarks", i, "extra_info"),
                  ("benchmarks", i, "fullname"), ("benchmarks", i, "extra_info", "pass"),
                  ("benchmarks", i, "extra_info", "flops"), ("benchmarks", i, "stats", "rounds")]
        sites += [("benchmarks", i, "stats", name) for name in record.REQUIRED_STATS]
        sites += [("benchmarks", i, "params", axis) for axis in AXES]
    for j, _ in enumerate(data["attnbench"]["cells"]):
        sites += [("attnbench", "cells", j, name) for name in (*AXES, "status", *record.REQUIRED_MEMORY)]
        # optional figures: absent or null is valid, anything else they hold must be a number
        sites += [("attnbench", "cells", j, "accuracy_s"),
                  ("attnbench", "cells", j, "accuracy", "tensors", "out", "ref_max_abs")]
    return sites


#: a value nested past any recursion limit, written into the JSON text in the placeholder's place
DEEP_PLACEHOLDER = "<nested 100000 deep>"
DEEP_JSON = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(("edit", "says"), [
    (lambda stats: stats.update(median=0.0), "stats.median is 0.0: a round takes time"),
    (lambda stats: stats.update(min=stats["max"] * 2), "is above stats.q1"),
    (lambda stats: stats.update(median=stats["max"] * 2), "stats.median"),
    (lambda stats: stats.update(mean=stats["max"] * 3), "stats.mean"),
], ids=["median-zero", "min-above-q1", "median-above-max", "mean-outside"])
def test_impossible_statistics_are_refused_naming_them(tiny, capsys, tmp_path, edit, says):
    """Well typed but impossible: every figure the reader accepts must be one the tools can use (a median of 0
    divided by zero in the report, and read as a -100% change in the gate)."""
    data = tiny.data()
    edit(data["benchmarks"][0]["stats"])
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    code, out, err = report(capsys, path)
    assert code == 2 and says in err and out == "", f"exit {code}\n{err}"
    code, out, err = gate(capsys, tiny.json_path, path)
    assert code == 2 and says in err, f"exit {code}\n{err}"


@pytest.mark.parametrize("field", ["bound", "floor"])
def test_an_accuracy_bound_or_floor_of_zero_is_refused(tiny, capsys, tmp_path, field):
    data = tiny.data()
    accuracy = next(c["accuracy"] for c in data["attnbench"]["cells"] if c.get("accuracy"))
    (accuracy["tensors"]["out"] if field == "bound" else accuracy)[field] = 0.0
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    code, _, err = report(capsys, path)
    assert code == 2 and field in err and "expected > 0" in err, f"exit {code}\n{err}"


def test_a_run_nested_past_the_recursion_limit_is_refused(capsys, tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"benchmarks": [], "machine_info": {}, "x": ' + DEEP_JSON + "}")
    code, out, err = report(capsys, path)
    assert code == 2 and "nests too deeply" in err and out == "", f"exit {code}\n{err}"


@pytest.mark.parametrize("field", ["accuracy_s", "ref_max_abs"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -1, "garbage", []], ids=["nan", "inf", "negative", "string", "list"])
def test_an_optional_figure_that_is_not_a_number_is_refused(tiny, capsys, tmp_path, field, bad):
    data = tiny.data()
    cell = data["attnbench"]["cells"][0]
    if field == "accuracy_s":
        cell["accuracy_s"] = bad
    else:
        cell["accuracy"]["tensors"]["dq"]["ref_max_abs"] = bad
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    code, out, err = report(capsys, path)
    assert code == 2 and field in err and out == "", f"{field}={bad!r}: exit {code}\n{err}"


#: replacements no field the reader relies on may take; strings only where a string is not valid
MUTATIONS = {
    "delete": None, "null": None, "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "negative": -1,
    "list": [], "object": {}, "string": "garbage", "zero": 0, "deep": DEEP_PLACEHOLDER,
}
#: fields where 0 is a valid value (a spread, a memory figure, a check's seconds, an exactly-zero reference)
_ZERO_VALID = {"iqr", "accuracy_s", "ref_max_abs", *record.REQUIRED_MEMORY}
#: fields where any string is a valid value: mutating them to one is not a corruption
_ANY_STRING = {"fullname"}
#: optional fields: deleting them or setting them null leaves a valid run
_OPTIONAL = {"accuracy_s", "ref_max_abs"}


def _mutate(data: dict, site: tuple, kind: str) -> bool:
    """Apply ``kind`` at ``site``; False when that mutation would leave a valid run."""
    *parents, last = site
    if (kind == "string" and last in _ANY_STRING or kind in ("delete", "null") and last in _OPTIONAL
            or kind == "zero" and last in _ZERO_VALID):
        return False
    node = data
    for key in parents:
        node = node[key]
    if kind == "delete":
        del node[last]
    else:
        node[last] = copy.deepcopy(MUTATIONS[kind])
    return True


@given(data=st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
def test_mutated_runs_are_never_judged_and_never_crash(tiny, capsys, tmp_path_factory, data):
    run = tiny.data()
    site = data.draw(st.sampled_from(_sites(run)), label="site")
    kind = data.draw(st.sampled_from(list(MUTATIONS)), label="mutation")
    if not _mutate(run, site, kind):
        return
    path = tmp_path_factory.mktemp("mutated") / "run.json"
    text = json.dumps(run)  # NaN and inf are written as JSON's non-standard tokens
    path.write_text(text.replace(json.dumps(DEEP_PLACEHOLDER), DEEP_JSON))
    side = data.draw(st.sampled_from(["baseline", "current"]), label="side")
    pair = (path, tiny.json_path) if side == "baseline" else (tiny.json_path, path)
    code, out, err = gate(capsys, *pair)
    assert code == 2 and err.startswith("attnbench gate: cannot judge"), (
        f"{kind} at {site} ({side}): exit {code}\n{out}{err}")
    code, out, err = report(capsys, path)
    assert code == 2 and err.startswith("attnbench report: ") and out == "", f"{kind} at {site}: exit {code}\n{err}"


# -- a saved run cannot be spoiled


def _suite_cmd(*options: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "-v", *TINY_GRID, *options]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ATTNBENCH_PLANT"}
    return {**env, **SUITE_ENV, "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("sig, reason", [(signal.SIGINT, "interrupted (Ctrl-C)"),
                                         (signal.SIGTERM, "terminated (SIGTERM)")], ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_is_saved_apart_marked_incomplete(tmp_path, capsys, sig, reason):
    """Ctrl-C, and SIGTERM as a job timeout or a cancelled CI job sends it: what was measured is kept."""
    store = tmp_path / "storage"
    # a grid long enough to interrupt: the tiny variants at more lengths, 0.2 s per benchmark
    cmd = _suite_cmd("--benchmark-autosave", f"--benchmark-storage={store}", "--attn-seq-lens", "32,48,64,80,96",
                     "--benchmark-max-time", "0.2")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if sum("PASSED" in x for x in lines) >= 3:
            proc.send_signal(sig)
            break
    output = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, f"a stopped run exits 2 (pytest's INTERRUPTED):\n{output[-3000:]}"
    numbered = list(store.glob("*/[0-9][0-9][0-9][0-9]_*.json"))
    apart = list(store.glob(f"*/{storage.INCOMPLETE_PREFIX}*.json"))
    assert not numbered, f"an interrupted run must not become the newest numbered run: {numbered}"
    assert len(apart) == 1, f"the partial run should be saved apart: {list(store.rglob('*'))}"
    assert f"INCOMPLETE RUN: {reason}" in output, output[-3000:]
    run = record.load(apart[0])
    assert not run.complete and run.stop_reason == reason
    assert run.pending, "the cells the run never reached are recorded as pending"
    code, _, err = report(capsys, "--storage", store)
    assert code == 2 and "no saved runs" in err, "attnbench report must not pick the partial run"
    code, out, err = report(capsys, apart[0])
    assert code == 0 and f"**Incomplete run:** {reason}" in out and "WARNING" in err
    code, _, err = gate(capsys, apart[0], apart[0])
    assert code == 2 and "incomplete run" in err


SIGNALS_MID_BENCHMARK = """
import os, signal
from pytest_benchmark.fixture import BenchmarkFixture

_pedantic = BenchmarkFixture.pedantic
SIGNALS = [getattr(signal, name) for name in os.environ["MID_BENCHMARK_SIGNALS"].split(",")]


def pedantic(self, target, *args, **kwargs):  # the signals at the third round of the backward at seq_len 64
    if "test_backward" in self.fullname and "-s64-" in self.fullname:
        calls = []

        def target_then_signals(*a, **k):
            calls.append(1)
            if len(calls) == 3:
                for signum in SIGNALS:
                    os.kill(os.getpid(), signum)
            return target(*a, **k)

        return _pedantic(self, target_then_signals, *args, **kwargs)
    return _pedantic(self, target, *args, **kwargs)


BenchmarkFixture.pedantic = pedantic
"""


def _run_with_signals_mid_benchmark(tmp_path, signals: str):
    (tmp_path / "signals_plugin.py").write_text(SIGNALS_MID_BENCHMARK)
    env = {**_env(), "MID_BENCHMARK_SIGNALS": signals,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "run.json"
    cmd = _suite_cmd(f"--benchmark-json={out}", "--attn-seq-lens", "32,64,96", "--attn-variants", "naive",
                     "-p", "signals_plugin")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "INTERNALERROR" not in proc.stdout + proc.stderr, proc.stdout[-3000:]
    return out, json.loads(out.read_text())


def test_a_signal_mid_benchmark_lets_that_benchmark_finish_and_stops_the_run(tmp_path, capsys):
    """SIGTERM (or Ctrl-C) inside a benchmark's rounds: the benchmark finishes, whole, and the run stops there,
    saved apart as incomplete; the signal never lands inside a record or the save."""
    out, saved = _run_with_signals_mid_benchmark(tmp_path, "SIGTERM")
    names = [b["fullname"] for b in saved["benchmarks"]]
    run = record.load(out)
    assert not run.complete and run.stop_reason == "terminated (SIGTERM)"
    assert set(run.cells["naive-s64-d16-b2-h2-fp32-full"].passes) == {"backward"}, f"it finished: {names}"
    later = run.cells["naive-s96-d16-b2-h2-fp32-full"]  # the backward file runs first, then the forward's
    assert (later.status, later.passes) == ("pending", {}), "nothing after it is measured"
    code, _, err = report(capsys, out)
    assert code == 0 and "incomplete run" in err


def test_a_second_signal_stops_mid_rounds_and_that_benchmark_is_left_out(tmp_path, capsys):
    """Ctrl-C twice inside a benchmark's rounds: the second acts at once; pytest-benchmark then has a few rounds
    of it and none of the pass's facts, and the saved run leaves it out (a reader would refuse the run otherwise)
    and keeps what finished."""
    out, saved = _run_with_signals_mid_benchmark(tmp_path, "SIGINT,SIGINT")
    names = [b["fullname"] for b in saved["benchmarks"]]
    assert not any("test_backward" in n and "-s64-" in n for n in names), names
    run = record.load(out)
    assert not run.complete and run.stop_reason == "interrupted (Ctrl-C)"
    assert any("test_backward" in n and "-s32-" in n for n in names), f"what finished is kept: {names}"
    assert set(run.cells["naive-s32-d16-b2-h2-fp32-full"].passes) == {"backward"}
    stopped_in = run.cells["naive-s64-d16-b2-h2-fp32-full"]
    assert (stopped_in.status, stopped_in.passes) == ("pending", {}), stopped_in
    assert stopped_in.message == "not measured: the run stopped while measuring it"
    code, _, err = report(capsys, out)
    assert code == 0 and "incomplete run" in err


def test_a_second_run_into_the_same_storage_refuses_to_start(tmp_path):
    store = tmp_path / "storage"
    cmd = _suite_cmd("--benchmark-autosave", f"--benchmark-storage={store}", "--benchmark-max-time", "0.1")
    first = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    lock = store / storage.LOCK_NAME
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    first_output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, first_output[-3000:]
    assert second.returncode == 4, f"the second run should refuse to start (usage error):\n{second.stdout[-2000:]}"
    assert "another benchmark run is saving into" in second.stderr + second.stdout
    assert f"pid {first.pid}" in second.stderr + second.stdout, "the message names the run holding the storage"
    saved = list(store.glob("*/[0-9][0-9][0-9][0-9]_*.json"))
    assert len(saved) == 1 and record.load(saved[0]).complete, saved


def _save(args) -> str:
    directory, index = args
    return storage.save_numbered(Path(directory), "run", {"index": index}, complete=True).name


def test_runs_saved_at_once_get_distinct_numbers_and_stay_intact(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        names = pool.map(_save, [(str(tmp_path), i) for i in range(12)])
    assert len(set(names)) == 12, f"two saves took one name: {sorted(names)}"
    assert sorted(names) == [f"{n:04d}_run.json" for n in range(1, 13)]
    assert sorted(json.loads((tmp_path / n).read_text())["index"] for n in names) == list(range(12))
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


# -- every key written is documented


def test_readme_documents_every_saved_key():
    readme = (REPO_ROOT / "README.md").read_text()
    keys_section = readme[readme.index("### Saved JSON keys"):readme.index("## Gating pull requests")]
    documented = set(re.findall(r"`([a-z_0-9]+)`", keys_section))
    written = (set(record.RUN_KEYS) | set(record.OPTIONAL_RUN_KEYS) | set(record.CELL_KEYS) | set(record.PASS_KEYS)
               | set(record.ENV_KEYS)
               | set(record.ACCURACY_KEYS) | set(record.TENSOR_ERROR_KEYS) | {"out", "dq", "dk", "dv"}
               | set(record.MACHINE_KEYS) | set(record.SHARD_KEYS) | set(record.SHARD_MACHINE_KEYS)
               | {"mode", "flush_l2", "attnbench", "extra_info", "params"})
    missing = sorted(written - documented)
    assert not missing, f"README's 'Saved JSON keys' does not list {missing}"


def test_a_saved_run_holds_only_keys_the_record_writes(tiny):
    data = tiny.data()
    assert set(data["attnbench"]) == set(record.RUN_KEYS)
    assert set(data["machine_info"]["attnbench"]) <= set(record.MACHINE_KEYS)
    for b in data["benchmarks"]:
        assert set(b["extra_info"]) <= set(record.PASS_KEYS) and set(b["params"]) == set(AXES)
    for c in data["attnbench"]["cells"]:
        assert set(c) <= set(record.CELL_KEYS), sorted(set(c) - set(record.CELL_KEYS))
        assert cell_key(c) in {cell_key(b["params"]) for b in data["benchmarks"]}


def test_a_replaced_file_keeps_its_mode_and_a_new_one_gets_the_umask(tmp_path):
    kept = tmp_path / "kept.json"
    kept.write_text("{}")
    os.chmod(kept, 0o644)
    record.write_json_atomically(kept, {"a": 1})
    assert kept.stat().st_mode & 0o777 == 0o644, oct(kept.stat().st_mode)
    old = os.umask(0o027)
    try:
        record.write_json_atomically(tmp_path / "new.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640, "a new file should get 0666 less the umask"


@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_a_storage_that_cannot_hold_runs_is_a_usage_error_before_measuring(tmp_path, where):
    (tmp_path / "a-file").write_text("")
    store = tmp_path / "a-file" if where == "a-file" else tmp_path / "a-file" / "storage"
    proc = subprocess.run(_suite_cmd("--benchmark-autosave", f"--benchmark-storage={store}"), check=False,
                          cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 4, f"exit {proc.returncode}, expected 4 (usage error):\n{output[-3000:]}"
    assert "cannot save runs there" in output and "INTERNALERROR" not in output, output[-3000:]
    assert "PASSED" not in output, "nothing is measured into a storage that cannot hold it"


def test_a_full_disk_at_the_save_says_so_exits_3_and_leaves_earlier_files_as_they_were(tmp_path):
    """A file-size limit below the run's size (EFBIG, as ENOSPC on a full disk): both saves are tried, each
    failure is one line, nothing half-written is left, and the run exits 3 (its output could not be written)."""
    from suite_runs import run_suite

    earlier = '{"an earlier run": "kept"}'
    (tmp_path / "run.json").write_text(earlier)
    store = tmp_path / "storage"
    run = run_suite(tmp_path / "run.json", "--benchmark-autosave", f"--benchmark-storage={store}",
                    max_file_bytes=8192)
    assert run.returncode == 3, f"exit {run.returncode}, expected 3:\n{run.output[-3000:]}"
    assert "Traceback" not in run.output and "INTERNALERROR" not in run.output, run.output[-3000:]
    assert run.output.count("could not write") == 4, run.output[-3000:]  # each save: its line and its summary
    assert "NOT SAVED (exit 3): could not write --benchmark-json" in run.output, run.output[-3000:]
    assert "NOT SAVED (exit 3): could not write the run into" in run.output, run.output[-3000:]
    assert (tmp_path / "run.json").read_text() == earlier
    assert not list(store.rglob("*.json")) and not list(tmp_path.rglob("*.tmp")), list(tmp_path.rglob("*"))
