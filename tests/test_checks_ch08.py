"""Chapter 8's self-checks pass on correct answers, and fail with a specific hint on the stub and on plausible mistakes."""
from __future__ import annotations

import math

import pytest

from companion.checks import ExerciseFailed, check_8_1, check_8_2, check_8_3, check_8_4, check_8_5
from checkhelpers import stub, fails_with


# --- 8.1 llama_params ------------------------------------------------------------------------


def llama_params(V, d, L, H, kv, d_ff, tie=False, *, gqa=True, norms=2, final=True, head=True, mlp=3):
    d_kv = (kv if gqa else H) * (d // H)
    block = 2 * d * d + 2 * d * d_kv + mlp * d * d_ff + norms * d
    lm_head = V * d if (head and not tie) else 0
    return L * block + V * d + (d if final else 0) + lm_head


def test_check_8_1_passes_on_a_correct_answer(capsys):
    check_8_1(llama_params)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: llama_params(*a, gqa=False), "n_kv_heads"),
    (lambda *a: llama_params(*a, norms=0, final=False), "RMSNorm weights"),
    (lambda *a: llama_params(*a, final=False), "final RMSNorm"),
    (lambda *a: llama_params(*a, head=False), "untied output head"),
    (lambda *a: llama_params(*a, mlp=2), "three matrices"),
    (lambda V, d, L, H, kv, d_ff, tie: llama_params(V, d, L, H, kv, d_ff, False), "tied"),
    # a tied head read as "no embedding matrix at all"
    (lambda V, d, L, H, kv, d_ff, tie: llama_params(V, d, L, H, kv, d_ff, tie) - (V * d if tie else 0),
     "count that matrix once"),
    # LayerNorm's scale and shift where RMSNorm has a weight only
    (lambda V, d, L, H, kv, d_ff, tie: llama_params(V, d, L, H, kv, d_ff, tie) + (2 * L + 1) * d,
     "expected"),
    (lambda *a: None, "the parameter count"),
])
def test_check_8_1_rejects_mistakes(wrong, fragment):
    fails_with(check_8_1, wrong, fragment)


# --- 8.2 train_bytes ---------------------------------------------------------------------------


def train_bytes(n, L, h, a, s, b, full=False, *, state=16, per_layer=True, quad=True):
    act = 2 * s * b * h if full else s * b * h * (34 + (5 * a * s / h if quad else 0))
    return state * n + (L if per_layer else 1) * act


def test_check_8_2_passes_on_a_correct_answer(capsys):
    check_8_2(train_bytes)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: train_bytes(*a, state=2), "2 bytes per parameter"),
    (lambda *a: train_bytes(*a, state=12), "12 bytes per parameter"),
    (lambda *a: train_bytes(*a, per_layer=False), "multiply by n_layers"),
    (lambda *a: train_bytes(*a, quad=False), "5*a*s/h"),
    (lambda n, L, h, a, s, b, full: train_bytes(n, L, h, a, s, b, False), "full_recompute=True"),
    (lambda n, L, h, a, s, b, full: 16 * n, "left out the activations"),
    # full recomputation that keeps fp32 inputs, or selective recomputation's 34*s*b*h
    (lambda n, L, h, a, s, b, full: 16 * n + L * 4 * s * b * h if full
     else train_bytes(n, L, h, a, s, b), "keeps 4*s*b*h"),
    (lambda n, L, h, a, s, b, full: 16 * n + L * 34 * s * b * h if full
     else train_bytes(n, L, h, a, s, b), "only its 16-bit input"),
    (lambda n, L, h, a, s, b, full: train_bytes(n, L, h, a, s, 1, full), "expected"),  # no batch
    (lambda n, L, h, a, s, b, full: 16 * n + L * (34 * s * b * h + 5 * a * s * b)
     if not full else train_bytes(n, L, h, a, s, b, True), "expected"),  # s, not s squared
])
def test_check_8_2_rejects_mistakes(wrong, fragment):
    fails_with(check_8_2, wrong, fragment)


# --- 8.3 compute_optimal ------------------------------------------------------------------------


def compute_optimal(dollars, price, peak, mfu, r=20.0, *, seconds=3600, use_mfu=True, six=6):
    c = dollars / price * seconds * peak * (mfu if use_mfu else 1)
    n = math.sqrt(c / (six * r))
    return n, r * n


