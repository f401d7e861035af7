"""One registry, one signature, one place where inputs are validated.

Every variant computes scaled dot-product attention with the same contract:

    fn(q, k, v, *, causal=False, mask=None) -> out

    q    (batch, heads, seq_q, head_dim)
    k, v (batch, heads_kv, seq_k, head_dim)   heads % heads_kv == 0
    out  (batch, heads, seq_q, head_dim), in the inputs' dtype

The softmax scale is ``1/sqrt(head_dim)``. ``causal=True`` means what
``F.scaled_dot_product_attention(..., is_causal=True)`` means: query ``i`` sees keys
``j <= i`` (top-left aligned), also when ``seq_q != seq_k``. Every query row sees key 0,
so no row is ever fully masked.

``mask`` is None or a spec from :mod:`attention_impls.masks` (sliding_window, document, prefix_lm),
AND-ed with ``causal``; masks need ``seq_q == seq_k``. With ``heads_kv < heads`` (grouped-query
attention; multi-query at ``heads_kv == 1``) query head ``h`` uses k/v head ``h // (heads // heads_kv)``,
as ``F.scaled_dot_product_attention(..., enable_gqa=True)``; the gradients of k and v sum over the
query heads that share them. A variant declares the mask kinds it supports (``masks``) and whether it
takes ``heads_kv < heads`` (``gqa``); anything else is refused with a ValueError saying so.

Variants register themselves with :func:`register`; :data:`VARIANTS` maps name to
:class:`Variant`. A variant carries metadata (what it keeps for backward, where it runs);
``Variant.fn`` validates the inputs at the boundary, then calls the implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .masks import MASK_KINDS, dense_mask, validate_mask

#: dtypes any variant may be asked to run in; a variant narrows this with ``dtypes``.
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

Impl = Callable[..., torch.Tensor]
Availability = Callable[[torch.device, torch.dtype], "str | None"]
ShapeCheck = Callable[..., "str | None"]
Prepare = Callable[..., object]


def _always_available(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def lse_row_bytes(element_size: int) -> int:
    """Bytes per query row of a log-sum-exp kept in fp32, or in fp64 for fp64 inputs."""
    return max(4, element_size)


def _dtype_names(dtypes: tuple[torch.dtype, ...]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


@dataclass(frozen=True)
class Variant:
    """An attention implementation and what is known about it.

    What autograd keeps (measured by ``attnbench.census``; a test asserts declared == measured):
      ``saved_nxn``         (batch, heads, seq_q, seq_k)-sized tensors kept for backward, non-causal;
      ``saved_nxn_causal``  the same when masked (``causal=True`` or a mask) where it differs;
      ``saves_output``      whether O is among the saved tensors;
      ``saves_causal_mask`` whether a (seq_q, seq_k) bool mask is saved (when masked);
      ``backward_half_q_buffers`` q-sized buffers in the inputs' dtype it holds besides, for fp16/bf16 only;
      ``gqa_backward_expands``    under GQA, whether the backward holds dK and dV for every query head
                                  before summing them over each group;
      ``saves_mask_in_input_dtype`` whether, given a mask spec, a (seq_q, seq_k) mask in the inputs' dtype is
                            saved (an SDPA kernel handed an explicit boolean mask, which PyTorch converts to
                            an additive one first);
      ``saved_row_bytes``   bytes per query row kept besides inputs and output, as a function of the
                            element size (a log-sum-exp: 4, or 8 in fp64).
    What the memory model adds, from GPU measurements (``attnbench.memory_model``):
      ``backward_nxn``            n×n buffers the backward holds at once on top of what was saved;
      ``backward_row_floats``     fp32 values per query row a blocked backward holds (its slabs);
      ``backward_fp32_q_buffers`` fp32 (batch, heads, seq_q, max(head_dim, 64)) buffers it holds;
      ``live_q_buffers``          q-sized buffers the forward leaves alive besides the saved ones.
    Where it runs: ``dtypes``, ``max_head_dim``, ``head_dim_multiple``, ``availability(device,
    dtype)`` (None or why not), ``shape_check(q, k, v, causal)`` (None or why a kernel with shape
    limits of its own refuses these tensors), ``masks`` (the mask kinds of ``attention_impls.masks`` it
    supports, AND-ed with causal; none by default), ``gqa`` (whether k and v may have fewer heads than q;
    False by default), ``prepare(seq_len, causal, mask, device)`` (an optional per-cell setup, such as
    building a block mask, that the benchmark runs and times once, outside the timed calls), ``expands_kv``
    (with GQA, whether autograd keeps k and v expanded to every query head), ``compute_dtype(dtype)`` (the
    dtype it computes and keeps tensors in for inputs of ``dtype``, where it upcasts), ``compiles_on``: the device
    types on which its first call in a cell compiles a graph of its own (``torch.compile``, one per cell; ``attnbench
    precompile`` compiles them ahead of a run), and ``cpu_interpreted``: a GPU kernel that runs on CPU
    only in an interpreter, correct but too slow to time, so the CPU grid leaves it out unless asked.
    """

    name: str
    impl: Impl
    saved_nxn: int
    description: str
    saved_nxn_causal: int | None = None
    backward_nxn: int = 0
    saved_row_bytes: Callable[[int], int] = field(default=lambda element_size: 0, repr=False)
    backward_row_floats: int = 0
    backward_fp32_q_buffers: int = 0
    live_q_buffers: int = 0
    saves_output: bool = False
    saves_causal_mask: bool = False
    saves_mask_in_input_dtype: bool = False
    gqa_backward_expands: bool = False
    backward_half_q_buffers: int = 0
    cpu_interpreted: bool = False
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    max_head_dim: int | None = None
    head_dim_multiple: int = 1
    availability: Availability = field(default=_always_available, repr=False)
    shape_check: ShapeCheck | None = field(default=None, repr=False)
    masks: frozenset[str] = frozenset()
    gqa: bool = False
    expands_kv: bool = False
    prepare: Prepare | None = field(default=None, repr=False)
    compute_dtype: Callable[[torch.dtype], torch.dtype] = field(default=lambda dtype: dtype, repr=False)
    compiles_on: frozenset[str] = frozenset()

    def nxn_saved(self, causal: bool = False, mask: object = None) -> int:
        """n×n tensors kept for backward for this masking mode (a mask counts as masked, like causal)."""
        if (causal or mask is not None) and self.saved_nxn_causal is not None:
            return self.saved_nxn_causal
        return self.saved_nxn

    def support_reason(self, mask: object = None, *, heads: int = 1, heads_kv: int | None = None) -> str | None:
        """None when the variant supports this mask (a spec or a kind name) and heads_kv; else why not."""
        kind = mask if isinstance(mask, str) or mask is None else getattr(mask, "kind", type(mask).__name__)
        if kind is not None and kind not in self.masks:
            supported = ", ".join(sorted(self.masks)) or "none (causal only)"
            return f"{self.name} does not support {kind} masks; its masks: {supported}"
        if heads_kv is not None and heads_kv != heads and not self.gqa:
            return (f"{self.name} does not support grouped-query attention (k/v with {heads_kv} heads for "
                    f"{heads} query heads): it needs heads_kv == heads")
        return None

    def unavailable_reason(self, device: torch.device | str, dtype: torch.dtype) -> str | None:
        """None when the variant can run on ``device`` in ``dtype``; else a sentence saying why not."""
        device = torch.device(device)
        if dtype not in self.dtypes:
            return f"{self.name} supports dtypes {_dtype_names(self.dtypes)}, not {_dtype_names((dtype,))}"
        return self.availability(device, dtype)

    def check_head_dim(self, head_dim: int) -> str | None:
        """None when ``head_dim`` is supported; else a sentence naming what is."""
        if self.max_head_dim is not None and head_dim > self.max_head_dim:
            return f"{self.name} supports head_dim <= {self.max_head_dim}, got {head_dim}"
        if head_dim % self.head_dim_multiple:
            return f"{self.name} needs head_dim to be a multiple of {self.head_dim_multiple}, got {head_dim}"
        return None

    def shape_reason(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     mask: object = None) -> str | None:
        """None when this variant accepts these (already valid) inputs; else a sentence saying why not."""
        reason = self.check_head_dim(q.shape[-1]) or self.support_reason(mask, heads=q.shape[1], heads_kv=k.shape[1])
        if reason is None and self.shape_check is not None:
            reason = self.shape_check(q, k, v, causal) if mask is None else self.shape_check(q, k, v, causal, mask)
        return reason

    def fn(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
           mask: object = None) -> torch.Tensor:
        """Attention of ``q`` over ``k``/``v`` (shapes in the module docstring)."""
        validate_inputs(q, k, v, causal=causal, mask=mask)
        reason = self.unavailable_reason(q.device, q.dtype)
        if reason is not None:
            exc = TypeError if q.dtype not in self.dtypes else ValueError
            raise exc(reason)
        reason = self.shape_reason(q, k, v, causal=causal, mask=mask)
        if reason is not None:
            raise ValueError(reason)
        if mask is None:  # implementations registered before masks take no mask argument
            return self.impl(q, k, v, causal=causal)
        return self.impl(q, k, v, causal=causal, mask=mask)

    __call__ = fn


VARIANTS: dict[str, Variant] = {}


def register(name: str, *, saved_nxn: int, **metadata) -> Callable[[Impl], Impl]:
    """Decorator: register ``impl(q, k, v, *, causal[, mask])`` as variant ``name`` (``mask`` is passed only
    when not None, so an implementation that supports no masks need not take it)."""

    def decorate(impl: Impl) -> Impl:
        if name in VARIANTS:
            raise ValueError(f"variant {name!r} is already registered")
        if "masks" in metadata:
            unknown = set(metadata["masks"]) - set(MASK_KINDS)
            if unknown:
                raise ValueError(f"variant {name!r}: unknown mask kinds {sorted(unknown)}; "
                                 f"known: {', '.join(MASK_KINDS)}")
            metadata["masks"] = frozenset(metadata["masks"])
        description = metadata.pop("description", None) or (impl.__doc__ or "").strip().splitlines()[0]
        VARIANTS[name] = Variant(name=name, impl=impl, saved_nxn=saved_nxn, description=description, **metadata)
        return impl

    return decorate


def get_variant(name: str) -> Variant:
    """The registered variant ``name``; ``ValueError`` naming the registered ones otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown attention variant {name!r}; registered: {', '.join(VARIANTS)}") from None


