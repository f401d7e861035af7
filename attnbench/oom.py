"""``attnbench oom``: the seed's OOM analysis for any card, from the memory model.

Answers only for the variants that can run on a CUDA GPU at the head_dim and dtype asked for (the
registry's metadata says which); the others are listed with the reason, and when none can run the
command exits 2.
"""

from __future__ import annotations

import argparse
import sys

import torch

from attention_impls import VARIANTS

from .grid import DTYPES, parse_bytes, parse_dtypes, parse_masks, parse_positive_int, parse_variants, split_mask_label
from .memory_model import predict
from .render import gb, gib, table
from .variants import cannot_run_reason

#: the seed's claim: naive attention at this seq_len does not fit on an 80 GB card.
SEED_CLAIM_SEQ_LEN = 32768
SEED_CLAIM_MEMORY = 80 * 10**9
#: sequence lengths are searched in steps of this many tokens.
SEQ_STEP = 256
MAX_SEARCH_SEQ_LEN = 1 << 24


def largest_fitting_seq_len(variant: str, memory_bytes: int, **shape) -> int:
    """Largest multiple of SEQ_STEP whose predicted peak fits in ``memory_bytes`` (0 when none does)."""

    def fits(seq_len: int) -> bool:
        return predict(variant, seq_len=seq_len, **shape).peak_bytes <= memory_bytes

    if not fits(SEQ_STEP):
        return 0
    lo, hi = 1, 2
    while hi * SEQ_STEP <= MAX_SEARCH_SEQ_LEN and fits(hi * SEQ_STEP):
        lo, hi = hi, hi * 2
    if hi * SEQ_STEP > MAX_SEARCH_SEQ_LEN:
        return lo * SEQ_STEP
    while hi - lo > 1:  # fits(lo) and not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid * SEQ_STEP) else (lo, mid)
    return lo * SEQ_STEP


def _largest_power_of_two_at_most(n: int) -> int:
    return 1 << (n.bit_length() - 1) if n > 0 else 0


