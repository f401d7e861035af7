"""Check triton_flash on a GPU against the float64 reference, then time it against SDPA's backends.

    PYTHONPATH=. python scripts/triton_flash_check.py [--out DIR] [--budget-s SECONDS]

Phase 1 (correctness): forward and the three gradients vs ``attention_impls.reference`` over head
dims, dtypes, causal and odd lengths; the rule is flash-attention's: the error must be no worse than
2x the error of the same computation done plainly in the same precision, plus a small floor.
Phase 2 (timing): ``triton.testing.do_bench`` medians, forward and backward separately, against
``F.scaled_dot_product_attention`` with one backend forced; every timed shape's output and
gradients are also checked against SDPA's. A compact table is printed last; full logs go to --out.
The run stops starting new shapes once --budget-s has passed, so the table always comes out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from attention_impls import reference
from attention_impls import triton_flash as tf

#: do_bench's warm-up and measurement windows (ms); medians are reported
BENCH_WARMUP_MS = 25
BENCH_REP_MS = 100
#: flash-attention's tolerance rule: error <= this x plain same-precision error + floor
ERROR_FACTOR = 2.0
ERROR_FLOOR = {torch.float16: 1e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}
ERROR_FLOOR_TF32 = 2e-3
#: relative difference allowed between triton_flash and SDPA on the timed (large) shapes
SDPA_AGREEMENT = {torch.bfloat16: 3e-2, torch.float32: 1e-4}
#: bf16 timing sweep: batch * seq and heads * head_dim are held fixed
BF16_TOKENS = 16384
BF16_MODEL_DIM = 2048
BF16_SEQS = (1024, 2048, 4096, 8192, 16384)
BF16_HEAD_DIMS = (64, 128)
FP32_BATCH = 8
FP32_SEQS = (4096, 8192, 16384)
FP32_HEAD_DIMS = (16, 32, 64, 128)

LOG = []


def say(*parts) -> None:
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    LOG.append(line)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, with ||b|| floored at an RMS of 0.1 (the inputs have RMS 1): an exactly-zero
    reference (dQ and dK when every query sees a single key) is judged on an absolute scale."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(0.1 * math.sqrt(b.numel()))).item()


def triton_fn(q, k, v, causal):
    return tf.triton_flash_attention(q, k, v, causal=causal)


def sdpa_fn(backend):
    def fn(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return fn


def plain_same_precision(q, k, v, causal):
    """Attention computed plainly (matmul, softmax) in the inputs' own dtype: the error yardstick."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        keep = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def forward_backward(fn, q, k, v, grad_out, causal):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, causal)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return (out, *grads)


# ------------------------------------------------------------------------------------------------
# phase 0: compile every config the autotuner will try, in parallel processes (Triton's disk cache
# then serves the main process); one process compiles one kernel at a time
# ------------------------------------------------------------------------------------------------

_KERNELS = {"fwd": "_attn_fwd", "dkdv": "_attn_bwd_dkdv", "dq": "_attn_bwd_dq"}


def _compile_job(job) -> str:
    kernel, dtype_name, head_dim, causal, precision, seq_bucket, tile = job
    from attention_impls import triton_flash as tfw

    dtype = getattr(torch, dtype_name)
    q, k, v, o = (torch.randn(1, 2, 64, head_dim, device="cuda", dtype=dtype) for _ in range(4))
    lse = torch.empty(1, 2, 64, device="cuda")
    m_name, n_name = tfw._BLOCK_NAMES[kernel]
    meta = dict(HEAD_DIM=head_dim, HEAD_DIM_PAD=tfw._head_dim_pad(head_dim), CAUSAL=causal, INPUT_PRECISION=precision,
                num_warps=tile[2], num_stages=tile[3], grid=(1, 1))
    meta[m_name], meta[n_name] = tile[0], tile[1]
    tail = (2, 64, 64, seq_bucket)
    scale = 1.0 / math.sqrt(head_dim)
    if kernel == "fwd":
        args = (q, k, v, o, lse, scale, *q.stride(), *k.stride(), *v.stride(), *o.stride(), *tail)
    elif kernel == "dkdv":
        args = (q, k, v, o, lse, lse, k, v, scale, *(q.stride() * 6), *tail)
    else:
        args = (q, k, v, o, lse, lse, q, scale, *(q.stride() * 5), *tail)
    t0 = time.time()
    try:
        getattr(tfw, _KERNELS[kernel]).warmup(*args, **meta)
    except Exception as exc:  # e.g. out of resources: the autotuner will skip it too
        return f"{kernel} {tile} {type(exc).__name__}"
    return f"{kernel} {tile} {time.time() - t0:.1f}s"


