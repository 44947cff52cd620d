"""Tests for companion.positional: learned, sinusoidal and rotary (RoPE) position encodings."""
import math

import pytest
import torch

from companion.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rope,
    apply_rope_complex,
    rope_frequencies,
    rotate_half,
    sinusoidal_encoding,
)


def _randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _rotate_at(rope: RotaryEmbedding, v: torch.Tensor, m: int) -> torch.Tensor:
    """R_m v for one vector v of size D, via the module's (B, H, T, D) interface."""
    return rope(v.view(1, 1, 1, -1), start_pos=m).view(-1)


# --- RoPE: the two formulations ----------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 5, 8), (1, 4, 7, 64), (3, 11, 16)])
@pytest.mark.parametrize("start_pos", [0, 3, 17])
def test_rotate_half_and_complex_forms_agree(shape, start_pos):
    x = _randn(*shape)
    rope = RotaryEmbedding(shape[-1], context_length=64, theta=10000.0)
    want = rope(x, start_pos=start_pos)
    got = apply_rope_complex(x, start_pos=start_pos, theta=10000.0)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_complex_form_keeps_dtype_and_agrees_in_low_precision(dtype):
    x = _randn(2, 2, 6, 16, dtype=dtype)
    got = apply_rope_complex(x, start_pos=4)
    assert got.dtype == dtype
    want = RotaryEmbedding(16, 32)(x.float(), start_pos=4).to(dtype)
    assert torch.allclose(got.float(), want.float(), atol=1e-2 if dtype == torch.bfloat16 else 1e-6)


def test_apply_rope_with_module_buffers_matches_forward():
    rope = RotaryEmbedding(8, 32)
    x = _randn(2, 3, 5, 8)
    got = apply_rope(x, rope.cos[10:15].double(), rope.sin[10:15].double())
    assert torch.equal(got, rope(x, start_pos=10))


# --- RoPE: invariants --------------------------------------------------------------------

# The angles are float32 (as in Hugging Face), so at position ~100 an angle is off by ~1e-5 rad:
# identities that are exact on paper hold here to about 1e-4 on O(1) dot products.
REL_TOL = 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rope_score_depends_only_on_offset(seed):
    """(R_m q)·(R_n k) = q·R_{n-m} k: the same offset gives the same score at any absolute position."""
    rope = RotaryEmbedding(16, context_length=128)
    q, k = _randn(16, seed=seed), _randn(16, seed=seed + 100)

    def score(m: int, n: int) -> float:
        return float(_rotate_at(rope, q, m) @ _rotate_at(rope, k, n))

    for offset in (2, 0, -5):
        pairs = [(m, m - offset) for m in (8, 15, 105)]
        scores = [score(m, n) for m, n in pairs]
        assert all(abs(s - scores[0]) < REL_TOL * max(1.0, abs(scores[0])) for s in scores), (offset, scores)
    same = [score(3, 1), score(10, 8), score(100, 98)]
    assert max(same) - min(same) < REL_TOL * max(1.0, abs(same[0]))
    # ...and a different offset gives a clearly different score.
    assert abs(score(3, 1) - score(3, 2)) > 1e-2
    assert abs(score(3, 1) - score(1, 3)) > 1e-2


@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 4, 9, 32)])
@pytest.mark.parametrize("start_pos", [0, 50])
def test_rope_preserves_norms(shape, start_pos):
    x = _randn(*shape)
    out = RotaryEmbedding(shape[-1], 64)(x, start_pos=start_pos)
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), rtol=1e-6, atol=0)


def test_rope_changes_vectors_away_from_position_zero():
    x = _randn(1, 1, 4, 8)
    out = RotaryEmbedding(8, 16)(x)
    assert torch.equal(out[..., 0, :], x[..., 0, :])
    assert not torch.allclose(out[..., 1:, :], x[..., 1:, :], atol=1e-3)


