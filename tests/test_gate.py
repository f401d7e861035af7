"""``attnbench gate`` and the in-run memory gate, judged on runs the suite's own small CPU grid produced.

The session fixture runs ``pytest benchmarks`` four times in subprocesses (about 25 s on 2 cores): a baseline
(autosaved, so pytest-benchmark's --benchmark-compare can find it), the same code again, and two runs with
planted regressions (ATTNBENCH_PLANT, see attnbench/plants.py). Edge cases are copies of the baseline edited;
what the reader refuses is in test_record.py.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from suite_runs import PASSES, TINY_SEQ_LENS, TINY_VARIANTS, SuiteRun, run_suite

from attnbench import cli, gate
from attnbench.compare import Finding, compare_time, mann_whitney_greater_p
from attnbench.grid import cell_key
from attnbench.record import PassResult

VARIANTS = set(TINY_VARIANTS)
SEQ_LENS = TINY_SEQ_LENS
# Two runs of the same code on a shared 2-core CPU can differ by 60% even in their fastest round: each
# benchmark lasts ~20 ms, and another process taking a core for that long shifts every round. So the CPU
# checks gate on the min with a 3x threshold, and the planted slowdown is 10x: two runs of the same code
# pass, the plant is far past it. (On a GPU the default, median:10, is the rule.) The memory checks make the
# time rule unreachable so that only the exact census figures decide them.
CPU_TIME = "min:200"
SLOW_PLANT = "slow:naive:9.0"
NO_TIME = "median:100000"


@dataclass
class SuiteRuns:
    baseline: SuiteRun
    again: SuiteRun  # same code, compared in-run against the baseline with --attn-memory-compare-fail=0
    extra_nxn: SuiteRun  # weights_only keeps one more n×n tensor, compared in-run the same way
    slow: SuiteRun  # naive takes 10x as long


def _run_suite(json_path: Path, *options: str, plant: str | None = None) -> SuiteRun:
    return run_suite(json_path, *options, env={"ATTNBENCH_PLANT": plant} if plant else None)


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> SuiteRuns:
    """Four runs of the small CPU grid; the baseline is also autosaved for --benchmark-compare."""
    out = tmp_path_factory.mktemp("runs")
    storage = f"--benchmark-storage={out / 'storage'}"
    compare = ["--benchmark-compare=0001", "--attn-memory-compare-fail=0", storage]
    baseline = _run_suite(out / "baseline.json", "--benchmark-autosave", storage)
    assert baseline.returncode == 0, f"the baseline run failed:\n{baseline.output[-3000:]}"
    return SuiteRuns(
        baseline=baseline,
        again=_run_suite(out / "again.json", *compare),
        extra_nxn=_run_suite(out / "extra_nxn.json", *compare, plant="extra_nxn:weights_only"),
        slow=_run_suite(out / "slow.json", plant=SLOW_PLANT),
    )


def run_gate(capsys, *argv) -> tuple[int, str, str]:
    code = gate.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_rows(markdown: str) -> list[dict]:
    """The gate's table as dicts: cell, variant, metric, verdict."""
    rows = []
    for line in markdown.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = cells[0].strip("`")
        variant = re.search(r"(?:\[|^)([a-z0-9_]+)-s\d+", name).group(1)
        rows.append({"cell": name, "variant": variant, "metric": cells[1], "verdict": cells[5].strip("*")})
    return rows


def squeezed(line: str) -> str:
    """A table row with tabulate's padding removed: '| a    | b |' -> '| a | b |'."""
    return re.sub(r" +\|", " |", re.sub(r"\| +", "| ", line))


def edited_copy(run: SuiteRun, path: Path, edit) -> Path:
    data = copy.deepcopy(run.data())
    edit(data)
    path.write_text(json.dumps(data))
    return path


# -- verdicts on real runs


def test_same_code_twice_passes(runs, capsys):
    code, out, err = run_gate(capsys, runs.baseline.json_path, runs.again.json_path, "--time", CPU_TIME)
    assert code == 0, f"two runs of the same code should pass the gate at {CPU_TIME}; got {code}:\n{out}{err}"
    assert "attnbench gate: OK" in out
    assert not [r for r in table_rows(out) if r["verdict"] == "regression"], out