def precompile(plan, workers: int) -> None:
    """plan: (dtype, head_dim, causal, precision, seq_q, seq_k) cases that will run."""
    import concurrent.futures
    import multiprocessing

    jobs = set()
    for dtype, head_dim, causal, precision, seq_q, seq_k in plan:
        probe = torch.empty(1, device="cuda", dtype=dtype)
        bucket = tf._seq_bucket(seq_q, seq_k)
        for kernel in _KERNELS:
            configs = tf._configs(kernel)
            kept = tf._prune(kernel)(configs, {"Q": probe, "seq_bucket": bucket}, HEAD_DIM_PAD=tf._head_dim_pad(head_dim))
            for c in kept:
                jobs.add((kernel, str(dtype).removeprefix("torch."), head_dim, causal, precision, bucket,
                          tf._tile_of(kernel, c)))
    # one bucket is enough per (kernel, dtype, head_dim, causal, precision, tile): compiles ignore it
    unique = {}
    for j in jobs:
        unique.setdefault(j[:5] + j[6:], j)
    t0 = time.time()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        results = list(pool.map(_compile_job, sorted(unique.values(), key=str)))
    failed = [r for r in results if not r.endswith("s")]
    say(f"== phase 0: compiled {len(unique)} kernel variants in {time.time() - t0:.0f}s on {workers} processes"
        + (f"; not compiled: {failed}" if failed else ""))


# ------------------------------------------------------------------------------------------------
# phase 1: correctness
# ------------------------------------------------------------------------------------------------

CORRECTNESS_CASES = (
    # (dtype, head_dims, seq pairs)
    (torch.bfloat16, (16, 32, 48, 64, 128, 256), ((1, 1), (17, 97), (97, 17), (255, 255))),
    (torch.float16, (64, 128), ((1, 1), (97, 33), (255, 255))),
    (torch.bfloat16, (64, 128), ((1025, 1025), (1000, 1500))),
    (torch.float32, (16, 64, 128), ((1, 1), (97, 33), (255, 513))),
)
TF32_CASE = (torch.float32, 64, 257, 513, True)


def correctness_cases():
    cases = [(d, hd, sq, sk, c) for d, hds, seqs in CORRECTNESS_CASES for hd in hds for sq, sk in seqs
             for c in (False, True)]
    return cases + [TF32_CASE]  # the last runs with TF32 on, against its own floor


def check_case(dtype, head_dim, seq_q, seq_k, causal, batch=2, heads=3):
    dev = "cuda"
    q = torch.randn(batch, heads, seq_q, head_dim, device=dev, dtype=dtype)
    k = torch.randn(batch, heads, seq_k, head_dim, device=dev, dtype=dtype)
    v = torch.randn(batch, heads, seq_k, head_dim, device=dev, dtype=dtype)
    grad_out = torch.randn(batch, heads, seq_q, head_dim, device=dev, dtype=dtype)
    ref = forward_backward(lambda *a: reference(*a[:3], causal=a[3])[0], q.double(), k.double(), v.double(),
                           grad_out.double(), causal)
    mine = forward_backward(triton_fn, q, k, v, grad_out, causal)
    plain = forward_backward(plain_same_precision, q, k, v, grad_out, causal)
    floor = ERROR_FLOOR[dtype]
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        floor = ERROR_FLOOR_TF32
    names = ("out", "dq", "dk", "dv")
    errs = [rel_err(m, r) for m, r in zip(mine, ref)]
    limits = [ERROR_FACTOR * rel_err(p, r) + floor for p, r in zip(plain, ref)]
    ok = all(math.isfinite(e) and e <= lim for e, lim in zip(errs, limits))
    detail = " ".join(f"{n}={e:.1e}/{lim:.1e}" for n, e, lim in zip(names, errs, limits))
    return ok, detail


