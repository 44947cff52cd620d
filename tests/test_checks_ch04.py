"""Chapter 4's self-checks pass on correct answers and fail with a specific hint on the stub and plausible mistakes."""
from __future__ import annotations

import math

import pytest
import torch

from checkhelpers import fails_with, passes, stub
from companion.checks import ExerciseFailed, check_4_1, check_4_2, check_4_3, check_4_4
from companion.positional import RotaryEmbedding, scaled_rope_frequencies, sinusoidal_encoding


# --- 4.1 token + position embeddings ----------------------------------------------

def embed(ids, tok, pos):
    if ids.shape[1] > pos.shape[0]:
        raise ValueError("sequence longer than the position table")
    return tok[ids] + pos[: ids.shape[1]]


def embed_off_by_one(ids, tok, pos):
    if ids.shape[1] >= pos.shape[0]:
        raise ValueError("sequence longer than the position table")
    return tok[ids] + pos[: ids.shape[1]]


def test_check_4_1_passes_on_a_correct_answer(capsys):
    passes(check_4_1, embed, capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda ids, tok, pos: tok[ids], "token embeddings alone"),
    (lambda ids, tok, pos: tok[ids] + pos[ids % pos.shape[0]], "by token id"),
    (lambda ids, tok, pos: tok[ids] + pos[: ids.shape[0], None], "batch row"),
    (lambda ids, tok, pos: tok[ids] + pos[: ids.shape[1]], "should raise ValueError"),
    (lambda ids, tok, pos: tok[ids] + pos[torch.arange(ids.shape[1]) % pos.shape[0]], "must raise ValueError"),
    (lambda ids, tok, pos: (tok[ids] + pos[: ids.shape[1]])[0], "expected shape"),
    (embed_off_by_one, "off by one"),
])
def test_check_4_1_catches_mistakes(wrong, fragment):
    fails_with(check_4_1, wrong, fragment)


# --- 4.2 sinusoidal table ---------------------------------------------------------

def test_check_4_2_passes_on_a_correct_answer(capsys):
    passes(check_4_2, sinusoidal_encoding, capsys)


def swapped(P, d):
    pe = sinusoidal_encoding(P, d)
    return torch.stack((pe[:, 1::2], pe[:, 0::2]), -1).flatten(1)


def i_not_2i(P, d):
    angles = torch.arange(P).float()[:, None] * 10000.0 ** (-torch.arange(d // 2).float() / d)
    return torch.stack((angles.sin(), angles.cos()), -1).flatten(1)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda P, d: sinusoidal_encoding(P, d).T, "transposed"),
    (swapped, "swapped"),
    (i_not_2i, "10000^(-i/d)"),
    (lambda P, d: torch.zeros(P, d), "cos(0) = 1"),
    (lambda P, d: sinusoidal_encoding(P, d, base=1000.0), "wrong value at position"),
])
def test_check_4_2_catches_mistakes(wrong, fragment):
    fails_with(check_4_2, wrong, fragment)


# --- 4.3 interleaved RoPE and the q/k permutation ---------------------------------

