"""Tests for companion.attention: the maths against SDPA, MHA/GQA/MQA, the KV cache, and its size calculator."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.attention import (
    KVCache,
    MultiHeadAttention,
    attention_weights,
    causal_mask,
    kv_cache_bytes,
    kv_cache_table,
    repeat_kv,
    scaled_dot_product,
)

GIB = 2**30
HEADS = [(8, None), (8, 8), (8, 2), (8, 1)]  # (n_heads, n_kv_heads): MHA, MHA spelled out, GQA, MQA
HEAD_IDS = ["mha", "kv=heads", "gqa", "mqa"]


def rope(x: torch.Tensor, start_pos: int, theta: float = 10000.0) -> torch.Tensor:
    """A tiny rotate-half RoPE for (B, H, T, D), positions start_pos .. start_pos + T - 1 (Llama's layout)."""
    T, D = x.shape[-2:]
    pos = torch.arange(start_pos, start_pos + T, dtype=torch.float64)
    inv_freq = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.outer(pos, inv_freq).repeat(1, 2)  # (T, D/2) -> (T, D)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * angles.cos().to(x.dtype) + rotated * angles.sin().to(x.dtype)


def make(d_model=64, n_heads=8, n_kv_heads=None, seed=0, **kw) -> MultiHeadAttention:
    torch.manual_seed(seed)
    return MultiHeadAttention(d_model, n_heads, n_kv_heads, **kw).double().eval()


def randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference(m: MultiHeadAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """The same layer from its weights with torch's SDPA, K/V heads repeated for GQA/MQA."""
    B, T, _ = x.shape
    H, H_kv, D = m.n_heads, m.n_kv_heads, m.d_head
    q = m.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
    k = m.k_proj(x).view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)
    v = m.v_proj(x).view(B, T, H_kv, D).transpose(1, 2)  # (B, H_kv, T, D)
    k, v = k.repeat_interleave(H // H_kv, dim=1), v.repeat_interleave(H // H_kv, dim=1)  # (B, H, T, D)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return m.o_proj(y.transpose(1, 2).reshape(B, T, H * D))  # (B, T, H*D)


# --- the maths ---------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(2, 4, 7, 16), (1, 1, 1, 8), (3, 2, 33, 5)])
def test_scaled_dot_product_matches_sdpa(shape, causal):
    q, k, v = randn(*shape, seed=1), randn(*shape, seed=2), randn(*shape, seed=3)
    mask = causal_mask(shape[2]) if causal else None
    got = scaled_dot_product(q, k, v, mask)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert torch.allclose(got, want, atol=1e-12)


def test_causal_mask_is_lower_triangular():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(1).tolist() == [[True]]


def test_hand_worked_weights_d1():
    """D = 1, so the scale 1/sqrt(D) is 1. Keys k = (0, 1), values v = (4, 8).

    Query 0 may see only key 0: weights (1, 0), output 4.
    Query 1 = ln 3 scores (ln3 * 0, ln3 * 1) = (0, ln 3); softmax = (1, 3) / 4 = (1/4, 3/4); output 4/4 + 3*8/4 = 7.
    Without the mask query 0 = 0 scores (0, 0): weights (1/2, 1/2), output 6.
    """
    q = torch.tensor([[0.0], [math.log(3)]], dtype=torch.float64)
    k = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    v = torch.tensor([[4.0], [8.0]], dtype=torch.float64)
    w = attention_weights(q, k, causal_mask(2))
    assert torch.allclose(w, torch.tensor([[1.0, 0.0], [0.25, 0.75]], dtype=torch.float64))
    out = scaled_dot_product(q, k, v, causal_mask(2))
    assert torch.allclose(out, torch.tensor([[4.0], [7.0]], dtype=torch.float64))
    assert torch.allclose(scaled_dot_product(q, k, v)[0], torch.tensor([6.0], dtype=torch.float64))


def test_hand_worked_weights_d2_are_scaled_by_sqrt_d():
    """D = 2. Query (a, a) against keys (0, 0) and (1, 1) scores (0, 2a / sqrt 2) = (0, sqrt2 * a).

    With a = ln 3 / sqrt 2 the scores are (0, ln 3), so the weights are (1/4, 3/4) as in the D = 1 case;
    forgetting the 1/sqrt(D) scale would give scores (0, 2a) = (0, sqrt2 ln 3) and weights (0.17, 0.83).
    """
    a = math.log(3) / math.sqrt(2)
    q = torch.tensor([[a, a]], dtype=torch.float64)
    k = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[4.0, 0.0], [8.0, -4.0]], dtype=torch.float64)
    assert torch.allclose(attention_weights(q, k), torch.tensor([[0.25, 0.75]], dtype=torch.float64))
    assert torch.allclose(scaled_dot_product(q, k, v), torch.tensor([[7.0, -3.0]], dtype=torch.float64))


