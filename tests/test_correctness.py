"""Every available variant against the float64 reference: output and all three gradients."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    GRAD_ERROR_MULTIPLE,
    OUT_ERROR_MULTIPLE,
    check_close,
    forward_backward,
    plain_yardsticks,
    problem_scale,
    random_qkv,
    reference_forward_backward,
)
from hypothesis import assume, given
from hypothesis import strategies as st

from attention_impls import VARIANTS, tiled_attention
from conftest import available_devices

# Awkward on purpose: 1, primes, non-powers of two, one past a block boundary.
SEQ_LENS = st.sampled_from([1, 2, 3, 7, 16, 17, 31, 64, 97, 128, 129])
HEAD_DIMS = st.sampled_from([8, 16, 24, 32, 59, 64, 111, 128])
DTYPES = {"cpu": [torch.float32, torch.float64], "cuda": [torch.float16, torch.bfloat16, torch.float32]}
#: Variants measured to miss the bound on some draw, with the factor of it they do meet, and why.
#: PyTorch's CPU flash backward: dk/dv errors up to 9× those of its yardstick (the backward from O and the
#: LSE) at peaky logits (seq 128×64, head_dim 59, logits ×16, 20 draws), 1.37× the bound at worst over 1500
#: random fp32 draws of this test's inputs.
#: triton_flash in Triton's CPU interpreter (tl.dot is numpy's matmul, so the CPU's BLAS decides its rounding):
#: at seq 3x128, head_dim 111, logits x16, seed 234 (max |q| 42), a clean CI machine measured dk 2.1e-4; on
#: another machine the same draw gives 2.2e-5. The plain errors there: base e 1.8e-5, base 2 5.6e-5, so the
#: bound is 1.5 x (3 x 5.6e-5 + floor 8.0e-5) = 3.7e-4.
KNOWN_GRAD_BOUND_FACTOR = {("sdpa_flash", "cpu"): 4.0, ("triton_flash", "cpu"): 1.5}
#: variants that compile a graph per shape (seconds each on CPU): drawn shapes here would mostly time the
#: compiler; tests/test_masks.py checks them against the reference at fixed edge shapes instead.
COMPILED_PER_SHAPE = {"compiled": "compiles a graph per drawn shape; checked at fixed shapes in test_masks.py"}


def runnable_cases():
    for device in available_devices():
        for dtype in DTYPES[device]:
            for name, variant in VARIANTS.items():
                reason = variant.unavailable_reason(device, dtype) or COMPILED_PER_SHAPE.get(name)
                if reason is None and device in variant.compiles_on:
                    reason = f"{name} compiles a graph per drawn shape on {device}; checked at fixed shapes in test_masks.py"
                marks = [pytest.mark.skip(reason=reason)] if reason else []
                if device == "cuda":
                    marks.append(pytest.mark.gpu)  # `pytest -m gpu` runs it
                dtype_name = str(dtype).removeprefix("torch.")
                yield pytest.param(name, device, dtype, id=f"{name}-{device}-{dtype_name}", marks=marks)


@pytest.mark.parametrize(("name", "device", "dtype"), list(runnable_cases()))
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    seq_q=SEQ_LENS,
    seq_k=SEQ_LENS,
    head_dim=HEAD_DIMS,
    causal=st.booleans(),
    logit_scale=st.sampled_from([1.0, 4.0, 16.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference(name, device, dtype, batch, heads, seq_q, seq_k, head_dim, causal, logit_scale, seed):
    variant = VARIANTS[name]
    if variant.check_head_dim(head_dim) is not None:
        head_dim = 64  # every variant supports 64; the unsupported ones are tested in test_validation
    generator = torch.Generator().manual_seed(seed)
    q, k, v = random_qkv(
        batch, heads, seq_q, seq_k, head_dim, dtype=dtype, device=device, logit_scale=logit_scale, generator=generator
    )
    grad_out = torch.randn(batch, heads, seq_q, head_dim, generator=generator).to(device=device, dtype=dtype)
    # A fused backend's own shape limits are not a correctness question: such draws are refused with a
    # ValueError (test_validation), and only shapes the variant accepts are compared here.
    assume(variant.shape_reason(q, k, v, causal=causal) is None)

    ref_out, _, ref_grads = reference_forward_backward(q, k, v, grad_out, causal=causal)
    plains = [forward_backward(stick, q, k, v, grad_out, causal=causal) for stick in plain_yardsticks(variant, causal)]
    plain_outs = [out for out, _ in plains]
    plain_grads = list(zip(*(grads for _, grads in plains), strict=True))  # (dq of each, dk of each, dv of each)
    out, grads = forward_backward(variant.fn, q, k, v, grad_out, causal=causal)

    assert out.shape == q.shape and out.dtype == dtype, f"{name}: got {tuple(out.shape)} {out.dtype}"
    scale = problem_scale(q, k, v, grad_out, ref_out, *ref_grads)
    check_close(f"{name} out", out, ref_out, plain_outs, OUT_ERROR_MULTIPLE, scale)
    bound_factor = KNOWN_GRAD_BOUND_FACTOR.get((name, device), 1.0)
    for grad_name, got, want, plain in zip(("dq", "dk", "dv"), grads, ref_grads, plain_grads, strict=True):
        check_close(f"{name} {grad_name}", got, want, list(plain), GRAD_ERROR_MULTIPLE, scale,
                    bound_factor=bound_factor)


@pytest.mark.parametrize("block_size", [1, 5, 16, 1000])
@pytest.mark.parametrize("causal", [False, True])
def test_tiled_block_size_does_not_change_the_result(block_size, causal):
    q, k, v = random_qkv(2, 2, 37, 45, 16, dtype=torch.float64, device="cpu")
    grad_out = torch.randn_like(q)
    ref_out, _, ref_grads = reference_forward_backward(q, k, v, grad_out, causal=causal)
    out, grads = forward_backward(
        lambda *a, causal: tiled_attention(*a, causal=causal, block_size=block_size), q, k, v, grad_out, causal=causal
    )
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_reference_is_softmax_attention_with_causal_top_left():
    """The oracle itself, against SDPA's math backend in float64 (seq_q != seq_k, causal)."""
    q, k, v = random_qkv(1, 2, 5, 9, 8, dtype=torch.float64, device="cpu")
    from attention_impls import reference

    for causal in (False, True):
        out, lse = reference(q, k, v, causal=causal)
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.testing.assert_close(out, expected)
        assert out.dtype == torch.float64 and lse.shape == (1, 2, 5)
    # top-left: query 0 sees key 0 only, so its output is exactly v[..., 0, :]
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0].detach())
