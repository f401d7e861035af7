"""Compile triton_flash's kernels for the shapes a GPU session will run, in parallel processes.

    PYTHONPATH=. python scripts/precompile_triton.py [--workers N]

The autotuner compiles every candidate tile of a new key in the measuring process, one after
another; on a fresh machine that is minutes for the test suite's GPU cases alone. Compiled kernels
land in Triton's disk cache, which the suite and the tests then read. Covers: the seed grid (fp32,
head_dim 16-128, with TF32 off and on), the fa2-paper preset (bf16, head_dim 64 and 128), and the
GPU test cases (fp16, bf16 and fp32; head_dim 16, 32, 59, 64, 128), causal and not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from triton_flash_check import precompile  # noqa: E402

from attention_impls import triton_flash as tf  # noqa: E402

HEAD_DIMS = (16, 32, 59, 64, 128)
#: any bucket from MIN_TUNED_SEQ_BUCKET up: every candidate tile is then compiled
TUNED_SEQ = 2048


def plan() -> list[tuple]:
    cases = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        precisions = ("tf32x3", "tf32") if dtype == torch.float32 else ("tf32",)
        for precision in precisions:
            for head_dim in HEAD_DIMS:
                for causal in (False, True):
                    cases.append((dtype, head_dim, causal, precision, TUNED_SEQ, TUNED_SEQ))
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), metavar="N",
                        help="compiling processes (default: min(16, cpus))")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if not torch.cuda.is_available() or tf._INTERPRET:
        print("precompile_triton: nothing to do without a GPU (or under TRITON_INTERPRET=1)")
        return 0
    start = time.time()
    precompile(plan(), args.workers)
    print(f"precompile_triton: done in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
