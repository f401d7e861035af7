"""Sharding: the split of every preset's grid is exact, balanced and deterministic; ``attnbench merge`` refuses
shards that do not make one run (naming why and which cells); a run made in two CPU shards and merged gates
clean against the same grid run in one process; ``attnbench run`` runs the shards, shows their progress and
keeps what a crashed shard's siblings measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from suite_runs import REPO_ROOT, SUITE_ENV, TINY_GRID, run_suite, tiny_suite_run

from attention_impls import VARIANTS
from attnbench import cli, record
from attnbench.grid import DTYPES, PRESETS, cell_key, expand, parse_cell_key
from attnbench.shard import ShardSpec, cell_cost_s, fits, parse_shard, parse_shard_unit, partition, shard_units
from attnbench.variants import cannot_run_reason

#: the round options of the project's addopts (pyproject.toml), which a real run uses.
MAX_TIME_S, MIN_ROUNDS = 0.25, 10
#: an H200's memory, as the split rounds it (140 GiB), and an 80 GiB card's.
H200_BYTES, A100_80_BYTES = 140 * 2**30, 80 * 2**30
#: the CPU gate's rule (README: a shared CPU shifts whole benchmarks; gate on the fastest round, wide margin).
CPU_TIME = "min:200"


def grid(preset: str, device: str) -> list:
    """Every cell of ``preset`` a machine with ``device`` would run: the variants that run there in principle
    (this machine's lack of a GPU does not count; expand() only reads the registry's metadata)."""
    dtype = DTYPES[PRESETS[preset].dtypes[0]]
    names = tuple(n for n, v in VARIANTS.items() if cannot_run_reason(v, device, dtype) is None
                  and not (device == "cpu" and v.cpu_interpreted)
                  and (PRESETS[preset].variants is None or n in PRESETS[preset].variants))
    cells, _ = expand(device, preset, variants=names)
    return [c for c in cells if VARIANTS[c.variant].check_head_dim(c.head_dim) is None]


def split(cells, count, memory=H200_BYTES):
    return partition(cells, count, memory_bytes=memory, max_time_s=MAX_TIME_S, min_rounds=MIN_ROUNDS)


# -- the split


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_cell_lands_in_exactly_one_shard(preset, device):
    cells = grid(preset, device)
    assert cells, f"{preset} on {device} should have cells"
    keys = [c.key for c in cells]
    for count in (1, 2, 3, 4, 7, len(cells)):
        shards = split(cells, count).shards
        taken = [c.key for shard in shards for c in shard]
        twice = sorted({k for k in taken if taken.count(k) > 1})
        assert not twice, f"{preset}/{device} in {count} shards: {twice} in more than one shard"
        assert sorted(taken) == sorted(keys), f"{preset}/{device} in {count} shards: cells lost or invented"
        assert all(shard for shard in shards), f"{preset}/{device} in {count} shards: an empty shard"
        for shard in shards:
            assert [c.key for c in shard] == [k for k in keys if k in {c.key for c in shard}], \
                "a shard keeps the grid's order"


@pytest.mark.parametrize("memory", [H200_BYTES, A100_80_BYTES], ids=["141GB", "80GB"])
@pytest.mark.parametrize("count", [2, 3, 4])
def test_seed_grid_shards_are_within_10_percent_of_an_even_share(count, memory):
    cells = grid("seed", "cuda")
    assert len(cells) == 140, "the seed grid on a GPU: 7 variants x 5 seq_lens x 4 head_dims"
    result = split(cells, count, memory)
    even = result.total_s / count
    assert result.imbalance <= 1.10, (
        f"seed grid in {count} shards: predicted {[round(c) for c in result.costs_s]} s, largest "
        f"{result.imbalance:.3f}x an even share of {even:.0f} s (at most 1.10x)")


@pytest.mark.parametrize("preset", ["seed", "fa2-paper", "flex"])
@pytest.mark.parametrize("count", [2, 3, 4])
def test_sharding_by_shape_keeps_every_variant_of_a_shape_together(preset, count):
    """--attn-shard-by shape: each comparison group (one shape, every variant) lies in one shard, the shards are
    still the whole grid, and the split stays near an even share (within 1.15; the seed grid in 4: 1.09)."""
    cells = grid(preset, "cuda")
    result = partition(cells, count, memory_bytes=H200_BYTES, max_time_s=MAX_TIME_S, min_rounds=MIN_ROUNDS,
                       by="shape")
    shard_of = {c.key: i for i, shard in enumerate(result.shards) for c in shard}
    assert sorted(shard_of) == sorted(c.key for c in cells), "cells lost or invented"
    for group in {c.group for c in cells}:
        where = {shard_of[c.key] for c in cells if c.group == group}
        assert len(where) == 1, f"{preset} in {count}: the variants of {group!r} went to shards {sorted(where)}"
    assert all(result.shards), "an empty shard"
    assert result.imbalance <= 1.15, f"largest shard {result.imbalance:.3f}x an even share"


def test_shard_units_and_their_parser():
    cells = grid("fa2-paper", "cuda")
    assert shard_units(cells, "cell") == [(c,) for c in cells]
    shapes = shard_units(cells, "shape")
    assert sum(len(u) for u in shapes) == len(cells) and len(shapes) == len({c.group for c in cells})
    assert [parse_shard_unit(t) for t in ("cell", " Shape ")] == ["cell", "shape"]
    with pytest.raises(argparse.ArgumentTypeError, match="expected cell or shape"):
        parse_shard_unit("variant")
    with pytest.raises(ValueError, match="by must be one of cell, shape"):
        shard_units(cells, "variant")


def test_the_split_is_deterministic_whatever_the_order_of_the_grid():
    cells = grid("fa2-paper", "cuda")
    first = [{c.key for c in shard} for shard in split(cells, 4).shards]
    for seed in range(3):
        shuffled = cells[:]
        random.Random(seed).shuffle(shuffled)
        assert [{c.key for c in shard} for shard in split(shuffled, 4).shards] == first, \
            "every shard process must compute the same split"


def test_cells_predicted_not_to_fit_spread_over_the_shards():
    cells = grid("seed", "cuda")
    memory = 4 * 2**30  # a 4 GiB card: the long sequences of the n×n variants do not fit
    oom = [c for c in cells if not fits(c, memory)]
    assert 10 < len(oom) < len(cells) / 2, f"expected some cells not to fit, got {len(oom)}"
    for count in (2, 3, 4):
        per_shard = [sum(not fits(c, memory) for c in shard) for shard in split(cells, count, memory).shards]
        assert max(per_shard) - min(per_shard) <= 1, f"OOM cells per shard: {per_shard} (expected spread evenly)"
        assert all(cell_cost_s(c, memory_bytes=memory, max_time_s=MAX_TIME_S, min_rounds=MIN_ROUNDS) < 0.1
                   for c in oom), "a cell that will not run costs only its probe"


def test_n_by_n_variants_cost_more_than_flash_ones_of_the_same_shape():
    cells = {c.key: c for c in grid("seed", "cuda")}
    costs = {k: cell_cost_s(c, memory_bytes=H200_BYTES, max_time_s=MAX_TIME_S, min_rounds=MIN_ROUNDS)
             for k, c in cells.items()}
    shape = "s16384-d64-b8-h1-fp32-full"
    assert costs[f"naive-{shape}"] > costs[f"triton_flash-{shape}"], "two n×n tensors move more bytes"
    assert costs[f"naive-{shape}"] > costs["naive-s1024-d64-b8-h1-fp32-full"], "longer sequences cost more"


@given(data=st.data())
@settings(max_examples=30, deadline=None)
def test_longest_first_is_within_one_cell_of_an_even_share(data):
    """Greedy longest-first never leaves a shard more than its largest cell above an even share."""
    cells = grid("seed", "cuda")
    chosen = data.draw(st.lists(st.sampled_from(cells), min_size=1, max_size=60, unique_by=lambda c: c.key))
    count = data.draw(st.integers(1, len(chosen)))
    result = split(chosen, count)
    largest = max(cell_cost_s(c, memory_bytes=H200_BYTES, max_time_s=MAX_TIME_S, min_rounds=MIN_ROUNDS)
                  for c in chosen)
    assert sorted(c.key for s in result.shards for c in s) == sorted(c.key for c in chosen)
    assert max(result.costs_s) <= result.total_s / count + largest + 1e-9, result.costs_s


@pytest.mark.parametrize("preset", list(PRESETS))
def test_a_cell_key_gives_back_its_cell(preset):
    for cell in grid(preset, "cuda"):
        assert cell_key(parse_cell_key(cell.key)) == cell.key and parse_cell_key(cell.key) == cell.params()


@pytest.mark.parametrize(("text", "expected"), [("1/1", (1, 1)), ("2/4", (2, 4)), (" 4/4 ", (4, 4))])
def test_parse_shard_accepts(text, expected):
    assert parse_shard(text) == ShardSpec(*expected)


@pytest.mark.parametrize(("text", "named"), [("0/4", "1 <= I <= N"), ("5/4", "1 <= I <= N"), ("1/0", "1 <= I <= N"),
                                             ("2", "not I/N"), ("a/b", "not I/N"), ("1/2/3", "not I/N")])
def test_parse_shard_rejects_naming_the_form(text, named):
    with pytest.raises(argparse.ArgumentTypeError, match=named):
        parse_shard(text)


# -- the plugin


pytest_plugins = ["pytester"]

BENCH_FILE = """
def test_forward(benchmark, attn_runner):
    attn_runner.bench(benchmark, "forward")