def test_repeat_kv_query_head_h_reads_kv_head_h_div_group():
    kv = torch.arange(2).view(1, 2, 1, 1)  # two KV heads holding 0 and 1
    assert repeat_kv(kv, 4).flatten().tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert repeat_kv(kv, 1) is kv


# --- MultiHeadAttention ------------------------------------------------------------------


@pytest.mark.parametrize("use_sdpa", [False, True], ids=["written", "sdpa"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_module_matches_sdpa_reference(heads, causal, use_sdpa):
    m = make(64, *heads, causal=causal, use_sdpa=use_sdpa)
    x = randn(2, 9, 64)
    with torch.no_grad():
        assert torch.allclose(m(x), reference(m, x, causal), atol=1e-12)


@pytest.mark.parametrize("heads", HEADS, ids=HEAD_IDS)
def test_sdpa_path_equals_written_out_path(heads):
    m = make(64, *heads, bias=True)
    x = randn(3, 11, 64)
    with torch.no_grad():
        written = m(x)
        m.use_sdpa = True
        assert torch.allclose(m(x), written, atol=1e-12)


def test_gqa_matches_mha_when_kv_heads_equal_heads():
    gqa, mha = make(64, 8, 8, seed=3), make(64, 8, None, seed=4)
    mha.load_state_dict(gqa.state_dict())  # same parameter names and shapes
    x = randn(2, 6, 64)
    with torch.no_grad():
        assert torch.equal(gqa(x), mha(x))


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_gqa_equals_mha_with_kv_heads_copied_per_group(n_kv_heads):
    """GQA is MHA whose query heads in one group share a K/V head: copy each K/V head's rows group-size times."""
    gqa, mha = make(64, 8, n_kv_heads, seed=5), make(64, 8, seed=6)
    D, group = 8, 8 // n_kv_heads
    with torch.no_grad():
        for name in ["q_proj", "o_proj"]:
            getattr(mha, name).weight.copy_(getattr(gqa, name).weight)
        for name in ["k_proj", "v_proj"]:
            w = getattr(gqa, name).weight.view(n_kv_heads, D, 64)  # (H_kv*D, C) -> (H_kv, D, C)
            getattr(mha, name).weight.copy_(w.repeat_interleave(group, dim=0).reshape(8 * D, 64))  # (H*D, C)
        x = randn(2, 7, 64)
        assert torch.allclose(gqa(x), mha(x), atol=1e-12)


@pytest.mark.parametrize("n_kv_heads, bias, want", [
    # d_model 64, 8 heads of D = 8: q and o are 64x64 = 4096 each; k and v are 64 x (H_kv * 8) each
    (8, False, 4 * 4096),                            # 16,384
    (2, False, 2 * 4096 + 2 * 64 * 16),              # 10,240
    (1, False, 2 * 4096 + 2 * 64 * 8),               # 9,216
    (2, True, 2 * 4096 + 2 * 64 * 16 + 64 + 64 + 2 * 16),  # biases: q 64, o 64, k and v 16 each
])
def test_gqa_and_mqa_use_fewer_kv_parameters(n_kv_heads, bias, want):
    m = MultiHeadAttention(64, 8, n_kv_heads, bias=bias)
    assert sum(p.numel() for p in m.parameters()) == want
    assert m.k_proj.weight.shape == m.v_proj.weight.shape == (n_kv_heads * 8, 64)


@pytest.mark.parametrize("use_sdpa", [False, True], ids=["written", "sdpa"])
def test_mask_hides_future(use_sdpa):
    m = make(32, 4, 2, use_sdpa=use_sdpa)
    x = randn(1, 10, 32)
    changed = x.clone()
    changed[:, 6:] = randn(1, 4, 32, seed=9)
    with torch.no_grad():
        a, b = m(x), m(changed)
        assert torch.equal(a[:, :6], b[:, :6])
        assert not torch.allclose(a[:, 6:], b[:, 6:])
        m.causal = False  # the same change now reaches every position: the test can see a leak
        assert not torch.allclose(m(x)[:, :6], m(changed)[:, :6])


def test_weights_are_returned_and_kept_and_rows_sum_to_one():
    m = make(32, 4, 2)
    x = randn(2, 5, 32)
    with torch.no_grad():
        y, w = m(x, return_weights=True)
        assert torch.equal(y, m(x))
        assert w.shape == (2, 4, 5, 5)
        assert torch.allclose(w.sum(-1), torch.ones(2, 4, 5, dtype=torch.float64))
        assert torch.equal(w.triu(1), torch.zeros_like(w))  # nothing above the diagonal: no future
        assert m.last_weights is None
        m.keep_weights, m.use_sdpa = True, True
        m(x)
        assert torch.allclose(m.last_weights, w, atol=1e-12)


def test_dropout_acts_in_training_only():
    m = make(32, 4, dropout=0.5)
    x = randn(1, 6, 32)
    with torch.no_grad():
        eval_out = m(x)
        assert torch.equal(eval_out, m(x))
        m.train()
        assert not torch.allclose(m(x), eval_out)


# --- the KV cache ------------------------------------------------------------------------


@pytest.mark.parametrize("use_rope", [False, True], ids=["no-rope", "rope"])
@pytest.mark.parametrize("heads", HEADS[::2] + HEADS[3:], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("step", [1, 3], ids=["token", "chunk3"])
def test_cached_decoding_equals_full_forward(heads, use_rope, step):
    """Prefill 5 tokens, then feed the rest `step` at a time: every output equals the uncached pass."""
    for use_sdpa in (False, True):
        m = make(64, *heads, rope=rope if use_rope else None, use_sdpa=use_sdpa)
        x = randn(2, 17, 64)
        cache = KVCache(2, 32, m.n_kv_heads, m.d_head, dtype=torch.float64)
        with torch.no_grad():
            full = m(x)
            parts = [m(x[:, :5], cache)]
            for t in range(5, 17, step):
                parts.append(m(x[:, t:t + step], cache))
        assert cache.pos == 17
        assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 15), min_size=0, max_size=6, unique=True), n_kv_heads=st.sampled_from([1, 2, 4]))
