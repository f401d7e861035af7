"""FlashAttention-2 in Triton: forward and backward kernels, saving only O and the log-sum-exp.

Forward: each program owns a tile of BLOCK_M queries and streams BLOCK_N-key blocks of K and V
past it with an online softmax (exp2, with log2(e) folded into the softmax scale). It writes O
and the log-sum-exp of each query row in those log2 units; nothing of size seq_q × seq_k is kept.

Backward recomputes the probabilities of each tile from the log-sum-exp, in three launches:
``_attn_bwd_preprocess`` (delta = rowsum(dO * O)), ``_attn_bwd_dkdv`` (one program per key block,
looping over query blocks) and ``_attn_bwd_dq`` (one program per query block, looping over key
blocks). Each output element is written by exactly one program: no atomics, so autotuning (which
reruns a kernel) needs no reset. On Hopper and later the two backward kernels read the tiles they
stream (q and dO; k and v) through TMA tensor descriptors made on the device, one per head or GQA group,
where the strides allow (``_tma_ready``); elsewhere, and in the forward, which measured faster without
them on an H200, through pointers. The interpreter emulates descriptors, so the CPU tests run both paths.

Masks: causal (top-left aligned, query i sees keys j <= i), and AND-ed with it the mask specs of
``attention_impls.masks`` ``sliding_window(w)`` (|i - j| < w) and ``document(lengths)`` (same
document), as the constexpr MASK_KIND with a runtime window and per-position document bounds. Every
position sees an interval of the other axis whose ends never decrease, so each program derives the
contiguous range of blocks it pairs with (``_visible_span``): blocks outside it are never loaded,
whole blocks that every row sees run without masks, and only the partial blocks at its edges (the
diagonal, a window's or a document's edges, the ragged end of a sequence) are masked.

GQA/MQA: k and v may have fewer heads than q (heads % heads_kv == 0); query head h reads k/v head
h // (heads // heads_kv). The dK/dV kernel runs one program per key block of each k/v head and loops
over the query heads of its group, so dK and dV are summed in registers, without atomics.

Head dims that are not a power of two run padded to the next one with masked loads and stores.

Triton is optional: the module imports without it and the variant then reports why it cannot run.
Two GPU tools close the file: ``precompile`` compiles every autotune candidate ahead, in parallel
processes, and ``autotune_candidates`` reports what each candidate tile measured.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .masks import Document, MaskSpec, SlidingWindow, validate_mask
from .parallel import map_in_processes
from .registry import Variant, lse_row_bytes, register, softmax_scale

try:
    import triton
    import triton.language as tl
    from triton.runtime.errors import OutOfResources
except ImportError:  # the variant stays registered and says what is missing
    triton = None
    tl = None

    class OutOfResources(Exception):  # never raised without Triton; keeps _launch's except clause valid
        pass

    _TRITON_MISSING = "triton_flash needs Triton: install triton (pip install triton)"
else:
    _TRITON_MISSING = None

#: dtypes the kernels take on a GPU
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: dtypes Triton's CPU interpreter computes right. Its ``tl.dot`` hands bfloat16 tiles to numpy as the
#: uint16 bit patterns it keeps them in (numpy has no bfloat16): a 16x16 bf16 product comes out ~1e10
#: off, and triton_flash ~8e8 (gradients ~1e9) at every shape (Triton 3.9). fp16 and fp32 are right.
INTERPRETER_DTYPES = (torch.float16, torch.float32)
#: the mask specs (``attention_impls.masks`` kinds) the kernels run; prefix_lm is not among them
SUPPORTED_MASKS = frozenset({"sliding_window", "document"})
#: MASK_KIND, the kernels' constexpr, per mask kind ("none": causal or nothing)
_MASK_KINDS = {"none": 0, "sliding_window": 1, "document": 2}
#: largest head_dim the kernels take; smaller ones (any value) are padded to a power of two >= 16.
MAX_HEAD_DIM = 256
#: rows per program of the backward preprocess (delta = rowsum(dO * O)); memory-bound, not tuned.
PREPROCESS_BLOCK_M = 64
#: autotune keys on a power-of-two bucket of the sequence length, from this one up ...
MIN_SEQ_BUCKET = 256
#: ... and tunes only at or above this bucket; shorter sequences take the smallest tile, since a
#: handful of programs cannot fill the GPU whatever the tile.
MIN_TUNED_SEQ_BUCKET = 1024
#: warm-up and measurement (ms) per candidate config: autotuning runs on the first call only.
TUNE_WARMUP_MS = 5
TUNE_REP_MS = 25
#: ``ATTNBENCH_TRITON_TUNE=off``: every key takes its first candidate that fits (the largest tile; the small
#: one below MIN_TUNED_SEQ_BUCKET) and no candidate is timed. For tests, which check results, not speed: a
#: key that would compile and time every candidate costs one compile. Read at each new key; default on.
TUNE_ENV = "ATTNBENCH_TRITON_TUNE"
_TUNE_VALUES = {"on": True, "1": True, "true": True, "yes": True, "off": False, "0": False, "false": False, "no": False}
#: ``ATTNBENCH_TRITON_TMA=off``: the kernels read the streamed tiles through pointers even where tensor descriptors
#: (TMA) could: for timing one path against the other, and for testing the pointer path. Read at each call; default on.
TMA_ENV = "ATTNBENCH_TRITON_TMA"


def _interpreting() -> bool:
    """Whether Triton's CPU interpreter is on, read the way ``triton.jit`` reads it."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


#: decided once, when the kernels are decorated: ``triton.jit`` makes interpreted functions only
#: when TRITON_INTERPRET is set at that moment.
_INTERPRET = triton is not None and _interpreting()


