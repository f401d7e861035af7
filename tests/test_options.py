"""The ``--attn-*`` options: the parsers in attnbench.grid, then the plugin driven end to end with pytester.

The plugin is loaded by the repository's root conftest, which pytester's temporary directories do not
have, so every run passes ``-p attnbench.plugin`` and gets a one-file benchmark suite of its own.
"""

from __future__ import annotations

import argparse
import re

import pytest
import torch

from attention_impls import VARIANTS
from attnbench.grid import (
    DTYPES,
    PRESETS,
    parse_bytes,
    parse_causal,
    parse_device,
    parse_dtypes,
    parse_percent,
    parse_positive_ints,
    parse_preset,
    parse_variants,
)
from attnbench.options import DEFAULT_TIMING

pytest_plugins = ["pytester"]

BENCH_FILE = """
def test_forward(benchmark, attn_runner):
    attn_runner.bench(benchmark, "forward")


def test_backward(benchmark, attn_runner):
    attn_runner.bench(benchmark, "backward")
"""
PASSES = 2
#: the smallest grid that runs: one cell per variant.
TINY = ["--attn-device", "cpu", "--attn-seq-lens", "32", "--attn-head-dims", "16", "--benchmark-max-time", "0.001",
        "--benchmark-min-rounds", "1"]
