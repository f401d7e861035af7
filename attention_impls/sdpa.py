"""``F.scaled_dot_product_attention`` with one backend forced, and no silent fallback."""

from __future__ import annotations

import warnings
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .masks import MASK_KINDS
from .registry import lse_row_bytes, register, visible_mask


def _needs_cuda(device: torch.device, dtype: torch.dtype, *, backend: str) -> str | None:
    if device.type != "cuda":
        return f"the {backend} SDPA backend needs CUDA (got device {device.type})"
    if not torch.cuda.is_available():
        return f"the {backend} SDPA backend needs CUDA, and no CUDA device is available"
    return None


def _half_only_on_cuda(device: torch.device, dtype: torch.dtype, *, backend: str) -> str | None:
    if device.type == "cuda" and dtype not in (torch.float16, torch.bfloat16):
        return f"the {backend} SDPA backend on CUDA needs fp16/bf16, not {str(dtype).removeprefix('torch.')}"
    return None


def _cuda_half_only(device: torch.device, dtype: torch.dtype, *, backend: str) -> str | None:
    return _half_only_on_cuda(device, dtype, backend=backend) or _needs_cuda(device, dtype, backend=backend)


# torch.backends.cuda.can_use_*: the same checks SDPA's dispatcher runs, with reasons as warnings.
_CUDA_CHECKS = {
    SDPBackend.FLASH_ATTENTION: "can_use_flash_attention",
    SDPBackend.EFFICIENT_ATTENTION: "can_use_efficient_attention",
    SDPBackend.CUDNN_ATTENTION: "can_use_cudnn_attention",
}


#: what PyTorch's checks typically ask of each fused backend (said alongside a refusal).
_LIMITS = {
    SDPBackend.FLASH_ATTENTION: "fp16/bf16, head_dim a multiple of 8 up to 256, and seq_q == seq_k when causal",
    SDPBackend.EFFICIENT_ATTENTION: ("head_dim a multiple of 8 for fp16/bf16 (4 for fp32), and seq_q == seq_k "
                                     "when causal"),
    SDPBackend.CUDNN_ATTENTION: "fp16/bf16, head_dim a multiple of 8 up to 128 (256 on Hopper), and seq_q == seq_k "
                                "when causal",
}


