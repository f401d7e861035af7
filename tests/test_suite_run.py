"""The benchmark suite end to end on a tiny CPU grid: the saved JSON, extra_info, groups, machine info, OOM cells.

The grid run is shared with test_report.py (tests/suite_runs.py). OOM cells are forced in a separate suite
run, in a directory whose conftest makes chosen cells raise what the allocator raises; the runner must
record them and go on with the rest of the grid.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest
import torch
from suite_runs import (
    PASSES,
    REPO_ROOT,
    SUITE_ENV,
    TINY_GRID,
    TINY_HEAD_DIMS,
    TINY_SEQ_LENS,
    TINY_VARIANTS,
    run_suite,
    tiny_suite_run,
)

from attention_impls import VARIANTS
from attnbench import record
from attnbench.grid import AXES, Cell, cell_key
from attnbench.memory_model import predict
from attnbench.plants import Plant, parse_plants
from attnbench.runner import CPU_OOM_SAFETY_FRACTION, OOM_SAFETY_FRACTION, CellRunner


@pytest.fixture(scope="session")
def run_data(tmp_path_factory) -> dict:
    return tiny_suite_run(tmp_path_factory).data()


def cell_of(params: dict) -> Cell:
    return Cell(device="cpu", **{k: params[k] for k in AXES})


def expected_keys() -> set[str]:
    return {f"{v}-s{s}-d{d}-b2-h2-fp32-full" for v in TINY_VARIANTS for s in TINY_SEQ_LENS for d in TINY_HEAD_DIMS}


def test_json_has_the_attnbench_section(run_data):
    section = run_data.get("attnbench")
    assert section is not None, f"no 'attnbench' key in the saved JSON (keys: {sorted(run_data)})"
    assert set(section) == set(record.RUN_KEYS), f"the run's section holds {sorted(section)}"
    assert section["schema_version"] == record.SCHEMA_VERSION
    assert (section["preset"], section["plants"], section["timing"]) == (
        "cpu-small", {}, {"mode": "device", "flush_l2": False})
    assert (section["complete"], section["stop_reason"]) == (True, ""), "an uninterrupted run is complete"
    cells = {cell_key(c): c for c in section["cells"]}
    assert set(cells) == expected_keys(), f"expected one record per cell of the tiny grid, got {sorted(cells)}"
    for key, c in cells.items():
        assert set(c) <= set(record.CELL_KEYS), f"{key}: undocumented keys {sorted(set(c) - set(record.CELL_KEYS))}"
        assert c["status"] == "ok" and c["message"] == "", f"{key}: expected status ok, got {c['status']}"
        assert c["saved_nxn"] == VARIANTS[c["variant"]].saved_nxn, f"{key}: census n×n count vs the registry"


def test_params_are_the_cells_axes_as_plain_scalars(run_data):
    for b in run_data["benchmarks"]:
        params = b["params"]
        assert list(params) == list(AXES), f"{b['name']}: params {params} should be the grid's axes"
        assert all(isinstance(v, (str, int, bool)) for v in params.values()), f"{b['name']}: {params}"
        assert b["param"] == cell_key(params) and b["name"] == f"test_{b['extra_info']['pass']}[{b['param']}]"


def test_each_fact_is_written_once(run_data):
    """A pass's numbers in its benchmark entry; the cell's facts only in the cell's record."""
    benchmarks = run_data["benchmarks"]
    assert len(benchmarks) == len(expected_keys()) * len(PASSES)
    records = {cell_key(c): c for c in run_data["attnbench"]["cells"]}
    for b in benchmarks:
        info = b["extra_info"]
        assert set(info) <= set(record.PASS_KEYS), f"{b['name']}: extra_info holds {sorted(info)}"
        assert {"pass", "flops", "warmup_wall_s"} <= set(info), f"{b['name']}: extra_info lacks a pass fact: {info}"
        cell = cell_of(b["params"])
        expected_flops = cell.forward_flops() if info["pass"] == "forward" else 2.5 * cell.forward_flops()
        assert info["flops"] == expected_flops == 4 * 2.0 * 2 * cell.seq_len ** 2 * cell.head_dim * (
            1 if info["pass"] == "forward" else 2.5), f"{b['name']}: expected {expected_flops} flops"
        prediction = predict(cell.variant, batch=cell.batch, heads=cell.heads, seq_len=cell.seq_len,
                             head_dim=cell.head_dim, dtype=cell.torch_dtype, causal=cell.causal)
        rec = records[cell.key]
        assert rec["saved_bytes"] == prediction.saved_bytes, (
            f"{cell.key}: census saved bytes {rec['saved_bytes']}, memory model {prediction.saved_bytes}"
        )
        assert (rec["predicted_before_backward_bytes"], rec["predicted_peak_bytes"]) == (
            prediction.before_backward_bytes, prediction.peak_bytes)


