"""ZeRO stage 1 by hand: each rank keeps and steps the optimizer states of its share of parameters.

Introduced in chapter 9. A teaching version of torch's ZeroRedundancyOptimizer, with its
constructor's conventions: `Zero1Optimizer(params, torch.optim.AdamW, lr=1e-3)`.

Data-parallel ranks hold the same averaged gradients, so they would all compute the same update.
ZeRO-1 (Rajbhandari et al., 2020) splits the parameters into one share per rank; each rank keeps
the optimizer states (AdamW's two moments) of its share only, steps it, and broadcasts the updated
parameters to the others. Optimizer memory per rank falls by the world size; the weights and
gradients stay whole.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Zero1Optimizer", "partition_parameters", "optimizer_state_bytes"]


def partition_parameters(numels: list[int], world_size: int) -> list[int]:
    """The rank that owns each parameter: largest first, each to the least loaded rank.

    Example: ([6, 2, 3, 1], 2) -> [0, 1, 1, 1] (6 elements on rank 0, 6 on rank 1).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    owner, load = [0] * len(numels), [0] * world_size
    for i in sorted(range(len(numels)), key=lambda i: -numels[i]):
        r = min(range(world_size), key=lambda r: load[r])
        owner[i] = r
        load[r] += numels[i]
    return owner


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer keeps in its state (AdamW: step, exp_avg, exp_avg_sq)."""
    return sum(t.numel() * t.element_size() for s in optimizer.state.values()
               for t in s.values() if isinstance(t, torch.Tensor))


class Zero1Optimizer:
    """Any torch.optim optimizer, its states sharded over the ranks (ZeRO stage 1).

    Example: opt = Zero1Optimizer(model.parameters(), torch.optim.AdamW, lr=3e-3); opt.step()
    """

    def __init__(self, params: Iterable[nn.Parameter], optimizer_class: type,
                 process_group: dist.ProcessGroup | None = None, **defaults):
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        seen: set[int] = set()  # a tied weight is one parameter, owned once
        self.params = [p for p in params if not (id(p) in seen or seen.add(id(p)))]
        if not self.params:
            raise ValueError("Zero1Optimizer got no parameters")
        self.owner = partition_parameters([p.numel() for p in self.params], self.world_size)
        mine = [p for p, r in zip(self.params, self.owner) if r == self.rank]
        # a rank with no share (more ranks than parameters) still steps nothing, in step
        self.optim = optimizer_class(mine or [torch.zeros(0, requires_grad=True)], **defaults)
        self.n_collectives = 0

    @property
    def param_groups(self) -> list[dict]:
        return self.optim.param_groups  # this rank's share, e.g. for a learning-rate schedule

    @torch.no_grad()
    def step(self) -> None:
        """Step this rank's share, then send each updated parameter from its owner to everyone."""
        self.optim.step()
        for p, r in zip(self.params, self.owner):
            src = r if self.process_group is None else dist.get_global_rank(self.process_group, r)
            dist.broadcast(p.data, src=src, group=self.process_group)
            self.n_collectives += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient, not only this rank's share: all of them were used."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds."""
        return optimizer_state_bytes(self.optim)
