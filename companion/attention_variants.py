"""Beyond MHA/GQA/MQA (chapter 5): sliding-window attention with a rolling KV cache, and
multi-head latent attention (MLA, DeepSeek-V2) with its compressed cache.

Shapes: B batch, T new tokens, S keys, H heads, H_kv KV heads, D d_head, C d_c (the latent).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .attention import MultiHeadAttention, repeat_kv, scaled_dot_product

__all__ = ["band_mask", "RollingKVCache", "SlidingWindowAttention", "MLACache",
           "MultiHeadLatentAttention", "mla_bytes_per_token"]

Rope = Callable[[torch.Tensor, int], torch.Tensor]


def band_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int) -> torch.Tensor:
    """(T, S) bool: query at position p sees key at position j iff p - window < j <= p.

    Example: band_mask(torch.arange(3), torch.arange(3), 2) -> [[T, F, F], [T, T, F], [F, T, T]]
    """
    if window < 1:
        raise ValueError(f"window must be positive, got {window}")
    diff = q_pos[:, None] - k_pos[None, :]  # (T, S): how far back each key lies
    return (diff >= 0) & (diff < window)


class RollingKVCache:
    """A KV cache of `window` slots: token at position p lives in slot p % window.

    Memory stays (B, H_kv, window, D) however long generation runs; older keys are overwritten,
    which is safe because sliding-window attention never reads them again.
    Example: c = RollingKVCache(1, 4, 2, 8); after 10 appended tokens c.pos == 10, c.k.shape[2] == 4
    """

    def __init__(self, batch_size: int, window: int, n_kv_heads: int, d_head: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        sizes = {"batch_size": batch_size, "window": window, "n_kv_heads": n_kv_heads,
                 "d_head": d_head}
        for name, n in sizes.items():
            if n < 1:
                raise ValueError(f"{name} must be positive, got {n}")
        self.window = window
        shape = (batch_size, n_kv_heads, window, d_head)  # (B, H_kv, W, D)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slot_pos = torch.full((window,), -1, dtype=torch.long, device=device)  # -1: empty
        self.pos = 0  # tokens seen so far: the next token's absolute position

    def append(self, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Take T new (B, H_kv, T, D) keys and values.

        Return keys, values and their positions: the stored ones then the new ones.
        """
        want = (self.k.shape[0], self.k.shape[1], self.k.shape[3])
        if k.shape != v.shape or (k.shape[0], k.shape[1], k.shape[3]) != want:
            raise ValueError(f"expected k and v of shape (B={want[0]}, H_kv={want[1]}, T, "
                             f"D={want[2]}), got {tuple(k.shape)} and {tuple(v.shape)}")
        T = k.shape[2]
        new_pos = torch.arange(self.pos, self.pos + T, device=self.slot_pos.device)
        old = self.slot_pos >= 0  # filled slots; order does not matter, positions travel along
        keys = torch.cat([self.k[:, :, old], k], dim=2)  # (B, H_kv, S, D), S <= W + T
        values = torch.cat([self.v[:, :, old], v], dim=2)
        positions = torch.cat([self.slot_pos[old], new_pos])
        # Only the last `window` new tokens can ever be read again: write those.
        keep = slice(max(0, T - self.window), T)
        slots = new_pos[keep] % self.window
        self.k[:, :, slots], self.v[:, :, slots] = k[:, :, keep], v[:, :, keep]
        self.slot_pos[slots] = new_pos[keep]
        self.pos += T
        return keys, values, positions

    @property
    def nbytes(self) -> int:
        """Bytes of the two buffers: fixed by the window, not by how many tokens went by."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class SlidingWindowAttention(MultiHeadAttention):
    """Causal attention in which each query reads only the last `window` positions (Mistral).

    Example: SlidingWindowAttention(64, 8, 2, window=16)(torch.randn(1, 40, 64)).shape ->
    (1, 40, 64). Introduced in chapter 5.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *,
                 window: int, rope: Rope | None = None, bias: bool = False):
        super().__init__(d_model, n_heads, n_kv_heads, bias=bias, rope=rope)
        if window < 1:
            raise ValueError(f"window must be positive, got {window}")
        self.window = window

    def forward(self, x: torch.Tensor, cache: RollingKVCache | None = None) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, d_model); with a cache the T tokens follow cache.pos."""
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"expected x of shape (B, T, d_model={self.d_model}), got "
                             f"{tuple(x.shape)}")
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.d_head).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.d_head).transpose(1, 2)
        start = 0 if cache is None else cache.pos
        if self.rope is not None:  # rotate at the absolute position, before caching
            q, k = self.rope(q, start), self.rope(k, start)
        q_pos = torch.arange(start, start + T, device=x.device)
        if cache is None:
            k_pos = q_pos
        else:
            k, v, k_pos = cache.append(k, v)  # (B, H_kv, S, D), S <= window + T
        n_rep = self.n_heads // self.n_kv_heads
        mask = band_mask(q_pos, k_pos, self.window)  # (T, S)
        y = scaled_dot_product(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.d_head))


class MLACache:
    """What MLA caches per token and layer: the latent c_kv (C values) and one RoPE key (R values).

    Example: MLACache(1, 16, d_c=32, d_rope=8).nbytes_per_token -> 160 (float32)
    """

    def __init__(self, batch_size: int, max_len: int, d_c: int, d_rope: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        for name, n in {"batch_size": batch_size, "max_len": max_len, "d_c": d_c,
                        "d_rope": d_rope}.items():
            if n < 1:
                raise ValueError(f"{name} must be positive, got {n}")
        self.max_len = max_len
        self.c = torch.zeros(batch_size, max_len, d_c, dtype=dtype, device=device)  # (B, L, C)
        self.k_rope = torch.zeros(batch_size, max_len, d_rope, dtype=dtype, device=device)
        self.pos = 0

    def append(self, c: torch.Tensor, k_rope: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store T new latents (B, T, C) and RoPE keys (B, T, R); return views of all stored."""
        T = c.shape[1]
        if self.pos + T > self.max_len:
            raise ValueError(f"cannot append {T} tokens: the cache holds {self.pos} of max_len "
                             f"{self.max_len}")
        self.c[:, self.pos:self.pos + T] = c
        self.k_rope[:, self.pos:self.pos + T] = k_rope
        self.pos += T
        return self.c[:, :self.pos], self.k_rope[:, :self.pos]

    @property
    def nbytes_per_token(self) -> int:
        """(d_c + d_rope) values times their size: DeepSeek-V2's (d_c + d_h^R) per layer."""
        return (self.c.shape[-1] + self.k_rope.shape[-1]) * self.c.element_size()