def test_cached_decoding_any_chunking_equals_full_forward(cuts, n_kv_heads):
    """Feeding 16 tokens in any chunks (cut at `cuts`) gives the uncached outputs, RoPE included."""
    m = make(32, 4, n_kv_heads, rope=rope)
    x = randn(1, 16, 32)
    bounds = [0, *sorted(cuts), 16]
    cache = KVCache(1, 16, n_kv_heads, 8, dtype=torch.float64)
    with torch.no_grad():
        parts = [m(x[:, a:b], cache) for a, b in zip(bounds, bounds[1:])]
        assert torch.allclose(torch.cat(parts, dim=1), m(x), atol=1e-12)


def test_cached_decoding_with_rope_needs_the_start_position():
    """Guards the test above: a RoPE that ignores start_pos matches the full pass but not cached decoding."""
    m = make(64, 8, 2, rope=lambda x, start_pos: rope(x, 0))
    x = randn(1, 6, 64)
    cache = KVCache(1, 8, 2, 8, dtype=torch.float64)
    with torch.no_grad():
        full = m(x)
        assert torch.allclose(full, make(64, 8, 2, rope=rope)(x), atol=1e-12)
        cached = torch.cat([m(x[:, t:t + 1], cache) for t in range(6)], dim=1)
    assert torch.allclose(cached[:, 0], full[:, 0], atol=1e-12)  # position 0 is the same either way
    assert not torch.allclose(cached[:, 1:], full[:, 1:], atol=1e-6)


def test_cache_append_returns_views_of_everything_stored():
    c = KVCache(1, 8, 2, 4)
    k1, v1 = torch.ones(1, 2, 3, 4), 2 * torch.ones(1, 2, 3, 4)
    c.append(k1, v1)
    k, v = c.append(3 * torch.ones(1, 2, 2, 4), 4 * torch.ones(1, 2, 2, 4))
    assert c.pos == 5 and k.shape == v.shape == (1, 2, 5, 4)
    assert k[0, 0, :, 0].tolist() == [1, 1, 1, 3, 3] and v[0, 1, :, 3].tolist() == [2, 2, 2, 4, 4]
    assert k.data_ptr() == c.k.data_ptr()  # a view, not a copy


@pytest.mark.parametrize("dtype, bytes_per_value", [(torch.float32, 4), (torch.bfloat16, 2), (torch.float64, 8)])
def test_cache_nbytes_equals_calculator(dtype, bytes_per_value):
    c = KVCache(batch_size=3, max_len=20, n_kv_heads=2, d_head=16, dtype=dtype)
    assert c.nbytes == kv_cache_bytes(1, 2, 16, 20, batch_size=3, bytes_per_value=bytes_per_value)
    assert c.nbytes == 2 * 3 * 2 * 20 * 16 * bytes_per_value


