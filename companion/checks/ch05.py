"""Self-checks for chapter 5's exercises.

Causal attention weights, splitting heads, sharing K/V heads, KV-cache size.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..attention import attention_weights, causal_mask, kv_cache_bytes, repeat_kv
from ._core import as_scalar, as_tensor, call, fail, passed

__all__ = ["check_5_1", "check_5_2", "check_5_3", "check_5_4"]


def check_5_1(
    causal_attention_weights: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """causal_attention_weights(q, k) -> (B, T, T) softmax(q k^T / sqrt(D)), masked causally.

    q and k are (B, T, D).
    """
    ex = "5.1"
    g = torch.Generator().manual_seed(51)
    B, T, D = 2, 6, 16
    q, k = torch.randn(B, T, D, generator=g) * 2, torch.randn(B, T, D, generator=g) * 2
    got = as_tensor(
        ex, call(ex, causal_attention_weights, q.clone(), k.clone()), "the weights"
    ).float()
    if tuple(got.shape) != (B, T, T):
        fail(ex, f"for q, k of shape (B={B}, T={T}, D={D}) expected weights (B, T, T) = "
                 f"{(B, T, T)}, got {tuple(got.shape)}")
    mask = causal_mask(T)
    want = attention_weights(q, k, mask)
    scores = q @ k.transpose(-1, -2)
    if torch.isnan(got).any():
        fail(ex, "NaN in the weights: a row with every score at -inf gives 0/0. Mask the future "
                 "only (j > i), never the diagonal.")
    if (got.triu(1).abs() > 1e-6).any():
        if torch.allclose(got.tril(-1), torch.zeros_like(got.tril(-1)), atol=1e-6):
            fail(ex, "the mask is the wrong way round: query i may read keys j <= i "
                     "(lower triangle), not the future.")
        fail(ex, "query i puts weight on keys j > i: the future must get weight exactly 0 "
                 "(set its scores to -inf before softmax).")
    sums = got.sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-5):
        if torch.allclose(got.sum(-2), torch.ones(B, T), atol=1e-5):
            fail(ex, "your columns sum to 1, not your rows: take the softmax over the last "
                     "dimension (the keys).")
        fail(ex, "rows don't sum to 1: mask before the softmax (scores -> -inf), not by zeroing "
                 "weights after it.")
    if torch.allclose(got, torch.softmax(scores.masked_fill(~mask, float("-inf")), -1), atol=1e-5):
        fail(ex, f"you forgot the scaling: divide the scores by sqrt(D) = sqrt({D}) before the "
                 "softmax.")
    if torch.allclose(
        got, torch.softmax((scores / D).masked_fill(~mask, float("-inf")), -1), atol=1e-5
    ):
        fail(ex, f"you divided by D = {D}; the scale is 1/sqrt(D) = 1/{math.sqrt(D):.0f}.")
    if not torch.allclose(got, want, atol=1e-5):
        fail(ex, "masked and normalised, but the values are off: weights = "
                 "softmax(q @ k^T / sqrt(D)) with the causal mask.")
    one = as_tensor(
        ex, call(ex, causal_attention_weights, q[:, :1], k[:, :1]), "the weights"
    ).float()
    if not torch.allclose(one, torch.ones(B, 1, 1)):
        fail(ex, "with one token (T=1) the only weight is 1: the token attends to itself.")
    passed(ex, "weights are scaled, masked causally, sum to 1 per query, and handle T=1.")


def check_5_2(split_heads: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """split_heads(x (B, T, C), n_heads) -> (B, H, T, C // H).

    Head h holds channels h*D .. (h+1)*D - 1.
    """
    ex = "5.2"
    B, T, H, D = 2, 5, 3, 4
    x = torch.arange(B * T * H * D, dtype=torch.float32).view(B, T, H * D)
    got = as_tensor(ex, call(ex, split_heads, x.clone(), H), "split_heads(x)")
    want = x.view(B, T, H, D).transpose(1, 2)
    if tuple(got.shape) == (B, T, H, D):
        fail(ex, f"shape (B, T, H, D) = {(B, T, H, D)}: one more step, swap T and H with "
                 ".transpose(1, 2).")
    if tuple(got.shape) != (B, H, T, D):
        fail(ex, f"expected (B, H, T, D) = {(B, H, T, D)}, got {tuple(got.shape)}")
    if torch.equal(got, x.view(B, H, T, D)):
        fail(ex, "right shape, scrambled data: .view(B, H, T, D) cuts the sequence, not the "
                 "channels. View as (B, T, H, D) first, then transpose(1, 2).")
    if not torch.equal(got, want):
        fail(ex, "right shape, wrong layout: head h of token t should hold x[b, t, h*D:(h+1)*D].")
    passed(ex, "each head gets its own slice of channels, for every token, in shape (B, H, T, D).")


def check_5_3(repeat_kv_heads: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """repeat_kv_heads(x (B, H_kv, T, D), n_rep) -> (B, H_kv * n_rep, T, D).

    Query head h reads KV head h // n_rep.
    """
    ex = "5.3"
    g = torch.Generator().manual_seed(53)
    x = torch.randn(2, 2, 3, 4, generator=g)  # two KV heads
    got = as_tensor(ex, call(ex, repeat_kv_heads, x.clone(), 3), "repeat_kv_heads(x, 3)")
    want = repeat_kv(x, 3)
    if tuple(got.shape) != (2, 6, 3, 4):
        fail(ex, "2 KV heads repeated 3 times make 6 heads: expected shape (2, 6, 3, 4), got "
                 f"{tuple(got.shape)}")
    if torch.equal(got, x.repeat(1, 3, 1, 1)):
        fail(ex, "you tiled the heads (0, 1, 0, 1, 0, 1); GQA groups neighbours: "
                 "(0, 0, 0, 1, 1, 1), so query heads 0-2 share KV head 0. Try repeat_interleave on "
                 "dim 1.")
    if not torch.equal(got, want):
        fail(ex, "query head h should read KV head h // n_rep.")
    same = as_tensor(ex, call(ex, repeat_kv_heads, x.clone(), 1), "repeat_kv_heads(x, 1)")
    if not torch.equal(same, x):
        fail(ex, "n_rep = 1 is plain multi-head attention: return the heads unchanged.")
    mqa = as_tensor(
        ex, call(ex, repeat_kv_heads, x[:, :1].clone(), 4), "repeat_kv_heads(x[:, :1], 4)"
    )
    if not torch.equal(mqa, x[:, :1].expand(2, 4, 3, 4)):
        fail(ex, "with one KV head (MQA) every query head reads that head.")
    passed(ex, "GQA groups, MHA (n_rep=1) and MQA (one KV head) all share K/V heads correctly.")


def check_5_4(kv_bytes: Callable[..., int]) -> None:
    """kv_bytes(n_layers, n_heads, n_kv_heads, d_model, seq_len, batch_size, bytes_per_value).

    Returns the bytes of the cache.
    """
    ex = "5.4"

    def want(n_layers, n_heads, n_kv_heads, d_model, seq_len, batch_size, bytes_per_value):
        return kv_cache_bytes(
            n_layers, n_kv_heads, d_model // n_heads, seq_len, batch_size, bytes_per_value
        )

    llama70 = (80, 64, 8, 8192, 4096, 1, 2)
    got = as_scalar(ex, call(ex, kv_bytes, *llama70), "kv_bytes(...)")
    right = want(*llama70)
    if got == right / 2:
        fail(ex, "half the right answer: the cache holds keys AND values, a factor of 2.")
    if got == want(80, 64, 64, 8192, 4096, 1, 2):
        fail(ex, "you sized the cache with n_heads query heads; only the n_kv_heads K/V heads are "
                 "cached.")
    if got == 2 * 80 * 8 * 8192 * 4096 * 2:
        fail(ex, "each KV head is d_head = d_model / n_heads wide, not d_model.")
    if got != right:
        fail(ex, f"Llama-2-70B at 4,096 tokens in bf16 needs {right:,} bytes (1.25 GiB), got "
                 f"{got:,.0f}")
    for args in [(32, 32, 32, 4096, 4096, 1, 2), (12, 12, 12, 768, 1024, 8, 4),
                 (80, 64, 1, 8192, 4096, 1, 2)]:
        got = as_scalar(ex, call(ex, kv_bytes, *args), "kv_bytes(...)")
        if got != want(*args):
            fail(ex, f"right for Llama-2-70B but wrong for {args}: expected {want(*args):,}, got "
                     f"{got:,.0f}. Use every argument, batch_size and bytes_per_value included.")
    passed(ex, "Llama-2-70B (GQA), Llama-2-7B (MHA), GPT-2 in fp32 at batch 8, and MQA all come "
               "out exact.")
