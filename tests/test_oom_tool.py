"""``attnbench oom``: the largest seq_len per variant, held to the memory model it reports on."""

from __future__ import annotations

import re

import pytest
import torch

from attention_impls import VARIANTS
from attnbench import cli
from attnbench.memory_model import predict
from attnbench.oom import (
    MAX_SEARCH_SEQ_LEN,
    SEED_CLAIM_MEMORY,
    SEED_CLAIM_SEQ_LEN,
    SEQ_STEP,
    largest_fitting_seq_len,
    split_runnable,
)

#: the command's default shape: the seed's (batch 8, one head, head_dim 16, fp32).
DEFAULT_SHAPE = dict(batch=8, heads=1, head_dim=16, dtype=torch.float32)
#: variants whose CUDA kernels refuse fp32 (PyTorch's flash and cuDNN SDPA backends take fp16/bf16 only).
REFUSE_FP32_ON_CUDA = ("sdpa_flash", "sdpa_cudnn")
ROW = re.compile(r"^\| (?P<variant>\w+) +\| (?P<largest>≥ )?(?P<seq_len>\d+) +\| (?P<pow2>\d+) +\| [\d.]+ +\| "
                 r"(?P<limit>forward|backward) +\|$", flags=re.M)
#: a variant listed below the table as one that cannot run at the settings asked for.
REFUSED = re.compile(r"^- `(?P<variant>\w+)`: (?P<reason>.+)$", flags=re.M)


def oom(capsys, *args: str) -> str:
    code = cli.main(["oom", *args])
    out, err = capsys.readouterr()
    assert code == 0, f"attnbench oom {' '.join(args)} exited {code}: {err}"
    return out


def fits(variant: str, seq_len: int, memory: int, **shape) -> bool:
    return predict(variant, seq_len=seq_len, **shape).peak_bytes <= memory


def tables(out: str) -> tuple[dict[str, re.Match], dict[str, str]]:
    """The rows of the table by variant, and the variants listed as unable to run with their reasons."""
    rows = {m["variant"]: m for m in ROW.finditer(out)}
    refused = {m["variant"]: m["reason"] for m in REFUSED.finditer(out)}
    if refused:
        assert out.index("- `") > max(out.index(f"| {name} ") for name in rows), f"reasons go below the table:\n{out}"
    return rows, refused


def test_a_row_per_variant_consistent_with_the_model(capsys):
    out = oom(capsys, "--memory", "80GB")
    rows, refused = tables(out)
    expected = [name for name in VARIANTS if name not in REFUSE_FP32_ON_CUDA]
    assert list(rows) == expected, f"expected a row per variant that runs fp32 on CUDA, in registry order:\n{out}"
    assert list(refused) == list(REFUSE_FP32_ON_CUDA), f"expected {REFUSE_FP32_ON_CUDA} listed below:\n{out}"
    assert all("needs fp16/bf16" in reason for reason in refused.values()), refused
    for name, row in rows.items():
        seq_len = int(row["seq_len"])
        if row["largest"]:  # past the search's end: only the claim that it fits there is checkable
            assert seq_len == MAX_SEARCH_SEQ_LEN and fits(name, seq_len, 80 * 10**9, **DEFAULT_SHAPE)
            continue
        assert seq_len % SEQ_STEP == 0 and fits(name, seq_len, 80 * 10**9, **DEFAULT_SHAPE), (
            f"{name}: reported {seq_len}, but the model's peak there exceeds 80 GB"
        )
        assert not fits(name, seq_len + SEQ_STEP, 80 * 10**9, **DEFAULT_SHAPE), (
            f"{name}: reported {seq_len}, but {seq_len + SEQ_STEP} fits too"
        )
        pow2 = int(row["pow2"])
        assert pow2 <= seq_len < 2 * pow2 and pow2 & (pow2 - 1) == 0, f"{name}: bad power of two {pow2}"
    naive = int(rows["naive"]["seq_len"])
    assert 0 < naive < int(rows["tiled"]["seq_len"]), "naive keeps n×n tensors, tiled does not: tiled fits more"


