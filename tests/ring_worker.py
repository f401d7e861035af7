"""A pool of processes in one gloo process group, for tests/test_ring.py: cases in, measured errors out.

Spawning a group costs seconds, so a pool lives for a whole test module and runs many cases. A case is a
plain dict (drawn in the parent, where hypothesis runs); every rank builds the same global inputs from the
case's seed, runs ring attention on its shard, and reports its errors against the float64 reference and what
autograd saved. Nothing here asserts: the parent judges, and says what was expected.
"""

from __future__ import annotations

import datetime
import queue
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: how long the parent waits for one case on every rank before declaring the pool hung.
CASE_TIMEOUT_S = 120
#: how long a collective may block inside a worker before gloo gives up (so a broken ring cannot hang).
COLLECTIVE_TIMEOUT_S = 60
#: how long the parent waits for a worker to exit after asking it to.
JOIN_TIMEOUT_S = 20

TENSORS = ("out", "dq", "dk", "dv")


def run_case(case: dict, rank: int, world_size: int) -> dict:
    """Ring attention on this rank's shard of the case's inputs; errors against the float64 reference."""
    from attention_impls.reference import plain_attention_from_output_and_lse, reference
    from attention_impls.ring import ring_attention, shard_sequence
    from attnbench.census import take_census

    dtype = getattr(torch, case["dtype"])
    shape = (case["batch"], case["heads"], case["seq_len"], case["head_dim"])
    generator = torch.Generator().manual_seed(case["seed"])
    q, k, v, grad_out = (torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) for _ in range(4))
    causal, layout = case["causal"], case["layout"]

    # -- the float64 reference, and the plain computation in the case's dtype (the tolerance's yardstick)
    expected = _out_and_grads(reference, q, k, v, grad_out, causal, to=torch.float64)
    plain = _out_and_grads(plain_attention_from_output_and_lse, q, k, v, grad_out, causal, to=dtype)

    def shard(x):
        return shard_sequence(x, rank, world_size, layout=layout)

    local = [shard(x).requires_grad_() for x in (q, k, v)]
    kwargs = {"causal": causal, "block": case["block"], "layout": layout,
              "seq_len": case["seq_len"] if case["pass_seq_len"] else None}
    out = ring_attention(*local, **kwargs)
    got = [out, *torch.autograd.grad(out, local, shard(grad_out))]

    result = {"local_seq_len": local[0].shape[2], "errors": {}, "plain_errors": {}, "scale": {}}
    for name, ring_t, ref_t, plain_t in zip(TENSORS, got, expected, plain):
        ref_local = shard(ref_t)
        result["errors"][name] = (ring_t.double() - ref_local).abs().max().item()
        result["plain_errors"][name] = (shard(plain_t).double() - ref_local).abs().max().item()
        result["scale"][name] = ref_local.abs().max().item()
        result.setdefault("dtypes", {})[name] = str(ring_t.dtype)
    if case.get("census", True):
        census, _ = take_census(lambda: ring_attention(*local, **kwargs), nxn_elements=q.numel())
        result["saved"] = [(t.shape, t.bytes) for t in census.tensors]
    return result


def _out_and_grads(fn, q, k, v, grad_out, causal, *, to):
    leaves = [x.to(to).requires_grad_() for x in (q, k, v)]
    out = fn(*leaves, causal=causal)
    out = out[0] if isinstance(out, tuple) else out
    return [out.detach(), *torch.autograd.grad(out, leaves, grad_out.to(out.dtype))]


def serve(rank: int, world_size: int, init_method: str, tasks, results) -> None:
    """A worker: join the group, run cases until told to stop (None), then leave the group."""
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    torch.set_num_threads(1)  # the ranks share two cores
    try:
        while (case := tasks.get()) is not None:
            try:
                results.put((case["id"], rank, run_case(case, rank, world_size), None))
            except Exception:  # noqa: BLE001  (reported to the parent, which fails the test with it)
                results.put((case["id"], rank, None, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class RingPool:
    """``world_size`` worker processes in one gloo group; :meth:`run` sends a case to all, returns each rank's."""

    def __init__(self, world_size: int, init_file: str):
        context = mp.get_context("spawn")
        self.world_size = world_size
        self.results = context.Queue()
        self.tasks = [context.Queue() for _ in range(world_size)]
        self.processes = [context.Process(target=serve, args=(rank, world_size, f"file://{init_file}",
                                                              self.tasks[rank], self.results), daemon=True)
                          for rank in range(world_size)]
        for process in self.processes:
            process.start()
        self.next_id = 0
        self.broken: str | None = None

    def run(self, case: dict) -> list[dict]:
        """Each rank's result for ``case``; AssertionError naming the rank on a worker error or a hang."""
        if self.broken:
            raise AssertionError(f"the worker pool broke on an earlier case: {self.broken}")
        self.next_id += 1
        case = {**case, "id": self.next_id}
        for tasks in self.tasks:
            tasks.put(case)
        by_rank: dict[int, dict] = {}
        while len(by_rank) < self.world_size:
            try:
                case_id, rank, result, error = self.results.get(timeout=CASE_TIMEOUT_S)
            except queue.Empty:
                self.broken = f"no answer within {CASE_TIMEOUT_S} s for case {case}"
                raise AssertionError(self.broken) from None
            if error is not None:
                self.broken = f"rank {rank} failed on case {case}:\n{error}"
                raise AssertionError(self.broken)
            if case_id == self.next_id:
                by_rank[rank] = result
        return [by_rank[rank] for rank in range(self.world_size)]

    def close(self) -> None:
        """Ask every worker to leave; end (by its own id) any that does not within JOIN_TIMEOUT_S."""
        if not self.broken:
            for tasks in self.tasks:
                tasks.put(None)
        for process in self.processes:
            process.join(timeout=JOIN_TIMEOUT_S if not self.broken else 1)
            if process.is_alive():
                process.terminate()
                process.join(timeout=JOIN_TIMEOUT_S)
