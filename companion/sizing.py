"""Sizing a transformer from its GPTConfig alone: parameters, FLOPs, memory, and whether it fits.

Introduced in chapter 8.

Everything here is arithmetic on a config; no weights are allocated. Scaling laws, budgets and the
hyperparameter blueprint live in `companion.scaling`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from .attention import kv_cache_bytes
from .model import GPTConfig, count_params

__all__ = [
    "PRESETS", "preset", "param_count", "attention_flops_per_token", "flops_per_token",
    "training_flops", "mfu", "GPU", "GPUS", "BYTES_PER_PARAM", "activation_bytes_per_layer",
    "logits_bytes", "zero_bytes_per_param", "MemoryEstimate", "training_memory",
    "inference_memory", "fits", "gpus_needed", "gpus_to_hold", "saved_activation_bytes", "GIB",
]

GIB = 2**30


def _gpt2(d_model: int, n_layers: int, n_heads: int) -> GPTConfig:
    # GPT-2's released configs: LayerNorm eps 1e-5, GELU, learned positions, biases, tied
    # head (GPTConfig's defaults).
    return GPTConfig.gpt2(d_model=d_model, n_layers=n_layers, n_heads=n_heads)


def _llama(**kw: Any) -> GPTConfig:
    # Meta's config.json files: RMSNorm (eps 1e-5), SwiGLU, RoPE, no biases, untied
    # head unless said otherwise.
    base = dict(
        norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, tie_embeddings=False, norm_eps=1e-5
    )
    return GPTConfig(**{**base, **kw})


# The published configurations (Hugging Face config.json of each release). Llama 3.2's RoPE
# frequency scaling (x32 for long context) is not a GPTConfig field; it changes
# no parameter or FLOP count.
PRESETS: dict[str, GPTConfig] = {
    "gpt2": _gpt2(768, 12, 12),
    "gpt2-medium": _gpt2(1024, 24, 16),
    "gpt2-large": _gpt2(1280, 36, 20),
    "gpt2-xl": _gpt2(1600, 48, 25),
    "llama2-7b": _llama(vocab_size=32000, context_length=4096, d_model=4096, n_layers=32,
                        n_heads=32, n_kv_heads=32, d_ff=11008, rope_theta=1e4),
    "llama2-70b": _llama(vocab_size=32000, context_length=4096, d_model=8192, n_layers=80,
                         n_heads=64, n_kv_heads=8, d_ff=28672, rope_theta=1e4),
    "llama3-8b": _llama(vocab_size=128256, context_length=8192, d_model=4096, n_layers=32,
                        n_heads=32, n_kv_heads=8, d_ff=14336, rope_theta=5e5),
    "llama3-70b": _llama(vocab_size=128256, context_length=8192, d_model=8192, n_layers=80,
                         n_heads=64, n_kv_heads=8, d_ff=28672, rope_theta=5e5),
    "llama3.2-1b": _llama(vocab_size=128256, context_length=131072, d_model=2048, n_layers=16,
                          n_heads=32, n_kv_heads=8, d_ff=8192, rope_theta=5e5, tie_embeddings=True),
}


def preset(name: str, **overrides: Any) -> GPTConfig:
    """A fresh copy of a published config, e.g. preset("gpt2", dropout=0.1).

    PRESETS itself stays untouched.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# --- parameters and FLOPs -------------------------------------------------------------------


def param_count(config: GPTConfig, non_embedding: bool = False) -> int:
    """Exact parameter count from the config, no weights allocated (tied matrices once).

    Example: param_count(PRESETS["gpt2"]) -> 124439808. Introduced in chapter 8.
    """
    # Chapter 6's count_params already itemises the model; sizing only picks the number it needs.
    parts = count_params(config)
    return parts["non_embedding" if non_embedding else "total"]


def attention_flops_per_token(
    config: GPTConfig, seq_len: int | None = None, causal: bool = True, training: bool = True
) -> float:
    """FLOPs per token of the attention core: the scores Q·Kᵀ and the weighted sum over V.

    Each is a matmul of a query row against T keys or values, d_attn wide, at 2 FLOPs per
    multiply-add: 4*n_layers*T*d_attn forward for the full window (PaLM's appendix B, nanoGPT's
    12*L*H*Q*T with the backward). A causal mask leaves each query T/2 keys on average: half that,
    2*n_layers*T*d_attn (Kaplan et al.'s 2*n_layer*n_ctx*d_attn, llm.c's 6*L*C*T with the backward).
    Example: attention_flops_per_token(PRESETS["gpt2"], training=False) -> 2 * 12 * 1024 * 768.
    """
    c = config
    seq_len = c.context_length if seq_len is None else seq_len
    # q·k and weights·v are n_heads * d_head wide: d_model, unless head_dim is set apart from it
    full = 2 * 2 * c.n_layers * seq_len * c.n_heads * c.d_head  # two matmuls, 2 FLOPs per MAC
    forward = full / 2 if causal else full
    return float(3 * forward if training else forward)  # the backward costs twice the forward


