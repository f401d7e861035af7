"""What each variant keeps for backward, measured, against what it declares."""

from __future__ import annotations

import pytest
import torch
from helpers import random_qkv

from attention_impls import VARIANTS
from attnbench.census import census_of_attention, take_census
from conftest import available_devices


def census_cases():
    for device in available_devices():
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        for name, variant in VARIANTS.items():
            reason = variant.unavailable_reason(device, dtype)
            for causal in (False, True):
                yield pytest.param(
                    name,
                    device,
                    dtype,
                    causal,
                    id=f"{name}-{device}-{'causal' if causal else 'full'}",
                    marks=([pytest.mark.skip(reason=reason)] if reason else [])
                    + ([pytest.mark.gpu] if device == "cuda" else []),  # `pytest -m gpu` runs it
                )


@pytest.mark.parametrize(("name", "device", "dtype", "causal"), list(census_cases()))
def test_declared_nxn_matches_census(name, device, dtype, causal):
    variant = VARIANTS[name]
    # square: SDPA's fused backends refuse causal with seq_q != seq_k on CUDA
    q, k, v = random_qkv(2, 2, 64, 64, 32, dtype=dtype, device=device)
    census = census_of_attention(variant.fn, q, k, v, causal=causal)
    assert census.nxn_count == variant.nxn_saved(causal), (
        f"{name} declares {variant.nxn_saved(causal)} n×n tensors saved for backward "
        f"(causal={causal}) but autograd kept {census.nxn_count}:\n{census.describe()}"
    )


def test_weights_only_keeps_exactly_one_nxn_tensor_and_the_inputs():
    q, k, v = random_qkv(1, 2, 33, 40, 16, dtype=torch.float32, device="cpu")
    for causal in (False, True):
        census = census_of_attention(VARIANTS["weights_only"].fn, q, k, v, causal=causal)
        shapes = sorted(t.shape for t in census.tensors)
        assert census.nxn_count == 1, f"weights_only must keep exactly the weights:\n{census.describe()}"
        assert shapes == sorted([q.shape, k.shape, v.shape, (1, 2, 33, 40)]), census.describe()


@pytest.mark.parametrize("name", ["tiled", "sdpa_flash"])
def test_flash_style_variants_keep_output_and_fp32_lse_only(name):
    q, k, v = random_qkv(2, 1, 70, 70, 16, dtype=torch.float32, device="cpu")
    census = census_of_attention(VARIANTS[name].fn, q, k, v)
    row_tensors = [t for t in census.tensors if t.shape == (2, 1, 70)]
    assert census.nxn_count == 0, census.describe()
    assert len(row_tensors) == 1 and row_tensors[0].dtype == torch.float32, census.describe()
    # q, k, v, out (each 2*70*16 fp32) and the lse: nothing else
    assert census.saved_bytes == 4 * 2 * 70 * 16 * 4 + 2 * 70 * 4, census.describe()


def test_census_counts_a_storage_once_however_many_views_are_saved():
    x = torch.randn(8, 8, requires_grad=True)

    def forward():
        y = x.exp()  # exp saves its output y
        return (y * y.t()).sum() + (y.view(64) * 2.0).sum()  # mul saves y and y.t(): same storage

    census, out = take_census(forward, nxn_elements=64)
    assert census.nxn_count == 1, census.describe()
    assert census.saved_bytes == 64 * 4, census.describe()
    out.backward()  # the graph still holds what was counted
    y = x.detach().exp()
    torch.testing.assert_close(x.grad, (2 * y.t() + 2) * y)


def test_census_rejects_a_non_positive_threshold():
    with pytest.raises(ValueError, match="nxn_elements must be positive"):
        take_census(lambda: torch.ones(1), nxn_elements=0)


def test_census_counts_the_shards_a_dtensor_wraps():
    """context_parallel's SDPA saves DTensors: wrappers without storage of their own. The census counts the
    local shards they wrap (this process's memory) instead of failing on the wrapper's data pointer."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        x, y = (DTensor.from_local(torch.randn(4, 8, requires_grad=True), mesh, [Shard(0)]) for _ in range(2))
        census, out = take_census(lambda: (x * y).exp(), nxn_elements=32)
    finally:
        dist.destroy_process_group()
    assert isinstance(out, DTensor)
    # mul saves both operands, exp its result: three local 4 × 8 fp32 shards, each of 32 elements
    assert [(t.shape, t.bytes, t.is_nxn) for t in census.tensors] == [((4, 8), 128, True)] * 3, census.describe()