CELL_ID = re.compile(r"\[(?P<variant>\w+)-s(?P<seq>\d+)-d(?P<dim>\d+)-b(?P<batch>\d+)-h(?P<heads>\d+)-(?P<dtype>\w+)-"
                     r"(?P<mask>full|causal)\]")


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory holding a forward and a backward benchmark over the attnbench grid."""
    pytester.makepyfile(test_bench=BENCH_FILE)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "attnbench.plugin", "-p", "no:cacheprovider", *args)


def collected_ids(result: pytest.RunResult) -> list[re.Match]:
    """The cell ids of every collected benchmark (``--collect-only`` output, quiet or not)."""
    return [m for line in result.outlines
            if ("test_forward[" in line or "test_backward[" in line) and (m := CELL_ID.search(line))]


def available_on_cpu(dtype: str, head_dim: int, preset: str = "cpu-small") -> list[str]:
    """Variants the CPU grid includes unless asked: the preset's, runnable there, and not slowed down by an
    interpreter."""
    among = PRESETS[preset].variants
    return [name for name, v in VARIANTS.items()
            if v.unavailable_reason("cpu", DTYPES[dtype]) is None and v.check_head_dim(head_dim) is None
            and not getattr(v, "cpu_interpreted", False) and (among is None or name in among)]


# -- the parsers


@pytest.mark.parametrize(("text", "expected"), [
    ("256", (256,)), ("256,1024", (256, 1024)), (" 7 , 97 ,1025", (7, 97, 1025)), ("64,64,128", (64, 128)),
])
def test_parse_positive_ints_accepts(text, expected):
    assert parse_positive_ints(text) == expected, f"{text!r} should parse to {expected} (duplicates dropped)"


@pytest.mark.parametrize(("text", "named"), [
    ("0", ">= 1"), ("-5", ">= 1"), ("12,abc", "e.g. 256,1024"), ("1.5", "e.g. 256,1024"), ("", "comma-separated"),
    (",", "comma-separated"),
])
def test_parse_positive_ints_rejects(text, named):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(named)):
        parse_positive_ints(text)


def test_parse_dtypes():
    assert parse_dtypes("fp32,bf16") == ("fp32", "bf16")
    assert parse_dtypes("fp64") == ("fp64",)
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse_dtypes("fp32,fp8")
    assert "'fp8'" in str(info.value) and all(name in str(info.value) for name in DTYPES), (
        f"the error should name the bad dtype and every allowed one, got: {info.value}"
    )


@pytest.mark.parametrize(("text", "expected"), [
    ("false", (False,)), ("true", (True,)), ("false,true", (False, True)), ("causal,full", (True, False)),
    ("YES", (True,)), ("0", (False,)), ("true,1", (True,)),
])
def test_parse_causal_accepts(text, expected):
    assert parse_causal(text) == expected


def test_parse_causal_rejects_naming_the_allowed_values():
    with pytest.raises(argparse.ArgumentTypeError, match=r"'maybe'.*allowed: false, true"):
        parse_causal("maybe")


def test_parse_variants():
    assert parse_variants("all") == tuple(VARIANTS)
    assert parse_variants("tiled,naive,tiled") == ("tiled", "naive")
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse_variants("naive,nope")
    assert "'nope'" in str(info.value) and all(name in str(info.value) for name in VARIANTS), (
        f"the error should name the unknown variant and every registered one, got: {info.value}"
    )


def test_parse_preset():
    for name in PRESETS:
        assert parse_preset(name) == name
    with pytest.raises(argparse.ArgumentTypeError, match="allowed: " + ", ".join(PRESETS)):
        parse_preset("huge")


def test_parse_device():
    for name in ("auto", "cuda", "cpu"):
        assert parse_device(name) == name
    with pytest.raises(argparse.ArgumentTypeError, match="allowed: auto, cuda, cpu"):
        parse_device("tpu")


@pytest.mark.parametrize(("text", "expected"), [
    ("80GiB", 80 * 2**30), ("80GB", 80 * 10**9), ("81920MiB", 81920 * 2**20), ("1024", 1024), ("1.5 KiB", 1536),
    ("2tb", 2 * 10**12), ("512B", 512),
])
def test_parse_bytes_accepts(text, expected):
    assert parse_bytes(text) == expected, f"{text!r} should be {expected} bytes"


@pytest.mark.parametrize("text", ["lots", "GiB", "80XB", "0", "-1GB"])
def test_parse_bytes_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"80GiB|positive"):
        parse_bytes(text)


def test_parse_percent():
    assert parse_percent("10") == 10.0
    assert parse_percent("2.5%") == 2.5
    assert parse_percent("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match="e.g. 5 or 5%"):
        parse_percent("ten")
    with pytest.raises(argparse.ArgumentTypeError, match=">= 0"):
        parse_percent("-3")


# -- end to end: bad values are usage errors


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--attn-dtypes", "fp8", "unknown dtype 'fp8'; allowed: fp16, bf16, fp32, fp64"),
    ("--attn-variants", "nope", "unknown variant 'nope'; allowed: all,"),
    ("--attn-seq-lens", "0", "0 is not positive"),
    ("--attn-causal", "maybe", "'maybe' is not a causal flag"),
    ("--attn-preset", "huge", "unknown preset 'huge'"),
    ("--attn-batch", "2,4", "expected one positive integer"),
    ("--attn-timing", "gpu", "unknown timing mode 'gpu'; allowed: device, wall, cudagraph"),
    ("--benchmark-max-time", "nan", "expected a positive, finite number of seconds"),
    ("--benchmark-max-time", "inf", "expected a positive, finite number of seconds"),
])
def test_bad_cli_value_is_a_usage_error(suite, option, value, message):
    result = run(suite, "--collect-only", option, value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, (
        f"{option} {value} should be a usage error (exit 4), got {result.ret}:\n{result.stdout.str()}"
    )
    stderr = result.stderr.str()
    assert option in stderr and message in stderr, f"stderr should name {option} and say {message!r}:\n{stderr}"


@pytest.mark.parametrize(("args", "message"), [
    (["--attn-timing", "cudagraph"], "--attn-timing cudagraph needs CUDA"),
    (["--attn-flush-l2"], "flushes a GPU's L2 cache and needs CUDA"),
    (["--attn-l2", "flush"], "--attn-l2 flush (--attn-flush-l2) flushes a GPU's L2 cache and needs CUDA"),
    (["--attn-l2", "cold"], "unknown L2 mode 'cold'; allowed: flush, warm"),
    (["--attn-flush-l2", "--attn-l2", "warm"], "contradict each other"),
])
def test_gpu_only_timing_on_cpu_is_a_usage_error(suite, args, message):
    result = run(suite, "--collect-only", "--attn-device", "cpu", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, f"{args} on CPU should be a usage error, got {result.ret}"
    assert message in result.stderr.str(), result.stderr.str()


def test_l2_warm_on_cpu_runs_unflushed(suite):
    result = run(suite, "--collect-only", "-q", "--attn-device", "cpu", "--attn-l2", "warm")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()


@pytest.mark.parametrize("ini", ["attn_flush_l2 = maybe", "attn_timing_check = 2"])
def test_a_flag_ini_that_is_not_a_boolean_is_a_usage_error(suite, ini):
    suite.makeini(f"[pytest]\n{ini}\n")
    result = run(suite, "--collect-only", "--attn-device", "cpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, f"{ini}: expected exit 4, got {result.ret}"
    key, value = (part.strip() for part in ini.split("="))
    assert key in result.stderr.str() and repr(value) in result.stderr.str(), result.stderr.str()


def test_ini_twin_sets_the_grid(suite):
    suite.makeini("[pytest]\nattn_seq_lens = 64\nattn_head_dims = 16\n")
    result = run(suite, "--collect-only", "-q", "--attn-device", "cpu", "--attn-variants", "naive,tiled")
    ids = collected_ids(result)
    assert len(ids) == PASSES * 2, f"expected 2 passes x 2 variants x one shape:\n{result.stdout.str()}"
    assert {(m["seq"], m["dim"]) for m in ids} == {("64", "16")}, "every cell should have the ini's s64 and d16"


def test_cli_option_wins_over_its_ini_twin(suite):
    suite.makeini("[pytest]\nattn_seq_lens = 64\n")
    result = run(suite, "--collect-only", "-q", "--attn-device", "cpu", "--attn-variants", "naive",
                 "--attn-head-dims", "16", "--attn-seq-lens", "32")
    assert {m["seq"] for m in collected_ids(result)} == {"32"}, result.stdout.str()


@pytest.mark.parametrize("env", ["ATTNBENCH_TRITON_TUNE", "ATTNBENCH_TRITON_TMA"])
def test_a_bad_triton_flash_switch_is_refused_before_the_grid(suite, monkeypatch, env):
    from attention_impls import get_variant

    reason = get_variant("triton_flash").unavailable_reason("cpu", torch.float32)
    if reason is not None:
        pytest.skip(f"triton_flash is not in a CPU grid here: {reason}")
    monkeypatch.setenv(env, "maybe")
    result = run(suite, "--collect-only", "--attn-device", "cpu", "--attn-variants", "triton_flash,naive")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, f"{env}=maybe: expected exit 4, got {result.ret}"
    assert f"{env}='maybe': expected on or off" in result.stderr.str(), result.stderr.str()
    monkeypatch.setenv(env, "maybe")
    result = run(suite, "--collect-only", "--attn-device", "cpu", "--attn-variants", "naive")
    assert result.ret == pytest.ExitCode.OK, "a grid without triton_flash does not read the switch"


def test_bad_ini_value_is_a_usage_error_naming_the_key(suite):
    suite.makeini("[pytest]\nattn_dtypes = fp8\n")
    result = run(suite, "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, f"expected exit 4, got {result.ret}"
    stderr = result.stderr.str()
    assert "attn_dtypes" in stderr and "allowed: fp16, bf16, fp32, fp64" in stderr, stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_usage_error(suite):
    result = run(suite, "--collect-only", "--attn-device", "cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, f"expected exit 4, got {result.ret}"
    assert "no CUDA device is available" in result.stderr.str(), result.stderr.str()


def test_memory_compare_fail_needs_benchmark_compare(suite):
    result = run(suite, "--collect-only", "--attn-device", "cpu", "--attn-memory-compare-fail", "5")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, f"expected exit 4, got {result.ret}"
    assert "requires --benchmark-compare" in result.stderr.str(), result.stderr.str()


def test_options_and_defaults_in_help(suite):
    result = run(suite, "--help")
    assert result.ret == pytest.ExitCode.OK
    text = " ".join(result.stdout.str().split())  # help wraps lines
    for option in ("preset", "device", "variants", "seq-lens", "head-dims", "batch", "heads", "dtypes", "causal",
                   "timing", "l2", "flush-l2", "memory-compare-fail", "timing-check"):
        assert f"--attn-{option}" in text, f"--attn-{option} missing from --help"
    for default in (f"(default: {DEFAULT_TIMING})", "(default: seed on CUDA, cpu-small on CPU)",
                    "(default: auto = cuda when available)"):
        assert default in text, f"--help should show {default!r}"
    for ini_key in ("attn_seq_lens", "attn_head_dims", "attn_dtypes", "attn_variants", "attn_preset", "attn_timing",
                    "attn_flush_l2"):
        assert ini_key in text, f"ini twin {ini_key} missing from --help"


# -- end to end: the grid


def test_cpu_default_grid_is_the_cpu_small_preset(suite):
    args = ["--collect-only"] + ([] if not torch.cuda.is_available() else ["--attn-device", "cpu"])
    result = run(suite, *args)
    preset = PRESETS["cpu-small"]
    expected = PASSES * sum(
        len(available_on_cpu(dtype, head_dim)) * len(preset.causal) * len(preset.seq_lens)
        for dtype in preset.dtypes for head_dim in preset.head_dims
    )
    ids = collected_ids(result)
    assert len(ids) == expected, (
        f"expected {expected} benchmarks (2 passes x CPU variants x {preset.seq_lens} x {preset.head_dims}), "
        f"got {len(ids)}:\n{result.stdout.str()}"
    )
    assert {int(m["seq"]) for m in ids} == set(preset.seq_lens)
    assert {int(m["dim"]) for m in ids} == set(preset.head_dims)
    assert {(int(m["batch"]), int(m["heads"])) for m in ids} == {(preset.batch, preset.heads)}
    result.stdout.fnmatch_lines(["attnbench: device=cpu preset=cpu-small cells=*"])


def test_fa2_paper_preset_derives_batch_and_heads(suite):
    result = run(suite, "--collect-only", "-q", "--attn-device", "cpu", "--attn-preset", "fa2-paper",
                 "--attn-variants", "naive")
    ids = collected_ids(result)
    preset = PRESETS["fa2-paper"]
    assert len(ids) == PASSES * len(preset.seq_lens) * len(preset.head_dims) * len(preset.causal), result.stdout.str()
    for m in ids:
        seq_len, head_dim = int(m["seq"]), int(m["dim"])
        assert int(m["batch"]) == 16384 // seq_len and int(m["heads"]) == 2048 // head_dim, (
            f"{m.group(0)}: expected batch {16384 // seq_len} (16384 tokens) and heads {2048 // head_dim} "
            f"(model dim 2048)"
        )
    assert {m["dtype"] for m in ids} == {"bf16"} and {m["mask"] for m in ids} == {"full", "causal"}


def test_flash_backends_preset_puts_the_fused_kernels_side_by_side():
    """On CUDA (mocked: the grid is planned, nothing runs) every fused variant gets every cell: fp16 and bf16,
    head_dim 64 to 256 at 16384 tokens and a 2048-wide model, causal and not."""
    from unittest import mock

    from attnbench.grid import expand

    with mock.patch("torch.cuda.is_available", return_value=True):
        cells, left_out = expand("cuda", "flash-backends")
    preset = PRESETS["flash-backends"]
    per_variant = len(preset.seq_lens) * len(preset.head_dims) * len(preset.dtypes) * len(preset.causal)
    # under the CPU interpreter (tests without a GPU) triton_flash is left out of a CUDA grid, saying why
    interpreted = {"triton_flash"} if "TRITON_INTERPRET=1" in left_out.get("triton_flash", "") else set()
    expected = set(preset.variants) - interpreted
    assert {c.variant for c in cells} == expected and len(cells) == len(expected) * per_variant, left_out
    assert all(c.batch * c.seq_len == 16384 and c.heads * c.head_dim == 2048 for c in cells)
    assert {(c.head_dim, c.heads) for c in cells} == {(64, 32), (128, 16), (256, 8)}
    assert min(c.seq_len for c in cells) == 4096 and {c.dtype for c in cells} == {"fp16", "bf16"}


def test_explicit_unavailable_variant_is_skipped_with_the_reason(suite):
    saved = suite.path / "run.json"
    result = run(suite, "-rs", *TINY, "--attn-variants", "sdpa_cudnn,naive", f"--benchmark-json={saved}")
    result.assert_outcomes(passed=PASSES, skipped=PASSES)
    out = result.stdout.str()
    assert "sdpa_cudnn unavailable" in out and "needs CUDA" in out, f"skip reason should say why:\n{out}"
    assert "INCOMPLETE" not in out, "a cell its variant cannot run is not a cell the run failed to finish"
    from attnbench import record

    run_ = record.load(saved)
    assert run_.complete, run_.stop_reason
    skipped = {k: rec for k, rec in run_.cells.items() if rec.cell.variant == "sdpa_cudnn"}
    assert skipped and all(rec.status == "skipped" and "needs CUDA" in rec.message for rec in skipped.values())


def test_unavailable_variants_are_left_out_and_listed_in_the_header(suite):
    result = run(suite, "--collect-only", "--attn-device", "cpu", "--attn-seq-lens", "32", "--attn-head-dims", "16")
    missing = [name for name in VARIANTS if name not in available_on_cpu("fp32", 16)]
    assert missing, "every variant runs on CPU here, so nothing can be left out"
    for name in missing:
        result.stdout.fnmatch_lines([f"attnbench: left out {name}: *"])
    collected = {m["variant"] for m in collected_ids(result)}
    assert collected == set(available_on_cpu("fp32", 16)), (
        f"collected {sorted(collected)}, expected exactly the CPU-available variants"
    )
