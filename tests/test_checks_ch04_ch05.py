"""Chapters 4 and 5's self-checks pass on correct answers and fail with a specific hint on the stub and plausible mistakes."""
from __future__ import annotations

import math

import pytest
import torch

from companion.attention import attention_weights, causal_mask, kv_cache_bytes, repeat_kv
from companion.checks import (ExerciseFailed, check_4_1, check_4_2, check_4_3, check_5_1, check_5_2, check_5_3,
                              check_5_4)
from checkhelpers import stub, fails_with, passes
from companion.positional import RotaryEmbedding, rotate_half, sinusoidal_encoding


# --- 5.1 causal attention weights -------------------------------------------------

def weights(q, k):
    return attention_weights(q, k, causal_mask(q.shape[1]))


def masked(scores):
    T = scores.shape[-1]
    return scores.masked_fill(~causal_mask(T), float("-inf"))


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda q, k: torch.softmax(masked(q @ k.transpose(-1, -2)), -1), "forgot the scaling"),
    (lambda q, k: torch.softmax(masked(q @ k.transpose(-1, -2) / q.shape[-1]), -1), "divided by D"),
    (lambda q, k: torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1), "future"),
    (lambda q, k: torch.softmax((q @ k.transpose(-1, -2)).masked_fill(causal_mask(q.shape[1]), float("-inf")), -1),
     "NaN"),
    (lambda q, k: torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) * causal_mask(q.shape[1]),
     "rows don't sum to 1"),
    (lambda q, k: weights(q, k)[:, :, :-1], "expected weights"),
])
def test_check_5_1_catches_mistakes(wrong, fragment):
    fails_with(check_5_1, wrong, fragment)


def test_check_5_1_catches_a_reversed_mask():
    def upper(q, k):
        s = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~causal_mask(q.shape[1]).T, float("-inf"))
        return torch.softmax(s, -1)
    fails_with(check_5_1, upper, "wrong way round")


def test_check_5_1_passes_on_a_correct_answer(capsys):
    passes(check_5_1, weights, capsys)


# --- 5.2 split heads --------------------------------------------------------------

def split_heads(x, h):
    B, T, C = x.shape
    return x.view(B, T, h, C // h).transpose(1, 2)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda x, h: x.view(x.shape[0], x.shape[1], h, -1), "transpose(1, 2)"),
    (lambda x, h: x.view(x.shape[0], h, x.shape[1], -1), "scrambled"),
    (lambda x, h: x.view(x.shape[0], x.shape[1], -1, h).permute(0, 2, 1, 3).contiguous().view(
        x.shape[0], h, x.shape[1], -1), "wrong layout"),
])
def test_check_5_2_catches_mistakes(wrong, fragment):
    fails_with(check_5_2, wrong, fragment)


def test_check_5_2_passes_on_a_correct_answer(capsys):
    passes(check_5_2, split_heads, capsys)


# --- 5.3 repeat KV heads ----------------------------------------------------------

@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda x, n: x.repeat(1, n, 1, 1), "tiled"),
    (lambda x, n: x, "expected shape"),
])
def test_check_5_3_catches_mistakes(wrong, fragment):
    fails_with(check_5_3, wrong, fragment)


def test_check_5_3_passes_on_both_idioms(capsys):
    passes(check_5_3, repeat_kv, capsys)
    passes(check_5_3, lambda x, n: x.repeat_interleave(n, dim=1), capsys)


# --- 5.4 KV-cache bytes -----------------------------------------------------------

def kv_bytes(L, H, H_kv, C, S, B, b):
    return kv_cache_bytes(L, H_kv, C // H, S, B, b)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda L, H, H_kv, C, S, B, b: kv_bytes(L, H, H_kv, C, S, B, b) // 2, "keys AND values"),
    (lambda L, H, H_kv, C, S, B, b: kv_bytes(L, H, H, C, S, B, b), "n_heads query heads"),
    (lambda L, H, H_kv, C, S, B, b: 2 * L * H_kv * C * S * B * b, "d_head = d_model / n_heads"),
    (lambda L, H, H_kv, C, S, B, b: kv_bytes(L, H, H_kv, C, S, 1, 2), "batch_size and bytes_per_value"),
    (lambda *args: None, "should be one number"),
])
def test_check_5_4_catches_mistakes(wrong, fragment):
    fails_with(check_5_4, wrong, fragment)


def test_check_5_4_passes_on_a_correct_answer(capsys):
    passes(check_5_4, kv_bytes, capsys)
