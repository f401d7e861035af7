"""Tolerances in the flash-attention style and random inputs that are never zeros."""

from __future__ import annotations

import math

import torch

from attention_impls import reference
from attention_impls.reference import plain_yardstick
from attention_impls.registry import expand_kv, softmax_scale, visible_mask

#: a variant may be this many times worse than the plain same-precision computation ...
OUT_ERROR_MULTIPLE = 2.0
GRAD_ERROR_MULTIPLE = 3.0
#: ... plus this many ulps of the problem's scale (the largest magnitude among inputs, output and
#: gradients), so an exactly-right plain result (dk = 0 at seq_k = 1, say) cannot fail everything.
FLOOR_ULPS = 16


def problem_scale(*tensors: torch.Tensor) -> float:
    """The largest magnitude among ``tensors`` (at least 1): what the floor of the tolerance scales with."""
    return max([1.0] + [t.detach().abs().max().item() for t in tensors])


def random_qkv(
    batch: int,
    heads: int,
    seq_q: int,
    seq_k: int,
    head_dim: int,
    *,
    dtype: torch.dtype,
    device: str,
    logit_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh standard-normal q, k, v (requires_grad); ``logit_scale`` > 1 makes the softmax peaky."""

    def draw(seq: int, mult: float = 1.0) -> torch.Tensor:
        t = torch.randn(batch, heads, seq, head_dim, generator=generator, dtype=torch.float32) * mult
        return t.to(device=device, dtype=dtype).requires_grad_()

    return draw(seq_q, logit_scale), draw(seq_k), draw(seq_k)


def forward_backward(fn, q, k, v, grad_out, *, causal: bool):
    """Output and (dq, dk, dv) of ``fn`` on fresh leaves copied from q, k, v."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, causal=causal)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), tuple(t.grad for t in leaves)


def check_close(
    name: str,
    got: torch.Tensor,
    want: torch.Tensor,
    plain: torch.Tensor | list[torch.Tensor],
    multiple: float,
    scale: float,
    *,
    bound_factor: float = 1.0,
) -> None:
    """Assert |got - want| <= bound_factor * (multiple * |plain - want| + floor) (max norms), with a message
    that says why; ``plain`` one plain result or several (the largest error counts); ``bound_factor`` > 1 only
    where measured to be needed."""
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    want = want.double()
    err = (got.double() - want).abs().max().item()
    plains = plain if isinstance(plain, (list, tuple)) else [plain]
    plain_err = max((p.double() - want).abs().max().item() for p in plains)
    floor = FLOOR_ULPS * torch.finfo(got.dtype).eps * scale
    bound = bound_factor * (multiple * plain_err + floor)
    factor = f"{bound_factor}x (" if bound_factor != 1.0 else "("
    assert err <= bound, (
        f"{name}: max error {err:.3g} vs float64 reference exceeds {factor}{multiple}x the plain "
        f"same-precision error {plain_err:.3g} + floor {floor:.3g})"
    )


class _PlainBase2(torch.autograd.Function):
    """The plain computation the way flash kernels round it: scores scaled by softmax_scale * log2(e) in fp32,
    exp2 against a base-2 log-sum-exp, P recomputed from it in the backward, D = rowsum(dO * O)."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool):
        scores = _base2_scores(q, k, causal)
        row_max = scores.amax(dim=-1, keepdim=True)
        lse2 = row_max + torch.log2(torch.exp2(scores - row_max).sum(dim=-1, keepdim=True))
        out = torch.exp2(scores - lse2).to(q.dtype) @ v
        ctx.save_for_backward(q, k, v, out, lse2)
        ctx.causal = causal
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse2 = ctx.saved_tensors
        probs = torch.exp2(_base2_scores(q, k, ctx.causal) - lse2)
        grad_probs = (grad_out @ v.transpose(-2, -1)).float()
        delta = (grad_out.float() * out.float()).sum(dim=-1, keepdim=True)
        grad_scores = (probs * (grad_probs - delta)).to(q.dtype) * softmax_scale(q.shape[-1])
        return grad_scores @ k, grad_scores.transpose(-2, -1) @ q, probs.to(v.dtype).transpose(-2, -1) @ grad_out, None


def _base2_scores(q, k, causal: bool) -> torch.Tensor:
    scores = (q @ k.transpose(-2, -1)).float() * (softmax_scale(q.shape[-1]) * math.log2(math.e))
    visible = visible_mask(q, k, causal)
    return scores if visible is None else scores.masked_fill(~visible, float("-inf"))


def plain_base2(q, k, v, *, causal: bool = False) -> torch.Tensor:
    """:class:`_PlainBase2` (GQA by expanding k and v): as plain as the base-e yardstick, rounded elsewhere."""
    k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
    return _PlainBase2.apply(q, k, v, causal)


def plain_yardsticks(variant, causal: bool) -> list:
    """The plain computations a variant is judged against; check_close takes the largest of their errors.

    One plain computation's error is one draw of fp32's round-off: on peaky logits two equally plain
    computations, base e and base 2, differ severalfold (tests/test_correctness.py has a measured draw), so a
    variant that keeps only O and the LSE is judged against both."""
    sticks = [plain_yardstick(variant, causal)]
    if variant.nxn_saved(causal, None) == 0:
        sticks.append(plain_base2)
    return sticks


def reference_forward_backward(q, k, v, grad_out, *, causal: bool):
    """Float64 output, lse and gradients."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out, lse = reference(*leaves, causal=causal)
    out.backward(grad_out.double())
    return out.detach(), lse.detach(), tuple(t.grad for t in leaves)


# -- triton_flash: where its tests can run, and its tolerance (one definition for its test files)


def triton_flash_marks():
    """(needs_interpreter, needs_gpu): skip marks naming why triton_flash cannot run on CPU (in Triton's
    interpreter) or on a CUDA GPU here."""
    import pytest

    from attention_impls import get_variant

    variant = get_variant("triton_flash")
    cpu_reason = variant.unavailable_reason("cpu", torch.float32)
    gpu_reason = ("needs a CUDA GPU" if not torch.cuda.is_available()
                  else variant.unavailable_reason("cuda", torch.float16))
    return (pytest.mark.skipif(cpu_reason is not None, reason=f"CPU run unavailable: {cpu_reason}"),
            pytest.mark.skipif(gpu_reason is not None, reason=f"GPU run unavailable: {gpu_reason}"))


#: triton_flash's tolerance against float64: ERROR_FACTOR x the plain computation's error plus a floor per dtype
ERROR_FLOOR = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}
ERROR_FACTOR = 2.0


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, ||b|| floored at an RMS of 0.1: exactly-zero references (dQ, dK when every query sees
    one key; dK = dV = 0 for a key no query sees) are judged on the scale of the unit-RMS inputs."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(0.1 * math.sqrt(b.numel()))).item()