if triton is not None:
    # lengths, head counts, the GQA group and the window are not specialised on (== 1, divisible by 16):
    # one compiled kernel serves every shape, so odd lengths cost no extra compiles; they only index
    # scalars and masks
    _SEQ_JIT = triton.jit(do_not_specialize=["num_heads", "group", "seq_q", "seq_k", "seq_bucket", "window"])

    # MASK_KIND: what, besides CAUSAL, decides which keys a query sees (host names in _MASK_KINDS)
    _NO_MASK = tl.constexpr(0)
    _WINDOW_MASK = tl.constexpr(1)  # |i - j| < window
    _DOCUMENT_MASK = tl.constexpr(2)  # same document: doc_start[i] <= j < doc_end[i]

    @triton.jit
    def _load_tile(ptrs, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                   MASK_ROWS: tl.constexpr):
        """A (rows, HEAD_DIM_PAD) tile; rows past n_rows and padded columns read as zero."""
        if MASK_ROWS:
            if HEAD_DIM == HEAD_DIM_PAD:
                tile = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
            else:
                tile = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        else:
            if HEAD_DIM == HEAD_DIM_PAD:
                tile = tl.load(ptrs)
            else:
                tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        return tile

    @triton.jit
    def _store_tile(ptrs, tile, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr):
        if HEAD_DIM == HEAD_DIM_PAD:
            tl.store(ptrs, tile, mask=rows[:, None] < n_rows)
        else:
            tl.store(ptrs, tile, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))

    @triton.jit
    def _head_descriptor(base, n_rows, stride_row, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
                         BLOCK: tl.constexpr):
        """A TMA descriptor of one head's (n_rows, HEAD_DIM) matrix (unit column stride), read in
        (BLOCK, HEAD_DIM_PAD) tiles: rows past n_rows and columns past HEAD_DIM read as zero."""
        return tl.make_tensor_descriptor(base, shape=[n_rows, HEAD_DIM], strides=[stride_row, 1],
                                         block_shape=[BLOCK, HEAD_DIM_PAD])

    @triton.jit
    def _group_descriptor(base, group, n_rows, stride_head, stride_row, HEAD_DIM: tl.constexpr,
                          HEAD_DIM_PAD: tl.constexpr, BLOCK: tl.constexpr):
        """A TMA descriptor of the ``group`` heads' (group, n_rows, HEAD_DIM) block (GQA: the query heads
        that share a k/v head lie one head stride apart), read in (1, BLOCK, HEAD_DIM_PAD) tiles."""
        return tl.make_tensor_descriptor(base, shape=[group, n_rows, HEAD_DIM], strides=[stride_head, stride_row, 1],
                                         block_shape=[1, BLOCK, HEAD_DIM_PAD])

    # ------------------------------------------------------------------------------------------
    # masks: which blocks to visit, which of them to mask
    # ------------------------------------------------------------------------------------------

    @triton.jit
    def _visible_span(first, last, seq_other, window, DocStart, DocEnd,
                      CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, OF_QUERIES: tl.constexpr):
        """Positions [first, last] of one axis (queries when OF_QUERIES, else keys) against the other
        axis: [lo, hi) holds every position that some of them pair with, [all_lo, all_hi) those that
        all of them pair with. Both are contiguous for every mask here (each position sees an interval
        whose ends never decrease along the axis), so they are exact: every position of [lo, hi) is
        seen by one of [first, last]. Clamped to [0, seq_other]; [all_lo, all_hi) may be empty."""
        lo = first * 0
        hi = lo + seq_other
        all_lo = lo
        all_hi = hi
        if MASK_KIND == _WINDOW_MASK:  # i sees j when |i - j| < window: symmetric
            lo = first - window + 1
            hi = last + window
            all_lo = last - window + 1
            all_hi = first + window
        if MASK_KIND == _DOCUMENT_MASK:  # i sees j when both lie in one document: symmetric
            lo = tl.load(DocStart + first)
            hi = tl.load(DocEnd + last)
            all_lo = tl.load(DocStart + last)
            all_hi = tl.load(DocEnd + first)
        if CAUSAL:  # i sees j only when j <= i
            if OF_QUERIES:
                hi = tl.minimum(hi, last + 1)
                all_hi = tl.minimum(all_hi, first + 1)
            else:
                lo = tl.maximum(lo, first)
                all_lo = tl.maximum(all_lo, last)
        # clamp before any division: Triton's integer // truncates toward zero, the interpreter's floors
        lo = tl.minimum(tl.maximum(lo, 0), seq_other)
        hi = tl.minimum(tl.maximum(hi, 0), seq_other)
        all_lo = tl.minimum(tl.maximum(all_lo, 0), seq_other)
        all_hi = tl.minimum(tl.maximum(all_hi, 0), seq_other)
        return lo, hi, all_lo, all_hi

    @triton.jit
    def _block_stages(lo, hi, all_lo, all_hi, BLOCK: tl.constexpr):
        """Cut the streamed axis into blocks of BLOCK: [start, full_lo) and [full_hi, hi) run masked,
        [full_lo, full_hi) (whole blocks inside [all_lo, all_hi), hence inside the sequence) unmasked.
        Blocks before start and from hi on hold nothing visible and are never loaded."""
        start = (lo // BLOCK) * BLOCK
        end = tl.maximum(((hi + BLOCK - 1) // BLOCK) * BLOCK, start)
        full_lo = tl.minimum(tl.maximum(((all_lo + BLOCK - 1) // BLOCK) * BLOCK, start), end)
        full_hi = tl.minimum(tl.maximum((all_hi // BLOCK) * BLOCK, full_lo), end)
        return start, full_lo, full_hi

    @triton.jit
    def _restrict(keep, q_idx, k_idx, streamed_idx, window, doc_lo, doc_hi,
                  CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr):
        """keep & (query q_idx sees key k_idx), broadcast. A document is checked on the streamed index
        against [doc_lo, doc_hi), the document bounds of the resident one (the relation is symmetric)."""
        if CAUSAL:
            keep = keep & (k_idx <= q_idx)
        if MASK_KIND == _WINDOW_MASK:
            keep = keep & (q_idx - k_idx < window) & (k_idx - q_idx < window)
        if MASK_KIND == _DOCUMENT_MASK:
            keep = keep & (streamed_idx >= doc_lo) & (streamed_idx < doc_hi)
        return keep

    # ------------------------------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------------------------------

    @triton.jit
    def _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                        offs_m, offs_n, offs_d, seq_k, qk_scale, lo, hi, window, doc_lo, doc_hi,
                        HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                        CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, MASKED: tl.constexpr,
                        INPUT_PRECISION: tl.constexpr):
        """Stream key/value blocks [lo, hi) past one query tile; MASKED applies bounds and the masks."""
        for start_n in range(lo, hi, BLOCK_N):
            start_n = tl.multiple_of(start_n, BLOCK_N)
            cols = start_n + offs_n
            k = _load_tile(k_ptrs + start_n * stride_kn, cols, seq_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
            # -- scores, in log2 units: qk_scale = sm_scale / ln(2)
            qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)
            if MASKED:
                qk = qk * qk_scale
                keep = _restrict(cols[None, :] < seq_k, offs_m[:, None], cols[None, :], cols[None, :],
                                 window, doc_lo[:, None], doc_hi[:, None], CAUSAL, MASK_KIND)
                qk = tl.where(keep, qk, float("-inf"))
                m_ij = tl.maximum(m_i, tl.max(qk, 1))
                if MASK_KIND != _NO_MASK:
                    # a row may meet blocks it sees nothing of before its first visible key (a tile spanning
                    # two documents, a window's left edge): subtract 0, not -inf, while its max is -inf
                    m_sub = tl.where(m_ij == float("-inf"), 0.0, m_ij)
                else:
                    # without a mask spec -inf is safe: the first block a row sees holds key 0, which every
                    # row sees, so m_i is finite before any row meets a block that is all masked for it
                    m_sub = m_ij
                p = tl.math.exp2(qk - m_sub[:, None])
            else:
                # every row sees every key of the block: scale and subtract in one multiply-add per
                # score (max(qk) * scale is max(qk * scale), since the scale is positive)
                m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                m_sub = m_ij
                p = tl.math.exp2(qk * qk_scale - m_sub[:, None])
            alpha = tl.math.exp2(m_i - m_sub)
            l_i = l_i * alpha + tl.sum(p, 1)
            # -- rescale the accumulator and add this block's p @ v
            v = _load_tile(v_ptrs + start_n * stride_vn, cols, seq_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
            m_i = m_ij
        return acc, l_i, m_i

    @_SEQ_JIT
    def _attn_fwd(Q, K, V, Out, LSE, DocStart, DocEnd, sm_scale,
                  stride_qz, stride_qh, stride_qm, stride_qd,
                  stride_kz, stride_kh, stride_kn, stride_kd,
                  stride_vz, stride_vh, stride_vn, stride_vd,
                  stride_oz, stride_oh, stride_om, stride_od,
                  num_heads, group, seq_q, seq_k, seq_bucket, window,
                  HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, CAUSAL: tl.constexpr,
                  MASK_KIND: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        if CAUSAL:  # the last query tiles see the most keys: launch them first to shorten the tail
            pid_m = tl.num_programs(0) - 1 - pid_m
        off_bh = tl.program_id(1)
        off_z = (off_bh // num_heads).to(tl.int64)
        off_h = (off_bh % num_heads).to(tl.int64)
        off_hk = off_h // group  # GQA: `group` query heads share one k/v head

        start_m = pid_m * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM_PAD)
        q_ptrs = Q + off_z * stride_qz + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
        k_ptrs = K + off_z * stride_kz + off_hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
        v_ptrs = V + off_z * stride_vz + off_hk * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
        qk_scale = sm_scale * 1.44269504  # 1/ln(2): exp(x) = exp2(x / ln(2))
        q = _load_tile(q_ptrs, offs_m, seq_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
        if MASK_KIND == _DOCUMENT_MASK:  # each row's document, as the keys [doc_lo, doc_hi) it sees
            doc_lo = tl.load(DocStart + offs_m, mask=offs_m < seq_q, other=0)
            doc_hi = tl.load(DocEnd + offs_m, mask=offs_m < seq_q, other=0)
        else:
            doc_lo = offs_m
            doc_hi = offs_m

        # -- which key blocks to visit: [lo, hi) holds every key some row of the tile sees (blocks
        # outside it are skipped); the whole blocks in [all_lo, all_hi), which every row sees, run
        # without masks; the partial ones on either side run masked
        last_m = tl.minimum(start_m + BLOCK_M, seq_q) - 1
        lo, hi, all_lo, all_hi = _visible_span(start_m, last_m, seq_k, window, DocStart, DocEnd,
                                               CAUSAL, MASK_KIND, True)
        start_n, full_lo, full_hi = _block_stages(lo, hi, all_lo, all_hi, BLOCK_N)
        # -- stage 1: partial blocks left of the whole ones (a window's or a document's left edge), masked;
        # without a mask spec every row sees key 0 and this stage is empty
        if MASK_KIND != _NO_MASK:
            acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                            offs_m, offs_n, offs_d, seq_k, qk_scale, start_n, full_lo,
                                            window, doc_lo, doc_hi, HEAD_DIM, HEAD_DIM_PAD, BLOCK_N,
                                            CAUSAL, MASK_KIND, True, INPUT_PRECISION)
        # -- stage 2: whole blocks, no masks
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                        offs_m, offs_n, offs_d, seq_k, qk_scale, full_lo, full_hi,
                                        window, doc_lo, doc_hi, HEAD_DIM, HEAD_DIM_PAD, BLOCK_N,
                                        CAUSAL, MASK_KIND, False, INPUT_PRECISION)
        # -- stage 3: diagonal, right-edge and ragged blocks, masked
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                        offs_m, offs_n, offs_d, seq_k, qk_scale, full_hi, hi,
                                        window, doc_lo, doc_hi, HEAD_DIM, HEAD_DIM_PAD, BLOCK_N,
                                        CAUSAL, MASK_KIND, True, INPUT_PRECISION)

        # -- epilogue: normalise, store O and the log-sum-exp in log2 units, the units the backward
        # subtracts it in. Storing it in natural log (x ln 2 here, x 1/ln 2 there) cost two more fp32
        # roundings at the LSE's magnitude (an ulp is 4e-6 at |lse2| 32..64): an error shared by every
        # P of the row, which dS = P * (dP - delta) does not cancel, so dK took it in proportion to its
        # own size; measured 4.6x the plain fp32 dK error where it is 1.6x now (docs/triton_flash.md)
        if MASK_KIND != _NO_MASK:  # rows past seq_q may see no key at all: keep them finite (never stored)
            l_i = tl.where(l_i == 0.0, 1.0, l_i)
        acc = acc / l_i[:, None]
        lse2 = m_i + tl.math.log2(l_i)
        tl.store(LSE + off_bh.to(tl.int64) * seq_q + offs_m, lse2, mask=offs_m < seq_q)
        o_ptrs = Out + off_z * stride_oz + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
        _store_tile(o_ptrs, acc.to(Out.dtype.element_ty), offs_m, seq_q, offs_d, HEAD_DIM, HEAD_DIM_PAD)

    # ------------------------------------------------------------------------------------------
    # backward
    # ------------------------------------------------------------------------------------------

    @triton.jit(do_not_specialize=["num_heads", "seq_q"])
    def _attn_bwd_preprocess(O, DO, Delta,
                             stride_oz, stride_oh, stride_om, stride_od,
                             stride_doz, stride_doh, stride_dom, stride_dod,
                             num_heads, seq_q,
                             HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
        """delta_i = rowsum(dO_i * O_i) = rowsum(dP_i * P_i): the softmax-backward correction."""
        off_bh = tl.program_id(1)
        off_z = (off_bh // num_heads).to(tl.int64)
        off_h = (off_bh % num_heads).to(tl.int64)
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM_PAD)
        o = _load_tile(O + off_z * stride_oz + off_h * stride_oh + offs_m[:, None] * stride_om
                       + offs_d[None, :] * stride_od, offs_m, seq_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
        do = _load_tile(DO + off_z * stride_doz + off_h * stride_doh + offs_m[:, None] * stride_dom
                        + offs_d[None, :] * stride_dod, offs_m, seq_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
        tl.store(Delta + off_bh.to(tl.int64) * seq_q + offs_m, delta, mask=offs_m < seq_q)

    @triton.jit
    def _attn_bwd_dkdv_inner(dk, dv, k, v, q_src, do_src, stride_qh, stride_qm, stride_doh, stride_dom,
                             LSE, Delta, group, offs_n, offs_d, seq_q, seq_k, qk_scale, lo, hi, window, doc_lo, doc_hi,
                             HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_M1: tl.constexpr,
                             CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, MASKED: tl.constexpr,
                             INPUT_PRECISION: tl.constexpr, TMA: tl.constexpr):
        """Add the contributions of query blocks [lo, hi) of each of the ``group`` query heads that share
        this k/v head (GQA; their q, dO, LSE and delta lie one head stride apart) to one key block's dK
        and dV (transposed tiles). One flat loop over (head, block): a loop over heads around the block
        loop costs registers the dK and dV accumulators need (it spills at BLOCK_N1 128, head_dim 128)."""
        offs_m0 = tl.arange(0, BLOCK_M1)
        num_blocks = (tl.maximum(hi - lo, 0) + BLOCK_M1 - 1) // BLOCK_M1
        for step in range(0, num_blocks * group):
            head = step // num_blocks
            start_m = lo + (step - head * num_blocks) * BLOCK_M1
            start_m = tl.multiple_of(start_m, BLOCK_M1)
            offs_m = start_m + offs_m0
            if TMA:  # q_src, do_src: descriptors of the group's heads
                q = q_src.load([head, start_m, 0]).reshape(BLOCK_M1, HEAD_DIM_PAD)
                do = do_src.load([head, start_m, 0]).reshape(BLOCK_M1, HEAD_DIM_PAD)
            else:
                q = _load_tile(q_src + head * stride_qh + start_m * stride_qm, offs_m, seq_q, offs_d,
                               HEAD_DIM, HEAD_DIM_PAD, MASKED)
                do = _load_tile(do_src + head * stride_doh + start_m * stride_dom, offs_m, seq_q, offs_d,
                                HEAD_DIM, HEAD_DIM_PAD, MASKED)
            # rows past seq_q read q = dO = lse = delta = 0, so their p is 1 and their ds is 0:
            # they add nothing to dK or dV
            if MASKED:
                lse2 = tl.load(LSE + head * seq_q + offs_m, mask=offs_m < seq_q, other=0.0)  # log2 units
                delta = tl.load(Delta + head * seq_q + offs_m, mask=offs_m < seq_q, other=0.0)
            else:
                lse2 = tl.load(LSE + head * seq_q + offs_m)
                delta = tl.load(Delta + head * seq_q + offs_m)
            # -- recompute P^T from the log-sum-exp
            qkT = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION)
            pT = tl.math.exp2(qkT * qk_scale - lse2[None, :])
            if MASKED:
                if CAUSAL or MASK_KIND != _NO_MASK:
                    keep = _restrict(offs_m[None, :] < seq_q, offs_m[None, :], offs_n[:, None], offs_m[None, :],
                                     window, doc_lo[:, None], doc_hi[:, None], CAUSAL, MASK_KIND)
                    pT = tl.where(keep, pT, 0.0)
            # -- dV += P^T dO
            dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=INPUT_PRECISION)
            # -- dS^T = P^T * (dP^T - delta); dK += dS^T Q (sm_scale applied once, at the end)
            dpT = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)
            dsT = pT * (dpT - delta[None, :])
            dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=INPUT_PRECISION)
        return dk, dv

    @_SEQ_JIT
    def _attn_bwd_dkdv(Q, K, V, DO, LSE, Delta, DK, DV, DocStart, DocEnd, sm_scale,
                       stride_qz, stride_qh, stride_qm, stride_qd,
                       stride_kz, stride_kh, stride_kn, stride_kd,
                       stride_vz, stride_vh, stride_vn, stride_vd,
                       stride_doz, stride_doh, stride_dom, stride_dod,
                       stride_dkz, stride_dkh, stride_dkn, stride_dkd,
                       stride_dvz, stride_dvh, stride_dvn, stride_dvd,
                       num_heads, group, seq_q, seq_k, seq_bucket, window,
                       HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, CAUSAL: tl.constexpr,
                       MASK_KIND: tl.constexpr, INPUT_PRECISION: tl.constexpr, TMA: tl.constexpr,
                       BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr):
        # one program per key block of one k/v head: it owns that block's dK and dV, summed over the
        # `group` query heads that share the k/v head (GQA), so no atomics and no reduction afterwards
        num_heads_kv = num_heads // group
        off_bhk = tl.program_id(1)
        off_z = (off_bhk // num_heads_kv).to(tl.int64)
        off_hk = (off_bhk % num_heads_kv).to(tl.int64)
        start_n = tl.program_id(0) * BLOCK_N1
        offs_n = start_n + tl.arange(0, BLOCK_N1)
        offs_m0 = tl.arange(0, BLOCK_M1)
        offs_d = tl.arange(0, HEAD_DIM_PAD)

        k = _load_tile(K + off_z * stride_kz + off_hk * stride_kh + offs_n[:, None] * stride_kn
                       + offs_d[None, :] * stride_kd, offs_n, seq_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
        v = _load_tile(V + off_z * stride_vz + off_hk * stride_vh + offs_n[:, None] * stride_vn
                       + offs_d[None, :] * stride_vd, offs_n, seq_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
        if MASK_KIND == _DOCUMENT_MASK:  # each key's document, as the queries [doc_lo, doc_hi) that see it
            doc_lo = tl.load(DocStart + offs_n, mask=offs_n < seq_k, other=0)
            doc_hi = tl.load(DocEnd + offs_n, mask=offs_n < seq_k, other=0)
        else:
            doc_lo = offs_n
            doc_hi = offs_n
        qk_scale = sm_scale * 1.44269504  # 1/ln(2)

        # -- which query blocks to visit: [lo, hi) holds every query that sees some key of the block;
        # whole query blocks in [all_lo, all_hi) see every key of it and run without masks. Causal:
        # queries before start_n see none of the block; the diagonal blocks are partial
        last_n = tl.minimum(start_n + BLOCK_N1, seq_k) - 1
        lo, hi, all_lo, all_hi = _visible_span(start_n, last_n, seq_q, window, DocStart, DocEnd,
                                               CAUSAL, MASK_KIND, False)
        start_m, full_lo, full_hi = _block_stages(lo, hi, all_lo, all_hi, BLOCK_M1)

        # the first query head of the group (the others follow, one head stride apart)
        off_h0 = off_hk * group
        if TMA:
            q_src = _group_descriptor(Q + off_z * stride_qz + off_h0 * stride_qh, group, seq_q, stride_qh, stride_qm,
                                      HEAD_DIM, HEAD_DIM_PAD, BLOCK_M1)
            do_src = _group_descriptor(DO + off_z * stride_doz + off_h0 * stride_doh, group, seq_q, stride_doh,
                                       stride_dom, HEAD_DIM, HEAD_DIM_PAD, BLOCK_M1)
        else:
            q_src = (Q + off_z * stride_qz + off_h0 * stride_qh + offs_m0[:, None] * stride_qm
                     + offs_d[None, :] * stride_qd)
            do_src = (DO + off_z * stride_doz + off_h0 * stride_doh + offs_m0[:, None] * stride_dom
                      + offs_d[None, :] * stride_dod)
        LSE += (off_z * num_heads + off_h0) * seq_q
        Delta += (off_z * num_heads + off_h0) * seq_q

        dk = tl.zeros([BLOCK_N1, HEAD_DIM_PAD], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N1, HEAD_DIM_PAD], dtype=tl.float32)
        # each stage loops over the group's query heads too: dK and dV are summed over them here
        # -- stage 1: partial query blocks before the whole ones (causal diagonal, window and document
        # edges), masked; empty without causal or a mask spec
        if CAUSAL or MASK_KIND != _NO_MASK:
            dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_src, do_src, stride_qh, stride_qm, stride_doh, stride_dom,
                                          LSE, Delta, group, offs_n, offs_d, seq_q, seq_k, qk_scale, start_m, full_lo,
                                          window, doc_lo, doc_hi, HEAD_DIM, HEAD_DIM_PAD, BLOCK_M1,
                                          CAUSAL, MASK_KIND, True, INPUT_PRECISION, TMA)
        # -- stage 2: query blocks that see the whole key block, no masks
        dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_src, do_src, stride_qh, stride_qm, stride_doh, stride_dom,
                                      LSE, Delta, group, offs_n, offs_d, seq_q, seq_k, qk_scale, full_lo, full_hi,
                                      window, doc_lo, doc_hi, HEAD_DIM, HEAD_DIM_PAD, BLOCK_M1,
                                      CAUSAL, MASK_KIND, False, INPUT_PRECISION, TMA)
        # -- stage 3: partial blocks after them and the ragged last query block, masked
        dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_src, do_src, stride_qh, stride_qm, stride_doh, stride_dom,
                                      LSE, Delta, group, offs_n, offs_d, seq_q, seq_k, qk_scale, full_hi, hi,
                                      window, doc_lo, doc_hi, HEAD_DIM, HEAD_DIM_PAD, BLOCK_M1,
                                      CAUSAL, MASK_KIND, True, INPUT_PRECISION, TMA)

        dk *= sm_scale  # dS is the gradient of the scaled scores: dK = sm_scale * dS^T Q
        dk_ptrs = (DK + off_z * stride_dkz + off_hk * stride_dkh + offs_n[:, None] * stride_dkn
                   + offs_d[None, :] * stride_dkd)
        dv_ptrs = (DV + off_z * stride_dvz + off_hk * stride_dvh + offs_n[:, None] * stride_dvn
                   + offs_d[None, :] * stride_dvd)
        _store_tile(dk_ptrs, dk.to(DK.dtype.element_ty), offs_n, seq_k, offs_d, HEAD_DIM, HEAD_DIM_PAD)
        _store_tile(dv_ptrs, dv.to(DV.dtype.element_ty), offs_n, seq_k, offs_d, HEAD_DIM, HEAD_DIM_PAD)

    @triton.jit
    def _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_src, v_src, stride_kn, stride_vn,
                           offs_m, offs_n0, offs_d, seq_k, qk_scale, lo, hi, window, doc_lo, doc_hi,
                           HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, BLOCK_N2: tl.constexpr,
                           CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, MASKED: tl.constexpr,
                           INPUT_PRECISION: tl.constexpr, TMA: tl.constexpr):
        """Add the contributions of key blocks [lo, hi) to one query block's dQ."""
        for start_n in range(lo, hi, BLOCK_N2):
            start_n = tl.multiple_of(start_n, BLOCK_N2)
            cols = start_n + offs_n0
            if TMA:
                k = k_src.load([start_n, 0])
                v = v_src.load([start_n, 0])
            else:
                k = _load_tile(k_src + start_n * stride_kn, cols, seq_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
                v = _load_tile(v_src + start_n * stride_vn, cols, seq_k, offs_d, HEAD_DIM, HEAD_DIM_PAD, MASKED)
            # -- recompute P from the log-sum-exp
            qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)
            p = tl.math.exp2(qk * qk_scale - lse2[:, None])
            if MASKED:
                # keys past seq_k read as zero, but exp2(0 - lse) need not be finite: mask them too
                keep = _restrict(cols[None, :] < seq_k, offs_m[:, None], cols[None, :], cols[None, :],
                                 window, doc_lo[:, None], doc_hi[:, None], CAUSAL, MASK_KIND)
                p = tl.where(keep, p, 0.0)
            # -- dS = P * (dP - delta); dQ += dS K (sm_scale applied once, at the end)
            dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=INPUT_PRECISION)
        return dq

    @_SEQ_JIT
    def _attn_bwd_dq(Q, K, V, DO, LSE, Delta, DQ, DocStart, DocEnd, sm_scale,
                     stride_qz, stride_qh, stride_qm, stride_qd,
                     stride_kz, stride_kh, stride_kn, stride_kd,
                     stride_vz, stride_vh, stride_vn, stride_vd,
                     stride_doz, stride_doh, stride_dom, stride_dod,
                     stride_dqz, stride_dqh, stride_dqm, stride_dqd,
                     num_heads, group, seq_q, seq_k, seq_bucket, window,
                     HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, CAUSAL: tl.constexpr,
                     MASK_KIND: tl.constexpr, INPUT_PRECISION: tl.constexpr, TMA: tl.constexpr,
                     BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr):
        pid_m = tl.program_id(0)
        if CAUSAL:  # heaviest query tiles first, as in the forward
            pid_m = tl.num_programs(0) - 1 - pid_m
        off_bh = tl.program_id(1)
        off_z = (off_bh // num_heads).to(tl.int64)
        off_h = (off_bh % num_heads).to(tl.int64)
        off_hk = off_h // group  # GQA: the k/v head this query head reads
        start_m = pid_m * BLOCK_M2
        offs_m = start_m + tl.arange(0, BLOCK_M2)
        offs_n0 = tl.arange(0, BLOCK_N2)
        offs_d = tl.arange(0, HEAD_DIM_PAD)

        q = _load_tile(Q + off_z * stride_qz + off_h * stride_qh + offs_m[:, None] * stride_qm
                       + offs_d[None, :] * stride_qd, offs_m, seq_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
        do = _load_tile(DO + off_z * stride_doz + off_h * stride_doh + offs_m[:, None] * stride_dom
                        + offs_d[None, :] * stride_dod, offs_m, seq_q, offs_d, HEAD_DIM, HEAD_DIM_PAD, True)
        row_ok = offs_m < seq_q
        lse2 = tl.load(LSE + off_bh.to(tl.int64) * seq_q + offs_m, mask=row_ok, other=0.0)  # log2 units
        delta = tl.load(Delta + off_bh.to(tl.int64) * seq_q + offs_m, mask=row_ok, other=0.0)
        if TMA:
            k_src = _head_descriptor(K + off_z * stride_kz + off_hk * stride_kh, seq_k, stride_kn,
                                     HEAD_DIM, HEAD_DIM_PAD, BLOCK_N2)
            v_src = _head_descriptor(V + off_z * stride_vz + off_hk * stride_vh, seq_k, stride_vn,
                                     HEAD_DIM, HEAD_DIM_PAD, BLOCK_N2)
        else:
            k_src = (K + off_z * stride_kz + off_hk * stride_kh + offs_n0[:, None] * stride_kn
                     + offs_d[None, :] * stride_kd)
            v_src = (V + off_z * stride_vz + off_hk * stride_vh + offs_n0[:, None] * stride_vn
                     + offs_d[None, :] * stride_vd)
        if MASK_KIND == _DOCUMENT_MASK:
            doc_lo = tl.load(DocStart + offs_m, mask=row_ok, other=0)
            doc_hi = tl.load(DocEnd + offs_m, mask=row_ok, other=0)
        else:
            doc_lo = offs_m
            doc_hi = offs_m
        qk_scale = sm_scale * 1.44269504  # 1/ln(2)

        # the same split of the key range as the forward
        last_m = tl.minimum(start_m + BLOCK_M2, seq_q) - 1
        lo, hi, all_lo, all_hi = _visible_span(start_m, last_m, seq_k, window, DocStart, DocEnd,
                                               CAUSAL, MASK_KIND, True)
        start_n, full_lo, full_hi = _block_stages(lo, hi, all_lo, all_hi, BLOCK_N2)
        dq = tl.zeros([BLOCK_M2, HEAD_DIM_PAD], dtype=tl.float32)
        # -- stage 1: partial blocks left of the whole ones, masked (empty without a mask spec)
        if MASK_KIND != _NO_MASK:
            dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_src, v_src, stride_kn, stride_vn,
                                    offs_m, offs_n0, offs_d, seq_k, qk_scale, start_n, full_lo, window, doc_lo,
                                    doc_hi, HEAD_DIM, HEAD_DIM_PAD, BLOCK_N2, CAUSAL, MASK_KIND, True,
                                    INPUT_PRECISION, TMA)
        # -- stage 2: whole blocks, no masks
        dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_src, v_src, stride_kn, stride_vn,
                                offs_m, offs_n0, offs_d, seq_k, qk_scale, full_lo, full_hi, window, doc_lo, doc_hi,
                                HEAD_DIM, HEAD_DIM_PAD, BLOCK_N2, CAUSAL, MASK_KIND, False, INPUT_PRECISION, TMA)
        # -- stage 3: diagonal, right-edge and ragged blocks, masked
        dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_src, v_src, stride_kn, stride_vn,
                                offs_m, offs_n0, offs_d, seq_k, qk_scale, full_hi, hi, window, doc_lo, doc_hi,
                                HEAD_DIM, HEAD_DIM_PAD, BLOCK_N2, CAUSAL, MASK_KIND, True, INPUT_PRECISION, TMA)

        dq *= sm_scale  # dQ = sm_scale * dS K
        dq_ptrs = (DQ + off_z * stride_dqz + off_h * stride_dqh + offs_m[:, None] * stride_dqm
                   + offs_d[None, :] * stride_dqd)
        _store_tile(dq_ptrs, dq.to(DQ.dtype.element_ty), offs_m, seq_q, offs_d, HEAD_DIM, HEAD_DIM_PAD)


# ----------------------------------------------------------------------------------------------
# autotuning: small Hopper-minded config lists, pruned by dtype, shared memory and problem size
# ----------------------------------------------------------------------------------------------

#: (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel and operand width; the last entry of each
#: list is the small tile taken for short sequences and the fallback when nothing else fits.
_TILES = {
    ("fwd", 2): [(128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3),
                 (64, 32, 4, 2)],
    # fp32 runs on tensor cores ("tf32x3" or "tf32"): operands take twice the shared memory of
    # bf16, so two stages; the "x3" split keeps a high and a low half of each operand in registers
    ("fwd", 4): [(128, 64, 8, 2), (64, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 2), (64, 32, 8, 2), (64, 32, 4, 3),
                 (64, 32, 4, 2), (32, 32, 4, 2)],
    # dK/dV: BLOCK_M1 queries stream past BLOCK_N1 resident keys; the dK and dV accumulators are the
    # register bill, so 8 warps share them
    ("dkdv", 2): [(32, 128, 8, 3), (16, 128, 8, 3), (64, 128, 8, 3), (64, 128, 8, 2), (32, 64, 8, 3), (64, 64, 4, 4),
                  (16, 64, 4, 3)],
    ("dkdv", 4): [(32, 64, 8, 2), (64, 64, 8, 2), (32, 128, 8, 2), (16, 128, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2),
                  (32, 32, 4, 2), (16, 64, 4, 2), (16, 32, 4, 2)],
    # dQ: BLOCK_N2 keys stream past BLOCK_M2 resident queries
    ("dq", 2): [(128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 8, 2), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 2)],
    ("dq", 4): [(64, 64, 8, 2), (128, 64, 8, 2), (64, 32, 8, 2), (64, 32, 4, 2), (32, 64, 4, 2), (32, 32, 4, 2),
                (16, 32, 4, 2)],
}
#: the interpreter runs one small config: tuning there would only cost time
_INTERPRETER_TILE = {"fwd": (32, 16, 4, 1), "dkdv": (16, 32, 4, 1), "dq": (32, 16, 4, 1)}
_BLOCK_NAMES = {"fwd": ("BLOCK_M", "BLOCK_N"), "dkdv": ("BLOCK_M1", "BLOCK_N1"), "dq": ("BLOCK_M2", "BLOCK_N2")}
#: used when the device does not report its opt-in shared memory (227 KiB on Hopper)
_DEFAULT_SHARED_MEMORY_BYTES = 227 * 1024


def _tile_of(kernel: str, config) -> tuple[int, int, int, int]:
    m_name, n_name = _BLOCK_NAMES[kernel]
    return config.kwargs[m_name], config.kwargs[n_name], config.num_warps, config.num_stages


def _configs(kernel: str) -> list:
    m_name, n_name = _BLOCK_NAMES[kernel]
    if _INTERPRET:
        tiles = [_INTERPRETER_TILE[kernel]]
    else:
        tiles = list(dict.fromkeys(_TILES[(kernel, 2)] + _TILES[(kernel, 4)]))
    return [triton.Config({m_name: bm, n_name: bn}, num_warps=w, num_stages=s) for bm, bn, w, s in tiles]


@functools.lru_cache(maxsize=None)
def _shared_memory_bytes(device_index: int) -> int:
    props = torch.cuda.get_device_properties(device_index)
    return getattr(props, "shared_memory_per_block_optin", 0) or _DEFAULT_SHARED_MEMORY_BYTES


def _shared_memory_need(kernel: str, tile: tuple[int, int, int, int], head_dim: int, elem_bytes: int) -> int:
    """Rough bytes of shared memory: resident tiles plus num_stages copies of the streamed ones."""
    block_m, block_n, _, stages = tile
    if kernel == "fwd":  # Q resident; K, V streamed
        return (block_m + 2 * stages * block_n) * head_dim * elem_bytes
    if kernel == "dkdv":  # K, V resident; Q, dO streamed
        return (2 * block_n + 2 * stages * block_m) * head_dim * elem_bytes
    return (2 * block_m + 2 * stages * block_n) * head_dim * elem_bytes  # dq: Q, dO resident; K, V streamed


def _candidate_tiles(kernel: str, elem_bytes: int, head_dim_pad: int, seq_bucket: int,
                     shared_memory_bytes: int) -> list[tuple[int, int, int, int]]:
    """The tiles the autotuner tries for one key: those that fit in shared memory, or the last one."""
    wanted = _TILES[(kernel, elem_bytes)]
    fits = [t for t in wanted if _shared_memory_need(kernel, t, head_dim_pad, elem_bytes) <= shared_memory_bytes]
    if seq_bucket < MIN_TUNED_SEQ_BUCKET or not fits:
        return [wanted[-1]]
    return fits


def _switch(env: str) -> bool:
    value = os.environ.get(env, "on").strip().lower()
    if value not in _TUNE_VALUES:
        raise ValueError(f"{env}={value!r}: expected on or off")
    return _TUNE_VALUES[value]


def environment_problem() -> str | None:
    """Why ``ATTNBENCH_TRITON_TUNE`` or ``ATTNBENCH_TRITON_TMA`` cannot be read (None when both can): for a
    caller to refuse a bad value before a grid starts, rather than in every cell."""
    for env in (TUNE_ENV, TMA_ENV):
        try:
            _switch(env)
        except ValueError as exc:
            return str(exc)
    return None


def tuning() -> bool:
    """Whether the autotuner times the candidates (``ATTNBENCH_TRITON_TUNE``, on unless set off)."""
    return _switch(TUNE_ENV)


def tma_allowed() -> bool:
    """Whether the kernels may read through tensor descriptors (``ATTNBENCH_TRITON_TMA``, on unless set off)."""
    return _switch(TMA_ENV)


@contextlib.contextmanager
def _tuning_on():
    """Tune whatever ``ATTNBENCH_TRITON_TUNE`` says (autotune_candidates times every candidate)."""
    before = os.environ.get(TUNE_ENV)
    os.environ[TUNE_ENV] = "on"
    try:
        yield
    finally:
        if before is None:
            del os.environ[TUNE_ENV]
        else:
            os.environ[TUNE_ENV] = before


#: tiles the GPU refused at launch, by the kernel's compile-time key: (kernel, elem_bytes, the kernel's constexprs,
#: tile). The shared-memory estimate is rough (a tf32x3 dot keeps more than it counts: the H200 refused the fp32
#: forward's 128×64 tile at head_dim 128, 256 KiB for 196 KiB estimated). When several candidates are timed, the
#: autotuner passes over such a tile by itself; when one is launched untimed (tuning off, or a single candidate),
#: :func:`_launch` learns it here and launches the next candidate.
_UNFIT: set[tuple] = set()
#: the tile each kernel's last prune chose without timing, with its key: what an OutOfResources refers to.
_LAST_UNTIMED: dict[str, tuple] = {}


def _tiles_to_try(kernel: str, elem_bytes: int, head_dim_pad: int, seq_bucket: int,
                  shared_memory_bytes: int, constexprs: tuple = ()) -> list[tuple[int, int, int, int]]:
    """The candidates for one key (``constexprs``: the kernel's compile-time values besides the tile, which
    decide what a tile needs), or when there is nothing to time (tuning off, or a single candidate) the first of
    them the GPU has not refused."""
    fits = _candidate_tiles(kernel, elem_bytes, head_dim_pad, seq_bucket, shared_memory_bytes)
    if tuning() and len(fits) > 1:
        return fits
    key = (kernel, elem_bytes, head_dim_pad, *constexprs)
    untried = [t for t in fits if (*key, t) not in _UNFIT]
    choice = (untried or fits)[0]
    _LAST_UNTIMED[kernel] = (*key, choice)
    return [choice]


def _prune(kernel: str):
    def prune(configs, named_args, **kwargs):
        q = named_args["Q"]
        head_dim_pad = kwargs.get("HEAD_DIM_PAD", named_args.get("HEAD_DIM_PAD"))
        limit = _shared_memory_bytes(q.device.index if q.device.index is not None else torch.cuda.current_device())
        constexprs = tuple(kwargs.get(name, named_args.get(name))
                           for name in ("HEAD_DIM", "CAUSAL", "MASK_KIND", "INPUT_PRECISION", "TMA"))
        fits = _tiles_to_try(kernel, q.element_size(), head_dim_pad, named_args["seq_bucket"], limit, constexprs)
        return [c for c in configs if _tile_of(kernel, c) in fits]

    return prune


def _launch(kernel: str, tuned, grid, *args, **kwargs) -> None:
    """``tuned[grid](*args, **kwargs)``. A tile launched without timing that the GPU refuses for its resources is
    remembered as unfit and the next candidate is launched instead; among timed candidates the autotuner
    already passes over such tiles."""
    while True:
        _LAST_UNTIMED.pop(kernel, None)
        try:
            tuned[grid](*args, **kwargs)
            return
        except OutOfResources:
            unfit = _LAST_UNTIMED.get(kernel)
            if unfit is None or unfit in _UNFIT:  # a cached or timed choice, or no candidate left
                raise
            _UNFIT.add(unfit)
            tuned.cache.clear()  # the key's choice is made again, without the unfit tile


def _autotune(kernel: str):
    extra = {}
    if not _INTERPRET and "do_bench" in inspect.signature(triton.autotune).parameters:
        extra["do_bench"] = functools.partial(triton.testing.do_bench, warmup=TUNE_WARMUP_MS, rep=TUNE_REP_MS)
    return triton.autotune(
        configs=_configs(kernel),
        # the dtype is keyed on by Triton. MASK_KIND too: a window or documents change each program's
        # work (a few blocks instead of seq/BLOCK), so the best tile differs from the unmasked one's; and
        # in the backward whether the streamed tiles come through TMA
        key=["HEAD_DIM_PAD", "CAUSAL", "MASK_KIND", "INPUT_PRECISION", "seq_bucket"] + (["TMA"] if kernel != "fwd" else []),
        prune_configs_by={"early_config_prune": _prune(kernel)},
        **extra,
    )


if triton is not None:
    _attn_fwd_tuned = _autotune("fwd")(_attn_fwd)
    _attn_bwd_dkdv_tuned = _autotune("dkdv")(_attn_bwd_dkdv)
    _attn_bwd_dq_tuned = _autotune("dq")(_attn_bwd_dq)


# ----------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------


def _seq_bucket(seq_q: int, seq_k: int) -> int:
    """Power-of-two bucket of the longer sequence: the autotune key's stand-in for the lengths."""
    return max(MIN_SEQ_BUCKET, triton.next_power_of_2(max(seq_q, seq_k)))


def _input_precision(dtype: torch.dtype, allow_tf32: bool | None = None) -> str:
    """tl.dot's precision for fp32 operands, following torch's own matmul setting (or ``allow_tf32``).

    With TF32 off (torch's default) the dots run as "tf32x3": each operand is split into a TF32
    high part and a TF32 remainder, and three tensor-core products (hi·hi + hi·lo + lo·hi) recover
    fp32 accuracy. That is what PyTorch's own fp32 flash-style kernel does (sdpa_efficient: CUTLASS
    ``OpMultiplyAddFastF32`` on compute capability >= 8.0), so fp32 compares like with like; Triton's
    "ieee" dot runs on FMA units at a fraction of the speed.
    """
    if allow_tf32 is None:
        allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    if dtype == torch.float32 and not allow_tf32:
        return "tf32x3"
    return "tf32"  # Triton's default; ignored for fp16/bf16 operands


def _head_dim_pad(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))  # tl.dot needs every dimension >= 16


def _tma_ready(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can read these tensors through TMA descriptors: tensor descriptors in this Triton, a
    Hopper-or-later GPU (or the interpreter, which emulates them), unit stride along head_dim, and 16-byte
    aligned base addresses and other strides (TMA's rules). A broadcast dimension (stride 0, as autograd
    hands the gradient of a sum) is left to the pointer loads."""
    if not hasattr(tl, "make_tensor_descriptor") or not tma_allowed():
        return False
    device = tensors[0].device
    if device.type == "cuda":
        if torch.cuda.get_device_capability(device)[0] < 9:
            return False
    elif not _INTERPRET:
        return False
    for t in tensors:
        size = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16:
            return False
        if any(stride * size % 16 or (stride == 0 and n > 1) for stride, n in zip(t.stride()[:-1], t.shape[:-1])):
            return False
    return True


class _ScratchAllocator:
    """Global memory for the descriptors the kernels make on the device (Triton asks for it at launch)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device=self.device)


@contextlib.contextmanager
def _descriptor_memory(device: torch.device, needed: bool):
    """Give Triton an allocator for on-device tensor descriptors while the kernels launch, then restore the
    caller's. Triton keeps it in a context variable, so the backward (on autograd's own thread) sets it again."""
    if not needed:
        yield
        return
    from triton.runtime import _allocation

    slot = getattr(_allocation, "_allocator", None)
    if slot is None or not hasattr(slot, "set"):  # no context variable to restore: set it for good
        triton.set_allocator(_ScratchAllocator(device))
        yield
        return
    token = slot.set(_ScratchAllocator(device))
    try:
        yield
    finally:
        slot.reset(token)


def _device_guard(t: torch.Tensor):
    """Launch on the tensors' GPU, not whichever is current."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@dataclass(frozen=True)
class _MaskArgs:
    """What the kernels take for a mask spec: MASK_KIND, the window (clamped to the sequence, so the
    kernels' int32 index sums cannot overflow) and the per-position document bounds (int32)."""

    kind: int
    window: int
    doc_start: torch.Tensor
    doc_end: torch.Tensor


@functools.lru_cache(maxsize=16)
def _document_bounds(lengths: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(doc_start, doc_end), int32 (seq,): the first and one-past-last position of each position's
    document; key j is visible from query i when doc_start[i] <= j < doc_end[i]. Cached: a benchmark
    calls with the same documents every time, and this is a host-to-device copy."""
    counts = torch.tensor(lengths, dtype=torch.int64)
    ends = torch.cumsum(counts, 0)
    doc_start = torch.repeat_interleave(ends - counts, counts).to(torch.int32)
    doc_end = torch.repeat_interleave(ends, counts).to(torch.int32)
    return doc_start.to(device), doc_end.to(device)


@functools.lru_cache(maxsize=None)
def _no_documents(device: torch.device) -> torch.Tensor:
    """A stand-in for the document bounds when there are none (the kernels never read it)."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def _mask_args(mask: MaskSpec | None, seq_len: int, device: torch.device) -> _MaskArgs:
    if isinstance(mask, SlidingWindow):
        unused = _no_documents(device)
        return _MaskArgs(_MASK_KINDS["sliding_window"], min(mask.window, seq_len), unused, unused)
    if isinstance(mask, Document):
        doc_start, doc_end = _document_bounds(mask.lengths, device)
        return _MaskArgs(_MASK_KINDS["document"], 0, doc_start, doc_end)
    unused = _no_documents(device)
    return _MaskArgs(_MASK_KINDS["none"], 0, unused, unused)


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, mask: _MaskArgs,
             input_precision: str):
    """Launch the forward kernel; returns O (like q, contiguous) and the fp32 (batch, heads, seq_q)
    log-sum-exp of the scaled scores in log2 units (the reference's lse / ln 2)."""
    batch, heads, seq_q, head_dim = q.shape
    heads_kv, seq_k = k.shape[1], k.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, seq_q), dtype=torch.float32, device=q.device)

    def grid(meta):
        return (triton.cdiv(seq_q, meta["BLOCK_M"]), batch * heads)

    _launch(
        "fwd", _attn_fwd_tuned, grid, q, k, v, out, lse, mask.doc_start, mask.doc_end, softmax_scale(head_dim),
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        heads, heads // heads_kv, seq_q, seq_k, _seq_bucket(seq_q, seq_k), mask.window,
        HEAD_DIM=head_dim, HEAD_DIM_PAD=_head_dim_pad(head_dim), CAUSAL=causal, MASK_KIND=mask.kind,
        INPUT_PRECISION=input_precision,
    )
    return out, lse


