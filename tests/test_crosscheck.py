"""attnbench crosscheck: a saved run's medians against triton.testing.do_bench."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import requires_cuda
from suite_runs import run_suite

from attnbench import cli, crosscheck


def test_ratio_is_suite_over_do_bench():
    assert crosscheck.Row("c", "forward", 1.02e-3, 1.0e-3).ratio == pytest.approx(1.02)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_a_gpu_it_cannot_judge(tmp_path, capsys):
    assert cli.main(["crosscheck", str(tmp_path / "run.json")]) == crosscheck.EXIT_CANNOT_JUDGE
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err or "needs Triton" in err, err


def test_a_bad_seq_len_list_cannot_judge(capsys):
    assert cli.main(["crosscheck", "--seq-lens", "1024,lots"]) == crosscheck.EXIT_CANNOT_JUDGE
    assert "not a comma-separated list" in capsys.readouterr().err


@requires_cuda
@pytest.mark.gpu
def test_a_gpu_run_agrees_with_do_bench(tmp_path, capsys):
    """Both clocks on the same cells: the suite (L2 flushed, its default on CUDA) and do_bench agree loosely
    here (the tight comparison is a benchmark, not a test); what is tested is that every cell is re-timed."""
    path = tmp_path / "run.json"
    proc = run_suite(path, "--attn-variants", "sdpa_efficient", "--attn-seq-lens", "1024", "--attn-head-dims", "64",
                     "--attn-dtypes", "bf16", "--attn-batch", "4", "--attn-heads", "8", "--attn-device", "cuda")
    assert proc.returncode == 0, proc.output[-3000:]
    rows_path = tmp_path / "rows.json"
    assert cli.main(["crosscheck", str(path), "-o", str(rows_path)]) == crosscheck.EXIT_OK
    rows = json.loads(rows_path.read_text())
    assert {r["pass_name"] for r in rows} == {"forward", "backward"}
    assert all(0.5 < r["ratio"] < 2 for r in rows), rows
    assert "suite / do_bench" in capsys.readouterr().out


def test_the_table_names_both_medians_and_their_ratio():
    text = crosscheck.table([crosscheck.Row("naive-s1024-d64-b4-h8-bf16-full", "backward", 2.04e-3, 2.0e-3)])
    assert "`naive-s1024-d64-b4-h8-bf16-full`" in text and "| backward" in text
    assert "| 2.04 " in text and "| 2 " in text and "| 1.020 " in text, text
