"""Ring attention: one sequence split across the ranks of a process group (context parallelism).

Each rank holds its shard of q, k and v, ``(batch, heads, local_seq, head_dim)``. The forward runs
``world_size`` steps: at each step the rank starts sending the K/V block it holds to the next rank (and
receiving the previous rank's), computes attention of its queries over the block in hand with a *block op*
(a flash kernel that returns the block's output and log-sum-exp), and merges that partial result into the
running one by the log-sum-exp, in fp32 (fp64 for fp64 inputs). The backward is a second ring: K/V travel
as in the forward, together with fp32 dK/dV accumulators; every step computes the block's gradients from
the *global* output and log-sum-exp (a flash backward recomputes P = exp(S - lse), so the block's P is
already normalised by the whole row), dQ accumulates locally, dK/dV add into the travelling accumulators,
which reach their owner after ``world_size`` hops.

Positions are split into chunks whose sizes differ by at most one (any ``seq_len`` >= the chunk count):
``contiguous`` gives rank r chunk r of N; ``zigzag`` splits into 2N chunks and gives rank r chunks r and
2N-1-r, so that under a causal mask every rank does the same work at every step. A (query chunk, key chunk)
pair is the same chunk (causal inside it), entirely earlier (no mask) or entirely later (skipped), so a
block op only ever runs unmasked or with a top-left causal mask on a square block.

Each rank keeps only local tensors: for backward q, k, v, out and the log-sum-exp of its shard; in flight
two K/V receive buffers (and in backward two fp32 dK/dV buffers). ``docs/context_parallel.md`` has the design.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .registry import FLOAT_DTYPES, get_variant, softmax_scale, validate_inputs

#: how a sequence's positions are laid out over the ranks.
LAYOUTS = ("contiguous", "zigzag")

# -- block ops: one block of attention, forward and backward, returning / taking the log-sum-exp


@dataclass(frozen=True)
class BlockOp:
    """One block of attention: ``forward(q, k, v, causal) -> (out, lse, aux)`` and
    ``backward(do, q, k, v, out, lse, aux, causal) -> (dq, dk, dv)``.

    ``lse`` is (batch, heads, seq_q), fp32 (fp64 for fp64 inputs), natural log, or log2 when ``lse_log2``:
    the ring merges it in the op's own units, so a kernel's log-sum-exp is never converted. ``aux`` is what
    the op's backward needs of any forward call besides the tensors (PyTorch's flash op: its sequence and
    RNG arguments). ``unavailable_reason(device, dtype)`` says why the op cannot run, or None.
    """

    name: str
    forward: Callable
    backward: Callable
    unavailable_reason: Callable[[torch.device, torch.dtype], str | None]
    lse_log2: bool = False
    description: str = ""


def _math_forward(q, k, v, causal):
    """Plain attention in at least fp32 (fp64 stays fp64): scores, log-sum-exp, softmax @ V."""
    work = torch.promote_types(q.dtype, torch.float32)
    scores = _scores(q.to(work), k.to(work), causal)
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - lse.unsqueeze(-1)) @ v.to(work)
    return out.to(q.dtype), lse, ()


def _math_backward(do, q, k, v, out, lse, aux, causal):
    """The flash backward done plainly: P from the log-sum-exp, delta = rowsum(dO * O)."""
    work = lse.dtype
    q_w, k_w, v_w, do_w = q.to(work), k.to(work), v.to(work), do.to(work)
    probs = torch.exp(_scores(q_w, k_w, causal) - lse.unsqueeze(-1))
    delta = (do_w * out.to(work)).sum(dim=-1, keepdim=True)
    grad_scores = probs * (do_w @ v_w.transpose(-2, -1) - delta) * softmax_scale(q.shape[-1])
    return ((grad_scores @ k_w).to(q.dtype), (grad_scores.transpose(-2, -1) @ q_w).to(k.dtype),
            (probs.transpose(-2, -1) @ do_w).to(v.dtype))


def _scores(q, k, causal):
    scores = (q @ k.transpose(-2, -1)) * softmax_scale(q.shape[-1])
    if causal:
        keep = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return scores


def _sdpa_flash_forward(q, k, v, causal):
    if q.device.type == "cuda":
        out, lse, cum_q, cum_k, _, _, seed, offset, _ = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal)
        return out, lse, (cum_q, cum_k, seed, offset)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal)
    return out, lse, ()


def _sdpa_flash_backward(do, q, k, v, out, lse, aux, causal):
    if q.device.type == "cuda":
        cum_q, cum_k, seed, offset = aux
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            do, q, k, v, out, lse, cum_q, cum_k, q.shape[2], k.shape[2], 0.0, causal, seed, offset)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        do, q, k, v, out, lse, 0.0, causal)


def _sdpa_flash_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    return get_variant("sdpa_flash").unavailable_reason(device, dtype)


def _triton_forward(q, k, v, causal):
    from . import triton_flash as tf

    precision = tf._input_precision(q.dtype)
    with tf._device_guard(q):
        out, lse2 = tf._forward(q, k, v, causal, tf._mask_args(None, k.shape[2], q.device), precision)
    return out, lse2, ()


def _triton_backward(do, q, k, v, out, lse2, aux, causal):
    from . import triton_flash as tf

    with tf._device_guard(q):
        return tf._backward(q, k, v, out, lse2, do, causal, tf._mask_args(None, k.shape[2], q.device),
                            tf._input_precision(q.dtype))


def _triton_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    return get_variant("triton_flash").unavailable_reason(device, dtype)


BLOCK_OPS: dict[str, BlockOp] = {
    op.name: op for op in (
        BlockOp("triton_flash", _triton_forward, _triton_backward, _triton_reason, lse_log2=True,
                description="our FlashAttention-2 Triton kernels; log-sum-exp kept in the kernel's log2 units"),
        BlockOp("sdpa_flash", _sdpa_flash_forward, _sdpa_flash_backward, _sdpa_flash_reason,
                description="PyTorch's flash ops (CUDA fp16/bf16; CPU any float)"),
        BlockOp("math", _math_forward, _math_backward, lambda device, dtype: None,
                description="plain PyTorch in at least fp32 (fp64 stays fp64); for checking"),
    )
}


def get_block_op(name: str) -> BlockOp:
    """The block op ``name``; ValueError naming the known ones otherwise."""
    if name not in BLOCK_OPS:
        raise ValueError(f"unknown block {name!r}; allowed: {', '.join(BLOCK_OPS)}")
    return BLOCK_OPS[name]


# -- the partition of positions over ranks


def chunk_count(world_size: int, layout: str) -> int:
    """How many chunks a sequence is cut into: world_size (contiguous) or 2 * world_size (zigzag)."""
    return world_size if layout == "contiguous" else 2 * world_size


def chunk_bounds(seq_len: int, num_chunks: int) -> list[tuple[int, int]]:
    """``num_chunks`` half-open ranges covering [0, seq_len); sizes differ by at most one, longer first."""
    base, extra = divmod(seq_len, num_chunks)
    bounds, start = [], 0
    for i in range(num_chunks):
        end = start + base + (i < extra)
        bounds.append((start, end))
        start = end
    return bounds


def rank_chunks(rank: int, world_size: int, layout: str) -> tuple[int, ...]:
    """The chunks rank ``rank`` holds, in the order it holds them."""
    return (rank,) if layout == "contiguous" else (rank, 2 * world_size - 1 - rank)


def local_seq_len(seq_len: int, rank: int, world_size: int, layout: str) -> int:
    """The length of rank ``rank``'s shard of a ``seq_len`` sequence."""
    bounds = chunk_bounds(seq_len, chunk_count(world_size, layout))
    return sum(bounds[c][1] - bounds[c][0] for c in rank_chunks(rank, world_size, layout))


