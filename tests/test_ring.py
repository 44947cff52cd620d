"""Ring attention and the sequence/context-parallel arithmetic: the online-softmax merge is exact,
ring attention over 2 gloo ranks equals full attention, and the formulas match hand-worked cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from companion.parallel import (block_attention, launch, merge_partials, ring_attention_traffic,
                                ring_attention_worker, ring_overlap_block, tp_activation_bytes)
from companion.sizing import activation_bytes_per_layer


@pytest.mark.parametrize("n_blocks", [1, 2, 3])
def test_merging_blocks_equals_attention_over_all_keys(n_blocks):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    k = k.repeat(1, 1, n_blocks, 1)
    v = v.repeat(1, 1, n_blocks, 1) + torch.arange(5.0 * n_blocks)[:, None]
    out = q.new_zeros(q.shape)
    lse = q.new_full(q.shape[:-1], float("-inf"))
    for kb, vb in zip(k.chunk(n_blocks, dim=2), v.chunk(n_blocks, dim=2)):
        out, lse = merge_partials(out, lse, *block_attention(q, kb, vb))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-2, -1) / 2.0, dim=-1))


def test_merging_two_equal_halves_adds_log_two():
    o, lse = torch.randn(1, 1, 3, 2), torch.randn(1, 1, 3)
    out, merged = merge_partials(o, lse, o, lse)
    torch.testing.assert_close(out, o)
    torch.testing.assert_close(merged, lse + math.log(2))


def test_a_fully_masked_block_changes_nothing():
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    o, lse = block_attention(q, k, v)
    o_none, lse_none = block_attention(q, k, v, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(o_none, torch.zeros_like(o)) and torch.isinf(lse_none).all()
    out, merged = merge_partials(o, lse, o_none, lse_none)
    assert torch.equal(out, o) and torch.equal(merged, lse)


@pytest.mark.parametrize("causal", [True, False])
def test_ring_attention_over_two_gloo_ranks_equals_full_attention(causal):
    shape = (2, 3, 8, 4)  # (B, H, T, D)
    run = launch(ring_attention_worker, 2, shape, causal, 7)
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(torch.cat([r["out"] for r in run.results], dim=2), full)
    # one step of K and V blocks of 4 tokens: 2 * 2*3*4*4 floats of 4 bytes
    assert [r["sent"] for r in run.results] == [2 * 2 * 3 * 4 * 4 * 4] * 2


def test_tp_activation_formula_hand_worked():
    """s=b=h=a=1 without TP: 34 + 5 = 39, as chapter 8's formula; t=2: 10 + 12 + 2.5 = 24.5;
    with sequence parallelism everything is halved: 19.5."""
    assert tp_activation_bytes(1, 1, 1, 1) == 39.0 == activation_bytes_per_layer(1, 1, 1, 1)
    assert tp_activation_bytes(1, 1, 1, 1, tp=2) == 24.5
    assert tp_activation_bytes(1, 1, 1, 1, tp=2, sequence_parallel=True) == 19.5
    assert tp_activation_bytes(1, 1, 1, 1, tp=2, recompute="selective") == 22.0


def test_tp_activation_matches_chapter_8_at_scale():
    args = (8192, 1, 8192, 64)
    assert tp_activation_bytes(*args) == activation_bytes_per_layer(*args)
    assert tp_activation_bytes(*args, recompute="selective") == activation_bytes_per_layer(
        *args, recompute="selective")


def test_ring_traffic_and_overlap_hand_worked():
    t = ring_attention_traffic(8, 1, 4, 2, 2)
    assert t == {"tokens_per_rank": 4.0, "steps": 1, "per_step": 64.0, "per_layer_forward": 64.0}
    assert ring_attention_traffic(8, 1, 4, 4, 2)["per_layer_forward"] == 3 * 32.0
    assert ring_overlap_block(1000.0, 10.0, 8, 8) == 100.0  # F/B when kv_width = h, 2 bytes
    assert ring_overlap_block(1000.0, 10.0, 8, 1) == 12.5  # GQA: 8x less to send


@pytest.mark.parametrize("call, match", [
    (lambda: tp_activation_bytes(8, 1, 8, 2, tp=0), "t=0"),
    (lambda: tp_activation_bytes(8, 1, 8, 2, recompute="full"), "recompute"),
    (lambda: ring_attention_traffic(8, 1, 4, 0), "P=0"),
])
def test_bad_input_names_the_numbers(call, match):
    with pytest.raises(ValueError, match=match):
        call()
