"""triton_flash with GQA/MQA and with sliding-window and document masks, against a float64 reference.

The reference is written here, from ``attention_impls.masks.dense_mask``: scores masked with -inf,
softmax, @ v, autograd, all in float64, with k and v repeated over the query heads of their group
(``repeat_interleave``, what ``F.scaled_dot_product_attention(..., enable_gqa=True)`` means).

CPU tests run in Triton's interpreter (TRITON_INTERPRET=1, set by the root conftest without a GPU),
where the kernels take small tiles (``triton_flash._INTERPRETER_TILE``: 32/16 forward, 16/32 dK/dV,
32/16 dQ), so lengths up to 96 cross several blocks and end in partial ones. GPU tests are marked
``gpu`` and skip without CUDA.

Tolerance (flash-attention's rule, as in test_triton_flash.py): the error against float64 may be at
most twice the error of the same masked attention computed plainly in the same precision, plus a floor.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import assert_flash_rule, output_and_grads, rel_err, triton_flash_marks
from hypothesis import given
from hypothesis import strategies as st

from attention_impls import get_variant
from attention_impls import triton_flash as tf
from attention_impls.masks import dense_mask, document, prefix_lm, sliding_window
from attention_impls.registry import Variant, softmax_scale

VARIANT = get_variant("triton_flash")
needs_interpreter, needs_gpu = triton_flash_marks()
NAMES = ("out", "dq", "dk", "dv")
#: the public entry point, through the registry's validation: ``fn(q, k, v, causal=..., mask=...)``
attention = VARIANT.fn


def masked_attention(q, k, v, *, causal, mask):
    """Plain masked attention in the inputs' precision (softmax in fp32 below fp32): q (batch, heads,
    seq, head_dim), k and v (batch, heads_kv, seq, head_dim), heads % heads_kv == 0."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-2, -1)) * softmax_scale(q.shape[-1])
    visible = dense_mask(mask, q.shape[2], k.shape[2], causal=causal, device=q.device)
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    weights = torch.softmax(scores.float() if q.dtype != torch.float64 else scores, dim=-1).to(q.dtype)
    return weights @ v


