"""``attnbench variants``: the registry as a markdown table, with what each keeps measured by the census."""

from __future__ import annotations

import argparse
import sys

import torch

from attention_impls import VARIANTS, Variant

from .census import census_of_attention
from .grid import DTYPE_NAMES
from .render import table

#: the small shape the census is taken on (n×n counts do not depend on size).
CENSUS_SHAPE = dict(batch=2, heads=2, seq_len=64, head_dim=32)


#: what ``Variant.unavailable_reason`` says when only this machine or process is in the way: no GPU here,
#: or (triton_flash) the CPU interpreter switched on for this process.
_NOT_HERE_REASONS = ("no CUDA device is available", "torch sees none", "unset TRITON_INTERPRET to run on the GPU")


def _where(variant: Variant) -> str:
    places = []
    for device in ("cpu", "cuda"):
        dtypes = [DTYPE_NAMES[d] for d in variant.dtypes if cannot_run_reason(variant, device, d) is None]
        if dtypes:
            note = " (interpreter)" if device == "cpu" and variant.cpu_interpreted else ""
            places.append(f"{device.upper()}{note}: {', '.join(dtypes)}")
    return "; ".join(places)


def cannot_run_reason(variant: Variant, device: str, dtype: torch.dtype, head_dim: int | None = None) -> str | None:
    """None when the variant can run on ``device`` in ``dtype`` (and ``head_dim``) in principle; else why not.

    "In principle": whether this machine has that device, or whether this process turned the Triton
    interpreter on, does not count; what the variant itself supports (dtypes, head_dim, backend) does.
    """
    reason = variant.unavailable_reason(device, dtype)
    if reason is not None and any(text in reason for text in _NOT_HERE_REASONS):
        reason = None
    if reason is None and head_dim is not None:
        reason = variant.check_head_dim(head_dim)
    return reason


def _measured(variant: Variant, causal: bool) -> str:
    if variant.unavailable_reason("cpu", torch.float32) is not None:
        return f"{variant.nxn_saved(causal)} (declared; measured on GPU)"
    s = CENSUS_SHAPE
    q, k, v = (torch.randn(s["batch"], s["heads"], s["seq_len"], s["head_dim"], requires_grad=True) for _ in range(3))
    return str(census_of_attention(variant.fn, q, k, v, causal=causal).nxn_count)


def _masks(variant: Variant) -> str:
    kinds = ["causal", *sorted(variant.masks)]
    return ", ".join(kinds)


def render() -> str:
    """The registry as a markdown table, one row per variant in registry order."""
    rows = [[f"`{name}`", _measured(variant, False), _measured(variant, True), _masks(variant),
             "yes" if variant.gqa else "no", _where(variant), variant.description]
            for name, variant in VARIANTS.items()]
    return table(["variant", "n×n tensors kept for backward (census)", "causal", "masks", "GQA", "runs on",
                  "what it is"], rows) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(render())
    return 0