def shard_sequence(x: torch.Tensor, rank: int, world_size: int, *, layout: str = "contiguous",
                   dim: int = 2) -> torch.Tensor:
    """Rank ``rank``'s piece of a global tensor (sequence along ``dim``), contiguous, a copy."""
    _check_layout(layout)
    _check_world(rank, world_size)
    _check_seq_len(x.shape[dim], world_size, layout)
    bounds = chunk_bounds(x.shape[dim], chunk_count(world_size, layout))
    pieces = [x.narrow(dim, bounds[c][0], bounds[c][1] - bounds[c][0]) for c in rank_chunks(rank, world_size, layout)]
    return torch.cat(pieces, dim=dim).contiguous()


def gather_sequence(pieces: list[torch.Tensor], *, layout: str = "contiguous", dim: int = 2) -> torch.Tensor:
    """The global tensor from every rank's piece (``pieces[r]`` is rank r's): the inverse of shard_sequence."""
    _check_layout(layout)
    world_size = len(pieces)
    if world_size < 1:
        raise ValueError("gather_sequence needs one piece per rank, got none")
    seq_len = sum(p.shape[dim] for p in pieces)
    bounds = chunk_bounds(seq_len, chunk_count(world_size, layout))
    chunks: dict[int, torch.Tensor] = {}
    for rank, piece in enumerate(pieces):
        expected = local_seq_len(seq_len, rank, world_size, layout)
        if piece.shape[dim] != expected:
            raise ValueError(f"rank {rank}'s piece has {piece.shape[dim]} positions along dim {dim}; a {seq_len}-long "
                             f"{layout} split over {world_size} ranks gives it {expected}")
        offset = 0
        for c in rank_chunks(rank, world_size, layout):
            size = bounds[c][1] - bounds[c][0]
            chunks[c] = piece.narrow(dim, offset, size)
            offset += size
    return torch.cat([chunks[c] for c in sorted(chunks)], dim=dim)


