"""Chapter 9's self-checks pass on correct answers, and fail with a specific hint on the stub and on plausible mistakes."""
from __future__ import annotations

import math

import pytest
import torch

from companion.checks import ExerciseFailed, check_9_1, check_9_2, check_9_3, check_9_4
from companion.parallel import tp_activation_bytes
from checkhelpers import stub, fails_with


# --- 9.1 one_f_one_b ---------------------------------------------------------------------

def one_f_one_b(p, m, warm_of=lambda p, s, m: min(p - s - 1, m), cooldown_reversed=False):
    stages = []
    for s in range(p):
        warm = warm_of(p, s, m)
        ops = [("F", i) for i in range(warm)]
        for i in range(m - warm):
            ops += [("F", warm + i), ("B", i)]
        tail = [("B", i) for i in range(m - warm, m)]
        stages.append(ops + (tail[::-1] if cooldown_reversed else tail))
    return stages


def test_check_9_1_passes_on_a_correct_answer(capsys):
    check_9_1(one_f_one_b)
    assert "passed" in capsys.readouterr().out


def gpipe(p, m):
    return [[("F", i) for i in range(m)] + [("B", i) for i in range(m)] for _ in range(p)]


def deadlock(p, m):  # the last stage runs its backward before its forward
    st = one_f_one_b(p, m)
    st[-1] = [("B", 0), ("F", 0)] + st[-1][2:] if p > 1 else st[-1]
    return st if p > 1 else [[("B", 0)] + st[0]]


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (gpipe, "GPipe's order"),
    (lambda p, m: one_f_one_b(p, m, lambda p, s, m: 0), "more forwards in flight"),
    (lambda p, m: one_f_one_b(p, m, lambda p, s, m: min(p - s, m)), "holds at most p - s"),
    (lambda p, m: one_f_one_b(p, m, lambda p, s, m: p - s - 1), "once each"),  # forgets m < p
    (lambda p, m: one_f_one_b(p, m, lambda p, s, m: min(s, m)), "deadlocks"),  # reversed warm-up
    (lambda p, m: one_f_one_b(p, m, cooldown_reversed=True), "first in, first out"),
    (deadlock, "deadlocks"),
    (lambda p, m: one_f_one_b(p, m)[:-1], "list of 2 lists"),
    (lambda p, m: [[f"{k}{i}" for k, i in ops] for ops in one_f_one_b(p, m)], "a pair like"),
])
def test_check_9_1_rejects_mistakes(wrong, fragment):
    fails_with(check_9_1, wrong, fragment)


# --- 9.2 merge ---------------------------------------------------------------------------

def merge(o1, lse1, o2, lse2):
    lse = torch.logaddexp(lse1, lse2)
    w1 = torch.exp(lse1 - lse).nan_to_num(0.0).unsqueeze(-1)
    w2 = torch.exp(lse2 - lse).nan_to_num(0.0).unsqueeze(-1)
    return w1 * o1 + w2 * o2, lse


def test_check_9_2_passes_on_a_correct_answer(capsys):
    check_9_2(merge)
    assert "passed" in capsys.readouterr().out


def test_check_9_2_accepts_subtracting_the_max():
    def with_max(o1, lse1, o2, lse2):
        top = torch.maximum(lse1, lse2)
        top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
        e1, e2 = torch.exp(lse1 - top), torch.exp(lse2 - top)
        total = e1 + e2
        o = (e1[..., None] * o1 + e2[..., None] * o2) / total.clamp_min(1e-30)[..., None]
        return o, top + torch.log(total)
    check_9_2(with_max)


def naive(o1, lse1, o2, lse2):  # right on small numbers, overflows on large ones
    e1, e2 = torch.exp(lse1), torch.exp(lse2)
    return (e1[..., None] * o1 + e2[..., None] * o2) / (e1 + e2)[..., None], torch.log(e1 + e2)