def test_cache_overflow_raises_with_numbers():
    c = KVCache(1, 8, 2, 4)
    c.append(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4))
    with pytest.raises(ValueError, match="cannot append 4 tokens: the cache holds 5 of max_len 8"):
        c.append(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
    assert c.pos == 5  # a refused append leaves the cache as it was


def test_sequence_longer_than_cache_raises_from_forward():
    m = make(32, 4, 2)
    with pytest.raises(ValueError, match="cannot append 10 tokens: the cache holds 0 of max_len 6"):
        m(randn(1, 10, 32), KVCache(1, 6, 2, 8, dtype=torch.float64))


def test_cache_shape_mismatch_raises_with_numbers():
    c = KVCache(1, 8, 2, 4)
    with pytest.raises(ValueError, match=r"H_kv=2.*\(1, 4, 3, 4\)"):
        c.append(torch.zeros(1, 4, 3, 4), torch.zeros(1, 4, 3, 4))


def test_cache_reset_starts_over():
    m = make(32, 4, 1)
    x = randn(1, 6, 32)
    c = KVCache(1, 6, 1, 8, dtype=torch.float64)
    with torch.no_grad():
        first = m(x, c)
        c.reset()
        assert c.pos == 0
        assert torch.equal(m(x, c), first)
    assert c.pos == 6


# --- the calculator ----------------------------------------------------------------------


def test_llama2_70b_cache_is_10_gib_with_64_kv_heads_and_1_25_with_8():
    assert kv_cache_bytes(80, 64, 128, 4096) == 10 * GIB
    assert kv_cache_bytes(80, 8, 128, 4096) == 1.25 * GIB
    assert kv_cache_bytes(80, 8, 128, 1) == 327_680
    assert kv_cache_bytes(80, 64, 128, 1) == 2_621_440
    assert kv_cache_bytes(80, 8, 128, 4096, batch_size=2, bytes_per_value=4) == 5 * GIB


def test_kv_cache_table_rows():
    rows = {r.name: r for r in kv_cache_table()}
    assert [(r.n_kv_heads, r.bytes_per_token, r.gib) for r in rows.values()][:5] == [
        (32, 524_288, 2.0), (8, 131_072, 0.5), (64, 2_621_440, 10.0), (8, 327_680, 1.25), (1, 40_960, 0.15625),
    ]
    assert kv_cache_table(seq_len=8192)[0].gib == 4.0


# --- bad inputs --------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    ((100, 8), "n_heads=8 does not divide d_model=100"),
    ((64, 8, 3), "n_kv_heads=3 does not divide n_heads=8"),
    ((64, 0), "n_heads=0"),
    ((64, 8, 16), "n_kv_heads=16 does not divide n_heads=8"),
])
def test_bad_head_counts_raise_with_numbers(args, message):
    with pytest.raises(ValueError, match=message):
        MultiHeadAttention(*args)


def re_shape(shape) -> str:
    """(1, 5, 32) -> a regex matching "(1, 5, 32)"."""
    return r"\(" + r", ".join(str(n) for n in shape) + r",?\)"


@pytest.mark.parametrize("shape", [(1, 5, 32), (5, 64), (1, 2, 5, 64)])
def test_bad_input_shape_raises_with_numbers(shape):
    m = MultiHeadAttention(64, 8)
    with pytest.raises(ValueError, match=r"d_model=64\), got " + re_shape(shape)):
        m(torch.zeros(shape))