def _backward(q, k, v, out, lse, grad_out, causal: bool, mask: _MaskArgs, input_precision: str):
    batch, heads, seq_q, head_dim = q.shape
    heads_kv, seq_k = k.shape[1], k.shape[2]
    group = heads // heads_kv
    head_dim_pad = _head_dim_pad(head_dim)
    seq_bucket = _seq_bucket(seq_q, seq_k)
    sm_scale = softmax_scale(head_dim)
    delta = torch.empty_like(lse)
    grad_q = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    grad_k = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device)

    # -- delta = rowsum(dO * O)
    _attn_bwd_preprocess[(triton.cdiv(seq_q, PREPROCESS_BLOCK_M), batch * heads)](
        out, grad_out, delta, *out.stride(), *grad_out.stride(), heads, seq_q,
        HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, BLOCK_M=PREPROCESS_BLOCK_M,
    )

    # -- dK, dV: one program per key block of each k/v head, summing over the query heads of its group
    def grid_dkdv(meta):
        return (triton.cdiv(seq_k, meta["BLOCK_N1"]), batch * heads_kv)

    tma = _tma_ready(q, grad_out)
    with _descriptor_memory(q.device, tma):
        _launch(
            "dkdv", _attn_bwd_dkdv_tuned, grid_dkdv, q, k, v, grad_out, lse, delta, grad_k, grad_v, mask.doc_start,
            mask.doc_end, sm_scale,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *grad_k.stride(), *grad_v.stride(),
            heads, group, seq_q, seq_k, seq_bucket, mask.window,
            HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, CAUSAL=causal, MASK_KIND=mask.kind,
            INPUT_PRECISION=input_precision, TMA=tma,
        )

    # -- dQ: one program per query block
    def grid_dq(meta):
        return (triton.cdiv(seq_q, meta["BLOCK_M2"]), batch * heads)

    tma = _tma_ready(k, v)
    with _descriptor_memory(q.device, tma):
        _launch(
            "dq", _attn_bwd_dq_tuned, grid_dq, q, k, v, grad_out, lse, delta, grad_q, mask.doc_start, mask.doc_end,
            sm_scale, *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *grad_q.stride(),
            heads, group, seq_q, seq_k, seq_bucket, mask.window,
            HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, CAUSAL=causal, MASK_KIND=mask.kind,
            INPUT_PRECISION=input_precision, TMA=tma,
        )
    return grad_q, grad_k, grad_v