def test_extra_nxn_regresses_memory_of_weights_only_only(runs, capsys):
    code, out, _ = run_gate(capsys, runs.baseline.json_path, runs.extra_nxn.json_path, "--time", NO_TIME)
    assert code == 1, f"an extra n×n tensor kept for backward must fail the memory gate; got {code}:\n{out}"
    regressions = [r for r in table_rows(out) if r["verdict"] == "regression"]
    flagged = {r["cell"] for r in regressions}
    expected = {f"weights_only-s{s}-d16-b2-h2-fp32-full" for s in SEQ_LENS}
    assert flagged == expected, f"expected exactly the weights_only cells {expected} to regress, got {flagged}"
    assert {r["metric"] for r in regressions} == {"saved_bytes"}, out


def test_slowdown_regresses_time_of_naive_only(runs, capsys):
    code, out, _ = run_gate(capsys, runs.baseline.json_path, runs.slow.json_path, "--time", CPU_TIME)
    assert code == 1, f"a 10x slower naive must fail the time gate at {CPU_TIME}; got {code}:\n{out}"
    regressions = [r for r in table_rows(out) if r["verdict"] == "regression"]
    assert {r["variant"] for r in regressions} == {"naive"}, f"only naive was slowed:\n{out}"
    expected = {f"test_{p}[naive-s{s}-d16-b2-h2-fp32-full]" for p in PASSES for s in SEQ_LENS}
    assert {r["cell"] for r in regressions} == expected, f"every naive benchmark should regress:\n{out}"
    assert all(r["metric"] in ("forward min time", "backward min time") for r in regressions), out


def test_swapped_runs_report_improvements_and_pass(runs, capsys):
    code, out, _ = run_gate(capsys, runs.slow.json_path, runs.baseline.json_path, "--time", CPU_TIME)
    assert code == 0, f"getting faster is not a failure; got {code}:\n{out}"
    improved = {r["cell"] for r in table_rows(out) if r["verdict"] == "improvement"}
    assert {f"test_forward[naive-s{s}-d16-b2-h2-fp32-full]" for s in SEQ_LENS} <= improved, out

    code, out, _ = run_gate(capsys, runs.extra_nxn.json_path, runs.baseline.json_path, "--time", NO_TIME)
    assert code == 0, out
    rows = table_rows(out)
    assert {r["cell"] for r in rows if r["metric"] == "saved_bytes" and r["verdict"] == "improvement"} == {
        f"weights_only-s{s}-d16-b2-h2-fp32-full" for s in SEQ_LENS
    }, out


def test_table_shows_both_numbers_and_the_change(runs, capsys):
    _, out, _ = run_gate(capsys, runs.baseline.json_path, runs.extra_nxn.json_path, "--time", NO_TIME)
    line = squeezed(next(x for x in out.splitlines() if x.startswith("| `weights_only-s32")))
    # 2·2·32·32 fp32 attention weights (16 KiB) more than the baseline's 40 KiB
    assert "| 40 KiB | 56 KiB | +40.0% |" in line, line


# -- OOM transitions


def _make_oom(key: str):
    def edit(data: dict) -> None:
        data["benchmarks"] = [b for b in data["benchmarks"] if cell_key(b["params"]) != key]
        record = next(c for c in data["attnbench"]["cells"] if cell_key(c) == key)
        record.update(status="oom-measured", message="CUDA out of memory (edited into a copy for the test)")
    return edit


def test_new_oom_regresses_and_vanished_oom_improves(runs, capsys, tmp_path):
    key = "naive-s64-d16-b2-h2-fp32-full"
    oom = edited_copy(runs.baseline, tmp_path / "oom.json", _make_oom(key))
    code, out, _ = run_gate(capsys, runs.baseline.json_path, oom)
    assert code == 1, f"a cell that now runs out of memory must fail the gate:\n{out}"
    assert table_rows(out) == [{"cell": key, "variant": "naive", "metric": "status", "verdict": "regression"}], out
    assert "| ok | oom-measured |" in squeezed(out)

    code, out, _ = run_gate(capsys, oom, runs.baseline.json_path)
    assert code == 0, out
    assert table_rows(out) == [{"cell": key, "variant": "naive", "metric": "status", "verdict": "improvement"}], out


