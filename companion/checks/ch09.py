"""Self-checks for chapter 9's exercises.

A 1F1B schedule, the ring-attention merge, an all-reduce gradient average, the longest context
that fits under TP + ZeRO-1 with and without sequence parallelism.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch

from ..parallel.arith import tp_activation_bytes
from ..parallel.pipeline import bubble_fraction, measured_bubble
from ..parallel.ring import block_attention
from ..parallel.schedules import Op, peak_in_flight, simulate
from ._core import as_tensor, call, fail, passed

__all__ = ["check_9_1", "check_9_2", "check_9_3", "check_9_4"]


def _as_ops(ex: str, got: object, p: int, m: int) -> list[list[Op]]:
    if not isinstance(got, (list, tuple)) or len(got) != p:
        fail(ex, f"for p={p} return a list of {p} lists, one per stage, got "
                 f"{type(got).__name__}{'' if not hasattr(got, '__len__') else f' of {len(got)}'}")
    stages = []
    for s, ops in enumerate(got):
        row = []
        for op in ops:
            if (not isinstance(op, (tuple, list)) or len(op) != 2 or op[0] not in ("F", "B")
                    or not isinstance(op[1], int)):
                fail(ex, f"stage {s}: each op should be a pair like ('F', 0) or ('B', 3), got "
                         f"{op!r}")
            row.append(Op(op[0], op[1]))
        stages.append(row)
    return stages


def check_9_1(one_f_one_b: Callable[[int, int], list]) -> None:
    """one_f_one_b(p, m) -> per stage, the ("F" | "B", micro-batch) passes of a 1F1B step."""
    ex = "9.1"
    for p, m in ((2, 3), (1, 4), (4, 8), (3, 7), (4, 2), (8, 16)):
        stages = _as_ops(ex, call(ex, one_f_one_b, p, m), p, m)
        want = sorted((k, i) for k in "FB" for i in range(m))
        for s, ops in enumerate(stages):
            if sorted((o.kind, o.microbatch) for o in ops) != want:
                fail(ex, f"p={p}, m={m}: stage {s} should run F and B of micro-batches 0..{m - 1} "
                         f"once each, got {[o.kind + str(o.microbatch) for o in ops]}")
            for kind in "FB":
                ids = [o.microbatch for o in ops if o.kind == kind]
                if ids != sorted(ids):
                    fail(ex, f"p={p}, m={m}: stage {s} runs its {kind} passes in the order {ids}: "
                             "1F1B takes micro-batches in order, first in, first out.")
        try:
            events = simulate(stages)
        except ValueError as err:
            fail(ex, f"p={p}, m={m}: {err}. A backward needs the next stage's backward of the "
                     "same micro-batch, a forward the previous stage's forward.")
        for s, ops in enumerate(stages):
            held = peak_in_flight(ops)
            if held > p - s:
                gpipe = " That is GPipe's order." if held == m and m > p - s else ""
                fail(ex, f"p={p}, m={m}: stage {s} holds {held} micro-batches' activations at "
                         f"once; 1F1B holds at most p - s = {p - s}: start each backward as soon "
                         f"as it can run.{gpipe}")
        bubble, want_b = measured_bubble(events), bubble_fraction(p, m)
        if abs(bubble - want_b) > 1e-9:
            fail(ex, f"p={p}, m={m}: the schedule idles {bubble:.3f} of the step, 1F1B only "
                     f"(p-1)/(m+p-1) = {want_b:.3f}. Stages wait for work: the earlier stages "
                     "need more forwards in flight before their first backward.")
    passed(ex, "every stage runs each pass once, in order, without deadlock, holds at most p - s "
               "activations and idles (p-1)/(m+p-1), for six (p, m) including m < p.")


def check_9_2(merge: Callable[..., tuple]) -> None:
    """merge(o1, lse1, o2, lse2) -> (o, lse): attention over two key blocks from their partials."""
    ex = "9.2"

    def run(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        got = call(ex, merge, *(a.clone() for a in args))
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            fail(ex, "return a pair (output, log-sum-exp)")
        return as_tensor(ex, got[0], "the output"), as_tensor(ex, got[1], "the log-sum-exp")

    # Hand-worked: block 1 has softmax mass e^0 = 1, block 2 has e^log3 = 3: weights 1/4 and 3/4.
    o1, o2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    l1, l2 = torch.tensor([0.0]), torch.tensor([math.log(3.0)])
    o, lse = run(o1, l1, o2, l2)
    if tuple(o.shape) != (1, 2) or tuple(lse.shape) != (1,):
        fail(ex, f"the output should keep o1's shape (1, 2) and the log-sum-exp lse1's (1,), got "
                 f"{tuple(o.shape)} and {tuple(lse.shape)}")
    if torch.allclose(o, torch.tensor([[0.5, 0.5]])):
        fail(ex, "you averaged the two outputs: weigh each by its block's share of the softmax "
                 "mass (here 1/4 and 3/4), not by 1/2.")
    if torch.allclose(o, torch.tensor([[1.0, 3.0]])):
        fail(ex, "the weights exp(lse_i) must be divided by their sum: the merged softmax mass.")
    if not torch.allclose(o, torch.tensor([[0.25, 0.75]]), atol=1e-6):
        fail(ex, f"block masses 1 and 3 should merge to weights 1/4 and 3/4, output [[0.25, 0.75]]"
                 f", got {o.tolist()}")
    if not torch.allclose(lse, torch.tensor([math.log(4.0)]), atol=1e-6):
        fail(ex, f"the merged log-sum-exp is log(e^lse1 + e^lse2) = log 4 = {math.log(4):.4f}, got "
                 f"{lse.tolist()}: it must describe both blocks, for the next merge.")
    # Against full attention: three key blocks merged in turn.
    g = torch.Generator().manual_seed(92)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    k, v = 3 * k.repeat(1, 1, 3, 1), v.repeat(1, 1, 3, 1) + torch.arange(15.0)[:, None]
    out, acc = block_attention(q, k[:, :, :5], v[:, :, :5])
    for b in (1, 2):
        out, acc = run(out, acc, *block_attention(q, k[:, :, 5 * b:5 * b + 5],
                                                  v[:, :, 5 * b:5 * b + 5]))
    full, full_lse = block_attention(q, k, v)
    if not torch.allclose(out, full, atol=1e-5) or not torch.allclose(acc, full_lse, atol=1e-5):
        fail(ex, "merging three blocks of keys one after the other does not give attention over "
                 "all of them")
    # Large scores: exp(1000) overflows in float32.
    o, lse = run(o1, torch.tensor([1000.0]), o2, torch.tensor([1000.0 + math.log(3.0)]))
    # float32 keeps about 5 digits of a number near 1000, hence the looser tolerance
    if not (torch.isfinite(o).all() and torch.allclose(o, torch.tensor([[0.25, 0.75]]), atol=1e-3)):
        fail(ex, f"with log-sum-exps near 1000 you got {o.tolist()}: exp(1000) overflows. Work "
                 "with differences of log-sum-exps, never exp of one alone.")
    # A block no query could see (a causal rank's later keys): output 0, lse -inf.
    empty_o, empty_l = torch.zeros(1, 2), torch.tensor([float("-inf")])
    o, lse = run(o1, l1, empty_o, empty_l)
    if not torch.allclose(o, o1) or not torch.allclose(lse, l1):
        fail(ex, f"merging with an empty block (lse = -inf) should change nothing, got {o.tolist()}"
                 f" and {lse.tolist()}")
    o, lse = run(empty_o, empty_l, empty_o, empty_l)
    if torch.isnan(o).any() or torch.isnan(lse).any():
        fail(ex, "two empty blocks (both lse = -inf) gave nan: -inf - (-inf) is nan. Give an "
                 "empty merge weight 0, output 0 and lse -inf.")
    if not (torch.equal(o, empty_o) and torch.isneginf(lse).all()):
        fail(ex, f"two empty blocks should merge to output 0 and lse -inf, got {o.tolist()} and "
                 f"{lse.tolist()}")
    passed(ex, "the hand-worked weights 1/4 and 3/4, three blocks equal full attention, scores "
               "near 1000, and empty blocks.")


class _SimWorld:
    """world_size threads standing in for ranks.

    all_reduce sums in place, in lockstep, like dist.all_reduce.
    """

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=10)
        self.slots: list[torch.Tensor | None] = [None] * world_size
        self.calls = [0] * world_size

    def all_reduce_for(self, rank: int) -> Callable[[torch.Tensor], None]:
        def all_reduce(tensor: torch.Tensor, *args, **kwargs) -> None:
            self.calls[rank] += 1
            self.slots[rank] = tensor.detach().clone()
            self.barrier.wait()
            total = sum(self.slots)  # type: ignore[arg-type]
            self.barrier.wait()
            tensor.data.copy_(total)
        return all_reduce


def _run_ranks(ex: str, average_gradients: Callable, grads: list[list[torch.Tensor]]) -> list[int]:
    world = _SimWorld(len(grads))
    errors: list[BaseException | None] = [None] * len(grads)

    def rank_main(r: int) -> None:
        try:
            average_gradients(grads[r], world.all_reduce_for(r), len(grads))
        except BaseException as err:  # noqa: BLE001 - reported below, in the main thread
            errors[r] = err
            world.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(len(grads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    first = next(
        (e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)),
        None,
    )
    if first is not None:
        call(ex, lambda: (_ for _ in ()).throw(first))  # report it the way call() reports any crash
    if any(isinstance(e, threading.BrokenBarrierError) for e in errors):
        fail(ex, "the ranks fell out of step: every rank must call all_reduce the same number of "
                 "times, in the same order.")
    return world.calls


def check_9_3(average_gradients: Callable[[list[torch.Tensor], Callable, int], None]) -> None:
    """average_gradients(grads, all_reduce, W).

    Replace each rank's gradients, in place, by their mean over the ranks.
    """
    ex = "9.3"
    g = torch.Generator().manual_seed(93)
    for world_size in (2, 3):
        shapes = [(4, 3), (3,), (2, 2, 2)]
        grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(world_size)]
        want = [sum(gs[i] for gs in grads) / world_size for i in range(len(shapes))]
        total = [w * world_size for w in want]
        original = [[t.clone() for t in gs] for gs in grads]
        calls = _run_ranks(ex, average_gradients, grads)
        if sum(calls) == 0:
            fail(ex, "all_reduce was never called: each rank only sees its own gradients, so it "
                     "must call all_reduce(tensor) to sum them across the ranks.")
        for r in range(world_size):
            for i, t in enumerate(grads[r]):
                if torch.allclose(t, original[r][i]):
                    fail(
                        ex,
                        "the gradients did not change: all_reduce works in place on the tensor you "
                        "give it, so pass the gradient itself (not g / W, which is a new tensor), "
                        "then divide it in place (g /= W).",
                    )
                if torch.allclose(t, total[i], atol=1e-5):
                    fail(ex, f"rank {r} holds the sum over {world_size} ranks, not the mean: "
                             "divide by world_size.")
                if not torch.allclose(t, want[i], atol=1e-5):
                    fail(ex, f"with {world_size} ranks, gradient {i} of rank {r} is not the mean "
                             "of the ranks' gradients")
    passed(ex, "every rank ends with the mean gradient, in place, with 2 and 3 ranks in lockstep.")


def check_9_4(longest_context: Callable[..., int]) -> None:
    """longest_context(gpu_bytes, states_bytes, n_layers, d_model, n_heads, tp, sp) -> tokens.

    The longest multiple of 1024 whose activations (one sequence, flash attention) fit beside the
    states.
    """
    ex = "9.4"

    def want(gpu: float, states: float, L: int, h: int, a: int, t: int, sp: bool) -> int:
        s = 0
        while states + L * tp_activation_bytes(s + 1024, 1, h, a, t, sp, "selective") <= gpu:
            s += 1024
        return s

    cases = [(80e9, 36.1e9, 80, 8192, 64, 8, False), (80e9, 36.1e9, 80, 8192, 64, 8, True),
             (24e9, 4e9, 32, 4096, 32, 2, False), (24e9, 4e9, 32, 4096, 32, 2, True),
             (16e9, 15.9e9, 32, 4096, 32, 1, False)]
    # the boundary: a GPU that holds 2,048 tokens exactly (every byte count here is a whole
    # number below 2**53, so the sums are exact in float64): fitting exactly is fitting
    exact_gpu = 4e9 + 32 * tp_activation_bytes(2048, 1, 4096, 32, 2, False, "selective")
    cases.append((exact_gpu, 4e9, 32, 4096, 32, 2, False))
    for case in cases:
        got = call(ex, longest_context, *case)
        if isinstance(got, bool) or not isinstance(got, int):
            fail(ex, f"return a whole number of tokens, got {got!r}")
        right = want(*case)
        shown = f"gpu={case[0]:.3g}, states={case[1]:.3g}, L={case[2]}, h={case[3]}, " \
                f"a={case[4]}, tp={case[5]}, sp={case[6]}"
        if got == right:
            continue
        if got == right - 1024 and case[0] == exact_gpu:
            fail(ex, f"{shown}: 2,048 tokens fill the GPU exactly, and a length that fits exactly "
                     f"fits: compare with <=, not <. Got {got}.")
        if got == right + 1024:
            fail(ex, f"{shown}: {got} tokens is one step too long; return the last length that "
                     "fits, not the first that doesn't.")
        if got % 1024:
            fail(ex, f"{shown}: return a multiple of 1024, got {got}")
        if got == want(case[0], 0.0, *case[2:]):
            fail(ex, f"{shown}: got {got}, which ignores the states: weights, gradients and "
                     "optimizer take their bytes before any activation.")
        if got == want(case[0], case[1], 1, *case[3:]):
            fail(ex, f"{shown}: got {got}, the activations of one layer: multiply by n_layers.")
        if got == want(case[0], case[1], case[2], case[3], case[4], case[5], not case[6]):
            fail(ex, f"{shown}: got {got}, the answer for sp={not case[6]}: pass "
                     "sequence_parallel through.")
        fail(ex, f"{shown}: the longest context that fits is {right:,} tokens, got {got:,}")
    passed(ex, "the 70B layout with and without sequence parallelism, a smaller model, a GPU "
               "that holds 2,048 tokens exactly, and a GPU with no room left (0 tokens).")