def _shape_reason(q, k, v, causal: bool, mask=None, *, backend: SDPBackend) -> str | None:
    """Why SDPA would refuse this backend for these tensors, or None (CUDA only; CPU is tried)."""
    check_name = _CUDA_CHECKS.get(backend)
    if q.device.type != "cuda" or check_name is None:
        return None
    check = getattr(torch.backends.cuda, check_name, None)
    if check is None:
        return None
    attn_mask, is_causal = _sdpa_mask(q, k, causal, mask)
    params = torch.backends.cuda.SDPAParams(q, k, v, attn_mask, 0.0, is_causal, k.shape[1] != q.shape[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = check(params, True)
    if ok:
        return None
    why = "; ".join(str(w.message).strip() for w in caught) or f"it typically needs {_LIMITS[backend]}"
    return (f"the {backend.name} SDPA backend refuses q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"{str(q.dtype).removeprefix('torch.')}, causal={causal}: {why}")


def _sdpa_mask(q, k, causal: bool, mask) -> tuple[torch.Tensor | None, bool]:
    """SDPA's (attn_mask, is_causal): causal alone stays is_causal; a mask becomes an explicit boolean
    mask with causal folded in (SDPA takes one or the other)."""
    if mask is None:
        return None, causal
    return visible_mask(q, k, causal, mask), False


def _sdpa(q, k, v, *, causal: bool = False, mask=None, backend: SDPBackend) -> torch.Tensor:
    attn_mask, is_causal = _sdpa_mask(q, k, causal, mask)
    with sdpa_kernel(backend):
        try:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                                  enable_gqa=k.shape[1] != q.shape[1])
        except RuntimeError as exc:  # a refusal the shape check did not foresee (e.g. on CPU)
            if "No viable backend" in str(exc) or "No available kernel" in str(exc):
                raise ValueError(
                    f"the {backend.name} SDPA backend cannot run q {tuple(q.shape)} {q.dtype} on {q.device}"
                ) from exc
            raise


def _math_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The math backend computes fp16 and bf16 in fp32 (it keeps fp32 copies of q, k, v and an fp32 n×n for
    backward) unless ``torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)``; measured by the census
    on CPU, and on an H200 (fa2-paper grid, bf16: twice the memory of a bf16 n×n)."""
    half = dtype in (torch.float16, torch.bfloat16)
    return torch.float32 if half and not torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed() else dtype


register(
    "sdpa_math",
    saved_nxn=1,
    masks=MASK_KINDS,  # an explicit boolean mask
    gqa=True,  # enable_gqa: the math backend repeats k and v to every query head
    expands_kv=True,
    backward_nxn=3,  # measured: 3.00 n×n on the GPU
    live_q_buffers=2,  # measured on CUDA: two more q-sized buffers alive after the forward
    compute_dtype=_math_compute_dtype,
    description="F.scaled_dot_product_attention, MATH backend (PyTorch ops, runs anywhere)",
)(partial(_sdpa, backend=SDPBackend.MATH))

register(
    "sdpa_efficient",
    saved_nxn=0,
    saved_row_bytes=lse_row_bytes,
    backward_fp32_q_buffers=1,  # measured: its fp32 dq accumulator, head_dim padded to at least 64
    # measured (H200, bf16: fa2-paper grid, 40 cells, and flex preset, 25): one more q-sized buffer in the inputs'
    # dtype at the peak, 65 MiB where a bf16 q is 64; none in fp32 (seed grid)
    backward_half_q_buffers=1,
    saves_output=True,
    masks=MASK_KINDS,  # attn_mask: a boolean (seq, seq) mask read by the kernel, no block skipping
    # measured (H200, bf16, seq_len 16384, flex preset): with a mask spec it keeps 512 MiB more for backward, the
    # (seq, seq) additive mask in bf16 that PyTorch converts the boolean one to
    saves_mask_in_input_dtype=True,
    # no enable_gqa: PyTorch's check refuses it for this kernel (measured: torch 2.11 on an H200 refused all 25
    # GQA cells of the flex preset, 2026-11-29); k and v expanded by the caller would be another variant
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
    availability=partial(_needs_cuda, backend="efficient"),
    description="F.scaled_dot_product_attention, memory-efficient backend (CUDA; fp32 too)",
    shape_check=partial(_shape_reason, backend=SDPBackend.EFFICIENT_ATTENTION),
)(partial(_sdpa, backend=SDPBackend.EFFICIENT_ATTENTION))

register(
    "sdpa_flash",
    saved_nxn=0,
    saved_row_bytes=lse_row_bytes,
    backward_fp32_q_buffers=2,  # measured: 2.01 fp32 q-sized buffers at the backward peak (H200, bf16, 40 cells)
    saves_output=True,
    gqa=True,  # enable_gqa; causal is its only mask
    # measured (H200, bf16, flex preset): GQA adds two q-sized buffers at the backward peak, dK and dV per query head
    gqa_backward_expands=True,
    max_head_dim=256,
    availability=partial(_half_only_on_cuda, backend="flash"),
    description="F.scaled_dot_product_attention, FlashAttention-2 backend (CUDA fp16/bf16; CPU any float)",
    shape_check=partial(_shape_reason, backend=SDPBackend.FLASH_ATTENTION),
)(partial(_sdpa, backend=SDPBackend.FLASH_ATTENTION))

register(
    "sdpa_cudnn",
    saved_nxn=0,
    saved_row_bytes=lse_row_bytes,
    backward_fp32_q_buffers=1,  # measured: 1.02 fp32 q-sized buffers at the backward peak (H200, bf16, 20 cells)
    saves_output=True,
    gqa=True,  # enable_gqa; causal is its only mask
    # measured (H200, bf16, flex preset): GQA adds two q-sized buffers at the backward peak, dK and dV per query head
    gqa_backward_expands=True,
    availability=partial(_cuda_half_only, backend="cuDNN"),
    description="F.scaled_dot_product_attention, cuDNN backend (CUDA fp16/bf16)",
    shape_check=partial(_shape_reason, backend=SDPBackend.CUDNN_ATTENTION),
)(partial(_sdpa, backend=SDPBackend.CUDNN_ATTENTION))
