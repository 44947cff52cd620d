"""Chapter 9's self-checks pass on correct answers, and fail with a specific hint on the stub and on plausible mistakes."""
from __future__ import annotations

import math

import pytest
import torch

from companion.checks import ExerciseFailed, check_9_1, check_9_2, check_9_3, check_9_4, check_9_5
from companion.parallel import block_attention, tp_activation_bytes
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


# --- 9.2 BucketedAllReduce ---------------------------------------------------------------

class Bucketed:
    """The solution, with switches for the mistakes the check must catch."""

    reverse_order = average = True
    wait_in_hook = send_at_end = one_per_param = skip_copy_back = False

    def __init__(self, params, bucket_numel, all_reduce, world_size):
        self.all_reduce, self.world_size = all_reduce, world_size
        self.buckets, size = [[]], 0
        order = list(reversed(params)) if self.reverse_order else params
        if self.one_per_param:
            bucket_numel = 1
        for p in order:
            self.buckets[-1].append(p)
            size += p.numel()
            if size >= bucket_numel:
                self.buckets.append([])
                size = 0
        self.buckets = [b for b in self.buckets if b]
        self.bucket_of = {id(p): k for k, b in enumerate(self.buckets) for p in b}
        self.arrived = [0] * len(self.buckets)
        self.pending = []

    def grad_ready(self, p):
        k = self.bucket_of[id(p)]
        self.arrived[k] += 1
        if self.arrived[k] == len(self.buckets[k]) and not self.send_at_end:
            self.send(k)

    def send(self, k):
        flat = torch.cat([q.grad.flatten() for q in self.buckets[k]])
        handle = self.all_reduce(flat)
        if self.wait_in_hook:
            handle.wait()
        self.pending.append((handle, flat, k))

    def finish(self):
        if self.send_at_end:
            for k in range(len(self.buckets)):
                self.send(k)
        for handle, flat, k in self.pending:
            handle.wait()
            if self.average:
                flat /= self.world_size
            offset = 0
            for q in self.buckets[k]:
                if not self.skip_copy_back:
                    q.grad.copy_(flat[offset:offset + q.numel()].view_as(q))
                offset += q.numel()
        self.pending.clear()


def variant(**switches):
    return type("Variant", (Bucketed,), switches)


def test_check_9_2_passes_on_a_correct_answer(capsys):
    check_9_2(Bucketed)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (variant(reverse_order=False), "from the last parameter"),
    (variant(average=False), "not the mean"),
    (variant(wait_in_hook=True), "waited on an all-reduce inside grad_ready"),
    (variant(send_at_end=True), "as soon as its last gradient arrives"),
    (variant(one_per_param=True), "one per parameter"),
    (variant(skip_copy_back=True), "never changed"),
])
def test_check_9_2_rejects_mistakes(wrong, fragment):
    fails_with(check_9_2, wrong, fragment)


def test_check_9_2_accepts_the_companion_layout_through_buckets_of_views():
    class Views(Bucketed):  # flat copies made with _flatten_dense_tensors instead of cat
        def send(self, k):
            from torch._utils import _flatten_dense_tensors
            flat = _flatten_dense_tensors([q.grad for q in self.buckets[k]])
            self.pending.append((self.all_reduce(flat), flat, k))
    check_9_2(Views)


# --- 9.3 FlatZero1 -----------------------------------------------------------------------

