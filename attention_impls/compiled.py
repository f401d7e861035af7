"""``torch_softmax`` under ``torch.compile``: what Inductor fuses, and what it keeps for backward.

The same Python function as the ``torch_softmax`` variant, compiled with ``dynamic=False``: every cell
(shape, dtype, causal, mask) gets its own graph, compiled on its first call, which the benchmark makes
outside the timed rounds. Dynamo's recompile limit (8 graphs per function by default, after which it
silently runs eagerly) is raised for these calls so that a whole grid stays compiled.
"""

from __future__ import annotations

import functools

import torch

from .masks import MASK_KINDS
from .registry import lse_row_bytes, register
from .torch_softmax import torch_softmax_attention

#: graphs dynamo may keep per compiled function: enough for every cell of the largest preset.
RECOMPILE_LIMIT = 1024


@functools.cache
def compiled(fn):
    """``torch.compile(fn, dynamic=False)``, built once per function (on first use, not at import)."""
    return torch.compile(fn, dynamic=False)


def without_recompile_limit():
    """A context in which dynamo keeps compiling new shapes instead of falling back to eager."""
    return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, accumulated_recompile_limit=RECOMPILE_LIMIT)


def compiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                       mask=None) -> torch.Tensor:
    """torch_softmax attention compiled by Inductor (one graph per shape, dtype, causal and mask)."""
    with without_recompile_limit():
        return compiled(torch_softmax_attention)(q, k, v, causal=causal, mask=mask)


register(
    "compiled",
    # measured by the census on CPU (torch 2.13, Inductor): unmasked, the min-cut partitioner keeps no
    # n×n tensor (it saves q, k, v, the output and a per-row statistic, and recomputes the scores in
    # backward); masked, it keeps the softmax output and the bool mask. GPU may decide otherwise.
    saved_nxn=0,
    saved_nxn_causal=1,
    saves_output=True,
    saved_row_bytes=lse_row_bytes,  # unmasked: one row statistic, fp32 (fp64 for fp64 inputs)
    saves_causal_mask=True,
    masks=MASK_KINDS,
    gqa=True,
    expands_kv=True,
    compiles_on=frozenset({"cpu", "cuda"}),
    description="torch_softmax under torch.compile (Inductor, dynamic=False; one graph per cell)",
)(compiled_attention)


