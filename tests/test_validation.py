"""Bad input is refused at the boundary, by every variant, with an error that names what was expected."""

from __future__ import annotations

import pytest
import torch

from attention_impls import VARIANTS, get_variant, masks, register, tiled_attention


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
        "batch": ((q, k[:1], v[:1]), ValueError, "batch and head_dim"),
        "heads": ((q, k[:, :2], v[:, :2]), ValueError, r"multiple of k's and v's heads_kv \(2\)"),
        "kv-heads-differ": ((q, k[:, :1], v), ValueError, "same heads_kv"),
        "head_dim": ((q, k[..., :8], v[..., :8]), ValueError, "batch and head_dim"),
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


def bad_masks():
    """(mask, seq_q, seq_k, exception, message): specs outside the contract, for the variants that take masks."""
    return {
        "not-a-spec": ("causal", 8, 8, TypeError, "mask must be None or a spec"),
        "seq_q != seq_k": (masks.sliding_window(2), 8, 6, ValueError, "seq_q == seq_k"),
        "lengths-short": (masks.document((3, 4)), 8, 8, ValueError, "sum to 7, not the sequence length 8"),
        "lengths-long": (masks.document((5, 4)), 8, 8, ValueError, "sum to 9, not the sequence length 8"),
        "prefix-past-seq": (masks.prefix_lm(9), 8, 8, ValueError, r"prefix must lie in \[0, 8\]"),
    }


@pytest.mark.parametrize("case", list(bad_masks()))
@pytest.mark.parametrize("name", list(VARIANTS))
def test_bad_mask_is_refused(name, case):
    mask, seq_q, seq_k, exc, match = bad_masks()[case]
    with pytest.raises(exc, match=match):
        VARIANTS[name].fn(*good(seq_q, seq_k), mask=mask)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: masks.sliding_window(0), "window >= 1"),
    (lambda: masks.sliding_window(2.5), "window >= 1"),
    (lambda: masks.document(()), "one or more integer lengths >= 1"),
    (lambda: masks.document((3, 0)), "one or more integer lengths >= 1"),
    (lambda: masks.document(5), "a sequence of integer lengths"),
    (lambda: masks.prefix_lm(-1), "prefix >= 0"),
])
def test_a_spec_outside_its_domain_cannot_be_made(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_unsupported_mask_or_gqa_is_refused_with_the_reason(name):
    """Each variant refuses what it does not declare, naming what it supports; what it declares it runs."""
    variant = VARIANTS[name]
    device = next((d for d in ("cpu", "cuda") if variant.unavailable_reason(d, torch.float32) is None), None)
    if device is None:
        pytest.skip(f"{name} runs nowhere here: {variant.unavailable_reason('cpu', torch.float32)}")
    q, k, v = (t.to(device) for t in good())
    q = torch.cat([q, q], dim=1)  # 6 query heads over k/v's 3
    for kind, spec in (("sliding_window", masks.sliding_window(3)), ("document", masks.document((5, 3))),
                       ("prefix_lm", masks.prefix_lm(4))):
        if kind not in variant.masks:
            with pytest.raises(ValueError, match=f"{name} does not support {kind} masks"):
                variant.fn(q[:, :3], k, v, mask=spec)
    if not variant.gqa:
        with pytest.raises(ValueError, match="does not support grouped-query attention"):
            variant.fn(q, k, v)


def test_a_variant_registered_without_mask_metadata_supports_none_and_is_called_without_mask():
    """Variants registered before masks (no ``masks``/``gqa``, an impl without ``mask``) keep working."""
    from attention_impls.registry import Variant

    calls = []

    def impl(q, k, v, *, causal=False):
        calls.append(causal)
        return q

    variant = Variant(name="old", impl=impl, saved_nxn=0, description="an impl from before masks")
    q, k, v = good()
    assert variant.fn(q, k, v, causal=True) is q and calls == [True]
    assert variant.masks == frozenset() and not variant.gqa
    with pytest.raises(ValueError, match="old does not support sliding_window masks"):
        variant.fn(q, k, v, mask=masks.sliding_window(2))
    with pytest.raises(ValueError, match="old does not support grouped-query attention"):
        variant.fn(torch.cat([q, q], dim=1), k, v)


def test_unknown_mask_kinds_cannot_be_declared():
    with pytest.raises(ValueError, match="unknown mask kinds"):
        register("bad-masks", saved_nxn=0, masks=("window",))(lambda q, k, v, *, causal=False: q)
