"""``attnbench precompile``: the command around attention_impls.triton_flash.precompile (GPU work itself is
tested in test_triton_flash.py)."""

from __future__ import annotations

import pytest
import torch

from attention_impls import triton_flash
from attnbench import cli


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
