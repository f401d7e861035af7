"""The oracle every variant is judged against: attention computed in float64."""

from __future__ import annotations

import torch

from .registry import causal_mask, softmax_scale, validate_inputs


def reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 attention on the inputs' device.

    q (batch, heads, seq_q, head_dim), k and v (batch, heads, seq_k, head_dim).
    Returns ``(out, lse)``: out (batch, heads, seq_q, head_dim) and the natural-log
    log-sum-exp of the scaled, masked scores, lse (batch, heads, seq_q), both float64.
    Differentiable: gradients flow back to q, k and v in their own dtype.
    """
    validate_inputs(q, k, v, causal=causal)
    q64, k64, v64 = q.double(), k.double(), v.double()
    scores = (q64 @ k64.transpose(-2, -1)) * softmax_scale(q.shape[-1])
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - lse.unsqueeze(-1)) @ v64
    return out, lse


def blocked_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """Float64 attention without any (seq_q, seq_k) tensor: the ``tiled`` algorithm run in float64.

    For judging a variant at shapes where :func:`reference`'s n×n scores would not fit. Returns out
    (batch, heads, seq_q, head_dim) in float64; differentiable, its backward blocked too.
    """
    from .tiled import tiled_attention

    validate_inputs(q, k, v, causal=causal)
    return tiled_attention(q.double(), k.double(), v.double(), causal=causal)


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
    """The plain computation in the inputs' own precision (scores, softmax, weights @ V; the softmax
    itself in at least fp32): the yardstick of flash-attention's tolerance rule."""
    validate_inputs(q, k, v, causal=causal)
    scores = (q @ k.transpose(-2, -1)) * softmax_scale(q.shape[-1])
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    weights = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1).to(q.dtype)
    return weights @ v