def output_and_grads(fn, q, k, v, grad_out) -> tuple[torch.Tensor, ...]:
    """(out, dq, dk, dv) of ``fn`` on fresh leaf copies of q, k and v."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


def assert_flash_rule(mine, ref, plain, *, dtype: torch.dtype, device: str, case: str) -> None:
    """triton_flash's tolerance: each of out, dq, dk, dv in ``dtype``, and off the float64 reference by at most
    ERROR_FACTOR x the plain computation's error plus ERROR_FLOOR (TF32 on a GPU, when allowed: 2e-3)."""
    floor = ERROR_FLOOR[dtype]
    if dtype == torch.float32 and device == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        floor = 2e-3
    for name, m, r, p in zip(("out", "dq", "dk", "dv"), mine, ref, plain, strict=True):
        assert m.dtype == dtype and m.shape == r.shape, (
            f"{name}: expected {dtype} {tuple(r.shape)}, got {m.dtype} {tuple(m.shape)} ({case})")
        err, limit = rel_err(m, r), ERROR_FACTOR * rel_err(p, r) + floor
        assert math.isfinite(err) and err <= limit, (
            f"{name} off the float64 reference by {err:.2e} (limit {limit:.2e} = {ERROR_FACTOR:g}x the plain error "
            f"+ {floor:.0e}) for {case}")
