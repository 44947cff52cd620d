"""Self-checks for chapter 5's exercises.

FlashAttention-2's backward for one key block, MLA decoding with W_UK absorbed, sharing K/V
heads, a rolling sliding-window buffer, a cached chunk with RoPE, and blockwise attention with the
online softmax.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..attention import attention_weights, causal_mask, repeat_kv
from ._core import as_tensor, call, fail, passed

__all__ = ["check_5_1", "check_5_2", "check_5_3", "check_5_4", "check_5_5", "check_5_6"]


def _tile_backward(q, k, v, dout, lse, delta, k0, block, mask="absolute", renorm=False,
                   use_delta=True, scale_grads=True, local_delta=False):
    """One key block's causal backward for (T, D) q, k, v (or one of its classic slips)."""
    scale = 1 / math.sqrt(q.shape[1])
    kb, vb = k[k0:k0 + block], v[k0:k0 + block]
    s = q @ kb.T * scale  # (T, b)
    qpos = torch.arange(q.shape[0])[:, None]
    kpos = torch.arange(kb.shape[0])[None, :] + (k0 if mask == "absolute" else 0)
    if mask != "none":
        s = s.masked_fill(kpos > qpos, float("-inf"))
    p = torch.softmax(s, -1) if renorm else torch.exp(s - lse[:, None])
    dv = p.T @ dout
    dp = dout @ vb.T
    if local_delta:  # the row term summed over this block's keys only
        delta = (p * dp).sum(-1)
    ds = p * (dp - delta[:, None]) if use_delta else p * dp
    g = scale if scale_grads else 1.0
    return ds @ kb * g, ds.T @ q * g, dv


