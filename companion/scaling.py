"""Scaling laws and budgets: compute-optimal N and D, dollars to FLOPs to a model, a blueprint.

The blueprint holds a model's hyperparameters.

Introduced in chapter 8. Parameter, FLOP and memory arithmetic come from `companion.sizing`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .model import GPTConfig
from .sizing import GPU, GPUS, _gpu, flops_per_token, gpus_needed, param_count

__all__ = [
    "LossFit", "HOFFMANN", "EPOCH", "loss", "optimal_allocation", "chinchilla_optimal",
    "CHINCHILLA_TABLE3", "isoflop", "budget_flops", "Plan", "plan_budget", "describe_plan", "human",
    "Blueprint", "blueprint", "GPT3_TABLE", "deepseek_flops_per_token", "deepseek_batch_lr",
]


class LossFit(NamedTuple):
    """L(N, D) = E + A / N**alpha + B / D**beta.

    Irreducible loss, then the finite-model and finite-data terms.
    """

    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float


HOFFMANN = LossFit("Hoffmann et al. 2022, Approach 3", 1.69, 406.4, 410.7, 0.34, 0.28)
EPOCH = LossFit("Besiroglu et al. 2024 (Epoch AI refit)", 1.8172, 482.01, 2085.43, 0.3478, 0.3658)

# Chinchilla's Table 3 (Approach 1's projection): (parameters, FLOPs, tokens).
CHINCHILLA_TABLE3 = [
    (400e6, 1.92e19, 8.0e9), (1e9, 1.21e20, 20.2e9), (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12), (175e9, 3.85e24, 3.7e12), (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12), (1e12, 1.27e26, 21.2e12), (10e12, 1.30e28, 216.2e12),
]

# GPT-3, Table 2.1 (Brown et al. 2020): name -> (params, layers, d_model, heads,
# batch tokens, learning rate).
GPT3_TABLE = {
    "Small": (125e6, 12, 768, 12, 0.5e6, 6.0e-4), "Medium": (350e6, 24, 1024, 16, 0.5e6, 3.0e-4),
    "Large": (760e6, 24, 1536, 16, 0.5e6, 2.5e-4), "XL": (1.3e9, 24, 2048, 24, 1e6, 2.0e-4),
    "2.7B": (2.7e9, 32, 2560, 32, 1e6, 1.6e-4), "6.7B": (6.7e9, 32, 4096, 32, 2e6, 1.2e-4),
    "13B": (13.0e9, 40, 5140, 40, 2e6, 1.0e-4), "175B": (175.0e9, 96, 12288, 96, 3.2e6, 0.6e-4),
}


def loss(fit: LossFit, n_params, n_tokens):
    """The fitted loss (nats per token) of N parameters trained on D tokens.

    Works on NumPy arrays.
    """
    return fit.E + fit.A / np.power(n_params, fit.alpha) + fit.B / np.power(n_tokens, fit.beta)


def optimal_allocation(fit: LossFit, flops: float) -> tuple[float, float]:
    """(N, D) minimising the fitted loss subject to 6 N D = C (Hoffmann et al., eq. 4).

    N_opt = G (C/6)^a with a = beta / (alpha + beta) and G =
    (alpha A / (beta B))^(1 / (alpha + beta)); D = C / (6 N).
    """
    if flops <= 0:
        raise ValueError(f"flops must be positive, got {flops}")
    s = fit.alpha + fit.beta
    g = (fit.alpha * fit.A / (fit.beta * fit.B)) ** (1 / s)
    n = g * (flops / 6) ** (fit.beta / s)
    return n, flops / (6 * n)


def chinchilla_optimal(flops: float, tokens_per_param: float = 20.0) -> tuple[float, float]:
    """(N, D) with D = r N and 6 N D = C, so N = sqrt(C / (6 r)): the 20-tokens-per-parameter rule.

    Example: chinchilla_optimal(5.88e23) -> (7.0e10, 1.4e12), Chinchilla itself.
    """
    if flops <= 0 or tokens_per_param <= 0:
        raise ValueError(f"flops and tokens_per_param must be positive, got {flops} and "
                         f"{tokens_per_param}")
    n = math.sqrt(flops / (6 * tokens_per_param))
    return n, tokens_per_param * n


def isoflop(fit: LossFit, flops: float, n_params) -> np.ndarray:
    """Fitted loss along one IsoFLOP curve: each N gets the D = C / (6 N) that spends the budget."""
    n = np.asarray(n_params, dtype=float)
    return loss(fit, n, flops / (6 * n))


# --- dollars to a model -------------------------------------------------------------------------


def budget_flops(dollars: float, usd_per_gpu_hour: float, peak_flops: float, mfu: float) -> float:
    """FLOPs a budget buys: GPU-hours = dollars / price, each delivering peak x MFU for 3,600 s."""
    if min(dollars, usd_per_gpu_hour, peak_flops) <= 0 or not 0 < mfu <= 1:
        raise ValueError(f"need positive dollars, price and peak, and 0 < mfu <= 1; got {dollars}, "
                         f"{usd_per_gpu_hour}, {peak_flops}, {mfu}")
    return dollars / usd_per_gpu_hour * 3600 * peak_flops * mfu


class Plan(NamedTuple):
    """What a budget buys: compute, a compute-optimal model and its data, and the time it takes."""

    dollars: float
    gpu: str
    mfu: float
    flops: float
    n_params: float
    n_tokens: float
    gpu_hours: float
    n_gpus: int
    wall_hours: float
    train_gib: float  # AdamW mixed-precision states, 16 bytes/parameter, before activations


def plan_budget(
    dollars: float, gpu: GPU | str = "H100-SXM-80GB", mfu: float = 0.4,
    tokens_per_param: float = 20.0, n_gpus: int = 1, usd_per_hour: float | None = None
) -> Plan:
    """Budget -> FLOPs -> compute-optimal N and D (D = r N) -> GPU-hours and wall time on n_gpus.

    Example: plan_budget(1e6).n_params -> 6.9e10 (a Chinchilla) at $2.5/H100-hour and 40% MFU.
    """
    g = _gpu(gpu)
    price = g.usd_per_hour if usd_per_hour is None else usd_per_hour
    c = budget_flops(dollars, price, g.peak_flops, mfu)
    n, d = chinchilla_optimal(c, tokens_per_param)
    hours = dollars / price
    return Plan(dollars, g.name, mfu, c, n, d, hours, n_gpus, hours / n_gpus, 16 * n / 2**30)


def human(x: float) -> str:
    """A count with a suffix, three significant digits: human(6.89e10) -> '68.9B'."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def describe_plan(plan: Plan) -> str:
    """A plan in words: compute, model, data, time, and the memory its training states need."""
    gpu = GPUS[plan.gpu]
    states_gpus = math.ceil(plan.train_gib * 2**30 / (0.9 * gpu.memory))
    # the price the plan was made at (plan_budget may override the GPU's listed one)
    price = plan.dollars / plan.gpu_hours
    return "\n".join([
        f"${plan.dollars:,.0f} at ${price:g}/h on {plan.gpu}, MFU {plan.mfu:.0%} -> "
        f"{plan.flops:.2e} FLOPs",
        f"compute-optimal model: {human(plan.n_params)} parameters on {human(plan.n_tokens)} "
        f"tokens ({plan.n_tokens / plan.n_params:.0f} tokens/parameter)",
        f"time: {plan.gpu_hours:,.0f} GPU-hours = {plan.wall_hours / 24:,.1f} days on "
        f"{plan.n_gpus} GPU(s)",
        f"memory: {plan.train_gib:,.1f} GiB of weights, gradients and AdamW states (16 B/param) "
        f"-> at least {states_gpus} GPU(s) of {gpu.memory / 1e9:.0f} GB before activations",
    ])


