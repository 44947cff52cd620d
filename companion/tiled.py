"""Tiled attention with the online softmax: exact attention that never builds the T x S scores.

tiled_attention is the forward alone (re-exported as companion.attention.tiled_attention); under
autograd it keeps every tile for the backward. flash_attention is FlashAttention-2 in PyTorch
(Dao 2023, Algorithms 1 and 2): a torch.autograd.Function whose forward saves only the output and
the per-row logsumexp, and whose backward recomputes each tile's probabilities from them.
Shapes: B batch, H heads, T queries, S keys, D d_head.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable

import torch

__all__ = ["tiled_attention", "flash_attention", "FlashAttention", "peak_cpu_bytes"]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
           block_size: int) -> None:
    """Raise ValueError naming the shapes when q, k, v cannot be attended together."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"expected q, k, v of shape (B, H, T, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in B, H and D")
    if k.shape[2] < 1:
        raise ValueError(f"need at least one key, got S={k.shape[2]}")
    if causal and k.shape[2] < q.shape[2]:
        raise ValueError(f"causal attention needs at least as many keys as queries: "
                         f"S={k.shape[2]} < T={q.shape[2]}")


def _diagonal_mask(s: torch.Tensor, q_start: int, k_start: int) -> torch.Tensor:
    """s with the scores of keys after their query set to -inf (positions are absolute)."""
    qpos = torch.arange(q_start, q_start + s.shape[-2], device=s.device)[:, None]
    kpos = torch.arange(k_start, k_start + s.shape[-1], device=s.device)[None, :]
    return s.masked_fill(kpos > qpos, float("-inf"))


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
             block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, T, Dv), logsumexp of each row's scaled scores (B, H, T)), tile by tile."""
    B, H, T, D = q.shape
    S = k.shape[2]
    offset = S - T  # absolute position of query 0
    scale = 1.0 / math.sqrt(D)
    out = torch.empty(B, H, T, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, T, dtype=q.dtype, device=q.device)
    for q0 in range(0, T, block_size):
        qb = q[:, :, q0:q0 + block_size] * scale  # (B, H, bq, D)
        bq = qb.shape[2]
        # Running statistics per query row: the max m seen so far, the sum l of exp(s - m), and
        # the unnormalised output acc = sum exp(s - m) v. One division at the end normalises.
        m = torch.full((B, H, bq, 1), float("-inf"), dtype=q.dtype, device=q.device)
        l = torch.zeros(B, H, bq, 1, dtype=q.dtype, device=q.device)
        acc = torch.zeros(B, H, bq, v.shape[-1], dtype=q.dtype, device=q.device)
        # Keys past this block's last query are all masked: skip them (half the work when S == T).
        k_end = min(S, offset + q0 + bq) if causal else S
        for k0 in range(0, k_end, block_size):
            s = qb @ k[:, :, k0:k0 + block_size].transpose(-2, -1)  # (B, H, bq, bk)
            if causal and k0 + s.shape[-1] - 1 > offset + q0:  # the tile crosses the diagonal
                s = _diagonal_mask(s, offset + q0, k0)
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))
            # Every row sees key 0..its own position, so m_new is finite from the first tile on.
            p = torch.exp(s - m_new)  # (B, H, bq, bk), at most 1
            rescale = torch.exp(m - m_new)  # shrinks what was summed under the old max
            l = l * rescale + p.sum(-1, keepdim=True)
            acc = acc * rescale + p @ v[:, :, k0:k0 + block_size]
            m = m_new
        out[:, :, q0:q0 + bq] = acc / l
        # log sum_j exp(s_j) = m + log l: one number per row is all the backward needs to
        # rebuild any tile's probabilities as exp(s - lse) (FlashAttention-2, Algorithm 1).
        lse[:, :, q0:q0 + bq] = (m + torch.log(l)).squeeze(-1)
    return out, lse


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    block_size: int = 64) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v, one (block, block) tile of scores at a time.

    q is (B, H, T, D); k and v are (B, H, S, D). With causal=True and S > T the queries are the
    last T positions (a chunk after S - T cached tokens): query i sees keys j <= S - T + i.
    Under autograd every tile is kept for the backward; flash_attention does not keep them.
    Example: tiled_attention(q, k, v, block_size=16) equals
    F.scaled_dot_product_attention(q, k, v, is_causal=True) when S == T. Introduced in chapter 5.
    """
    _check(q, k, v, causal, block_size)
    return _forward(q, k, v, causal, block_size)[0]


def _backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
              lse: torch.Tensor, dout: torch.Tensor, causal: bool,
              block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) by FlashAttention-2's Algorithm 2: key blocks outside, query blocks inside."""
    T, D = q.shape[2], q.shape[3]
    S = k.shape[2]
    offset = S - T
    scale = 1.0 / math.sqrt(D)
    # delta_i = sum_j P_ij dP_ij = dO_i . O_i: the softmax backward's row term, from O alone.
    delta = (dout * out).sum(-1, keepdim=True)  # (B, H, T, 1)
    lse = lse.unsqueeze(-1)  # (B, H, T, 1)
    dq = torch.zeros_like(q)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    for k0 in range(0, S, block_size):
        kb, vb = k[:, :, k0:k0 + block_size], v[:, :, k0:k0 + block_size]  # (B, H, bk, D)
        bk = kb.shape[2]
        dkb, dvb = torch.zeros_like(kb), torch.zeros_like(vb)
        # Causal: query i reads key k0 only if offset + i >= k0; earlier query blocks see none.
        q_first = (max(0, k0 - offset) // block_size) * block_size if causal else 0
        for q0 in range(q_first, T, block_size):
            qb = q[:, :, q0:q0 + block_size]
            s = (qb @ kb.transpose(-2, -1)) * scale  # (B, H, bq, bk), recomputed
            if causal and k0 + bk - 1 > offset + q0:
                s = _diagonal_mask(s, offset + q0, k0)
            p = torch.exp(s - lse[:, :, q0:q0 + block_size])  # the forward's weights, exactly
            dob = dout[:, :, q0:q0 + block_size]
            dvb += p.transpose(-2, -1) @ dob  # dV = P^T dO
            dp = dob @ vb.transpose(-2, -1)  # dP = dO V^T
            ds = p * (dp - delta[:, :, q0:q0 + block_size])  # softmax backward, row by row
            dq[:, :, q0:q0 + block_size] += (ds @ kb) * scale  # S = scale Q K^T
            dkb += (ds.transpose(-2, -1) @ qb) * scale
        dk[:, :, k0:k0 + bk], dv[:, :, k0:k0 + bk] = dkb, dvb
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """FlashAttention-2 as an autograd Function: saves q, k, v, the output and the logsumexp.

    Example: FlashAttention.apply(q, k, v, True, 64); prefer flash_attention(q, k, v).
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                block_size: int) -> torch.Tensor:
        out, lse = _forward(q, k, v, causal, block_size)
        # O(T d) saved per head, not the tiles: the backward rebuilds them from q, k and lse.
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.block_size = causal, block_size
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, dout, ctx.causal, ctx.block_size)
        return dq, dk, dv, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    block_size: int = 64) -> torch.Tensor:
    """tiled_attention with FlashAttention-2's recomputing backward: O(T) memory under autograd.

    Same arguments and result as tiled_attention; gradients equal autograd's through the
    written-out softmax(q k^T / sqrt(D)) v.
    Example: flash_attention(q, k, v, block_size=16).sum().backward() fills q.grad, k.grad, v.grad.
    Introduced in chapter 5.
    """
    _check(q, k, v, causal, block_size)
    return FlashAttention.apply(q, k, v, causal, block_size)


def peak_cpu_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of tensors alive at once while fn() runs, above what was alive before it.

    Example: peak_cpu_bytes(lambda: torch.zeros(1024)) -> 4096
    """
    from torch.profiler import ProfilerActivity, profile

    # tracemalloc cannot see tensor memory (PyTorch allocates it in C++), and RSS is blurred by
    # malloc's caching. The profiler with profile_memory=True records every allocation and free
    # made through PyTorch's CPU allocator, kernels' scratch buffers included, with its size and
    # time: their running sum is the exact high-water mark of live tensor bytes.
    sys.stderr.flush()
    saved = os.dup(2)  # kineto prints start/stop lines straight to fd 2: hide only those
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak
