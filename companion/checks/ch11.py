"""Self-checks for chapter 11's exercises: absmax int8, speculative acceptance, a block table."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..quantize import absmax_int8
from ._core import as_tensor, call, fail, passed

__all__ = ["check_11_1", "check_11_2", "check_11_3"]


def check_11_1(absmax_quantize: Callable[[torch.Tensor], tuple[Any, Any]]) -> None:
    """absmax_quantize(w (out, in)) -> (int8 codes (out, in), scales (out, 1)), max|row| / 127."""
    ex = "11.1"
    w = torch.tensor([[0.5, -1.0, 0.25], [2.0, 1.0, -0.5]])
    got = call(ex, absmax_quantize, w)
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        fail(ex, "return a pair (codes, scales)")
    q, scale = as_tensor(ex, got[0], "codes"), as_tensor(ex, got[1], "scales")
    if q.dtype != torch.int8:
        fail(ex, f"the codes should be torch.int8, got {q.dtype}: convert after rounding")
    if scale.numel() == 1:
        fail(ex, "one scale for the whole matrix: absmax here is per output channel, one per row")
    if tuple(scale.shape) != (2, 1):
        fail(ex, f"scales should have shape (out, 1) = (2, 1), got {tuple(scale.shape)}; "
                 "is the max taken over the right dimension?")
    want_q, want_s = absmax_int8(w)
    if not torch.allclose(scale.float(), want_s, rtol=1e-5):
        if torch.allclose(scale.float(), want_s * 127 / 128, rtol=1e-5):
            fail(ex, "scale = max / 128 lets the largest value round to 128, which int8 cannot "
                     "hold; divide by 127")
        fail(ex, f"scales {scale.flatten().tolist()} should be each row's max |w| / 127, "
                 f"{want_s.flatten().tolist()}")
    if not torch.equal(q, want_q):
        fail(ex, f"codes {q.tolist()} should be {want_q.tolist()}: round to the nearest integer "
                 "(0.5 * 127 = 63.5 rounds to 64), do not truncate")
    w2 = torch.randn(16, 32)
    q2, s2 = (as_tensor(ex, t, "output") for t in call(ex, absmax_quantize, w2))
    err = (w2 - q2.float() * s2.float()).abs()
    if not torch.equal(q2, absmax_int8(w2)[0]) or (err > s2.float() / 2 + 1e-6).any():
        fail(ex, "on a random (16, 32) matrix the codes differ from round(w / scale)")
    passed(ex, "int8 codes and per-row scales match; every weight is within half a step.")


def check_11_2(verify: Callable[..., tuple[Any, Any]]) -> None:
    """verify(p (k+1, V), q (k, V), drafted (k,), u (k,)) -> (accepted n, next distribution)."""
    ex = "11.2"
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    q = torch.tensor([[0.25, 0.25, 0.5], [0.1, 0.4, 0.5]])

    def run(drafted: list[int], u: list[float]) -> tuple[int, torch.Tensor]:
        got = call(ex, verify, p, q, torch.tensor(drafted), torch.tensor(u))
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            fail(ex, "return a pair (number accepted, distribution for the next token)")
        return int(got[0]), as_tensor(ex, got[1], "the distribution").float()

    # Draft 0 has p/q = 2 > 1: always kept. Draft 2 in row 1: p/q = 0.8/0.5 = 1.6, kept too.
    n, dist = run([0, 2], [0.99, 0.99])
    if n != 2:
        fail(ex, f"p/q >= 1 for both drafts, so both are accepted whatever u is; you accepted {n} "
                 "(keep a draft when u < p/q, not q/p)")
    if not torch.allclose(dist, p[2]):
        if torch.allclose(dist, p[1]):
            fail(ex, "after k accepted drafts the next token comes from the target's LAST row, "
                     "p[k], not p[k - 1]")
        fail(ex, f"with every draft accepted, draw from p[k] = {p[2].tolist()}; "
                 f"got {dist.tolist()}")
    # Draft 2 in row 0: p/q = 0.2/0.5 = 0.4. u = 0.3 keeps it, u = 0.5 rejects it.
    n, _ = run([2, 2], [0.3, 0.99])
    if n == 0:
        fail(ex, "u = 0.3 < p/q = 0.4 should accept the draft; do you compare u with q/p?")
    n, dist = run([2, 2], [0.5, 0.1])
    if n != 0:
        fail(ex, f"u = 0.5 > p/q = 0.4 rejects the first draft; you accepted {n}. Stop at "
                 "the first rejection: later drafts depend on it")
    want = torch.tensor([0.25, 0.05, 0.0]) / 0.3
    if dist.min() < 0:
        fail(ex, "the residual has negative entries: clamp p - q at zero before normalising")
    if torch.allclose(dist, torch.tensor([0.25, 0.05, 0.0])):
        fail(ex, "normalise the residual max(0, p - q) so that it sums to 1")
    if not torch.allclose(dist, want, atol=1e-6):
        fail(ex, f"on rejection at row 0, draw from max(0, p - q) normalised = "
                 f"{[round(x, 4) for x in want.tolist()]}; got {dist.tolist()}")
    # Draft 0 kept (p/q = 2); draft 1 in row 1 has p/q = 0.1/0.4 = 0.25 < u = 0.5: rejected there.
    n, dist = run([0, 1], [0.5, 0.5])
    if n != 1:
        fail(ex, f"the first draft is kept (p/q = 2) and the second rejected (p/q = 0.25 < 0.5); "
                 f"you accepted {n}")
    want_1 = torch.tensor([0.0, 0.0, 1.0])  # max(0, p[1] - q[1]) = [0, 0, 0.3], normalised
    if not torch.allclose(dist, want_1, atol=1e-6):
        if torch.allclose(dist, want, atol=1e-6):
            fail(ex, "on a rejection at row 1 the residual came from row 0: use the rejected "
                     "draft's own row, max(0, p[i] - q[i])")
        fail(ex, f"on rejection at row 1, draw from max(0, p[1] - q[1]) normalised = "
                 f"{want_1.tolist()}; got {dist.tolist()}")
    passed(ex, "accepts when u < p/q, stops at the first rejection, resamples from the normalised "
               "residual, and draws from p[k] when all k are accepted.")


def check_11_3(allocator_cls: type) -> None:
    """allocator_cls(num_blocks, block_size): append(seq) -> (block, offset); free(seq)."""
    ex = "11.3"
    a = call(ex, allocator_cls, 4, 2)
    slots = [call(ex, a.append, "x") for _ in range(3)]
    if not all(isinstance(s, (tuple, list)) and len(s) == 2 for s in slots):
        fail(ex, "append should return a pair (block, offset)")
    blocks = [int(s[0]) for s in slots]
    offsets = [int(s[1]) for s in slots]
    if offsets != [0, 1, 0]:
        fail(ex, f"with block_size 2, tokens 0, 1, 2 sit at offsets 0, 1, 0; got {offsets}")
    if blocks[0] != blocks[1]:
        fail(ex, "tokens 0 and 1 share the first block: take a new block only when one is full")
    if blocks[2] == blocks[0]:
        fail(ex, "token 2 needs a second block: the first is full")
    y = [int(call(ex, a.append, "y")[0]) for _ in range(3)]
    if set(y) & set(blocks):
        fail(ex, "two sequences got the same block: a block belongs to one sequence at a time")
    if len(set(y) | set(blocks)) != 4:
        fail(ex, f"4 blocks should now be in use, got {sorted(set(y) | set(blocks))}")
    try:
        a.append("z")
    except RuntimeError:
        pass
    except NotImplementedError:
        fail(ex, "not implemented yet: replace the `raise NotImplementedError(...)` line "
                 "with your code.")
    else:
        fail(ex, "all 4 blocks are taken, so a new sequence's first token must raise RuntimeError")
    call(ex, a.free, "x")
    try:
        again = int(a.append("z")[0])
    except RuntimeError:
        again = -1
    if again not in blocks:
        fail(ex, "free(seq) should give its blocks back to the free list for reuse")
    more = int(call(ex, a.append, "y")[0])
    if more != y[-1]:
        fail(ex, "sequence y's fourth token still fits its second block (offset 1)")
    # A freed sequence id that comes back starts again at token 0, in a fresh block.
    try:
        restart = a.append("x")
    except (RuntimeError, IndexError, KeyError):
        restart = None
    if restart is None or int(restart[1]) != 0 or int(restart[0]) not in blocks:
        fail(ex, f"after free('x'), x's next token should be token 0 again: (a freed block, "
                 f"offset 0), got {restart}; free(seq) must forget seq's length as well as its "
                 "blocks")
    passed(ex, "tokens fill blocks in order, sequences never share, a full pool raises, "
               "freed blocks are reused, a freed sequence starts again at token 0.")
