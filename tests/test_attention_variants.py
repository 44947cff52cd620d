"""Tests for chapter 5's variants: tiled attention against SDPA, sliding windows and their rolling
cache, and multi-head latent attention's cached decoding."""
import pytest
import torch
import torch.nn.functional as F

from companion.attention import kv_cache_table, tiled_attention
from companion.attention_variants import (
    MLACache,
    MultiHeadLatentAttention,
    RollingKVCache,
    SlidingWindowAttention,
    band_mask,
    mla_bytes_per_token,
)
from companion.positional import RotaryEmbedding

GIB = 2**30


def qkv(T, S=None, B=2, H=3, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = T if S is None else S
    return (torch.randn(B, H, T, D, generator=g), torch.randn(B, H, S, D, generator=g),
            torch.randn(B, H, S, D, generator=g))


# --- tiled attention -----------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 7, 64, 65, 130, 200])
@pytest.mark.parametrize("causal", [True, False])
def test_tiled_attention_matches_sdpa_at_any_length(T, causal):
    q, k, v = qkv(T)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    got = tiled_attention(q, k, v, causal=causal, block_size=64)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


@pytest.mark.parametrize("block_size", [1, 3, 16, 1000])
def test_tiled_attention_does_not_depend_on_the_block_size(block_size):
    q, k, v = qkv(37)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(tiled_attention(q, k, v, block_size=block_size), want, atol=1e-5)


@pytest.mark.parametrize("T, S", [(1, 50), (5, 50), (50, 50), (17, 100)])
def test_tiled_attention_chunk_after_a_cache_sees_keys_up_to_its_position(T, S):
    q, k, v = qkv(T, S)
    # query i sits at position S - T + i: the last T rows of the (S, S) causal mask
    mask = torch.ones(S, S, dtype=torch.bool).tril()[S - T:]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(tiled_attention(q, k, v, block_size=8), want, atol=1e-5)


def test_tiled_attention_survives_huge_scores_without_overflow():
    q, k, v = qkv(20)
    q, k = q * 100, k * 100  # raw exp would overflow float32; the running max keeps it finite
    got = tiled_attention(q, k, v, block_size=4)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-4)


@pytest.mark.parametrize("args, kw, message", [
    ((torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8)), {}, "(B, H, T, D)"),
    ((torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 8)), {},
     "same shape"),
    ((torch.randn(1, 2, 4, 8), torch.randn(1, 3, 4, 8), torch.randn(1, 3, 4, 8)), {},
     "agree in B, H and D"),
    ((torch.randn(1, 2, 6, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)), {},
     "S=4 < T=6"),
    ((torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)),
     {"block_size": 0}, "block_size must be a positive int, got 0"),
])
def test_tiled_attention_rejects_bad_input(args, kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiled_attention(*args, **kw)


# --- sliding window --------------------------------------------------------------------------


def test_band_mask_hand_worked():
    """Window 2: each query sees itself and the one before it, never the future."""
    want = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(band_mask(torch.arange(4), torch.arange(4), 2), want)


def test_band_mask_with_a_window_covering_everything_is_causal():
    assert torch.equal(band_mask(torch.arange(6), torch.arange(6), 6),
                       torch.ones(6, 6, dtype=torch.bool).tril())


def make_swa(window=8, seed=0):
    torch.manual_seed(seed)
    rope = RotaryEmbedding(8, 512)
    return SlidingWindowAttention(32, 4, 2, window=window, rope=rope).double().eval()


@pytest.mark.parametrize("chunks", [[1] * 30, [5, 1, 1, 12, 1, 3, 7], [30], [9, 21]])
def test_rolling_cache_equals_band_masked_full_attention(chunks):
    """Decoding past the window, in any chunking, gives the full forward's outputs."""
    layer, x = make_swa(), torch.randn(1, sum(chunks), 32, dtype=torch.float64)
    cache = RollingKVCache(1, 8, 2, 8, dtype=torch.float64)
    with torch.no_grad():
        full = layer(x)
        parts, t = [], 0
        for n in chunks:
            parts.append(layer(x[:, t:t + n], cache))
            t += n
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-10)
    assert cache.pos == sum(chunks)