def phase_correctness(deadline: float) -> tuple[int, int]:
    say("== phase 1: correctness vs float64 reference (error / limit = 2x plain same-precision + floor)")
    passed = failed = 0
    torch.backends.cuda.matmul.allow_tf32 = False
    cases = correctness_cases()
    for i, (dtype, head_dim, seq_q, seq_k, causal) in enumerate(cases):
        if time.time() > deadline:
            say(f"  skipped {len(cases) - i} correctness cases: time budget")
            break
        tf32 = i == len(cases) - 1
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            ok, detail = check_case(dtype, head_dim, seq_q, seq_k, causal)
        except Exception as exc:  # recorded as a failure, and the sweep goes on
            ok, detail = False, f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
        passed += ok
        failed += not ok
        tag = "tf32" if tf32 else str(dtype).removeprefix("torch.")
        say(f"  {'PASS' if ok else 'FAIL'} {tag:8s} d={head_dim:3d} sq={seq_q:4d} sk={seq_k:4d} "
            f"causal={int(causal)} {detail}")
    say(f"  correctness: {passed} passed, {failed} failed")
    return passed, failed


# ------------------------------------------------------------------------------------------------
# phase 2: timing
# ------------------------------------------------------------------------------------------------


def attention_flops(batch, heads, seq_q, seq_k, head_dim, causal, backward):
    flops = 4 * batch * heads * seq_q * seq_k * head_dim * (2.5 if backward else 1.0)
    return flops / 2 if causal else flops


def time_variant(fn, q, k, v, grad_out, causal):
    """(forward ms, backward ms) medians."""
    with torch.no_grad():
        fwd = triton.testing.do_bench(lambda: fn(q, k, v, causal), warmup=BENCH_WARMUP_MS, rep=BENCH_REP_MS,
                                      return_mode="median")
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(qg, kg, vg, causal)
    bwd = triton.testing.do_bench(lambda: out.backward(grad_out, retain_graph=True), warmup=BENCH_WARMUP_MS,
                                  rep=BENCH_REP_MS, grad_to_none=[qg, kg, vg], return_mode="median")
    return fwd, bwd