@pytest.mark.parametrize("memory", ["80GB", "40GB", "200GiB"])
def test_seed_claim_sentence_says_whether_it_holds(capsys, memory):
    out = oom(capsys, "--memory", memory)
    assert f"Seed's claim: naive attention at seq_len {SEED_CLAIM_SEQ_LEN} does not fit on an 80 GB card" in out
    # the claim is about an 80 GB card at the shape asked for, whatever --memory says
    holds = not fits("naive", SEED_CLAIM_SEQ_LEN, SEED_CLAIM_MEMORY, **DEFAULT_SHAPE)
    verdict = "the claim holds at these settings" if holds else "the claim does not hold at these settings"
    assert verdict in out, f"expected {verdict!r}:\n{out}"


def test_seed_claim_can_fail_at_a_small_shape(capsys):
    # batch 1 and one head: 32768² fp32 n×n tensors are 4 GiB each, so naive fits on 80 GB
    out = oom(capsys, "--memory", "80GB", "--batch", "1")
    assert fits("naive", SEED_CLAIM_SEQ_LEN, SEED_CLAIM_MEMORY, **{**DEFAULT_SHAPE, "batch": 1})
    assert "the claim does not hold at these settings" in out, out


def test_options_change_the_shape(capsys):
    out = oom(capsys, "--memory", "16GiB", "--batch", "2", "--heads", "4", "--head-dim", "64", "--dtype", "bf16",
              "--variants", "naive,tiled")
    assert "(batch 2, heads 4, head_dim 64, bf16; memory model)" in out, out
    rows = {m["variant"]: int(m["seq_len"]) for m in ROW.finditer(out)}
    assert list(rows) == ["naive", "tiled"]
    shape = dict(batch=2, heads=4, head_dim=64, dtype=torch.bfloat16)
    assert rows["naive"] == largest_fitting_seq_len("naive", 16 * 2**30, **shape)


@pytest.mark.parametrize("variant", ["naive", "weights_only", "tiled", "sdpa_flash"])
def test_largest_fitting_seq_len_is_monotone_in_memory(variant):
    memories = [2**20, 2**28, 10**9, 16 * 2**30, 80 * 10**9, 2**40]
    largest = [largest_fitting_seq_len(variant, m, **DEFAULT_SHAPE) for m in memories]
    assert largest == sorted(largest), f"{variant}: more memory must never fit less: {dict(zip(memories, largest))}"
    assert largest[0] < largest[-1], f"{variant}: a MiB and a TiB should not fit the same seq_len"
    for memory, seq_len in zip(memories, largest, strict=True):
        if 0 < seq_len < MAX_SEARCH_SEQ_LEN:
            assert fits(variant, seq_len, memory, **DEFAULT_SHAPE)
            assert not fits(variant, seq_len + SEQ_STEP, memory, **DEFAULT_SHAPE)


