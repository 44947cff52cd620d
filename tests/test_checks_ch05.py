"""Chapter 5's building checks (5.1: FlashAttention-2's backward for one key block; 5.2: MLA decoding
with W_UK absorbed; 5.4: a rolling sliding-window buffer; 5.5: a cached chunk with RoPE; 5.6:
online-softmax attention) fail on the stub and on each classic slip with its hint, and pass on a
right answer."""
from __future__ import annotations

import math

import pytest
import torch

from checkhelpers import fails_with, passes, stub
from companion.checks import check_5_1, check_5_2, check_5_4, check_5_5, check_5_6


def attend_chunk(q, k, v, past_k, past_v, rope, offset=True, rope_at="start", cache="kv",
                 group="interleave"):
    L, T = past_k.shape[2], q.shape[2]
    n_rep = q.shape[1] // k.shape[1]
    if rope_at == "start":
        q, k = rope(q, L), rope(k, L)
    elif rope_at == "zero":
        q, k = rope(q, 0), rope(k, 0)
    all_k, all_v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
    keys = all_k
    if rope_at == "after":  # cache raw keys, rotate everything at the chunk's position
        q = rope(q, L)
        keys = rope(all_k, L)
    rep = n_rep
    if group == "interleave":
        keys, values = keys.repeat_interleave(rep, 1), all_v.repeat_interleave(rep, 1)
    else:
        keys, values = keys.repeat(1, rep, 1, 1), all_v.repeat(1, rep, 1, 1)
    S = L + T
    mask = torch.ones(S, S, dtype=torch.bool).tril()[L:] if offset else torch.ones(
        T, S, dtype=torch.bool).tril()
    s = (q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
    if cache == "repeated":  # slip: the grown cache returned with its K/V heads repeated
        return s.softmax(-1) @ values, keys, values
    return s.softmax(-1) @ values, all_k, all_v


def test_check_5_5_passes_on_a_correct_answer(capsys):
    passes(check_5_5, attend_chunk, capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: attend_chunk(*a, offset=False), "not offset by the cache"),
    (lambda *a: attend_chunk(*a, rope_at="zero"), "as if they began the text"),
    (lambda *a: attend_chunk(*a, rope_at="after"), "went into the cache unrotated"),
    (lambda *a: attend_chunk(*a)[0], "return three things"),
    (lambda *a: attend_chunk(*a, cache="repeated"), "the repeated ones"),
    (lambda *a: attend_chunk(*a, group="tile"), "tiled (0, 1, 0, 1)"),
    (lambda q, k, v, pk, pv, rope: (attend_chunk(q, k, v, pk, pv, rope)[0], rope(k, pk.shape[2]),
                                    v), "the cached ones followed by the chunk's"),
])
def test_check_5_5_catches_mistakes(wrong, fragment):
    fails_with(check_5_5, wrong, fragment)


def test_check_5_5_catches_an_unscaled_score():
    def unscaled(q, k, v, past_k, past_v, rope):
        out, all_k, all_v = attend_chunk(q * math.sqrt(q.shape[-1]), k, v, past_k, past_v, rope)
        return out, all_k, all_v

    fails_with(check_5_5, unscaled, "wrong already for the first chunk")


def blockwise(q, k, v, block, rescale_sum=True, rescale_acc=True, causal=True, stable=True):
    T, D = q.shape
    m = torch.full((T, 1), float("-inf"))
    l, acc = torch.zeros(T, 1), torch.zeros(T, v.shape[1])
    for j in range(0, k.shape[0], block):
        s = q @ k[j:j + block].T / math.sqrt(D)
        if causal:
            s = s.masked_fill(torch.arange(j, j + s.shape[1])[None] > torch.arange(T)[:, None],
                              float("-inf"))
        m_new = torch.maximum(m, s.amax(1, keepdim=True)) if stable else torch.zeros(T, 1)
        p, r = torch.exp(s - m_new), torch.exp(m - m_new) if stable else torch.ones(T, 1)
        l = (l * r if rescale_sum else l) + p.sum(1, keepdim=True)
        acc = (acc * r if rescale_acc else acc) + p @ v[j:j + block]
        m = m_new
    return acc / l


