"""Chapter 6's self-checks pass on correct answers, and fail with a specific hint on the stub and on plausible mistakes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from companion.checks import ExerciseFailed, check_6_1, check_6_2, check_6_3, check_6_4
from checkhelpers import stub, fails_with
from companion.model import count_params


# --- 6.1 block_params ------------------------------------------------------------

def block_params(c):
    d, b, kv = c.d_model, int(c.bias), c.n_kv_heads * c.d_head
    attn = 2 * (d * d + b * d) + 2 * (d * kv + b * kv)
    n_in = 2 if c.mlp == "swiglu" else 1
    mlp = n_in * (d * c.d_ff + b * c.d_ff) + c.d_ff * d + b * d
    norm = d + (b * d if c.norm == "layernorm" else 0)
    return attn + mlp + 2 * norm


def test_check_6_1_passes_on_a_correct_answer(capsys):
    check_6_1(block_params)
    assert "passed" in capsys.readouterr().out


def test_check_6_1_passes_on_the_companion_count():
    check_6_1(lambda c: (count_params(c)["attn"] + count_params(c)["mlp"]) // c.n_layers
              + 2 * (count_params(c)["norm"] // (2 * c.n_layers + 1)))


def no_norms(c):
    return block_params(c) - 2 * (c.d_model + (int(c.bias) * c.d_model if c.norm == "layernorm" else 0))


def no_biases(c):
    d, kv = c.d_model, c.n_kv_heads * c.d_head
    n_in = 2 if c.mlp == "swiglu" else 1
    return 2 * d * d + 2 * d * kv + n_in * d * c.d_ff + c.d_ff * d + 2 * d


def gqa_ignored(c):
    d, b = c.d_model, int(c.bias)
    n_in = 2 if c.mlp == "swiglu" else 1
    norm = d + (b * d if c.norm == "layernorm" else 0)
    return 4 * (d * d + b * d) + n_in * (d * c.d_ff + b * c.d_ff) + c.d_ff * d + b * d + 2 * norm


def two_matrix_swiglu(c):
    d, b = c.d_model, int(c.bias)
    kv = c.n_kv_heads * c.d_head
    norm = d + (b * d if c.norm == "layernorm" else 0)
    return 2 * (d * d + b * d) + 2 * (d * kv + b * kv) + (d * c.d_ff + b * c.d_ff) + c.d_ff * d + b * d + 2 * norm


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (no_norms, "left out the two norms"),
    (no_biases, "left out the biases"),
    (gqa_ignored, "grouped-query"),
    (two_matrix_swiglu, "three matrices"),
    (lambda c: float(block_params(c)), "return an int"),
    (lambda c: block_params(c) + 1, "Exercise 6.1"),
])
def test_check_6_1_rejects_mistakes(wrong, fragment):
    fails_with(check_6_1, wrong, fragment)


# --- 6.2 rms_norm ---------------------------------------------------------------

def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def test_check_6_2_passes_on_a_correct_answer(capsys):
    check_6_2(rms_norm)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda x, w, eps: x / x.norm(dim=-1, keepdim=True) * w, "Euclidean norm"),
    (lambda x, w, eps: F.layer_norm(x, x.shape[-1:], eps=eps) * w, "LayerNorm"),
    (lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps), "multiply by `weight`"),
    (lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) * w, "eps is missing"),
    (lambda x, w, eps: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w, "inside the square root"),
    (lambda x, w, eps: x * torch.rsqrt(x.pow(2).mean(-2, keepdim=True) + eps) * w, "last dimension"),
    (lambda x, w, eps: (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w).sum(-1), "shape"),
])
def test_check_6_2_rejects_mistakes(wrong, fragment):
    fails_with(check_6_2, wrong, fragment)


# --- 6.3 swiglu ------------------------------------------------------------------

def swiglu(x, wg, wu, wd):
    return (F.silu(x @ wg.T) * (x @ wu.T)) @ wd.T


def test_check_6_3_passes_on_a_correct_answer(capsys):
    check_6_3(swiglu)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda x, wg, wu, wd: (F.silu(x @ wu.T) * (x @ wg.T)) @ wd.T, "swapped"),
    (lambda x, wg, wu, wd: (F.gelu(x @ wg.T) * (x @ wu.T)) @ wd.T, "not GELU"),
    (lambda x, wg, wu, wd: (torch.sigmoid(x @ wg.T) * (x @ wu.T)) @ wd.T, "bare sigmoid"),
    (lambda x, wg, wu, wd: F.silu(x @ wg.T) @ wd.T, "up projection is missing"),
    (lambda x, wg, wu, wd: (F.silu(x @ wg.T) + (x @ wu.T)) @ wd.T, "differs from"),
    (lambda x, wg, wu, wd: x @ wg, "raised"),  # forgot the transposes: shapes do not line up
])
def test_check_6_3_rejects_mistakes(wrong, fragment):
    fails_with(check_6_3, wrong, fragment)


# --- 6.4 tie_embeddings ------------------------------------------------------------

def tie(model):
    model.lm_head.weight = model.tok_emb.weight
    return model


def test_check_6_4_passes_on_a_correct_answer(capsys):
    check_6_4(tie)
    assert "passed" in capsys.readouterr().out


def test_check_6_4_accepts_tying_the_other_way():
    def other_way(model):
        model.tok_emb.weight = model.lm_head.weight
        return model
    check_6_4(other_way)


def copy_values(model):
    with torch.no_grad():
        model.lm_head.weight.copy_(model.tok_emb.weight)
    return model


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda m: None, "forget `return model`"),
    (copy_values, "a copy is not a tie"),
    (lambda m: m, "still two tensors"),
])
def test_check_6_4_rejects_mistakes(wrong, fragment):
    fails_with(check_6_4, wrong, fragment)
