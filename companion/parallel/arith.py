"""Memory and traffic of sequence and context parallelism, from a few numbers.

Introduced in chapter 9.

Korthikanti et al. (2022): one GPT layer keeps s*b*h*(34 + 5*a*s/h) bytes of activations. Tensor
parallelism over t GPUs shards 24 of the 34 and the attention scores; sequence parallelism shards
the remaining 10 (norms and dropouts) too. Ring attention (Liu et al. 2023) gives each of P ranks
s/P tokens and passes K/V blocks around a ring in P - 1 steps.
"""
from __future__ import annotations

__all__ = ["tp_activation_bytes", "ring_attention_traffic", "ring_overlap_block"]


def tp_activation_bytes(seq_len: int, batch_size: int, d_model: int, n_heads: int, tp: int = 1,
                        sequence_parallel: bool = False, recompute: str = "none") -> float:
    """Activation bytes one layer keeps per GPU under tensor (and sequence) parallelism.

    Korthikanti et al. 2022, 16-bit values, 1-byte dropout masks. recompute="selective" drops the
    attention-score term 5*a*s/h, as flash attention does.
    Example: tp_activation_bytes(1, 1, 1, 1) -> 39.0 (= 34 + 5).
    """
    if min(seq_len, batch_size, d_model, n_heads, tp) < 1:
        raise ValueError(f"all sizes must be >= 1, got s={seq_len}, b={batch_size}, h={d_model}, "
                         f"a={n_heads}, t={tp}")
    if recompute not in ("none", "selective"):
        raise ValueError(f"recompute must be 'none' or 'selective', got {recompute!r}")
    s, b, h, a, t = seq_len, batch_size, d_model, n_heads, tp
    scores = 5 * a * s / h if recompute == "none" else 0.0  # softmax, its mask, dropped copy
    # 24 of the 34 live inside the split matmuls; the other 10 (the inputs of the norms and of
    # the first matmuls, dropout masks) are whole on every TP rank unless sequence parallelism
    # splits them by tokens.
    unsplit = 10 / t if sequence_parallel else 10
    return s * b * h * (unsplit + 24 / t + scores / t)


def ring_attention_traffic(seq_len: int, batch_size: int, kv_width: int, world_size: int,
                           bytes_per_value: int = 2) -> dict[str, float]:
    """What one rank sends for one attention layer's forward in ring attention.

    kv_width = n_kv_heads * head_dim. Each step passes one K and one V block of s/P tokens to the
    next rank; there are P - 1 steps. Example: (8, 1, 4, 2, 2)["per_step"] -> 64.0 (2*4*4*2).
    """
    if min(seq_len, batch_size, kv_width, world_size) < 1:
        raise ValueError(f"all sizes must be >= 1, got s={seq_len}, b={batch_size}, "
                         f"kv_width={kv_width}, P={world_size}")
    block = seq_len / world_size * batch_size * kv_width * bytes_per_value
    per_step = 2 * block  # K and V
    return {"tokens_per_rank": seq_len / world_size, "steps": world_size - 1,
            "per_step": per_step, "per_layer_forward": (world_size - 1) * per_step}


def ring_overlap_block(flops_per_s: float, bytes_per_s: float, d_model: int, kv_width: int,
                       bytes_per_value: int = 2) -> float:
    """Fewest tokens per rank for which a ring step's compute hides its K/V transfer.

    A block of c queries against c keys costs 4*c*c*h FLOPs (QK^T and PV); its K and V weigh
    2*c*kv_width*bytes. Compute >= transfer when c >= F/B * 2*kv_width*bytes / (4*h); with
    kv_width = h and 2-byte values that is F/B, Liu et al.'s condition.
    Example: ring_overlap_block(1000.0, 10.0, 8, 8) -> 100.0.
    """
    if min(flops_per_s, bytes_per_s, d_model, kv_width) <= 0:
        raise ValueError("flops_per_s, bytes_per_s, d_model and kv_width must be positive")
    return flops_per_s / bytes_per_s * 2 * kv_width * bytes_per_value / (4 * d_model)
