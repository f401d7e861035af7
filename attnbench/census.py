"""What autograd keeps for backward, measured with saved-tensor hooks.

This is the exact, device-independent form of the seed's memory accounting: run one forward
under ``torch.autograd.graph.saved_tensors_hooks`` and list every tensor packed for backward,
de-duplicated by storage (a tensor saved by two nodes, or a view of a saved tensor, counts once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass


@dataclass(frozen=True)
class SavedTensor:
    """One storage kept for backward."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    bytes: int
    is_nxn: bool


@dataclass(frozen=True)
class Census:
    """Every storage a forward pass left for backward, and how many are n×n."""

    tensors: tuple[SavedTensor, ...]
    nxn_elements: int

    @property
    def saved_bytes(self) -> int:
        return sum(t.bytes for t in self.tensors)

    @property
    def nxn_count(self) -> int:
        return sum(t.is_nxn for t in self.tensors)

    @property
    def nxn_bytes(self) -> int:
        return sum(t.bytes for t in self.tensors if t.is_nxn)

    def describe(self) -> str:
        """One line per saved tensor, for assertion messages and logs."""
        lines = [
            f"{'n×n' if t.is_nxn else '   '} {str(t.dtype).removeprefix('torch.'):>8} {t.shape} {t.bytes} B"
            for t in self.tensors
        ]
        return "\n".join(lines) or "(nothing saved)"


def take_census(
    forward: Callable[[], torch.Tensor], *, nxn_elements: int
) -> tuple[Census, torch.Tensor]:
    """Run ``forward()`` and list what autograd saved; a tensor with >= ``nxn_elements`` elements is n×n.

    Returns the census and the forward's output (whose graph still holds the saved tensors).
    """
    if nxn_elements < 1:
        raise ValueError(f"nxn_elements must be positive, got {nxn_elements}")
    seen: dict[tuple[str, int], SavedTensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        # Return a detached alias: packing the tensor object itself would make a saved *output*
        # reference its own grad_fn (output -> grad_fn -> packed output), a cycle through C++ that
        # Python's gc cannot see, and every graph built under the census would leak.
        for plain in _plain_tensors(tensor):
            storage = plain.untyped_storage()
            key = (str(plain.device), storage.data_ptr())
            if key not in seen:
                nbytes = storage.nbytes()
                seen[key] = SavedTensor(
                    shape=tuple(plain.shape),
                    dtype=plain.dtype,
                    bytes=nbytes,
                    is_nxn=nbytes // plain.element_size() >= nxn_elements,
                )
        return tensor.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = forward()
    return Census(tensors=tuple(seen.values()), nxn_elements=nxn_elements), out


def _plain_tensors(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """The tensors that hold ``tensor``'s memory: itself, or for a wrapper subclass such as DTensor (what
    ``context_parallel`` saves) the tensors it wraps, this process's shard. A wrapper has no storage of its
    own: asking for its data pointer raises."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        for name in names:  # the inner tensors, and in newer PyTorch opaque members such as a DeviceMesh
            inner = getattr(tensor, name)
            if isinstance(inner, torch.Tensor):
                yield from _plain_tensors(inner)
    else:
        yield tensor


def census_of_attention(
    fn: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
    mask=None,
) -> Census:
    """Census of ``fn(q, k, v, causal=causal[, mask=mask])``; n×n means batch·heads·seq_q·seq_k elements or more
    (heads: q's, also under GQA). ``mask`` is passed only when given, as ``Variant.fn`` passes it to impls."""
    batch, heads, seq_q, _ = q.shape
    kwargs = {"causal": causal} if mask is None else {"causal": causal, "mask": mask}
    census, _ = take_census(lambda: fn(q, k, v, **kwargs), nxn_elements=batch * heads * seq_q * k.shape[2])
    return census