def rope_interleaved(x, theta=10000.0, start_pos=0, pairing="interleaved", sign=1.0):
    """A from-scratch answer, as a learner writes it: pairs (2i, 2i+1)."""
    T, D = x.shape
    pos = torch.arange(start_pos, start_pos + T, dtype=x.dtype)
    angles = pos[:, None] * theta ** (-torch.arange(0, D, 2, dtype=x.dtype) / D)  # (T, D/2)
    cos, sin = angles.cos(), sign * angles.sin()
    out = torch.empty_like(x)
    if pairing == "interleaved":
        a, b = x[:, 0::2], x[:, 1::2]
        out[:, 0::2], out[:, 1::2] = a * cos - b * sin, b * cos + a * sin
    else:
        a, b = x[:, : D // 2], x[:, D // 2:]
        out[:, : D // 2], out[:, D // 2:] = a * cos - b * sin, b * cos + a * sin
    return out


def permute_qk(w, n_heads):
    """Hugging Face's conversion: in each head, rows 0, 2, 4, ... first, then 1, 3, 5, ...."""
    d_out, d_model = w.shape
    D = d_out // n_heads
    return w.view(n_heads, D // 2, 2, d_model).transpose(1, 2).reshape(d_out, d_model)


def inverse_permute(w, n_heads):
    d_out, d_model = w.shape
    D = d_out // n_heads
    return w.view(n_heads, 2, D // 2, d_model).transpose(1, 2).reshape(d_out, d_model)


def whole_matrix(w, n_heads):
    return permute_qk(w, 1)


def check(rope, permute=permute_qk):
    return lambda: check_4_3(rope, permute)


@pytest.mark.parametrize("rope, permute, fragment", [
    (stub, permute_qk, "not implemented"),
    (rope_interleaved, stub, "not implemented"),
    (lambda x, theta, start_pos: x, permute_qk, "nothing changed"),
    (lambda x, theta, start_pos: rope_interleaved(x, theta, start_pos, pairing="half"),
     permute_qk, "rotate-half layout of the chapter"),
    (lambda x, theta, start_pos: rope_interleaved(x, theta, start_pos, sign=-1.0), permute_qk,
     "wrong way"),
    (lambda x, theta, start_pos: rope_interleaved(x, 500.0, start_pos), permute_qk,
     "angles are off"),
    (lambda x, theta, start_pos: rope_interleaved(x, 10000.0, start_pos), permute_qk,
     "theta=100"),
    (lambda x, theta, start_pos: rope_interleaved(x, theta), permute_qk, "start_pos=7"),
    (lambda x, theta, start_pos: rope_interleaved(x, theta, start_pos)[:, :4], permute_qk,
     "keep x's shape"),
    (rope_interleaved, lambda w, h: w, "unchanged"),
    (rope_interleaved, lambda w, h: w * 2, "only reorder the rows"),
    (rope_interleaved, whole_matrix, "all H*D rows at once"),
    (rope_interleaved, inverse_permute, "the other way"),
    (rope_interleaved, lambda w, h: w.flip(0), "not the right order"),
    (rope_interleaved, lambda w, h: permute_qk(w, h)[:-1], "keep the weight's shape"),
])
def test_check_4_3_catches_mistakes(rope, permute, fragment):
    with pytest.raises(ExerciseFailed) as info:
        check_4_3(rope, permute)
    assert fragment in str(info.value), str(info.value)


def test_check_4_3_passes_on_a_correct_answer(capsys):
    check_4_3(rope_interleaved, permute_qk)
    assert "passed" in capsys.readouterr().out


def test_check_4_3_permutation_gives_the_companions_rope_the_same_scores():
    """The check's claim, against the companion's RotaryEmbedding rather than its own helper."""
    g = torch.Generator().manual_seed(0)
    H, D, d_model, T = 2, 8, 6, 9
    w, x = torch.randn(H * D, d_model, generator=g), torch.randn(T, d_model, generator=g)
    rope = RotaryEmbedding(D, T)
    for h in range(H):
        meta = rope_interleaved(x @ w[h * D:(h + 1) * D].T)
        hf = rope((x @ permute_qk(w, H)[h * D:(h + 1) * D].T)[None, None])[0, 0]
        assert torch.allclose(meta @ meta.T, hf @ hf.T, atol=1e-4)


# --- 4.4 YaRN as the paper defines it ------------------------------------------------

def yarn(inv_freq, factor, L, alpha=1.0, beta=32.0, log=math.log, turns_scale=2 * math.pi):
    """A from-scratch answer: gamma linear in r = L / wavelength, cos/sin times 0.1 ln s + 1."""
    r = L * inv_freq / turns_scale
    gamma = ((r - alpha) / (beta - alpha)).clamp(0, 1)
    return (1 - gamma) * inv_freq / factor + gamma * inv_freq, 0.1 * log(factor) + 1


def code_ramp(inv_freq, factor, L, alpha=1.0, beta=32.0):
    d = 2 * len(inv_freq)
    theta = float(1 / inv_freq[1]) ** (d / 2)
    config = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": L,
              "beta_fast": beta, "beta_slow": alpha}
    return scaled_rope_frequencies(d, theta, config)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda f, s, L, a, b: yarn(f, s, L, a, b)[0], "return two things"),
    (lambda f, s, L, a, b: (f, 1.0), "no speed changed"),
    (lambda f, s, L, a, b: (f / s, 0.1 * math.log(s) + 1), "position interpolation"),
    (lambda f, s, L, a, b: (yarn(f, s, L, a, b)[0] * 0 + f + f / s - yarn(f, s, L, a, b)[0],
                            yarn(f, s, L, a, b)[1]), "wrong way round"),
    (code_ramp, "authors' code"),
    (lambda f, s, L, a, b: yarn(f, s, L, a, b, turns_scale=1.0), "2 pi / theta"),
    (lambda f, s, L, a, b: yarn(f, 8.0, 8192, 1.0, 32.0), "use every argument"),
    (lambda f, s, L, a, b: (yarn(f, s, L, a, b)[0], 1.0), "factor on cos and sin is missing"),
    (lambda f, s, L, a, b: (yarn(f, s, L, a, b)[0], yarn(f, s, L, a, b)[1] ** 2),
     "what the attention logits get"),
    (lambda f, s, L, a, b: yarn(f, s, L, a, b, log=math.log10), "natural log"),
    (lambda f, s, L, a, b: (yarn(f, s, L, a, b)[0][:-1], 1.2), "expected speeds of shape"),
])
def test_check_4_4_catches_mistakes(wrong, fragment):
    fails_with(check_4_4, wrong, fragment)


def test_check_4_4_passes_on_a_correct_answer(capsys):
    passes(check_4_4, yarn, capsys)