def test_the_reader_gives_back_what_was_written(run_data, tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run_data))
    run = record.load(path)
    assert (run.device, run.preset, run.timing, run.complete) == ("cpu", "cpu-small", record.Timing(), True)
    assert set(run.cells) == expected_keys()
    by_name = {b["fullname"]: b for b in run_data["benchmarks"]}
    for key, rec in run.cells.items():
        assert set(rec.passes) == set(PASSES), f"{key}: both passes should be attached to the cell"
        for result in rec.passes.values():
            assert result.median_s == by_name[result.name]["stats"]["median"]
            assert result.tflops == pytest.approx(result.flops / result.median_s / 1e12)


def test_groups_put_the_variants_of_one_shape_side_by_side(run_data):
    groups = defaultdict(list)
    for b in run_data["benchmarks"]:
        groups[b["group"]].append(b)
    assert len(groups) == len(TINY_SEQ_LENS) * len(TINY_HEAD_DIMS), f"expected one group per shape: {list(groups)}"
    for group, members in groups.items():
        shapes = {tuple(v for k, v in b["params"].items() if k != "variant") for b in members}
        assert len(shapes) == 1, f"group {group!r} mixes shapes {shapes}"
        assert group == cell_of(members[0]["params"]).group
        assert sorted((b["params"]["variant"], b["extra_info"]["pass"]) for b in members) == sorted(
            (v, p) for v in TINY_VARIANTS for p in PASSES), f"group {group!r} should hold every variant and pass"


def test_machine_info_records_the_device_measured(run_data):
    section = run_data["machine_info"].get("attnbench", {})
    env = section.get("env", {})
    assert set(env) == set(record.ENV_KEYS), f"env holds {sorted(env)}"
    assert env["torch"] == torch.__version__, f"machine_info.attnbench.env should record torch, got {env}"
    # the tiny grid runs with --attn-device cpu, also on a machine with a GPU: no GPU is recorded for it
    assert (env["device"], env["gpu_name"], env["driver"]) == ("cpu", None, None), env
    assert "gpu_start" not in section, "a CPU run samples no GPU"


def test_pytest_benchmark_records_the_round_options_it_used(run_data):
    options = run_data["benchmarks"][0]["options"]
    assert (options["max_time"], options["min_rounds"]) == (0.02, 10), (
        f"the suite's rounds come from --benchmark-max-time/--benchmark-min-rounds, saved as used: {options}"
    )
    assert all(10 <= b["stats"]["rounds"] <= 100 for b in run_data["benchmarks"])


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
    cells = {cell_key(c): c for c in data["attnbench"]["cells"]}
    assert set(cells) == expected_keys(), f"every cell, OOM or not, should have a record: {sorted(cells)}"
    for key, c in cells.items():
        expected = OOM_EXPECTED.get(key, ("ok", ""))
        assert (c["status"], c["message"]) == expected, f"{key}: expected {expected}, got {c['status'], c['message']}"
    saved = {(b["params"]["variant"], b["params"]["seq_len"], b["extra_info"]["pass"]) for b in data["benchmarks"]}
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
    runner = CellRunner(cell, max_time_s=0.01, min_rounds=1)
    with pytest.raises(pytest.skip.Exception, match="oom-predicted: predicted peak"):
        runner.ensure_probed()
    rec = runner.record
    assert rec.status == "oom-predicted", f"expected oom-predicted, got {rec.status}: {rec.message}"
    assert (rec.memory["free_bytes"], rec.memory["predicted_peak_bytes"]) == (free, peak)
    assert f"{free / 2**20:.0f} MiB free" in rec.message, rec.message
    assert record.cell_section(rec)["status"] == "oom-predicted"
    with pytest.raises(pytest.skip.Exception, match="oom-predicted"):
        runner.ensure_probed()  # the verdict is kept: the backward benchmark of the cell skips too