def test_check_8_3_passes_on_a_correct_answer(capsys):
    check_8_3(compute_optimal)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: compute_optimal(*a)[::-1], "swapped"),
    (lambda *a: compute_optimal(*a, seconds=1), "3,600 seconds"),
    (lambda *a: compute_optimal(*a, use_mfu=False), "mfu"),
    (lambda *a: compute_optimal(*a, six=1), "the 6"),
    (lambda *a: compute_optimal(*a, six=2), "the 6"),
    (lambda d, p, k, u, r: (compute_optimal(d, p, k, u, r)[0], compute_optimal(d, p, k, u, r)[0] / r), "N is right"),
    (lambda *a: compute_optimal(*a)[0], "pair"),
    (lambda d, p, k, u, r: compute_optimal(d, p, k, u, 20.0), "100 tokens/param"),  # r ignored
    (lambda d, p, k, u, r: compute_optimal(d * p * p, p, k, u, r), "expected"),  # dollars x price
])
def test_check_8_3_rejects_mistakes(wrong, fragment):
    fails_with(check_8_3, wrong, fragment)


# --- 8.4 zero_gpu_bytes ---------------------------------------------------------------------------


def zero_gpu_bytes(n, L, d, V, s, b, stage, world, *, shift=0, logit_bytes=4, logit_grad=True,
                   act=2, acts=True):
    stage = max(0, min(3, stage + shift))
    weights, grads, optim = 2 * n, 2 * n, 12 * n
    if stage >= 1:
        optim /= world
    if stage >= 2:
        grads /= world
    if stage >= 3:
        weights /= world
    activations = L * act * s * b * d if acts else 0
    logits = b * s * V * logit_bytes * (2 if logit_grad else 1)
    return weights + grads + optim + activations + logits


def test_check_8_4_passes_on_a_correct_answer(capsys):
    check_8_4(zero_gpu_bytes)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: zero_gpu_bytes(*a, shift=1), "those of stage"),
    (lambda *a: zero_gpu_bytes(*a[:6], 3, a[7]), "those of stage"),
    (lambda *a: zero_gpu_bytes(*a, logit_bytes=0), "left out the loss's fp32 log-probs"),
    (lambda *a: zero_gpu_bytes(*a, logit_grad=False), "not their gradient"),
    (lambda *a: zero_gpu_bytes(*a, logit_bytes=2, logit_grad=False), "4 bytes per log-prob"),
    (lambda *a: zero_gpu_bytes(*a, acts=False), "left out the activations"),
    (lambda *a: zero_gpu_bytes(*a, act=34), "only its input"),
    # activations or logits divided over the GPUs, though each GPU keeps its own micro-batch's
    (lambda n, L, d, V, s, b, st, w: zero_gpu_bytes(n, L, d, V, s, b, st, w)
     - L * 2 * s * b * d * (1 - 1 / w), "W=8"),
    (lambda n, L, d, V, s, b, st, w: zero_gpu_bytes(n, L, d, V, s, b, st, w)
     - 8 * b * s * V * (1 - 1 / w), "W=8"),
    # stage 1 leaving the fp32 master copy whole and sharding only m and v
    (lambda n, L, d, V, s, b, st, w: zero_gpu_bytes(n, L, d, V, s, b, st, w)
     + (4 * n * (1 - 1 / w) if st >= 1 else 0), "stage 1, W=8"),
    (lambda *a: None, "the byte count"),
])
def test_check_8_4_rejects_mistakes(wrong, fragment):
    fails_with(check_8_4, wrong, fragment)


# --- 8.5 attention_flops ---------------------------------------------------------------------------


def attention_flops(L, T, d, causal, training, *, matmuls=2, halve=True, backward=3):
    forward = L * matmuls * 2 * T * d * (0.5 if causal and halve else 1)
    return forward * backward if training else forward


def exact_causal_average(L, T, d, causal, training):  # (T + 1)/2 keys, not the convention T/2
    keys = (T + 1) / 2 if causal else T
    forward = L * 2 * 2 * keys * d
    return 3 * forward if training else forward


def test_check_8_5_passes_on_a_correct_answer(capsys):
    check_8_5(attention_flops)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: attention_flops(*a, matmuls=1), "weighted sum over T values"),
    (lambda *a: attention_flops(*a, halve=False), "causal mask"),
    (lambda *a: attention_flops(*a, backward=1), "add the backward"),
    (lambda *a: attention_flops(*a, backward=2), "expected"),
    (exact_causal_average, "(T + 1)/2"),
    # halving whatever causal says
    (lambda L, T, d, causal, training: attention_flops(L, T, d, True, training),
     "halve only under the causal mask"),
    # the backward over the full window though the forward was causal
    (lambda L, T, d, causal, training: attention_flops(L, T, d, causal, False)
     + (2 * attention_flops(L, T, d, False, False) if training else 0), "expected 12"),
    (lambda *a: None, "the FLOP count"),
])
def test_check_8_5_rejects_mistakes(wrong, fragment):
    fails_with(check_8_5, wrong, fragment)
