"""Attention for chapter 5: the maths written out, MHA / GQA / MQA, and the KV cache.

Shapes use one alphabet: B batch, T new tokens, S keys (cached + new), H query heads, H_kv
key/value heads, D d_head.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .tiled import tiled_attention  # chapter 5's online-softmax attention, kept in its own module

__all__ = [
    "causal_mask", "attention_weights", "scaled_dot_product", "repeat_kv",
    "KVCache", "MultiHeadAttention", "kv_cache_bytes", "kv_cache_table", "KVCacheRow",
    "tiled_attention", "linear_many",
]

GIB = 2**30


# --- the maths -----------------------------------------------------------------------------


def causal_mask(T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, T) bool mask, True where query i may attend key j, i.e. j <= i. Introduced in chapter 5.

    Example: causal_mask(3) -> [[T, F, F], [T, T, F], [T, T, T]]
    """
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def attention_weights(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) over the keys, with masked-out keys at weight 0.

    Introduced in chapter 5.

    Example: q = [[0.]], k = [[0.], [0.]] (one query, two keys, D = 1) -> [[0.5, 0.5]]
    """
    # (..., T, D) @ (..., D, S) -> (..., T, S)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        # -inf, not a large negative number: exp(-inf) is exactly 0, so a hidden
        # key gets no weight at all
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


def scaled_dot_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Attention written out: softmax(q k^T / sqrt(D)), masked, dropped out, then @ v.

    Introduced in chapter 5.

    Works for any leading dims, e.g. (B, H, T, D) queries with (B, H, S, D) keys
    and values -> (B, H, T, D).
    Example: q = [[0.]], k = [[0.], [0.]], v = [[2.], [4.]] -> [[3.]]
    (equal weights average the values)
    """
    weights = attention_weights(q, k, mask)  # (..., T, S)
    weights = F.dropout(weights, p=dropout_p, training=training)
    return weights @ v  # (..., T, S) @ (..., S, D) -> (..., T, D)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat each K/V head n_rep times, so query head h reads KV head h // n_rep (as HF Llama).

    Example: heads [a, b] with n_rep = 2 -> [a, a, b, b]. Introduced in chapter 5.
    """
    if n_rep == 1:
        return x  # plain multi-head attention: nothing to share, so nothing to copy
    return x.repeat_interleave(n_rep, dim=1)  # (B, H_kv, S, D) -> (B, H_kv * n_rep, S, D)


# Fuse q, k and v (and SwiGLU's gate and up) into one matmul under autograd, as nanoGPT's c_attn
# does? Off: on this course's 2-core CPU it times within noise of three products, 0.96-1.07x
# (benchmarks/bench_fused_qkv.py), and its weight copy would count as activation memory.
FUSE_PROJECTIONS = False


def linear_many(x: torch.Tensor, layers: tuple[nn.Module, ...]) -> tuple[torch.Tensor, ...]:
    """(layer(x) for layer in layers); one concatenated matmul if FUSE_PROJECTIONS. Chapter 7.

    Example: q, k, v = linear_many(x, (attn.q_proj, attn.k_proj, attn.v_proj))

    The modules keep their own weights (and Llama's names, for checkpoints and LoRA). Fused, their
    weights are concatenated for the step, under autograd only: without grad (evaluation,
    decoding one token) that copy would be paid per token. A layer that is not a plain
    nn.Linear (LoRA, a quantised one) always runs as itself.
    """
    fuse = FUSE_PROJECTIONS and torch.is_grad_enabled() and len(layers) > 1
    if not (fuse and all(type(m) is nn.Linear for m in layers)):
        return tuple(m(x) for m in layers)
    biases = [m.bias for m in layers]
    bias = None if biases[0] is None else torch.cat(biases)
    y = F.linear(x, torch.cat([m.weight for m in layers]), bias)
    return y.split([m.out_features for m in layers], dim=-1)


# --- the KV cache ----------------------------------------------------------------------------


class KVCache:
    """Preallocated keys and values for one attention layer, filled as tokens are decoded.

    Introduced in chapter 5.

    Example: c = KVCache(1, 8, 2, 4); c.append(k, v) with k, v of shape (1, 2, 3, 4) ->
    views (1, 2, 3, 4); c.pos == 3
    """

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        n_kv_heads: int,
        d_head: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        sizes = {"batch_size": batch_size, "max_len": max_len, "n_kv_heads": n_kv_heads,
                 "d_head": d_head}
        for name, n in sizes.items():
            if n < 1:
                raise ValueError(f"{name} must be positive, got {n}")
        self.max_len = max_len
        # Allocated once at full length: appending then writes in place instead of
        # re-concatenating every step.
        shape = (batch_size, n_kv_heads, max_len, d_head)  # (B, H_kv, max_len, D)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = 0  # tokens stored so far; the next token's absolute position

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store T new keys and values (B, H_kv, T, D).

        Return views of everything stored, (B, H_kv, pos, D).
        """
        want = (self.k.shape[0], self.k.shape[1], self.k.shape[3])
        if k.shape != v.shape or (k.shape[0], k.shape[1], k.shape[3]) != want:
            raise ValueError(f"expected k and v of shape (B={want[0]}, H_kv={want[1]}, T, "
                             f"D={want[2]}), got {tuple(k.shape)} and {tuple(v.shape)}")
        T = k.shape[2]
        if self.pos + T > self.max_len:
            raise ValueError(f"cannot append {T} tokens: the cache holds {self.pos} of max_len "
                             f"{self.max_len}")
        self.k[:, :, self.pos:self.pos + T] = k
        self.v[:, :, self.pos:self.pos + T] = v
        self.pos += T
        return self.k[:, :, :self.pos], self.v[:, :, :self.pos]  # views: no copy of the past

    def reset(self) -> None:
        """Forget every stored token; the buffers stay allocated and are simply overwritten."""
        self.pos = 0

    @property
    def nbytes(self) -> int:
        """Bytes allocated by the two buffers, full length, whatever pos is."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


# --- the module ------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention.

    n_kv_heads < n_heads makes it grouped-query (GQA), 1 multi-query (MQA). head_dim (default
    d_model // n_heads) may differ from it; q_norm and k_norm act on each head's (..., D) slice.

    Example: MultiHeadAttention(64, 8, 2)(torch.randn(1, 5, 64)).shape ->
    (1, 5, 64). Introduced in chapter 5.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        *,
        dropout: float = 0.0,
        bias: bool = False,
        causal: bool = True,
        rope: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        use_sdpa: bool = False,
        head_dim: int | None = None,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
    ):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads < 1 or n_kv_heads < 1:
            raise ValueError(f"n_heads and n_kv_heads must be positive, got n_heads={n_heads}, "
                             f"n_kv_heads={n_kv_heads}")
        if head_dim is None and d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} does not divide d_model={d_model}")
        if head_dim is not None and head_dim < 1:
            raise ValueError(f"head_dim must be positive, got {head_dim}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} does not divide n_heads={n_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        # Usually d_model // n_heads, but Qwen3 and Gemma pick it freely: q has n_heads * d_head
        # columns whatever d_model is, and o_proj maps them back.
        self.d_head = d_model // n_heads if head_dim is None else head_dim
        # QK-norm (Qwen3; OLMo 2 normalises the whole projection instead): an RMSNorm over each
        # head's D dimensions of q and k, before RoPE, so no logit q·k can grow without bound.
        self.q_norm, self.k_norm = q_norm, k_norm
        self.dropout, self.causal, self.rope, self.use_sdpa = dropout, causal, rope, use_sdpa
        # Separate projections, named as in Llama checkpoints, so chapter 6
        # can copy weights one to one.
        self.q_proj = nn.Linear(d_model, n_heads * self.d_head, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.d_head, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.d_head, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.d_head, d_model, bias=bias)
        # Set keep_weights = True to have every forward store its (B, H, T, S)
        # weights, e.g. for heatmaps.
        self.keep_weights = False
        self.last_weights: torch.Tensor | None = None

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, T, d_model) -> (B, T, d_model).

        With a cache, the T tokens follow the cache.pos tokens already in it.
        """
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"expected x of shape (B, T, d_model={self.d_model}), got "
                             f"{tuple(x.shape)}")
        B, T, _ = x.shape
        q, k, v = linear_many(x, (self.q_proj, self.k_proj, self.v_proj))
        q = q.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv_heads, self.d_head).transpose(1, 2)  # (B, H_kv, T, D)
        v = v.view(B, T, self.n_kv_heads, self.d_head).transpose(1, 2)  # (B, H_kv, T, D)

        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        start = 0 if cache is None else cache.pos  # absolute position of x's first token
        if self.rope is not None:
            # Rotate before caching: a cached key keeps the rotation of the
            # position it was written at.
            q, k = self.rope(q, start), self.rope(k, start)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H_kv, S, D) with S = start + T
        S = k.shape[2]
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H_kv, S, D) -> (B, H, S, D)

        # Query i sits at absolute position start + i and sees keys 0 .. start + i: the last T rows
        # of the (S, S) causal mask. A single new token may see every key,
        # so it needs no mask at all.
        masked = self.causal and T > 1
        # is_causal lets SDPA pick a fused kernel, but it aligns its mask
        # top-left: right only when S == T.
        square = self.use_sdpa and masked and S == T
        # (T, S); is_causal stands in for it
        mask = causal_mask(S, x.device)[start:] if masked and not square else None
        p = self.dropout if self.training else 0.0
        if self.use_sdpa:
            # (B, H, T, D)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=square
            )
        else:
            # (B, H, T, D)
            y = scaled_dot_product(q, k, v, mask, dropout_p=p, training=self.training)
        # (B, H, T, D) -> (B, T, H*D)
        y = self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.d_head))

        if not (return_weights or self.keep_weights):
            return y
        # Recomputed rather than taken from the pass above: SDPA never exposes them, and a heatmap
        # wants them before dropout. Only paid when asked for.
        if square:
            mask = causal_mask(S, x.device)
        weights = attention_weights(q, k, mask).detach()  # (B, H, T, S)
        if self.keep_weights:
            self.last_weights = weights
        return (y, weights) if return_weights else y