def test_check_5_6_passes_on_a_correct_answer(capsys):
    passes(check_5_6, blockwise, capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda q, k, v, b: blockwise(q, k, v, b, rescale_sum=False), "the sum collected so far"),
    (lambda q, k, v, b: blockwise(q, k, v, b, rescale_acc=False), "output collected so far"),
    (lambda q, k, v, b: blockwise(q, k, v, b, causal=False), "reads keys after it"),
    (lambda q, k, v, b: blockwise(q, k, v, b, stable=False), "overflows"),
    (lambda q, k, v, b: blockwise(q, k, v, 5) if b == 5 else blockwise(q, k, v, b)[:, :1],
     "right with blocks of 5 but wrong with block_size=1"),
    (lambda q, k, v, b: blockwise(q, k, v, b)[:-1], "shape (T, D)"),
])
def test_check_5_6_catches_mistakes(wrong, fragment):
    fails_with(check_5_6, wrong, fragment)


def full_matrix(q, k, v, block):
    """Right values, but the whole (T, T) weight matrix is built first and then read in blocks."""
    T, D = q.shape
    w = (q @ k.T / math.sqrt(D)).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    w = w.softmax(-1)
    return sum(w[:, j:j + block] @ v[j:j + block] for j in range(0, T, block))


def two_pass(q, k, v, block):
    """Right values, not online: a first pass over the keys finds the max, a second sums."""
    T, D = q.shape

    def scores(j):
        s = q @ k[j:j + block].T / math.sqrt(D)
        return s.masked_fill(torch.arange(j, j + s.shape[1])[None] > torch.arange(T)[:, None],
                             float("-inf"))

    m = torch.full((T, 1), float("-inf"))
    for j in range(0, k.shape[0], block):
        m = torch.maximum(m, scores(j).amax(1, keepdim=True))
    l, acc = torch.zeros(T, 1), torch.zeros(T, v.shape[1])
    for j in range(0, k.shape[0], block):
        p = torch.exp(scores(j) - m)
        l, acc = l + p.sum(1, keepdim=True), acc + p @ v[j:j + block]
    return acc / l


def full_mask(q, k, v, block):
    """Online and one pass, but the (T, T) causal mask is built once and sliced."""
    T = q.shape[0]
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    m = torch.full((T, 1), float("-inf"))
    l, acc = torch.zeros(T, 1), torch.zeros(T, v.shape[1])
    for j in range(0, T, block):
        s = (q @ k[j:j + block].T / math.sqrt(q.shape[1])).masked_fill(mask[:, j:j + block],
                                                                      float("-inf"))
        m_new = torch.maximum(m, s.amax(1, keepdim=True))
        p, r = torch.exp(s - m_new), torch.exp(m - m_new)
        l, acc, m = l * r + p.sum(1, keepdim=True), acc * r + p @ v[j:j + block], m_new
    return acc / l


def two_pass_skipping_future_keys(q, k, v, block):
    """Right values, not online: per query, a pass for the max then one for the sum, each
    skipping the keys after the query, so it computes no more scores than a one-pass answer
    that scores every key (the score count alone cannot tell them apart)."""
    T, D = q.shape
    outs = []
    for i in range(T):
        qi = q[i:i + 1] / math.sqrt(D)
        m = torch.tensor(float("-inf"))
        for j in range(0, i + 1, block):
            m = torch.maximum(m, (qi @ k[j:min(j + block, i + 1)].T).max())
        l, acc = torch.zeros(1, 1), torch.zeros(1, v.shape[1])
        for j in range(0, i + 1, block):
            p = torch.exp(qi @ k[j:min(j + block, i + 1)].T - m)
            l, acc = l + p.sum(1, keepdim=True), acc + p @ v[j:min(j + block, i + 1)]
        outs.append(acc / l)
    return torch.cat(outs)


