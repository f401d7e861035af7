"""Attention masks as specs: what a query may see, said once and used by every variant.

A spec is a small frozen dataclass; variants that support it turn it into what their kernel needs
(a boolean (seq, seq) mask, a block mask, per-position document ids, a window). ``causal=True`` keeps
its meaning (query ``i`` sees keys ``j <= i``) and is AND-ed with the spec.

    sliding_window(window)  query i sees key j when |i - j| < window; with causal=True the causal sliding
                            window of Mistral-style models (j in (i - window, i])
    document(lengths)       packed sequences: i sees j when both lie in the same document (``lengths`` sum
                            to the sequence length); with causal=True, causal within each document
    prefix_lm(prefix)       j is visible when j < prefix or j <= i: a bidirectional prefix, causal after it;
                            use it with causal=False

Masks need ``seq_q == seq_k``. Every query row sees at least its own key, so no row is fully masked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

MASK_KINDS = ("sliding_window", "document", "prefix_lm")


@dataclass(frozen=True)
class SlidingWindow:
    """Query i sees key j when |i - j| < window."""

    window: int
    kind = "sliding_window"

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"sliding_window needs an integer window >= 1, got {self.window!r}")

    def label(self) -> str:
        return f"sliding_window:{self.window}"


@dataclass(frozen=True)
class Document:
    """Packed sequences of these lengths; i sees j when both lie in the same document."""

    lengths: tuple[int, ...]
    kind = "document"

    def __post_init__(self) -> None:
        lengths = tuple(self.lengths)
        if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
            raise ValueError(f"document needs one or more integer lengths >= 1, got {self.lengths!r}")
        object.__setattr__(self, "lengths", lengths)

    @property
    def total(self) -> int:
        return sum(self.lengths)

    def label(self) -> str:
        return f"document:{len(self.lengths)}"

    def ids(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The document index of every position, int32 (seq,)."""
        counts = torch.tensor(self.lengths, dtype=torch.int64)
        return torch.repeat_interleave(torch.arange(len(self.lengths), dtype=torch.int32), counts).to(device)


@dataclass(frozen=True)
class PrefixLM:
    """Key j is visible when j < prefix or j <= i."""

    prefix: int
    kind = "prefix_lm"

    def __post_init__(self) -> None:
        if isinstance(self.prefix, bool) or not isinstance(self.prefix, int) or self.prefix < 0:
            raise ValueError(f"prefix_lm needs an integer prefix >= 0, got {self.prefix!r}")

    def label(self) -> str:
        return f"prefix_lm:{self.prefix}"


MaskSpec = SlidingWindow | Document | PrefixLM
MASK_TYPES = (SlidingWindow, Document, PrefixLM)


def sliding_window(window: int) -> SlidingWindow:
    """Query i sees key j when |i - j| < window (window >= 1)."""
    return SlidingWindow(window)


def document(lengths) -> Document:
    """Packed documents of these lengths (each >= 1; they must sum to the sequence length)."""
    try:
        return Document(tuple(lengths))
    except TypeError:
        raise ValueError(f"document needs a sequence of integer lengths, got {lengths!r}") from None


def prefix_lm(prefix: int) -> PrefixLM:
    """A bidirectional prefix of ``prefix`` keys, causal after it (0 <= prefix <= seq_len)."""
    return PrefixLM(prefix)


def validate_mask(mask: object, seq_q: int, seq_k: int, *, causal: bool = False) -> None:
    """ValueError/TypeError saying what is wrong with ``mask`` for these lengths; None is always valid."""
    if mask is None:
        return
    if not isinstance(mask, MASK_TYPES):
        raise TypeError(f"mask must be None or a spec from attention_impls.masks "
                        f"({', '.join(MASK_KINDS)}), got {type(mask).__name__}")
    if seq_q != seq_k:
        raise ValueError(f"masks need seq_q == seq_k, got seq_q={seq_q}, seq_k={seq_k}")
    if isinstance(mask, Document) and mask.total != seq_k:
        raise ValueError(f"document lengths sum to {mask.total}, not the sequence length {seq_k}")
    if isinstance(mask, PrefixLM) and mask.prefix > seq_k:
        raise ValueError(f"prefix_lm prefix must lie in [0, {seq_k}], got {mask.prefix}")


def mask_kind(mask: MaskSpec | None) -> str | None:
    """The spec's kind (one of MASK_KINDS), or None for no mask."""
    return None if mask is None else mask.kind


