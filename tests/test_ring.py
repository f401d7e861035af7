"""Ring attention (attention_impls.ring) across gloo process groups of 2 and 4 ranks, against float64.

One pool of worker processes per world size runs every case (tests/ring_worker.py); hypothesis draws the
cases here, in the parent, and each rank reports its errors and what autograd saved on it.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ring_worker import TENSORS, RingPool

from attention_impls.ring import (
    BLOCK_OPS,
    LAYOUTS,
    chunk_bounds,
    chunk_count,
    gather_sequence,
    get_block_op,
    local_seq_len,
    ring_attention,
    shard_sequence,
)

WORLD_SIZES = (2, 4)
#: (block, dtype) pairs the CPU can run exactly or in fp32: the reference rule below judges each.
CPU_BLOCKS = (("math", "float64"), ("sdpa_flash", "float64"), ("sdpa_flash", "float32"), ("math", "float32"))
#: float64 results must match the float64 reference to round-off of the sums.
FP64_TOLERANCE = 1e-10
#: lower precisions: no worse than this many times the plain computation's error in the same dtype ...
PLAIN_FACTOR = 4
#: ... plus this floor, relative to the reference's largest value (an exact plain result must not fail all).
RELATIVE_FLOOR = {"float32": 2e-5}
#: cases per world size (each one is a few milliseconds on every rank).
CASES_PER_WORLD = 30


@pytest.fixture(scope="module", params=WORLD_SIZES, ids=lambda w: f"world{w}")
def pool(request, tmp_path_factory):
    pool = RingPool(request.param, str(tmp_path_factory.mktemp("ring") / "init"))
    yield pool
    pool.close()


@st.composite
def cases(draw, world_size: int) -> dict:
    """A valid case: any block the CPU runs, both layouts, causal or not, lengths that split unevenly."""
    block, dtype = draw(st.sampled_from(CPU_BLOCKS))
    layout = draw(st.sampled_from(LAYOUTS))
    chunks = chunk_count(world_size, layout)
    return {
        "block": block, "dtype": dtype, "layout": layout, "causal": draw(st.booleans()),
        "batch": draw(st.integers(1, 2)), "heads": draw(st.integers(1, 2)),
        # from one position per chunk to a few per chunk; most lengths do not divide evenly
        "seq_len": draw(st.integers(chunks, 5 * chunks + 3)),
        "head_dim": draw(st.sampled_from((8, 13, 16))),
        "seed": draw(st.integers(0, 2**31 - 1)), "pass_seq_len": draw(st.booleans()),
    }


def check_case(case: dict, results: list[dict]) -> None:
    """Every rank's shard of out, dq, dk and dv within the tolerance; autograd kept only local tensors."""
    world_size = len(results)
    for rank, result in enumerate(results):
        expected_len = local_seq_len(case["seq_len"], rank, world_size, case["layout"])
        assert result["local_seq_len"] == expected_len, f"rank {rank}: shard length {result['local_seq_len']}"
        for name in TENSORS:
            error = result["errors"][name]
            if case["dtype"] == "float64":
                bound = FP64_TOLERANCE * max(1.0, result["scale"][name])
            else:
                floor = RELATIVE_FLOOR[case["dtype"]] * max(1.0, result["scale"][name])
                bound = PLAIN_FACTOR * result["plain_errors"][name] + floor
            assert error <= bound, (
                f"rank {rank} of {world_size}: {name} is {error:.3g} off the float64 reference, expected at most "
                f"{bound:.3g} (plain {case['dtype']}: {result['plain_errors'][name]:.3g}) in case {case}")
            assert result["dtypes"][name] == f"torch.{case['dtype']}", f"{name} came back as {result['dtypes'][name]}"
        local_bytes = case["batch"] * case["heads"] * expected_len * case["head_dim"] * 8
        for shape, nbytes in result.get("saved", []):
            assert shape[2] == expected_len and nbytes <= local_bytes, (
                f"rank {rank} saved a {shape} tensor ({nbytes} B) for backward; only local tensors "
                f"(seq {expected_len}, at most {local_bytes} B) were expected in case {case}")
        if "saved" in result:
            assert len(result["saved"]) == 5, f"expected q, k, v, out and lse saved, got {result['saved']}"