class _TritonFlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, mask: MaskSpec | None):
        input_precision = _input_precision(q.dtype)
        with _device_guard(q):
            out, lse = _forward(q, k, v, causal, _mask_args(mask, q.shape[2], q.device), input_precision)
        ctx.save_for_backward(q, k, v, out, lse)  # the log-sum-exp (log2 units), never P
        ctx.causal = causal
        ctx.mask = mask  # the spec (a small frozen dataclass); the document bounds are cached by device
        ctx.input_precision = input_precision
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        with _device_guard(q):
            grad_q, grad_k, grad_v = _backward(q, k, v, out, lse, grad_out, ctx.causal,
                                               _mask_args(ctx.mask, q.shape[2], q.device), ctx.input_precision)
        return grad_q, grad_k, grad_v, None, None


def _check_gqa_and_mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                        mask: MaskSpec | None) -> None:
    """ValueError/TypeError for what the registry's checks may not know yet: k/v head counts (GQA),
    mask specs this kernel does not run, masks with seq_q != seq_k."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions (batch, heads, seq, head_dim), got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    batch, heads, _, head_dim = q.shape
    if (k.shape[0], k.shape[3]) != (batch, head_dim):
        raise ValueError(f"k and v must match q in batch and head_dim: expected ({batch}, heads_kv, seq_k, "
                         f"{head_dim}), got {tuple(k.shape)}")
    heads_kv = k.shape[1]
    if heads_kv < 1 or heads % heads_kv:
        raise ValueError(f"triton_flash needs q's heads ({heads}) to be a multiple of k's and v's heads "
                         f"({heads_kv}): query head h reads k/v head h // (heads // heads_kv)")
    if mask is None:
        return
    validate_mask(mask, q.shape[2], k.shape[2], causal=causal)  # TypeError for a non-spec, seq_q != seq_k
    if mask.kind not in SUPPORTED_MASKS:
        raise ValueError(f"triton_flash runs the masks {', '.join(sorted(SUPPORTED_MASKS))}, "
                         f"not {mask.kind}")


def triton_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                           mask: MaskSpec | None = None) -> torch.Tensor:
    """FlashAttention-2 forward and backward in Triton (shapes in ``registry``).

    k and v may have fewer heads than q (GQA/MQA; heads % heads_kv == 0): query head h reads k/v head
    h // (heads // heads_kv), as ``F.scaled_dot_product_attention(..., enable_gqa=True)``. ``mask`` is
    None, ``masks.sliding_window(w)`` or ``masks.document(lengths)`` (AND-ed with ``causal``; seq_q ==
    seq_k); fully masked key blocks are skipped, forward and backward.
    """
    _check_gqa_and_mask(q, k, v, causal, mask)
    tuning()  # a bad ATTNBENCH_TRITON_TUNE is refused here, not inside Triton's autotuner
    tma_allowed()  # and a bad ATTNBENCH_TRITON_TMA here, not in the backward
    return _TritonFlashAttention.apply(q, k, v, causal, mask)


def _unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    if _TRITON_MISSING is not None:
        return _TRITON_MISSING
    if device.type == "cuda":
        if _INTERPRET:
            return ("triton_flash was imported with TRITON_INTERPRET=1 (CPU interpreter): "
                    "pass CPU tensors, or unset TRITON_INTERPRET to run on the GPU")
        if not torch.cuda.is_available():
            return "triton_flash needs a CUDA GPU, and torch sees none"
        return None
    if not _INTERPRET:
        return (f"triton_flash needs a CUDA GPU (got device {device.type}), or TRITON_INTERPRET=1 for the CPU "
                "interpreter, set before attention_impls is imported")
    if dtype not in INTERPRETER_DTYPES:
        return (f"triton_flash under TRITON_INTERPRET=1 runs float16 and float32 only, not "
                f"{str(dtype).removeprefix('torch.')}: Triton's CPU interpreter computes bfloat16 dots wrongly "
                "(values ~1e9 off); run bfloat16 on a CUDA GPU")
    return None


register(
    "triton_flash",
    saved_nxn=0,
    saved_row_bytes=lse_row_bytes,
    saves_output=True,
    dtypes=KERNEL_DTYPES,
    max_head_dim=MAX_HEAD_DIM,
    availability=_unavailable_reason,
    cpu_interpreted=True,
    description="FlashAttention-2 in Triton (forward and backward kernels, autotuned); saves O and the log-sum-exp",
    # mask specs and k/v heads fewer than q's: fields the registry's Variant is gaining; passed once it has them
    **{name: value for name, value in (("masks", SUPPORTED_MASKS), ("gqa", True))
       if name in Variant.__dataclass_fields__},
)(triton_flash_attention)


# ----------------------------------------------------------------------------------------------
# GPU tools: compile every autotune candidate ahead, in parallel; what each candidate measured
# ----------------------------------------------------------------------------------------------

#: the names a command line may give the kernels' dtypes by
_DTYPE_NAMES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
#: the sequence length of the small tensors a compile job launches with (lengths are not specialised on)
_COMPILE_SEQ = 64
#: precompile's default number of processes, at most: each holds a CUDA context (~0.5 GiB of GPU memory)
DEFAULT_MAX_WORKERS = 16


@dataclass(frozen=True)
class PrecompileResult:
    """What :func:`precompile` did: ``compiled`` kernel variants are in Triton's cache (compiled now, or
    found there); ``failed`` names the candidates that do not compile on this GPU ("dkdv 64x128/w8/s2:
    OutOfResources ..."; the autotuner skips them too); ``skipped`` says why nothing was compiled."""

    compiled: int
    failed: tuple[str, ...] = ()
    skipped: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class CandidateTiming:
    """One autotune candidate of one kernel: its tile and the autotuner's time for it (None: the only
    candidate for this key, taken without timing)."""

    kernel: str  # "fwd", "dkdv" or "dq"
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    ms: float | None


def _check_dtypes(dtypes) -> tuple[torch.dtype, ...]:
    allowed = "torch.float16, torch.bfloat16, torch.float32 (or 'fp16', 'bf16', 'fp32')"
    if isinstance(dtypes, (torch.dtype, str)) or not isinstance(dtypes, Iterable):
        dtypes = (dtypes,)
    checked = []
    for dtype in dtypes:
        if isinstance(dtype, str):
            if dtype not in _DTYPE_NAMES:
                raise ValueError(f"dtype must be one of {allowed}, got {dtype!r}")
            dtype = _DTYPE_NAMES[dtype]
        elif not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be one of {allowed}, got {type(dtype).__name__}")
        if dtype not in KERNEL_DTYPES:
            raise ValueError(f"dtype must be one of {allowed}, got {dtype}")
        checked.append(dtype)
    return tuple(checked)


def _check_positive_int(name: str, value, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1 or (maximum is not None and value > maximum):
        limits = f"between 1 and {maximum}" if maximum is not None else "at least 1"
        raise ValueError(f"{name} must be {limits}, got {value}")
    return value


def _check_bools(name: str, values) -> tuple[bool, ...]:
    if isinstance(values, bool) or not isinstance(values, Iterable):
        values = (values,)
    checked = tuple(values)
    if not checked or not all(isinstance(b, bool) for b in checked):
        raise TypeError(f"{name} must be True, False or a non-empty collection of them, got {values!r}")
    return checked


def _check_mask_kinds(masks) -> tuple[str, ...]:
    allowed = ", ".join(repr(kind) for kind in _MASK_KINDS)
    if isinstance(masks, str) or not isinstance(masks, Iterable):
        masks = (masks,)
    checked = tuple(dict.fromkeys(masks))
    if not checked:
        raise ValueError(f"masks must name one or more of {allowed}, got none")
    for kind in checked:
        if kind not in _MASK_KINDS:
            raise ValueError(f"masks must be among {allowed}, got {kind!r}")
    return checked


def _gpu_tools_reason() -> str | None:
    """Why the kernels cannot be compiled or timed here, or None."""
    if _TRITON_MISSING is not None:
        return _TRITON_MISSING
    if _INTERPRET:
        return "TRITON_INTERPRET=1 is set: the CPU interpreter runs the kernels uncompiled and untuned"
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch sees none)"
    return None


def _compile_jobs(dtypes, head_dims, causal, tf32, shared_memory_bytes: int, masks=("none",)) -> list[tuple]:
    """(kernel, dtype name, head_dim, causal, input precision, tile, mask kind) for every kernel variant
    the autotuner may launch at these keys, whatever the sequence length, window, documents or GQA group
    (none of which is specialised on); ``tile`` is None for the untuned preprocess kernel, which takes
    no mask."""
    jobs = {}
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        elem_bytes = torch.empty(0, dtype=dtype).element_size()
        precisions = dict.fromkeys(_input_precision(dtype, allow) for allow in tf32)
        for head_dim in head_dims:
            jobs[("preprocess", name, head_dim, False, "tf32", None, "none")] = None
            for kernel in _BLOCK_NAMES:
                # the tuned list at long sequences, plus the one tile short sequences take
                tiles = _candidate_tiles(kernel, elem_bytes, _head_dim_pad(head_dim), MIN_TUNED_SEQ_BUCKET,
                                         shared_memory_bytes) + [_TILES[(kernel, elem_bytes)][-1]]
                for tile in dict.fromkeys(tiles):
                    for is_causal in causal:
                        for precision in precisions:
                            for mask in masks:
                                jobs[(kernel, name, head_dim, is_causal, precision, tile, mask)] = None
    return list(jobs)


def _compile_launch(job: tuple, device: str = "cuda") -> tuple:
    """(kernel function, positional args, keyword args) of a launch that compiles one job's kernel variant."""
    kernel, dtype_name, head_dim, causal, precision, tile, mask = job
    dtype = getattr(torch, dtype_name)
    # contiguous (1, 2, 64, head_dim) tensors: the strides specialise like those of the suite's inputs
    q, k, v, o, do = (torch.empty(1, 2, _COMPILE_SEQ, head_dim, device=device, dtype=dtype) for _ in range(5))
    lse, delta = (torch.empty(1, 2, _COMPILE_SEQ, device=device) for _ in range(2))
    doc_start, doc_end = (torch.zeros(_COMPILE_SEQ, device=device, dtype=torch.int32) for _ in range(2))
    # num_heads, group, seq_q, seq_k, seq_bucket, window
    tail = (2, 1, _COMPILE_SEQ, _COMPILE_SEQ, MIN_TUNED_SEQ_BUCKET, _COMPILE_SEQ)
    meta = {"HEAD_DIM": head_dim, "HEAD_DIM_PAD": _head_dim_pad(head_dim), "grid": (1, 1)}
    if kernel == "preprocess":
        meta["BLOCK_M"] = PREPROCESS_BLOCK_M
        return _attn_bwd_preprocess, (o, do, delta, *o.stride(), *do.stride(), 2, _COMPILE_SEQ), meta
    m_name, n_name = _BLOCK_NAMES[kernel]
    meta.update(CAUSAL=causal, MASK_KIND=_MASK_KINDS[mask], INPUT_PRECISION=precision,
                num_warps=tile[2], num_stages=tile[3], **{m_name: tile[0], n_name: tile[1]})
    if kernel != "fwd":
        meta["TMA"] = _tma_ready(q, k)  # what a launch with such tensors takes
    scale = softmax_scale(head_dim)
    if kernel == "fwd":
        fn, args = _attn_fwd, (q, k, v, o, lse, doc_start, doc_end, scale,
                               *q.stride(), *k.stride(), *v.stride(), *o.stride())
    elif kernel == "dkdv":
        fn, args = _attn_bwd_dkdv, (q, k, v, do, lse, delta, k, v, doc_start, doc_end, scale, *q.stride(),
                                    *k.stride(), *v.stride(), *do.stride(), *k.stride(), *v.stride())
    else:
        fn, args = _attn_bwd_dq, (q, k, v, do, lse, delta, q, doc_start, doc_end, scale, *q.stride(),
                                  *k.stride(), *v.stride(), *do.stride(), *q.stride())
    return fn, args + tail, meta


def _compile_job(job: tuple) -> str | None:
    """Compile one kernel variant into Triton's cache (no launch); None, or why it did not compile."""
    kernel, dtype_name, head_dim, _, _, tile, mask = job
    try:
        fn, args, meta = _compile_launch(job)
        fn.warmup(*args, **meta)
    except Exception as exc:  # noqa: BLE001  (OutOfResources, ptxas errors: reported; the autotuner skips the tile)
        label = kernel if tile is None else f"{kernel} {tile[0]}x{tile[1]}/w{tile[2]}/s{tile[3]}"
        label += "" if mask == "none" else f" {mask}"
        return f"{label} {dtype_name} d{head_dim}: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def precompile(
    head_dims: int | Iterable[int],
    dtypes: torch.dtype | str | Iterable[torch.dtype | str] = KERNEL_DTYPES,
    *,
    causal: bool | Iterable[bool] = (False, True),
    tf32: bool | Iterable[bool] = (False,),
    masks: str | Iterable[str] = ("none",),
    workers: int | None = None,
) -> PrecompileResult:
    """Compile triton_flash's forward and backward kernels for these keys into Triton's on-disk cache.

    Every autotune candidate that can run at a key (head_dim × dtype × causal, and for fp32 × ``tf32``:
    ``torch.backends.cuda.matmul.allow_tf32`` off runs the dots as "tf32x3", on as "tf32") is compiled,
    for any sequence length, ``workers`` processes at a time (default: one per CPU core, at most
    DEFAULT_MAX_WORKERS = 16, each holding a CUDA context; 1 compiles in this process). The autotuner,
    which otherwise compiles each candidate one after another on a key's first call, then finds them
    compiled and only times them; so does any later process on this machine that reads the same cache.
    Kernels specialise on their strides' alignment: contiguous inputs hit the cache, other layouts may
    compile once more.

    ``masks`` names the mask kinds to compile for: "none" (no mask spec; causal or not), and for grids
    with masks "sliding_window" and "document". Each kind is one more constexpr specialisation of the
    three tuned kernels, so each adds as many variants as "none" has; the window, the documents and the
    GQA group are runtime values and add none.

    Does nothing without a CUDA GPU, under TRITON_INTERPRET=1 or without Triton, and says so in
    ``PrecompileResult.skipped``. Raises TypeError or ValueError for arguments outside: head_dims
    ints in 1..MAX_HEAD_DIM (256); dtypes torch.float16/bfloat16/float32 or "fp16"/"bf16"/"fp32";
    causal and tf32 bools; masks among "none", "sliding_window", "document"; workers an int >= 1 or None.
    """
    if not isinstance(head_dims, Iterable):
        head_dims = (head_dims,)
    head_dims = tuple(dict.fromkeys(_check_positive_int("head_dim", d, MAX_HEAD_DIM) for d in head_dims))
    dtypes = _check_dtypes(dtypes)
    causal, tf32 = _check_bools("causal", causal), _check_bools("tf32", tf32)
    masks = _check_mask_kinds(masks)
    if not head_dims or not dtypes:
        raise ValueError("precompile needs at least one head_dim and one dtype")
    if workers is not None:
        _check_positive_int("workers", workers)
    reason = _gpu_tools_reason()
    if reason is not None:
        return PrecompileResult(compiled=0, skipped=f"nothing to compile: {reason}")

    start = time.perf_counter()
    jobs = _compile_jobs(dtypes, head_dims, causal, tf32, _shared_memory_bytes(torch.cuda.current_device()), masks)
    workers = min(len(jobs), workers or min(DEFAULT_MAX_WORKERS, os.cpu_count() or 1))
    results = map_in_processes(_compile_job, jobs, workers)
    failed = tuple(r for r in results if r is not None)
    return PrecompileResult(compiled=len(jobs) - len(failed), failed=failed, seconds=time.perf_counter() - start)


