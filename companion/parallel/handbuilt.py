"""Workers that run the hand-built DDP and ZeRO-1 beside torch's and beside one process.

Introduced in chapter 9; run them with `launch(ddp_worker, 2, "bucketed")`.

Each worker trains a tiny GPT with tied embeddings and one parameter that gets no gradient, so
the awkward cases are in every comparison. Every rank also trains the single-process reference
on the whole batch, from rank 0's initial weights, and reports the largest differences.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..model import GPT
from .ddp import BucketedDDP, HookedDDP
from .verify import RunSpec, make_batches, tiny_config
from .zero import Zero1Optimizer, optimizer_state_bytes

__all__ = ["tied_model", "ddp_worker", "zero_worker"]


def tied_model(seed: int) -> GPT:
    """The tiny GPT with tied embeddings, plus `norm.unused`, a parameter no forward touches."""
    torch.manual_seed(seed)
    model = GPT(tiny_config(tie_embeddings=True))
    # like a head this task never calls; the backward's first bucket then waits for it in vain
    model.norm.unused = nn.Parameter(torch.ones(3))
    return model


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def ddp_worker(rank: int, world: int, kind: str = "bucketed", bucket_cap_mb: float = 0.01,
               steps: int = 3, accumulate: int = 1) -> dict:
    """Train `kind` ("hooked" or "bucketed"), torch's DDP and one process; compare them.

    With accumulate > 1, each rank splits its slice into micro-batches and only the last
    backward all-reduces (the others run under no_sync).
    """
    spec = RunSpec(steps=steps, batch_size=4 * world)
    batches = make_batches(spec)
    # each rank starts from different weights: the constructor's broadcast must fix that
    hand_model = tied_model(seed=rank)
    hand = (HookedDDP(hand_model) if kind == "hooked"
            else BucketedDDP(hand_model, bucket_cap_mb=bucket_cap_mb))
    torch_ddp = nn.parallel.DistributedDataParallel(tied_model(seed=rank),
                                                    find_unused_parameters=True)
    single = tied_model(seed=0)
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.1)
            for m in (hand, torch_ddp, single)]
    counts, unused_grads = [], []
    for x, y in batches:
        part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        before = hand.n_collectives
        for wrapped in (hand, torch_ddp):
            xs, ys = x[part].chunk(accumulate), y[part].chunk(accumulate)
            for i, (xm, ym) in enumerate(zip(xs, ys)):
                quiet = wrapped.no_sync() if i < accumulate - 1 else nullcontext()
                with quiet:
                    (_loss(wrapped, xm, ym) / accumulate).backward()
        hand.finish_gradient_synchronization()
        counts.append(hand.n_collectives - before)
        unused_grads.append([m.module.norm.unused.grad is None for m in (hand, torch_ddp)])
        _loss(single, x, y).backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    return {"vs_single": _max_diff(hand.module, single),
            "vs_torch": _max_diff(hand.module, torch_ddp.module),
            "torch_vs_single": _max_diff(torch_ddp.module, single),
            "collectives_per_step": counts, "unused_grad_is_none": unused_grads,
            "n_params": len(hand.params),
            "n_buckets": getattr(hand, "n_buckets", None),
            "buckets": [[n for n, p in hand.module.named_parameters()
                         if any(p is q for q in b)] for b in getattr(hand, "buckets", [])]}


def zero_worker(rank: int, world: int, steps: int = 4, optimizer: str = "AdamW") -> dict:
    """Train with Zero1Optimizer over averaged gradients and with the unsharded optimizer."""
    spec = RunSpec(steps=steps, batch_size=4 * world)
    model, single = HookedDDP(tied_model(seed=0)), tied_model(seed=0)
    cls = getattr(torch.optim, optimizer)
    kwargs = ({"lr": 3e-3, "weight_decay": 0.1} if optimizer == "AdamW"
              else {"lr": 0.05, "momentum": 0.9})
    sharded = Zero1Optimizer(model.parameters(), cls, **kwargs)
    whole = cls(single.parameters(), **kwargs)
    for x, y in make_batches(spec):
        part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        _loss(model, x[part], y[part]).backward()
        model.finish_gradient_synchronization()
        _loss(single, x, y).backward()
        before = sharded.n_collectives
        for opt in (sharded, whole):
            opt.step()
            opt.zero_grad()
    return {"vs_single": _max_diff(model.module, single),
            "state_bytes": sharded.state_bytes(), "unsharded_state_bytes":
            optimizer_state_bytes(whole), "broadcasts_per_step": sharded.n_collectives - before,
            "n_params": len(sharded.params),
            "owned": sum(r == rank for r in sharded.owner)}
