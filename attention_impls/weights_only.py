"""A custom autograd function that keeps q, k, v and the attention weights, nothing else."""

from __future__ import annotations

import torch

from .masks import MASK_KINDS
from .registry import expand_kv, register, softmax_scale, visible_mask


class _WeightsOnlyAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        scale = softmax_scale(q.shape[-1])
        scores = (q @ k.transpose(-2, -1)) * scale
        if visible is not None:
            scores.masked_fill_(~visible, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        del scores  # only the weights are needed for backward
        ctx.save_for_backward(q, k, v, weights)
        ctx.scale = scale
        return weights @ v

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, weights = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_v = weights.transpose(-2, -1) @ grad_out
        grad_weights = grad_out @ v.transpose(-2, -1)
        # softmax backward from its output alone: dS = P * (dP - rowsum(dP * P))
        row_dot = (grad_weights * weights).sum(dim=-1, keepdim=True)
        grad_scores = weights * (grad_weights - row_dot)
        del grad_weights
        grad_q = (grad_scores @ k) * ctx.scale
        grad_k = (grad_scores.transpose(-2, -1) @ q) * ctx.scale
        return grad_q, grad_k, grad_v, None


@register(
    "weights_only",
    saved_nxn=1,
    masks=MASK_KINDS,
    gqa=True,
    expands_kv=True,  # k and v enter the autograd.Function expanded to every query head
    backward_nxn=3,  # measured: grad of the weights, dS and one temporary; 3.00 n×n on the GPU
    description="custom autograd.Function saving q, k, v and the weights only; hand-written backward",
)
def weights_only_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, mask=None
) -> torch.Tensor:
    """Attention whose backward needs only the attention weights."""
    # k and v expanded outside the Function: autograd sums their gradients over each group of query heads
    k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
    return _WeightsOnlyAttention.apply(q, k, v, visible_mask(q, k, causal, mask))