def test_a_cell_the_variant_refuses_at_run_time_is_skipped_with_its_reason(monkeypatch):
    """Some refusals only the machine's libraries know (an SDPA backend's own check): the cell is recorded
    skipped with the variant's sentence, nothing is run, and the grid goes on."""
    calls = []

    def refuse_gqa(q, k, v, causal, mask=None):
        calls.append(tuple(k.shape))
        return "this backend refuses enable_gqa here" if k.shape[1] != q.shape[1] else None

    patched = dataclasses.replace(VARIANTS["torch_softmax"], shape_check=refuse_gqa, gqa=True)
    monkeypatch.setitem(VARIANTS, "torch_softmax", patched)
    gqa = Cell(variant="torch_softmax", seq_len=32, head_dim=16, batch=1, heads=4, heads_kv=2, dtype="fp32",
               causal=False, device="cpu")
    runner = CellRunner(gqa, max_time_s=0.01, min_rounds=1)
    with pytest.raises(pytest.skip.Exception, match="skipped: torch_softmax unavailable: this backend refuses"):
        runner.ensure_probed()
    assert (runner.record.status, runner.record.memory.get("saved_nxn")) == ("skipped", None), "it ran the cell"
    assert calls == [(1, 2, 32, 16)]
    fresh = CellRunner(gqa, max_time_s=0.01, min_rounds=1)
    state = fresh.generator.get_state()
    fresh._shape_reason()
    assert torch.equal(fresh.generator.get_state(), state), "the check drew from the cell's generator: its inputs moved"
    mha = CellRunner(dataclasses.replace(gqa, heads_kv=4), max_time_s=0.01, min_rounds=1)
    mha.ensure_probed()
    assert mha.record.status == "ok", mha.record.message


# -- planted regressions


@pytest.mark.parametrize(("text", "expected"), [
    (None, {}),
    ("", {}),
    ("slow:torch_softmax:0.15", {"torch_softmax": Plant(slow=0.15)}),
    ("extra_nxn:weights_only", {"weights_only": Plant(extra_nxn=True)}),
    ("slow:naive:3, extra_nxn:naive", {"naive": Plant(slow=3.0, extra_nxn=True)}),
    ("wrong:triton_flash:1e-3", {"triton_flash": Plant(wrong=1e-3)}),
    ("broken:sdpa_cudnn:zeros,broken:flex:nan", {"sdpa_cudnn": Plant(broken="zeros"), "flex": Plant(broken="nan")}),
])
def test_parse_plants_accepts(text, expected):
    assert parse_plants(text) == expected


@pytest.mark.parametrize("text", ["slow:naive", "slow:naive:lots", "slow:naive:nan", "slow:naive:-1", "extra_nxn",
                                  "fast:naive:1", "extra_nxn:a:b", "wrong:naive", "wrong:naive:0", "broken:naive",
                                  "broken:naive:ones"])
def test_parse_plants_rejects_naming_the_forms(text):
    with pytest.raises(ValueError, match="expected slow:VARIANT:FRACTION, extra_nxn:VARIANT, wrong:VARIANT:REL or "
                                         "broken:VARIANT:zeros|nan"):
        parse_plants(text)


@pytest.mark.parametrize("text", ["slow:naive:1e308", "wrong:naive:1e9", "slow:naive:inf"])
def test_a_plant_past_its_limit_is_refused(text):
    with pytest.raises(ValueError, match="at most 100"):
        parse_plants(text)


def test_a_plant_in_a_variant_that_does_not_exist_is_refused_naming_the_variants():
    with pytest.raises(ValueError, match="no variant named nonexistent; the variants: naive, tiled"):
        parse_plants("slow:nonexistent:1.0", variants=["naive", "tiled"])
    assert parse_plants("slow:naive:1.0", variants=["naive", "tiled"]) == {"naive": Plant(slow=1.0)}


@pytest.mark.parametrize("how", ["zeros", "nan"])
def test_a_broken_plant_zeroes_or_poisons_the_output_and_its_gradients(how):
    q, k, v = (torch.randn(1, 2, 8, 16, requires_grad=True) for _ in range(3))
    attention = Plant(broken=how).wrap_attention(lambda q, k, v: VARIANTS["naive"].fn(q, k, v))
    out = attention(q, k, v)
    out.backward(torch.randn_like(out))
    for t in (out, q.grad, k.grad, v.grad):
        assert (t == 0).all() if how == "zeros" else t.isnan().all()


def test_cpu_cell_is_predicted_against_available_ram(monkeypatch):
    cell = Cell(variant="naive", seq_len=4096, head_dim=64, batch=8, heads=4, dtype="fp32", causal=False,
                device="cpu")
    peak = predict("naive", batch=8, heads=4, seq_len=4096, head_dim=64, dtype=torch.float32).peak_bytes
    available = int(peak / CPU_OOM_SAFETY_FRACTION) - 1
    monkeypatch.setattr("attnbench.runner.available_host_memory_bytes", lambda: available)
    runner = CellRunner(cell, max_time_s=0.01, min_rounds=1)
    with pytest.raises(pytest.skip.Exception, match="oom-predicted: predicted peak .* of RAM available"):
        runner.ensure_probed()
    assert runner.record.memory["free_bytes"] == available