def _step_blocks(rank: int, src: int, world_size: int, layout: str, causal: bool,
                 q_len: int, k_len: int, seq_len: int) -> list[tuple[slice, slice, bool]]:
    """What rank ``rank`` computes against the K/V of rank ``src``: (query rows, key rows, causal) blocks.

    Non-causal: everything against everything. Causal, with one shared partition of positions: the
    diagonal (src == rank) is causal on the whole local block (its chunks are in increasing order, so a
    top-left mask on the concatenation is the global mask); contiguous: an earlier rank's block is seen
    whole, a later one not at all; zigzag: from an earlier rank only its first chunk is earlier than both
    of ours, from a later rank both of its chunks are earlier than our second chunk only.
    """
    everything = slice(0, q_len), slice(0, k_len)
    if not causal:
        return [(*everything, False)]
    if src == rank:
        return [(*everything, True)]
    if layout == "contiguous":
        return [(*everything, False)] if src < rank else []
    bounds = chunk_bounds(seq_len, chunk_count(world_size, layout))
    if src < rank:
        first = bounds[src][1] - bounds[src][0]
        return [(slice(0, q_len), slice(0, first), False)]
    ours_first = bounds[rank][1] - bounds[rank][0]
    return [(slice(ours_first, q_len), slice(0, k_len), False)]


# -- the merge


def _merge(out_acc: torch.Tensor, lse_acc: torch.Tensor, out_block: torch.Tensor, lse_block: torch.Tensor,
           log2: bool) -> None:
    """Fold a block's (out, lse) into the running (out_acc, lse_acc), in place, in lse_acc's precision.

    lse = log(e^a + e^b); out = out_acc e^(a - lse) + out_block e^(b - lse). Rows that have seen nothing
    yet have lse -inf: logaddexp gives -inf for two of them, and the exponent base is then 0, not -inf, so
    both weights are e^-inf = 0 instead of NaN.
    """
    lse_block = lse_block.to(lse_acc.dtype)
    lse_new = torch.logaddexp2(lse_acc, lse_block) if log2 else torch.logaddexp(lse_acc, lse_block)
    base = torch.where(torch.isneginf(lse_new), torch.zeros_like(lse_new), lse_new)
    exp = torch.exp2 if log2 else torch.exp
    out_acc.mul_(exp(lse_acc - base).unsqueeze(-1))
    out_acc.add_(out_block.to(out_acc.dtype) * exp(lse_block - base).unsqueeze(-1))
    lse_acc.copy_(lse_new)


# -- the ring


@dataclass(frozen=True)
class _Ring:
    """Who this rank is in the ring, and the partition every rank computed alike."""

    group: object
    rank: int
    world_size: int
    layout: str
    seq_len: int
    exchange_blocks: bool = True


    def peer(self, offset: int) -> int:
        """The global rank of the ring neighbour ``offset`` places on (for P2POp)."""
        index = (self.rank + offset) % self.world_size
        return index if self.group is None else dist.get_global_rank(self.group, index)

    def local_len(self, rank: int) -> int:
        return local_seq_len(self.seq_len, rank % self.world_size, self.world_size, self.layout)

    def exchange(self, send: torch.Tensor, recv: torch.Tensor) -> list:
        """Start sending ``send`` to the next rank and receiving ``recv`` from the previous one."""
        if not self.exchange_blocks:
            return []
        ops = [dist.P2POp(dist.isend, send, self.peer(1), self.group),
               dist.P2POp(dist.irecv, recv, self.peer(-1), self.group)]
        return dist.batch_isend_irecv(ops)


def _wait(requests: list) -> None:
    for request in requests:
        request.wait()


def _packed(buffer: torch.Tensor, shape: tuple[int, ...], seq: int) -> torch.Tensor:
    """A contiguous (2, batch, heads, seq, head_dim) view at the start of a flat buffer (K and V together)."""
    batch, heads, _, head_dim = shape
    return buffer[: 2 * batch * heads * seq * head_dim].view(2, batch, heads, seq, head_dim)