class FlatZero1:
    every_param = gather = True
    all_params = False

    def __init__(self, params, rank, world_size, optimizer_class, all_gather, **kwargs):
        self.params, self.all_gather, self.rank = params, all_gather, rank
        flat = torch.cat([p.detach().flatten() for p in params])
        self.numel = flat.numel()
        self.padded = self.numel + (-self.numel) % world_size
        n = self.padded // world_size
        self.part = slice(rank * n, (rank + 1) * n)
        if self.all_params:
            self.part = slice(0, self.padded)
        flat = torch.cat([flat, flat.new_zeros(self.padded - self.numel)])
        self.shard = flat[self.part].clone().requires_grad_()
        self.optim = optimizer_class([self.shard], **kwargs)
        self.n = n

    @torch.no_grad()
    def step(self):
        grads = torch.cat([p.grad.flatten() for p in self.params])
        grads = torch.cat([grads, grads.new_zeros(self.padded - self.numel)])
        self.shard.grad = grads[self.part].clone()
        self.optim.step()
        if self.all_params:
            full = self.shard.detach()
            self.all_gather(self.shard.new_empty(self.padded), full[self.rank * self.n:
                                                                     (self.rank + 1) * self.n])
        elif self.gather:
            full = self.shard.new_empty(self.padded)
            self.all_gather(full, self.shard.detach())
        else:  # only this rank's shard goes back into the parameters
            full = torch.cat([p.detach().flatten() for p in self.params])
            full = torch.cat([full, full.new_zeros(self.padded - self.numel)])
            full[self.part] = self.shard.detach()
        offset = 0
        for p in self.params:
            p.copy_(full[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def test_check_9_3_passes_on_a_correct_answer(capsys):
    check_9_3(FlatZero1)
    assert "passed" in capsys.readouterr().out


def test_check_9_3_accepts_the_companion_partition():
    class Owners:  # whole parameters per rank, gathered with one all-gather of a padded vector
        def __init__(self, params, rank, world_size, optimizer_class, all_gather, **kwargs):
            self.inner = FlatZero1(params, rank, world_size, optimizer_class, all_gather, **kwargs)
            self.optim = self.inner.optim

        def step(self):
            self.inner.step()
    check_9_3(Owners)


class StubZero1:  # what the exercise notebook's stub is: a class whose methods raise
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("write your code here")


@pytest.mark.parametrize("wrong, fragment", [
    (StubZero1, "not implemented"),
    (type("AllParams", (FlatZero1,), {"all_params": True}), "stepped all parameters"),
    (type("NoGather", (FlatZero1,), {"gather": False}), "only its own shard"),
])
def test_check_9_3_rejects_mistakes(wrong, fragment):
    fails_with(check_9_3, wrong, fragment)


def test_check_9_3_reports_a_crash():
    class Broken(FlatZero1):
        def step(self):
            raise RuntimeError("boom")
    fails_with(check_9_3, Broken, "boom")


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


# --- 9.5 the causal ring loop ------------------------------------------------------------

def ring(q, k, v, rank, world, isend, irecv, causal=True, *, lse_merge=True, recv_first=False,
         backwards=False, mask=True):
    T = q.shape[2]
    out, lse = torch.zeros_like(q), torch.full(q.shape[:3], float("-inf"))
    seen = []
    kv = torch.stack([k, v])
    nxt, prv = ((rank - 1) % world, (rank + 1) % world) if backwards else \
        ((rank + 1) % world, (rank - 1) % world)
    for step in range(world):
        source = (rank - step) % world
        if step < world - 1:
            incoming = torch.empty_like(kv)
            if recv_first:
                irecv(incoming, prv).wait()
            handles = [isend(kv, nxt), irecv(incoming, prv)]
        if not (causal and source > rank):
            m = torch.ones(T, T, dtype=torch.bool).tril() if causal and source == rank and mask \
                else None
            o_b, l_b = block_attention(q, kv[0], kv[1], m)
            seen.append(o_b)
            new = torch.logaddexp(lse, l_b)
            out = (torch.exp(lse - new).nan_to_num(0.0)[..., None] * out
                   + torch.exp(l_b - new).nan_to_num(0.0)[..., None] * o_b)
            lse = new
        if step < world - 1:
            for h in handles:
                h.wait()
            kv = incoming
    return out if lse_merge else sum(seen) / len(seen)


def test_check_9_5_passes_on_a_correct_answer(capsys):
    check_9_5(ring)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: ring(*a, lse_merge=False), "averaged the blocks"),
    (lambda *a: ring(*a, recv_first=True), "deadlocked"),
    (lambda *a: ring(*a, backwards=True), "rank 0 is right but later ranks are not"),
    (lambda q, k, v, r, w, s, i, c: ring(q, k, v, r, w, s, i, False), "without the causal mask"),
    (lambda *a: ring(*a)[:, :, :2], "slice"),
])
def test_check_9_5_rejects_mistakes(wrong, fragment):
    fails_with(check_9_5, wrong, fragment)
