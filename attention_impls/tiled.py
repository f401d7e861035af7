"""FlashAttention's algorithm in plain PyTorch: stream key/value blocks, keep O and the log-sum-exp.

No custom kernel: each step is a few PyTorch ops on a (batch, heads, seq_q, block) slab, so the
peak memory is O(seq · block) instead of O(seq²). Backward recomputes the probabilities of each
block from the saved log-sum-exp. Accumulation is in fp32 for fp16/bf16 inputs.
"""

from __future__ import annotations

import torch

from .registry import lse_row_bytes, register, softmax_scale

#: keys per block; 256 keeps each slab small while amortising the per-block launch cost.
DEFAULT_BLOCK_SIZE = 256


def _accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _block_scores(q: torch.Tensor, k_block: torch.Tensor, start: int, scale: float, causal: bool) -> torch.Tensor:
    """Scaled scores of every query against keys [start, start + block), causal-masked."""
    scores = (q @ k_block.transpose(-2, -1)) * scale
    if causal:
        rows = torch.arange(q.shape[2], device=q.device).unsqueeze(-1)
        cols = torch.arange(start, start + k_block.shape[2], device=q.device)
        scores = scores.masked_fill(cols > rows, float("-inf"))
    return scores


def _last_block_start(seq_q: int, seq_k: int, causal: bool) -> int:
    """Keys at or past this index are masked for every query (causal); stop streaming there."""
    return min(seq_k, seq_q) if causal else seq_k


class _TiledAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, block_size: int):
        acc_dtype = _accum_dtype(q.dtype)
        qa = q.to(acc_dtype)
        scale = softmax_scale(q.shape[-1])
        batch, heads, seq_q, head_dim = q.shape
        row_max = torch.full((batch, heads, seq_q, 1), float("-inf"), dtype=acc_dtype, device=q.device)
        row_sum = torch.zeros((batch, heads, seq_q, 1), dtype=acc_dtype, device=q.device)
        acc = torch.zeros((batch, heads, seq_q, head_dim), dtype=acc_dtype, device=q.device)
        for start in range(0, _last_block_start(seq_q, k.shape[2], causal), block_size):
            k_block = k[:, :, start : start + block_size].to(acc_dtype)
            v_block = v[:, :, start : start + block_size].to(acc_dtype)
            scores = _block_scores(qa, k_block, start, scale, causal)
            # -- update the running max and rescale what was accumulated under the old one
            new_max = torch.maximum(row_max, scores.amax(dim=-1, keepdim=True))
            correction = torch.exp(row_max - new_max)  # exp(-inf) = 0 on the first block
            probs = torch.exp(scores - new_max)
            row_sum = row_sum * correction + probs.sum(dim=-1, keepdim=True)
            acc = acc * correction + probs @ v_block
            row_max = new_max
        out = (acc / row_sum).to(q.dtype)
        lse = (row_max + torch.log(row_sum)).squeeze(-1)  # fp32, or fp64 for fp64 inputs
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal = causal
        ctx.block_size = block_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        acc_dtype = _accum_dtype(q.dtype)
        scale = softmax_scale(q.shape[-1])
        qa, grad_out_a = q.to(acc_dtype), grad_out.to(acc_dtype)
        lse_a = lse.to(acc_dtype).unsqueeze(-1)
        # D_i = rowsum(dO_i * O_i) = rowsum(dP_i * P_i): the softmax-backward correction per row
        delta = (grad_out_a * out.to(acc_dtype)).sum(dim=-1, keepdim=True)
        grad_q = torch.zeros_like(qa)
        grad_k = torch.zeros(k.shape, dtype=acc_dtype, device=k.device)
        grad_v = torch.zeros(v.shape, dtype=acc_dtype, device=v.device)
        for start in range(0, _last_block_start(q.shape[2], k.shape[2], ctx.causal), ctx.block_size):
            stop = start + ctx.block_size
            k_block = k[:, :, start:stop].to(acc_dtype)
            v_block = v[:, :, start:stop].to(acc_dtype)
            # -- recompute this block's probabilities from the log-sum-exp
            probs = torch.exp(_block_scores(qa, k_block, start, scale, ctx.causal) - lse_a)
            grad_v[:, :, start:stop] = probs.transpose(-2, -1) @ grad_out_a
            grad_scores = probs * (grad_out_a @ v_block.transpose(-2, -1) - delta)
            grad_q += (grad_scores @ k_block) * scale
            grad_k[:, :, start:stop] = (grad_scores.transpose(-2, -1) @ qa) * scale
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None, None


def tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> torch.Tensor:
    """Blockwise attention with an online softmax; O(seq · block_size) memory."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    return _TiledAttention.apply(q, k, v, causal, block_size)


register(
    "tiled",
    saved_nxn=0,
    saved_row_bytes=lse_row_bytes,
    # scores, probs, dP and dS slabs of DEFAULT_BLOCK_SIZE keys per query row, in fp32
    backward_row_floats=4 * DEFAULT_BLOCK_SIZE,
    saves_output=True,
    description="pure-PyTorch blockwise attention with online softmax; saves O and the log-sum-exp",
)(tiled_attention)