def _kv_buffers(k: torch.Tensor, ring: _Ring, dtype: torch.dtype) -> list[torch.Tensor]:
    """Two flat buffers, each big enough for the largest shard's K and V: what is held and what arrives."""
    batch, heads, _, head_dim = k.shape
    longest = max(ring.local_len(r) for r in range(ring.world_size))
    new = torch.empty if ring.exchange_blocks else torch.zeros  # never compute on uninitialised memory
    return [new(2 * batch * heads * longest * head_dim, dtype=dtype, device=k.device) for _ in range(2)]


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool, op: BlockOp, ring: _Ring):
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        q_len = q.shape[2]
        out_acc = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
        lse_acc = torch.full(q.shape[:3], float("-inf"), dtype=acc_dtype, device=q.device)
        buffers = _kv_buffers(k, ring, k.dtype)
        kv = _packed(buffers[0], k.shape, q_len)
        kv[0].copy_(k)
        kv[1].copy_(v)
        aux = ()
        for step in range(ring.world_size):
            src = (ring.rank - step) % ring.world_size
            requests = []
            if step + 1 < ring.world_size:  # -- start passing the block in hand on; compute while it travels
                incoming = _packed(buffers[(step + 1) % 2], k.shape, ring.local_len(src - 1))
                requests = ring.exchange(kv, incoming)
            # -- this step's blocks against the K/V in hand, merged by their log-sum-exp
            for rows, cols, block_causal in _step_blocks(ring.rank, src, ring.world_size, ring.layout, causal,
                                                         q_len, kv.shape[3], ring.seq_len):
                out_block, lse_block, aux = op.forward(q[:, :, rows], kv[0][:, :, cols], kv[1][:, :, cols],
                                                       block_causal)
                _merge(out_acc[:, :, rows], lse_acc[:, :, rows], out_block, lse_block, op.lse_log2)
            _wait(requests)
            if step + 1 < ring.world_size:
                kv = incoming
        out = out_acc.to(q.dtype)
        lse = lse_acc if q.dtype == torch.float64 else lse_acc.float()
        ctx.save_for_backward(q, k, v, out, lse)  # all local: this rank's shard, never the whole sequence
        ctx.causal, ctx.op, ctx.ring, ctx.aux = causal, op, ring, aux
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        op, ring, causal = ctx.op, ctx.ring, ctx.causal
        grad_out = grad_out.contiguous()
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        q_len = q.shape[2]
        dq_acc = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
        buffers = _kv_buffers(k, ring, k.dtype)
        grad_buffers = _kv_buffers(k, ring, acc_dtype)  # dK and dV travel in fp32 (fp64), added to at every hop
        kv = _packed(buffers[0], k.shape, q_len)
        kv[0].copy_(k)
        kv[1].copy_(v)
        dkv = _packed(grad_buffers[0], k.shape, q_len).zero_()
        grad_requests: list = []
        for step in range(ring.world_size):
            src = (ring.rank - step) % ring.world_size
            requests = []
            if step + 1 < ring.world_size:
                incoming = _packed(buffers[(step + 1) % 2], k.shape, ring.local_len(src - 1))
                requests = ring.exchange(kv, incoming)
            # -- the block gradients, from the global out and lse (P = exp(S - lse) is the whole row's)
            grads = []
            for rows, cols, block_causal in _step_blocks(ring.rank, src, ring.world_size, ring.layout, causal,
                                                         q_len, kv.shape[3], ring.seq_len):
                block_grads = op.backward(grad_out[:, :, rows], q[:, :, rows], kv[0][:, :, cols],
                                          kv[1][:, :, cols], out[:, :, rows], lse[:, :, rows].contiguous(),
                                          ctx.aux, block_causal)
                grads.append((rows, cols, block_grads))
            # -- the accumulator of block src arrives from the previous rank while the blocks computed
            _wait(grad_requests)
            for rows, cols, (dq, dk, dv) in grads:
                dq_acc[:, :, rows] += dq
                dkv[0][:, :, cols] += dk
                dkv[1][:, :, cols] += dv
            if ring.world_size > 1:  # -- pass it on; after world_size hops it is back with its owner
                arriving = _packed(grad_buffers[(step + 1) % 2], k.shape, ring.local_len(src - 1))
                grad_requests = ring.exchange(dkv, arriving)
                dkv = arriving
            _wait(requests)
            if step + 1 < ring.world_size:
                kv = incoming
        _wait(grad_requests)
        return dq_acc.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None