def nan_on_empty(o1, lse1, o2, lse2):
    lse = torch.logaddexp(lse1, lse2)
    return torch.exp(lse1 - lse)[..., None] * o1 + torch.exp(lse2 - lse)[..., None] * o2, lse


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda o1, l1, o2, l2: ((o1 + o2) / 2, torch.logaddexp(l1, l2)), "averaged"),
    (lambda o1, l1, o2, l2: (torch.exp(l1)[..., None] * o1 + torch.exp(l2)[..., None] * o2,
                             torch.logaddexp(l1, l2)), "divided by their sum"),
    (lambda o1, l1, o2, l2: (merge(o1, l1, o2, l2)[0], torch.maximum(l1, l2)), "log 4"),
    (lambda o1, l1, o2, l2: (merge(o1, l1, o2, l2)[0], l1 + l2), "log 4"),
    (naive, "overflows"),
    (nan_on_empty, "gave nan"),
    (lambda o1, l1, o2, l2: merge(o1, l1, o2, l2)[0], "a pair"),
])
def test_check_9_2_rejects_mistakes(wrong, fragment):
    fails_with(check_9_2, wrong, fragment)


# --- 9.3 average_gradients ---------------------------------------------------------------

def average_gradients(grads, all_reduce, world_size):
    for g in grads:
        all_reduce(g)
        g /= world_size


def test_check_9_3_passes_on_a_correct_answer(capsys):
    check_9_3(average_gradients)
    assert "passed" in capsys.readouterr().out


def test_check_9_3_accepts_dividing_first():
    def divide_then_sum(grads, all_reduce, world_size):
        for g in grads:
            g /= world_size
            all_reduce(g)
    check_9_3(divide_then_sum)


def sum_only(grads, all_reduce, world_size):
    for g in grads:
        all_reduce(g)


def on_a_copy(grads, all_reduce, world_size):
    for g in grads:
        all_reduce(g / world_size)  # reduces a temporary; the gradient itself never changes


def local_only(grads, all_reduce, world_size):
    for g in grads:
        g /= world_size


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (sum_only, "not the mean"),
    (on_a_copy, "in place"),
    (local_only, "never called"),
])
def test_check_9_3_rejects_mistakes(wrong, fragment):
    fails_with(check_9_3, wrong, fragment)


def test_check_9_3_reports_ranks_out_of_step():
    calls = {"n": 0}

    def uneven(grads, all_reduce, world_size):
        calls["n"] += 1
        first = calls["n"] == 1  # the first rank to start does one collective fewer
        for g in grads[: 1 if first else None]:
            all_reduce(g)
            g /= world_size

    fails_with(check_9_3, uneven, "fell out of step")


# --- 9.4 longest_context -----------------------------------------------------------------

def longest_context(gpu_bytes, states_bytes, n_layers, d_model, n_heads, tp, sequence_parallel,
                    _one_more=False, _layers=None, _states=True, _sp=None, _strict=False):
    layers = n_layers if _layers is None else _layers
    sp = sequence_parallel if _sp is None else _sp
    s = 0
    while True:
        need = (states_bytes if _states else 0) + layers * tp_activation_bytes(
            s + 1024, 1, d_model, n_heads, tp, sp, "selective")
        if (need >= gpu_bytes) if _strict else (need > gpu_bytes):
            break
        s += 1024
    return s + 1024 if _one_more else s


def test_check_9_4_passes_on_a_correct_answer(capsys):
    check_9_4(longest_context)
    assert "passed" in capsys.readouterr().out


def test_check_9_4_accepts_solving_the_linear_formula():
    def closed_form(gpu, states, L, h, a, t, sp):
        per_token = L * h * ((10 / t if sp else 10) + 24 / t)
        return max(0, int((gpu - states) / per_token) // 1024 * 1024)
    check_9_4(closed_form)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: longest_context(*a, _one_more=True), "one step too long"),
    (lambda *a: longest_context(*a, _strict=True), "not <"),
    (lambda *a: longest_context(*a, _states=False), "ignores the states"),
    (lambda *a: longest_context(*a, _layers=1), "multiply by n_layers"),
    (lambda *a: longest_context(*a, _sp=False), "pass sequence_parallel"),
    (lambda *a: float(longest_context(*a)), "whole number"),
    (lambda *a: longest_context(*a) + 100, "multiple of 1024"),
])
def test_check_9_4_rejects_mistakes(wrong, fragment):
    fails_with(check_9_4, wrong, fragment)
