"""Masks and grouped-query attention: every variant against the float64 reference, what each keeps for
backward, and the grid's mask and heads_kv axes."""

from __future__ import annotations

import pytest
import torch
from helpers import GRAD_ERROR_MULTIPLE, OUT_ERROR_MULTIPLE, check_close, problem_scale
from hypothesis import given, settings
from hypothesis import strategies as st

from attention_impls import VARIANTS, masks
from attention_impls.reference import plain_yardstick, reference
from attnbench.census import census_of_attention
from attnbench.grid import AXES, PRESETS, Cell, cell_key, expand, parse_cell_key, parse_masks

#: variants measured here with many draws; ``compiled`` compiles a graph per draw (seconds each on CPU), so
#: it gets the edge cases below only; triton_flash runs only in its interpreter on CPU (too slow here).
CHEAP = [name for name, v in VARIANTS.items()
         if name not in ("compiled", "triton_flash") and v.unavailable_reason("cpu", torch.float64) is None]
SEQ_LENS = [1, 2, 3, 7, 17, 31, 64, 97]


@st.composite
def mask_for(draw, seq_len: int, kinds):
    """None or a valid spec for ``seq_len`` among ``kinds``, edges drawn often: a window of 1 or past the
    sequence, documents of length 1, a prefix of 0 or the whole sequence."""
    kind = draw(st.sampled_from([None, *sorted(kinds)]))
    if kind == "sliding_window":
        return masks.sliding_window(draw(st.sampled_from([1, 2, 5, seq_len, seq_len + 3])))
    if kind == "document":
        cuts = draw(st.sets(st.integers(1, seq_len - 1), max_size=6)) if seq_len > 1 else set()
        if seq_len > 2 and draw(st.booleans()):
            cuts |= {1, 2}  # a document of length 1
        bounds = [0, *sorted(cuts), seq_len]
        return masks.document([b - a for a, b in zip(bounds, bounds[1:])])
    if kind == "prefix_lm":
        return masks.prefix_lm(draw(st.sampled_from([0, seq_len, seq_len // 2, 1 if seq_len > 1 else 0])))
    return None


def qkv(batch, heads, heads_kv, seq_len, head_dim, dtype, generator, logit_scale=1.0):
    def draw(h, mult=1.0):
        return (torch.randn(batch, h, seq_len, head_dim, generator=generator) * mult).to(dtype).requires_grad_()

    return draw(heads, logit_scale), draw(heads_kv), draw(heads_kv)


def fwd_bwd(fn, q, k, v, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), tuple(t.grad for t in leaves)


def check_against_reference(name, q, k, v, grad_out, causal, mask):
    variant = VARIANTS[name]
    ref = fwd_bwd(lambda *a: reference(*a, causal=causal, mask=mask)[0],
                  *(t.detach().double() for t in (q, k, v)), grad_out.double())
    plain = fwd_bwd(lambda *a: plain_yardstick(variant, causal, mask)(*a, causal=causal, mask=mask), q, k, v, grad_out)
    got = fwd_bwd(lambda *a: variant.fn(*a, causal=causal, mask=mask), q, k, v, grad_out)
    assert got[0].shape == q.shape and got[0].dtype == q.dtype
    assert got[1][1].shape == k.shape, f"{name}: dk must have k's heads_kv shape {tuple(k.shape)}"
    scale = problem_scale(q, k, v, grad_out, ref[0], *ref[1])
    what = f"{name} causal={causal} mask={mask} heads {q.shape[1]}/{k.shape[1]}"
    check_close(f"{what} out", got[0], ref[0], plain[0], OUT_ERROR_MULTIPLE, scale)
    for grad_name, g, r, p in zip(("dq", "dk", "dv"), got[1], ref[1], plain[1], strict=True):
        check_close(f"{what} {grad_name}", g, r, p, GRAD_ERROR_MULTIPLE, scale)


@pytest.mark.parametrize("name", CHEAP)
@given(data=st.data(), seq_len=st.sampled_from(SEQ_LENS), heads_kv=st.integers(1, 2), group=st.sampled_from([1, 2, 3]),
       head_dim=st.sampled_from([8, 16, 59]), causal=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]),
       logit_scale=st.sampled_from([1.0, 8.0]), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=15)
def test_masked_gqa_attention_matches_the_reference(name, data, seq_len, heads_kv, group, head_dim, causal, dtype,
                                                    logit_scale, seed):
    variant = VARIANTS[name]
    if not variant.gqa:
        group = 1
    mask = data.draw(mask_for(seq_len, variant.masks))
    g = torch.Generator().manual_seed(seed)
    q, k, v = qkv(1, heads_kv * group, heads_kv, seq_len, head_dim, dtype, g, logit_scale)
    grad_out = torch.randn(q.shape, generator=g).to(dtype)
    check_against_reference(name, q, k, v, grad_out, causal, mask)


EDGE_CASES = [  # (causal, mask, heads, heads_kv, seq_len)
    (True, masks.sliding_window(1), 4, 2, 17),
    (False, masks.document((1, 5, 1, 10)), 2, 2, 17),
    (False, masks.prefix_lm(0), 3, 1, 9),
    (False, masks.prefix_lm(9), 2, 1, 9),
    (True, None, 4, 1, 13),
]


@pytest.mark.parametrize(("causal", "mask", "heads", "heads_kv", "seq_len"), EDGE_CASES)
def test_compiled_matches_the_reference_at_the_edges(causal, mask, heads, heads_kv, seq_len):
    g = torch.Generator().manual_seed(seq_len)
    q, k, v = qkv(2, heads, heads_kv, seq_len, 16, torch.float32, g)
    check_against_reference("compiled", q, k, v, torch.randn(q.shape, generator=g), causal, mask)


def test_window_of_one_is_attention_to_oneself_only():
    """Each query sees only its own key: the output is v at the same position (its k/v head's, under GQA)."""
    q, k, v = qkv(1, 4, 2, 11, 8, torch.float64, torch.Generator().manual_seed(1))
    for name in ("naive", "tiled", "flex", "sdpa_math"):
        out = VARIANTS[name].fn(q, k, v, mask=masks.sliding_window(1))
        torch.testing.assert_close(out, v.detach().repeat_interleave(2, dim=1), msg=f"{name}: window 1")


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_tiled_skips_fully_masked_blocks_without_changing_the_result(block_size, monkeypatch):
    from attention_impls import tiled

    q, k, v = qkv(1, 2, 1, 40, 8, torch.float64, torch.Generator().manual_seed(2))
    mask = masks.document((3, 30, 7))
    seen = []
    original = tiled._Masking.blocks

    def counting(self, size):
        for block in original(self, size):
            seen.append(block[0])
            yield block

    monkeypatch.setattr(tiled._Masking, "blocks", counting)
    out = tiled.tiled_attention(q, k, v, mask=mask, block_size=block_size)
    torch.testing.assert_close(out, reference(q, k, v, mask=mask)[0].to(out.dtype))
    if block_size == 1:  # every key block of one key is seen by someone: nothing to skip
        assert len(seen) == 40
    sw = masks.sliding_window(2)
    seen.clear()
    tiled.tiled_attention(q, k, v, causal=True, mask=sw, block_size=4)
    # each block of 4 keys is seen by some query: none skipped; but per query row only 2 keys are visible
    assert len(seen) == 10


def test_tiled_skips_the_blocks_no_query_sees():
    from attention_impls import tiled

    masking = tiled._Masking(32, 32, 1, False, masks.document((16, 16)), "cpu")
    # queries of document 0 see keys 0..15 only: with one query row per test, look at the block list
    rows_doc0 = tiled._Masking(32, 32, 1, False, masks.document((16, 16)), "cpu")
    rows_doc0.positions = rows_doc0.positions[:16]
    assert [s for s, _, _ in rows_doc0.blocks(8)] == [0, 8], "keys 16..31 are hidden from document 0's queries"
    assert [s for s, _, _ in masking.blocks(8)] == [0, 8, 16, 24]


# -- what autograd keeps, with masks and GQA


def mask_census_cases():
    for name, variant in VARIANTS.items():
        if variant.unavailable_reason("cpu", torch.float32) is not None or name == "triton_flash":
            continue
        for kind, spec in (("sliding_window", masks.sliding_window(8)), ("document", masks.document((20, 44))),
                           ("prefix_lm", masks.prefix_lm(16))):
            if kind in variant.masks:
                yield pytest.param(name, spec, id=f"{name}-{kind}")
        if variant.gqa:
            yield pytest.param(name, None, id=f"{name}-gqa")


@pytest.mark.parametrize(("name", "mask"), list(mask_census_cases()))
def test_declared_nxn_matches_census_with_masks_and_gqa(name, mask):
    variant = VARIANTS[name]
    heads_kv = 1 if mask is None else 4  # MQA for the GQA case; MHA with the masks
    q, k, v = qkv(2, 4, heads_kv, 64, 32, torch.float32, torch.Generator().manual_seed(0))
    census = census_of_attention(variant.fn, q, k, v, mask=mask)
    assert census.nxn_count == variant.nxn_saved(False, mask), (
        f"{name} declares {variant.nxn_saved(False, mask)} n×n tensors saved with mask {mask}, heads_kv "
        f"{heads_kv}, but autograd kept {census.nxn_count}:\n{census.describe()}")


def test_tiled_under_gqa_keeps_the_small_k_and_v():
    q, k, v = qkv(2, 4, 1, 64, 16, torch.float32, torch.Generator().manual_seed(0))
    census = census_of_attention(VARIANTS["tiled"].fn, q, k, v, mask=masks.sliding_window(8))
    shapes = sorted(t.shape for t in census.tensors)
    assert shapes == sorted([q.shape, k.shape, v.shape, q.shape, (2, 4, 64)]), (
        f"tiled must keep q, the un-expanded k and v, O and the LSE:\n{census.describe()}")


# -- the grid


def test_seed_grid_keys_do_not_change():
    cells, _ = expand("cuda", "seed", variants=("naive",))
    assert cells[0].key == "naive-s256-d16-b8-h1-fp32-full"
    old_params = {a: v for a, v in cells[0].params().items() if a not in ("heads_kv", "mask")}
    assert cell_key(old_params) == cells[0].key, "a run saved before heads_kv and mask keeps its keys"


def test_flex_preset():
    preset = PRESETS["flex"]
    cells, left_out = expand("cuda", "flex", variants=("naive",))
    assert {c.seq_len * c.batch for c in cells} == {16384}
    assert {(c.heads, c.head_dim, c.dtype) for c in cells} == {(16, 128, "bf16")}
    assert {c.heads_kv for c in cells} == {16, 4}
    assert {c.mask_label for c in cells} == {"none", "causal", "causal sliding_window:1024", "causal document:8",
                                             "prefix_lm:0.25"}
    assert {c.seq_len for c in cells} == {1024, 2048, 4096, 8192, 16384}
    assert preset.causal_values() == (False, True), "precompile compiles triton_flash for both"
    for c in cells:
        assert parse_cell_key(c.key) == {a: getattr(c, a) for a in AXES}, c.key


def test_cells_a_variant_cannot_do_are_left_out_with_the_reason():
    cells, left_out = expand("cpu", "cpu-small", variants=None, masks=("causal sliding_window:16",),
                             heads=4, heads_kv=(2,), seq_lens=(64,), head_dims=(16,))
    names = {c.variant for c in cells}
    assert "sdpa_flash" not in names and "tiled" in names
    assert "does not support sliding_window masks" in left_out["sdpa_flash (causal sliding_window:16, heads_kv 2)"]


def test_a_masked_cell_counts_only_the_visible_pairs():
    cell = Cell(variant="flex", seq_len=100, head_dim=8, batch=2, heads=4, heads_kv=2, dtype="fp32", causal=True,
                mask="sliding_window:10", device="cpu")
    pairs = masks.visible_pairs(masks.sliding_window(10), 100, 100, causal=True)
    assert pairs == 10 * 100 - 45
    assert cell.forward_flops() == 4 * 2 * 4 * 8 * pairs and cell.backward_flops() == 2.5 * cell.forward_flops()
    causal = Cell(variant="naive", seq_len=100, head_dim=8, batch=2, heads=4, dtype="fp32", causal=True, device="cpu")
    assert causal.forward_flops() == 4 * 2 * 4 * 8 * (100 * 101 // 2)


def test_document_cells_see_the_same_documents_every_time():
    cell = Cell(variant="flex", seq_len=1000, head_dim=8, batch=1, heads=1, dtype="fp32", causal=True,
                mask="document:8", device="cpu")
    assert cell.mask_spec() == cell.mask_spec() and len(cell.mask_spec().lengths) == 8
    assert sum(cell.mask_spec().lengths) == 1000


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(masks=("causal",), causal=(True,)), "give one"),
    (dict(heads=16, heads_kv=(3,)), "heads_kv 3 does not divide heads 16"),
    (dict(masks=("document:300",), seq_lens=(128,)), "1 <= D <= seq_len"),
    (dict(masks=("prefix_lm:1000",), seq_lens=(64,)), r"prefix_lm:P needs 0 <= P <= seq_len \(64\), got 1000"),
])
def test_grid_refuses_axes_that_contradict(kwargs, match):
    with pytest.raises(ValueError, match=match):
        expand("cpu", "cpu-small", **kwargs)