# -- the public function and its checks


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   group: dist.ProcessGroup | None = None, block: str = "triton_flash", layout: str | None = None,
                   seq_len: int | None = None, exchange_blocks: bool = True) -> torch.Tensor:
    """Attention over a sequence split across the ranks of ``group`` (default: the whole world).

    q, k, v: this rank's shard, ``(batch, heads, local_seq, head_dim)``, as ``shard_sequence`` cuts it for
    ``layout``; returns this rank's shard of the output, like q. Scale ``1/sqrt(head_dim)``; ``causal``
    masks by global position, top-left aligned. ``block``: one of BLOCK_OPS (``triton_flash``,
    ``sdpa_flash``, ``math``). ``layout``: ``contiguous`` or ``zigzag``; default zigzag when causal (every
    rank does equal work at every step), contiguous otherwise; zigzag without causal is allowed and only
    permutes positions (non-causal work is balanced either way). ``seq_len``: the global length; without it
    the ranks exchange their shard shapes once to learn it (and to check they agree). ``exchange_blocks=False``
    is for measuring only: every step computes on a zeroed block of the right shape instead of the K/V (and
    dK/dV) that would have arrived, so the result is wrong; what is left is the computation alone.

    Every rank of the group must call it with the same arguments but its own shard. Raises RuntimeError
    when torch.distributed is not initialised, TypeError/ValueError for inputs outside this contract.
    """
    validate_inputs(q, k, v, causal=causal)
    if q.shape != k.shape:
        raise ValueError(f"ring attention is self-attention over one split sequence: q and k must have one shape, "
                         f"got q {tuple(q.shape)} and k {tuple(k.shape)}")
    op = get_block_op(block) if isinstance(block, str) else _bad_block(block)
    layout = ("zigzag" if causal else "contiguous") if layout is None else layout
    _check_layout(layout)
    reason = op.unavailable_reason(q.device, q.dtype)
    if reason is not None:
        raise (TypeError if q.dtype not in FLOAT_DTYPES else ValueError)(f"block {op.name}: {reason}")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ring_attention needs torch.distributed initialised: call "
                           "dist.init_process_group('nccl') for CUDA tensors or ('gloo') for CPU tensors "
                           "(torchrun sets the environment for it)")
    backend = str(dist.get_backend(group))
    if backend == "nccl" and q.device.type != "cuda":
        raise ValueError(f"the process group's backend is nccl, which needs CUDA tensors; got {q.device}")
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    if seq_len is None:
        seq_len = _agreed_seq_len(q, group, world_size)
    _check_seq_len(seq_len, world_size, layout)
    expected = local_seq_len(seq_len, rank, world_size, layout)
    if q.shape[2] != expected:
        raise ValueError(f"rank {rank} holds {q.shape[2]} positions; a {seq_len}-long {layout} split over "
                         f"{world_size} ranks gives it {expected} (cut inputs with shard_sequence)")
    if not isinstance(exchange_blocks, bool):
        raise TypeError(f"exchange_blocks must be a bool, got {type(exchange_blocks).__name__}")
    ring = _Ring(group, rank, world_size, layout, seq_len, exchange_blocks)
    return _RingAttention.apply(q, k, v, causal, op, ring)


def _bad_block(block) -> BlockOp:
    raise TypeError(f"block must be a block op name ({', '.join(BLOCK_OPS)}), got {type(block).__name__}")


def _check_layout(layout) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")


def _check_world(rank: int, world_size: int) -> None:
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank must be in 0..world_size-1 and world_size >= 1, got rank {rank}, "
                         f"world_size {world_size}")


def _check_seq_len(seq_len: int, world_size: int, layout: str) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int):
        raise TypeError(f"seq_len must be an int, got {type(seq_len).__name__}")
    needed = chunk_count(world_size, layout)
    if seq_len < needed:
        raise ValueError(f"seq_len {seq_len} is shorter than the {needed} chunks a {layout} split over "
                         f"{world_size} ranks needs (one position per chunk at least)")


def _agreed_seq_len(q: torch.Tensor, group, world_size: int) -> int:
    """The global length from every rank's shard shape; ValueError (on every rank alike) when they disagree."""
    shape = torch.tensor(q.shape, dtype=torch.int64, device=q.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size)]
    dist.all_gather(shapes, shape, group=group)
    shapes = [tuple(s.tolist()) for s in shapes]
    others = {(b, h, d) for b, h, _, d in shapes}
    if len(others) > 1:
        raise ValueError(f"the ranks' shards differ in batch, heads or head_dim: {shapes}")
    return int(sum(s[2] for s in shapes))