"""
#: six cells: three variants at two lengths
GRID = ["--attn-device", "cpu", "--attn-seq-lens", "32,64", "--attn-head-dims", "16", "--attn-variants",
        "naive,weights_only,tiled"]


def _collected(pytester, *args) -> tuple[pytest.RunResult, list[str]]:
    result = pytester.runpytest("-p", "attnbench.plugin", "-p", "no:cacheprovider", "--collect-only", "-q",
                                *GRID, *args)
    return result, sorted(line.split("[", 1)[1].rstrip("]") for line in result.outlines if "test_forward[" in line)


def test_the_shards_collect_the_whole_grid_between_them(pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    _, whole = _collected(pytester)
    shards = [_collected(pytester, f"--attn-shard={i}/3")[1] for i in (1, 2, 3)]
    assert len(whole) == 6 and sorted(k for s in shards for k in s) == whole, f"{shards} should partition {whole}"
    result = pytester.runpytest("-p", "attnbench.plugin", *GRID, "--attn-shard", "2/3", "--collect-only")
    result.stdout.fnmatch_lines(["attnbench: shard 2/3: 2 of 6 cells, predicted * s of the grid's * s"])


def test_shards_by_shape_collect_whole_shapes(pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    _, whole = _collected(pytester)
    shards = [_collected(pytester, f"--attn-shard={i}/2", "--attn-shard-by=shape")[1] for i in (1, 2)]
    assert sorted(k for s in shards for k in s) == whole, f"{shards} should partition {whole}"
    for shard in shards:  # two shapes (seq_len 32 and 64) of three variants: one whole shape per shard
        assert len({parse_cell_key(k)["seq_len"] for k in shard}) == 1 and len(shard) == 3, shards


def test_an_ini_shard_by_applies_only_to_sharded_runs(pytester):
    pytester.makepyfile(test_bench=BENCH_FILE)
    pytester.makeini("[pytest]\nattn_shard_by = shape\n")
    assert pytester.runpytest("-p", "attnbench.plugin", *GRID, "--collect-only").ret == pytest.ExitCode.OK
    _, shard = _collected(pytester, "--attn-shard=1/2")
    assert len(shard) == 3 and len({parse_cell_key(k)["seq_len"] for k in shard}) == 1, shard


@pytest.mark.parametrize(("args", "message"), [
    (["--attn-shard=4/3"], "1 <= I <= N"),
    (["--attn-shard=one"], "is not I/N"),
    (["--attn-shard=7/7"], "the grid has 6 cells, so at most 6 shards"),
    (["--attn-shard=3/3", "--attn-shard-by=shape"], "the grid has 2 shapes, so at most 2 shards"),
    (["--attn-shard-by=shape"], "give --attn-shard I/N too"),
    (["--attn-shard=1/2", "--attn-shard-by=variant"], "expected cell or shape"),
])
def test_a_bad_shard_is_a_usage_error(pytester, args, message):
    pytester.makepyfile(test_bench=BENCH_FILE)
    result = pytester.runpytest("-p", "attnbench.plugin", *GRID, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str(), result.stderr.str()


# -- merging


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    """The tiny grid in two shards, each in its own pytest process (run one after the other)."""
    out = tmp_path_factory.mktemp("shards")
    paths = []
    for i in (1, 2):
        run = run_suite(out / f"shard{i}.json", f"--attn-shard={i}/2")
        assert run.returncode == 0, run.output[-3000:]
        paths.append(run.json_path)
    return paths


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_suite_run(tmp_path_factory)


def tool(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return code, out, err


def test_a_merged_run_gates_clean_against_the_grid_run_in_one_process(shards, tiny, capsys, tmp_path):
    merged = tmp_path / "merged.json"
    code, out, err = tool(capsys, "merge", *shards, "-o", merged)
    assert code == 0, err
    run, whole = record.load(merged), record.load(tiny.json_path)
    assert run.complete and run.shard is None, "a merged run is a whole run"
    assert list(run.cells) == list(whole.cells), "the same cells, in the grid's order"
    assert set(run.passes()) == set(whole.passes()), "the same benchmarks"
    by_shard = {i: [k for k, rec in run.cells.items() if rec.shard == i] for i in (1, 2)}
    for i, path in enumerate(shards, 1):
        measured = record.load(path).cells
        assert sorted(by_shard[i]) == sorted(measured), f"each cell names shard {i} that measured it"
        for key, rec in measured.items():
            assert record.cell_section(run.cells[key]) == {**record.cell_section(rec), "shard": i}, \
                f"{key}: the merged record keeps every fact its shard saved"
            assert run.cells[key].accuracy_s == rec.accuracy_s is not None
    assert [m.index for m in run.shard_machines] == [1, 2] and all(m.node for m in run.shard_machines)
    assert all(m.gpu_uuid is None for m in run.shard_machines), "CPU shards measured on no GPU"
    code, out, err = tool(capsys, "gate", tiny.json_path, merged, "--time", CPU_TIME)
    assert code == 0 and "attnbench gate: OK" in out, out + err
    assert f"Compared {len(whole.passes())} benchmarks in {len(whole.cells)} cells" in out
    code, out, err = tool(capsys, "report", merged)
    assert code == 0 and "Merged from 2 shards" in out, err
    compare = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", str(merged)],
                             capture_output=True, text=True, timeout=120)
    assert compare.returncode == 0, f"pytest-benchmark compare should read the merged run:\n{compare.stderr[-2000:]}"
    assert "test_forward[naive-s64-d16-b2-h2-fp32-full]" in compare.stdout


def _edited(path: Path, tmp_path: Path, name: str, edit) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    edited = tmp_path / name
    edited.write_text(json.dumps(data))
    return edited


def _move_first_cell(source: dict, target: dict) -> str:
    """Move the first cell of ``source`` (its record and benchmarks) into ``target``; its key."""
    moved = source["attnbench"]["cells"].pop(0)
    key = cell_key(moved)
    target["attnbench"]["cells"].append(moved)
    benchmarks = [b for b in source["benchmarks"] if cell_key(b["params"]) == key]
    source["benchmarks"] = [b for b in source["benchmarks"] if b not in benchmarks]
    target["benchmarks"] += benchmarks
    return key


def _set_options(data: dict, **options) -> None:
    for b in data["benchmarks"]:
        b["options"].update(options)


def _env(data: dict) -> dict:
    return data["machine_info"]["attnbench"]["env"]


#: (edit of shard 2, words the refusal must contain)
REFUSALS = {
    "different environment": (lambda d: _env(d).update(torch="1.0.0"), "different environments (torch:"),
    "different timing": (lambda d: d["attnbench"]["timing"].update(mode="wall"), "timed differently"),
    "different commit": (lambda d: d["commit_info"].update(id="0123456789abcdef"), "different code"),
    "uncommitted changes": (lambda d: d["commit_info"].update(dirty=not d["commit_info"].get("dirty")),
                            "different code"),
    "different grid": (lambda d: d["attnbench"]["shard"]["grid_cells"].append("naive-s96-d16-b2-h2-fp32-full"),
                       "split different grids (only in"),
    "different round options": (lambda d: _set_options(d, max_time=0.5), "different round options"),
    "different split count": (lambda d: d["attnbench"]["shard"].update(count=3), "one of 3"),
    "different device memory": (lambda d: d["attnbench"]["shard"].update(partition_memory_bytes=2**30),
                                "different device memory"),
    "incomplete": (lambda d: d["attnbench"].update(complete=False, stop_reason="interrupted (Ctrl-C)"),
                   "incomplete run (interrupted (Ctrl-C))"),
    "planted regression": (lambda d: d["attnbench"].update(plants={"naive": {"slowdown": 9.0}}),
                           "different planted regressions"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_merge_refuses_shards_that_are_not_one_run(shards, capsys, tmp_path, case):
    edit, words = REFUSALS[case]
    bad = _edited(shards[1], tmp_path, "bad.json", edit)
    out = tmp_path / "merged.json"
    code, _, err = tool(capsys, "merge", shards[0], bad, "-o", out)
    assert code == 2 and err.startswith("attnbench merge: cannot merge") and words in err, f"{case}:\n{err}"
    assert not out.exists(), "a refused merge writes nothing"


def test_merge_names_a_cell_measured_twice(shards, capsys, tmp_path):
    one, two = (json.loads(p.read_text()) for p in shards)
    key = _move_first_cell(one, two)
    one["attnbench"]["cells"].append(next(c for c in two["attnbench"]["cells"] if cell_key(c) == key))
    one["benchmarks"] += [b for b in two["benchmarks"] if cell_key(b["params"]) == key]
    paths = [tmp_path / "1.json", tmp_path / "2.json"]
    for path, data in zip(paths, (one, two)):
        path.write_text(json.dumps(data))
    code, _, err = tool(capsys, "merge", *paths, "-o", tmp_path / "merged.json")
    assert code == 2 and f"1 cell(s) measured by more than one shard: {key}" in err, err
    code, _, err = tool(capsys, "merge", shards[0], shards[0], shards[1], "-o", tmp_path / "merged.json")
    assert code == 2 and "shard 1/2 given more than once" in err, err


def test_merge_names_the_cells_no_shard_measured(shards, capsys, tmp_path):
    code, _, err = tool(capsys, "merge", shards[0], "-o", tmp_path / "merged.json")
    missing = sorted(record.load(shards[1]).cells)
    assert code == 2 and "no run of shard 2/2" in err and all(k in err for k in missing), err
    two = json.loads(shards[1].read_text())
    key = _move_first_cell(two, {"attnbench": {"cells": []}, "benchmarks": []})
    thinner = tmp_path / "2.json"
    thinner.write_text(json.dumps(two))
    code, _, err = tool(capsys, "merge", shards[0], thinner, "-o", tmp_path / "merged.json")
    assert code == 2 and f"1 cell(s) of the grid measured by no shard: {key}" in err, err


def test_merge_refuses_a_run_that_is_not_a_shard(shards, tiny, capsys, tmp_path):
    code, _, err = tool(capsys, "merge", shards[0], tiny.json_path, "-o", tmp_path / "merged.json")
    assert code == 2 and "is not a shard's run" in err, err


def test_merge_exits_3_when_it_cannot_write(shards, capsys, tmp_path):
    code, _, err = tool(capsys, "merge", *shards, "-o", tmp_path / "no such folder" / "merged.json")
    assert code == 3 and "cannot write" in err, err


@pytest.mark.parametrize(("edit", "named"), [
    (lambda s: s.update(index=3), "attnbench.shard: index is 3, expected 1 to count (2)"),
    (lambda s: s.update(grid_cells=s["grid_cells"][-1:]), "are not in grid_cells"),
    (lambda s: s.pop("partition_memory_bytes"), "partition_memory_bytes is None"),
])
def test_the_reader_refuses_a_shard_record_it_cannot_trust(shards, tmp_path, edit, named):
    bad = _edited(shards[0], tmp_path, "bad.json", lambda d: edit(d["attnbench"]["shard"]))
    with pytest.raises(record.RunError, match=named.replace("(", r"\(").replace(")", r"\)")):
        record.load(bad)


# -- attnbench run


CRASH_PLUGIN = """
import os
import signal