def flops_per_token(
    config: GPTConfig, seq_len: int | None = None, training: bool = True, causal: bool = True
) -> float:
    """Matmul FLOPs per token: 2N plus the attention core forward, times 3 with the backward.

    N counts every weight a token is multiplied by: the non-embedding parameters plus the output
    head (the head multiplies even when tied; an embedding lookup multiplies nothing). The attention
    term is `attention_flops_per_token`: causal (Kaplan's and llm.c's convention) by default,
    causal=False for PaLM's full-window count.
    Example: flops_per_token(PRESETS["gpt2"]) -> 6 * 123,653,376 + 6 * 12 * 1024 * 768 ~ 7.98e8.
    """
    c = config
    n_matmul = param_count(c, non_embedding=True) + c.vocab_size * c.d_model
    weights = 6 * n_matmul if training else 2 * n_matmul
    return float(weights + attention_flops_per_token(c, seq_len, causal, training))


def training_flops(n_params: float, n_tokens: float) -> float:
    """C = 6 N D: training compute of N parameters on D tokens.

    Per parameter and token: 2 FLOPs forward, 4 backward.
    """
    return 6.0 * n_params * n_tokens


def mfu(
    tokens_per_second: float, flops_per_token: float, peak_flops: float, n_gpus: int = 1
) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware's peak (PaLM's MFU)."""
    if peak_flops <= 0 or n_gpus < 1:
        raise ValueError(f"peak_flops must be positive and n_gpus >= 1, got {peak_flops} and "
                         f"{n_gpus}")
    return tokens_per_second * flops_per_token / (peak_flops * n_gpus)


# --- hardware ----------------------------------------------------------------------------------


class GPU(NamedTuple):
    """One accelerator: memory in bytes, dense 16-bit peak FLOP/s, an on-demand price, the dtype.

    The price is a snapshot; prices move. `dtype` names the 16-bit format of the peak.
    """

    name: str
    memory: int
    peak_flops: float
    usd_per_hour: float
    dtype: str = "bf16"


# Dense (not 2:4 sparse) 16-bit tensor-core peaks from the vendors' data sheets; prices are
# early-2026 third-party cloud snapshots (they move). The T4 (Turing)
# has no bf16 tensor cores: its 65 TFLOP/s is fp16, so it trains in fp16 with loss scaling.
GPUS: dict[str, GPU] = {
    g.name: g for g in [
        GPU("H100-SXM-80GB", 80 * 10**9, 989e12, 2.50),
        GPU("H200-141GB", 141 * 10**9, 989e12, 3.50),
        GPU("A100-80GB", 80 * 10**9, 312e12, 1.80),
        GPU("A100-40GB", 40 * 10**9, 312e12, 1.40),
        GPU("RTX-4090-24GB", 24 * 10**9, 165e12, 0.40),
        GPU("T4-16GB", 16 * 10**9, 65e12, 0.35, "fp16"),
    ]
}


def _gpu(gpu: GPU | str) -> GPU:
    if isinstance(gpu, GPU):
        return gpu
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; choose one of {sorted(GPUS)} or pass a GPU(...)")
    return GPUS[gpu]


# --- memory ------------------------------------------------------------------------------------

# Bytes per parameter as (weights, gradients, optimizer states) for AdamW.
BYTES_PER_PARAM: dict[str, tuple[int, int, int]] = {
    "mixed": (2, 2, 12),     # ZeRO paper: bf16 weights and grads; fp32 master copy, m and v = 16
    "mixed-hf": (6, 4, 8),   # Hugging Face docs: fp32 + bf16 weights, fp32 grads, m and v = 18
    "fp32": (4, 4, 8),       # plain fp32 training = 16
}


def activation_bytes_per_layer(
    seq_len: int, batch_size: int, d_model: int, n_heads: int, recompute: str = "none",
    value_bytes: int = 2, mask_bytes: int = 1, dropout: bool = True,
) -> int:
    """Activations one transformer layer keeps for the backward (Korthikanti et al. 2022).

    The layer is a GPT-2 block.

    recompute="none": s*b*h*(34 + 5*a*s/h) with 16-bit values and 1-byte dropout masks; "selective"
    recomputes the attention core and keeps 34*s*b*h; "full" keeps only the layer's input, 2*s*b*h.
    value_bytes and dropout let the formula describe fp32 or dropout-free runs too.
    Example: activation_bytes_per_layer(1, 1, 1, 1) -> 39 (= 34 + 5).
    """
    s, b, h, a = seq_len, batch_size, d_model, n_heads
    if recompute == "full":
        return value_bytes * s * b * h
    m = mask_bytes if dropout else 0
    # Per s*b*h: 16 values (attention 5, MLP 9 of which 8 are the 4h-wide GELU input and output, 2
    # norm inputs) and 2 dropout masks. Per a*s*s*b: softmax output, its dropout
    # mask, the dropped-out copy.
    linear = s * b * h * (16 * value_bytes + 2 * m)
    if recompute == "selective":
        return linear
    if recompute != "none":
        raise ValueError(f"recompute must be 'none', 'selective' or 'full', got {recompute!r}")
    quadratic = a * s * s * b * ((2 * value_bytes + m) if dropout else value_bytes)
    return linear + quadratic


def logits_bytes(
    batch_size: int, seq_len: int, vocab_size: int, value_bytes: int = 4, grad: bool = True
) -> int:
    """Bytes of the loss's log-probabilities, b*s*V values, and of their gradient in the backward.

    Cross-entropy upcasts the logits and saves the fp32 log-softmax for the backward, which then
    writes a gradient of the same shape: at the loss's backward both are alive.
    Example: logits_bytes(4, 4096, 128256, grad=False) -> 8,405,385,216 (Llama-3.2-1B, 8.4 GB).
    """
    if min(batch_size, seq_len, vocab_size, value_bytes) < 1:
        raise ValueError(f"batch_size, seq_len, vocab_size and value_bytes must be >= 1, got "
                         f"{batch_size}, {seq_len}, {vocab_size} and {value_bytes}")
    return batch_size * seq_len * vocab_size * value_bytes * (2 if grad else 1)


def zero_bytes_per_param(stage: int, world: int, precision: str = "mixed") -> float:
    """Bytes per parameter on each of `world` GPUs under ZeRO `stage` (Rajbhandari et al. 2020).

    Stage 1 shards the optimizer states, stage 2 also the gradients, stage 3 also the weights.
    With mixed-precision AdamW (2 + 2 + 12): 16, 4 + 12/W, 2 + 14/W and 16/W for stages 0 to 3.
    Example: zero_bytes_per_param(2, 8) -> 3.75.
    """
    if stage not in (0, 1, 2, 3) or world < 1:
        raise ValueError(f"stage must be 0, 1, 2 or 3 and world >= 1, got {stage} and {world}")
    if precision not in BYTES_PER_PARAM:
        raise ValueError(f"precision must be one of {sorted(BYTES_PER_PARAM)}, got {precision!r}")
    w, g, o = BYTES_PER_PARAM[precision]
    return (w / world if stage >= 3 else w) + (g / world if stage >= 2 else g) + (
        o / world if stage >= 1 else o)


class MemoryEstimate(NamedTuple):
    """Training memory in bytes, by kind; `total` adds them up, `states` the first three."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int = 0

    @property
    def states(self) -> int:
        """Weights, gradients and optimizer states: what sharding (ZeRO, FSDP) divides."""
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return self.states + self.activations + self.logits

    def gib(self) -> dict[str, float]:
        """Each part and the total in GiB, for printing."""
        return {k: v / GIB for k, v in {**self._asdict(), "total": self.total}.items()}


