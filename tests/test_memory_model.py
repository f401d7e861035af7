"""``attnbench.memory_model.predict`` pinned to the census: what the model says autograd keeps is what it keeps.

The census (saved-tensor hooks) is exact on any device, so on CPU the model's ``saved_bytes`` must equal it
to the byte, for every variant that runs here, in fp32 and fp64, causal or not, square or not.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from suite_runs import REPO_ROOT

from attention_impls import VARIANTS
from attnbench.census import census_of_attention
from attnbench.memory_model import predict
from attnbench.record import load

DTYPES = (torch.float32, torch.float64)
#: (batch, heads, seq_q, seq_k, head_dim): awkward sizes on purpose, one with seq_q != seq_k.
SHAPES = ((2, 3, 97, 97, 16), (1, 2, 64, 64, 59), (2, 2, 48, 80, 32))
# Row statistics (log-sum-exp, row max/sum) are sized as fp32 words by the model, but in fp64 the variants keep
# them in fp64 (tiled and SDPA promote to at least fp32; naive keeps its row sum in the input dtype next to an
# int64 argmax), so fp64 predictions of variants with row statistics are short by a few bytes per row.


#: what the model does not pin to the byte, and why: the census still measures these (test_census).
UNPINNED = {
    ("compiled", True): "masked, Inductor keeps the softmax output, the mask and transposed copies of q, k and v "
                        "whose layout it picks per shape",
    **{("flex", causal): "on CPU flex runs FlexAttention's eager path, which keeps a row max beside the log-sum-exp "
                         "and the block mask's index tensors; on CUDA it runs compiled, not measured here"
       for causal in (False, True)},
}


def cpu_cases():
    for name, variant in VARIANTS.items():
        for dtype in DTYPES:
            if variant.unavailable_reason("cpu", dtype) is not None:
                continue
            for shape in SHAPES:
                if variant.check_head_dim(shape[-1]) is not None:
                    continue
                for causal in (False, True):
                    marks = [pytest.mark.skip(reason=UNPINNED[(name, causal)])] if (name, causal) in UNPINNED else []
                    case_id = "-".join([name, str(dtype).removeprefix("torch."), "x".join(map(str, shape)),
                                        "causal" if causal else "full"])
                    yield pytest.param(name, dtype, shape, causal, marks=marks, id=case_id)


def qkv(batch, heads, seq_q, seq_k, head_dim, dtype):
    """Fresh standard-normal q, k, v requiring grad."""
    q = torch.randn(batch, heads, seq_q, head_dim, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(batch, heads, seq_k, head_dim, dtype=dtype, requires_grad=True) for _ in range(2))
    return q, k, v


def predicted(name, shape, dtype, causal):
    batch, heads, seq_q, seq_k, head_dim = shape
    return predict(name, batch=batch, heads=heads, seq_len=seq_q, seq_k=seq_k, head_dim=head_dim, dtype=dtype,
                   causal=causal)


@pytest.mark.parametrize(("name", "dtype", "shape", "causal"), list(cpu_cases()))
def test_saved_bytes_equal_the_census(name, dtype, shape, causal):
    census = census_of_attention(VARIANTS[name].fn, *qkv(*shape, dtype), causal=causal)
    prediction = predicted(name, shape, dtype, causal)
    assert prediction.saved_bytes == census.saved_bytes, (
        f"{name} {shape} {dtype} causal={causal}: model predicts {prediction.saved_bytes} B saved, the census "
        f"counts {census.saved_bytes} B:\n{census.describe()}"
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "causal"])
def test_the_math_backend_is_predicted_as_computing_half_in_fp32(dtype, masked):
    """sdpa_math upcasts fp16/bf16: it keeps fp32 copies of q, k, v and an fp32 n×n (an H200 measured twice a
    half-precision n×n on the fa2-paper grid); the census agrees with the model to the byte, and with
    reduced-precision reductions allowed it computes, keeps and is predicted in the input dtype."""
    shape = (2, 3, 97, 97, 16)
    census = census_of_attention(VARIANTS["sdpa_math"].fn, *qkv(*shape, dtype), causal=masked)
    assert {t.dtype for t in census.tensors} == {torch.float32}, census
    p, wide = predicted("sdpa_math", shape, dtype, masked), predicted("sdpa_math", shape, torch.float32, masked)
    assert p.saved_bytes == census.saved_bytes == wide.saved_bytes
    assert p.inputs_bytes == wide.inputs_bytes // 2 and p.output_bytes == wide.output_bytes // 2
    # what the fp32 computation saves, the half inputs and output beside it (its fp32 output is cast down)
    assert p.before_backward_bytes == census.saved_bytes + p.inputs_bytes + p.output_bytes
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        census = census_of_attention(VARIANTS["sdpa_math"].fn, *qkv(*shape, dtype), causal=masked)
        p = predicted("sdpa_math", shape, dtype, masked)
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(False)
    assert {t.dtype for t in census.tensors} == {dtype}, census
    assert p.saved_bytes == census.saved_bytes == wide.saved_bytes // 2


@pytest.mark.parametrize("name", ["naive", "weights_only", "tiled", "sdpa_flash"])
@pytest.mark.parametrize("causal", [False, True])
def test_before_backward_is_inputs_output_and_saved_extra(name, causal):
    shape = (2, 2, 48, 80, 32)
    q, k, v = qkv(*shape, torch.float32)
    out = VARIANTS[name].fn(q, k, v, causal=causal)
    p = predicted(name, shape, torch.float32, causal)
    assert p.inputs_bytes == sum(t.nbytes for t in (q, k, v)), "inputs are q, k and v"
    assert p.output_bytes == out.nbytes, "the output has q's shape and dtype"
    assert p.before_backward_bytes == p.inputs_bytes + p.output_bytes + p.saved_extra_bytes
    assert p.peak_backward_bytes >= p.before_backward_bytes and p.peak_bytes >= p.before_backward_bytes, (
        f"the backward peak holds everything live before backward and more: {p}"
    )
    assert p.peak_bytes == max(p.before_backward_bytes, p.peak_backward_bytes)


def test_nxn_part_scales_quadratically_for_naive_and_not_for_tiled_or_flash():
    def model(name, seq_len):
        return predict(name, batch=2, heads=2, seq_len=seq_len, head_dim=16, dtype=torch.float32)

    def census(name, seq_len):
        return census_of_attention(VARIANTS[name].fn, *qkv(2, 2, seq_len, seq_len, 16, torch.float32))

    naive_row_bytes = VARIANTS["naive"].saved_row_bytes(4) * 2 * 2  # per unit of seq_len: linear, not n×n
    for seq_len in (64, 128):
        small, large = model("naive", seq_len), model("naive", 2 * seq_len)
        nxn_small = small.saved_extra_bytes - naive_row_bytes * seq_len
        nxn_large = large.saved_extra_bytes - naive_row_bytes * 2 * seq_len
        assert nxn_large == 4 * nxn_small, f"naive's n×n bytes should grow 4x from {seq_len} to {2 * seq_len}"
        measured_small, measured_large = census("naive", seq_len), census("naive", 2 * seq_len)
        assert measured_large.nxn_bytes == 4 * measured_small.nxn_bytes > 0, (
            f"naive's census n×n bytes: {measured_small.nxn_bytes} at {seq_len}, {measured_large.nxn_bytes} at "
            f"{2 * seq_len}; expected a factor 4"
        )
        for name in ("tiled", "sdpa_flash"):
            assert model(name, 2 * seq_len).saved_bytes == 2 * model(name, seq_len).saved_bytes, (
                f"{name} keeps nothing n×n: its predicted saved bytes should double with seq_len"
            )
            assert census(name, 2 * seq_len).saved_bytes == 2 * census(name, seq_len).saved_bytes, (
                f"{name}: the census should double with seq_len"
            )
            assert model(name, 2 * seq_len).peak_bytes < 4 * model(name, seq_len).peak_bytes


def gqa_cases():
    for name, variant in VARIANTS.items():
        if not variant.gqa or variant.unavailable_reason("cpu", torch.float32) is not None or name == "flex":
            continue  # flex on CPU: see UNPINNED
        for dtype in (torch.float32, torch.bfloat16):
            if variant.unavailable_reason("cpu", dtype) is None:
                yield pytest.param(name, dtype, id=f"{name}-{str(dtype).removeprefix('torch.')}")


@pytest.mark.parametrize(("name", "dtype"), list(gqa_cases()))
def test_saved_bytes_equal_the_census_under_gqa(name, dtype):
    """Under GQA a variant that expands k and v keeps the expanded copies, not the k and v it was given (in the
    upcast math backend: not even their fp32 copies); the others keep k and v as given."""
    q = torch.randn(2, 4, 64, 16, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(2, 1, 64, 16, dtype=dtype, requires_grad=True) for _ in range(2))
    census = census_of_attention(VARIANTS[name].fn, q, k, v)
    p = predict(name, batch=2, heads=4, heads_kv=1, seq_len=64, head_dim=16, dtype=dtype)
    assert p.saved_bytes == census.saved_bytes, (
        f"{name} {dtype} GQA 4:1: model predicts {p.saved_bytes} B saved, the census counts {census.saved_bytes} B:\n"
        f"{census.describe()}")


#: the H200 runs whose every measured cell the model is held to (docs/results; the fa2-paper run of 34e143d is
#: left out: it counted cuBLAS workspaces as the cells' memory, docs/gpu-runs.md)
MEASURED_RUNS = ("2026-11-29-device.json.gz", "2026-11-29-flex-seq1024-4096.json.gz",
                 "2026-11-29-flex-seq8192-16384.json.gz")
#: what the model is known to miss there, and by how much at most (peak over predicted)
KNOWN_MISSES = {
    "tiled": "its bf16 backward holds 3.5-4 fp32 q-sized buffers more than the model has; fp32 cells at seq_len 256 "
             "peak below it (the model's blocked-backward slabs are sized for long rows)",
}


@pytest.mark.parametrize("run_name", MEASURED_RUNS)
def test_the_model_predicts_what_the_h200_measured(run_name):
    """Before backward within 1%, the backward peak within 5%, for every ok cell of the run (variants in
    KNOWN_MISSES excepted): the model is not a fit of these numbers, but it must not drift from them."""
    run = load(REPO_ROOT / "docs" / "results" / "NVIDIA-H200" / run_name)
    checked, off = 0, []
    for key, rec in run.cells.items():
        c = rec.cell
        if rec.status != "ok" or c.variant in KNOWN_MISSES:
            continue
        p = predict(c.variant, batch=c.batch, heads=c.heads, seq_len=c.seq_len, head_dim=c.head_dim,
                    dtype=c.torch_dtype, causal=c.causal, heads_kv=c.heads_kv, mask=c.mask_spec())
        before, peak = rec.memory["mem_before_backward_bytes"], rec.memory["peak_bytes"]
        checked += 1
        if abs(p.before_backward_bytes / before - 1) > 0.01 or abs(p.peak_bytes / peak - 1) > 0.05:
            off.append(f"{key}: before backward {p.before_backward_bytes / 2**20:.0f} MiB predicted, "
                       f"{before / 2**20:.0f} measured; peak {p.peak_bytes / 2**20:.0f} predicted, {peak / 2**20:.0f}")
    assert checked >= 60, f"only {checked} cells checked in {run_name}"
    assert not off, f"{len(off)} of {checked} cells off:\n" + "\n".join(off[:12])


@pytest.mark.parametrize(("kwargs", "error", "names"), [
    (dict(seq_len=0), ValueError, "seq_len"),
    (dict(seq_len=-64), ValueError, "seq_len"),
    (dict(seq_len=64.0), ValueError, "seq_len"),
    (dict(seq_len="64"), ValueError, "seq_len"),
    (dict(batch=0), ValueError, "batch"),
    (dict(head_dim=None), ValueError, "head_dim"),
    (dict(seq_k=0), ValueError, "seq_k"),
    (dict(dtype=torch.int32), TypeError, "floating"),
    (dict(dtype=torch.bool), TypeError, "floating"),
    (dict(dtype="fp32"), TypeError, "floating"),
    (dict(variant="nope"), ValueError, "registered"),
])
def test_bad_arguments(kwargs, error, names):
    args = dict(variant="naive", batch=2, heads=2, seq_len=64, head_dim=16, dtype=torch.float32)
    args.update(kwargs)
    variant = args.pop("variant")
    with pytest.raises(error, match=names):
        predict(variant, **args)


def test_gqa_backward_buffers_are_sized_by_the_keys():
    """FA2 and cuDNN under GQA hold dK and dV for every query head at the peak: k-sized, so seq_k, not seq_q."""
    flash = VARIANTS["sdpa_flash"]
    without = dataclasses.replace(flash, gqa_backward_expands=False)
    for seq_k in (256, 1024):
        shape = dict(batch=2, heads=8, heads_kv=2, seq_len=256, seq_k=seq_k, head_dim=64, dtype=torch.bfloat16)
        extra = predict(flash, **shape).peak_backward_bytes - predict(without, **shape).peak_backward_bytes
        assert extra == 2 * 2 * 8 * seq_k * 64 * 2, f"seq_k {seq_k}: {extra} bytes for dK and dV of 8 query heads"
