"""Self-checks for chapter 9's exercises.

The bubble, flat sharding, an all-reduce gradient average, a Megatron MLP split.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..parallel.pipeline import bubble_fraction as _bubble
from ._core import as_scalar, as_tensor, call, fail, passed

__all__ = ["check_9_1", "check_9_2", "check_9_3", "check_9_4"]


def check_9_1(bubble_fraction: Callable[[int, int], float]) -> None:
    """bubble_fraction(p, m) -> idle share of a GPipe/1F1B step, p equal stages, m micro-batches."""
    ex = "9.1"
    got = as_scalar(ex, call(ex, bubble_fraction, 2, 4), "bubble_fraction(2, 4)")
    if abs(got - 20.0) < 1e-6:
        fail(ex, "bubble_fraction(2, 4) gave 20: return a fraction between 0 and 1 (0.2), not a "
                 "percentage.")
    if abs(got - 0.25) < 1e-9:
        fail(ex, "bubble_fraction(2, 4) gave 1/4 = (p-1)/m: the step lasts m + p - 1 slots, not m. "
                 "Divide by m + p - 1.")
    if abs(got - 0.4) < 1e-9:
        fail(ex, "bubble_fraction(2, 4) gave 2/5 = p/(m+p-1): only p - 1 slots of each stage's m + "
                 "p - 1 are idle.")
    if abs(got - 0.8) < 1e-9:
        fail(ex, "bubble_fraction(2, 4) gave 0.8: that is the busy share m/(m+p-1); the bubble is "
                 "the rest.")
    for p, m, want in ((2, 4, 0.2), (1, 7, 0.0), (2, 1, 0.5), (4, 13, 3 / 16), (8, 32, 7 / 39)):
        got = as_scalar(ex, call(ex, bubble_fraction, p, m), f"bubble_fraction({p}, {m})")
        if abs(got - want) > 1e-9:
            fail(ex, f"bubble_fraction({p}, {m}) should be (p-1)/(m+p-1) = {want:.4f}, got "
                     f"{got:.4f}")
    for p, m in ((2, 0), (0, 4)):
        try:
            bubble_fraction(p, m)
        except ValueError:
            continue
        except Exception as err:  # noqa: BLE001
            fail(ex, f"bubble_fraction({p}, {m}) should raise ValueError, not {type(err).__name__}")
        fail(ex, f"bubble_fraction({p}, {m}) has no stage or no micro-batch: raise ValueError.")
    passed(ex, "the hand-worked cases, one stage (no bubble), one micro-batch (half idle), and bad "
               "input.")


def check_9_2(shard_flat: Callable[[list[torch.Tensor], int], list[torch.Tensor]]) -> None:
    """shard_flat(params, W) -> W equal 1-D shards of all parameters flattened in order.

    Zero-padded at the end.
    """
    ex = "9.2"
    # 9 numbers
    params = [torch.arange(6.0).reshape(2, 3), torch.tensor([10.0, 11.0]), torch.tensor([[20.0]])]
    before = [p.clone() for p in params]
    got = call(ex, shard_flat, params, 2)
    if any(not torch.equal(a, b) for a, b in zip(params, before)):
        fail(ex, "your function changed the parameters; build new tensors for the shards.")
    if not isinstance(got, (list, tuple)):
        fail(ex, f"return a list of shards, one per rank, got {type(got).__name__}")
    got = [as_tensor(ex, s, "each shard") for s in got]
    if len(got) != 2:
        fail(ex, f"for world_size=2 return 2 shards, got {len(got)}")
    if any(s.dim() != 1 for s in got):
        fail(ex, "each shard should be 1-D (a slice of one flat vector), got shapes "
                 f"{[tuple(s.shape) for s in got]}")
    if len({s.numel() for s in got}) != 1:
        fail(ex, f"shards of lengths {[s.numel() for s in got]}: 9 numbers over 2 ranks need one "
                 "zero of padding so both shards hold 5 (collectives such as all-gather need "
                 "equal sizes).")
    flat = torch.cat([p.flatten() for p in params])
    joined = torch.cat(got)
    if joined.numel() != 10:
        fail(ex, "9 numbers over 2 ranks should be padded to 10 (the next multiple of 2), got "
                 f"{joined.numel()}")
    if torch.equal(joined[1:], flat) and joined[0] == 0:
        fail(ex, "the padding belongs at the end, so that the first 9 numbers of the joined shards "
                 "are the parameters in order.")
    if not torch.equal(joined[:9], flat):
        if sorted(joined[:9].tolist()) == sorted(flat.tolist()):
            fail(
                ex,
                "the numbers are all there but out of order: flatten every parameter (p.flatten()) "
                "and concatenate them in list order first, then cut that one vector into equal "
                "pieces.",
            )
        fail(ex, f"the joined shards should start with the flattened parameters {flat.tolist()}, "
                 f"got {joined.tolist()}")
    if joined[9] != 0:
        fail(ex, f"pad with zeros, got {joined[9].item()}")
    g = torch.Generator().manual_seed(92)
    params = [torch.randn(n, generator=g) for n in (7, 13, 1, 30)]  # 51 numbers
    flat = torch.cat(params)
    for w in (1, 3, 4, 51, 64):
        shards = [as_tensor(ex, s, "each shard") for s in call(ex, shard_flat, params, w)]
        size = -(-flat.numel() // w)
        if len(shards) != w or any(s.numel() != size for s in shards):
            fail(ex, f"51 numbers over world_size={w} should give {w} shards of {size}, got "
                     f"{len(shards)} shards of sizes {sorted({s.numel() for s in shards})}")
        joined = torch.cat(shards)
        if not torch.equal(joined[:51], flat) or joined[51:].abs().sum() != 0:
            fail(ex, f"with world_size={w}, the joined shards are not the flat parameters followed "
                     "by zeros")
    passed(ex, "equal shards, parameters in order, zero padding at the end, for world sizes 1 to "
               "64.")


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


def check_9_4(tp_partial_outputs: Callable[..., list[torch.Tensor]]) -> None:
    """tp_partial_outputs(x, W1, b1, W2, b2, W) -> each rank's partial output.

    The partials sum to gelu(x W1^T + b1) W2^T + b2.
    """
    ex = "9.4"
    g = torch.Generator().manual_seed(94)
    d, d_ff, world = 6, 8, 2
    x = torch.randn(3, d, generator=g)
    W1, b1 = torch.randn(d_ff, d, generator=g), torch.randn(d_ff, generator=g)
    W2, b2 = torch.randn(d, d_ff, generator=g), torch.randn(d, generator=g)
    full = F.linear(F.gelu(F.linear(x, W1, b1)), W2, b2)

    def run(W1_: torch.Tensor, world_: int = world) -> list[torch.Tensor]:
        got = call(ex, tp_partial_outputs, x.clone(), W1_.clone(), b1.clone(), W2.clone(),
                   b2.clone(), world_)
        if not isinstance(got, (list, tuple)) or len(got) != world_:
            fail(ex, f"return a list of {world_} partial outputs, one per rank")
        return [as_tensor(ex, p, "each partial output") for p in got]

    for world_ in (2, 4):
        parts = run(W1, world_)
        if any(tuple(p.shape) != tuple(full.shape) for p in parts):
            fail(ex, f"each partial output should have the full output's shape {tuple(full.shape)} "
                     f"(the all-reduce sums them), got {[tuple(p.shape) for p in parts]}")
        summed = sum(parts)
        if torch.allclose(summed, full + (world_ - 1) * b2, atol=1e-5):
            fail(ex, "the second bias was added on every rank, so the sum holds it once per rank: "
                     "add b2 on one rank only.")
        if not torch.allclose(summed, full, atol=1e-5):
            if world_ == 4:
                fail(ex, "right for 2 ranks but not for 4: take d_ff // world_size hidden units "
                         "per rank.")
            fail(
                ex,
                "the partial outputs don't sum to the unsplit MLP's output. Rank r keeps rows "
                "r*d_ff/W:(r+1)*d_ff/W of W1 and b1 (its hidden units) and the same columns of W2, "
                "and applies GELU before W2.",
            )
        # Rank r must read only its own hidden units: changing another rank's rows of W1
        # must leave its output alone.
        n = d_ff // world_
        for r in range(world_):
            changed = W1.clone()
            others = [i for i in range(d_ff) if not r * n <= i < (r + 1) * n]
            changed[others] += 1.0
            if not torch.allclose(run(changed, world_)[r], parts[r], atol=1e-6):
                fail(
                    ex,
                    f"with {world_} ranks, rank {r}'s partial output depends on other ranks' rows "
                    "of W1: each rank must compute only its own slice of the hidden layer, then "
                    "multiply by the matching columns of W2.",
                )
    passed(ex, "the partial outputs sum to the unsplit MLP for 2 and 4 ranks, each rank reads only "
               "its own hidden units, bias once.")