def test_bad_cache_size_raises():
    with pytest.raises(ValueError, match="max_len must be positive, got 0"):
        KVCache(1, 0, 2, 4)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_cached_decoding_with_companion_rope_matches_full_forward(n_kv_heads):
    """The chapter 4 RotaryEmbedding plugs into attention as its `rope` and keeps cached decoding exact."""
    from companion.attention import KVCache, MultiHeadAttention
    from companion.positional import RotaryEmbedding

    torch.manual_seed(0)
    d_model, n_heads, T = 32, 4, 12
    attn = MultiHeadAttention(d_model, n_heads, n_kv_heads, rope=RotaryEmbedding(d_model // n_heads, 64)).double().eval()
    x = torch.randn(2, T, d_model, dtype=torch.float64)
    full = attn(x)
    cache = KVCache(2, 64, n_kv_heads, d_model // n_heads, dtype=torch.float64)
    steps = [attn(x[:, :5], cache=cache)] + [attn(x[:, t:t + 1], cache=cache) for t in range(5, T)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-10)


# --- head_dim apart from d_model, QK-norm ------------------------------------------------


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_head_dim_apart_from_d_model_matches_reference(use_sdpa):
    torch.manual_seed(0)
    attn = MultiHeadAttention(30, 4, 2, head_dim=8, use_sdpa=use_sdpa).eval()
    x = torch.randn(2, 5, 30)
    B, T = 2, 5
    q = attn.q_proj(x).view(B, T, 4, 8).transpose(1, 2)
    k = repeat_kv(attn.k_proj(x).view(B, T, 2, 8).transpose(1, 2), 2)
    v = repeat_kv(attn.v_proj(x).view(B, T, 2, 8).transpose(1, 2), 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(8), not of 30/4
    want = attn.o_proj(y.transpose(1, 2).reshape(B, T, 32))
    assert torch.allclose(attn(x), want, atol=1e-5)


def test_qk_norm_is_applied_before_rope_and_caching():
    torch.manual_seed(0)
    norms = dict(q_norm=torch.nn.RMSNorm(8), k_norm=torch.nn.RMSNorm(8))
    attn = MultiHeadAttention(32, 4, 2, rope=rope, head_dim=8, **norms).eval()
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(1, 6, 32)
    full = attn(x)
    cache = KVCache(1, 8, 2, 8)
    parts = [attn(x[:, :3], cache), attn(x[:, 3:5], cache), attn(x[:, 5:], cache)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    # the cached keys are normalised, then rotated: rotation keeps each head's norm
    stored = cache.k[:, :, :6]
    w = attn.k_norm.weight
    raw = attn.k_proj(x).view(1, 6, 2, 8).transpose(1, 2)
    normed = raw * torch.rsqrt(raw.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    assert torch.allclose(stored.norm(dim=-1), normed.norm(dim=-1), atol=1e-4)
    plain = MultiHeadAttention(32, 4, 2, rope=rope, head_dim=8).eval()
    plain.load_state_dict({k: v for k, v in attn.state_dict().items() if "norm" not in k})
    assert not torch.allclose(plain(x), full, atol=1e-3)


def test_head_dim_must_be_positive_and_frees_the_divisibility_rule():
    with pytest.raises(ValueError, match="head_dim"):
        MultiHeadAttention(32, 4, head_dim=0)
    with pytest.raises(ValueError, match="divide d_model=30"):
        MultiHeadAttention(30, 4)
    assert MultiHeadAttention(30, 4, head_dim=6).d_head == 6


def test_linear_many_fuses_under_autograd_and_matches_the_layers_one_by_one(monkeypatch):
    import companion.attention as attention
    from companion.attention import linear_many
    x0 = torch.randn(2, 3, 16)
    off = linear_many(x0, (torch.nn.Linear(16, 4), torch.nn.Linear(16, 4)))
    assert off[0].untyped_storage().data_ptr() != off[1].untyped_storage().data_ptr()  # off: two products
    monkeypatch.setattr(attention, "FUSE_PROJECTIONS", True)
    from companion.lora import LoRALinear
    torch.manual_seed(0)
    layers = (torch.nn.Linear(16, 16), torch.nn.Linear(16, 8), torch.nn.Linear(16, 8))
    x = torch.randn(3, 5, 16, requires_grad=True)
    fused = linear_many(x, layers)
    assert [t.shape[-1] for t in fused] == [16, 8, 8]
    assert fused[0]._base is not None and fused[0]._base is fused[2]._base  # one matmul's views
    sum((t * (i + 1)).sum() for i, t in enumerate(fused)).backward()
    grads = [m.weight.grad.clone() for m in layers] + [x.grad.clone()]
    for m in layers:
        m.zero_grad()
    x.grad = None
    sum((m(x) * (i + 1)).sum() for i, m in enumerate(layers)).backward()
    for got, want in zip(grads, [m.weight.grad for m in layers] + [x.grad]):
        torch.testing.assert_close(got, want)
    with torch.no_grad():  # one by one without grad: no copy of the weights per decoded token
        for got, m in zip(linear_many(x, layers), layers):
            torch.testing.assert_close(got, m(x))
    # a wrapped layer (LoRA) is called as itself, so its adapter is not skipped
    wrapped = (LoRALinear(layers[0], rank=2, alpha=4.0), layers[1])
    torch.nn.init.normal_(wrapped[0].lora_B)
    torch.testing.assert_close(linear_many(x, wrapped)[0], wrapped[0](x))
    assert not torch.allclose(linear_many(x, wrapped)[0], layers[0](x))
