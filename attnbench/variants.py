"""``attnbench variants``: the registry as a markdown table, with what each keeps measured by the census."""

from __future__ import annotations

import argparse
import sys

import torch

from attention_impls import VARIANTS, Variant

from .census import census_of_attention

#: the small shape the census is taken on (n×n counts do not depend on size).
CENSUS_SHAPE = dict(batch=2, heads=2, seq_len=64, head_dim=32)


def _where(variant: Variant) -> str:
    places = []
    for device in ("cpu", "cuda"):
        dtypes = [str(d).removeprefix("torch.").replace("float", "fp").replace("bfp16", "bf16")
                  for d in variant.dtypes if _runs_in_principle(variant, device, d)]
        if dtypes:
            note = " (interpreter)" if device == "cpu" and variant.cpu_interpreted else ""
            places.append(f"{device.upper()}{note}: {', '.join(dtypes)}")
    return "; ".join(places)


def _runs_in_principle(variant: Variant, device: str, dtype: torch.dtype) -> bool:
    """Whether the variant can run there, ignoring whether this machine has that device."""
    reason = variant.unavailable_reason(device, dtype)
    if reason is None:
        return True
    # missing hardware, or (triton_flash) the CPU interpreter switched on for this process
    return any(text in reason for text in ("no CUDA device is available", "torch sees none",
                                           "unset TRITON_INTERPRET to run on the GPU"))


def _measured(variant: Variant, causal: bool) -> str:
    if variant.unavailable_reason("cpu", torch.float32) is not None:
        return f"{variant.nxn_saved(causal)} (declared; measured on GPU)"
    s = CENSUS_SHAPE
    q, k, v = (torch.randn(s["batch"], s["heads"], s["seq_len"], s["head_dim"], requires_grad=True) for _ in range(3))
    return str(census_of_attention(variant.fn, q, k, v, causal=causal).nxn_count)


def render() -> str:
    lines = ["| variant | n×n tensors kept for backward (census) | causal | runs on | what it is |",
             "|---|---|---|---|---|"]
    for name, variant in VARIANTS.items():
        lines.append(f"| `{name}` | {_measured(variant, False)} | {_measured(variant, True)} | {_where(variant)} | "
                     f"{variant.description} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(render())
    return 0
