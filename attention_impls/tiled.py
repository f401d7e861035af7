"""FlashAttention's algorithm in plain PyTorch: stream key/value blocks, keep O and the log-sum-exp.

No custom kernel: each step is a few PyTorch ops on a (batch, heads, seq_q, block) slab, so the
peak memory is O(seq · block) instead of O(seq²). Backward recomputes the probabilities of each
block from the saved log-sum-exp. Accumulation is in fp32 for fp16/bf16 inputs.
"""

from __future__ import annotations

import torch

from . import masks
from .registry import lse_row_bytes, register, softmax_scale

#: keys per block; 256 keeps each slab small while amortising the per-block launch cost.
DEFAULT_BLOCK_SIZE = 256


def _accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _Masking:
    """What each query row of a (batch, heads_kv, group · seq_q) slab sees: causal, a mask, or nothing.

    With GQA the query heads that share one k/v head are stacked along the rows (row r is position
    r % seq_q), so one matmul serves the whole group and the k/v gradients sum over it.
    """

    def __init__(self, seq_q: int, seq_k: int, group: int, causal: bool, mask, device):
        self.causal, self.mask, self.seq_k = causal, mask, seq_k
        self.positions = torch.arange(seq_q, device=device).repeat(group).unsqueeze(-1)
        self.doc_ids = mask.ids(device) if isinstance(mask, masks.Document) else None
        self.stop = min(seq_k, seq_q) if causal else seq_k  # keys at or past this are masked for every query

    def block(self, start: int, stop: int) -> torch.Tensor | None:
        """Bool (rows, stop - start) of what is visible in keys [start, stop); None when all is."""
        if not self.causal and self.mask is None:
            return None
        cols = torch.arange(start, stop, device=self.positions.device)
        return masks.visible(self.mask, self.causal, self.positions, cols, self.doc_ids)

    def blocks(self, block_size: int):
        """(start, stop, visible) of every key block that some query sees; fully masked blocks are skipped."""
        for start in range(0, self.stop, block_size):
            stop = min(start + block_size, self.seq_k)
            visible = self.block(start, stop)
            if visible is not None and not bool(visible.any()):
                continue
            yield start, stop, visible


def _block_scores(q: torch.Tensor, k_block: torch.Tensor, scale: float, visible: torch.Tensor | None) -> torch.Tensor:
    """Scaled scores of every query row against one key block, -inf where masked."""
    scores = (q @ k_block.transpose(-2, -1)) * scale
    return scores if visible is None else scores.masked_fill(~visible, float("-inf"))


def _grouped(t: torch.Tensor, heads_kv: int) -> torch.Tensor:
    """(batch, heads, seq, d) -> (batch, heads_kv, group · seq, d): each k/v head's query heads stacked."""
    batch, heads, seq, last = t.shape
    return t.reshape(batch, heads_kv, heads // heads_kv * seq, last)


class _TiledAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, mask, block_size: int):
        acc_dtype = _accum_dtype(q.dtype)
        batch, heads, seq_q, head_dim = q.shape
        heads_kv = k.shape[1]
        masking = _Masking(seq_q, k.shape[2], heads // heads_kv, causal, mask, q.device)
        qa = _grouped(q, heads_kv).to(acc_dtype)
        scale = softmax_scale(head_dim)
        rows = qa.shape[2]
        row_max = torch.full((batch, heads_kv, rows, 1), float("-inf"), dtype=acc_dtype, device=q.device)
        row_sum = torch.zeros((batch, heads_kv, rows, 1), dtype=acc_dtype, device=q.device)
        acc = torch.zeros((batch, heads_kv, rows, head_dim), dtype=acc_dtype, device=q.device)
        for start, stop, visible in masking.blocks(block_size):
            k_block = k[:, :, start:stop].to(acc_dtype)
            v_block = v[:, :, start:stop].to(acc_dtype)
            scores = _block_scores(qa, k_block, scale, visible)
            # -- update the running max and rescale what was accumulated under the old one
            new_max = torch.maximum(row_max, scores.amax(dim=-1, keepdim=True))
            # a row that has seen no key yet (a mask hides this whole block from it) keeps max -inf:
            # subtract 0 instead, so exp(-inf - 0) = 0 rather than exp(-inf + inf) = NaN
            shift = new_max.masked_fill(new_max == float("-inf"), 0.0)
            correction = torch.exp(row_max - shift)  # exp(-inf) = 0 on a row's first visible block
            probs = torch.exp(scores - shift)
            row_sum = row_sum * correction + probs.sum(dim=-1, keepdim=True)
            acc = acc * correction + probs @ v_block
            row_max = new_max
        out = (acc / row_sum).reshape(q.shape).to(q.dtype)
        lse = (row_max + torch.log(row_sum)).reshape(batch, heads, seq_q)  # fp32, or fp64 for fp64 inputs
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.mask, ctx.block_size = causal, mask, block_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        acc_dtype = _accum_dtype(q.dtype)
        heads_kv = k.shape[1]
        scale = softmax_scale(q.shape[-1])
        masking = _Masking(q.shape[2], k.shape[2], q.shape[1] // heads_kv, ctx.causal, ctx.mask, q.device)
        qa = _grouped(q, heads_kv).to(acc_dtype)
        grad_out_a = _grouped(grad_out, heads_kv).to(acc_dtype)
        lse_a = _grouped(lse.unsqueeze(-1), heads_kv).to(acc_dtype)
        # D_i = rowsum(dO_i * O_i) = rowsum(dP_i * P_i): the softmax-backward correction per row
        delta = (grad_out_a * _grouped(out, heads_kv).to(acc_dtype)).sum(dim=-1, keepdim=True)
        grad_q = torch.zeros_like(qa)
        grad_k = torch.zeros(k.shape, dtype=acc_dtype, device=k.device)
        grad_v = torch.zeros(v.shape, dtype=acc_dtype, device=v.device)
        for start, stop, visible in masking.blocks(ctx.block_size):
            k_block = k[:, :, start:stop].to(acc_dtype)
            v_block = v[:, :, start:stop].to(acc_dtype)
            # -- recompute this block's probabilities from the log-sum-exp
            probs = torch.exp(_block_scores(qa, k_block, scale, visible) - lse_a)
            grad_v[:, :, start:stop] = probs.transpose(-2, -1) @ grad_out_a
            grad_scores = probs * (grad_out_a @ v_block.transpose(-2, -1) - delta)
            grad_q += (grad_scores @ k_block) * scale
            grad_k[:, :, start:stop] = (grad_scores.transpose(-2, -1) @ qa) * scale
        grad_q = grad_q.reshape(q.shape)
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None, None, None


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    mask: masks.MaskSpec | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> torch.Tensor:
    """Blockwise attention with an online softmax; O(seq · block_size) memory. Key blocks that the mask
    hides from every query are skipped; GQA groups the query heads that share a k/v head into one slab."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    return _TiledAttention.apply(q, k, v, causal, mask, block_size)


register(
    "tiled",
    saved_nxn=0,
    saved_row_bytes=lse_row_bytes,
    # scores, probs, dP and dS slabs of DEFAULT_BLOCK_SIZE keys per query row, in fp32
    backward_row_floats=4 * DEFAULT_BLOCK_SIZE,
    saves_output=True,
    masks=masks.MASK_KINDS,
    gqa=True,
    description="pure-PyTorch blockwise attention with online softmax; saves O and the log-sum-exp",
)(tiled_attention)