def visible(mask: MaskSpec | None, causal: bool, i: torch.Tensor, j: torch.Tensor,
            doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """True where query position ``i`` may see key position ``j`` (broadcasting integer tensors).

    The one predicate behind :func:`dense_mask`, the blockwise masks of ``tiled`` and flex's ``mask_mod``.
    ``doc_ids`` (:meth:`Document.ids`, on the indices' device) is needed for a document mask.
    """
    ok = j <= i if causal else torch.ones_like(i == j)
    if isinstance(mask, SlidingWindow):
        ok = ok & ((i - j).abs() < mask.window)
    elif isinstance(mask, Document):
        if doc_ids is None:
            raise ValueError("a document mask needs doc_ids (Document.ids) to say which positions share a document")
        ok = ok & (doc_ids[i] == doc_ids[j])
    elif isinstance(mask, PrefixLM):
        ok = ok & ((j < mask.prefix) | (j <= i))
    return ok


def dense_mask(mask: MaskSpec | None, seq_q: int, seq_k: int, *, causal: bool = False,
               device: torch.device | str | None = None) -> torch.Tensor | None:
    """The boolean (seq_q, seq_k) mask, True where query i may see key j; None when nothing is masked."""
    validate_mask(mask, seq_q, seq_k, causal=causal)
    if mask is None and not causal:
        return None
    i = torch.arange(seq_q, device=device).unsqueeze(1)
    j = torch.arange(seq_k, device=device).unsqueeze(0)
    doc_ids = mask.ids(device) if isinstance(mask, Document) else None
    return visible(mask, causal, i, j, doc_ids).expand(seq_q, seq_k).contiguous()


def visible_pairs(mask: MaskSpec | None, seq_q: int, seq_k: int, *, causal: bool = False) -> int:
    """How many (i, j) pairs the mask lets through: the work a kernel that skips masked pairs does."""
    validate_mask(mask, seq_q, seq_k, causal=causal)
    if mask is None:
        if not causal:
            return seq_q * seq_k
        # top-left aligned: row i sees min(i + 1, seq_k) keys
        full_rows = max(0, seq_q - seq_k)
        rows = seq_q - full_rows
        return rows * (rows + 1) // 2 + full_rows * seq_k
    n = seq_q
    if isinstance(mask, SlidingWindow):
        w = min(mask.window, n)
        # pairs with 0 <= i - j < w (the causal half, diagonal included)
        below = w * n - w * (w - 1) // 2
        return below if causal else 2 * below - n
    if isinstance(mask, Document):
        return sum(length * (length + 1) // 2 if causal else length * length for length in mask.lengths)
    # PrefixLM: row i sees max(prefix, i + 1) keys; with causal, only i + 1
    if causal:
        return n * (n + 1) // 2
    p = mask.prefix
    return p * p + (n * (n + 1) // 2 - p * (p + 1) // 2)


def parse_mask(text: str, seq_len: int | None = None, *, seed: int = 0) -> tuple[bool, MaskSpec | None]:
    """A grid's mask label -> (causal, spec).

    ``none``, ``causal``, ``sliding_window:W``, ``document:D`` (D documents whose lengths are drawn from a
    fixed seed, so every run and every variant sees the same documents; needs ``seq_len``),
    ``prefix_lm:F`` (F a fraction of seq_len written with a '.', such as 0.25, or an integer prefix), each
    optionally preceded by
    ``causal `` (``causal sliding_window:1024``). ValueError naming the forms otherwise.
    """
    forms = "none, causal, sliding_window:W, document:D, prefix_lm:F, optionally prefixed with 'causal '"
    words = str(text).strip().split()
    causal = bool(words) and words[0] == "causal"
    rest = words[1:] if causal else words
    if not words or len(rest) > 1:
        raise ValueError(f"unknown mask {text!r}; expected {forms}")
    if not rest:
        return True, None
    name, _, arg = rest[0].partition(":")
    if name == "none" and not arg and not causal:
        return False, None
    try:
        if name == "sliding_window" and arg:
            return causal, sliding_window(int(arg))
        if name == "document" and arg:
            if seq_len is None:
                raise ValueError("document:D needs the sequence length to draw the documents' lengths")
            return causal, document(document_lengths(seq_len, int(arg), seed=seed))
        if name == "prefix_lm" and arg:
            if seq_len is None:
                raise ValueError("prefix_lm:F needs the sequence length")
            if "." in arg:
                fraction = float(arg)
                if not 0 <= fraction <= 1:
                    raise ValueError(f"prefix_lm:F takes a fraction in [0, 1] (with a '.') or an integer prefix, "
                                     f"got {arg}")
                prefix = round(fraction * seq_len)
            else:
                prefix = int(arg)
                if prefix > seq_len:
                    raise ValueError(f"prefix_lm:P needs 0 <= P <= seq_len ({seq_len}), got {prefix}")
            return causal, prefix_lm(prefix)
    except ValueError as exc:
        if "invalid literal" in str(exc) or "could not convert" in str(exc):
            raise ValueError(f"mask {text!r}: {arg!r} is not a number; expected {forms}") from None
        raise
    raise ValueError(f"unknown mask {text!r}; expected {forms}")


def document_lengths(seq_len: int, documents: int, *, seed: int = 0) -> tuple[int, ...]:
    """``documents`` lengths >= 1 summing to ``seq_len``, drawn from ``seed`` (the same on every call)."""
    if documents < 1 or documents > seq_len:
        raise ValueError(f"document:D needs 1 <= D <= seq_len ({seq_len}), got {documents}")
    rng = random.Random(f"{seed}:{seq_len}:{documents}")
    cuts = sorted(rng.sample(range(1, seq_len), documents - 1))
    bounds = [0, *cuts, seq_len]
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))