def test_ring_matches_reference(pool):
    """Hypothesis-drawn cases through one pool of ranks: forward and every gradient against float64."""

    @settings(max_examples=CASES_PER_WORLD, deadline=None, database=None)
    @given(case=cases(pool.world_size))
    def run(case):
        check_case(case, pool.run(case))

    run()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_awkward_lengths(pool, layout):
    """Exactly one position per chunk, and one more than a multiple: the uneven edges of the partition."""
    chunks = chunk_count(pool.world_size, layout)
    for seq_len in (chunks, 3 * chunks + 1, 2 * chunks - 1 + chunks):
        case = {"block": "sdpa_flash", "dtype": "float64", "layout": layout, "causal": True, "batch": 1,
                "heads": 2, "seq_len": seq_len, "head_dim": 16, "seed": seq_len, "pass_seq_len": False}
        check_case(case, pool.run(case))


def test_triton_block_under_the_interpreter(pool):
    """Our Triton kernels as the block op (TRITON_INTERPRET=1 on CPU): zigzag causal, odd length, fp32."""
    if get_block_op("triton_flash").unavailable_reason(torch.device("cpu"), torch.float32) is not None:
        pytest.skip(get_block_op("triton_flash").unavailable_reason(torch.device("cpu"), torch.float32))
    case = {"block": "triton_flash", "dtype": "float32", "layout": "zigzag", "causal": True, "batch": 1,
            "heads": 1, "seq_len": 4 * pool.world_size + 3, "head_dim": 16, "seed": 7, "pass_seq_len": True,
            "census": False}
    check_case(case, pool.run(case))


# -- the partition, in one process


@given(world_size=st.integers(1, 8), layout=st.sampled_from(LAYOUTS), extra=st.integers(0, 40))
def test_shard_then_gather_is_the_identity(world_size, layout, extra):
    seq_len = chunk_count(world_size, layout) + extra
    x = torch.randn(1, 2, seq_len, 3)
    pieces = [shard_sequence(x, rank, world_size, layout=layout) for rank in range(world_size)]
    assert [p.shape[2] for p in pieces] == [local_seq_len(seq_len, r, world_size, layout) for r in range(world_size)]
    assert torch.equal(gather_sequence(pieces, layout=layout), x), "gather_sequence must undo shard_sequence"
    sizes = [end - start for start, end in chunk_bounds(seq_len, chunk_count(world_size, layout))]
    assert max(sizes) - min(sizes) <= 1, f"chunk sizes {sizes} differ by more than one"


def test_zigzag_gives_rank_its_two_mirrored_chunks():
    x = torch.arange(8.0).view(1, 1, 8, 1)
    assert shard_sequence(x, 0, 2, layout="zigzag").flatten().tolist() == [0, 1, 6, 7]
    assert shard_sequence(x, 1, 2, layout="zigzag").flatten().tolist() == [2, 3, 4, 5]


# -- bad input: each refused with the allowed values named


def _qkv(seq_len=8, dtype=torch.float64):
    return [torch.randn(1, 2, seq_len, 8, dtype=dtype) for _ in range(3)]


def test_unknown_block_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown block 'flash3'; allowed: " + ", ".join(BLOCK_OPS)):
        ring_attention(*_qkv(), block="flash3")


def test_unknown_layout_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown layout 'striped'; allowed: contiguous, zigzag"):
        ring_attention(*_qkv(), layout="striped")
    with pytest.raises(ValueError, match="unknown layout"):
        shard_sequence(torch.randn(1, 1, 8, 2), 0, 2, layout="striped")


def test_dtype_a_block_cannot_run():
    with pytest.raises(ValueError, match="block triton_flash: .*float64"):
        ring_attention(*_qkv(dtype=torch.float64), block="triton_flash")


def test_inconsistent_shapes():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="q and k must have one shape"):
        ring_attention(q, k[:, :, :4], v[:, :, :4], block="math")
    with pytest.raises(ValueError, match="k and v must have the same heads_kv"):
        ring_attention(q, k[:, :1], v, block="math")
    with pytest.raises(ValueError, match="q and k must have one shape"):  # GQA: the ring takes q's heads only
        ring_attention(q, k[:, :1], v[:, :1], block="math")


