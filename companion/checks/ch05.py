"""Self-checks for chapter 5's exercises.

Causal attention weights, splitting heads, sharing K/V heads, KV-cache size, a cached chunk with
RoPE, and blockwise attention with the online softmax.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..attention import attention_weights, causal_mask, kv_cache_bytes, repeat_kv
from ._core import as_scalar, as_tensor, call, fail, passed

__all__ = ["check_5_1", "check_5_2", "check_5_3", "check_5_4", "check_5_5", "check_5_6"]


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


def _rope(d_head: int):
    from ..positional import RotaryEmbedding

    return RotaryEmbedding(d_head, 64)


def _chunk_reference(q, k, v, past_k, past_v, rope, offset=True, rope_start=None):
    """The right cached chunk (or one of its classic bugs, for diagnosis)."""
    L, T = past_k.shape[2], q.shape[2]
    start = L if rope_start is None else rope_start
    q, k = rope(q, start), rope(k, start)
    all_k, all_v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
    S = L + T
    mask = causal_mask(S)[L:] if offset else torch.ones(T, S, dtype=torch.bool).tril()
    return attention_weights(q, all_k, mask) @ all_v, all_k, all_v


def check_5_5(attend_chunk: Callable[..., tuple]) -> None:
    """attend_chunk(q, k, v, past_k, past_v, rope) -> (out, all_k, all_v), chunk after a cache.

    q, k, v (B, H, T, D) new and unrotated; past_k (rotated), past_v (B, H, L, D).
    """
    ex = "5.5"
    g = torch.Generator().manual_seed(55)
    B, H, D, S = 1, 2, 8, 12
    rope = _rope(D)
    q, k, v = (torch.randn(B, H, S, D, generator=g) for _ in range(3))

    def run(a: int, b: int, past_k, past_v):
        got = call(ex, attend_chunk, q[:, :, a:b].clone(), k[:, :, a:b].clone(),
                   v[:, :, a:b].clone(), past_k.clone(), past_v.clone(), rope)
        if not isinstance(got, tuple) or len(got) != 3:
            fail(ex, "return three things: the chunk's output and the grown keys and values.")
        return [as_tensor(ex, t, "each returned value").float() for t in got]

    empty = torch.zeros(B, H, 0, D)
    want = _chunk_reference(q[:, :, :5], k[:, :, :5], v[:, :, :5], empty, empty, rope)
    out, all_k, all_v = run(0, 5, empty, empty)
    if tuple(out.shape) != (B, H, 5, D) or tuple(all_k.shape) != (B, H, 5, D):
        fail(ex, f"for a 5-token chunk and an empty cache expected output and keys of shape "
                 f"{(B, H, 5, D)}, got {tuple(out.shape)} and {tuple(all_k.shape)}")
    if not torch.allclose(out, want[0], atol=1e-5):
        fail(ex, "wrong already for the first chunk (an empty cache): this is plain causal "
                 "attention with RoPE at positions 0..T-1, scaled by 1/sqrt(D).")
    # a chunk of 4 after 5 cached tokens
    past_k, past_v = want[1], want[2]
    a, b = 5, 9
    args = (q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], past_k, past_v, rope)
    right = _chunk_reference(*args)
    out, all_k, all_v = run(a, b, past_k, past_v)
    if tuple(all_k.shape) != (B, H, 9, D) or not torch.allclose(all_k[:, :, :5], past_k):
        fail(ex, "the returned keys must be the cached ones followed by the chunk's, in order: "
                 f"expected shape {(B, H, 9, D)}, got {tuple(all_k.shape)}")
    new_k = all_k[:, :, 5:]
    if torch.allclose(new_k, rope(k[:, :, a:b], 0), atol=1e-5):
        fail(ex, "the chunk's keys were rotated as if they began the text. Its tokens sit after "
                 "the cached ones, at positions L..L+T-1, and that is the angle they need.")
    if torch.allclose(new_k, k[:, :, a:b], atol=1e-5):
        fail(ex, "the chunk's keys went into the cache unrotated. Each key must carry the "
                 "rotation of its own position when it is stored: a later step cannot redo it.")
    if not torch.allclose(new_k, right[1][:, :, 5:], atol=1e-5):
        fail(ex, "the chunk's new keys are not rotated at their absolute positions L..L+T-1.")
    if not torch.allclose(all_v, right[2], atol=1e-6):
        fail(ex, "the returned values must be the cached ones followed by the chunk's (values "
                 "are never rotated).")
    if torch.allclose(out, _chunk_reference(*args, offset=False)[0], atol=1e-5):
        fail(ex, "the mask is not offset by the cache: query i of the chunk sits at position "
                 "L + i and may read every cached key and the chunk's keys up to its own.")
    if not torch.allclose(out, right[0], atol=1e-5):
        fail(ex, "keys and values are right but the chunk's output is not: query i may read keys "
                 "0..L+i, weighted by softmax(q k^T / sqrt(D)).")
    # a single decoded token after 9, then the full forward
    out1, k1, v1 = run(9, 10, all_k, all_v)
    out2, _, _ = run(10, 12, k1, v1)
    full = _chunk_reference(q, k, v, empty, empty, rope)[0]
    got = torch.cat([want[0], out, out1, out2], 2)
    if not torch.allclose(got, full, atol=1e-5):
        fail(ex, "chunks of 5, 4, 1 and 2 do not add up to the full forward pass; check the "
                 "single-token step (T = 1), which may read every key.")
    passed(ex, "chunks of 5, 4, 1 and 2 tokens through your cache equal the uncached forward, "
               "with RoPE at each chunk's position.")


def _blockwise(q, k, v, block, rescale_sum=True, rescale_acc=True, causal=True):
    """Online-softmax attention for (T, D) queries, or one of its classic slips."""
    T, S = q.shape[0], k.shape[0]
    m = torch.full((T, 1), float("-inf"))
    l, acc = torch.zeros(T, 1), torch.zeros(T, v.shape[1])
    for j in range(0, S, block):
        s = q @ k[j:j + block].T / math.sqrt(q.shape[1])
        if causal:
            s = s.masked_fill(torch.arange(j, j + s.shape[1])[None] > torch.arange(T)[:, None],
                              float("-inf"))
        m_new = torch.maximum(m, s.amax(1, keepdim=True))
        p, r = torch.exp(s - m_new), torch.exp(m - m_new)
        l = (l * r if rescale_sum else l) + p.sum(1, keepdim=True)
        acc = (acc * r if rescale_acc else acc) + p @ v[j:j + block]
        m = m_new
    return acc / l


_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__,
             torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.einsum,
             torch.nn.functional.linear}


class _Spy(torch.overrides.TorchFunctionMode):
    """Records the largest tensor made and the score entries (products over the head width)."""

    def __init__(self, d_head: int):
        super().__init__()
        self.d_head, self.largest, self.scores = d_head, 0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        operands = [a for a in (args[1:] if func is torch.einsum else args)
                    if isinstance(a, torch.Tensor)]
        if func is torch.einsum and len(args) == 2 and isinstance(args[1], (tuple, list)):
            operands = list(args[1])
        # A product of queries and keys reduces over the head width: both operands end in D
        # (q @ k.T has a k.T whose second-to-last is D, so test the first operand's last dim).
        if (func in _MATMULS and isinstance(out, torch.Tensor) and len(operands) >= 1
                and operands[0].shape[-1] == self.d_head and out.shape[-1] != self.d_head):
            self.scores += out.numel()
        return out


def check_5_6(blockwise_attention: Callable[..., torch.Tensor]) -> None:
    """blockwise_attention(q, k, v, block_size) -> (T, D) causal attention, keys in blocks.

    q, k, v are (T, D); the answer must equal softmax with the causal mask.
    """
    ex = "5.6"
    g = torch.Generator().manual_seed(56)
    T, D = 23, 8
    q, k, v = (torch.randn(T, D, generator=g) * 3 for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None],
                                                            is_causal=True)[0]
    got = as_tensor(ex, call(ex, blockwise_attention, q.clone(), k.clone(), v.clone(), 5),
                    "blockwise_attention(q, k, v, 5)").float()
    if tuple(got.shape) != (T, D):
        fail(ex, f"expected an output of shape (T, D) = {(T, D)}, got {tuple(got.shape)}")
    if not torch.isfinite(got).all():
        fail(ex, "NaN or inf in the output: subtract the running max before exponentiating, and "
                 "make sure every row has seen at least one key before dividing.")
    if torch.allclose(got, _blockwise(q, k, v, 5, rescale_sum=False), atol=1e-4):
        fail(ex, "when the running max grows, the sum collected so far was taken against the old "
                 "max: it must shrink by the same factor as the output.")
    if torch.allclose(got, _blockwise(q, k, v, 5, rescale_acc=False), atol=1e-4):
        fail(ex, "when the running max grows, the unnormalised output collected so far must be "
                 "rescaled too, not only the sum.")
    if torch.allclose(got, _blockwise(q, k, v, 5, causal=False), atol=1e-4):
        fail(ex, "query i reads keys after it: mask the scores of keys j > i inside each block.")
    if not torch.allclose(got, want, atol=1e-4):
        fail(ex, f"max |yours - causal softmax attention| = {(got - want).abs().max():.2e}: "
                 "keep the running max, sum and output per query row, and divide once at the end.")
    for block in (1, 4, T, 100):
        out = as_tensor(ex, call(ex, blockwise_attention, q.clone(), k.clone(), v.clone(), block),
                        f"blockwise_attention(q, k, v, {block})").float()
        if tuple(out.shape) != (T, D) or not torch.allclose(out, want, atol=1e-4):
            fail(ex, f"right with blocks of 5 but wrong with block_size={block}: the last block "
                     "may be shorter, and one block may hold every key.")
    big = as_tensor(ex, call(ex, blockwise_attention, q * 60, k * 60, v, 4), "large scores")
    if not torch.isfinite(big).all():
        fail(ex, "with large scores (q and k times 60) your output overflows: exponentiate scores "
                 "minus the running max, so every exponential is at most 1.")
    # Right answers can still hold the whole (T, T) matrix, or read the keys twice (one pass for
    # the max, one for the sum): watch every tensor made and every q.k product at T = 256.
    T, D, block = 256, 8, 16
    q, k, v = (torch.randn(T, D, generator=g) for _ in range(3))
    spy = _Spy(D)
    with spy:
        out = call(ex, blockwise_attention, q.clone(), k.clone(), v.clone(), block)
    want = torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None],
                                                            is_causal=True)[0]
    if not torch.allclose(as_tensor(ex, out, "the output").float(), want, atol=1e-4):
        fail(ex, f"right at T=23 but wrong at T={T} with blocks of {block}.")
    if spy.largest >= T * T // 4:
        fail(ex, f"at T={T} with blocks of {block} your function made a tensor of "
                 f"{spy.largest:,} numbers, a quarter of the {T}x{T} matrix or more. Hold one "
                 f"(T, block) tile of scores at a time, and build the causal mask per tile from "
                 "positions, never the whole score, weight or mask matrix.")
    if spy.scores > 1.5 * T * T:
        fail(ex, f"your function computed {spy.scores:,} query-key scores for {T}x{T} = "
                 f"{T * T:,} pairs: it reads the keys more than once (a pass for the max, then one "
                 "for the sum). That is exact but not online: keep a running max and rescale what "
                 "was summed so far, so one pass over the keys is enough.")
    passed(ex, "equal to causal softmax attention for blocks of 1, 4, 5, 23 and 100 keys, "
               "stable for large scores, one pass over the keys, never a T x T tensor.")