# -- cannot judge: exit 2 with a message that says what to do


def test_missing_file_cannot_be_judged(runs, capsys, tmp_path):
    code, out, err = run_gate(capsys, tmp_path / "nope.json", runs.baseline.json_path)
    assert code == 2 and "does not exist" in err and "--benchmark-autosave" in err, err
    assert "Traceback" not in out + err


def test_non_json_cannot_be_judged(runs, capsys, tmp_path):
    path = tmp_path / "notes.json"
    path.write_text("median went up, I think\n")
    code, _, err = run_gate(capsys, runs.baseline.json_path, path)
    assert code == 2 and "current file" in err and "is not JSON" in err, err


@pytest.mark.parametrize("content", [{"benchmarks": []}, {"machine_info": {}}, [1, 2, 3]],
                         ids=["no-machine-info", "no-benchmarks", "a-list"])
def test_non_pytest_benchmark_json_cannot_be_judged(runs, capsys, tmp_path, content):
    path = tmp_path / "other.json"
    path.write_text(json.dumps(content))
    code, _, err = run_gate(capsys, path, runs.baseline.json_path)
    assert code == 2 and "is not a pytest-benchmark run" in err, err


def test_no_cells_in_common_cannot_be_judged(runs, capsys, tmp_path):
    def rename(data: dict) -> None:
        for fields in [b["params"] for b in data["benchmarks"]] + data["attnbench"]["cells"]:
            fields["head_dim"] = 24
    renamed = edited_copy(runs.baseline, tmp_path / "renamed.json", rename)
    code, _, err = run_gate(capsys, runs.baseline.json_path, renamed)
    assert code == 2 and "no cells in common" in err and "same grid" in err, err


def test_environment_mismatch_cannot_be_judged_unless_allowed(runs, capsys, tmp_path):
    def other_torch(data: dict) -> None:
        data["machine_info"]["attnbench"]["env"]["torch"] = "0.0.1-edited"
    other = edited_copy(runs.baseline, tmp_path / "other_torch.json", other_torch)
    code, _, err = run_gate(capsys, runs.baseline.json_path, other)
    assert code == 2, err
    assert "different environments" in err and "0.0.1-edited" in err and "--allow-env-mismatch" in err, err

    code, out, err = run_gate(capsys, runs.baseline.json_path, other, "--allow-env-mismatch")
    assert code == 0, f"--allow-env-mismatch should compare the (otherwise identical) runs:\n{out}{err}"
    assert "WARNING: environments differ" in out


def test_driver_compared_by_major_version_only(runs, capsys, tmp_path):
    def driver(version: str):
        def edit(data: dict) -> None:
            data["machine_info"]["attnbench"]["env"]["driver"] = version
        return edit
    a = edited_copy(runs.baseline, tmp_path / "a.json", driver("550.54.15"))
    b = edited_copy(runs.baseline, tmp_path / "b.json", driver("550.90.07"))
    c = edited_copy(runs.baseline, tmp_path / "c.json", driver("560.28.03"))
    assert run_gate(capsys, a, b)[0] == 0
    code, _, err = run_gate(capsys, a, c)
    assert code == 2 and "driver: 550 vs 560" in err, err