# --- what the cache costs --------------------------------------------------------------------


def kv_cache_bytes(
    n_layers: int, n_kv_heads: int, d_head: int, seq_len: int, batch_size: int = 1,
    bytes_per_value: int = 2
) -> int:
    """Bytes of a full KV cache: 2 (K and V) * layers * KV heads * d_head * bytes * tokens * batch.

    Example: kv_cache_bytes(80, 8, 128, 4096) -> 1342177280
    (1.25 GiB: Llama-2-70B in bf16). Introduced in chapter 5.
    """
    return 2 * n_layers * n_kv_heads * d_head * bytes_per_value * seq_len * batch_size


class KVCacheRow(NamedTuple):
    """One model's KV cache: per token, and for one sequence of seq_len tokens."""

    name: str
    n_layers: int
    n_kv_heads: int
    d_head: int
    bytes_per_token: int
    gib: float


# (name, layers, KV heads, d_head), from the published configs; the 70B rows
# change only the KV heads.
_KV_MODELS = [
    ("Llama-2-7B (MHA)", 32, 32, 128),
    ("Llama-3-8B (GQA)", 32, 8, 128),
    ("Llama-2-70B as MHA", 80, 64, 128),
    ("Llama-2-70B (GQA, as released)", 80, 8, 128),
    ("Llama-2-70B as MQA", 80, 1, 128),
]
# Mistral 7B: GQA with 8 KV heads and a 4,096-token sliding window, so its rolling cache never
# holds more than 4,096 tokens (Jiang et al. 2023).
MISTRAL_WINDOW = 4096
# DeepSeek-V2's MLA caches, per layer and token, one latent c_kv of d_c = 512 and one shared
# RoPE key of d_h^R = 64: (d_c + d_h^R) * l values, with no factor 2 (arXiv 2405.04434, sec. 2.1).
DEEPSEEK_V2 = {"n_layers": 60, "d_c": 512, "d_rope": 64}


