"""Chapter 5's building checks (5.5: a cached chunk with RoPE; 5.6: online-softmax attention) fail
on the stub and on each classic slip with its hint, and pass on a right answer."""
from __future__ import annotations

import math

import pytest
import torch

from checkhelpers import fails_with, passes, stub
from companion.checks import check_5_5, check_5_6


def attend_chunk(q, k, v, past_k, past_v, rope, offset=True, rope_at="start"):
    L, T = past_k.shape[2], q.shape[2]
    if rope_at == "start":
        q, k = rope(q, L), rope(k, L)
    elif rope_at == "zero":
        q, k = rope(q, 0), rope(k, 0)
    all_k, all_v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
    keys = all_k
    if rope_at == "after":  # cache raw keys, rotate everything at the chunk's position
        q = rope(q, L)
        keys = rope(all_k, L)
    S = L + T
    mask = torch.ones(S, S, dtype=torch.bool).tril()[L:] if offset else torch.ones(
        T, S, dtype=torch.bool).tril()
    s = (q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
    return s.softmax(-1) @ all_v, all_k, all_v


def test_check_5_5_passes_on_a_correct_answer(capsys):
    passes(check_5_5, attend_chunk, capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: attend_chunk(*a, offset=False), "not offset by the cache"),
    (lambda *a: attend_chunk(*a, rope_at="zero"), "as if they began the text"),
    (lambda *a: attend_chunk(*a, rope_at="after"), "went into the cache unrotated"),
    (lambda *a: attend_chunk(*a)[0], "return three things"),
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


@pytest.mark.parametrize("wrong, fragment", [
    (full_matrix, "a quarter of the 256x256 matrix"),
    (full_mask, "a quarter of the 256x256 matrix"),
    (two_pass, "reads the keys more than once"),
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