def check_5_1(key_block_backward: Callable[..., tuple]) -> None:
    """key_block_backward(q, k, v, dout, lse, delta, k_start, block_size) -> (dq_part, dk_b, dv_b).

    One head, causal, q, k, v, dout (T, D); lse and delta (T,); the block is keys
    k_start .. k_start + block_size - 1 (the last block may be shorter).
    """
    ex = "5.1"
    g = torch.Generator().manual_seed(51)
    T, D, block = 23, 8, 5
    q, k, v, dout = (torch.randn(T, D, generator=g, dtype=torch.float64) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    s = leaves[0] @ leaves[1].T / math.sqrt(D)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.softmax(s, -1) @ leaves[2]
    out.backward(dout)
    want = [t.grad for t in leaves]
    lse = torch.logsumexp(s.detach(), -1)
    delta = (dout * out.detach()).sum(-1)

    def run(k0: int) -> list[torch.Tensor]:
        got = call(ex, key_block_backward, q.clone(), k.clone(), v.clone(), dout.clone(),
                   lse.clone(), delta.clone(), k0, block)
        if not isinstance(got, tuple) or len(got) != 3:
            fail(ex, "return three things: this block's share of dq (T, D), and dk and dv for the "
                     "block's keys (block_size, D).")
        got = [as_tensor(ex, t, "each returned gradient").double() for t in got]
        n = min(block, T - k0)
        if (tuple(got[0].shape) != (T, D) or tuple(got[1].shape) != (n, D)
                or tuple(got[2].shape) != (n, D)):
            fail(ex, f"for keys {k0}..{k0 + n - 1} expected shapes ({T}, {D}), ({n}, {D}), "
                     f"({n}, {D}), got {[tuple(t.shape) for t in got]}")
        return got

    got = run(10)  # keys 10..14: a block crossing the diagonal
    if not all(torch.isfinite(t).all() for t in got):
        fail(ex, "NaN or inf in your gradients: queries 0..9 see none of keys 10..14, and a "
                 "softmax over the tile alone divides 0 by 0 there. Rebuild the weights as "
                 "exp(s - lse), which is 0 for a masked score.")

    def like(**slip) -> bool:
        ref = _tile_backward(q, k, v, dout, lse, delta, 10, block, **slip)
        return all(torch.allclose(a, b, atol=1e-8) for a, b in zip(got, ref))

    if like(mask="none"):
        fail(ex, "keys after a query got weight: mask the scores of keys j > i before "
                 "exponentiating, as the forward did.")
    if like(mask="local"):
        fail(ex, "the mask compares the query's row with the key's index inside the block; key "
                 "j of the block sits at position k_start + j.")
    if like(use_delta=False):
        fail(ex, "ds = p * dp is missing the softmax's row term: ds = p * (dp - delta), with "
                 "delta_i = do_i . o_i.")
    if like(local_delta=True):
        fail(ex, "delta was summed over this block's keys alone. The softmax's row term "
                 "delta_i = sum_j p_ij dp_ij runs over the whole row; it equals do_i . o_i, which "
                 "is the delta passed in: use it as it is.")
    if like(scale_grads=False):
        fail(ex, "the scores were q k^T / sqrt(D), so dq and dk carry the factor 1/sqrt(D) too.")
    right = _tile_backward(q, k, v, dout, lse, delta, 10, block)
    for name, a, b in zip(("dq", "dk", "dv"), got, right):
        if not torch.allclose(a, b, atol=1e-8):
            fail(ex, f"{name} of keys 10..14 is off by {(a - b).abs().max():.1e}: rebuild "
                     "p = exp(q k^T / sqrt(D) - lse), then dv = p^T dout, dp = dout v^T, "
                     "ds = p (dp - delta), dq = ds k / sqrt(D), dk = ds^T q / sqrt(D).")
    dq, dks, dvs = torch.zeros(T, D, dtype=torch.float64), [], []
    for k0 in range(0, T, block):
        part, dk_b, dv_b = run(k0)
        dq += part
        dks.append(dk_b)
        dvs.append(dv_b)
    for name, a, b in zip(("dq", "dk", "dv"), (dq, torch.cat(dks), torch.cat(dvs)), want):
        if not torch.allclose(a, b, atol=1e-8):
            fail(ex, f"right for keys 10..14 but the blocks together miss autograd's {name} by "
                     f"{(a - b).abs().max():.1e}; check the first block and the short last one.")
    passed(ex, "every key block's share, summed, equals autograd's dq, dk and dv through causal "
               "attention, the short last block and the diagonal included.")


def _mla_absorbed(mla, x, c, k_r, rope_at=None, use_rope=True, head_scale=False):
    """The absorbed decoding step (or a classic slip): W_UK into q, W_UV after the weights."""
    B, S, C = c.shape
    H, D, R = mla.n_heads, mla.d_head, mla.d_rope
    q = mla.q_proj(x).view(B, 1, H, D).transpose(1, 2)  # (B, H, 1, D)
    q_lat = torch.einsum("bhtd,hdc->bhtc", q, mla.k_up.weight.view(H, D, C))
    q_r = mla.q_rope_proj(x).view(B, 1, H, R).transpose(1, 2)
    q_r = mla.rope(q_r, S - 1 if rope_at is None else rope_at)
    scores = q_lat @ c[:, None].transpose(-1, -2)  # (B, H, 1, S)
    if use_rope:
        scores = scores + q_r @ k_r[:, None].transpose(-1, -2)
    w = torch.softmax(scores / math.sqrt(D if head_scale else D + R), -1)
    o = torch.einsum("bhtc,hdc->bhtd", w @ c[:, None], mla.v_up.weight.view(H, D, C))
    return mla.o_proj(o.transpose(1, 2).reshape(B, 1, H * D))


class _ShapeSpy(torch.overrides.TorchFunctionMode):
    """Records the shape of every tensor made that has S rows of per-head keys or values."""

    def __init__(self, S: int, H: int, D: int):
        super().__init__()
        self.S, self.H, self.D, self.seen = S, H, D, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and self.seen is None and self.S in t.shape and (
                    self.H * self.D in t.shape or (self.H in t.shape and self.D in t.shape)):
                self.seen = tuple(t.shape)
        return out


def check_5_2(absorbed_step: Callable[..., torch.Tensor]) -> None:
    """absorbed_step(mla, x (B, 1, d_model), c (B, S, d_c), k_r (B, S, d_rope)) -> (B, 1, d_model).

    One MLA decoding step for the newest token (position S - 1), with W_UK absorbed into the
    query and W_UV applied after the weights: no per-head key or value for the S cached tokens.
    """
    from ..attention_variants import MultiHeadLatentAttention
    from ..positional import RotaryEmbedding

    ex = "5.2"
    torch.manual_seed(52)
    B, S, d_model, H, D, C, R = 2, 11, 40, 4, 16, 24, 6
    mla = MultiHeadLatentAttention(d_model, H, D, d_c=C, d_rope=R,
                                   rope=RotaryEmbedding(R, 64)).eval()
    x_seq = torch.randn(B, S, d_model, generator=torch.Generator().manual_seed(52))
    with torch.no_grad():
        full = mla(x_seq)  # the unabsorbed forward: keys and values up-projected for all tokens
        c = mla.kv_down(x_seq)
        k_r = mla.rope(mla.k_rope_proj(x_seq)[:, None], 0)[:, 0]
        spy = _ShapeSpy(S, H, D)
        with spy:
            got = call(ex, absorbed_step, mla, x_seq[:, -1:].clone(), c.clone(), k_r.clone())
        got = as_tensor(ex, got, "absorbed_step's result").float()
        if tuple(got.shape) != (B, 1, d_model):
            fail(ex, f"expected the new token's output of shape (B, 1, d_model) = "
                     f"{(B, 1, d_model)}, got {tuple(got.shape)}")

        def like(**slip) -> bool:
            return torch.allclose(got, _mla_absorbed(mla, x_seq[:, -1:], c, k_r, **slip),
                                  atol=1e-5)

        if like(use_rope=False):
            fail(ex, "the scores miss the decoupled RoPE part: add q_rope . k_rope to the "
                     "content score q_c . k_c of every cached token.")
        if like(rope_at=0):
            fail(ex, f"the new token's RoPE query was rotated at position 0; it sits at position "
                     f"S - 1 = {S - 1}, after the cached tokens.")
        if like(head_scale=True):
            fail(ex, f"the scores are divided by sqrt(d_head) = sqrt({D}); MLA's score spans the "
                     f"content and RoPE parts, so divide by sqrt(d_head + d_rope) = "
                     f"sqrt({D + R}).")
        err = (got - full[:, -1:]).abs().max()
        if err > 1e-5:
            fail(ex, f"max |yours - the full forward's last token| = {err:.1e}. Per head h, "
                     f"q_c . (W_UK[h] c) = (W_UK[h]^T q_c) . c: W_UK[h] is rows h*d_head.."
                     f"(h+1)*d_head - 1 of mla.k_up.weight.")
        if spy.seen is not None:
            fail(ex, f"right output, but your step made a tensor of shape {spy.seen}: per-head "
                     f"keys or values for all {S} cached tokens. Absorb W_UK into the query and "
                     "apply W_UV after the weighted sum of latents, so only the latents are read.")
        one = call(ex, absorbed_step, mla, x_seq[:, :1].clone(), c[:, :1].clone(),
                   k_r[:, :1].clone())
        if not torch.allclose(as_tensor(ex, one, "the first step").float(), full[:, :1],
                              atol=1e-5):
            fail(ex, "right after 10 cached tokens but not for the very first token (S = 1).")
    passed(ex, "the absorbed step equals the full forward's last token, reading only the cached "
               "latents and RoPE keys, never per-head keys or values.")


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


def _rolling_step(q, k, v, buf_k, buf_v, buf_pos, pos, window, write_first=True,
                  mask_empty=True):
    """One decoding step through a rolling buffer (or a classic slip)."""
    def attend():
        seen = buf_pos >= 0 if mask_empty else torch.ones_like(buf_pos, dtype=torch.bool)
        s = (q[:, None] @ buf_k.transpose(-1, -2))[:, 0] / math.sqrt(q.shape[-1])  # (H, W)
        w = torch.softmax(s.masked_fill(~seen, float("-inf")), -1)
        return (w[:, None] @ buf_v)[:, 0]

    if not write_first:
        out = attend()
    slot = pos % window
    buf_k[:, slot], buf_v[:, slot], buf_pos[slot] = k, v, pos
    return attend() if write_first else out


def check_5_4(rolling_step: Callable[..., torch.Tensor]) -> None:
    """rolling_step(q, k, v, buf_k, buf_v, buf_pos, pos, window) -> (H, D), buffers updated.

    q, k, v (H, D) are the token at position pos; buf_k, buf_v (H, window, D) and buf_pos
    (window,) are the rolling buffer, -1 marking an empty slot.
    """
    ex = "5.4"
    from ..attention_variants import band_mask

    g = torch.Generator().manual_seed(54)
    H, D, W, N = 2, 8, 6, 30
    q, k, v = (torch.randn(H, N, D, generator=g) for _ in range(3))
    want = torch.softmax(
        (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(
            ~band_mask(torch.arange(N), torch.arange(N), W), float("-inf")), -1) @ v
    buf_k, buf_v = torch.zeros(H, W, D), torch.zeros(H, W, D)
    buf_pos = torch.full((W,), -1, dtype=torch.long)
    slips = {"write_first": False, "mask_empty": False}
    refs = {name: (torch.zeros(H, W, D), torch.zeros(H, W, D),
                   torch.full((W,), -1, dtype=torch.long)) for name in slips}
    for t in range(N):
        got = call(ex, rolling_step, q[:, t].clone(), k[:, t].clone(), v[:, t].clone(), buf_k,
                   buf_v, buf_pos, t, W)
        got = as_tensor(ex, got, f"rolling_step at position {t}").float()
        if tuple(got.shape) != (H, D):
            fail(ex, f"expected the token's output of shape (H, D) = {(H, D)}, got "
                     f"{tuple(got.shape)}")
        if torch.isnan(got).any():
            fail(ex, f"NaN at position {t}: the token did not read its own key and found no "
                     "filled slot to read. Write it into its slot first, then attend.")
        wrong = {name: _rolling_step(q[:, t], k[:, t], v[:, t], *refs[name], t, W,
                                     **{name: False}) for name in slips}
        if not torch.allclose(got, want[:, t], atol=1e-5):
            if torch.allclose(got, wrong["write_first"], atol=1e-5):
                fail(ex, f"at position {t} the token did not read its own key: write it into "
                         "its slot first, then attend (and the key it overwrites, W positions "
                         "back, is just outside the window).")
            if torch.allclose(got, wrong["mask_empty"], atol=1e-5):
                fail(ex, f"at position {t} the query read empty slots (their zero keys score 0, "
                         "not -inf): mask the slots whose position is -1.")
            fail(ex, f"wrong output at position {t} (window {W}): the token at position p "
                     f"goes into slot p % window, and its query reads every filled slot.")
        if int(buf_pos[t % W]) != t or not torch.equal(buf_k[:, t % W], k[:, t]):
            fail(ex, f"after position {t} slot {t % W} must hold its key and buf_pos[{t % W}] = "
                     f"{t}: update the buffers in place.")
    passed(ex, f"{N} tokens decoded through a {W}-slot rolling buffer equal band-masked attention "
               "over the full sequence, the first (not yet full) steps included.")


def _rope(d_head: int):
    from ..positional import RotaryEmbedding

    return RotaryEmbedding(d_head, 64)


def _chunk_reference(q, k, v, past_k, past_v, rope, offset=True, rope_start=None, tile=False):
    """The right cached chunk with grouped K/V heads (or one of its classic bugs, for diagnosis)."""
    L, T = past_k.shape[2], q.shape[2]
    start = L if rope_start is None else rope_start
    q, k = rope(q, start), rope(k, start)
    all_k, all_v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
    S, n_rep = L + T, q.shape[1] // k.shape[1]
    mask = causal_mask(S)[L:] if offset else torch.ones(T, S, dtype=torch.bool).tril()
    keys, values = ((t.repeat(1, n_rep, 1, 1) if tile else repeat_kv(t, n_rep))
                    for t in (all_k, all_v))
    return attention_weights(q, keys, mask) @ values, all_k, all_v


def check_5_5(attend_chunk: Callable[..., tuple]) -> None:
    """attend_chunk(q, k, v, past_k, past_v, rope) -> (out, all_k, all_v), chunk after a cache.

    Grouped-query: q (B, H, T, D), k and v (B, H_kv, T, D), new and unrotated; past_k (rotated)
    and past_v (B, H_kv, L, D). Query head h reads K/V head h // (H / H_kv).
    """
    ex = "5.5"
    g = torch.Generator().manual_seed(55)
    B, H, Hkv, D, S = 1, 4, 2, 8, 12
    rope = _rope(D)
    q = torch.randn(B, H, S, D, generator=g)
    k, v = (torch.randn(B, Hkv, S, D, generator=g) for _ in range(2))

    def run(a: int, b: int, past_k, past_v):
        got = call(ex, attend_chunk, q[:, :, a:b].clone(), k[:, :, a:b].clone(),
                   v[:, :, a:b].clone(), past_k.clone(), past_v.clone(), rope)
        if not isinstance(got, tuple) or len(got) != 3:
            fail(ex, "return three things: the chunk's output and the grown keys and values.")
        return [as_tensor(ex, t, "each returned value").float() for t in got]

    empty = torch.zeros(B, Hkv, 0, D)
    want = _chunk_reference(q[:, :, :5], k[:, :, :5], v[:, :, :5], empty, empty, rope)
    out, all_k, all_v = run(0, 5, empty, empty)
    if tuple(all_k.shape) == (B, H, 5, D):
        fail(ex, f"your cache holds {H} K/V heads: the repeated ones. Store the {Hkv} K/V heads "
                 "as they are (that is what GQA saves) and repeat them only to attend.")
    if tuple(out.shape) != (B, H, 5, D) or tuple(all_k.shape) != (B, Hkv, 5, D):
        fail(ex, f"for a 5-token chunk and an empty cache expected an output of shape "
                 f"{(B, H, 5, D)} and keys of shape {(B, Hkv, 5, D)}, got {tuple(out.shape)} and "
                 f"{tuple(all_k.shape)}")
    if torch.allclose(out, _chunk_reference(q[:, :, :5], k[:, :, :5], v[:, :, :5], empty, empty,
                                            rope, tile=True)[0], atol=1e-5):
        fail(ex, "query heads read the wrong K/V heads: the K/V heads were tiled (0, 1, 0, 1); "
                 "GQA groups neighbours, so query head h reads K/V head h // (H / H_kv).")
    if not torch.allclose(out, want[0], atol=1e-5):
        fail(ex, "wrong already for the first chunk (an empty cache): this is plain causal "
                 "attention with RoPE at positions 0..T-1, scaled by 1/sqrt(D).")
    # a chunk of 4 after 5 cached tokens
    past_k, past_v = want[1], want[2]
    a, b = 5, 9
    args = (q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], past_k, past_v, rope)
    right = _chunk_reference(*args)
    out, all_k, all_v = run(a, b, past_k, past_v)
    if tuple(all_k.shape) != (B, Hkv, 9, D) or not torch.allclose(all_k[:, :, :5], past_k):
        fail(ex, "the returned keys must be the cached ones followed by the chunk's, in order: "
                 f"expected shape {(B, Hkv, 9, D)}, got {tuple(all_k.shape)}")
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
    passed(ex, "chunks of 5, 4, 1 and 2 tokens through your grouped-query cache equal the "
               "uncached forward, with RoPE at each chunk's position and 2 K/V heads cached for 4 "
               "query heads.")


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
    """Records the largest tensor made, the score entries, and how often each key is scored."""

    def __init__(self, d_head: int, keys: torch.Tensor | None = None):
        super().__init__()
        self.d_head, self.largest, self.scores = d_head, 0, 0
        # Unit rows of the keys, to recognise them (scaled or not) inside a product's operand.
        self.keys = None if keys is None else keys / keys.norm(dim=-1, keepdim=True)
        self.per_key = None if keys is None else torch.zeros(keys.shape[0], dtype=torch.long)

    def _count_keys(self, operand: torch.Tensor, n_out: int) -> None:
        """Add n_out / (rows of keys in operand) query scores to each key found in operand."""
        for rows in (operand.transpose(-1, -2), operand):  # k.T (D, b) or k (b, D) forms
            if rows.shape[-1] != self.d_head or rows.numel() == 0:
                continue
            rows = rows.reshape(-1, self.d_head).detach().float()
            sim = (rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)) @ self.keys.T
            best, idx = sim.max(dim=-1)
            if bool((best > 1 - 1e-4).all()):  # every row is one of the keys
                self.per_key.index_add_(0, idx, torch.full_like(idx, n_out // rows.shape[0]))
                return

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
        if (self.keys is not None and func in _MATMULS and isinstance(out, torch.Tensor)
                and len(operands) >= 2 and operands[0].shape[-1] == self.d_head):
            self._count_keys(operands[1], out.numel())
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
    spy = _Spy(D, keys=k)
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
    most = int(spy.per_key.max())
    if most > 1.5 * T:
        fail(ex, f"key {int(spy.per_key.argmax())} was scored {most:,} times for {T} queries: "
                 "each query reads it more than once (a pass for the max, then one for the sum, "
                 "even if future keys are skipped). That is exact but not online: keep a running "
                 "max and rescale what was summed so far, so one pass over the keys is enough.")
    passed(ex, "equal to causal softmax attention for blocks of 1, 4, 5, 23 and 100 keys, "
               "stable for large scores, one pass over the keys, never a T x T tensor.")
