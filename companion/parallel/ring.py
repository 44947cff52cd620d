"""Ring attention (context parallelism): each rank holds s/P tokens; K/V blocks travel a ring.

Introduced in chapter 9.

Each rank keeps its own queries and, for P - 1 steps, passes the K/V block it holds to the next
rank while it attends to it. Each step yields a partial result, normalised over the keys it saw,
and its log-sum-exp; `merge_partials` combines two such results exactly (online softmax).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["block_attention", "merge_partials", "ring_attention", "ring_attention_worker"]


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q over one block of keys: (output, log-sum-exp of the scores).

    q (B, H, Tq, D), k and v (B, H, Tk, D), mask (Tq, Tk) with True where a query may look.
    A row that sees no key gets output 0 and log-sum-exp -inf, so merging ignores it.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, H, Tq)
    # exp(score - lse) is the softmax; a row masked everywhere has lse = -inf: set its weights to 0
    probs = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0)
    return probs @ v, lse


def merge_partials(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor,
                   lse2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over two disjoint key blocks into attention over both.

    Each output is weighted by its share of the total softmax mass, exp(lse_i - lse).
    Example: two equal halves, merge_partials(o, l, o, l) -> (o, l + log 2).
    """
    lse = torch.logaddexp(lse1, lse2)  # (B, H, Tq)
    # where neither block had a visible key, lse is -inf and both weights are 0, not nan
    w1 = torch.exp(lse1 - lse).nan_to_num(0.0).unsqueeze(-1)
    w2 = torch.exp(lse2 - lse).nan_to_num(0.0).unsqueeze(-1)
    return w1 * o1 + w2 * o2, lse


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   causal: bool = True) -> tuple[torch.Tensor, int]:
    """Attention of this rank's queries over every rank's keys, passing K/V around the ring.

    q, k, v (B, H, T/P, D) are this rank's contiguous slice of the sequence, rank 0 first.
    Returns this rank's output slice and the bytes it sent. Needs an initialised process group.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    B, H, T, D = q.shape
    out = q.new_zeros(B, H, T, D)
    lse = q.new_full((B, H, T), float("-inf"))
    kv = torch.stack([k, v]).contiguous()  # (2, B, H, T, D): one message per step
    sent = 0
    for step in range(world):
        source = (rank - step) % world  # whose keys this rank holds now
        reqs = []
        if step < world - 1:  # start passing the block on before using it, so the two overlap
            incoming = torch.empty_like(kv)
            reqs = dist.batch_isend_irecv([
                dist.P2POp(dist.isend, kv, (rank + 1) % world),
                dist.P2POp(dist.irecv, incoming, (rank - 1) % world)])
            sent += kv.numel() * kv.element_size()
        if not (causal and source > rank):  # later tokens' keys are all masked: skip the block
            mask = None
            if causal and source == rank:  # the diagonal block: causal inside it
                mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            o_blk, lse_blk = block_attention(q, kv[0], kv[1], mask)
            out, lse = merge_partials(out, lse, o_blk, lse_blk)
        for r in reqs:
            r.wait()
        if step < world - 1:
            kv = incoming
    return out, sent


def ring_attention_worker(rank: int, world: int, shape: tuple[int, int, int, int], causal: bool,
                          seed: int = 0) -> dict:
    """For `launch`: draw the same q, k, v (B, H, T, D) on every rank, run the ring on this rank's
    slice of T, and return the slice with the bytes sent and the reference for it."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    T = shape[2]
    if T % world:
        raise ValueError(f"sequence length T={T} must divide evenly over {world} ranks")
    part = slice(rank * T // world, (rank + 1) * T // world)
    out, sent = ring_attention(q[:, :, part], k[:, :, part], v[:, :, part], causal)
    full = F.scaled_dot_product_attention(q, k, v, is_causal=causal)[:, :, part]
    return {"out": out, "sent": sent, "max_diff": (out - full).abs().max().item()}
