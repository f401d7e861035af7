"""Accuracy of one cell at its real shape: the output and dq, dk, dv against a float64 reference.

The reference is :func:`attention_impls.reference.blocked_reference` (the tiled algorithm in float64: no
n×n tensor, so it fits wherever the cell does). The yardstick is the plain computation in the cell's own
precision, where its n×n tensors fit in memory: for a variant that keeps an n×n tensor, autograd's
(:func:`attention_impls.reference.plain_attention`); for one that keeps only O and the log-sum-exp, the
backward such a variant can do, done plainly (:func:`attention_impls.reference.plain_yardstick`).

The bound, per tensor (flash-attention's test rule, plus a floor):

    max |got - ref|  <=  MULTIPLE[tensor] × max |plain - ref|  +  floor[tensor]

    floor[tensor] = max(OWN_ULPS[dtype] × eps(dtype) × max |ref[tensor]|,
                        FLOOR_ULPS × eps(accumulation dtype) × scale)

The first term scales with the tensor itself: in fp16 and bf16 one ulp of its largest value, no less than the
rounding of an exactly right result to the dtype (half an ulp), and far below what a kernel that is a few
percent off gets wrong. The second keeps an exactly-right plain result (dk = 0 with a single key) from failing
every right answer: ``scale`` is the problem's magnitude (the largest |value| among the inputs, grad_out, the
reference output and gradients, at least 1) in ulps of the precision the arithmetic runs in (fp32 for fp16 and
bf16 inputs: every kernel and the plain computation accumulate there). In fp32 and fp64 the second term is the
larger, so their floors are what they were; in half precision a floor in ulps of the problem's scale would be
hundreds of times the error of a right kernel (docs/accuracy.md has the numbers). Where the plain computation
does not fit, the bound is the floor alone and the record says so (``plain_fits`` false). NaN or Inf anywhere in
a result is wrong whatever the bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attention_impls.reference import blocked_reference, plain_attention

TENSORS = ("out", "dq", "dk", "dv")
#: how many times the plain computation's error a variant may have (flash-attention's rule is 2×; the
#: gradients get 3×: they chain two more matmuls, and the plain backward itself rounds differently).
MULTIPLE = {"out": 2.0, "dq": 3.0, "dk": 3.0, "dv": 3.0}
#: the floor's problem-scale term, in ulps of the accumulation dtype times the problem's scale.
FLOOR_ULPS = 16
#: the floor's own-magnitude term, in ulps of the dtype times the tensor's largest reference value (half
#: precision only: in fp32 and fp64 the problem-scale term is the larger anyway).
OWN_ULPS = {torch.float16: 1, torch.bfloat16: 1}
#: the dtype the arithmetic of a variant on ``dtype`` inputs runs in, where it differs from ``dtype``
ACCUMULATION_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def floor_of(dtype: torch.dtype, ref_max_abs: float, scale: float) -> float:
    """One tensor's floor (module docstring): ``ref_max_abs`` its reference's largest magnitude, ``scale`` the
    problem's."""
    own = OWN_ULPS.get(dtype, 0) * torch.finfo(dtype).eps * ref_max_abs
    return max(own, FLOOR_ULPS * torch.finfo(ACCUMULATION_DTYPE.get(dtype, dtype)).eps * scale)


@dataclass(frozen=True)
class TensorError:
    """One result tensor against the float64 reference."""

    max_abs_error: float | None  # None when the result holds NaN or Inf
    rel_rms_error: float | None
    plain_max_abs_error: float | None  # None when the plain computation did not fit
    bound: float
    nan_count: int = 0
    inf_count: int = 0
    ref_max_abs: float | None = None  # the reference tensor's largest magnitude (None in runs saved before it)
    floor: float | None = None  # this tensor's floor (None in runs saved before floors were per tensor)

    @property
    def within_bound(self) -> bool:
        return self.max_abs_error is not None and self.max_abs_error <= self.bound


