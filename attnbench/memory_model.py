"""Predicted device memory of one attention call: the seed's accounting table, generalised.

For a variant, before backward (inputs and output live, graph built) the allocator holds

    inputs   (H + 2·Hkv) · B·S·D · e  q, and k, v with Hkv heads (Hkv = H without GQA)
    output   B·H·S·D · e
    saved    saved_nxn · B·H·S·S · e  (+ the bool mask, S·S bytes, where one is saved: causal or a mask;
                                       + S·S · e for a mask spec handed to SDPA as an explicit mask, which
                                       PyTorch converts to an additive one: ``saves_mask_in_input_dtype``)
             + 2 · B·H·S·D · e        (GQA, variants that expand k and v to every query head: ``expands_kv``)
             + saved_row_bytes(e) · B·H·S       (log-sum-exp and the like)
    live     live_q_buffers · B·H·S·D · e     (buffers the forward keeps alive unsaved)

and at the backward peak additionally

    grad_out + dq, dk, dv     (2·H + 2·Hkv) · B·S·D · e
                              (+ 2 · B·H·Sk·D · e where, under GQA, the backward computes dK and dV for every
                              query head before summing each group: ``gqa_backward_expands``)
    transient                 backward_nxn · B·H·S·S · e  +  backward_row_floats · B·H·S · 4
                              + backward_fp32_q_buffers · B·H·S · max(D, 64) · 4
                              + backward_half_q_buffers · B·H·S·D · e   (fp16 and bf16 inputs only)

where e is the element size. A variant that computes in a wider dtype than its inputs (``compute_dtype``:
the math SDPA backend runs fp16 and bf16 in fp32) keeps copies of q, k and v and everything it saves in that
dtype: it is predicted as the wider computation (all it saves and holds counted as extra), plus its inputs
and output in their own dtype. The per-variant numbers come from the registry
(``saved_nxn`` is what the census measures; ``backward_nxn``, ``live_q_buffers`` and
``backward_fp32_q_buffers`` what an H200 run measured: docs/results).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attention_impls import get_variant
from attention_impls.registry import Variant


@dataclass(frozen=True)
class MemoryPrediction:
    """Predicted bytes; ``saved_bytes`` is what the census should count (inputs it keeps included)."""

    inputs_bytes: int
    output_bytes: int
    saved_extra_bytes: int
    before_backward_bytes: int
    peak_backward_bytes: int
    saved_bytes: int

    @property
    def peak_bytes(self) -> int:
        """The most the call holds at once: the larger of the two moments."""
        return max(self.before_backward_bytes, self.peak_backward_bytes)


def _as_variant(variant: str | Variant) -> Variant:
    return variant if isinstance(variant, Variant) else get_variant(variant)


def predict(
    variant: str | Variant,
    *,
    batch: int,
    heads: int,
    seq_len: int,
    head_dim: int,
    dtype: torch.dtype,
    causal: bool = False,
    seq_k: int | None = None,
    heads_kv: int | None = None,
    mask=None,
) -> MemoryPrediction:
    """Predicted bytes before backward and at the backward peak (see the module docstring)."""
    var = _as_variant(variant)
    sizes = (("batch", batch), ("heads", heads), ("seq_len", seq_len), ("head_dim", head_dim))
    optional = (("seq_k", seq_k), ("heads_kv", heads_kv))
    for name, value in sizes + tuple((n, v) for n, v in optional if v is not None):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    seq_k = seq_len if seq_k is None else seq_k
    heads_kv = heads if heads_kv is None else heads_kv
    if heads % heads_kv:
        raise ValueError(f"heads_kv ({heads_kv}) must divide heads ({heads})")
    compute = var.compute_dtype(dtype)
    if compute != dtype:
        return _upcast(predict(var, batch=batch, heads=heads, seq_len=seq_len, head_dim=head_dim, dtype=compute,
                                    causal=causal, seq_k=seq_k, heads_kv=heads_kv, mask=mask),
                       torch.empty((), dtype=dtype).element_size(), torch.empty((), dtype=compute).element_size())
    masked = causal or mask is not None
    elem = torch.empty((), dtype=dtype).element_size()
    rows = batch * heads * seq_len
    q_bytes = rows * head_dim * elem
    kv_bytes = 2 * batch * heads_kv * seq_k * head_dim * elem
    nxn_bytes = rows * seq_k * elem
    mask_bytes = seq_len * seq_k if masked and var.saves_causal_mask else 0
    if mask is not None and var.saves_mask_in_input_dtype:
        mask_bytes += seq_len * seq_k * elem
    expanded_kv = 2 * batch * heads * seq_k * head_dim * elem if heads_kv != heads and var.expands_kv else 0
    saved_extra = (var.nxn_saved(causal, mask) * nxn_bytes + mask_bytes + var.saved_row_bytes(elem) * rows
                   + expanded_kv)
    inputs, output = q_bytes + kv_bytes, q_bytes
    before = inputs + output + saved_extra + var.live_q_buffers * q_bytes
    v_bytes = kv_bytes // 2
    # an n×n backward peaks in its softmax step, when only grad_out and dv exist besides the n×n buffers;
    # a blocked backward peaks at its end, with every gradient and its working buffers live
    softmax_step = q_bytes + v_bytes + int(var.backward_nxn * nxn_bytes)
    end_step = (q_bytes + q_bytes + kv_bytes + var.backward_row_floats * rows * 4
                + var.backward_fp32_q_buffers * rows * max(head_dim, 64) * 4)
    if elem == 2:
        end_step += var.backward_half_q_buffers * q_bytes
    if heads_kv != heads and var.gqa_backward_expands:
        end_step += 2 * batch * heads * seq_k * head_dim * elem  # dK and dV per query head, before each group's sum
    peak = before + max(softmax_step, end_step)
    # a variant that expands k and v keeps the expanded copies for backward, not the k and v it was given
    saved_inputs = q_bytes + (0 if expanded_kv else kv_bytes)
    saved = saved_inputs + (output if var.saves_output else 0) + saved_extra
    return MemoryPrediction(
        inputs_bytes=inputs,
        output_bytes=output,
        saved_extra_bytes=saved_extra,
        before_backward_bytes=before,
        peak_backward_bytes=peak,
        saved_bytes=saved,
    )


def _upcast(wide: MemoryPrediction, elem: int, wide_elem: int) -> MemoryPrediction:
    """A call computed in a wider dtype: what ``wide`` (the prediction in that dtype) saves, all of it copies,
    besides the inputs and output in their own element size ``elem``. The q-sized buffers the wide computation
    leaves alive (``live_q_buffers``: its scaled q and k) are, in an upcast call, the copies it saves: not
    counted twice (an H200, bf16 sdpa_math: exact before backward, within 4% at the peak)."""
    inputs = wide.inputs_bytes * elem // wide_elem
    output = wide.output_bytes * elem // wide_elem
    before = inputs + output + wide.saved_bytes
    return MemoryPrediction(
        inputs_bytes=inputs,
        output_bytes=output,
        saved_extra_bytes=wide.saved_bytes,
        before_backward_bytes=before,
        peak_backward_bytes=before + wide.peak_backward_bytes - wide.before_backward_bytes,
        saved_bytes=wide.saved_bytes,
    )
