"""What each strategy sends per step and what each GPU must hold, from a few numbers.

Introduced in chapter 9.

Ring collectives: an all-reduce of n elements over W ranks sends 2(W-1)/W * n from each rank; an
all-gather or a reduce-scatter sends half that, (W-1)/W * n.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CommRow", "ring_allreduce_bytes", "bytes_per_step", "layout_memory"]


@dataclass(frozen=True)
class CommRow:
    """One strategy's traffic: bytes each GPU sends per optimizer step, and what they carry."""

    strategy: str
    bytes_per_gpu: float
    what: str


def ring_allreduce_bytes(n_elements: float, world_size: int, bytes_per_element: int = 2) -> float:
    """Bytes each rank sends in a ring all-reduce: 2 (W - 1) / W * n * bytes.

    Example: (1e9, 2, 2) -> 2e9.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    return 2 * (world_size - 1) / world_size * n_elements * bytes_per_element


def bytes_per_step(n_params: float, n_layers: int, d_model: int, seq_len: int, batch_size: int,
                   world_size: int, bytes_per_element: int = 2) -> list[CommRow]:
    """Traffic per step when one strategy alone spreads a model over world_size GPUs.

    With batch_size sequences per step.

    For the pipeline and tensor parallelism, batch_size counts the sequences
    that pass through each GPU.
    """
    w, b = world_size, bytes_per_element
    # one activation tensor (b, s, h) of the whole batch
    tokens_x_width = batch_size * seq_len * d_model
    ddp = ring_allreduce_bytes(n_params, w, b)
    return [
        CommRow("ddp", ddp, "one all-reduce of every gradient"),
        # all-gather the weights for forward, again for backward, reduce-scatter
        # the gradients: 3 half-rings
        CommRow("fsdp", 3 * (w - 1) / w * n_params * b,
                "all-gather x2 + reduce-scatter, one block at a time"),
        # each stage boundary carries the activations forward and their gradients back
        CommRow("pipeline", 2 * tokens_x_width * b,
                "activations forward + gradients back, per stage boundary"),
        # Megatron: per layer, attention and MLP each end in an all-reduce forward
        # and begin with one backward
        CommRow("tp", 4 * n_layers * ring_allreduce_bytes(tokens_x_width, w, b),
                "4 all-reduces of (b, s, h) per layer"),
    ]


def layout_memory(
    n_params: float, tp: int = 1, pp: int = 1, dp: int = 1, shard: str = "optimizer"
) -> dict[str, float]:
    """Bytes per GPU for weights, gradients and AdamW state under mixed precision.

    Mixed precision costs 2 + 2 + 12 bytes a parameter.

    Tensor and pipeline parallelism split everything by tp * pp. Over data parallelism, shard="none"
    replicates (DDP), "optimizer" shards the fp32 state (ZeRO-1) and "all" shards
    everything (ZeRO-3 / FSDP).
    """
    if min(tp, pp, dp) < 1:
        raise ValueError(f"tp, pp and dp must be at least 1, got {tp}, {pp}, {dp}")
    if shard not in ("none", "optimizer", "all"):
        raise ValueError(f"shard must be 'none', 'optimizer' or 'all', got {shard!r}")
    per_model_shard = n_params / (tp * pp)
    # bf16, bf16, fp32 x3
    weights, grads, optim = 2 * per_model_shard, 2 * per_model_shard, 12 * per_model_shard
    if shard in ("optimizer", "all"):
        optim /= dp
    if shard == "all":
        weights, grads = weights / dp, grads / dp
    return {"weights": weights, "grads": grads, "optim": optim, "total": weights + grads + optim}