# --- the hyperparameter blueprint ---------------------------------------------------------------


def deepseek_flops_per_token(n_layers: int, d_model: int, seq_len: int) -> float:
    """DeepSeek LLM's compute measure M = 72 L d^2 + 6 L d s: non-embedding FLOPs per token.

    Their fits use C = M * D, not 6ND: M counts attention's score and value matmuls (6 L d s)
    and leaves out the vocabulary, so it differs from 6N for small and for GQA/SwiGLU models.
    Example: deepseek_flops_per_token(1, 1, 1) -> 78.0.
    """
    return 72.0 * n_layers * d_model**2 + 6.0 * n_layers * d_model * seq_len


def deepseek_batch_lr(flops: float) -> tuple[float, float]:
    """DeepSeek LLM's fits (arXiv 2401.02954): B_opt = 0.2920 C^0.3271 tokens, lr 0.3118 C^-0.125.

    C is their M * D. Example: deepseek_batch_lr(1e20)[0] -> about 1.0e6 tokens.
    """
    if flops <= 0:
        raise ValueError(f"flops must be positive, got {flops}")
    return 0.2920 * flops**0.3271, 0.3118 * flops**-0.1250


class Blueprint(NamedTuple):
    """A model size turned into an architecture, a recipe and a bill."""

    config: GPTConfig
    n_params: int
    batch_tokens: int
    lr: float
    warmup_steps: int
    steps: int
    n_tokens: float
    flops: float
    gpu_hours: float
    cost: float
    min_gpus: int


def _head_size(d_model: float) -> int:
    """The head-size rule: 32 below d_model 384, 64 up to 2048, 128 above.

    Example: _head_size(2048) -> 64
    """
    return 32 if d_model < 384 else 64 if d_model <= 2048 else 128


