"""Tensor parallelism: Megatron's column and row split of the MLP, by hand and with DTensor.

Introduced in chapter 9.

The first projection is split by output columns, so each rank computes its own slice of the hidden
layer and applies the nonlinearity locally; the second is split by input rows, so each rank's
partial output is summed by one all-reduce. Forward: identity in, all-reduce out. Backward: the
mirror image (Shoeybi et al., 2019).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..model import ACTIVATIONS

__all__ = ["copy_to_tp", "reduce_from_tp", "shard_rows", "TensorParallelMLP",
           "apply_tensor_parallel"]


class _CopyToTP(torch.autograd.Function):
    """Megatron's f: identity forward.

    Backward sums the input's gradient over the ranks (each saw a slice).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad


class _ReduceFromTP(torch.autograd.Function):
    """Megatron's g: forward sums the partial outputs over the ranks.

    Backward passes the gradient through.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous().clone()  # all_reduce works in place; keep the caller's tensor intact
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def copy_to_tp(x: torch.Tensor) -> torch.Tensor:
    """Enter a tensor-parallel region.

    Same value on every rank, gradient all-reduced on the way back.
    """
    return _CopyToTP.apply(x)


def reduce_from_tp(x: torch.Tensor) -> torch.Tensor:
    """Leave a tensor-parallel region: sum the ranks' partial results (one all-reduce)."""
    return _ReduceFromTP.apply(x)


def shard_rows(t: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank's contiguous slice of dim 0, as a new leaf tensor.

    Example: shard_rows(arange(6), 1, 3) -> [2, 3].
    """
    if t.shape[0] % world_size:
        raise ValueError(f"world_size={world_size} does not divide dim 0 of size {t.shape[0]}")
    return t.detach().chunk(world_size, dim=0)[rank].clone()


class TensorParallelMLP(nn.Module):
    """One rank's share of an MLP (GELU or SwiGLU): d_ff/world hidden units.

    The output is complete after g.
    """

    def __init__(self, mlp: nn.Module, rank: int, world_size: int):
        super().__init__()
        self.gated = hasattr(mlp, "gate_proj")
        self.activation = getattr(mlp, "activation", "gelu")
        d_ff = mlp.up_proj.out_features
        if d_ff % world_size:
            raise ValueError(f"world_size={world_size} does not divide d_ff={d_ff}")
        col = lambda lin: _column_slice(lin, rank, world_size)  # noqa: E731
        self.up_proj = col(mlp.up_proj)
        self.gate_proj = col(mlp.gate_proj) if self.gated else None
        down = mlp.down_proj
        # Row split of y = h W^T: W is (d, d_ff), so this rank keeps the d_ff/world columns
        # that match its hidden units.
        self.down_proj = nn.Linear(d_ff // world_size, down.out_features, bias=False)
        self.down_proj.weight = nn.Parameter(
            shard_rows(down.weight.T, rank, world_size).T.contiguous()
        )
        # The bias must be added once, after the sum, not once per rank.
        self.down_bias = nn.Parameter(down.bias.detach().clone()) if down.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = copy_to_tp(x)
        if self.gated:
            # (B, T, d_ff / world): no communication needed
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        else:
            h = ACTIVATIONS[self.activation](self.up_proj(x))
        # (B, T, d): partial sums -> the full output on every rank
        y = reduce_from_tp(self.down_proj(h))
        return y if self.down_bias is None else y + self.down_bias


def _column_slice(lin: nn.Linear, rank: int, world_size: int) -> nn.Linear:
    """Column split of y = x W^T: W is (out, in), so a slice of output features is W's rows."""
    out = nn.Linear(lin.in_features, lin.out_features // world_size, bias=lin.bias is not None)
    out.weight = nn.Parameter(shard_rows(lin.weight, rank, world_size))
    if lin.bias is not None:
        out.bias = nn.Parameter(shard_rows(lin.bias, rank, world_size))
    return out


def apply_tensor_parallel(
    model: nn.Module, rank: int, world_size: int, method: str = "hand"
) -> nn.Module:
    """Split every block's MLP of a companion GPT across the ranks, in place.

    Attention stays replicated.

    method="hand" uses TensorParallelMLP; method="dtensor" uses torch's
    ColwiseParallel/RowwiseParallel.
    """
    if method not in ("hand", "dtensor"):
        raise ValueError(f"method must be 'hand' or 'dtensor', got {method!r}")
    if method == "dtensor":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                       parallelize_module)

        mesh = init_device_mesh(next(model.parameters()).device.type, (world_size,))
        for block in model.blocks:
            plan = {"up_proj": ColwiseParallel(), "down_proj": RowwiseParallel()}
            if hasattr(block.mlp, "gate_proj"):
                plan["gate_proj"] = ColwiseParallel()
            parallelize_module(block.mlp, mesh, plan)
        return model
    for block in model.blocks:
        block.mlp = TensorParallelMLP(block.mlp, rank, world_size)
    return model