def training_memory(
    config: GPTConfig, batch_size: int = 1, seq_len: int | None = None, recompute: str = "none",
    precision: str = "mixed", n_shards: int = 1, zero_stage: int = 3, logits: bool = True,
) -> MemoryEstimate:
    """Bytes to train `config` with AdamW on one device.

    States (BYTES_PER_PARAM) plus activations of all layers plus the loss's fp32 log-probs and
    their gradient (`logits_bytes`; logits=False leaves them out, as Korthikanti et al. do).
    n_shards > 1 splits the states over that many GPUs as ZeRO `zero_stage` does (3: all of them,
    as FSDP does; 2: gradients and optimizer; 1: optimizer only); activations are per device.
    Example: training_memory(PRESETS["llama2-7b"]).gib()["optimizer"] -> 75.3 (12 bytes x 6.74e9).
    """
    if precision not in BYTES_PER_PARAM:
        raise ValueError(f"precision must be one of {sorted(BYTES_PER_PARAM)}, got {precision!r}")
    if batch_size < 1 or n_shards < 1 or zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"batch_size and n_shards must be >= 1 and zero_stage 0-3, got "
                         f"{batch_size}, {n_shards} and {zero_stage}")
    seq_len = config.context_length if seq_len is None else seq_len
    n = param_count(config)
    w, g, o = BYTES_PER_PARAM[precision]
    # stage k shards the last k of (weights, gradients, optimizer) counted from the optimizer
    shards = [n_shards if zero_stage >= k else 1 for k in (3, 2, 1)]
    w, g, o = (math.ceil(n * b / k) for b, k in zip((w, g, o), shards))
    act = config.n_layers * activation_bytes_per_layer(
        seq_len, batch_size, config.d_model, config.n_heads, recompute, dropout=config.dropout > 0
    )
    out = logits_bytes(batch_size, seq_len, config.vocab_size) if logits else 0
    return MemoryEstimate(w, g, o, act, out)


