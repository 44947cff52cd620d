"""Chapter 9's self-checks pass on correct answers, and fail with a specific hint on the stub and on plausible mistakes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from companion.checks import ExerciseFailed, check_9_1, check_9_2, check_9_3, check_9_4
from checkhelpers import stub, fails_with


# --- 9.1 bubble_fraction ---------------------------------------------------------------

def bubble_fraction(p, m):
    if p < 1 or m < 1:
        raise ValueError("need p, m >= 1")
    return (p - 1) / (m + p - 1)


def test_check_9_1_passes_on_a_correct_answer(capsys):
    check_9_1(bubble_fraction)
    assert "passed" in capsys.readouterr().out


def test_check_9_1_accepts_the_busy_share_complement():
    check_9_1(lambda p, m: 1 - m / (m + p - 1) if p >= 1 and m >= 1 else bubble_fraction(p, m))


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda p, m: (p - 1) / m, "m + p - 1 slots"),
    (lambda p, m: p / (m + p - 1), "only p - 1 slots"),
    (lambda p, m: m / (m + p - 1), "busy share"),
    (lambda p, m: 100 * (p - 1) / (m + p - 1), "not a percentage"),
    (lambda p, m: (p - 1) / (m + p - 1), "raise ValueError"),  # no input check: (2, 0) gives 1.0
    (lambda p, m: None, "forget to return"),
])
def test_check_9_1_rejects_mistakes(wrong, fragment):
    fails_with(check_9_1, wrong, fragment)


# --- 9.2 shard_flat --------------------------------------------------------------------

def shard_flat(params, world_size):
    flat = torch.cat([p.detach().flatten() for p in params])
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % world_size)])
    return list(flat.chunk(world_size))


def test_check_9_2_passes_on_a_correct_answer(capsys):
    check_9_2(shard_flat)
    assert "passed" in capsys.readouterr().out


def no_padding(params, world_size):  # torch.chunk without padding: 9 numbers -> 5 and 4
    return list(torch.cat([p.flatten() for p in params]).chunk(world_size))


def per_parameter(params, world_size):  # shards each parameter separately, then joins rank by rank
    pieces = [shard_flat([p], world_size) for p in params]
    return [torch.cat([pc[r] for pc in pieces]) for r in range(world_size)]


def pad_in_front(params, world_size):
    flat = torch.cat([p.flatten() for p in params])
    flat = torch.cat([flat.new_zeros((-flat.numel()) % world_size), flat])
    return list(flat.chunk(world_size))


def in_place(params, world_size):
    params[0].mul_(0)
    return shard_flat(params, world_size)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (no_padding, "padding"),
    (per_parameter, "out of order"),
    (pad_in_front, "at the end"),
    (in_place, "changed the parameters"),
    (lambda params, w: [p.flatten() for p in params], "return 2 shards"),
    (lambda params, w: [torch.zeros(5, 1) for _ in range(w)], "1-D"),
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


# --- 9.4 tp_partial_outputs --------------------------------------------------------------

def tp_partial_outputs(x, W1, b1, W2, b2, world_size):
    n = W1.shape[0] // world_size
    return [F.gelu(x @ W1[r * n:(r + 1) * n].T + b1[r * n:(r + 1) * n]) @ W2[:, r * n:(r + 1) * n].T + (b2 if r == 0 else 0)
            for r in range(world_size)]


def test_check_9_4_passes_on_a_correct_answer(capsys):
    check_9_4(tp_partial_outputs)
    assert "passed" in capsys.readouterr().out


def bias_everywhere(x, W1, b1, W2, b2, world_size):
    return [p + (0 if r == 0 else b2) for r, p in enumerate(tp_partial_outputs(x, W1, b1, W2, b2, world_size))]


def cheat(x, W1, b1, W2, b2, world_size):  # the whole MLP divided evenly: sums right, but nothing is split
    full = F.gelu(x @ W1.T + b1) @ W2.T + b2
    return [full / world_size for _ in range(world_size)]


def gelu_after_sum(x, W1, b1, W2, b2, world_size):  # splits W1 by input features instead of hidden units
    d = W1.shape[1]
    n = d // world_size
    return [F.gelu(x[:, r * n:(r + 1) * n] @ W1[:, r * n:(r + 1) * n].T + b1 / world_size) @ W2.T + b2 / world_size
            for r in range(world_size)]


def always_two_ranks(x, W1, b1, W2, b2, world_size):
    parts = tp_partial_outputs(x, W1, b1, W2, b2, 2)
    return parts + [torch.zeros_like(parts[0])] * (world_size - 2)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (bias_everywhere, "add b2 on one rank only"),
    (cheat, "depends on other ranks' rows"),
    (gelu_after_sum, "don't sum to the unsplit"),
    (always_two_ranks, "with 4 ranks, rank 0's partial output depends"),
    (lambda *a: tp_partial_outputs(*a)[:1], "return a list of 2"),
])
def test_check_9_4_rejects_mistakes(wrong, fragment):
    fails_with(check_9_4, wrong, fragment)
