"""Accuracy of one cell at its real shape: the output and dq, dk, dv against a float64 reference.

The reference is :func:`attention_impls.reference.blocked_reference` (the tiled algorithm in float64: no
n×n tensor, so it fits wherever the cell does). The yardstick is the plain computation in the cell's own
precision, where its n×n tensors fit in memory: for a variant that keeps an n×n tensor, autograd's
(:func:`attention_impls.reference.plain_attention`); for one that keeps only O and the log-sum-exp, the
backward such a variant can do, done plainly (:func:`attention_impls.reference.plain_yardstick`).

The bound, per tensor (flash-attention's test rule, plus a floor):

    max |got - ref|  <=  MULTIPLE[tensor] × max |plain - ref|  +  FLOOR_ULPS × eps(dtype) × scale

``scale`` is the problem's magnitude: the largest |value| among the inputs, grad_out, the reference output
and gradients (at least 1). The floor keeps an exactly-right plain result (dk = 0 with a single key) from
making every right answer fail. Where the plain computation does not fit, the bound is the floor alone and
the record says so (``plain_fits`` false). NaN or Inf anywhere in a result is wrong whatever the bound.
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
#: the floor, in units of the dtype's epsilon times the problem's scale.
FLOOR_ULPS = 16


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

    @property
    def within_bound(self) -> bool:
        return self.max_abs_error is not None and self.max_abs_error <= self.bound


@dataclass(frozen=True)
class Accuracy:
    """A cell's errors: one TensorError per result tensor."""

    tensors: dict[str, TensorError]
    plain_fits: bool
    floor: float

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
    floor = FLOOR_ULPS * torch.finfo(q.dtype).eps * scale
    tensors = {}
    for name, g, r, p in zip(TENSORS, got, ref, plain, strict=True):
        max_abs, rel_rms, nan_count, inf_count = _errors(g, r)
        plain_err = None if p is None else (p.double() - r).abs().max().item()
        if plain_err is not None and not math.isfinite(plain_err):
            plain_err = None
        bound = MULTIPLE[name] * (plain_err or 0.0) + floor
        tensors[name] = TensorError(max_abs, rel_rms, plain_err, bound, nan_count, inf_count, r.abs().max().item())
    return Accuracy(tensors, plain_fits and all(t.plain_max_abs_error is not None for t in tensors.values()),
                    floor)
