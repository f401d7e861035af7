"""The oracle every variant is judged against: attention computed in float64."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from .registry import Variant, expand_kv, softmax_scale, validate_inputs, visible_mask


def reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False, mask=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 attention on the inputs' device.

    q (batch, heads, seq_q, head_dim), k and v (batch, heads_kv, seq_k, head_dim) with heads % heads_kv == 0
    (query head h reads k/v head h // (heads // heads_kv)); ``mask`` a spec of ``attention_impls.masks``,
    AND-ed with ``causal``.
    Returns ``(out, lse)``: out (batch, heads, seq_q, head_dim) and the natural-log
    log-sum-exp of the scaled, masked scores, lse (batch, heads, seq_q), both float64.
    Differentiable: gradients flow back to q, k and v in their own dtype.
    """
    validate_inputs(q, k, v, causal=causal, mask=mask)
    q64 = q.double()
    k64, v64 = expand_kv(k.double(), q.shape[1]), expand_kv(v.double(), q.shape[1])
    scores = _masked_scores(q64, k64, causal, mask)
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - lse.unsqueeze(-1)) @ v64
    return out, lse


def blocked_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                      mask=None) -> torch.Tensor:
    """Float64 attention without any (seq_q, seq_k) tensor: the ``tiled`` algorithm run in float64.

    For judging a variant at shapes where :func:`reference`'s n×n scores would not fit. Returns out
    (batch, heads, seq_q, head_dim) in float64; differentiable, its backward blocked too.
    """
    from .tiled import tiled_attention

    validate_inputs(q, k, v, causal=causal, mask=mask)
    return tiled_attention(q.double(), k.double(), v.double(), causal=causal, mask=mask)


def _masked_scores(q: torch.Tensor, k: torch.Tensor, causal: bool, mask=None) -> torch.Tensor:
    """Scaled scores of q against k (k already expanded to q's heads), -inf where causal or the mask hides."""
    scores = (q @ k.transpose(-2, -1)) * softmax_scale(q.shape[-1])
    visible = visible_mask(q, k, causal, mask)
    return scores if visible is None else scores.masked_fill(~visible, float("-inf"))


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    mask=None) -> torch.Tensor:
    """The plain computation in the inputs' own precision (scores, softmax in fp32, weights @ V; autograd's
    backward): the yardstick of flash-attention's tolerance rule for variants that keep the weights.
    GQA by expanding k and v (autograd sums their gradients over each group)."""
    validate_inputs(q, k, v, causal=causal, mask=mask)
    k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
    return torch.softmax(_masked_scores(q, k, causal, mask).float(), dim=-1).to(q.dtype) @ v


def _accumulated(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the precision a fused kernel accumulates its products in: fp32 for fp16/bf16, else its own."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@contextlib.contextmanager
def fp32_reductions():
    """fp16 and bf16 matmuls that reduce in fp32 throughout, inside the block.

    torch lets cuBLAS reduce the split-K partial sums of fp16 and bf16 GEMMs in half precision
    (``torch.backends.cuda.matmul.allow_{fp16,bf16}_reduced_precision_reduction``, True by default). A fused
    attention kernel accumulates P·V and its gradients in fp32 registers; the plain computation it is judged
    against must too, or its own error is that of the half-precision reduction (several times a fused kernel's
    at long sequences; docs/accuracy.md has the numbers)."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_fp16_reduced_precision_reduction = matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction = saved


class _PlainFromOutputAndLse(torch.autograd.Function):
    """The plain forward; the backward that a variant keeping only O and the log-sum-exp can do, done plainly."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, mask):
        with fp32_reductions():  # as a fused kernel accumulates
            scores = _masked_scores(_accumulated(q), _accumulated(k), causal, mask)  # S never rounded to q's dtype
            lse = torch.logsumexp(scores, dim=-1, keepdim=True)
            out = torch.softmax(scores, dim=-1).to(q.dtype) @ v  # P rounded to v's dtype for P·V, as a kernel does
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.mask = causal, mask
        return out

    @staticmethod
    def backward(ctx, grad_out):
        with fp32_reductions():
            return _PlainFromOutputAndLse._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        probs = torch.exp(_masked_scores(_accumulated(q), _accumulated(k), ctx.causal, ctx.mask) - lse)  # from the LSE
        grad_probs = _accumulated(grad_out) @ _accumulated(v).transpose(-2, -1)  # dP in the accumulator too
        delta = (grad_out.to(lse.dtype) * out.to(lse.dtype)).sum(dim=-1, keepdim=True)  # D from the kept O
        grad_scores = (probs * (grad_probs - delta)).to(q.dtype) * softmax_scale(q.shape[-1])
        grad_v = probs.to(v.dtype).transpose(-2, -1) @ grad_out
        return grad_scores @ k, grad_scores.transpose(-2, -1) @ q, grad_v, None, None


def plain_attention_from_output_and_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                                        causal: bool = False, mask=None) -> torch.Tensor:
    """The plain computation, with the backward of a variant that keeps no n×n tensor: P recomputed from
    the log-sum-exp (kept in fp32), D = rowsum(dO * O) from the output in its own dtype.

    Autograd's softmax backward reuses its own P and takes D = rowsum(P * dP) from that same P and dP, so
    its round-off cancels in rows whose softmax is nearly one-hot. No backward that keeps only O and the
    LSE (FlashAttention's) gets that cancellation: judged against autograd's, a right FlashAttention
    backward can be tens of times its error where the logits are peaky (docs/triton_flash.md, "Backward
    accuracy", has the numbers).
    """
    validate_inputs(q, k, v, causal=causal, mask=mask)
    k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])  # outside the Function: autograd sums the groups
    return _PlainFromOutputAndLse.apply(q, k, v, causal, mask)


def plain_yardstick(variant: Variant, causal: bool = False, mask=None) -> Callable[..., torch.Tensor]:
    """The plain computation ``variant`` is judged against: the backward it can do, done plainly."""
    return plain_attention_from_output_and_lse if variant.nxn_saved(causal, mask) == 0 else plain_attention