@pytest.mark.parametrize("wrong, fragment", [
    (full_matrix, "a quarter of the 256x256 matrix"),
    (full_mask, "a quarter of the 256x256 matrix"),
    (two_pass, "reads the keys more than once"),
    (two_pass_skipping_future_keys, "each query reads it more than once"),
])
def test_check_5_6_catches_right_values_by_the_wrong_method(wrong, fragment):
    q, k, v = (torch.randn(23, 8) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None],
                                                            is_causal=True)[0]
    assert torch.allclose(wrong(q, k, v, 5), want, atol=1e-5)  # only the method is wrong
    fails_with(check_5_6, wrong, fragment)


def test_check_5_6_passes_a_solution_that_also_blocks_the_queries(capsys):
    def both_blocked(q, k, v, block):
        T, D = q.shape
        outs = []
        for i in range(0, T, block):
            qi = q[i:i + block]
            m = torch.full((qi.shape[0], 1), float("-inf"))
            l, acc = torch.zeros(qi.shape[0], 1), torch.zeros(qi.shape[0], v.shape[1])
            for j in range(0, min(T, i + block), block):  # skip key blocks after the queries
                s = qi @ k[j:j + block].T / math.sqrt(D)
                s = s.masked_fill(torch.arange(j, j + s.shape[1])[None]
                                  > torch.arange(i, i + qi.shape[0])[:, None], float("-inf"))
                m_new = torch.maximum(m, s.amax(1, keepdim=True))
                p, r = torch.exp(s - m_new), torch.exp(m - m_new)
                l, acc, m = l * r + p.sum(1, keepdim=True), acc * r + p @ v[j:j + block], m_new
            outs.append(acc / l)
        return torch.cat(outs)

    passes(check_5_6, both_blocked, capsys)


def test_check_5_6_passes_one_pass_per_query_with_prescaled_keys(capsys):
    """One query at a time, future keys skipped, keys scaled first and read through F.linear:
    online and one pass, so the per-key count must not mistake it for two passes."""
    def per_query(q, k, v, block):
        T, D = q.shape
        ks, outs = k / math.sqrt(D), []
        for i in range(T):
            m, l, acc = torch.tensor(float("-inf")), torch.zeros(1), torch.zeros(v.shape[1])
            for j in range(0, i + 1, block):
                s = torch.nn.functional.linear(q[i:i + 1], ks[j:min(j + block, i + 1)])[0]
                m_new = torch.maximum(m, s.max())
                p, r = torch.exp(s - m_new), torch.exp(m - m_new)
                l, acc, m = l * r + p.sum(), acc * r + p @ v[j:j + s.shape[0]], m_new
            outs.append(acc / l)
        return torch.stack(outs)

    passes(check_5_6, per_query, capsys)


# --- 5.1 FlashAttention-2's backward for one key block --------------------------------

def key_block_backward(q, k, v, dout, lse, delta, k_start, block_size, mask="absolute",
                       renorm=False, use_delta=True, scaled=True, local_delta=False):
    """A learner's answer: the whole column of queries against one key block."""
    scale = 1 / math.sqrt(q.shape[1])
    kb, vb = k[k_start:k_start + block_size], v[k_start:k_start + block_size]
    s = q @ kb.T * scale
    offset = k_start if mask == "absolute" else 0
    if mask != "none":
        future = torch.arange(offset, offset + kb.shape[0])[None, :] > torch.arange(q.shape[0])[:, None]
        s = s.masked_fill(future, float("-inf"))
    p = s.softmax(-1) if renorm else torch.exp(s - lse[:, None])
    dv = p.T @ dout
    if local_delta:  # the row term from this block's keys alone
        delta = (p * (dout @ vb.T)).sum(-1)
    ds = p * (dout @ vb.T - delta[:, None]) if use_delta else p * (dout @ vb.T)
    g = scale if scaled else 1.0
    return ds @ kb * g, ds.T @ q * g, dv


def test_check_5_1_passes_on_a_correct_answer(capsys):
    passes(check_5_1, key_block_backward, capsys)


