"""Chapter 11's self-checks pass on correct answers, and fail with a specific hint on the stub and
on plausible mistakes."""
from __future__ import annotations

import pytest
import torch

from checkhelpers import fails_with, passes, stub
from companion.checks import check_11_1, check_11_2, check_11_3

# --- 11.1 absmax int8 ------------------------------------------------------------------------


def absmax(w):
    s = w.abs().amax(dim=1, keepdim=True) / 127
    return torch.round(w / s).clamp(-127, 127).to(torch.int8), s


def per_tensor(w):
    s = w.abs().max() / 127
    return torch.round(w / s).clamp(-127, 127).to(torch.int8), s


def per_column(w):
    s = w.abs().amax(dim=0, keepdim=True) / 127
    return torch.round(w / s).clamp(-127, 127).to(torch.int8), s


def over_128(w):
    s = w.abs().amax(dim=1, keepdim=True) / 128
    return torch.round(w / s).clamp(-128, 127).to(torch.int8), s


def truncates(w):
    s = w.abs().amax(dim=1, keepdim=True) / 127
    return (w / s).to(torch.int8), s


def float_codes(w):
    s = w.abs().amax(dim=1, keepdim=True) / 127
    return torch.round(w / s), s


def test_check_11_1_passes_on_a_correct_answer(capsys):
    passes(check_11_1, absmax, capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (per_tensor, "one scale for the whole matrix"),
    (per_column, "shape (out, 1)"),
    (over_128, "divide by 127"),
    (truncates, "do not truncate"),
    (float_codes, "torch.int8"),
    (lambda w: None, "pair"),
])
def test_check_11_1_rejects_mistakes(wrong, fragment):
    fails_with(check_11_1, wrong, fragment)


# --- 11.2 the accept/reject rule -----------------------------------------------------------


def verify(p, q, drafted, u):
    k = drafted.shape[0]
    for i in range(k):
        x = int(drafted[i])
        if u[i] < p[i, x] / q[i, x]:
            continue
        r = (p[i] - q[i]).clamp(min=0)
        return i, r / r.sum()
    return k, p[k]


def last_row_wrong(p, q, drafted, u):
    n, d = verify(p, q, drafted, u)
    return (n, p[n - 1]) if n == len(drafted) else (n, d)


def inverted(p, q, drafted, u):
    k = drafted.shape[0]
    for i in range(k):
        x = int(drafted[i])
        if u[i] < q[i, x] / p[i, x]:
            continue
        r = (p[i] - q[i]).clamp(min=0)
        return i, r / r.sum()
    return k, p[k]


def no_clamp(p, q, drafted, u):
    n, d = verify(p, q, drafted, u)
    return (n, (p[n] - q[n]) / (p[n] - q[n]).sum()) if n < len(drafted) else (n, d)


def not_normalised(p, q, drafted, u):
    n, d = verify(p, q, drafted, u)
    return (n, (p[n] - q[n]).clamp(min=0)) if n < len(drafted) else (n, d)


def resample_from_p(p, q, drafted, u):
    n, d = verify(p, q, drafted, u)
    return (n, p[n]) if n < len(drafted) else (n, d)


def keeps_going(p, q, drafted, u):  # counts every surviving draft, not the prefix
    k = drafted.shape[0]
    n = sum(int(u[i] < p[i, int(drafted[i])] / q[i, int(drafted[i])]) for i in range(k))
    return n, verify(p, q, drafted, u)[1]


def residual_row_0(p, q, drafted, u):  # the residual always taken from row 0
    n, d = verify(p, q, drafted, u)
    r = (p[0] - q[0]).clamp(min=0)
    return (n, r / r.sum()) if n < len(drafted) else (n, d)


def test_check_11_2_passes_on_a_correct_answer(capsys):
    passes(check_11_2, verify, capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (last_row_wrong, "LAST row"),
    (inverted, "q/p"),
    (no_clamp, "clamp"),
    (not_normalised, "normalise"),
    (resample_from_p, "max(0, p - q)"),
    (keeps_going, "first rejection"),
    (residual_row_0, "rejected draft's own row"),
])
def test_check_11_2_rejects_mistakes(wrong, fragment):
    fails_with(check_11_2, wrong, fragment)


# --- 11.3 a block allocator ------------------------------------------------------------------


class Allocator:
    def __init__(self, num_blocks, block_size):
        self.block_size, self.free_blocks = block_size, list(range(num_blocks))
        self.tables, self.lengths = {}, {}

    def append(self, seq):
        table = self.tables.setdefault(seq, [])
        n = self.lengths.get(seq, 0)
        if n == len(table) * self.block_size:
            if not self.free_blocks:
                raise RuntimeError("out of blocks")
            table.append(self.free_blocks.pop(0))
        self.lengths[seq] = n + 1
        return table[n // self.block_size], n % self.block_size

    def free(self, seq):
        self.free_blocks.extend(self.tables.pop(seq, []))
        self.lengths.pop(seq, None)


class Stub:
    def __init__(self, num_blocks, block_size):
        raise NotImplementedError("write your code here")


class BlockPerToken(Allocator):
    def append(self, seq):
        if not self.free_blocks:
            raise RuntimeError("out")
        return self.free_blocks.pop(0), 0


class Shared(Allocator):  # one global position counter: sequences share blocks
    def append(self, seq):
        return super().append("all")


class NeverRaises(Allocator):
    def append(self, seq):
        if not self.free_blocks and self.lengths.get(seq, 0) == len(self.tables.get(seq, [])) * 2:
            self.free_blocks.append(0)
        return super().append(seq)


class NeverFrees(Allocator):
    def free(self, seq):
        self.tables.pop(seq, None)
        self.lengths.pop(seq, None)


class StaleLength(Allocator):  # free() gives the blocks back but keeps the length
    def free(self, seq):
        self.free_blocks.extend(self.tables.pop(seq, []))


class OffsetFromOne(Allocator):
    def append(self, seq):
        b, o = super().append(seq)
        return b, o + 1


def test_check_11_3_passes_on_a_correct_answer(capsys):
    passes(check_11_3, Allocator, capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (Stub, "not implemented"),
    (BlockPerToken, "offsets"),
    (Shared, "same block"),
    (NeverRaises, "RuntimeError"),
    (NeverFrees, "free list"),
    (OffsetFromOne, "offsets 0, 1, 0"),
    (StaleLength, "forget seq's length"),
])
def test_check_11_3_rejects_mistakes(wrong, fragment):
    fails_with(check_11_3, wrong, fragment)
