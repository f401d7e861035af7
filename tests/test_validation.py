"""Bad input is refused at the boundary, by every variant, with an error that names what was expected."""

from __future__ import annotations

import pytest
import torch

from attention_impls import VARIANTS, get_variant, register, tiled_attention


def good(seq_q: int = 8, seq_k: int = 8, head_dim: int = 16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 3, seq_q, head_dim, generator=g, dtype=dtype),
        torch.randn(2, 3, seq_k, head_dim, generator=g, dtype=dtype),
        torch.randn(2, 3, seq_k, head_dim, generator=g, dtype=dtype),
    )


def bad_inputs():
    q, k, v = good()
    return {
        "rank": ((q[0], k, v), ValueError, "4 dimensions"),
        "not-a-tensor": ((q.numpy(), k, v), TypeError, "torch.Tensor"),
        "batch": ((q, k[:1], v[:1]), ValueError, "batch, heads and head_dim"),
        "heads": ((q, k[:, :2], v[:, :2]), ValueError, "batch, heads and head_dim"),
        "head_dim": ((q, k[..., :8], v[..., :8]), ValueError, "batch, heads and head_dim"),
        "seq_k": ((q, k, v[:, :, :5]), ValueError, "same seq_k"),
        "empty": ((q[:, :, :0], k, v), ValueError, "at least 1"),
        "integer": ((q.long(), k.long(), v.long()), TypeError, "floating-point"),
        "mixed-dtype": ((q, k.double(), v), TypeError, "one dtype"),
        "device": ((q, k.to("meta"), v), ValueError, "one device"),
    }


@pytest.mark.parametrize("case", list(bad_inputs()))
@pytest.mark.parametrize("name", list(VARIANTS))
def test_bad_input_is_refused(name, case):
    args, exc, match = bad_inputs()[case]
    with pytest.raises(exc, match=match):
        VARIANTS[name].fn(*args)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_causal_must_be_a_bool(name):
    with pytest.raises(TypeError, match="causal must be a bool"):
        VARIANTS[name].fn(*good(), causal="yes")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_unavailable_device_or_dtype_is_refused_with_the_reason(name):
    variant = VARIANTS[name]
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        reason = variant.unavailable_reason("cpu", dtype)
        if reason is None:
            continue
        assert reason.strip(), f"{name}: an empty reason helps nobody"
        with pytest.raises((ValueError, TypeError), match=r"\w"):
            variant.fn(*good(dtype=dtype))
        return
    pytest.skip(f"{name} runs on CPU in fp16, bf16 and fp32")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_unsupported_head_dim_is_refused(name):
    variant = VARIANTS[name]
    if variant.max_head_dim is None and variant.head_dim_multiple == 1:
        pytest.skip(f"{name} supports every head_dim")
    head_dim = variant.max_head_dim + 8 if variant.max_head_dim is not None else variant.head_dim_multiple + 1
    assert variant.check_head_dim(head_dim) is not None
    # on a device where the variant runs: elsewhere "unavailable" is the (right) first complaint
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    device = next((d for d in devices if variant.unavailable_reason(d, torch.float32) is None), None)
    if device is None:
        pytest.skip(f"{name} runs nowhere here: {variant.unavailable_reason('cpu', torch.float32)}")
    with pytest.raises(ValueError, match="head_dim"):
        variant.fn(*(t.to(device) for t in good(head_dim=head_dim)))


def test_unknown_variant_names_the_registered_ones():
    with pytest.raises(ValueError, match="registered: naive, torch_softmax"):
        get_variant("nope")


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="already registered"):
        register("naive", saved_nxn=0)(lambda q, k, v, *, causal=False: q)


@pytest.mark.parametrize("block_size", [0, -3, 2.5, True])
def test_tiled_block_size_must_be_a_positive_int(block_size):
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        tiled_attention(*good(), block_size=block_size)


def test_cuda_only_backends_say_they_need_cuda():
    for name in ("sdpa_efficient", "sdpa_cudnn"):
        assert "needs CUDA" in VARIANTS[name].unavailable_reason("cpu", torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["sdpa_flash"])
def test_fused_backend_refuses_an_unsupported_shape_with_its_reason(name):
    """Causal with seq_q != seq_k is outside what PyTorch's flash kernel accepts (seen on an H200, torch 2.11):
    a ValueError, never a silent fallback to another backend."""
    variant = VARIANTS[name]
    q = torch.randn(1, 2, 64, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, 48, 64, device="cuda", dtype=torch.bfloat16)
    reason = variant.shape_reason(q, k, k, causal=True)
    assert reason is not None and "refuses" in reason, f"{name} should refuse causal 64x48, said {reason!r}"
    with pytest.raises(ValueError, match="refuses"):
        variant.fn(q, k, k, causal=True)
    assert variant.shape_reason(q, q, q, causal=True) is None, f"{name} should accept causal 64x64"