def time_shape(rows, dtype, batch, heads, seq, head_dim, causal, baselines):
    dev = "cuda"
    q, k, v, grad_out = (torch.randn(batch, heads, seq, head_dim, device=dev, dtype=dtype) for _ in range(4))
    # agreement with SDPA on this very shape (the autotuned configs are the ones being checked)
    mine = forward_backward(triton_fn, q, k, v, grad_out, causal)
    first_name, first_backend = baselines[0]
    theirs = forward_backward(sdpa_fn(first_backend), q, k, v, grad_out, causal)
    agree = max(rel_err(m, t) for m, t in zip(mine, theirs))
    del mine, theirs
    result = {"dtype": str(dtype).removeprefix("torch."), "batch": batch, "heads": heads, "seq": seq,
              "head_dim": head_dim, "causal": causal, "agree_vs_" + first_name: agree,
              "agree_ok": agree <= SDPA_AGREEMENT[dtype]}
    for name, fn in [("triton_flash", triton_fn)] + [(n, sdpa_fn(b)) for n, b in baselines]:
        try:
            fwd, bwd = time_variant(fn, q, k, v, grad_out, causal)
        except Exception as exc:  # OOM or refusal is recorded, and the sweep goes on
            result[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
            continue
        result[name] = {
            "fwd_ms": fwd, "bwd_ms": bwd,
            "fwd_tflops": attention_flops(batch, heads, seq, seq, head_dim, causal, False) / fwd / 1e9,
            "bwd_tflops": attention_flops(batch, heads, seq, seq, head_dim, causal, True) / bwd / 1e9,
        }
    rows.append(result)
    say("  " + json.dumps(result))


def timing_shapes():
    shapes = [(torch.bfloat16, BF16_TOKENS // s, BF16_MODEL_DIM // d, s, d, c)
              for d in BF16_HEAD_DIMS for c in (False, True) for s in BF16_SEQS]
    return shapes + [(torch.float32, FP32_BATCH, 1, s, d, c) for s in FP32_SEQS for d in FP32_HEAD_DIMS
                     for c in (False, True)]


def phase_timing(deadline: float) -> list[dict]:
    say("== phase 2: timing (do_bench medians; TFLOP/s fwd 4*B*H*Sq*Sk*D, bwd 2.5x, causal halves)")
    rows: list[dict] = []
    torch.backends.cuda.matmul.allow_tf32 = False
    shapes = timing_shapes()
    for i, (dtype, batch, heads, seq, head_dim, causal) in enumerate(shapes):
        if time.time() > deadline:
            say(f"  skipped {len(shapes) - i} timing shapes: time budget")
            break
        if dtype == torch.bfloat16:
            baselines = [("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)]
        else:
            baselines = [("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION)]
        time_shape(rows, dtype, batch, heads, seq, head_dim, causal, baselines)
        torch.cuda.empty_cache()
    return rows


def ceilings() -> dict:
    """Measured matmul rate (bf16, 8192^3, random data) and device-to-device copy bandwidth."""
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = triton.testing.do_bench(lambda: a @ b, return_mode="median")
    src = torch.randn(256 * 1024 * 1024, device="cuda")  # 1 GiB of fp32
    dst = torch.empty_like(src)
    copy_ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return {"bf16_matmul_tflops": 2 * 8192**3 / ms / 1e9, "copy_tb_per_s": 2 * src.numel() * 4 / copy_ms / 1e9}


def tuned_configs() -> dict:
    found = {}
    for name, kernel in (("fwd", tf._attn_fwd_tuned), ("dkdv", tf._attn_bwd_dkdv_tuned), ("dq", tf._attn_bwd_dq_tuned)):
        found[name] = {str(key): str(config) for key, config in kernel.cache.items()}
    return found


def table(rows: list[dict]) -> list[str]:
    lines = ["dtype seq    B  H   d  causal | fwd TFLOP/s: triton  others...        | bwd TFLOP/s: triton  others... | agree"]
    for r in rows:
        names = [n for n in r if n in ("triton_flash", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient")]

        def cell(n, key):
            x = r[n]
            return f"{n.removeprefix('sdpa_')}={x[key]:6.1f}" if isinstance(x, dict) else f"{n.removeprefix('sdpa_')}=ERR"

        fwd = " ".join(cell(n, "fwd_tflops") for n in names)
        bwd = " ".join(cell(n, "bwd_tflops") for n in names)
        agree = next(v for k, v in r.items() if k.startswith("agree_vs_"))
        lines.append(f"{r['dtype']:5s} {r['seq']:5d} {r['batch']:3d} {r['heads']:2d} {r['head_dim']:3d} "
                     f"{int(r['causal'])}      | {fwd} | {bwd} | {agree:.1e}{'' if r['agree_ok'] else ' BAD'}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), metavar="DIR",
                        help="folder for the full log and JSON results (default: $OUT or .)")
    parser.add_argument("--budget-s", type=float, default=250.0, metavar="SECONDS",
                        help="start no new case after this many seconds (default: 250)")
    parser.add_argument("--skip-correctness", action="store_true", help="go straight to timing")
    parser.add_argument("--compile-workers", type=int, default=min(16, os.cpu_count() or 1), metavar="N",
                        help="processes compiling kernels ahead of the run (default: min(16, cpus); 0: none)")
    args = parser.parse_args(argv)
    start = time.time()
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    say(f"device: {torch.cuda.get_device_name(0)} ({props.multi_processor_count} SMs), torch {torch.__version__}, "
        f"triton {triton.__version__}, python {sys.version.split()[0]}")
    limits = ceilings()
    say(f"ceilings: {json.dumps(limits)}")
    plan = [(dt, hd, c, tf._input_precision(dt), s, s) for dt, _, _, s, hd, c in timing_shapes()]
    if not args.skip_correctness:
        plan += [(dt, hd, c, tf._input_precision(dt), sq, sk) for dt, hd, sq, sk, c in correctness_cases()]
        plan.append((torch.float32, TF32_CASE[1], TF32_CASE[4], "tf32", TF32_CASE[2], TF32_CASE[3]))
    if args.compile_workers:
        precompile(plan, args.compile_workers)
    say(f"elapsed {time.time() - start:.0f}s")
    passed = failed = 0
    if not args.skip_correctness:
        passed, failed = phase_correctness(time.time() + 0.3 * (start + args.budget_s - time.time()))
    say(f"elapsed {time.time() - start:.0f}s")
    rows = phase_timing(start + args.budget_s)
    configs = tuned_configs()
    say("autotuned configs: " + json.dumps(configs))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "triton_flash_results.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(0), "ceilings": limits, "passed": passed, "failed": failed,
                   "rows": rows, "configs": configs}, f, indent=1)
    say(f"elapsed {time.time() - start:.0f}s")
    say(f"== summary on {torch.cuda.get_device_name(0)}: correctness {passed} passed, {failed} failed")
    for line in table(rows):
        say(line)
    with open(os.path.join(args.out, "triton_flash_log.txt"), "w") as f:
        f.write("\n".join(LOG) + "\n")
    return 1 if failed or not all(r["agree_ok"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
