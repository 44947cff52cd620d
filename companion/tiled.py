"""Tiled attention with the online softmax: exact attention that never builds the T x S scores.

Re-exported as companion.attention.tiled_attention. Shapes: B batch, H heads, T queries, S keys,
D d_head.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable

import torch

__all__ = ["tiled_attention", "peak_cpu_bytes"]


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


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    block_size: int = 64) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v, one (block, block) tile of scores at a time.

    q is (B, H, T, D); k and v are (B, H, S, D). With causal=True and S > T the queries are the
    last T positions (a chunk after S - T cached tokens): query i sees keys j <= S - T + i.
    Example: tiled_attention(q, k, v, block_size=16) equals
    F.scaled_dot_product_attention(q, k, v, is_causal=True) when S == T. Introduced in chapter 5.
    """
    _check(q, k, v, causal, block_size)
    B, H, T, D = q.shape
    S = k.shape[2]
    offset = S - T  # absolute position of query 0
    scale = 1.0 / math.sqrt(D)
    out = torch.empty(B, H, T, v.shape[-1], dtype=q.dtype, device=q.device)
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
                qpos = torch.arange(offset + q0, offset + q0 + bq, device=q.device)[:, None]
                kpos = torch.arange(k0, k0 + s.shape[-1], device=q.device)[None, :]
                s = s.masked_fill(kpos > qpos, float("-inf"))
            m_new = torch.maximum(m, s.amax(-1, keepdim=True))
            # Every row sees key 0..its own position, so m_new is finite from the first tile on.
            p = torch.exp(s - m_new)  # (B, H, bq, bk), at most 1
            rescale = torch.exp(m - m_new)  # shrinks what was summed under the old max
            l = l * rescale + p.sum(-1, keepdim=True)
            acc = acc * rescale + p @ v[:, :, k0:k0 + block_size]
            m = m_new
        out[:, :, q0:q0 + bq] = acc / l
    return out


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
