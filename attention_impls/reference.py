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
