"""Chapter 4's self-checks pass on correct answers and fail with a specific hint on the stub and plausible mistakes."""
from __future__ import annotations

import math

import pytest
import torch

from checkhelpers import fails_with, passes, stub
from companion.checks import check_4_1, check_4_2, check_4_3, check_4_4
from companion.positional import RotaryEmbedding, rotate_half, scaled_rope_frequencies, sinusoidal_encoding


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


# --- 4.3 RoPE at any position -----------------------------------------------------

def rope(x, theta=10000.0, start_pos=0, positions=None):
    """A from-scratch answer, as a learner writes it (not the companion's code)."""
    T, D = x.shape
    pos = (torch.arange(T) if positions is None else positions).float() + start_pos
    angles = pos[:, None] * theta ** (-2 * torch.arange(D // 2).float() / D)  # (T, D/2)
    a, b = x[:, : D // 2], x[:, D // 2:]
    return torch.cat((a * angles.cos() - b * angles.sin(), b * angles.cos() + a * angles.sin()), -1)


def interleaved(x, theta=10000.0, start_pos=0, positions=None):
    D = x.shape[1]
    perm = torch.cat((torch.arange(0, D, 2), torch.arange(1, D, 2)))
    out = torch.empty_like(x)
    out[:, perm] = rope(x[:, perm], theta, start_pos, positions)
    return out


def backwards(x, theta=10000.0, start_pos=0, positions=None):
    T, D = x.shape
    r = RotaryEmbedding(D, T, theta)
    return x * r.cos[:T] - rotate_half(x) * r.sin[:T]


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda x, theta, start_pos=0, positions=None: x, "nothing changed"),
    (interleaved, "(2i, 2i+1)"),
    (backwards, "wrong way"),
    (lambda x, theta, start_pos=0, positions=None: rope(x, 10000.0, start_pos, positions), "theta=100"),
    (lambda x, theta, start_pos=0, positions=None: rope(x, 500.0, start_pos, positions), "angles are off"),
    (lambda x, theta, start_pos=0, positions=None: rope(x, theta)[:, :4], "keep x's shape"),
    # the pre-KV-cache signature: no start offset at all
    (lambda x, theta: rope(x, theta), "got an unexpected keyword argument 'start_pos'"),
    (lambda x, theta, start_pos=0, positions=None: rope(x, theta, 0, positions), "same as start_pos=0"),
    (lambda x, theta, start_pos=0, positions=None: rope(x, theta, max(start_pos - 1, 0), positions),
     "one position early"),
    (lambda x, theta, start_pos=0, positions=None: rope(x, theta, 2 * start_pos, positions),
     "wrong for start_pos"),
    (lambda x, theta, start_pos=0, positions=None: rope(x, theta, start_pos), "ignored positions"),
    (lambda x, theta, start_pos=0, positions=None: rope(x, theta, 0 if positions is not None else start_pos,
                                                         positions), "yours ignored start_pos"),
    (lambda x, theta, start_pos=0, positions=None: rope(x, theta, start_pos,
                                                         None if positions is None else positions.flip(0)),
     "wrong for explicit positions"),
])
def test_check_4_3_catches_mistakes(wrong, fragment):
    fails_with(check_4_3, wrong, fragment)


def test_check_4_3_passes_on_a_correct_answer(capsys):
    passes(check_4_3, rope, capsys)


def test_check_4_3_passes_on_the_companion(capsys):
    def companion(x, theta=10000.0, start_pos=0, positions=None):
        return RotaryEmbedding(x.shape[1], 64, theta)(x, start_pos, positions)
    passes(check_4_3, companion, capsys)


# --- 4.4 Llama 3's frequency scaling ----------------------------------------------

def llama3(inv_freq, factor, low, high, L):
    """A from-scratch answer: weight 0..1, linear in the number of turns L / wavelength."""
    keep = ((L * inv_freq / (2 * math.pi) - low) / (high - low)).clamp(0, 1)
    return (1 - keep) * inv_freq / factor + keep * inv_freq


def zones(inv_freq, factor, low, high, L, mid):
    """Short wavelengths kept, long ones divided, the middle handled by `mid`."""
    wavelength = 2 * math.pi / inv_freq
    out = torch.where(wavelength > L / low, inv_freq / factor, inv_freq)
    between = (wavelength >= L / high) & (wavelength <= L / low)
    return torch.where(between, mid(inv_freq, factor, low, high, L), out)


def swapped_zones(inv_freq, factor, low, high, L):
    wavelength = 2 * math.pi / inv_freq
    return torch.where(wavelength < L / high, inv_freq / factor, llama3(inv_freq, factor, low, high, L))


def reversed_blend(inv_freq, factor, low, high, L):
    keep = (L * inv_freq / (2 * math.pi) - low) / (high - low)
    return zones(inv_freq, factor, low, high, L, lambda f, *a: keep * f / factor + (1 - keep) * f)


def hard_coded(inv_freq, factor, low, high, L):
    return llama3(inv_freq, 8.0, 1.0, 4.0, 8192)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda f, factor, low, high, L: f, "nothing changed"),
    (lambda f, factor, low, high, L: f * factor, "speeds went up"),
    (lambda f, factor, low, high, L: f / factor, "position interpolation"),
    (swapped_zones, "zones swapped"),
    (lambda f, factor, low, high, L: llama3(f, factor, low, high, L) * 0.9, "must keep their speed."),
    (lambda f, factor, low, high, L: zones(f, 1.0, low, high, L, lambda f, *a: f), "must be divided by factor"),
    (lambda f, factor, low, high, L: zones(f, factor, low, high, L, lambda f, *a: f), "must blend"),
    (lambda f, factor, low, high, L: zones(f, factor, low, high, L, lambda f, factor, *a: f / factor),
     "must blend"),
    (reversed_blend, "wrong way"),
    # a blend linear in the wavelength instead of in the number of turns
    (lambda f, factor, low, high, L: zones(
        f, factor, low, high, L,
        lambda f, factor, low, high, L: (lambda w: w * f + (1 - w) * f / factor)(
            ((L / low - 2 * math.pi / f) / (L / low - L / high)).clamp(0, 1))), "linear in L / wavelength"),
    (hard_coded, "don't hard-code"),
    (lambda f, factor, low, high, L: llama3(f, factor, low, high, L)[:-1], "expected shape"),
])
def test_check_4_4_catches_mistakes(wrong, fragment):
    fails_with(check_4_4, wrong, fragment)


def test_check_4_4_passes_on_a_correct_answer(capsys):
    passes(check_4_4, llama3, capsys)


def test_check_4_4_passes_on_the_companion(capsys):
    def companion(inv_freq, factor, low, high, L):
        d = 2 * len(inv_freq)
        theta = float(1 / inv_freq[1]) ** (d / 2)  # inv_freq[1] = theta^(-2/d)
        config = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                  "original_max_position_embeddings": L}
        return scaled_rope_frequencies(d, theta, config)[0]
    passes(check_4_4, companion, capsys)