def test_nothing_fits_in_too_little_memory():
    assert largest_fitting_seq_len("naive", 1024, **DEFAULT_SHAPE) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_memory_and_without_cuda_exits_2_with_advice(capsys):
    assert cli.main(["oom"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "no CUDA GPU here" in err and "--memory" in err, err


def test_more_than_one_dtype_exits_2(capsys):
    assert cli.main(["oom", "--memory", "80GB", "--dtype", "fp32,bf16"]) == 2
    assert "--dtype takes one dtype" in capsys.readouterr().err


def test_a_head_dim_past_a_kernel_limit_leaves_that_kernel_out(capsys):
    # bf16, so that the flash kernels are refused for their head_dim limit (256) and nothing else
    out = oom(capsys, "--memory", "80GB", "--head-dim", "1000", "--dtype", "bf16")
    rows, refused = tables(out)
    assert list(refused) == ["sdpa_flash", "triton_flash"], f"expected the two 256-limited kernels listed:\n{out}"
    for name, reason in refused.items():
        assert reason == f"{name} supports head_dim <= 256, got 1000", f"{name}: reason {reason!r}"
    assert list(rows) == [name for name in VARIANTS if name not in refused], f"the others keep their rows:\n{out}"


def test_fp64_leaves_out_every_kernel_without_fp64_on_cuda(capsys):
    out = oom(capsys, "--memory", "80GB", "--dtype", "fp64")
    rows, refused = tables(out)
    assert list(rows) == ["naive", "torch_softmax", "weights_only", "tiled", "sdpa_math", "compiled"], out
    assert list(refused) == ["sdpa_efficient", "sdpa_flash", "sdpa_cudnn", "flex", "triton_flash"], out
    assert "flex's generated Triton kernels run fp16, bf16 and fp32" in refused["flex"]
    assert refused["triton_flash"] == "triton_flash supports dtypes float16, bfloat16, float32, not float64"
    assert refused["sdpa_efficient"] == "sdpa_efficient supports dtypes float16, bfloat16, float32, not float64"
    assert "needs fp16/bf16, not float64" in refused["sdpa_flash"] and "needs fp16/bf16" in refused["sdpa_cudnn"]
    assert "cannot run on a CUDA GPU at head_dim 16, fp64" in out, out


def test_a_variant_named_explicitly_that_cannot_run_is_listed_not_measured(capsys):
    out = oom(capsys, "--memory", "80GB", "--head-dim", "1000", "--variants", "triton_flash,naive")
    rows, refused = tables(out)
    assert list(rows) == ["naive"], out
    assert refused == {"triton_flash": "triton_flash supports head_dim <= 256, got 1000"}, out


@pytest.mark.parametrize("memory", [["--memory", "80GB"], []])  # the verdict comes before any GPU is asked
def test_when_no_requested_variant_can_run_exit_2_naming_each_reason(capsys, memory):
    assert cli.main(["oom", *memory, "--dtype", "fp64", "--variants", "triton_flash,sdpa_efficient"]) == 2
    out, err = capsys.readouterr()
    assert out == "", f"nothing to report on stdout, got:\n{out}"
    assert "none of the requested variants can run on a CUDA GPU at head_dim 16, fp64" in err, err
    assert "triton_flash: triton_flash supports dtypes float16, bfloat16, float32, not float64" in err, err
    assert "sdpa_efficient: sdpa_efficient supports dtypes float16, bfloat16, float32, not float64" in err, err


@pytest.mark.parametrize("cuda_available", [True, False])
def test_what_can_run_does_not_depend_on_this_machine(monkeypatch, cuda_available):
    # the answer is about a CUDA GPU, whether or not this machine has one (or runs Triton interpreted)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    for dtype in ("fp16", "bf16", "fp32", "fp64"):
        runnable, refused = split_runnable(tuple(VARIANTS), head_dim=64, dtype=dtype)
        assert "triton_flash" in (runnable if dtype != "fp64" else refused), (dtype, runnable, refused)
        assert "sdpa_efficient" in (runnable if dtype != "fp64" else refused), (dtype, runnable, refused)
        half = dtype in ("fp16", "bf16")
        for name in ("sdpa_flash", "sdpa_cudnn"):
            assert name in (runnable if half else refused), f"{name} {dtype}: {runnable}, {refused}"


@pytest.mark.parametrize("memory", ["inf", "1e400", "nan", "infGiB", "1e308GB", "NaN"])
def test_a_memory_that_is_not_finite_is_a_usage_error(capsys, memory):
    with pytest.raises(SystemExit) as info:
        cli.main(["oom", "--memory", memory])
    assert info.value.code == 2, f"argparse usage errors exit 2, got {info.value.code}"
    err = capsys.readouterr().err
    assert "usage: attnbench oom" in err and "Traceback" not in err, err
    assert f"argument --memory: {memory!r} is not a" in err and "finite memory size" in err, err
    assert "expected e.g. 80GiB" in err, f"the message names the expected form:\n{err}"


@pytest.mark.parametrize(("args", "message"), [
    (["--memory", "lots"], "expected e.g. 80GiB, 80GB, 81920MiB or bytes"),
    (["--memory", "0GB"], "'0GB' is not a positive"),
    (["--memory=-inf"], "'-inf' is not a positive"),  # "=": argparse takes a bare -inf for an option
    (["--memory", "80GB", "--variants", "nope"], "unknown variant 'nope'"),
    (["--memory", "80GB", "--batch", "0"], "0 is not positive"),
])
def test_bad_arguments_are_usage_errors(capsys, args, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["oom", *args])
    assert info.value.code == 2, f"argparse usage errors exit 2, got {info.value.code}"
    err = capsys.readouterr().err
    assert "usage: attnbench oom" in err and message in err, f"expected {message!r} in:\n{err}"


def test_a_mask_leaves_out_the_variants_that_cannot_apply_it(capsys):
    out = oom(capsys, "--memory", "80GB", "--heads", "16", "--heads-kv", "4", "--head-dim", "128", "--dtype", "bf16",
              "--mask", "causal sliding_window:1024")
    rows, refused = tables(out)
    assert "flex" in rows and "tiled" in rows, out
    assert "does not support sliding_window masks" in refused["sdpa_flash"], out
    assert "heads_kv 4" in out and "mask causal sliding_window:1024" in out, out