def test_check_5_1_passes_on_a_row_by_row_answer(capsys):
    """Another right idiom: each query row against the keys of the block it may read."""

    def one_block(q, k, v, dout, lse, delta, k_start, block_size):
        kb, vb = k[k_start:k_start + block_size], v[k_start:k_start + block_size]
        dq = torch.zeros_like(q)
        dks, dvs = [], []
        for i in range(q.shape[0]):  # row by row: query i against the keys it may read
            n = min(kb.shape[0], max(0, i + 1 - k_start))
            if n == 0:
                continue
            qi, doi = q[i:i + 1], dout[i:i + 1]
            s = qi @ kb[:n].T / math.sqrt(q.shape[1])
            p = torch.exp(s - lse[i])
            ds = p * (doi @ vb[:n].T - delta[i])
            dq[i] += (ds @ kb[:n])[0] / math.sqrt(q.shape[1])
            dks.append(torch.nn.functional.pad(ds.T @ qi, (0, 0, 0, kb.shape[0] - n)))
            dvs.append(torch.nn.functional.pad(p.T @ doi, (0, 0, 0, kb.shape[0] - n)))
        zero = torch.zeros_like(kb)
        return dq, sum(dks, zero) / math.sqrt(q.shape[1]), sum(dvs, zero)

    passes(check_5_1, one_block, capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: key_block_backward(*a, mask="none"), "keys after a query got weight"),
    (lambda *a: key_block_backward(*a, mask="local"), "index inside the block"),
    (lambda *a: key_block_backward(*a, renorm=True), "divides 0 by 0"),
    (lambda *a: key_block_backward(*a, use_delta=False), "softmax's row term"),
    (lambda *a: key_block_backward(*a, local_delta=True), "summed over this block's keys alone"),
    (lambda *a: key_block_backward(*a, scaled=False), "factor 1/sqrt(D)"),
    (lambda *a: key_block_backward(*a)[:2], "return three things"),
    (lambda *a: tuple(t[:4] for t in key_block_backward(*a)), "expected shapes"),
    (lambda q, k, v, do, lse, delta, k0, b: key_block_backward(q, k, v, do, lse, delta, k0, b)
     if k0 == 10 else tuple(t * 0 for t in key_block_backward(q, k, v, do, lse, delta, k0, b)),
     "the blocks together miss"),
    (lambda q, k, v, do, lse, delta, k0, b: key_block_backward(q * 1.01, k, v, do, lse, delta, k0,
                                                                b), "is off by"),
])
def test_check_5_1_catches_mistakes(wrong, fragment):
    fails_with(check_5_1, wrong, fragment)


# --- 5.2 MLA decoding with W_UK absorbed ----------------------------------------------

def absorbed_step(mla, x, c, k_r, rope_at=None, use_rope=True, scale_by_head=False):
    """A learner's answer: q_c W_UK per head, scores against the latents, W_UV afterwards."""
    B, S, C = c.shape
    H, D, R = mla.n_heads, mla.d_head, mla.d_rope
    q_c = mla.q_proj(x).view(B, 1, H, D).transpose(1, 2)  # (B, H, 1, D)
    W_uk = mla.k_up.weight.view(H, D, C)
    q_lat = q_c @ W_uk[None]  # (B, H, 1, C)
    q_r = mla.rope(mla.q_rope_proj(x).view(B, 1, H, R).transpose(1, 2),
                   S - 1 if rope_at is None else rope_at)
    scores = q_lat @ c[:, None].transpose(-1, -2)
    if use_rope:
        scores = scores + q_r @ k_r[:, None].transpose(-1, -2)
    w = torch.softmax(scores / math.sqrt(D if scale_by_head else D + R), -1)  # (B, H, 1, S)
    o = (w @ c[:, None]) @ mla.v_up.weight.view(H, D, C).transpose(-1, -2)[None]  # (B, H, 1, D)
    return mla.o_proj(o.transpose(1, 2).reshape(B, 1, H * D))


