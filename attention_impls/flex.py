"""FlexAttention: ``torch.nn.attention.flex_attention`` with a block mask built once per cell.

On CUDA the call is ``torch.compile(flex_attention, dynamic=False)``: Inductor generates a fused kernel that
skips the key blocks the block mask marks empty. The block mask (``create_block_mask`` of a ``mask_mod`` made
from the spec, causal AND-ed) is built by :func:`prepare`, which the benchmark runs and times once per cell
outside the timed calls; later calls find it in a small cache keyed by everything it depends on: (mask, causal, seq_q, seq_k,
device); it broadcasts over batch and heads (``create_block_mask(..., B=None, H=None)``).

On CPU, torch 2.13's ``flex_attention`` refuses inputs that require grad ("FlexAttention does not support
backward on CPU"), so this variant runs FlexAttention's own eager path there: the same higher-order op with
the same ``mask_mod`` and block mask, computed densely (its backward too). CPU results check the masks and
GQA; CPU times are not those of a fused kernel.
"""

from __future__ import annotations

import functools

import torch

from . import masks
from .compiled import compiled, without_recompile_limit
from .registry import FLOAT_DTYPES, lse_row_bytes, register, softmax_scale

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention, noop_mask
except ImportError as exc:  # the variant stays registered and says what is missing
    _FLEX_MISSING: str | None = f"flex needs torch.nn.attention.flex_attention (torch >= 2.5): {exc}"
else:
    _FLEX_MISSING = None

#: block masks kept at once: one per cell being measured is enough; a few more for tests.
BLOCK_MASK_CACHE_SIZE = 8


def mask_mod(mask: masks.MaskSpec | None, causal: bool, device: torch.device | str):
    """FlexAttention's ``mask_mod(b, h, q_idx, kv_idx)`` for a spec, causal AND-ed (``masks.visible``)."""
    if mask is None and not causal:
        return noop_mask
    doc_ids = mask.ids(device) if isinstance(mask, masks.Document) else None

    def visible(b, h, q_idx, kv_idx):
        return masks.visible(mask, causal, q_idx, kv_idx, doc_ids)

    return visible


#: Inductor's FlexAttention lowering on CUDA: ``tl.dot`` needs every dimension >= 16.
MIN_CUDA_HEAD_DIM = 16


@functools.lru_cache(maxsize=BLOCK_MASK_CACHE_SIZE)
def _block_mask(mask: masks.MaskSpec | None, causal: bool, seq_q: int, seq_k: int, device: str):
    """The block mask of (mask, causal) for seq_q queries and seq_k keys; batch and heads broadcast."""
    return create_block_mask(mask_mod(mask, causal, device), None, None, seq_q, seq_k, device=device)


def prepare(seq_len: int, causal: bool, mask: masks.MaskSpec | None, device: torch.device | str):
    """Build the cell's block mask and keep it for the cell's calls; the benchmark times this once, apart
    from the calls (the cache is emptied first, so the time is a build, never a cache hit)."""
    _block_mask.cache_clear()
    return block_mask_for(seq_len, seq_len, causal, mask, device)


def block_mask_for(seq_q: int, seq_k: int, causal: bool, mask: masks.MaskSpec | None, device: torch.device | str):
    """The block mask a call with these lengths uses (cached), or None where flex_attention needs none."""
    device = str(torch.device(device))
    if device == "cpu" or causal or mask is not None:
        return _block_mask(mask, causal, seq_q, seq_k, device)
    return None  # unmasked on CUDA: flex_attention's own empty block mask, nothing to build


def _eager_flex(q, k, v, block_mask):
    """FlexAttention's eager path (dense math, autograd through the higher-order op); CPU only."""
    from torch._higher_order_ops.flex_attention import flex_attention as flex_attention_op
    from torch.nn.attention.flex_attention import _apply_kernel_options

    def score_mod(score, b, h, q_idx, kv_idx):
        return score

    options = _apply_kernel_options(q, k, v, False, None, None)
    out, _lse, _max = flex_attention_op(q, k, v, score_mod, block_mask.as_tuple(), softmax_scale(q.shape[-1]),
                                        options)
    return out


def flex_attention_variant(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                           mask=None) -> torch.Tensor:
    """FlexAttention with the spec's block mask (causal AND-ed) and enable_gqa."""
    block_mask = block_mask_for(q.shape[2], k.shape[2], causal, mask, q.device)
    if q.device.type == "cpu":
        return _eager_flex(q, k, v, block_mask)
    with without_recompile_limit():
        return compiled(flex_attention)(q, k, v, block_mask=block_mask, scale=softmax_scale(q.shape[-1]),
                                        enable_gqa=k.shape[1] != q.shape[1])


def _unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if _FLEX_MISSING is not None:
        return _FLEX_MISSING
    if device.type == "cuda":
        if dtype == torch.float64:
            return "flex's generated Triton kernels run fp16, bf16 and fp32, not float64"
        if not torch.cuda.is_available():
            return "flex on CUDA needs a CUDA GPU, and torch sees none"
        return None
    if device.type != "cpu":
        return f"flex runs on CUDA (compiled) or CPU (eager), not {device.type}"
    try:
        from torch._higher_order_ops.flex_attention import flex_attention as _  # noqa: F401
        from torch.nn.attention.flex_attention import _apply_kernel_options as _  # noqa: F401, F811
    except ImportError as exc:
        return f"flex on CPU runs FlexAttention's eager path, which this torch does not expose: {exc}"
    return None


def _shape_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, mask=None) -> str | None:
    """The compiled kernel's limits (CUDA only: the CPU eager path takes every shape)."""
    if q.device.type == "cuda" and q.shape[-1] < MIN_CUDA_HEAD_DIM:
        return (f"flex on CUDA needs head_dim >= {MIN_CUDA_HEAD_DIM} (Inductor's FlexAttention kernel), "
                f"got {q.shape[-1]}")
    return None


register(
    "flex",
    saved_nxn=0,
    saved_row_bytes=lse_row_bytes,
    saves_output=True,
    masks=masks.MASK_KINDS,
    gqa=True,
    dtypes=FLOAT_DTYPES,
    availability=_unavailable_reason,
    prepare=prepare,
    shape_check=_shape_reason,
    compiles_on=frozenset({"cuda"}),  # CPU runs the eager path
    description="FlexAttention (torch.compile on CUDA; eager on CPU), block mask built once per cell, enable_gqa",
)(flex_attention_variant)