@pytest.mark.parametrize("argv, allowed", [
    (["--time", "p99:10"], "min, max, mean, median"),
    (["--time", "median"], "STAT:PCT"),
    (["--time", "median:fast"], "STAT:PCT"),
    (["--memory", "-1"], "percentage >= 0"),
    (["--memory", "nan"], "finite percentage"),
    (["--time", "median:nan"], "finite percentage"),
    (["--time", "median:inf"], "finite percentage"),
    (["--time", "median:1e999"], "finite percentage"),
])
def test_bad_thresholds_are_usage_errors(runs, capsys, argv, allowed):
    with pytest.raises(SystemExit) as exc:
        gate.main([str(runs.baseline.json_path), str(runs.baseline.json_path), *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "usage: attnbench gate" in err and allowed in err, err


def test_summary_file_gets_the_markdown(runs, capsys, tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    code, out, _ = run_gate(capsys, runs.baseline.json_path, runs.extra_nxn.json_path, "--time", NO_TIME,
                            "--summary", summary)
    assert code == 1
    text = summary.read_text()
    assert text.startswith("# earlier step\n") and out in text, "the summary should be appended, not replaced"

    code, _, _ = run_gate(capsys, tmp_path / "nope.json", runs.baseline.json_path, "--summary", summary)
    assert code == 2 and "cannot judge" in summary.read_text()


@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "under-a-file", "read-only"])
def test_summary_that_cannot_be_written_is_exit_3_before_any_verdict(runs, capsys, tmp_path, where):
    (tmp_path / "a-file").write_text("")
    summary = {"missing-dir": tmp_path / "no" / "such" / "dir" / "summary.md", "a-directory": tmp_path,
               "under-a-file": tmp_path / "a-file" / "summary.md", "read-only": tmp_path / "ro" / "summary.md"}[where]
    if where == "read-only":
        summary.parent.mkdir()
        summary.parent.chmod(0o500)
        if os.access(summary.parent, os.W_OK):
            pytest.skip("this user (root) can write into read-only directories")
    code, out, err = run_gate(capsys, runs.baseline.json_path, runs.extra_nxn.json_path, "--summary", summary)
    assert code == gate.EXIT_OUTPUT_ERROR == 3, f"expected exit 3 for an unwritable summary, got {code}:\n{err}"
    assert "cannot write --summary" in err and "Traceback" not in out + err, err
    assert "attnbench gate: FAIL" not in out, "no verdict is printed when its summary cannot be written"


def test_an_incomplete_run_cannot_be_judged(runs, capsys, tmp_path):
    def interrupt(data: dict) -> None:
        data["attnbench"].update(complete=False, stop_reason="interrupted (Ctrl-C)")
    partial = edited_copy(runs.baseline, tmp_path / "partial.json", interrupt)
    for argv in ((runs.baseline.json_path, partial), (partial, runs.baseline.json_path)):
        code, out, err = run_gate(capsys, *argv)
        assert code == 2 and "incomplete run (interrupted (Ctrl-C))" in err, f"exit {code}:\n{out}{err}"


def test_runs_timed_differently_cannot_be_judged(runs, capsys, tmp_path):
    def wall(data: dict) -> None:
        data["attnbench"]["timing"]["mode"] = "wall"
    other = edited_copy(runs.baseline, tmp_path / "wall.json", wall)
    code, _, err = run_gate(capsys, runs.baseline.json_path, other, "--allow-env-mismatch")
    assert code == 2 and "timed differently (baseline: device, current: wall)" in err, err


def test_cli_wires_the_gate(runs, capsys):
    assert cli.main(["gate", str(runs.baseline.json_path), str(runs.baseline.json_path)]) == 0
    assert "attnbench gate: OK" in capsys.readouterr().out


# -- the in-run memory gate (--attn-memory-compare-fail) with pytest-benchmark's --benchmark-compare


def test_in_run_memory_gate_fails_on_extra_nxn(runs):
    run = runs.extra_nxn
    assert run.returncode != 0, f"--attn-memory-compare-fail=0 should fail the planted run:\n{run.output[-3000:]}"
    assert "Regressed against --benchmark-compare's run (memory 0%" in run.output, run.output[-3000:]
    offenders = re.findall(r"^  ([a-z_]+)-s\d+-\S+ saved_bytes", run.output, flags=re.MULTILINE)
    assert offenders and set(offenders) == {"weights_only"}, f"expected only weights_only offenders:\n{run.output}"


def test_in_run_memory_gate_passes_same_code(runs):
    run = runs.again
    assert run.returncode == 0, f"the unchanged code should pass --attn-memory-compare-fail=0:\n{run.output[-3000:]}"
    assert "Comparing against benchmarks from" in run.output, "pytest-benchmark should have compared with 0001"


def test_benchmark_compare_sees_the_environment_but_not_the_gpu_samples():
    """GPU clocks and temperature differ in every run: pytest-benchmark's machine_info check must not see
    them (it warns on any difference), but must get them back afterwards, and still sees the versions."""
    from attnbench import plugin

    current = {"node": "a", "attnbench": {"env": {"gpu": "H200", "torch": "2.11"},
                                          "gpu_start": {"temperature_c": 40}, "gpu_end": {"temperature_c": 61},
                                          "flags": []}}
    saved = {"machine_info": {"node": "a", "attnbench": {"env": {"gpu": "H200", "torch": "2.10"},
                                                         "gpu_start": {"temperature_c": 55}, "flags": ["throttled"]}}}
    before = copy.deepcopy((current, saved))
    with plugin.gpu_samples_set_aside(current, saved["machine_info"]):  # what pytest-benchmark's check sees
        assert current["attnbench"] == {"env": {"gpu": "H200", "torch": "2.11"}}
        assert saved["machine_info"]["attnbench"] == {"env": {"gpu": "H200", "torch": "2.10"}}
    assert (current, saved) == before, "the samples must be put back: they are saved with the run"


def test_benchmark_compare_refuses_an_incomplete_or_differently_timed_run(runs, tmp_path):
    from attnbench.pb_compat import get_machine_id

    storage = tmp_path / "storage" / get_machine_id()
    storage.mkdir(parents=True)
    for name, edit in (("0001_partial", {"complete": False, "stop_reason": "interrupted (Ctrl-C)"}),
                       ("0002_wall", {"timing": {"mode": "wall", "flush_l2": False}})):
        data = runs.baseline.data()
        data["attnbench"].update(edit)
        (storage / f"{name}.json").write_text(json.dumps(data))
    for name, message in (("0001", "the run to compare with is incomplete (interrupted (Ctrl-C))"),
                          ("0002", "that run was timed with wall, this run with device")):
        run = run_suite(tmp_path / f"{name}.json", f"--benchmark-storage={tmp_path / 'storage'}",
                        f"--benchmark-compare={name}", expect_json=False)
        assert run.returncode == 4 and message in run.output, f"expected a usage error:\n{run.output[-2000:]}"


# -- the noise rule on hand-made statistics


def _stats(q1: float, median: float, q3: float, data=None) -> PassResult:
    stats = {"q1": q1, "median": median, "q3": q3, "min": q1, "max": q3, "mean": median}
    if data is not None:
        stats["data"] = data
    return PassResult("benchmarks/test_forward.py::test_forward[c]", "forward", stats, flops=1.0)


def test_slower_median_within_overlapping_iqrs_is_not_a_regression():
    finding = compare_time(_stats(1.0, 1.5, 2.0), _stats(1.9, 2.0, 2.5), threshold_pct=10)
    assert not finding.regression and not finding.improvement and "IQRs overlap" in finding.note, finding


def test_rank_test_overrules_separated_quartiles():
    # quartiles apart, but the rounds themselves interleave: the rank test keeps it within noise
    base = _stats(1.0, 1.1, 1.2, data=[1.0, 5.0] * 10)
    cur = _stats(1.3, 1.4, 1.5, data=[1.1, 4.9] * 10)
    finding = compare_time(base, cur, threshold_pct=10)
    assert not finding.regression and "rank test" in finding.note, finding


def test_mann_whitney_p_separates_shifted_samples():
    low, high = [1.0 + i / 100 for i in range(20)], [2.0 + i / 100 for i in range(20)]
    assert mann_whitney_greater_p(high, low) < 1e-6
    assert mann_whitney_greater_p(low, high) > 0.99
    assert 0.3 < mann_whitney_greater_p(low, low) < 0.7


def test_finding_change_pct():
    assert Finding("c", "saved_bytes", 100, 150, regression=True).change_pct == pytest.approx(50.0)
    assert Finding("c", "status", "ok", "oom-measured", regression=True).change_pct is None


def test_in_run_compare_fails_on_an_error_that_grew(runs, tmp_path):
    """--benchmark-compare with accuracy on: a planted relative error fails the run, and the cells whose
    errors grew past the factor are listed against the compared run."""
    storage = f"--benchmark-storage={runs.baseline.json_path.parent / 'storage'}"
    run = run_suite(tmp_path / "wrong.json", "--benchmark-compare=0001", storage,
                    env={"ATTNBENCH_PLANT": "wrong:tiled:1e-3"})
    assert run.returncode == 1, run.output[-3000:]
    regressed = run.output.split("Regressed against --benchmark-compare's run")[-1]
    grown = set(re.findall(r"^  ([a-z_]+)-s\d+-\S+ (?:out|dq|dk|dv) max error", regressed, flags=re.MULTILINE))
    assert grown == {"tiled"}, f"only the planted variant's errors grew:\n{run.output[-3000:]}"


@pytest.mark.parametrize(("plant", "fails"), [(SLOW_PLANT, True), (None, False)])
def test_in_run_compare_fail_gives_a_verdict_line_not_a_traceback(runs, tmp_path, plant, fails):
    """pytest-benchmark's --benchmark-compare-fail raises through the terminal summary; the plugin turns that
    into a FAIL line and exit 1. The CPU threshold is the one the README gives for CPUs (min:200%)."""
    storage = f"--benchmark-storage={runs.baseline.json_path.parent / 'storage'}"
    run = run_suite(tmp_path / "compare_fail.json", "--benchmark-compare=0001", storage,
                    "--benchmark-compare-fail=min:200%", env={"ATTNBENCH_PLANT": plant} if plant else None)
    assert "Traceback" not in run.output, run.output[-3000:]
    assert (run.returncode == 1) == fails, f"exit {run.returncode}:\n{run.output[-3000:]}"
    assert ("FAIL: performance has regressed" in run.output) == fails, run.output[-3000:]


# -- nothing judged unseen, nothing overwritten


@pytest.mark.parametrize("spoil", ["truncated", "empty"])
def test_in_run_compare_with_an_unreadable_stored_run_cannot_judge(runs, tmp_path, spoil):
    """pytest-benchmark only warns when the run to compare with cannot be read; with a planted extra n×n and
    --attn-memory-compare-fail=0 the documented PR gate then passed. Now it exits 2 and says so."""
    import shutil

    storage = tmp_path / "storage"
    shutil.copytree(runs.baseline.json_path.parent / "storage", storage)
    (stored,) = storage.glob("*/0001_*.json")
    text = stored.read_text()
    stored.write_text(text[: len(text) // 2] if spoil == "truncated" else "")
    run = run_suite(tmp_path / "unjudged.json", "--benchmark-compare", f"--benchmark-storage={storage}",
                    "--attn-memory-compare-fail=0", env={"ATTNBENCH_PLANT": "extra_nxn:weights_only"})
    assert run.returncode == 2, f"exit {run.returncode}, expected 2 (cannot judge):\n{run.output[-3000:]}"
    assert "CANNOT JUDGE (exit 2): --benchmark-compare had no run to compare with" in run.output, run.output[-3000:]
    assert "Traceback" not in run.output, run.output[-3000:]



def _every_cell(status: str, message: str):
    def edit(data: dict) -> None:
        data["benchmarks"] = []
        for record in data["attnbench"]["cells"]:
            record.update(status=status, message=message)
            record.pop("passes", None)
    return edit


@pytest.mark.parametrize(("base_status", "cur_status"), [("skipped", "failed"), ("failed", "failed"),
                                                         ("skipped", "skipped")])
def test_runs_with_no_benchmark_timed_in_both_cannot_be_judged(runs, capsys, tmp_path, base_status, cur_status):
    base = edited_copy(runs.baseline, tmp_path / "base.json", _every_cell(base_status, "edited for the test"))
    cur = edited_copy(runs.baseline, tmp_path / "cur.json", _every_cell(cur_status, "edited for the test"))
    code, out, err = run_gate(capsys, base, cur)
    assert code == 2, f"a gate that compared nothing must not say OK; got {code}:\n{out}{err}"
    assert "no benchmark was measured in both runs" in err and cur_status in err, err


@pytest.mark.parametrize("which", ["baseline", "current"])
def test_a_summary_onto_a_run_is_refused_and_the_run_kept(runs, capsys, tmp_path, which):
    base = edited_copy(runs.baseline, tmp_path / "base.json", lambda d: None)
    cur = edited_copy(runs.again, tmp_path / "cur.json", lambda d: None)
    target = base if which == "baseline" else cur
    before = target.read_bytes()
    code, _, err = run_gate(capsys, base, cur, "--summary", target)
    assert code == 2 and "--summary" in err and "write the summary elsewhere" in err, err
    assert target.read_bytes() == before, f"the {which} run was changed"
