"""Which tile each triton_flash kernel's autotuner chose for a shape, and what every candidate measured.

    PYTHONPATH=. python scripts/triton_tiles.py --dtype fp32 --head-dims 64,128 --seq-lens 4096,16384

For each shape (batch, heads 1 by default: the seed's grid) it runs one forward and backward, which
autotunes every kernel for that key, then prints each kernel's candidates, fastest first, from the
autotuner's own measurements. Use it to see whether a candidate list is the limit (the winner is at
an edge of the list) or the kernel is (every candidate is close). Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse

import torch

from attention_impls import triton_flash as tf
from attnbench.grid import parse_dtypes, parse_positive_int, parse_positive_ints

KERNELS = (("fwd", "_attn_fwd_tuned"), ("dkdv", "_attn_bwd_dkdv_tuned"), ("dq", "_attn_bwd_dq_tuned"))


def candidates(kernel_name: str, attr: str) -> list[tuple[float, tuple]]:
    """(ms, tile) of the last key the kernel tuned, fastest first; [] when it took the only candidate."""
    timings = getattr(getattr(tf, attr), "configs_timings", None) or {}
    rows = []
    for config, ms in timings.items():
        ms = ms[0] if isinstance(ms, (list, tuple)) else ms
        rows.append((float(ms), tf._tile_of(kernel_name, config)))
    return sorted(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", type=parse_dtypes, default=("fp32",), metavar="DTYPE",
                        help="fp16, bf16 or fp32 (default: fp32)")
    parser.add_argument("--head-dims", type=parse_positive_ints, default=(64, 128), metavar="LIST")
    parser.add_argument("--seq-lens", type=parse_positive_ints, default=(4096, 16384), metavar="LIST")
    parser.add_argument("--batch", type=parse_positive_int, default=8)
    parser.add_argument("--heads", type=parse_positive_int, default=1)
    parser.add_argument("--causal", action="store_true")
    args = parser.parse_args(argv)
    if len(args.dtype) != 1 or args.dtype[0] not in ("fp16", "bf16", "fp32"):
        parser.error(f"--dtype takes one of fp16, bf16, fp32, got {','.join(args.dtype)}")
    if not torch.cuda.is_available() or tf._INTERPRET:
        parser.error("needs a CUDA GPU (and TRITON_INTERPRET unset)")
    dtype = getattr(torch, {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[args.dtype[0]])
    print(f"{torch.cuda.get_device_name(0)}, triton_flash {args.dtype[0]} "
          f"(precision {tf._input_precision(dtype)}), batch {args.batch}, heads {args.heads}, causal {args.causal}")
    for head_dim in args.head_dims:
        for seq in args.seq_lens:
            shape = (args.batch, args.heads, seq, head_dim)
            q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
            out = tf.triton_flash_attention(q, k, v, causal=args.causal)
            torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
            torch.cuda.synchronize()
            for kernel_name, attr in KERNELS:
                rows = candidates(kernel_name, attr)
                best = rows[0][0] if rows else float("nan")
                listed = ", ".join(f"{t[0]}x{t[1]}/w{t[2]}/s{t[3]} {ms:.3g}ms ({ms / best:.2f})" for ms, t in rows)
                print(f"d{head_dim} s{seq} {kernel_name:4s}: {listed or 'one candidate, not tuned'}")
            del q, k, v, out
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
