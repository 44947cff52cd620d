"""Data parallelism by hand: gradients all-reduced from hooks, one parameter or bucket at a time.

Introduced in chapter 9. Teaching versions of torch's DistributedDataParallel, with its
constructor's conventions; `wrap_model(model, "ddp", env)` keeps torch's for real use.

`HookedDDP(module)` launches one asynchronous all-reduce per parameter, from the hook that runs
once the parameter's gradient is complete, so communication overlaps the rest of the backward.
`BucketedDDP(module, bucket_cap_mb=25)` groups the gradients into buckets, filled in reverse
parameter order (the order the backward produces them), and launches one all-reduce per bucket as
soon as its last gradient arrives. Both broadcast rank 0's weights at construction, and
`finish_gradient_synchronization()` waits for the handles and averages before the optimizer step.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["HookedDDP", "BucketedDDP", "bucket_assignment"]


def bucket_assignment(numels: list[int], cap: int) -> list[list[int]]:
    """Indices into `numels`, grouped into buckets of about `cap` elements, last parameter first.

    A bucket closes once it holds at least `cap` elements, as torch's DDP does.
    Example: ([4, 4, 4], 8) -> [[2, 1], [0]].
    """
    if cap < 1:
        raise ValueError(f"the bucket cap must be at least 1 element, got {cap}")
    buckets: list[list[int]] = [[]]
    size = 0
    for i in reversed(range(len(numels))):  # the backward finishes the last parameters first
        buckets[-1].append(i)
        size += numels[i]
        if size >= cap:
            buckets.append([])
            size = 0
    return [b for b in buckets if b]


class HookedDDP(nn.Module):
    """Wrap `module`: one async all-reduce per parameter, launched from its gradient hook.

    Example: ddp = HookedDDP(model); loss(ddp(x)).backward(); ddp.finish_gradient_synchronization()
    """

    def __init__(self, module: nn.Module, process_group: dist.ProcessGroup | None = None):
        super().__init__()
        self.module, self.process_group = module, process_group
        self.world_size = dist.get_world_size(process_group)
        self.require_backward_grad_sync = True
        self.n_collectives = 0  # all-reduces launched so far, for counting
        self._pending: list[tuple[dist.Work, list[nn.Parameter], torch.Tensor | None]] = []
        with torch.no_grad():  # every rank starts from rank 0's weights and buffers
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t, src=dist.get_global_rank(process_group, 0)
                               if process_group is not None else 0, group=process_group)
        # parameters() yields a tied weight once, so it gets one hook and one all-reduce
        self.params = [p for p in module.parameters() if p.requires_grad]
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._grad_ready)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients locally: no all-reduce until a backward outside this block."""
        previous, self.require_backward_grad_sync = self.require_backward_grad_sync, False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous

    def _launch(self, params: list[nn.Parameter], flat: torch.Tensor | None) -> None:
        tensor = params[0].grad if flat is None else flat
        work = dist.all_reduce(tensor, group=self.process_group, async_op=True)
        self._pending.append((work, params, flat))
        self.n_collectives += 1

    def _grad_ready(self, p: nn.Parameter) -> None:
        if self.require_backward_grad_sync:
            self._launch([p], None)  # returns at once: the backward goes on while it travels

    def finish_gradient_synchronization(self) -> None:
        """Wait for every all-reduce launched in the backward, then turn the sums into means."""
        for work, params, flat in self._pending:
            work.wait()
            if flat is None:
                params[0].grad.div_(self.world_size)
            else:
                _unflatten_into(flat.div_(self.world_size), params)
        self._pending.clear()


class BucketedDDP(HookedDDP):
    """Wrap `module`: gradients all-reduced in buckets of `bucket_cap_mb`, last parameters first.

    Example: BucketedDDP(model, bucket_cap_mb=0.01).n_buckets -> the number of all-reduces a step.
    """

    def __init__(self, module: nn.Module, process_group: dist.ProcessGroup | None = None,
                 bucket_cap_mb: float = 25.0):
        super().__init__(module, process_group)
        if bucket_cap_mb <= 0:
            raise ValueError(f"bucket_cap_mb must be positive, got {bucket_cap_mb}")
        p0 = self.params[0]
        cap = max(1, int(bucket_cap_mb * 2**20) // p0.element_size())
        self.buckets = [[self.params[i] for i in b]
                        for b in bucket_assignment([p.numel() for p in self.params], cap)]
        self._bucket_of = {id(p): k for k, b in enumerate(self.buckets) for p in b}
        self._arrived = [0] * len(self.buckets)

    @property
    def n_buckets(self) -> int:
        return len(self.buckets)

    def _grad_ready(self, p: nn.Parameter) -> None:
        if not self.require_backward_grad_sync:
            return
        k = self._bucket_of[id(p)]
        self._arrived[k] += 1
        if self._arrived[k] == len(self.buckets[k]):  # the bucket's last gradient: send it
            self._launch_bucket(k)

    def _launch_bucket(self, k: int) -> None:
        params = self.buckets[k]
        # a parameter this step did not use contributes zeros, so every rank sends equal sizes
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                          for p in params])
        self._launch(params, flat)

    def finish_gradient_synchronization(self) -> None:
        """Send the buckets still waiting on an unused parameter, then wait and average."""
        if self.require_backward_grad_sync:
            for k, b in enumerate(self.buckets):
                if 0 < self._arrived[k] < len(b):  # 0: a bucket nobody used, as on every rank
                    self._launch_bucket(k)
        self._arrived = [0] * len(self.buckets)
        super().finish_gradient_synchronization()


def _unflatten_into(flat: torch.Tensor, params: list[nn.Parameter]) -> None:
    """Copy the slices of a flat bucket back into each parameter's gradient."""
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is not None:  # an unused parameter keeps grad None, as under torch's DDP
            p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n
