"""Tests for FlashAttention-2 in PyTorch (companion.tiled.flash_attention): the forward equals the
written-out attention, the recomputing backward equals autograd's gradients through it, causal and
not, at lengths that are no multiple of the block, and the forward keeps no tile for the backward."""
import math

import pytest
import torch
import torch.nn.functional as F

from companion.tiled import FlashAttention, flash_attention, peak_cpu_bytes


def written_out(q, k, v, causal):
    """softmax(q k^T / sqrt(D)) v with the causal mask offset for S > T, through plain autograd."""
    T, S = q.shape[2], k.shape[2]
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        allowed = torch.ones(S, S, dtype=torch.bool).tril()[S - T:]
        s = s.masked_fill(~allowed, float("-inf"))
    return s.softmax(-1) @ v


def leaves(T, S=None, B=2, H=3, D=8, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = T if S is None else S
    shapes = [(B, H, T, D), (B, H, S, D), (B, H, S, D)]
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T, S, block", [(1, 1, 4), (7, 7, 4), (37, 37, 8), (64, 64, 16),
                                         (5, 29, 8), (23, 40, 16), (50, 50, 1000)])
def test_gradients_equal_autograd_through_the_written_out_version(causal, T, S, block):
    q, k, v = leaves(T, S)
    dout = torch.randn_like(q[..., : v.shape[-1]])
    want = grads(lambda *a: written_out(*a, causal), q, k, v, dout)
    got = grads(lambda *a: flash_attention(*a, causal=causal, block_size=block), q, k, v, dout)
    for name, a, b in zip(["out", "dq", "dk", "dv"], got, want):
        assert torch.allclose(a, b, atol=1e-10), (name, (a - b).abs().max())


@pytest.mark.parametrize("causal", [True, False])
def test_float32_gradients_within_1e_5_of_autograd(causal):
    q, k, v = leaves(200, B=1, H=2, D=32, dtype=torch.float32)
    dout = torch.randn_like(q)
    want = grads(lambda *a: written_out(*a, causal), q, k, v, dout)
    got = grads(lambda *a: flash_attention(*a, causal=causal, block_size=64), q, k, v, dout)
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= 1e-5


def test_gradcheck_on_a_small_causal_case():
    q, k, v = leaves(6, 9, B=1, H=1, D=4)
    assert torch.autograd.gradcheck(lambda q, k, v: FlashAttention.apply(q, k, v, True, 4),
                                    (q, k, v))


def test_large_scores_give_finite_gradients():
    q, k, v = leaves(20, dtype=torch.float32)
    with torch.no_grad():
        q *= 60
        k *= 60
    out = flash_attention(q, k, v, block_size=4)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_forward_keeps_no_tile_for_the_backward():
    """Under autograd, peak memory of forward + backward stays far below one score matrix."""
    T, H = 512, 2
    q, k, v = leaves(T, B=1, H=H, D=16, dtype=torch.float32)
    scores = H * T * T * 4

    def step(fn):
        def run():
            fn(q, k, v).sum().backward()
        return run

    written = peak_cpu_bytes(step(lambda *a: written_out(*a, True)))
    flash = peak_cpu_bytes(step(lambda *a: flash_attention(*a, block_size=64)))
    assert written >= scores
    assert flash < scores / 4


def test_rejects_bad_input_like_tiled_attention():
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        flash_attention(*leaves(4), block_size=0)
    with pytest.raises(ValueError, match="S=4 < T=6"):
        flash_attention(*leaves(6, 4))


def test_forward_equals_sdpa_in_float32():
    q, k, v = (t.detach().float() for t in leaves(65))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(flash_attention(q, k, v, block_size=16), want, atol=1e-5)