def test_a_cell_too_large_for_this_machine_is_recorded_as_oom_and_the_run_goes_on(tmp_path):
    """seq_len 100000 of naive needs ~160 GB of n×n tensors: predicted, never allocated (no OOM killer)."""
    json_path = tmp_path / "huge.json"
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "-q", "-rs",
           f"--benchmark-json={json_path}", "--attn-device", "cpu", "--attn-variants", "naive",
           "--attn-seq-lens", "32,100000", "--attn-head-dims", "16", "--benchmark-max-time", "0.01"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"an OOM cell must not fail the run:\n{output[-3000:]}"
    cells = {cell_key(c): c for c in json.loads(json_path.read_text())["attnbench"]["cells"]}
    huge = cells["naive-s100000-d16-b2-h2-fp32-full"]
    assert huge["status"] == "oom-predicted" and "of RAM available" in huge["message"], huge
    assert cells["naive-s32-d16-b2-h2-fp32-full"]["status"] == "ok"


# -- pytest-benchmark's own tools group and tabulate by the cells' parameters


def test_pytest_benchmark_groups_and_compares_by_parameter(tmp_path):
    storage = tmp_path / "storage"
    env = {**os.environ, **SUITE_ENV}
    env.pop("ATTNBENCH_PLANT", None)
    outputs = []
    for _ in range(2):
        cmd = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "-q", *TINY_GRID,
               "--benchmark-autosave", f"--benchmark-storage={storage}",
               "--benchmark-group-by=param:seq_len,param:head_dim"]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outputs.append(proc.stdout)
    for s in TINY_SEQ_LENS:
        title = f"benchmark 'seq_len={s} head_dim=16': {len(TINY_VARIANTS) * len(PASSES)} tests"
        assert title in outputs[0], f"--benchmark-group-by=param:seq_len,param:head_dim: no {title!r}:\n{outputs[0]}"

    proc = subprocess.run([sys.executable, "-m", "pytest_benchmark", "--storage", str(storage), "compare",
                           "0001", "0002", "--group-by=param:variant", "--columns=median,iqr"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tables = re.split(r"-+ benchmark '", proc.stdout)[1:]
    by_variant = {t.split("'")[0]: t for t in tables}
    assert set(by_variant) == {f"variant={v}" for v in TINY_VARIANTS}, f"one table per variant:\n{proc.stdout}"
    for variant in TINY_VARIANTS:
        table = by_variant[f"variant={variant}"]
        header = next(line for line in table.splitlines() if line.startswith("Name"))
        assert header.split(")", 1)[1].split() == ["Median", "IQR"], f"--columns=median,iqr: {header}"
        rows = [line for line in table.splitlines() if line.startswith("test_")]
        assert len(rows) == 2 * len(TINY_SEQ_LENS) * len(PASSES), f"both runs' benchmarks of {variant}:\n{table}"
        assert all(f"[{variant}-s" in row for row in rows), table
        assert {re.search(r"\((000[12])_", row).group(1) for row in rows} == {"0001", "0002"}


RAISING_VARIANT = '''
import dataclasses

from attention_impls import registry

_naive = registry.VARIANTS["naive"]


def _raises_at_64(q, k, v, *, causal=False, mask=None):
    if q.shape[2] == 64:
        raise RuntimeError("this kernel raises at seq_len 64")
    return _naive.impl(q, k, v, causal=causal)


registry.VARIANTS["naive"] = dataclasses.replace(_naive, impl=_raises_at_64)
'''


def test_a_variant_that_raises_fails_its_cell_and_the_grid_goes_on(tmp_path):
    """An exception that is not an OOM: the cell is recorded failed with the error, its first benchmark fails
    (exit 1) with the traceback as text, its other one skips, and every other cell is measured."""
    (tmp_path / "raising_variant.py").write_text(RAISING_VARIANT)
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    run = run_suite(tmp_path / "run.json", "-p", "raising_variant", "-rs", env={"PYTHONPATH": pythonpath})
    assert run.returncode == 1, run.output[-3000:]
    assert "RuntimeError: this kernel raises at seq_len 64" in run.output and "Traceback" in run.output
    saved = record.load(run.json_path)
    assert saved.complete, f"every cell was reached: {saved.stop_reason}"
    failed = {k: rec for k, rec in saved.cells.items() if rec.status == "failed"}
    assert set(failed) == {"naive-s64-d16-b2-h2-fp32-full"}, failed
    assert failed["naive-s64-d16-b2-h2-fp32-full"].message == "RuntimeError: this kernel raises at seq_len 64"
    assert all(rec.status == "ok" and len(rec.passes) == 2 for k, rec in saved.cells.items() if k not in failed)
    assert "skipped" in run.output.lower() and "failed: RuntimeError" in run.output