@dataclass(frozen=True)
class Accuracy:
    """A cell's errors: one TensorError per result tensor."""

    tensors: dict[str, TensorError]
    plain_fits: bool
    floor: float  # the largest of the tensors' floors (the one floor of runs saved before they were per tensor)

    def floor_of(self, name: str) -> float:
        """``name``'s floor: its own, or the cell's in a run saved before floors were per tensor."""
        t = self.tensors[name]
        return self.floor if t.floor is None else t.floor

    def ratio_to_plain(self, name: str) -> float | None:
        """``name``'s max error over the plain computation's; None without a plain result, with a plain result
        that is exact, or with a non-finite result."""
        t = self.tensors[name]
        if t.max_abs_error is None or not t.plain_max_abs_error:
            return None
        return t.max_abs_error / t.plain_max_abs_error

    def fraction_of_bound(self, name: str) -> float:
        """``name``'s max error over its bound: above 1 is wrong (inf for a non-finite result)."""
        t = self.tensors[name]
        return math.inf if t.max_abs_error is None else t.max_abs_error / t.bound

    @property
    def wrong(self) -> list[str]:
        """The tensors past their bound (or not finite)."""
        return [name for name, t in self.tensors.items() if not t.within_bound]

    def describe_wrong(self) -> str:
        parts = []
        for name in self.wrong:
            t = self.tensors[name]
            if t.max_abs_error is None:
                parts.append(f"{name}: {t.nan_count} NaN, {t.inf_count} Inf")
            else:
                parts.append(f"{name}: max error {t.max_abs_error:.3g} > bound {t.bound:.3g}")
        suffix = "" if self.plain_fits else " (plain computation did not fit: floor-only bound)"
        return "wrong: " + "; ".join(parts) + suffix


def _errors(got: torch.Tensor, want: torch.Tensor) -> tuple[float | None, float | None, int, int]:
    nan_count = int(torch.isnan(got).sum().item())
    inf_count = int(torch.isinf(got).sum().item())
    if nan_count or inf_count:
        return None, None, nan_count, inf_count
    diff = got.double() - want
    max_abs = diff.abs().max().item()
    ref_rms = want.pow(2).mean().sqrt().item()
    rms = diff.pow(2).mean().sqrt().item()
    return max_abs, (rms / ref_rms if ref_rms > 0 else rms), 0, 0


def _forward_backward(fn: Callable, q, k, v, grad_out) -> tuple[torch.Tensor, ...]:
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return (out.detach(), *grads)


def measure(attention: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_out: torch.Tensor, *,
            causal: bool, plain_fits: bool, yardstick: Callable = plain_attention, mask=None) -> Accuracy:
    """Errors of ``attention(q, k, v)`` and its gradients for ``grad_out`` (see the module docstring);
    ``yardstick`` is the plain computation to judge by (``attention_impls.reference.plain_yardstick``); ``mask``
    the cell's mask spec, AND-ed with ``causal`` in the reference and the yardstick as in the variant."""
    got = _forward_backward(attention, q, k, v, grad_out)
    ref = _forward_backward(lambda *a: blocked_reference(*a, causal=causal, mask=mask), q, k, v, grad_out.double())
    ref = tuple(t.double() for t in ref)
    plain = (_forward_backward(lambda *a: yardstick(*a, causal=causal, mask=mask), q, k, v, grad_out)
             if plain_fits else (None,) * len(TENSORS))
    scale = max([1.0] + [t.detach().abs().max().item() for t in (q, k, v, grad_out, *ref)])
    tensors = {}
    for name, g, r, p in zip(TENSORS, got, ref, plain, strict=True):
        max_abs, rel_rms, nan_count, inf_count = _errors(g, r)
        plain_err = None if p is None else (p.double() - r).abs().max().item()
        if plain_err is not None and not math.isfinite(plain_err):
            plain_err = None
        ref_max = r.abs().max().item()
        floor = floor_of(q.dtype, ref_max, scale)
        bound = MULTIPLE[name] * (plain_err or 0.0) + floor
        tensors[name] = TensorError(max_abs, rel_rms, plain_err, bound, nan_count, inf_count, ref_max, floor)
    return Accuracy(tensors, plain_fits and all(t.plain_max_abs_error is not None for t in tensors.values()),
                    max(t.floor for t in tensors.values()))