def split_runnable(variants, *, head_dim: int, dtype: str, mask=None, heads: int = 1,
                   heads_kv: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The variants that can run on a CUDA GPU at this head_dim and dtype (with this mask kind and heads_kv),
    and why each of the others cannot.

    "Can run" is what the registry says the variant supports, whether or not this machine has a GPU.
    """
    runnable, refused = [], {}
    for name in variants:
        variant = VARIANTS[name]
        reason = (cannot_run_reason(variant, "cuda", DTYPES[dtype], head_dim)
                  or variant.support_reason(mask, heads=heads, heads_kv=heads_kv))
        if reason is None:
            runnable.append(name)
        else:
            refused[name] = reason
    return runnable, refused


def analyse(memory_bytes: int, *, batch: int, heads: int, head_dim: int, dtype: str, variants,
            refused: dict[str, str] | None = None, heads_kv: int | None = None, mask_label: str = "none") -> str:
    """The markdown answer: a row per variant in ``variants``, then those ``refused`` with their reasons.

    ``mask_label`` (``masks.parse_mask``'s form) adds the bool mask the n×n variants keep; the memory a
    mask saves a kernel that skips masked blocks is time, not memory, so it does not change the rest.
    """
    masked = mask_label != "none"
    shape = dict(batch=batch, heads=heads, head_dim=head_dim, dtype=DTYPES[dtype], heads_kv=heads_kv,
                 causal=masked, mask=None)
    rows = []
    for name in variants:
        largest = largest_fitting_seq_len(name, memory_bytes, **shape)
        pow2 = _largest_power_of_two_at_most(largest)
        at_next = predict(name, seq_len=max(pow2, 1) * 2, **shape)
        largest_text = f"≥ {largest}" if largest >= MAX_SEARCH_SEQ_LEN else str(largest)
        limited_by = "backward" if at_next.peak_backward_bytes > at_next.before_backward_bytes else "forward"
        rows.append([name, largest_text, pow2, gib(at_next.peak_bytes), limited_by])
    kv = f", heads_kv {heads_kv}" if heads_kv not in (None, heads) else ""
    mask_text = f", mask {mask_label}" if masked else ""
    lines = [
        f"# Largest seq_len that fits in {gib(memory_bytes)} GiB "
        f"(batch {batch}, heads {heads}{kv}, head_dim {head_dim}, {dtype}{mask_text}; memory model)",
        "",
        table(["variant", f"largest seq_len (step {SEQ_STEP})", "largest power of two", "GiB needed at twice that",
               "limited by"], rows),
        "",
    ]
    if refused:
        lines += [f"Not in the table: they cannot run on a CUDA GPU at head_dim {head_dim}, {dtype}:", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in refused.items()]
        lines += [""]
    naive = predict("naive", seq_len=SEED_CLAIM_SEQ_LEN, **{**shape, "heads_kv": None, "causal": False})
    fits_before = naive.before_backward_bytes <= SEED_CLAIM_MEMORY
    fits_peak = naive.peak_bytes <= SEED_CLAIM_MEMORY
    lines += [
        f"Seed's claim: naive attention at seq_len {SEED_CLAIM_SEQ_LEN} does not fit on an 80 GB card "
        f"(it estimated ~100 GB). Model: {gb(naive.before_backward_bytes)} GB before backward "
        f"({'fits' if fits_before else 'does not fit'}), {gb(naive.peak_bytes)} GB at the backward peak "
        f"({'fits' if fits_peak else 'does not fit'}): the claim "
        f"{'holds' if not fits_peak else 'does not hold'} at these settings.",
        "",
    ]
    return "\n".join(lines)


def _parse_one_mask(text: str) -> str:
    labels = parse_masks(text)
    if len(labels) != 1:
        raise argparse.ArgumentTypeError(f"--mask takes one mask label, got {text!r}")
    return labels[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--memory", type=parse_bytes, metavar="SIZE",
                        help="device memory to fit in, e.g. 80GiB or 80GB (default: free memory of the current GPU)")
    parser.add_argument("--batch", type=parse_positive_int, default=8, help="batch size (default: 8)")
    parser.add_argument("--heads", type=parse_positive_int, default=1, help="heads (default: 1)")
    parser.add_argument("--heads-kv", type=parse_positive_int, metavar="N",
                        help="k/v heads, dividing --heads: grouped-query attention (default: --heads)")
    parser.add_argument("--mask", type=_parse_one_mask, default="none", metavar="LABEL",
                        help="a mask label as for --attn-masks, e.g. 'causal sliding_window:1024': leaves out the "
                             "variants that cannot apply it (default: none)")
    parser.add_argument("--head-dim", type=parse_positive_int, default=16, help="head_dim (default: 16)")
    parser.add_argument("--dtype", type=parse_dtypes, default=("fp32",),
                        help="fp16, bf16, fp32 or fp64 (default: fp32)")
    parser.add_argument("--variants", type=parse_variants, default=tuple(VARIANTS), metavar="NAMES",
                        help="comma-separated variants or all (default: all); those that cannot run on a CUDA GPU "
                             "at --head-dim and --dtype are listed below the table with the reason")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if len(args.dtype) != 1:
        print("attnbench oom: --dtype takes one dtype", file=sys.stderr)
        return 2
    dtype = args.dtype[0]
    if args.heads_kv is not None and args.heads % args.heads_kv:
        print(f"attnbench oom: --heads-kv {args.heads_kv} does not divide --heads {args.heads}", file=sys.stderr)
        return 2
    kind = split_mask_label(args.mask)[1].partition(":")[0]
    runnable, refused = split_runnable(args.variants, head_dim=args.head_dim, dtype=dtype,
                                       mask=None if kind == "none" else kind, heads=args.heads,
                                       heads_kv=args.heads_kv)
    if not runnable:
        print(f"attnbench oom: none of the requested variants can run on a CUDA GPU at head_dim {args.head_dim}, "
              f"{dtype}:", file=sys.stderr)
        for name, reason in refused.items():
            print(f"  {name}: {reason}", file=sys.stderr)
        return 2
    memory = args.memory
    if memory is None:
        if not torch.cuda.is_available():
            print("attnbench oom: no CUDA GPU here; pass --memory (e.g. --memory 80GiB)", file=sys.stderr)
            return 2
        memory = torch.cuda.mem_get_info()[0]
    sys.stdout.write(analyse(memory, batch=args.batch, heads=args.heads, head_dim=args.head_dim, dtype=dtype,
                             variants=runnable, refused=refused, heads_kv=args.heads_kv, mask_label=args.mask))
    return 0