def test_rolling_cache_memory_stays_bounded():
    layer, cache = make_swa(window=4), RollingKVCache(1, 4, 2, 8, dtype=torch.float64)
    before = cache.nbytes
    with torch.no_grad():
        for _ in range(50):
            layer(torch.randn(1, 1, 32, dtype=torch.float64), cache)
    assert cache.nbytes == before == 2 * 1 * 2 * 4 * 8 * 8
    assert sorted(cache.slot_pos.tolist()) == [46, 47, 48, 49]


def test_sliding_window_differs_from_full_attention_past_the_window():
    from companion.attention import MultiHeadAttention

    swa = make_swa(window=4)
    full = MultiHeadAttention(32, 4, 2, rope=swa.rope).double().eval()
    full.load_state_dict(swa.state_dict())
    x = torch.randn(1, 10, 32, dtype=torch.float64)
    with torch.no_grad():
        a, b = swa(x), full(x)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-10)  # inside the window: identical
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-6)


def test_rolling_cache_rejects_wrong_shapes_and_sizes():
    with pytest.raises(ValueError, match="window must be positive, got 0"):
        RollingKVCache(1, 0, 2, 8)
    with pytest.raises(ValueError, match="H_kv=2"):
        RollingKVCache(1, 4, 2, 8).append(torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 8))


# --- MLA ---------------------------------------------------------------------------------------


def make_mla(seed=0):
    torch.manual_seed(seed)
    return MultiHeadLatentAttention(32, 4, 8, d_c=16, d_rope=4,
                                    rope=RotaryEmbedding(4, 256)).double().eval()


@pytest.mark.parametrize("chunks", [[1] * 12, [5, 1, 6], [12]])
def test_mla_cached_decoding_equals_the_full_forward(chunks):
    mla, x = make_mla(), torch.randn(2, 12, 32, dtype=torch.float64)
    cache = MLACache(2, 12, 16, 4, dtype=torch.float64)
    with torch.no_grad():
        full = mla(x)
        parts, t = [], 0
        for n in chunks:
            parts.append(mla(x[:, t:t + n], cache))
            t += n
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-10)


def test_mla_is_causal():
    mla, x = make_mla(), torch.randn(1, 8, 32, dtype=torch.float64)
    y = x.clone()
    y[:, 5:] = torch.randn(1, 3, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(mla(x)[:, :5], mla(y)[:, :5], atol=1e-12)


def test_mla_cache_bytes_follow_the_papers_formula():
    """DeepSeek-V2: (d_c + d_h^R) * l = (512 + 64) * 60 values per token, 2 bytes each in bf16."""
    assert mla_bytes_per_token(60, 512, 64) == 69_120
    assert MLACache(1, 4, 512, 64, dtype=torch.bfloat16).nbytes_per_token * 60 == 69_120
    rows = {r.name: r for r in kv_cache_table(seq_len=4096)}
    assert rows["DeepSeek-V2 (MLA)"].bytes_per_token == 69_120
    assert rows["DeepSeek-V2 (MLA)"].gib == 69_120 * 4096 / GIB


def test_sliding_window_row_stops_growing_at_the_window():
    at_4k = {r.name: r for r in kv_cache_table(seq_len=4096)}
    at_32k = {r.name: r for r in kv_cache_table(seq_len=32768)}
    name = "Mistral-7B (GQA, window 4096)"
    assert at_4k[name].gib == at_32k[name].gib == 0.5
    assert at_32k["Llama-3-8B (GQA)"].gib == 4.0


# --- measuring memory ----------------------------------------------------------------------


def test_peak_cpu_bytes_sees_one_float32_allocation():
    from companion.tiled import peak_cpu_bytes

    assert peak_cpu_bytes(lambda: torch.zeros(1024)) == 4096


def test_tiled_attention_never_holds_the_score_matrix():
    from companion.attention import causal_mask, scaled_dot_product
    from companion.tiled import peak_cpu_bytes

    q, k, v = qkv(512, B=1, H=2, D=16)
    scores = 2 * 512 * 512 * 4  # one (H, T, T) float32 matrix
    with torch.no_grad():
        written = peak_cpu_bytes(lambda: scaled_dot_product(q, k, v, causal_mask(512)))
        tiled = peak_cpu_bytes(lambda: tiled_attention(q, k, v, block_size=64))
    assert written >= scores
    assert tiled < scores / 4
