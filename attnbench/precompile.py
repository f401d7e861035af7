"""``attnbench precompile``: compile triton_flash's kernels for a grid before measuring it.

Triton compiles every autotune candidate of a new key on the key's first call, one after another, inside
the measuring process; :func:`attention_impls.triton_flash.precompile` compiles them all in parallel
processes into Triton's on-disk cache, which the suite then reads. Without a CUDA GPU (or under
TRITON_INTERPRET=1) there is nothing to compile: it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys

from .grid import PRESETS, parse_causal, parse_dtypes, parse_positive_int, parse_positive_ints, parse_preset


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
                                         causal=args.causal or preset.causal_values(), workers=args.workers)
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