@pytest.mark.parametrize("text", ["window:4", "sliding_window:x", "causal causal", "prefix_lm:1.5", ""])
def test_bad_mask_labels_are_refused_naming_the_forms(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_masks(text)


# -- flex compiled on a GPU (CPU runs FlexAttention's eager path; the kernels Inductor generates run only here)

GPU_FLEX_CASES = [  # (causal, mask, heads_kv): one compile each, every mask kind once, MHA, GQA and MQA
    (False, None, 4),
    (True, masks.sliding_window(64), 1),
    (True, masks.document((3, 97, 1, 99)), 2),
    (False, masks.prefix_lm(50), 4),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex compiles its kernels on CUDA only: needs a CUDA GPU")
@pytest.mark.parametrize(("causal", "mask", "heads_kv"), GPU_FLEX_CASES,
                         ids=["none-kv4", "causal-window64-kv1", "causal-documents-kv2", "prefix50-kv4"])
def test_gpu_flex_matches_the_reference_and_keeps_no_nxn(causal, mask, heads_kv, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    generator = torch.Generator().manual_seed(len(GPU_FLEX_CASES) * heads_kv + causal)
    q, k, v = (t.detach().cuda().requires_grad_() for t in qkv(2, 4, heads_kv, 200, 64, torch.float32, generator))
    grad_out = torch.randn(q.shape, generator=generator).cuda()
    check_against_reference("flex", q, k, v, grad_out, causal, mask)
    census = census_of_attention(VARIANTS["flex"].fn, q, k, v, causal=causal, mask=mask)
    assert census.nxn_count == 0, f"flex kept an n×n tensor on CUDA:\n{census.describe()}"


# -- flex's block-mask cache: keyed by everything the mask depends on


@pytest.mark.parametrize("causal", [False, True])
def test_flex_block_masks_are_keyed_by_both_lengths_and_the_device(causal):
    from attention_impls import flex

    if VARIANTS["flex"].unavailable_reason("cpu", torch.float32):
        pytest.skip(VARIANTS["flex"].unavailable_reason("cpu", torch.float32))
    flex._block_mask.cache_clear()
    shapes = [(64, 2), (2, 64), (64, 64)]
    built = {shape: flex.block_mask_for(*shape, causal, None, "cpu") for shape in shapes}
    for (seq_q, seq_k), block_mask in built.items():
        assert tuple(block_mask.shape[-2:]) == (seq_q, seq_k), f"block mask for {seq_q}x{seq_k}: {block_mask.shape}"
    assert flex._block_mask.cache_info().currsize == len(shapes), "one block mask per (seq_q, seq_k)"
    assert flex.block_mask_for(64, 2, causal, None, torch.device("cpu")) is built[(64, 2)], "a second call is a hit"
    window = flex.block_mask_for(64, 64, causal, masks.sliding_window(4), "cpu")
    assert window is not built[(64, 64)] and flex._block_mask.cache_info().currsize == len(shapes) + 1


@pytest.mark.parametrize(("seq_q", "seq_k"), [(64, 2), (2, 64), (17, 33)])
@pytest.mark.parametrize("causal", [False, True])
def test_flex_with_unequal_lengths_matches_the_reference(seq_q, seq_k, causal):
    """A block mask built for one shape used for another was refused on CUDA (block_mask was created for
    64x64 but got kv_len=2); each (seq_q, seq_k) now has its own."""
    if VARIANTS["flex"].unavailable_reason("cpu", torch.float32):
        pytest.skip(VARIANTS["flex"].unavailable_reason("cpu", torch.float32))
    generator = torch.Generator().manual_seed(seq_q * 100 + seq_k)
    q = torch.randn(2, 2, seq_q, 16, generator=generator).requires_grad_()
    k, v = (torch.randn(2, 2, seq_k, 16, generator=generator).requires_grad_() for _ in range(2))
    grad_out = torch.randn(q.shape, generator=generator)
    check_against_reference("flex", q, k, v, grad_out, causal, None)


GPU_FLEX_SHAPES = [  # (seq_q, seq_k, head_dim, dtype, causal): unequal lengths, half precision, odd head_dims
    (64, 2, 16, torch.float16, True),
    (2, 64, 64, torch.bfloat16, True),
    (100, 37, 59, torch.bfloat16, False),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex compiles its kernels on CUDA only: needs a CUDA GPU")
@pytest.mark.parametrize(("seq_q", "seq_k", "head_dim", "dtype", "causal"), GPU_FLEX_SHAPES,
                         ids=["64x2-d16-fp16-causal", "2x64-d64-bf16-causal", "100x37-d59-bf16"])
def test_gpu_flex_with_unequal_lengths_matches_the_reference(seq_q, seq_k, head_dim, dtype, causal):
    generator = torch.Generator().manual_seed(seq_q + seq_k + head_dim)
    q = torch.randn(2, 2, seq_q, head_dim, generator=generator).to("cuda", dtype).requires_grad_()
    k, v = (torch.randn(2, 2, seq_k, head_dim, generator=generator).to("cuda", dtype).requires_grad_()
            for _ in range(2))
    grad_out = torch.randn(q.shape, generator=generator).to("cuda", dtype)
    check_against_reference("flex", q, k, v, grad_out, causal, None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_flex_refuses_a_head_dim_below_16_naming_the_limit():
    q = k = v = torch.empty(1, 1, 8, 8, device="cuda")
    reason = VARIANTS["flex"].shape_reason(q, k, v)
    assert reason is not None and "head_dim >= 16" in reason and "got 8" in reason, reason
    with pytest.raises(ValueError, match="head_dim >= 16"):
        VARIANTS["flex"].fn(q, k, v)