class MultiHeadLatentAttention(nn.Module):
    """MLA (DeepSeek-V2): keys and values come up from a cached low-rank latent c_kv = W_dkv x.

    RoPE lives on separate decoupled dimensions: per-head q_rope, one shared k_rope (cached).
    Queries are not compressed here (DeepSeek-V2 compresses them too, to save activations).
    Example: MultiHeadLatentAttention(64, 4, 16, d_c=32, d_rope=8, rope=r)(x) has x's shape.
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int, *, d_c: int, d_rope: int,
                 rope: Rope):
        super().__init__()
        if d_rope % 2:
            raise ValueError(f"d_rope must be even (RoPE rotates pairs), got {d_rope}")
        self.n_heads, self.d_head, self.d_c, self.d_rope, self.rope = (
            n_heads, d_head, d_c, d_rope, rope)
        self.q_proj = nn.Linear(d_model, n_heads * d_head, bias=False)  # content queries
        self.q_rope_proj = nn.Linear(d_model, n_heads * d_rope, bias=False)  # W_QR
        self.kv_down = nn.Linear(d_model, d_c, bias=False)  # W_DKV: x -> c_kv, cached
        self.k_up = nn.Linear(d_c, n_heads * d_head, bias=False)  # W_UK: c_kv -> content keys
        self.v_up = nn.Linear(d_c, n_heads * d_head, bias=False)  # W_UV: c_kv -> values
        self.k_rope_proj = nn.Linear(d_model, d_rope, bias=False)  # W_KR: one key for all heads
        self.o_proj = nn.Linear(n_heads * d_head, d_model, bias=False)

    def forward(self, x: torch.Tensor, cache: MLACache | None = None) -> torch.Tensor:
        """(B, T, d_model) -> (B, T, d_model), causal; with a cache the T tokens follow it."""
        B, T, _ = x.shape
        H, D, R = self.n_heads, self.d_head, self.d_rope
        start = 0 if cache is None else cache.pos
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        q_r = self.rope(self.q_rope_proj(x).view(B, T, H, R).transpose(1, 2), start)
        c = self.kv_down(x)  # (B, T, C)
        # (B, 1, T, R) rotated once, at its own position, before it is cached
        k_r = self.rope(self.k_rope_proj(x)[:, None], start)[:, 0]  # (B, T, R)
        if cache is not None:
            c, k_r = cache.append(c, k_r)  # (B, S, C), (B, S, R)
        S = c.shape[1]
        k = self.k_up(c).view(B, S, H, D).transpose(1, 2)  # (B, H, S, D)
        v = self.v_up(c).view(B, S, H, D).transpose(1, 2)
        # Concatenate content and RoPE parts: q·k = q_c·k_c + q_r·k_r, the scale over both.
        q = torch.cat([q, q_r], dim=-1)  # (B, H, T, D + R)
        k = torch.cat([k, k_r[:, None].expand(B, H, S, R)], dim=-1)  # (B, H, S, D + R)
        mask = torch.ones(S, S, dtype=torch.bool, device=x.device).tril()[start:]  # (T, S)
        y = scaled_dot_product(q, k, v, mask)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))


def mla_bytes_per_token(n_layers: int, d_c: int, d_rope: int, bytes_per_value: int = 2) -> int:
    """DeepSeek-V2's MLA cache per token: (d_c + d_h^R) * l values.

    Example: mla_bytes_per_token(60, 512, 64) -> 69120
    """
    return (d_c + d_rope) * n_layers * bytes_per_value