def _shape(target: float, vocab_size: int, tie: bool) -> tuple[int, int, int, int]:
    """(d_model, n_layers, head size, KV heads) for about `target` total parameters."""
    # d_model / n_layers aimed at: GPT-3's small models ~64, 7B and up ~128
    ratio = 64 if target < 1e9 else 128
    # grouped-query attention with 8 KV heads from ~1B up (Llama 3.2 1B, Llama 3)
    gqa = target >= 1e9
    emb = vocab_size * (1 if tie else 2)

    def layers_for(d_model: int, head: int) -> int:
        n_kv = 8 if gqa else d_model // head
        # SwiGLU at 8/3 d, rounded up to 256 (Llama's multiple_of)
        d_ff = 256 * math.ceil(8 * d_model / 3 / 256)
        per_layer = 2 * d_model**2 + 2 * d_model * n_kv * head + 3 * d_model * d_ff + 2 * d_model
        return max(1, round((target - emb * d_model) / per_layer))

    d = (ratio * target / 12) ** (1 / 3)
    for _ in range(20):  # embeddings eat into the budget and depend on d: iterate to a fixed point
        body = target - emb * d
        if body <= 0:
            raise ValueError(
                f"{target:.3g} parameters cannot hold a {vocab_size}-token "
                f"vocabulary's embeddings at d_model={d:.0f}; use a smaller vocab_size"
            )
        d = (ratio * body / 12) ** (1 / 3)
    # d_model must be a whole number of heads (of 8 heads with GQA), with the head size the rule
    # gives for that d_model; among such widths near d, keep the one whose depth, filling the
    # budget, puts d_model / n_layers closest to the ratio aimed at
    candidates = []
    for head in (32, 64, 128):
        step = head * (8 if gqa else 1)
        for k in range(max(1, math.floor(d / step) - 1), math.ceil(d / step) + 2):
            d_model = k * step
            if _head_size(d_model) == head and target - emb * d_model > 0:
                candidates.append((abs(math.log(d_model / layers_for(d_model, head) / ratio)),
                                   d_model, head))
    if not candidates:
        raise ValueError(f"no width fits {target:.3g} parameters with a {vocab_size}-token "
                         "vocabulary; use a smaller vocab_size")
    _, d_model, head = min(candidates)
    n_kv = 8 if gqa else d_model // head
    return d_model, layers_for(d_model, head), head, n_kv


def blueprint(
    n_params: float, vocab_size: int = 32000, tokens_per_param: float = 20.0,
    context_length: int | None = None, gpu: GPU | str = "H100-SXM-80GB", mfu: float = 0.4,
    tie_embeddings: bool = False
) -> Blueprint:
    """A Llama-style architecture and AdamW recipe for about `n_params` parameters, with its cost.

    Rules: aspect ratio d_model/n_layers aimed at 64 below 1B and 128 above (the closest that a
    whole number of heads allows); head size 32/64/128 by the final width (_head_size); 8
    KV heads from 1B; SwiGLU at 8/3 d_model; context growing with size; batch and peak learning rate
    from DeepSeek LLM's compute fits (`deepseek_batch_lr`, with C = M D); warmup
    1% of steps in [100, 2000].
    Example: blueprint(7e9).config.d_model -> 4096 (with 38 layers: GQA leaves
    more parameters for depth).
    """
    if n_params <= 0:
        raise ValueError(f"n_params must be positive, got {n_params}")
    d_model, n_layers, head, n_kv = _shape(n_params, vocab_size, tie_embeddings)
    if context_length is None:
        context_length = (
            256 if n_params < 5e7 else 1024 if n_params < 3e8 else 2048 if n_params < 3e9 else 4096
        )
    config = GPTConfig(vocab_size=vocab_size, context_length=context_length, d_model=d_model,
                       n_layers=n_layers, n_heads=d_model // head, n_kv_heads=n_kv,
                       d_ff=256 * math.ceil(8 * d_model / 3 / 256), norm="rmsnorm", mlp="swiglu",
                       pos="rope", bias=False, tie_embeddings=tie_embeddings)
    n = param_count(config)
    tokens = tokens_per_param * n
    flops = flops_per_token(config) * tokens
    # the fits were made against DeepSeek's C = M * D, M non-embedding FLOPs per token
    c_ds = deepseek_flops_per_token(n_layers, d_model, context_length) * tokens
    batch_opt, lr = deepseek_batch_lr(c_ds)
    # whole sequences, a power of two
    seqs = max(1, 2 ** round(math.log2(batch_opt / context_length)))
    batch = seqs * context_length
    steps = max(1, math.ceil(tokens / batch))
    warmup = min(2000, max(100, round(0.01 * steps)))
    g = _gpu(gpu)
    gpu_hours = flops / (g.peak_flops * mfu) / 3600
    return Blueprint(config, n, batch, lr, min(warmup, steps), steps, tokens, flops, gpu_hours,
                     gpu_hours * g.usd_per_hour, gpus_needed(config, g, batch_size=1))