def inference_memory(
    config: GPTConfig, batch_size: int = 1, seq_len: int | None = None, value_bytes: int = 2
) -> int:
    """Bytes to serve `config`: 16-bit weights plus a full KV cache (chapter 5's kv_cache_bytes)."""
    seq_len = config.context_length if seq_len is None else seq_len
    cache = kv_cache_bytes(
        config.n_layers, config.n_kv_heads, config.d_head, seq_len, batch_size, value_bytes
    )
    return param_count(config) * value_bytes + cache


def fits(
    config: GPTConfig, gpu: GPU | str, batch_size: int = 1, seq_len: int | None = None,
    recompute: str = "full", precision: str = "mixed", n_shards: int = 1, headroom: float = 0.9,
) -> bool:
    """Does training `config` fit on `gpu`?

    Uses `headroom` of its memory: the CUDA context and fragmentation take the rest.
    """
    est = training_memory(config, batch_size, seq_len, recompute, precision, n_shards)
    return est.total <= headroom * _gpu(gpu).memory


def gpus_to_hold(n_bytes: float, gpu: GPU | str, headroom: float = 0.9) -> int:
    """Fewest GPUs whose memory (times `headroom`) holds `n_bytes`: a ceiling, never a rounding.

    Example: gpus_to_hold(16 * 70.55e9, "H100-SXM-80GB", headroom=1.0) -> 15 (14.1 rounds up).
    """
    if n_bytes < 0 or not 0 < headroom <= 1:
        raise ValueError(f"need n_bytes >= 0 and 0 < headroom <= 1, got {n_bytes} and {headroom}")
    return max(1, math.ceil(n_bytes / (headroom * _gpu(gpu).memory)))


def gpus_needed(
    config: GPTConfig, gpu: GPU | str, batch_size: int = 1, seq_len: int | None = None,
    recompute: str = "full", precision: str = "mixed", headroom: float = 0.9,
) -> int:
    """Fewest GPUs whose memory holds the sharded states plus a micro-batch's activations each.

    The micro-batch's activations include the loss's log-probs and their gradient.
    """
    g = _gpu(gpu)
    one = training_memory(config, batch_size, seq_len, recompute, precision)
    per_device = one.activations + one.logits
    room = headroom * g.memory - per_device
    if room <= 0:
        raise ValueError(f"one micro-batch of activations and logits ({per_device / GIB:.1f} GiB) "
                         f"alone overflows {g.name}; lower batch_size or seq_len, or recompute")
    return max(1, math.ceil(one.states / room))


# --- measuring what autograd keeps ---------------------------------------------------------------


def saved_activation_bytes(fn: Callable[..., Any] | nn.Module, *inputs: Any) -> int:
    """Bytes of the tensors autograd saves for the backward while running fn(*inputs).

    Parameters excluded.

    Each storage is counted once, so a tensor saved by two ops
    (or a view of it) is not double-counted.
    Example: saved_activation_bytes(torch.nn.Linear(4, 4),
    torch.randn(2, 4)) -> 32 (the input, fp32).
    """
    params = fn.parameters() if isinstance(fn, nn.Module) else ()
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    del out
    return sum(seen.values())