def kv_cache_table(seq_len: int = 4096, bytes_per_value: int = 2) -> list[KVCacheRow]:
    """KV cache size of MHA, GQA, MQA, sliding window and MLA; defaults: 4k context, bf16, batch 1.

    The MLA row stores one latent "head" of d_c + d_h^R values. Example: kv_cache_table()[3] ->
    KVCacheRow('Llama-2-70B (GQA, as released)', 80, 8, 128, 327680, 1.25)
    """
    rows = [
        KVCacheRow(name, layers, kv, d, kv_cache_bytes(layers, kv, d, 1, 1, bytes_per_value),
                   kv_cache_bytes(layers, kv, d, seq_len, 1, bytes_per_value) / GIB)
        for name, layers, kv, d in _KV_MODELS
    ]
    kept = min(seq_len, MISTRAL_WINDOW)  # a rolling cache stops growing at the window
    rows.append(KVCacheRow(f"Mistral-7B (GQA, window {MISTRAL_WINDOW})", 32, 8, 128,
                           kv_cache_bytes(32, 8, 128, 1, 1, bytes_per_value),
                           kv_cache_bytes(32, 8, 128, kept, 1, bytes_per_value) / GIB))
    n, width = DEEPSEEK_V2["n_layers"], DEEPSEEK_V2["d_c"] + DEEPSEEK_V2["d_rope"]
    per_token = n * width * bytes_per_value
    rows.append(KVCacheRow("DeepSeek-V2 (MLA)", n, 1, width, per_token,
                           per_token * seq_len / GIB))
    return rows