def unabsorbed_step(mla, x, c, k_r):
    """Right output, the plain way: up-project keys and values for every cached token."""
    B, S, C = c.shape
    H, D, R = mla.n_heads, mla.d_head, mla.d_rope
    q = torch.cat([mla.q_proj(x).view(B, 1, H, D).transpose(1, 2),
                   mla.rope(mla.q_rope_proj(x).view(B, 1, H, R).transpose(1, 2), S - 1)], -1)
    k = torch.cat([mla.k_up(c).view(B, S, H, D).transpose(1, 2),
                   k_r[:, None].expand(B, H, S, R)], -1)
    v = mla.v_up(c).view(B, S, H, D).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D + R), -1)
    return mla.o_proj((w @ v).transpose(1, 2).reshape(B, 1, H * D))


def scrambled_absorption(mla, x, c, k_r):
    """W_UK cut into heads the wrong way: (C, H*D) reshaped, not (H*D, C) viewed."""
    B, S, C = c.shape
    H, D, R = mla.n_heads, mla.d_head, mla.d_rope
    q_lat = mla.q_proj(x).view(B, 1, H, D).transpose(1, 2) @ mla.k_up.weight.T.reshape(H, D, C)
    q_r = mla.rope(mla.q_rope_proj(x).view(B, 1, H, R).transpose(1, 2), S - 1)
    scores = q_lat @ c[:, None].transpose(-1, -2) + q_r @ k_r[:, None].transpose(-1, -2)
    w = torch.softmax(scores / math.sqrt(D + R), -1)
    o = (w @ c[:, None]) @ mla.v_up.weight.view(H, D, C).transpose(-1, -2)[None]
    return mla.o_proj(o.transpose(1, 2).reshape(B, 1, H * D))


def test_check_5_2_passes_on_a_correct_answer(capsys):
    passes(check_5_2, absorbed_step, capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (unabsorbed_step, "per-head keys or values for all 11 cached tokens"),
    (lambda *a: absorbed_step(*a, use_rope=False), "decoupled RoPE part"),
    (lambda *a: absorbed_step(*a, rope_at=0), "rotated at position 0"),
    (lambda *a: absorbed_step(*a, scale_by_head=True), "sqrt(d_head + d_rope)"),
    (lambda mla, x, c, k_r: absorbed_step(mla, x, c, k_r)[:, :, :8], "expected the new token's"),
    (scrambled_absorption, "W_UK[h]"),
    (lambda mla, x, c, k_r: absorbed_step(mla, x, c, k_r) if c.shape[1] > 1
     else absorbed_step(mla, x, c, k_r) * 2, "very first token"),
])
def test_check_5_2_catches_mistakes(wrong, fragment):
    fails_with(check_5_2, wrong, fragment)


# --- 5.4 a rolling sliding-window buffer -------------------------------------------------

def rolling_step(q, k, v, buf_k, buf_v, buf_pos, pos, window, write_first=True,
                 mask_empty=True, slot_of=lambda pos, window: pos % window):
    """A learner's answer: write the token into slot pos % window, then attend the filled slots."""
    def attend():
        s = (buf_k @ q[:, :, None])[..., 0] / math.sqrt(q.shape[-1])  # (H, W)
        if mask_empty:
            s = s.masked_fill(buf_pos[None] < 0, float("-inf"))
        return (s.softmax(-1)[:, None] @ buf_v)[:, 0]

    out = None if write_first else attend()
    slot = slot_of(pos, window)
    buf_k[:, slot], buf_v[:, slot] = k, v
    buf_pos[slot] = pos
    return attend() if write_first else out


def test_check_5_4_passes_on_a_correct_answer(capsys):
    passes(check_5_4, rolling_step, capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: rolling_step(*a, write_first=False), "did not read its own key"),
    (lambda *a: rolling_step(*a, mask_empty=False), "read empty slots"),
    (lambda *a: rolling_step(*a, slot_of=lambda p, w: min(p, w - 1)), "wrong output at position"),
    (lambda q, k, v, bk, bv, bp, pos, w: rolling_step(q, k, v, bk.clone(), bv.clone(), bp.clone(),
                                                      pos, w), "update the buffers in place"),
    (lambda *a: rolling_step(*a)[:1], "expected the token's output of shape"),
])
def test_check_5_4_catches_mistakes(wrong, fragment):
    fails_with(check_5_4, wrong, fragment)
