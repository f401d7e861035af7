"""``attnbench precompile``: the command around attention_impls.triton_flash.precompile (GPU work itself is
tested in test_triton_flash.py) and the graphs of the variants that compile one per cell."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch._dynamo.utils import counters

from attention_impls import VARIANTS, get_variant, triton_flash
from attnbench import cli, precompile
from attnbench.grid import Cell


def test_passes_the_presets_grid_to_the_kernel_module(monkeypatch, capsys):
    calls = []

    def fake(head_dims, dtypes, *, causal, masks, workers):
        calls.append((tuple(head_dims), tuple(dtypes), tuple(causal), tuple(masks), workers))
        return triton_flash.PrecompileResult(compiled=12, failed=("dkdv 64x128/w8/s2: OutOfResources",), seconds=3.0)

    monkeypatch.setattr(triton_flash, "precompile", fake)
    assert cli.main(["precompile", "--preset", "fa2-paper", "--workers", "3"]) == 0
    assert calls == [((64, 128), ("bf16",), (False, True), ("none",), 3)]
    out = capsys.readouterr().out
    assert "12 kernel variants in Triton's cache in 3 s; 1 candidates do not compile" in out, out


def test_compiles_the_mask_kinds_of_the_presets_cells_that_triton_flash_runs(monkeypatch):
    """The flex preset's cells use no mask, sliding windows, documents and prefix-LM; triton_flash runs the
    first three, so those kernels are compiled and prefix-LM's cells (left out of its grid) cost nothing."""
    calls = []

    def fake(head_dims, dtypes, *, causal, masks, workers):
        calls.append(tuple(masks))
        return triton_flash.PrecompileResult(compiled=1, failed=(), seconds=1.0)

    monkeypatch.setattr(triton_flash, "precompile", fake)
    assert cli.main(["precompile", "--preset", "flex"]) == 0
    assert calls == [("none", "sliding_window", "document")], calls


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without a GPU")
def test_without_a_gpu_it_says_there_is_nothing_to_compile(capsys):
    assert cli.main(["precompile", "--head-dims", "64", "--dtypes", "fp16"]) == 0
    assert "nothing to compile" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--dtypes", "fp64"], "triton_flash runs fp16, bf16 and fp32, not fp64"),
    (["--head-dims", "1000"], "head_dim must be between 1 and 256"),
])
def test_what_triton_flash_cannot_run_is_exit_2(capsys, args, message):
    assert cli.main(["precompile", *args]) == 2
    assert message in capsys.readouterr().err


# graphs: the variants that compile one per cell (flex and compiled under torch.compile)


def _cell(variant: str, seq_len: int = 48) -> Cell:
    return Cell(variant=variant, seq_len=seq_len, head_dim=16, batch=1, heads=2, heads_kv=2, dtype="fp32",
                causal=True, mask="none", device="cpu")


def test_compile_graphs_runs_each_cells_first_call_and_passes_over_the_others():
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    result = precompile.compile_graphs([_cell("compiled"), _cell("torch_softmax")], workers=1)
    assert (result.compiled, result.failed) == (1, ())
    assert result.slowest[0] == _cell("compiled").key
    assert counters["stats"]["unique_graphs"] > before, "the compiled cell's graph was not compiled"


def test_a_cell_that_cannot_compile_is_reported_not_raised(monkeypatch):
    def broken(q, k, v, *, causal=False, mask=None):
        raise RuntimeError("Inductor could not lower this")

    monkeypatch.setitem(VARIANTS, "compiled", dataclasses.replace(get_variant("compiled"), impl=broken))
    result = precompile.compile_graphs([_cell("compiled"), _cell("compiled", 64)], workers=1)
    assert result.compiled == 0
    assert [e.split(":")[0] for e in result.failed] == [_cell("compiled").key, _cell("compiled", 64).key]
    assert "RuntimeError: Inductor could not lower this" in result.failed[0]


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_compile_graphs_refuses_a_bad_worker_count(workers):
    with pytest.raises(TypeError, match="workers must be a positive int or None"):
        precompile.compile_graphs([_cell("compiled")], workers=workers)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU grid")
def test_the_command_compiles_the_graphs_of_the_cells_it_names(capsys):
    assert cli.main(["precompile", "--preset", "cpu-small", "--variants", "compiled,torch_softmax",
                     "--seq-lens", "40", "--head-dims", "16", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    # cpu-small: fp32, not causal, one mask; the compiled variant's one cell, nothing for torch_softmax
    assert "attnbench precompile: [1/1] compiled-s40-d16-b2-h2-fp32-full: compiled in" in out, out
    assert "graphs of 1 compiled cells (cpu) compiled in" in out, out
    assert "compiled-s40-d16-b2-h2-fp32-full" in out, out


@pytest.mark.parametrize("workers", [1, 2])
def test_map_in_processes_keeps_the_items_order_and_reports_each_result(workers):
    from attention_impls.parallel import map_in_processes

    seen = []
    assert map_in_processes(math.factorial, [5, 3, 0, 4], workers,
                            on_result=lambda i, r: seen.append((i, r))) == [120, 6, 1, 24]
    assert sorted(seen) == [(0, 120), (1, 6), (2, 1), (3, 24)], "every result is reported once, with its index"


def test_a_device_error_left_behind_is_reported_for_its_cell(monkeypatch):
    """An error the cell leaves on the device surfaces when its memory is released (a synchronize): reported
    for the cell, not raised."""
    def broken_release():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr("attnbench.runner.release_memory", broken_release)
    key, _seconds, error = precompile.compile_cell(_cell("torch_softmax"))
    assert key == _cell("torch_softmax").key
    assert error == f"{key}: RuntimeError: CUDA error: an illegal memory access was encountered"


def test_compiling_processes_that_stop_are_reported_not_raised(monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    def pool_dies(fn, items, workers, on_result=None):
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(precompile, "map_in_processes", pool_dies)
    result = precompile.compile_graphs([_cell("compiled"), _cell("compiled", 64)], workers=2)
    assert result.compiled == 0 and len(result.failed) == 1
    assert "the compiling processes stopped (BrokenProcessPool" in result.failed[0]
    assert "none of the 2 cells is known to be compiled" in result.failed[0]