def make_inputs(batch, heads, heads_kv, seq, head_dim, dtype, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shapes = [(batch, heads, seq, head_dim), (batch, heads_kv, seq, head_dim), (batch, heads_kv, seq, head_dim),
              (batch, heads, seq, head_dim)]
    return [torch.randn(s, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype) for s in shapes]


def assert_matches_reference(seq, heads, heads_kv, head_dim, causal, mask, dtype, device, batch=1):
    q, k, v, grad_out = make_inputs(batch, heads, heads_kv, seq, head_dim, dtype, device)
    mine = output_and_grads(lambda *a: attention(*a, causal=causal, mask=mask), q, k, v, grad_out)
    ref = output_and_grads(lambda *a: masked_attention(*a, causal=causal, mask=mask),
                           q.double(), k.double(), v.double(), grad_out.double())
    plain = output_and_grads(lambda *a: masked_attention(*a, causal=causal, mask=mask), q, k, v, grad_out)
    case = f"seq={seq} heads={heads}/{heads_kv} head_dim={head_dim} causal={causal} mask={mask} {dtype}"
    assert_flash_rule(mine, ref, plain, dtype=dtype, device=device, case=case)


# ------------------------------------------------------------------------------------------------
# CPU, Triton interpreter: fp32 against float64
# ------------------------------------------------------------------------------------------------

CPU_CASES = [
    # (seq, heads, heads_kv, head_dim, causal, mask): every mask kind with causal on and off, GQA ratios
    # 1, 2, 3, 4 and MQA spread over them; lengths that end in partial blocks of every kernel's tiles
    (1, 2, 1, 16, False, sliding_window(1)),
    (1, 2, 2, 16, True, document([1])),
    (70, 4, 2, 16, False, sliding_window(1)),
    (70, 4, 1, 16, True, sliding_window(1)),
    (53, 2, 2, 16, False, sliding_window(2)),
    (53, 8, 2, 16, True, sliding_window(2)),
    (70, 3, 1, 24, False, sliding_window(7)),  # head_dim 24 runs padded to 32
    (70, 4, 4, 16, True, sliding_window(17)),
    (45, 4, 2, 16, False, sliding_window(1000)),  # wider than the sequence: no mask at all
    (45, 2, 1, 16, True, sliding_window(45)),  # as wide as the sequence: plain causal
    (70, 4, 2, 16, False, document([1, 30, 1, 1, 37])),
    (70, 4, 2, 16, True, document([1, 30, 1, 1, 37])),
    (33, 8, 2, 16, False, document([1] * 33)),  # every query sees only its own key
    (33, 2, 1, 16, True, document([1] * 33)),
    (64, 2, 2, 16, False, document([64])),  # one document: no mask at all
    (64, 4, 1, 16, True, document([64])),
    (69, 4, 1, 16, False, document([16, 16, 5, 32])),  # boundaries on and off the tile edges
    (69, 6, 3, 16, True, document([16, 16, 5, 32])),
    # GQA and MQA without a mask spec
    (37, 4, 2, 16, False, None),
    (37, 8, 2, 16, True, None),
    (41, 4, 1, 16, False, None),
    (29, 3, 3, 16, True, None),
]


def _case_id(case):
    seq, heads, heads_kv, head_dim, causal, mask = case
    label = "none" if mask is None else mask.label().replace(":", "")
    if getattr(mask, "lengths", None):
        label += "-" + "_".join(map(str, mask.lengths[:5]))
    return f"s{seq}-h{heads}kv{heads_kv}-d{head_dim}-{'causal' if causal else 'full'}-{label}"


@needs_interpreter
@pytest.mark.parametrize("case", CPU_CASES, ids=[_case_id(c) for c in CPU_CASES])
def test_fp32_masks_and_gqa_match_reference(case):
    seq, heads, heads_kv, head_dim, causal, mask = case
    assert_matches_reference(seq, heads, heads_kv, head_dim, causal, mask, torch.float32, "cpu")


@st.composite
def masked_cases(draw):
    """A length, a GQA shape and a mask spec that fits it (windows up to past the sequence; documents of
    any lengths, 1 included)."""
    seq = draw(st.integers(1, 70))
    heads_kv = draw(st.integers(1, 2))
    heads = heads_kv * draw(st.sampled_from([1, 2, 3, 4]))
    kind = draw(st.sampled_from(["none", "sliding_window", "document"]))
    if kind == "sliding_window":
        mask = sliding_window(draw(st.integers(1, seq + 8)))
    elif kind == "document":
        cuts = draw(st.sets(st.integers(1, seq - 1), max_size=6)) if seq > 1 else set()
        bounds = [0, *sorted(cuts), seq]
        mask = document([b - a for a, b in zip(bounds, bounds[1:])])
    else:
        mask = None
    return seq, heads, heads_kv, draw(st.sampled_from([16, 24])), draw(st.booleans()), mask


@needs_interpreter
@given(case=masked_cases())
def test_fp32_drawn_masks_and_gqa_match_reference(case):
    seq, heads, heads_kv, head_dim, causal, mask = case
    assert_matches_reference(seq, heads, heads_kv, head_dim, causal, mask, torch.float32, "cpu")


@needs_interpreter
@pytest.mark.parametrize(("causal", "mask"), [(False, sliding_window(3)), (True, document([5, 1, 20, 1, 10]))])
def test_fp16_masks_and_gqa_match_reference(causal, mask):
    assert_matches_reference(37, 4, 2, 32, causal, mask, torch.float16, "cpu", batch=2)


@needs_interpreter
def test_batch_and_non_contiguous_gqa_inputs():
    """Strides, not copies: (batch, seq, heads, head_dim) layouts viewed as (batch, heads, seq, head_dim)."""
    q, k, v, grad_out = make_inputs(2, 4, 2, 41, 16, torch.float32, "cpu")
    q_t, k_t, v_t = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not k_t.is_contiguous()
    mask = document([20, 1, 20])
    mine = output_and_grads(lambda *a: attention(*a, causal=True, mask=mask), q_t, k_t, v_t, grad_out)
    ref = output_and_grads(lambda *a: masked_attention(*a, causal=True, mask=mask), q.double(), k.double(),
                           v.double(), grad_out.double())
    for name, m, r in zip(NAMES, mine, ref):
        assert rel_err(m, r) < 1e-5, f"{name} wrong for non-contiguous GQA inputs: rel err {rel_err(m, r):.2e}"


@needs_interpreter
def test_gqa_saves_inputs_output_and_lse_only():
    """dK/dV of a k/v head are summed inside the kernel: nothing of q's head count is kept for k or v."""
    q, k, v, _ = make_inputs(1, 4, 1, 23, 16, torch.float32, "cpu")
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = attention(q, k, v, causal=False, mask=sliding_window(4))
    shapes = [tuple(t.shape) for t in saved]
    assert len(saved) == 5 and shapes[:3] == [(1, 4, 23, 16), (1, 1, 23, 16), (1, 1, 23, 16)], (
        f"expected q, k (1 head), v (1 head), O and the LSE saved, got {shapes}")
    assert any(s.data_ptr() == out.data_ptr() for s in saved), f"O is not among the saved tensors {shapes}"


# ------------------------------------------------------------------------------------------------
# skipping: blocks that no query of a tile sees are never loaded
# ------------------------------------------------------------------------------------------------


def _tiles(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def clean_positions(visible: torch.Tensor, poisoned: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which outputs a kernel that skips invisible blocks leaves free of NaN planted in k and v at the
    ``poisoned`` key positions, given the interpreter's tiles; a kernel that loads every block and masks
    poisons them all (0 * NaN is NaN in p @ v). Block by block, as the kernels work: a program loads a
    block when one of its rows sees one of the block's columns, and then every row of it takes the NaN."""
    n = visible.shape[0]

    def loads_poison(rows: range, size: int) -> bool:
        return any(visible[rows.start:rows.stop, b.start:b.stop].any() and poisoned[b.start:b.stop].any()
                   for b in _tiles(n, size))

    bm, bn = tf._INTERPRETER_TILE["fwd"][:2]
    out_ok = torch.zeros(n, dtype=torch.bool)
    for rows in _tiles(n, bm):
        out_ok[rows.start:rows.stop] = not loads_poison(rows, bn)
    bm2, bn2 = tf._INTERPRETER_TILE["dq"][:2]
    dq_ok = out_ok.clone()  # dQ of a row needs its own O (delta, LSE) clean
    for rows in _tiles(n, bm2):
        if loads_poison(rows, bn2):
            dq_ok[rows.start:rows.stop] = False
    bm1, bn1 = tf._INTERPRETER_TILE["dkdv"][:2]
    dkdv_ok = ~poisoned
    for keys in _tiles(n, bn1):
        # every query block the key block's program visits must have clean rows (LSE and delta)
        for rows in _tiles(n, bm1):
            if visible[rows.start:rows.stop, keys.start:keys.stop].any() and not out_ok[rows.start:rows.stop].all():
                dkdv_ok[keys.start:keys.stop] = False
    return {"out": out_ok, "dq": dq_ok, "dk": dkdv_ok, "dv": dkdv_ok}


NAN_CASES = [
    # (causal, mask, first poisoned key, whether some dK/dV stay clean): NaN in k and v from that key on.
    # Causal alone leaves no dK/dV clean: every key block is seen by the last queries, whose O took the NaN
    pytest.param(False, document([64, 32]), 64, True, id="document-full"),
    pytest.param(True, document([64, 32]), 64, True, id="document-causal"),
    pytest.param(False, sliding_window(5), 80, True, id="window-full"),
    pytest.param(True, sliding_window(9), 64, True, id="window-causal"),
    pytest.param(True, None, 80, False, id="causal"),
]


@needs_interpreter
@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize(("causal", "mask", "poison_from", "dkdv_clean"), NAN_CASES)
def test_blocks_no_query_of_a_tile_sees_are_skipped(causal, mask, poison_from, dkdv_clean):
    """NaN planted in k and v stays out of every output whose program has no visible pair in the
    poisoned blocks: those blocks were never loaded. The rest match the float64 reference."""
    seq, heads, heads_kv = 96, 4, 2
    q, k, v, grad_out = make_inputs(1, heads, heads_kv, seq, 16, torch.float32, "cpu")
    poisoned = torch.arange(seq) >= poison_from
    k_nan, v_nan = k.clone(), v.clone()
    k_nan[:, :, poisoned], v_nan[:, :, poisoned] = float("nan"), float("nan")
    mine = dict(zip(NAMES, output_and_grads(lambda *a: attention(*a, causal=causal, mask=mask),
                                            q, k_nan, v_nan, grad_out)))
    ref = dict(zip(NAMES, output_and_grads(lambda *a: masked_attention(*a, causal=causal, mask=mask),
                                           q.double(), k.double(), v.double(), grad_out.double())))
    ok = clean_positions(dense_mask(mask, seq, seq, causal=causal), poisoned)
    assert ok["out"].any() and ok["dq"].any(), "the case leaves no output clean: it tests nothing"
    assert ok["dk"].any() == dkdv_clean, f"expected dK/dV clean somewhere: {dkdv_clean}"
    assert not mine["out"].isfinite().all(), "the NaN did not reach the rows that see it: the case tests nothing"
    for name in NAMES if dkdv_clean else ("out", "dq"):
        m, r = mine[name][:, :, ok[name]], ref[name][:, :, ok[name]]
        assert m.isfinite().all(), (
            f"{name}: NaN planted in keys >= {poison_from} reached positions {ok[name].nonzero().flatten().tolist()} "
            f"whose programs should never load those blocks (mask={mask}, causal={causal})")
        assert rel_err(m, r) < 1e-5, f"{name} wrong at the positions clear of the poison: {rel_err(m, r):.2e}"


# ------------------------------------------------------------------------------------------------
# refused inputs (no kernel runs) and the registration
# ------------------------------------------------------------------------------------------------

BAD_INPUTS = [
    # (q heads, k heads, v heads, seq_q, seq_k, mask, exception, message)
    pytest.param(6, 4, 4, 8, 8, None, ValueError, r"q's heads \(6\) must be a multiple of k's and v's heads_kv \(4\)",
                 id="heads-not-a-multiple"),
    pytest.param(4, 2, 1, 8, 8, None, ValueError, r"k and v must have the same heads_kv, got 2 and 1",
                 id="k-v-heads-differ"),
    pytest.param(4, 2, 2, 8, 8, prefix_lm(3), ValueError,
                 r"does not support prefix_lm masks; its masks: document, sliding_window", id="prefix-lm"),
    pytest.param(2, 2, 2, 8, 9, sliding_window(3), ValueError, r"masks need seq_q == seq_k", id="seq-mismatch"),
    pytest.param(2, 1, 1, 8, 8, document([3, 4]), ValueError, r"document lengths sum to 7, not the sequence length 8",
                 id="document-lengths"),
    pytest.param(2, 1, 1, 8, 8, "causal", TypeError, r"mask must be None or a spec", id="mask-not-a-spec"),
]


@pytest.mark.skipif(tf.triton is None, reason="needs Triton")
@pytest.mark.parametrize(("heads", "heads_k", "heads_v", "seq_q", "seq_k", "mask", "exc", "match"), BAD_INPUTS)
def test_bad_inputs_are_refused_naming_what_is_allowed(heads, heads_k, heads_v, seq_q, seq_k, mask, exc, match):
    q = torch.randn(1, heads, seq_q, 16)
    k, v = torch.randn(1, heads_k, seq_k, 16), torch.randn(1, heads_v, seq_k, 16)
    with pytest.raises(exc, match=match):
        attention(q, k, v, causal=False, mask=mask)


def test_registration_declares_masks_and_gqa_where_the_registry_knows_them():
    """The Variant fields ``masks`` and ``gqa`` are passed only when the registry has them; then they
    hold what the kernels run."""
    fields = {f.name for f in dataclasses.fields(Variant)}
    if "masks" in fields:
        assert VARIANT.masks == frozenset({"sliding_window", "document"}), VARIANT.masks
    if "gqa" in fields:
        assert VARIANT.gqa is True
    assert tf.SUPPORTED_MASKS == frozenset({"sliding_window", "document"})


@pytest.mark.skipif(tf.triton is None, reason="needs Triton")
def test_precompile_plans_each_mask_kind_and_refuses_unknown_ones(monkeypatch):
    shared_memory = 227 * 1024
    kinds = ("none", "sliding_window", "document")
    jobs = tf._compile_jobs((torch.float16,), (64,), (False, True), (False,), shared_memory, kinds)
    unmasked = tf._compile_jobs((torch.float16,), (64,), (False, True), (False,), shared_memory)
    tuned = [j for j in unmasked if j[0] != "preprocess"]
    assert len(jobs) == len(unmasked) + 2 * len(tuned), "each mask kind should add one variant per tuned job"
    for kind in kinds:
        assert {j[:6] for j in tuned} == {j[:6] for j in jobs if j[6] == kind and j[0] != "preprocess"}, kind
    monkeypatch.setattr(tf, "_INTERPRET", True)
    assert tf.precompile(64, "fp16", masks="document").skipped  # checked, then nothing to compile here
    with pytest.raises(ValueError, match="masks must be among 'none', 'sliding_window', 'document', got 'prefix_lm'"):
        tf.precompile(64, masks=["none", "prefix_lm"])


@pytest.mark.skipif(tf.triton is None, reason="needs Triton")
@pytest.mark.parametrize("mask", ["none", "sliding_window", "document"])
@pytest.mark.parametrize("kernel", ["preprocess", "fwd", "dkdv", "dq"])
def test_precompile_launch_arguments_fit_the_kernels(kernel, mask):
    """What precompile hands each kernel binds to its signature, every argument once (checked without a
    GPU: the launch itself only runs there)."""
    import inspect

    tile = None if kernel == "preprocess" else tf._TILES[(kernel, 2)][-1]
    job = (kernel, "float16", 59, True, "tf32", tile, "none" if kernel == "preprocess" else mask)
    fn, args, meta = tf._compile_launch(job, device="cpu")
    launch_options = {"grid", "num_warps", "num_stages"}
    bound = inspect.signature(fn.fn).bind(*args, **{k: v for k, v in meta.items() if k not in launch_options})
    assert list(bound.arguments) == list(fn.arg_names), f"{kernel}: arguments do not match the kernel's parameters"


@pytest.mark.skipif(tf.triton is None, reason="needs Triton")
def test_autotune_candidates_checks_gqa_and_mask_before_needing_a_gpu(monkeypatch):
    monkeypatch.setattr(tf, "_INTERPRET", True)
    with pytest.raises(ValueError, match=r"heads \(4\) to be a multiple"):
        tf.autotune_candidates("fp16", 64, 128, heads=4, heads_kv=3)
    with pytest.raises(ValueError, match="not prefix_lm"):
        tf.autotune_candidates("fp16", 64, 128, mask=prefix_lm(3))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        tf.autotune_candidates("fp16", 64, 128, heads=4, heads_kv=2, mask=sliding_window(64))


# ------------------------------------------------------------------------------------------------
# GPU: the same cases at lengths that cross several 128-blocks, in every dtype
# ------------------------------------------------------------------------------------------------

GPU_DTYPES = [torch.float16, torch.bfloat16, torch.float32]
GPU_CASES = [
    # (seq, heads, heads_kv, head_dim, causal, mask)
    (1025, 8, 2, 64, False, sliding_window(1)),
    (1025, 8, 1, 128, True, sliding_window(2)),
    (700, 4, 4, 64, False, sliding_window(129)),
    (1025, 8, 2, 128, True, sliding_window(300)),
    (513, 4, 2, 59, False, sliding_window(4096)),
    (1025, 8, 2, 64, False, document([1, 300, 1, 1, 200, 522])),
    (1025, 8, 4, 128, True, document([1, 300, 1, 1, 200, 522])),
    (640, 4, 1, 64, True, document([128, 128, 64, 320])),
    (700, 4, 2, 64, False, document([1] * 700)),
    (1025, 8, 2, 128, False, None),
    (1025, 8, 1, 64, True, None),
]


def gpu_cases():
    for dtype in GPU_DTYPES:
        for case in GPU_CASES:
            yield pytest.param(dtype, case, id=f"{str(dtype).removeprefix('torch.')}-{_case_id(case)}")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(("dtype", "case"), list(gpu_cases()))
def test_gpu_masks_and_gqa_match_reference(dtype, case):
    seq, heads, heads_kv, head_dim, causal, mask = case
    assert_matches_reference(seq, heads, heads_kv, head_dim, causal, mask, dtype, "cuda", batch=2)


@pytest.mark.gpu
@needs_gpu
def test_gpu_gqa_matches_sdpa_enable_gqa():
    """The head mapping is torch's: F.scaled_dot_product_attention(..., enable_gqa=True)."""
    q, k, v, _ = make_inputs(2, 8, 2, 1025, 64, torch.bfloat16, "cuda")
    mine = attention(q, k, v, causal=True, mask=None)
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert rel_err(mine, theirs) < 1e-2, f"GQA differs from sdpa's enable_gqa: {rel_err(mine, theirs):.2e}"


@pytest.mark.gpu
@needs_gpu
def test_gpu_precompile_compiles_the_masked_kernels():
    result = tf.precompile([64], [torch.float16], causal=[True], masks=["sliding_window", "document"], workers=2)
    assert result.skipped is None and result.failed == () and result.compiled > 0, result
    assert_matches_reference(513, 4, 2, 64, True, sliding_window(100), torch.float16, "cuda")