def test_without_a_process_group():
    with pytest.raises(RuntimeError, match="needs torch.distributed initialised"):
        ring_attention(*_qkv(), block="math")


def test_sequence_shorter_than_the_chunks():
    with pytest.raises(ValueError, match="seq_len 3 is shorter than the 4 chunks a zigzag split over 2 ranks"):
        shard_sequence(torch.randn(1, 1, 3, 2), 0, 2, layout="zigzag")


def test_gather_refuses_pieces_of_the_wrong_length():
    with pytest.raises(ValueError, match="rank 0's piece has 5 positions"):
        gather_sequence([torch.randn(1, 1, 5, 2), torch.randn(1, 1, 3, 2)])


@pytest.fixture
def single_rank_group(tmp_path):
    """A one-rank gloo group in this process (and gone after the test)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_one_rank_is_plain_attention(single_rank_group):
    from attention_impls.reference import reference

    q, k, v = (t.requires_grad_() for t in _qkv(seq_len=11))
    out = ring_attention(q, k, v, causal=True, block="math")
    assert torch.allclose(out, reference(q, k, v, causal=True)[0], atol=1e-12), "one rank must be plain attention"


def test_local_length_that_does_not_fit_the_split(single_rank_group):
    with pytest.raises(ValueError, match="rank 0 holds 8 positions; a 9-long contiguous split over 1 ranks"):
        ring_attention(*_qkv(seq_len=8), block="math", seq_len=9)
    with pytest.raises(TypeError, match="seq_len must be an int"):
        ring_attention(*_qkv(seq_len=8), block="math", seq_len=8.0)



# -- the benchmark command, end to end


def test_cp_command_on_two_cpu_ranks(tmp_path):
    """`attnbench cp --nproc 2 --device cpu` starts torchrun, measures a tiny grid with gloo, saves a run that
    attnbench.record.load reads: every ring cell measured on two ranks, with its exchange and efficiency facts."""
    import subprocess
    import sys

    from attnbench.record import load

    run_path = tmp_path / "run.json"
    command = [sys.executable, "-m", "attnbench", "cp", "--nproc", "2", "--device", "cpu", "--seq-lens", "37",
               "--heads", "2", "--head-dim", "16", "--dtype", "fp32", "--blocks", "sdpa_flash", "--warmup", "1",
               "--rounds", "2", "-o", str(run_path)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"attnbench cp exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert "efficiency fwd / bwd" in done.stdout, f"no table printed:\n{done.stdout}"
    ring_lines = [line for line in done.stdout.splitlines() if line.startswith("[cp]") and " ring " in line]
    assert ring_lines and all(", comm " in line for line in ring_lines), (
        f"every ring cell's progress line gives its exchange time:\n{done.stdout}")
    run = load(run_path)
    assert run.world_size == 2 and run.preset == "context-parallel"
    statuses = {key: rec.status for key, rec in run.cells.items()}
    assert statuses == {
        "ring_sdpa_flash-s37-d16-b1-h2-fp32-full": "ok", "sdpa_flash-s37-d16-b1-h2-fp32-full": "ok",
        "context_parallel-s37-d16-b1-h2-fp32-full": "skipped",
        "ring_sdpa_flash-s37-d16-b1-h2-fp32-causal": "ok", "sdpa_flash-s37-d16-b1-h2-fp32-causal": "ok",
        "context_parallel-s37-d16-b1-h2-fp32-causal": "skipped"}, statuses
    for mask in ("full", "causal"):
        ring = run.cells[f"ring_sdpa_flash-s37-d16-b1-h2-fp32-{mask}"]
        single = run.cells[f"sdpa_flash-s37-d16-b1-h2-fp32-{mask}"]
        assert ring.memory["saved_nxn"] == 0, f"a rank kept an n×n tensor: {ring.memory}"
        for pass_name in ("forward", "backward"):
            facts = ring.passes[pass_name].checks
            assert facts["comm_s"] > 0 and 0 <= facts["hidden_comm_fraction"] <= 1, facts
            expected = single.median_s(pass_name) / (2 * ring.median_s(pass_name))
            assert abs(facts["scaling_efficiency"] - expected) < 1e-9 * expected, (
                f"efficiency {facts['scaling_efficiency']} is not single / (2 x ring) = {expected}")


def test_cp_command_outside_torchrun_says_how_to_run_it(capsys):
    from attnbench.cli import main

    assert main(["cp", "--device", "cpu", "--seq-lens", "8"]) == 2
    assert "torchrun --nproc-per-node N -m attnbench cp" in capsys.readouterr().err


def test_cp_command_refuses_an_unknown_block(capsys):
    from attnbench.cli import main

    with pytest.raises(SystemExit):
        main(["cp", "--blocks", "flash3"])
    assert "unknown block 'flash3'; allowed: triton_flash, sdpa_flash, math" in capsys.readouterr().err


@pytest.mark.gpu
def test_cp_command_on_two_gpus(tmp_path):
    """On a host with 2+ GPUs: the ring with both block ops, NCCL, a short grid, every ring cell measured."""
    import subprocess
    import sys

    from attnbench.record import load

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA GPUs")
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs at least 2 GPUs, found {torch.cuda.device_count()}")
    run_path = tmp_path / "run.json"
    command = [sys.executable, "-m", "attnbench", "cp", "--nproc", "2", "--seq-lens", "4099", "--heads", "4",
               "--warmup", "1", "--rounds", "3", "-o", str(run_path)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"attnbench cp exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    run = load(run_path)
    rings = {key: rec.status for key, rec in run.cells.items() if key.startswith("ring_")}
    assert set(rings.values()) == {"ok"}, rings


def test_cp_keeps_what_it_measured_when_stopped(tmp_path):
    """After every cell rank 0 rewrites the run as incomplete, naming how far it got: a stopped run loses
    nothing it measured."""
    from attnbench.cli import build_parser
    from attnbench.cp import RunWriter
    from attnbench.record import load

    run_path = tmp_path / "run.json"
    args = build_parser().parse_args(["cp", "--device", "cpu", "--seq-lens", "37,64", "--blocks", "sdpa_flash",
                                      "-o", str(run_path)])
    RunWriter(args, torch.device("cpu"), world_size=2).progress([], {})
    run = load(run_path)
    assert not run.complete and run.stop_reason == "stopped after 0 of 12 cells", (run.complete, run.stop_reason)


def test_cp_refuses_an_output_it_cannot_write_before_measuring(tmp_path, capsys):
    """Exit 3 with the reason, before any rank starts: a run that could not be saved is not measured."""
    from attnbench.cli import main

    assert main(["cp", "--device", "cpu", "--seq-lens", "8", "-o", str(tmp_path / "no" / "such" / "run.json")]) == 3
    err = capsys.readouterr().err
    assert "is not a writable folder; nothing was measured" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cp_command_with_cuda_and_no_gpu_is_refused_before_torchrun_starts(capsys):
    from attnbench.cli import main

    assert main(["cp", "--device", "cuda", "--nproc", "2", "--seq-lens", "64"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda, and torch sees no GPU" in err and "nothing was measured" in err, err


def test_cp_on_cpu_predicts_cells_the_host_cannot_hold_instead_of_allocating_them(tmp_path):
    """A sequence no host holds (512 GiB of q per rank): every cell is oom-predicted, from the host's available
    memory shared by the ranks, within seconds, and the run is saved."""
    import subprocess
    import sys

    from attnbench.machine import available_host_memory_bytes
    from attnbench.record import load

    assert available_host_memory_bytes() > 0
    run_path = tmp_path / "run.json"
    command = [sys.executable, "-m", "attnbench", "cp", "--nproc", "2", "--device", "cpu", "--seq-lens",
               str(2**32), "--heads", "2", "--head-dim", "16", "--dtype", "fp32", "--blocks", "sdpa_flash",
               "--causal", "off", "-o", str(run_path)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"attnbench cp exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    statuses = {key: (rec.status, rec.message) for key, rec in load(run_path).cells.items()}
    for key in ("ring_sdpa_flash-s4294967296-d16-b1-h2-fp32-full", "sdpa_flash-s4294967296-d16-b1-h2-fp32-full"):
        status, message = statuses[key]
        assert status == "oom-predicted" and "available" in message, statuses
