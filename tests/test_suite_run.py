"""The benchmark suite end to end on a tiny CPU grid: the saved JSON, extra_info, groups, machine info, OOM cells.

The grid run is shared with test_report.py (tests/suite_runs.py). OOM cells are forced in a separate suite
run, in a directory whose conftest makes chosen cells raise what the allocator raises; the runner must
record them and go on with the rest of the grid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest
import torch
from suite_runs import PASSES, REPO_ROOT, TINY_GRID, TINY_HEAD_DIMS, TINY_SEQ_LENS, TINY_VARIANTS, tiny_suite_run

from attention_impls import VARIANTS
from attnbench.grid import Cell
from attnbench.memory_model import predict
from attnbench.plugin import JSON_SCHEMA_VERSION
from attnbench.runner import OOM_SAFETY_FRACTION, CellRunner, parse_plants

EXTRA_INFO_KEYS = {"variant", "pass", "seq_len", "head_dim", "batch", "heads", "dtype", "causal", "device", "flops",
                   "tflops", "saved_nxn", "saved_bytes", "predicted_before_backward_bytes", "predicted_peak_bytes"}
CELL_FIELDS = ("variant", "seq_len", "head_dim", "batch", "heads", "dtype", "causal", "device")


@pytest.fixture(scope="session")
def run_data(tmp_path_factory) -> dict:
    return tiny_suite_run(tmp_path_factory).data()


def cell_of(info: dict) -> Cell:
    return Cell(**{k: info[k] for k in CELL_FIELDS})


def expected_keys() -> set[str]:
    return {f"{v}-s{s}-d{d}-b2-h2-fp32-full" for v in TINY_VARIANTS for s in TINY_SEQ_LENS for d in TINY_HEAD_DIMS}


def test_json_has_the_attnbench_section(run_data):
    section = run_data.get("attnbench")
    assert section is not None, f"no 'attnbench' key in the saved JSON (keys: {sorted(run_data)})"
    assert section["schema_version"] == JSON_SCHEMA_VERSION
    assert (section["device"], section["preset"], section["plants"]) == ("cpu", "cpu-small", {})
    cells = {c["key"]: c for c in section["cells"]}
    assert set(cells) == expected_keys(), f"expected one record per cell of the tiny grid, got {sorted(cells)}"
    for key, c in cells.items():
        assert c["status"] == "ok" and c["message"] == "", f"{key}: expected status ok, got {c['status']}"
        assert c["saved_nxn"] == VARIANTS[c["variant"]].saved_nxn, f"{key}: census n×n count vs the registry"
        assert set(c["timings"]) == set(PASSES) and all(t["median_s"] > 0 for t in c["timings"].values()), (
            f"{key}: expected a positive median for both passes, got {c['timings']}"
        )


def test_every_benchmark_carries_the_documented_extra_info(run_data):
    benchmarks = run_data["benchmarks"]
    assert len(benchmarks) == len(expected_keys()) * len(PASSES)
    records = {c["key"]: c for c in run_data["attnbench"]["cells"]}
    for b in benchmarks:
        info = b["extra_info"]
        missing = EXTRA_INFO_KEYS - set(info)
        assert not missing, f"{b['name']}: extra_info lacks {sorted(missing)}"
        cell = cell_of(info)
        assert b["name"] == f"test_{info['pass']}[{cell.key}]", f"{b['name']}: extra_info describes {cell.key}"
        assert info["device"] == "cpu" and info["dtype"] == "fp32" and info["causal"] is False
        assert info["saved_nxn"] == VARIANTS[cell.variant].saved_nxn, f"{b['name']}: saved_nxn vs the registry"
        forward_flops = 4 * cell.batch * cell.heads * cell.seq_len ** 2 * cell.head_dim
        expected_flops = forward_flops if info["pass"] == "forward" else 2.5 * forward_flops
        assert info["flops"] == expected_flops, f"{b['name']}: expected {expected_flops} flops, got {info['flops']}"
        assert info["tflops"] == pytest.approx(info["flops"] / b["stats"]["median"] / 1e12, rel=1e-9)
        prediction = predict(cell.variant, batch=cell.batch, heads=cell.heads, seq_len=cell.seq_len,
                             head_dim=cell.head_dim, dtype=cell.torch_dtype, causal=cell.causal)
        assert info["saved_bytes"] == prediction.saved_bytes == records[cell.key]["saved_bytes"], (
            f"{b['name']}: census saved bytes {info['saved_bytes']}, memory model {prediction.saved_bytes}"
        )
        assert info["predicted_before_backward_bytes"] == prediction.before_backward_bytes
        assert info["predicted_peak_bytes"] == prediction.peak_bytes
        assert records[cell.key]["timings"][info["pass"]]["median_s"] == b["stats"]["median"], (
            f"{b['name']}: the cell record's median should be the benchmark's"
        )


def test_groups_put_the_variants_of_one_shape_side_by_side(run_data):
    groups = defaultdict(list)
    for b in run_data["benchmarks"]:
        groups[b["group"]].append(b["extra_info"])
    assert len(groups) == len(TINY_SEQ_LENS) * len(TINY_HEAD_DIMS), f"expected one group per shape: {list(groups)}"
    for group, infos in groups.items():
        shapes = {(i["seq_len"], i["head_dim"], i["batch"], i["heads"], i["dtype"], i["causal"]) for i in infos}
        assert len(shapes) == 1, f"group {group!r} mixes shapes {shapes}"
        assert group == cell_of(infos[0]).group
        assert sorted((i["variant"], i["pass"]) for i in infos) == sorted(
            (v, p) for v in TINY_VARIANTS for p in PASSES), f"group {group!r} should hold every variant and pass"


def test_machine_info_has_the_environment(run_data):
    env = run_data["machine_info"].get("attnbench", {}).get("env", {})
    assert env.get("torch") == torch.__version__, f"machine_info.attnbench.env should record torch, got {env}"


# -- OOM: recorded, reported, and the grid goes on

OOM_CONFTEST = """
import torch

