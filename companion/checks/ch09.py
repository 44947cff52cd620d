"""Self-checks for chapter 9's exercises.

A 1F1B schedule, DDP's bucketed all-reduce, a ZeRO-1 step over flat shards, the longest context
that fits under TP + ZeRO-1 with and without sequence parallelism, the causal ring-attention loop.
Ranks are played by threads, with collectives that behave like torch.distributed's.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..parallel.arith import tp_activation_bytes
from ..parallel.ddp import bucket_assignment
from ..parallel.pipeline import bubble_fraction, measured_bubble
from ..parallel.ring import block_attention
from ..parallel.schedules import Op, peak_in_flight, simulate
from ..parallel.zero import optimizer_state_bytes
from ._core import ExerciseFailed, as_tensor, call, fail, passed

__all__ = ["check_9_1", "check_9_2", "check_9_3", "check_9_4", "check_9_5"]


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


class _Handle:
    """What an asynchronous collective returns: wait() finishes it, as dist.Work does."""

    def __init__(self, on_wait: Callable[[], None]):
        self._on_wait, self.done = on_wait, False

    def wait(self) -> None:
        if not self.done:
            self.done = True
            self._on_wait()


def check_9_2(bucketed: Callable[..., object]) -> None:
    """BucketedAllReduce(params, bucket_numel, all_reduce, world_size).

    grad_ready(p) from each gradient hook, finish() before the optimizer step.
    """
    ex = "9.2"

    g = torch.Generator().manual_seed(92)
    for sizes, cap, world in (([4, 6, 3, 8, 2, 5], 8, 2), ([10, 1, 1, 10], 5, 3), ([3, 3], 100, 2)):
        params = [torch.zeros(n, requires_grad=True) for n in sizes]
        base = [torch.randn(n, generator=g) for n in sizes]
        for p, b in zip(params, base):
            p.grad = b.clone()
        # rank r's gradients are (r + 1) times this rank's: the sum over the ranks is a known
        # multiple, whatever the learner packs into each bucket
        total = world * (world + 1) / 2
        state = {"arrived": 0, "finishing": False}
        launched: list[tuple[int, int]] = []  # (gradients arrived so far, numel sent)
        early: list[int] = []

        def all_reduce(tensor: torch.Tensor, *args, **kwargs) -> _Handle:
            t = as_tensor(ex, tensor, "the tensor given to all_reduce")
            launched.append((state["arrived"], t.numel()))

            def land() -> None:
                if not state["finishing"]:
                    early.append(len(launched))
                t.mul_(total)  # the sum over the ranks lands in place, once waited on
            return _Handle(land)

        reducer = call(ex, bucketed, params, cap, all_reduce, world)
        for p in reversed(params):  # the backward produces the last parameters' gradients first
            state["arrived"] += 1
            call(ex, reducer.grad_ready, p)
        if early:
            fail(ex, "you waited on an all-reduce inside grad_ready: the backward then stalls "
                     "until the bucket has travelled. Keep the handles and wait on them in "
                     "finish(), so communication overlaps the rest of the backward.")
        state["finishing"] = True
        call(ex, reducer.finish)
        buckets = bucket_assignment(sizes, cap)
        want_sizes = [sum(sizes[i] for i in b) for b in buckets]
        sent = [n for _, n in launched]
        shown = f"sizes {sizes}, bucket_numel={cap}"
        if len(sent) == len(sizes) and len(buckets) != len(sizes):
            fail(ex, f"{shown}: {len(sent)} all-reduces, one per parameter; pack the gradients "
                     f"into buckets and send one per bucket ({len(buckets)} here).")
        if sorted(sent) != sorted(want_sizes):
            fail(ex, f"{shown}: you sent all-reduces of {sent} numbers, the buckets hold "
                     f"{want_sizes}. Fill a bucket from the last parameter and close it once it "
                     "holds at least bucket_numel numbers.")
        want_when = [1 + max(len(sizes) - 1 - i for i in b) for b in buckets]
        if [a for a, _ in launched] != want_when:
            fail(ex, f"{shown}: the all-reduces started after {[a for a, _ in launched]} "
                     f"gradients had arrived; each bucket should go as soon as its last gradient "
                     f"arrives, after {want_when}. Buckets are filled in reverse parameter order, "
                     "the order the backward produces the gradients.")
        for i, (p, b) in enumerate(zip(params, base)):
            got = as_tensor(ex, p.grad, f"parameter {i}'s gradient")
            if torch.allclose(got, b * total, atol=1e-5):
                fail(ex, f"{shown}: parameter {i} holds the sum over {world} ranks, not the "
                         "mean: divide by world_size.")
            if torch.allclose(got, b, atol=1e-6):
                fail(ex, f"{shown}: parameter {i}'s gradient never changed: copy each slice of "
                         "the reduced bucket back into p.grad after waiting.")
            if not torch.allclose(got, b * total / world, atol=1e-5):
                fail(ex, f"{shown}: parameter {i}'s gradient is not the mean over the ranks; "
                         "are the slices copied back to the parameters they came from?")
    passed(ex, "one all-reduce per bucket, filled from the last parameter, each started when its "
               "last gradient arrives and waited on in finish(), averaged, for three layouts.")


class _Ranks:
    """world_size threads standing in for ranks, with an all_gather and isend/irecv like dist's."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=10)
        self.slots: list[torch.Tensor | None] = [None] * world_size
        self.mail: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.lock = threading.Condition()

    def all_gather_for(self, rank: int) -> Callable[[torch.Tensor, torch.Tensor], None]:
        def all_gather(output: torch.Tensor, shard: torch.Tensor) -> None:
            self.slots[rank] = shard.detach().clone()
            self.barrier.wait()
            output.copy_(torch.cat(self.slots))  # type: ignore[arg-type]
            self.barrier.wait()
        return all_gather

    def isend_for(self, rank: int) -> Callable[[torch.Tensor, int], _Handle]:
        def isend(tensor: torch.Tensor, dst: int) -> _Handle:
            with self.lock:
                self.mail.setdefault((rank, dst % self.world_size), []).append(tensor.clone())
                self.lock.notify_all()
            return _Handle(lambda: None)
        return isend

    def irecv_for(self, rank: int) -> Callable[[torch.Tensor, int], _Handle]:
        def irecv(tensor: torch.Tensor, src: int) -> _Handle:
            key = (src % self.world_size, rank)

            def land() -> None:
                with self.lock:
                    if not self.lock.wait_for(lambda: self.mail.get(key), timeout=5):
                        raise TimeoutError(f"rank {rank} waited for a message from rank "
                                           f"{key[0]} that never came")
                    tensor.copy_(self.mail[key].pop(0))
            return _Handle(land)
        return irecv

    def run(self, ex: str, main: Callable[[int], object]) -> list[object]:
        out: list[object] = [None] * self.world_size
        errors: list[BaseException | None] = [None] * self.world_size

        def rank_main(r: int) -> None:
            try:
                out[r] = main(r)
            except BaseException as err:  # noqa: BLE001 - reported below, in the main thread
                errors[r] = err
                self.barrier.abort()

        threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(self.world_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        real = [e for e in errors if e is not None
                and not isinstance(e, (threading.BrokenBarrierError, TimeoutError))]
        if real:
            raise real[0]
        if any(isinstance(e, TimeoutError) for e in errors):
            fail(ex, "the ranks deadlocked: " + str(next(e for e in errors
                                                          if isinstance(e, TimeoutError)))
                 + ". Every rank sends to rank + 1 and receives from rank - 1.")
        if any(isinstance(e, threading.BrokenBarrierError) for e in errors):
            fail(ex, "the ranks fell out of step: every rank must call the collective the same "
                     "number of times, in the same order.")
        return out


def check_9_3(zero1: Callable[..., object]) -> None:
    """FlatZero1(params, rank, world_size, optimizer_class, all_gather, **kwargs).step()."""
    ex = "9.3"

    g = torch.Generator().manual_seed(93)
    shapes = [(4, 3), (5,), (2, 2, 2), (3,)]  # 33 numbers: the last shard needs padding
    init = [torch.randn(s, generator=g) for s in shapes]
    steps = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    kwargs = {"lr": 0.1, "weight_decay": 0.1}
    ref = [t.clone().requires_grad_() for t in init]
    ref_opt = torch.optim.AdamW(ref, **kwargs)
    for grads in steps:
        for p, gr in zip(ref, grads):
            p.grad = gr.clone()
        ref_opt.step()
    whole = optimizer_state_bytes(ref_opt)
    for world in (2, 3):
        ranks = _Ranks(world)
        params = [[t.clone().requires_grad_() for t in init] for _ in range(world)]

        def main(r: int) -> object:
            opt = zero1(params[r], r, world, torch.optim.AdamW, ranks.all_gather_for(r), **kwargs)
            for grads in steps:  # the same averaged gradients on every rank, as after DDP
                for p, gr in zip(params[r], grads):
                    p.grad = gr.clone()
                opt.step()
            return opt

        try:
            opts = ranks.run(ex, main)
        except NotImplementedError:
            call(ex, lambda: (_ for _ in ()).throw(NotImplementedError()))
        except ExerciseFailed:
            raise
        except Exception as err:  # noqa: BLE001 - a crash in learner code becomes a hint
            fail(ex, f"your code raised {type(err).__name__}: {err}")
        for r, opt in enumerate(opts):
            inner = getattr(opt, "optim", None)
            if not isinstance(inner, torch.optim.Optimizer):
                fail(ex, "keep this rank's optimizer in self.optim, so its state can be counted")
            held = optimizer_state_bytes(inner)
            if held > 0.75 * whole:
                fail(ex, f"with {world} ranks, rank {r} holds {held:,} bytes of AdamW state, as "
                         f"much as one process ({whole:,}): you stepped all parameters on every "
                         "rank. Build the optimizer over this rank's shard only.")
        for r in range(world):
            diffs = [(p.detach() - q.detach()).abs().max().item()
                     for p, q in zip(params[r], ref)]
            if max(diffs) < 1e-5:
                continue
            moved = [(p.detach() - t).abs().max().item() > 0 for p, t in zip(params[r], init)]
            if not all(moved) or any(d < 1e-5 for d in diffs):
                fail(ex, f"with {world} ranks, rank {r} has only its own shard updated: after "
                         "the step, all-gather the shards and copy the full vector back into "
                         "every parameter.")
            fail(ex, f"with {world} ranks, rank {r}'s parameters differ from unsharded AdamW by "
                     f"up to {max(diffs):.2e} after 3 steps: does each rank step the slice of "
                     "the flat gradient that matches its shard?")
    passed(ex, "with 2 and 3 ranks, 3 AdamW steps equal the unsharded optimizer, with a 1/W "
               "share of its state on each rank.")


def check_9_5(ring: Callable[..., torch.Tensor]) -> None:
    """ring(q, k, v, rank, world_size, isend, irecv, causal) -> this rank's attention output."""
    ex = "9.5"

    g = torch.Generator().manual_seed(95)
    for world, causal in ((3, True), (4, True), (3, False), (1, True)):
        T = 4 * world
        q, k, v = (torch.randn(1, 2, T, 4, generator=g) for _ in range(3))
        k = 2 * k  # sharper scores, so the blocks' softmax masses differ a lot
        full = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        ranks = _Ranks(world)

        def main(r: int) -> torch.Tensor:
            part = slice(r * 4, (r + 1) * 4)
            out = ring(q[:, :, part].clone(), k[:, :, part].clone(), v[:, :, part].clone(), r,
                       world, ranks.isend_for(r), ranks.irecv_for(r), causal)
            return as_tensor(ex, out, "the output")

        try:
            outs = ranks.run(ex, main)
        except NotImplementedError:
            call(ex, lambda: (_ for _ in ()).throw(NotImplementedError()))
        except ExerciseFailed:
            raise
        except Exception as err:  # noqa: BLE001 - a crash in learner code becomes a hint
            fail(ex, f"your code raised {type(err).__name__}: {err}")
        got = torch.cat(outs, dim=2)  # type: ignore[arg-type]
        shown = f"P={world}, causal={causal}"
        if tuple(got.shape) != tuple(full.shape):
            fail(ex, f"{shown}: each rank should return its (B, H, T/P, D) slice, got shapes "
                     f"{[tuple(o.shape) for o in outs]}")  # type: ignore[union-attr]
        if torch.allclose(got, full, atol=1e-5):
            continue
        # what an equal-weight merge of the visible blocks would give
        blocks, avg = [], torch.zeros_like(full)
        for r in range(world):
            part, parts = slice(r * 4, (r + 1) * 4), []
            for s in range(world):
                if causal and s > r:
                    continue
                mask = torch.ones(4, 4, dtype=torch.bool).tril() if causal and s == r else None
                o, _ = block_attention(q[:, :, part], k[:, :, s * 4:s * 4 + 4],
                                       v[:, :, s * 4:s * 4 + 4], mask)
                parts.append(o)
            avg[:, :, part] = sum(parts) / len(parts)
            blocks.append(parts)
        if torch.allclose(got, avg, atol=1e-5):
            fail(ex, f"{shown}: you averaged the blocks' outputs; weigh each by its share of "
                     "the softmax mass, exp(lse_block - lse_merged), and carry the merged "
                     "log-sum-exp into the next step.")
        if causal and torch.allclose(got, F.scaled_dot_product_attention(q, k, v), atol=1e-5):
            fail(ex, f"{shown}: that is attention without the causal mask: skip the blocks of "
                     "later tokens and mask the diagonal block.")
        first = slice(0, 4)
        if torch.allclose(got[:, :, first], full[:, :, first], atol=1e-5):
            fail(ex, f"{shown}: rank 0 is right but later ranks are not. At step s a rank holds "
                     "the block of rank (rank - s) % P only if it sends to rank + 1 and receives "
                     "from rank - 1; check the direction and which block you think you hold.")
        fail(ex, f"{shown}: the ranks' outputs differ from full attention by up to "
                 f"{(got - full).abs().max().item():.2e}")
    passed(ex, "the causal ring over 3 and 4 ranks, without a mask, and on one rank, equals full "
               "attention.")


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