def autotune_candidates(
    dtype: torch.dtype | str,
    head_dim: int,
    seq_len: int,
    *,
    causal: bool = False,
    batch: int = 1,
    heads: int = 1,
    heads_kv: int | None = None,
    mask: MaskSpec | None = None,
) -> list[CandidateTiming]:
    """Autotune every kernel for one shape and return what each candidate tile measured, fastest first
    per kernel ("fwd", "dkdv", "dq"): whether a candidate list is the limit (the winner sits at an edge
    of the list) or the kernel is (every candidate is close).

    Runs one forward and backward of random (batch, heads, seq_len, head_dim) q and (batch, heads_kv
    (default heads), seq_len, head_dim) k and v with ``mask`` (None, a sliding_window or document spec)
    on the current GPU, with fp32 following ``torch.backends.cuda.matmul.allow_tf32``. Drops this process's earlier
    autotune choices for the three kernels first, so they are timed afresh (later calls tune again).
    Raises RuntimeError without a CUDA GPU or under TRITON_INTERPRET=1; TypeError/ValueError for
    arguments outside: dtype as for :func:`precompile`, head_dim 1..MAX_HEAD_DIM, positive ints, bool causal,
    heads a multiple of heads_kv, a mask this kernel runs that fits seq_len.
    """
    if not isinstance(dtype, (torch.dtype, str)):
        raise TypeError(f"dtype must be one torch.dtype or dtype name, got {type(dtype).__name__}")
    (dtype,) = _check_dtypes(dtype)
    _check_positive_int("head_dim", head_dim, MAX_HEAD_DIM)
    for name, value in (("seq_len", seq_len), ("batch", batch), ("heads", heads)):
        _check_positive_int(name, value)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    heads_kv = heads if heads_kv is None else _check_positive_int("heads_kv", heads_kv)
    # the checks of a call, on tensors that hold no data
    _check_gqa_and_mask(*(torch.empty(batch, h, seq_len, head_dim, device="meta") for h in (heads, heads_kv, heads_kv)),
                        causal, mask)
    reason = _gpu_tools_reason()
    if reason is not None:
        raise RuntimeError(f"autotune_candidates needs a CUDA GPU: {reason}")

    tuned = {"fwd": _attn_fwd_tuned, "dkdv": _attn_bwd_dkdv_tuned, "dq": _attn_bwd_dq_tuned}
    for autotuner in tuned.values():
        autotuner.cache.clear()
        autotuner.configs_timings = {}
    q, k, v = (torch.randn(batch, h, seq_len, head_dim, device="cuda", dtype=dtype, requires_grad=True)
               for h in (heads, heads_kv, heads_kv))
    with _tuning_on():
        out = triton_flash_attention(q, k, v, causal=causal, mask=mask)
        torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
        torch.cuda.synchronize()
    rows = []
    for kernel, autotuner in tuned.items():
        timings = autotuner.configs_timings or {autotuner.best_config: None}
        kernel_rows = []
        for config, ms in timings.items():
            ms = ms[0] if isinstance(ms, (list, tuple)) else ms  # the median, first of the quantiles
            kernel_rows.append(CandidateTiming(kernel, *_tile_of(kernel, config), None if ms is None else float(ms)))
        rows += sorted(kernel_rows, key=lambda row: row.ms if row.ms is not None else 0.0)
    return rows