from attnbench.runner import CellOOM, CellRunner

_probe, _bench = CellRunner.probe, CellRunner._bench


def probe(self):
    if self.cell.key.startswith("naive-s64-"):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB\\nsecond line of advice")
    if self.cell.key.startswith("tiled-s64-"):
        raise CellOOM("oom-predicted", "predicted peak 90000 MiB > 97% of 80000 MiB free")
    return _probe(self)


def bench_(self, benchmark, pass_name):
    if self.cell.key.startswith("weights_only-s64-") and pass_name == "backward":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return _bench(self, benchmark, pass_name)


CellRunner.probe, CellRunner._bench = probe, bench_
"""
OOM_EXPECTED = {
    "naive-s64-d16-b2-h2-fp32-full": ("oom-measured", "CUDA out of memory. Tried to allocate 8.00 GiB"),
    "tiled-s64-d16-b2-h2-fp32-full": ("oom-predicted", "predicted peak 90000 MiB > 97% of 80000 MiB free"),
    "weights_only-s64-d16-b2-h2-fp32-full": ("oom-measured",
                                             "backward: CUDA out of memory. Tried to allocate 2.00 GiB"),
}


@pytest.fixture(scope="module")
def oom_run(tmp_path_factory):
    """The tiny grid in a subprocess where three s64 cells run out of memory: at the probe (measured and
    predicted) and in the backward benchmark after the forward was timed."""
    run_dir = tmp_path_factory.mktemp("oom_run")
    (run_dir / "conftest.py").write_text(OOM_CONFTEST)
    for name in ("test_forward.py", "test_backward.py"):
        (run_dir / name).write_text((REPO_ROOT / "benchmarks" / name).read_text())
    json_path = run_dir / "run.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("ATTNBENCH_PLANT", None)
    cmd = [sys.executable, "-m", "pytest", "-p", "attnbench.plugin", "-p", "no:cacheprovider", "-rs",
           f"--benchmark-json={json_path}", "--attn-device", "cpu", *TINY_GRID, "test_forward.py", "test_backward.py"]
    proc = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert json_path.exists(), f"the OOM run wrote no JSON (exit {proc.returncode}):\n{output[-3000:]}"
    return proc.returncode, output, json.loads(json_path.read_text())


def test_oom_cells_are_skipped_with_the_reason(oom_run):
    returncode, output, _ = oom_run
    assert returncode == 0, f"OOM cells must skip, not fail the run:\n{output[-3000:]}"
    # 6 cells x 2 passes; naive and tiled s64 skip both passes, weights_only s64 only backward
    assert "7 passed, 5 skipped" in output, f"expected 7 passed and 5 skipped:\n{output[-3000:]}"
    for status, message in OOM_EXPECTED.values():
        assert f"{status}: {message}" in output, f"skip reason '{status}: {message}' missing:\n{output[-3000:]}"
    assert "second line of advice" not in output.split("short test summary info")[-1], (
        "the recorded message should be the allocator error's first line only"
    )


def test_oom_cells_are_saved_and_the_rest_of_the_grid_ran(oom_run):
    _, output, data = oom_run
    cells = {c["key"]: c for c in data["attnbench"]["cells"]}
    assert set(cells) == expected_keys(), f"every cell, OOM or not, should have a record: {sorted(cells)}"
    for key, c in cells.items():
        expected = OOM_EXPECTED.get(key, ("ok", ""))
        assert (c["status"], c["message"]) == expected, f"{key}: expected {expected}, got {c['status'], c['message']}"
    saved = {(b["extra_info"]["variant"], b["extra_info"]["seq_len"], b["extra_info"]["pass"])
             for b in data["benchmarks"]}
    expected_saved = {(v, s, p) for v in TINY_VARIANTS for s in TINY_SEQ_LENS for p in PASSES} - {
        ("naive", 64, "forward"), ("naive", 64, "backward"), ("tiled", 64, "forward"), ("tiled", 64, "backward"),
        ("weights_only", 64, "backward")}
    assert saved == expected_saved, (
        f"one OOM must never end the grid: expected benchmarks {sorted(expected_saved)}, saved {sorted(saved)}"
    )


def test_terminal_summary_lists_the_oom_cells(oom_run):
    _, output, _ = oom_run
    summary = output.split("= attnbench =")[-1] if "= attnbench =" in output else ""
    assert summary, f"no 'attnbench' section in the terminal summary:\n{output[-3000:]}"
    assert "3 cells measured, 3 OOM" in summary, summary[:2000]
    for key, (status, message) in OOM_EXPECTED.items():
        assert f"  {status}: {key}: {message}" in summary, f"summary should list {key}:\n{summary[:2000]}"


def test_probe_predicts_oom_on_a_cuda_cell_without_touching_the_device(monkeypatch):
    cell = Cell(variant="naive", seq_len=4096, head_dim=64, batch=8, heads=4, dtype="fp32", causal=False,
                device="cuda")
    peak = predict("naive", batch=8, heads=4, seq_len=4096, head_dim=64, dtype=torch.float32).peak_bytes
    free = int(peak / OOM_SAFETY_FRACTION) - 1  # just too little: the safety margin is part of the rule
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *args: (free, 2 * free))
    monkeypatch.setattr("attnbench.runner.release_memory", lambda: None)
    runner = CellRunner(cell, max_time_s=0.01, min_rounds=1, timing_check=False, plants={})
    with pytest.raises(pytest.skip.Exception, match="oom-predicted: predicted peak"):
        runner.ensure_probed()
    rec = runner.record
    assert rec.status == "oom-predicted", f"expected oom-predicted, got {rec.status}: {rec.message}"
    assert (rec.free_bytes, rec.predicted_peak_bytes) == (free, peak)
    assert f"{free / 2**20:.0f} MiB free" in rec.message, rec.message
    assert rec.as_dict()["status"] == "oom-predicted" and rec.as_dict()["key"] == cell.key
    with pytest.raises(pytest.skip.Exception, match="oom-predicted"):
        runner.ensure_probed()  # the verdict is kept: the backward benchmark of the cell skips too


# -- planted regressions


@pytest.mark.parametrize(("text", "expected"), [
    (None, {}),
    ("", {}),
    ("slow:torch_softmax:0.15", {"torch_softmax": {"slow": 0.15}}),
    ("extra_nxn:weights_only", {"weights_only": {"extra_nxn": 1}}),
    ("slow:naive:3, extra_nxn:naive", {"naive": {"slow": 3.0, "extra_nxn": 1}}),
])
def test_parse_plants_accepts(text, expected):
    assert parse_plants(text) == expected


@pytest.mark.parametrize("text", ["slow:naive", "slow:naive:lots", "extra_nxn", "fast:naive:1", "extra_nxn:a:b"])
def test_parse_plants_rejects_naming_the_forms(text):
    with pytest.raises(ValueError, match="expected slow:VARIANT:FRACTION or extra_nxn:VARIANT"):
        parse_plants(text)