def validate_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    mask: object = None) -> None:
    """Raise ``TypeError``/``ValueError`` for anything outside the contract in the module docstring."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dimensions (batch, heads, seq, head_dim), got shape {tuple(t.shape)}"
            )
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor ({_dtype_names(FLOAT_DTYPES)}), got {t.dtype}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    batch, heads, seq_q, head_dim = q.shape
    for name, t in (("k", k), ("v", v)):
        if (t.shape[0], t.shape[3]) != (batch, head_dim):
            raise ValueError(
                f"{name} must match q in batch and head_dim: expected ({batch}, heads_kv, seq_k, {head_dim}), "
                f"got {tuple(t.shape)}"
            )
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same heads_kv, got {k.shape[1]} and {v.shape[1]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same seq_k, got {k.shape[2]} and {v.shape[2]}")
    if min(batch, heads, seq_q, k.shape[1], k.shape[2], head_dim) < 1:
        raise ValueError(f"every dimension must be at least 1, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if heads % k.shape[1]:
        raise ValueError(f"q's heads ({heads}) must be a multiple of k's and v's heads_kv ({k.shape[1]}): "
                         "each group of heads // heads_kv query heads shares one k/v head")
    validate_mask(mask, seq_q, k.shape[2], causal=causal)


def expand_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    """k or v (batch, heads_kv, seq, head_dim) repeated to ``heads`` heads: query head h reads kv head
    h // (heads // heads_kv). Differentiable (the gradient sums over each group); no copy when equal."""
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)


def softmax_scale(head_dim: int) -> float:
    """The scale every variant applies to q·k: 1/sqrt(head_dim)."""
    return 1.0 / math.sqrt(head_dim)


def causal_mask(seq_q: int, seq_k: int, device: torch.device) -> torch.Tensor:
    """Boolean (seq_q, seq_k) mask, True where query i may attend key j (j <= i, top-left aligned)."""
    return torch.ones(seq_q, seq_k, dtype=torch.bool, device=device).tril()


def visible_mask(q: torch.Tensor, k: torch.Tensor, causal: bool, mask: object = None) -> torch.Tensor | None:
    """Boolean (seq_q, seq_k) mask of what each query sees (causal AND mask), or None when nothing is masked."""
    return dense_mask(mask, q.shape[2], k.shape[2], causal=causal, device=q.device)
