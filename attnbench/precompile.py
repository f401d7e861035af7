"""``attnbench precompile``: compile triton_flash's kernels for a grid before measuring it.

Triton compiles every autotune candidate of a new key on the key's first call, one after another, inside
the measuring process; :func:`attention_impls.triton_flash.precompile` compiles them all in parallel
processes into Triton's on-disk cache, which the suite then reads. Without a CUDA GPU (or under
TRITON_INTERPRET=1) there is nothing to compile: it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys

from .grid import (
    NO_MASK,
    PRESETS,
    parse_causal,
    parse_dtypes,
    parse_positive_int,
    parse_positive_ints,
    parse_preset,
    split_mask_label,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0].split(": ", 1)[1]
    parser.add_argument("--preset", type=parse_preset, default="seed", metavar="NAME",
                        help=f"the grid whose head_dims, dtypes and causal values to compile: {', '.join(PRESETS)} "
                             "(default: seed)")
    parser.add_argument("--head-dims", type=parse_positive_ints, metavar="D,D", help="instead of the preset's")
    parser.add_argument("--dtypes", type=parse_dtypes, metavar="DT,DT", help="instead of the preset's")
    parser.add_argument("--causal", type=parse_causal, metavar="BOOL,BOOL", help="instead of the preset's")
    parser.add_argument("--workers", type=parse_positive_int, metavar="N",
                        help="compiling processes (default: one per CPU core, at most 16)")
    parser.set_defaults(run=run)


def _mask_kinds(preset) -> tuple[str, ...]:
    """The kernels' mask kinds the preset's cells use ("none" for plain and causal cells), among those
    triton_flash runs: its cells of other masks are left out of the grid, so nothing is compiled for them."""
    from attention_impls import get_variant

    supported = get_variant("triton_flash").masks
    kinds = (split_mask_label(label)[1].split(":", 1)[0] for label in preset.mask_labels())
    return tuple(dict.fromkeys(k for k in kinds if k == NO_MASK or k in supported))


def run(args: argparse.Namespace) -> int:
    from attention_impls import triton_flash

    preset = PRESETS[args.preset]
    dtypes = [d for d in (args.dtypes or preset.dtypes) if d in ("fp16", "bf16", "fp32")]
    if not dtypes:
        print(f"attnbench precompile: triton_flash runs fp16, bf16 and fp32, not {', '.join(args.dtypes)}",
              file=sys.stderr)
        return 2
    try:
        result = triton_flash.precompile(args.head_dims or preset.head_dims, dtypes,
                                         causal=args.causal or preset.causal_values(),
                                         masks=_mask_kinds(preset), workers=args.workers)
    except (TypeError, ValueError) as exc:
        print(f"attnbench precompile: {exc}", file=sys.stderr)
        return 2
    if result.skipped:
        print(f"attnbench precompile: {result.skipped}")
        return 0
    print(f"attnbench precompile: {result.compiled} kernel variants in Triton's cache in {result.seconds:.0f} s"
          + (f"; {len(result.failed)} candidates do not compile on this GPU (the autotuner skips them too)"
             if result.failed else ""))
    return 0