def pytest_runtest_call(item):
    # shard 2 dies in its second benchmark, as a process the OOM killer takes does
    shard = item.config.getoption("attn_shard")
    if shard is not None and shard.index == 2 and item.nodeid == item.session.items[1].nodeid:
        os.kill(os.getpid(), signal.SIGKILL)
"""


def launch(capsys, monkeypatch, *argv) -> tuple[int, str, str]:
    monkeypatch.chdir(REPO_ROOT)
    for key, value in SUITE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ATTNBENCH_PLANT", raising=False)
    return tool(capsys, "run", *argv)


def test_run_measures_the_grid_in_cpu_shards_and_autosaves_the_merged_run(capsys, monkeypatch, tmp_path, tiny):
    store = tmp_path / "storage"
    code, out, err = launch(capsys, monkeypatch, "--cpu-shards", "2", "--storage", store, "--", *TINY_GRID)
    assert code == 0, out[-3000:] + err
    for i in (1, 2):
        assert f"[shard {i}/2 cpu " in out and "PASSED" in out, "every shard's progress is shown, prefixed"
    saved = list(store.glob("*/0001_*.json"))
    assert len(saved) == 1, f"saved where --benchmark-autosave would: {list(store.rglob('*'))}"
    run = record.load(saved[0])
    assert run.complete and list(run.cells) == list(record.load(tiny.json_path).cells)
    assert {rec.shard for rec in run.cells.values()} == {1, 2}


def test_run_stopped_by_sigterm_merges_and_saves_what_its_shards_measured(tmp_path):
    """A job timeout sends SIGTERM: `attnbench run` passes Ctrl-C on to its shards once, each saves what it
    measured, and the command merges and saves them as one incomplete run instead of dying with them."""
    import signal

    store = tmp_path / "storage"
    env = {k: v for k, v in os.environ.items() if k != "ATTNBENCH_PLANT"}
    cmd = [sys.executable, "-m", "attnbench", "run", "--cpu-shards", "2", "--storage", str(store), "--",
           *TINY_GRID, "--attn-seq-lens", "32,40,48,56,64,72,80,88,96", "--benchmark-max-time", "0.3", "-v"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env={**env, **SUITE_ENV, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if all(any(x.startswith(f"[shard {i}/2") and "PASSED" in x for x in lines) for i in (1, 2)):
            proc.send_signal(signal.SIGTERM)
            break
    output = "".join(lines) + proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, f"a stopped run is a failed run (exit 1):\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    saved = list(store.glob("*/incomplete_*.json"))
    assert len(saved) == 1 and not list(store.glob("*/[0-9][0-9][0-9][0-9]_*.json")), list(store.rglob("*"))
    run = record.load(saved[0])
    assert not run.complete and "INCOMPLETE RUN" in output
    measured = {rec.shard for rec in run.cells.values() if rec.status == "ok"}
    assert measured == {1, 2}, f"both shards' measured cells are kept: {measured}"
    assert any(rec.status == "pending" for rec in run.cells.values()), "the cells never reached are pending"


def test_run_killed_outright_leaves_shards_that_finish_and_merge(tmp_path, capsys):
    """SIGKILL of `attnbench run` cannot be passed on: its shards write to log files, not to its pipe, so they
    run to the end of their grids and save in its temporary folder, where `attnbench merge` joins them
    (docs/sharding.md)."""
    import signal

    env = {k: v for k, v in os.environ.items() if k != "ATTNBENCH_PLANT"}
    cmd = [sys.executable, "-m", "attnbench", "run", "--cpu-shards", "2", "--storage", str(tmp_path / "storage"),
           "--", *TINY_GRID, "--attn-seq-lens", "32,40,48,56", "-v"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env={**env, **SUITE_ENV, "PYTHONUNBUFFERED": "1",
                                                     "TMPDIR": str(tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("[shard ") and "PASSED" in line:
            proc.kill()
            break
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (work,) = tmp_path.glob("attnbench-shards-*")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        runs = sorted(work.rglob("*.json"))
        if len(runs) == 2 and all(_complete_run(path) for path in runs):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the shards did not finish after their command was killed: {sorted(work.rglob('*'))}")
    merged = tmp_path / "merged.json"
    assert cli.main(["merge", *map(str, runs), "-o", str(merged)]) == 0, capsys.readouterr().err
    run = record.load(merged)
    assert run.complete and {rec.status for rec in run.cells.values()} == {"ok"}, run.cells


def _complete_run(path: Path) -> bool:
    try:
        return json.loads(path.read_text())["attnbench"]["complete"] is True
    except (OSError, ValueError, KeyError):
        return False


def test_run_keeps_what_the_other_shards_measured_when_one_crashes(capsys, monkeypatch, tmp_path):
    (tmp_path / "crash_plugin.py").write_text(CRASH_PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    store = tmp_path / "storage"
    code, out, err = launch(capsys, monkeypatch, "--cpu-shards", "2", "--storage", store, "--", *TINY_GRID,
                            "-p", "crash_plugin")
    assert code == 1, out[-3000:] + err
    assert re.search(r"shard 2/2 cpu [\d,-]+ left no run \(killed by SIGKILL\); its cells are marked not measured",
                     out), out[-3000:]
    assert not list(store.glob("*/[0-9][0-9][0-9][0-9]_*.json")), "an incomplete run is not a numbered run"
    saved = list(store.glob("*/incomplete_*.json"))
    assert len(saved) == 1, list(store.rglob("*"))
    run = record.load(saved[0])
    assert not run.complete and "shard 2/2 left no run (killed by SIGKILL)" in run.stop_reason
    kept = [rec for rec in run.cells.values() if rec.shard == 1]
    lost = [rec for rec in run.cells.values() if rec.status == "pending"]
    assert kept and all(rec.status == "ok" and rec.passes for rec in kept), "shard 1's results are kept"
    assert lost and all("not measured: shard 2 left no run" in rec.message for rec in lost)
    assert len(kept) + len(lost) == len(run.cells) == 6
    code, out, err = tool(capsys, "report", saved[0])
    assert code == 0 and "**Incomplete run:**" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusing --gpus needs a machine without CUDA")
@pytest.mark.parametrize("argv", [["--gpus", "0,1"], ["--gpus", "all"], []])
def test_run_without_cuda_refuses_gpu_shards(capsys, monkeypatch, argv):
    code, out, err = launch(capsys, monkeypatch, *argv)
    assert code == 2 and "no CUDA GPU is visible" in err and "--cpu-shards" in err, err


@pytest.mark.parametrize("own", ["--benchmark-json=x.json", "--attn-shard=1/2", "--benchmark-autosave"])
def test_run_refuses_options_it_sets_for_every_shard(capsys, monkeypatch, own):
    code, _, err = launch(capsys, monkeypatch, "--cpu-shards", "2", "--", own)
    assert code == 2 and own.split("=")[0] in err, err


@pytest.mark.parametrize(("argv", "named"), [(["--gpus", "0,x"], "not all or a list of GPU indices"),
                                             (["--gpus", "1,1"], "names a GPU twice"),
                                             (["--cpu-shards", "0"], "not a number of CPU shards")])
def test_run_bad_arguments_are_usage_errors(capsys, argv, named):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", *argv])
    assert exc.value.code == 2 and named in capsys.readouterr().err


def test_attnbench_run_passes_shard_by_to_every_shard():
    from attnbench.launch import Shard, _own_option, pytest_command

    assert _own_option("--attn-shard-by=shape") is None and _own_option("--attn-shard=1/2") == "--attn-shard"
    for index in (1, 2):
        command = pytest_command(Shard(index, 2, "cuda", gpu=str(index - 1), json_path=Path(f"s{index}.json")),
                                 ["--attn-shard-by", "shape"])
        assert command[-2:] == ["--attn-shard-by", "shape"] and f"--attn-shard={index}/2" in command, command


def test_merge_onto_one_of_its_shards_is_refused_and_the_shard_kept(shards, capsys, tmp_path):
    first = tmp_path / "first.json"
    first.write_bytes(shards[0].read_bytes())
    code, _, err = tool(capsys, "merge", first, *shards[1:], "-o", first)
    assert code == 2 and "merging would overwrite it" in err, err
    assert first.read_bytes() == shards[0].read_bytes(), "the shard was overwritten"