@pytest.mark.parametrize("d_head", [2, 8, 64])
def test_rope_at_position_zero_is_identity(d_head):
    """cos(0) = 1 and sin(0) = 0 exactly, so position 0 leaves every vector untouched, bit for bit."""
    x = _randn(2, 3, 1, d_head)
    assert torch.equal(RotaryEmbedding(d_head, 8)(x, start_pos=0), x)
    assert torch.equal(apply_rope_complex(x, start_pos=0), x)


@pytest.mark.parametrize("theta", [10000.0, 3.7, 500000.0])
@pytest.mark.parametrize("m", [0, 1, 2, 5, 50])
def test_rope_2d_hand_worked_rotation(theta, m):
    """With d_head = 2 there is one pair, i = 0, whose speed is theta^(-2*0/2) = theta^0 = 1 for any theta.

    Position m turns it by m * 1 radians, so (1, 0) -> (1*cos m - 0*sin m, 0*cos m + 1*sin m) = (cos m, sin m).
    """
    assert rope_frequencies(2, theta).tolist() == [1.0]
    out = _rotate_at(RotaryEmbedding(2, 64, theta=theta), torch.tensor([1.0, 0.0], dtype=torch.float64), m)
    assert torch.allclose(out, torch.tensor([math.cos(m), math.sin(m)], dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("m", [1, 3, 20])
def test_rope_pairs_dimension_i_with_i_plus_half_hand_worked(m):
    """D = 4, theta = 100: pairs are (0, 2) at speed 1 and (1, 3) at speed 100^(-2/4) = 0.1 (rotate-half layout).

    So e0 = (1, 0, 0, 0) -> (cos m, 0, sin m, 0) and e1 = (0, 1, 0, 0) -> (0, cos 0.1m, 0, sin 0.1m).
    Meta's interleaved layout would instead pair (0, 1) and (2, 3) and give (cos m, sin m, 0, 0) for e0.
    """
    rope = RotaryEmbedding(4, 32, theta=100.0)
    e0, e1 = torch.eye(4, dtype=torch.float64)[:2]
    c, s, c1, s1 = math.cos(m), math.sin(m), math.cos(0.1 * m), math.sin(0.1 * m)
    assert torch.allclose(_rotate_at(rope, e0, m), torch.tensor([c, 0, s, 0], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(_rotate_at(rope, e1, m), torch.tensor([0, c1, 0, s1], dtype=torch.float64), atol=1e-6)


def test_rope_frequencies_hand_values():
    """D = 4, theta = 100: pairs i = 0, 1 turn at 100^(-0/4) = 1 and 100^(-2/4) = 0.1 radians per position."""
    assert torch.allclose(rope_frequencies(4, 100.0), torch.tensor([1.0, 0.1]))


def test_rotate_half_pairs_i_with_i_plus_half():
    """[x0, x1 | x2, x3] has pairs (x0, x2) and (x1, x3); each (a, b) -> (-b, a): [-x2, -x3, x0, x1]."""
    assert rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-3.0, -4.0, 1.0, 2.0]
    x = _randn(3, 10)
    assert torch.equal(rotate_half(rotate_half(x)), -x)  # two quarter turns make a half turn


def test_rope_buffers_are_not_saved():
    assert dict(RotaryEmbedding(8, 16).state_dict()) == {}
    assert dict(SinusoidalPositionalEncoding(16, 8).state_dict()) == {}


# --- RoPE: agreement with Hugging Face Llama ---------------------------------------------


@pytest.mark.parametrize("start_pos", [0, 7])
def test_rope_matches_hugging_face_llama(start_pos):
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    n_head, d_head, ctx = 4, 16, 32
    config = LlamaConfig(
        hidden_size=n_head * d_head, num_attention_heads=n_head, num_key_value_heads=n_head,
        intermediate_size=128, num_hidden_layers=1, vocab_size=32, max_position_embeddings=ctx,
    )
    try:  # transformers >= 4.45 builds the rotary module from the config
        hf_rope = LlamaRotaryEmbedding(config=config)
    except TypeError:  # 4.38-4.44: from (dim, max_position_embeddings, base)
        hf_rope = LlamaRotaryEmbedding(d_head, max_position_embeddings=ctx, base=10000.0)
    B, T = 2, 9
    q, k = _randn(B, n_head, T, d_head, dtype=torch.float32), _randn(B, n_head, T, d_head, dtype=torch.float32, seed=1)
    position_ids = torch.arange(start_pos, start_pos + T)[None, :].expand(B, T)  # (B, T)
    cos, sin = hf_rope(q, position_ids)  # (B, T, D)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)

    rope = RotaryEmbedding(d_head, ctx, theta=10000.0)
    assert torch.allclose(rope.cos[start_pos : start_pos + T], cos[0], atol=1e-6)
    assert torch.allclose(rope(q, start_pos), q_hf, atol=1e-6)
    assert torch.allclose(rope(k, start_pos), k_hf, atol=1e-6)


# --- sinusoidal --------------------------------------------------------------------------


def test_sinusoidal_position_zero_alternates_zero_one():
    """At p = 0 every angle is 0: even dimensions hold sin 0 = 0, odd ones cos 0 = 1."""
    assert sinusoidal_encoding(4, 6)[0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_sinusoidal_two_dims_hand_worked():
    """d_model = 2 has one frequency, base^(-0/2) = 1, so row p is (sin p, cos p)."""
    pe = sinusoidal_encoding(5, 2)
    want = torch.tensor([[math.sin(p), math.cos(p)] for p in range(5)])
    assert torch.allclose(pe, want, atol=1e-7)


@pytest.mark.parametrize("context_length,d_model", [(1, 2), (16, 8), (1024, 768)])
def test_sinusoidal_shape_and_bounded(context_length, d_model):
    pe = sinusoidal_encoding(context_length, d_model)
    assert pe.shape == (context_length, d_model)
    assert pe.dtype == torch.float32
    assert float(pe.abs().max()) <= 1.0


@pytest.mark.parametrize("base", [10000.0, 100.0])
@pytest.mark.parametrize("p,i", [(1, 0), (7, 1), (50, 3), (1000, 10)])
def test_sinusoidal_matches_formula(base, p, i):
    d = 32
    pe = sinusoidal_encoding(1024, d, base=base)
    angle = p / base ** (2 * i / d)
    assert abs(float(pe[p, 2 * i]) - math.sin(angle)) < 1e-6
    assert abs(float(pe[p, 2 * i + 1]) - math.cos(angle)) < 1e-6


def test_sinusoidal_rejects_odd_d_model():
    with pytest.raises(ValueError, match="d_model=7"):
        sinusoidal_encoding(8, 7)
    with pytest.raises(ValueError, match="d_model=5"):
        SinusoidalPositionalEncoding(8, 5)


def test_sinusoidal_module_slices_the_table():
    enc = SinusoidalPositionalEncoding(16, 8)
    table = sinusoidal_encoding(16, 8)
    assert torch.equal(enc(5), table[:5])
    assert torch.equal(enc(5, start_pos=11), table[11:16])
    assert torch.equal(enc(torch.tensor([3, 0, 9])), table[[3, 0, 9]])
    with pytest.raises(ValueError, match="sequence of 17 tokens does not fit the context length 16"):
        enc(5, start_pos=12)


# --- learned -----------------------------------------------------------------------------


def test_learned_shape_and_start_pos_offset():
    torch.manual_seed(0)
    emb = LearnedPositionalEmbedding(8, 4)
    assert emb(5).shape == (5, 4)
    assert emb(0).shape == (0, 4)
    assert torch.equal(emb(3, start_pos=5), emb.embedding.weight[5:8])
    assert torch.equal(emb(torch.arange(3), start_pos=5), emb(3, start_pos=5))


def test_learned_rows_are_trained_only_where_used():
    emb = LearnedPositionalEmbedding(8, 4)
    emb(3, start_pos=2).sum().backward()
    used = emb.embedding.weight.grad.abs().sum(dim=1) > 0
    assert used.tolist() == [False, False, True, True, True, False, False, False]


@pytest.mark.parametrize("T,start_pos,n", [(9, 0, 9), (1, 8, 9), (4, 6, 10)])
def test_learned_overflow_names_both_numbers(T, start_pos, n):
    emb = LearnedPositionalEmbedding(8, 4)
    with pytest.raises(ValueError, match=f"sequence of {n} tokens does not fit the context length 8"):
        emb(T, start_pos=start_pos)
    with pytest.raises(ValueError, match="context length 8"):
        emb(torch.tensor([0, 8]))


# --- bad inputs --------------------------------------------------------------------------


@pytest.mark.parametrize("d_head", [1, 7, 63])
def test_odd_d_head_rejected_with_its_value(d_head):
    with pytest.raises(ValueError, match=f"d_head={d_head} must be even"):
        RotaryEmbedding(d_head, 16)
    with pytest.raises(ValueError, match=f"d_head={d_head} must be even"):
        rope_frequencies(d_head)


def test_rope_beyond_context_names_both_numbers():
    rope = RotaryEmbedding(8, 16)
    rope(_randn(1, 1, 4, 8), start_pos=12)  # positions 12..15 fit exactly
    with pytest.raises(ValueError, match=r"sequence of 17 tokens .* does not fit the context length 16"):
        rope(_randn(1, 1, 5, 8), start_pos=12)
    with pytest.raises(ValueError, match=r"sequence of 20 tokens .* does not fit the context length 16"):
        rope(_randn(1, 1, 20, 8))


def test_rope_rejects_wrong_head_size_and_negative_start():
    rope = RotaryEmbedding(8, 16)
    with pytest.raises(ValueError, match="last dimension 6 does not match d_head=8"):
        rope(_randn(1, 1, 4, 6))
    with pytest.raises(ValueError, match="start_pos must be >= 0, got -1"):
        rope(_randn(1, 1, 4, 8), start_pos=-1)


# --- RoPE scaling ------------------------------------------------------------------------

from companion.positional import check_rope_scaling, scaled_rope_frequencies  # noqa: E402

D_HEAD, THETA, CTX = 64, 500000.0, 128
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}


def _hf_inv_freq(params: dict, seq_len=None):
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=4 * D_HEAD, num_attention_heads=4, num_key_value_heads=4,
                         intermediate_size=32, num_hidden_layers=1, vocab_size=32,
                         max_position_embeddings=CTX,
                         rope_parameters={"rope_theta": THETA, **params})
    return ROPE_INIT_FUNCTIONS[params["rope_type"]](config, "cpu", seq_len=seq_len)


@pytest.mark.parametrize("params", [
    {"rope_type": "linear", "factor": 4.0}, LLAMA3, YARN,
    {**YARN, "beta_fast": 16, "beta_slow": 2, "truncate": False},
    {**YARN, "mscale": 1.0, "mscale_all_dim": 0.5},
], ids=["linear", "llama3", "yarn", "yarn-betas", "yarn-mscale"])
def test_scaled_frequencies_match_transformers_rope_init(params):
    want, want_attention = _hf_inv_freq(params)
    got, attention = scaled_rope_frequencies(D_HEAD, THETA, params, CTX)
    assert torch.allclose(got, want, rtol=1e-6, atol=0)
    assert attention == pytest.approx(want_attention)


@pytest.mark.parametrize("factor", [2.0, 8.0])
def test_ntk_equals_transformers_dynamic_at_factor_times_context(factor):
    # HF's dynamic NTK with factor 1 at seq_len = k * L raises the base exactly as static NTK-aware
    # scaling by k does.
    want, _ = _hf_inv_freq({"rope_type": "dynamic", "factor": 1.0}, seq_len=int(factor * CTX))
    got, attention = scaled_rope_frequencies(D_HEAD, THETA, {"rope_type": "ntk", "factor": factor})
    assert torch.allclose(got, want, rtol=1e-5, atol=0) and attention == 1.0


def test_scaling_keeps_fast_pairs_and_slows_the_slowest_by_the_factor():
    base = rope_frequencies(D_HEAD, THETA)
    for params in ({"rope_type": "ntk", "factor": 8.0}, LLAMA3, {**YARN, "factor": 8.0}):
        got, _ = scaled_rope_frequencies(D_HEAD, THETA, params, CTX)
        assert got[0] == pytest.approx(float(base[0])), params["rope_type"]
        assert got[-1] == pytest.approx(float(base[-1]) / 8.0, rel=1e-4), params["rope_type"]
    linear, _ = scaled_rope_frequencies(D_HEAD, THETA, {"rope_type": "linear", "factor": 8.0})
    assert torch.allclose(linear, base / 8.0)


def test_linear_scaling_rotates_position_m_as_plain_rope_does_m_over_factor():
    x = _randn(1, 1, 4, 8, dtype=torch.float32)
    plain = RotaryEmbedding(8, 64)
    scaled = RotaryEmbedding(8, 64, scaling={"rope_type": "linear", "factor": 2.0})
    assert torch.allclose(scaled(x, start_pos=0, positions=torch.tensor([0, 2, 4, 6])),
                          plain(x, positions=torch.tensor([0, 1, 2, 3])), atol=1e-6)


def test_yarn_module_scales_cos_and_sin_by_attention_factor():
    rope = RotaryEmbedding(D_HEAD, CTX, THETA, scaling=YARN)
    _, attention = scaled_rope_frequencies(D_HEAD, THETA, YARN, CTX)
    assert attention == pytest.approx(0.1 * math.log(4.0) + 1)
    assert torch.allclose(rope.cos[0], torch.full((D_HEAD,), attention))


@pytest.mark.parametrize("bad, words", [
    ({"rope_type": "longrope", "factor": 2.0}, "rope_type"),
    ({"rope_type": "linear", "factor": 0.5}, "factor"),
    ({"rope_type": "linear", "factor": 2.0, "beta_fast": 3}, "unknown"),
    ({**LLAMA3, "low_freq_factor": 5.0}, "low_freq_factor"),
    ({k: v for k, v in LLAMA3.items() if k != "high_freq_factor"}, "high_freq_factor"),
])
def test_bad_rope_scaling_raises_naming_the_problem(bad, words):
    with pytest.raises(ValueError, match=words):
        check_rope_scaling(bad)


# --- RoPE: explicit positions (packed documents) -----------------------------------------


def test_explicit_positions_equal_rotating_each_token_at_its_own_position():
    rope = RotaryEmbedding(8, 32)
    x = _randn(2, 3, 6, 8)
    positions = torch.tensor([0, 1, 2, 0, 1, 0])  # three documents packed into one row
    got = rope(x, positions=positions)
    for t, m in enumerate(positions.tolist()):
        assert torch.allclose(got[:, :, t], rope(x[:, :, t:t + 1], start_pos=m)[:, :, 0])
    # start_pos offsets explicit positions, as the learned table's forward does
    shifted = rope(x, positions=positions + 3)
    assert torch.allclose(rope(x, start_pos=3, positions=positions), shifted)


def test_explicit_positions_per_sequence_rows():
    rope = RotaryEmbedding(8, 32)
    x = _randn(2, 3, 4, 8)
    positions = torch.tensor([[0, 1, 2, 3], [5, 0, 1, 2]])
    got = rope(x, positions=positions)
    for b in range(2):
        assert torch.allclose(got[b:b + 1], rope(x[b:b + 1], positions=positions[b]))
    assert torch.allclose(got[:1], rope(x[:1]))  # 0..T-1 is the default


@pytest.mark.parametrize("positions, words", [
    (torch.tensor([0, 1, 2]), "shape"), (torch.tensor([0, 1, 2, 32]), r"\[0, 32\)"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), "integers"),
])
def test_bad_explicit_positions_raise(positions, words):
    with pytest.raises(ValueError, match=words):
        RotaryEmbedding(8, 32)(_randn(1, 1, 4, 8), positions=positions)
