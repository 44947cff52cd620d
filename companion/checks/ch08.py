"""Self-checks for chapter 8's exercises.

Counting parameters, training memory, a compute-optimal model for a budget, memory per GPU under
ZeRO, attention FLOPs.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from ..model import GPTConfig
from ..scaling import budget_flops, chinchilla_optimal
from ..sizing import (PRESETS, activation_bytes_per_layer, attention_flops_per_token, param_count,
                      training_memory)
from ._core import as_scalar, call, fail, passed

__all__ = ["check_8_1", "check_8_2", "check_8_3", "check_8_4", "check_8_5"]


def _close(got: float, want: float, rel: float = 1e-6) -> bool:
    return math.isclose(got, want, rel_tol=rel)


def check_8_1(llama_params: Callable[..., int]) -> None:
    """llama_params(vocab_size, d_model, n_layers, n_heads, n_kv_heads, d_ff, tie_embeddings).

    Returns the total number of parameters.
    """
    ex = "8.1"
    cases = [
        (
            "a tiny hand-worked model",
            GPTConfig.llama(vocab_size=10, context_length=8, d_model=4, n_layers=1, n_heads=2,
                            n_kv_heads=1, d_ff=8),
        ),
        ("Llama-2-7B", PRESETS["llama2-7b"]),
        ("Llama-3-8B (GQA)", PRESETS["llama3-8b"]),
        ("Llama-3.2-1B (tied head)", PRESETS["llama3.2-1b"]),
        ("Llama-3-70B", PRESETS["llama3-70b"]),
    ]
    for name, c in cases:
        got = as_scalar(
            ex,
            call(ex, llama_params, c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads,
                 c.d_ff, c.tie_embeddings),
            "the parameter count",
        )
        want = param_count(c)
        if got == want:
            continue
        d, L, V, kv = c.d_model, c.n_layers, c.vocab_size, c.n_kv_heads * c.d_head
        diff = got - want
        if diff == 2 * L * d * (d - kv) and kv != d:
            fail(ex, f"{name}: {got:,} counts K and V as d_model x d_model. Under grouped-query "
                     f"attention they are d_model x (n_kv_heads * d_head) = {d} x {kv}.")
        if diff == -(2 * L + 1) * d:
            fail(ex, f"{name}: {got:,} is short by {-diff:,} = (2 n_layers + 1) * d_model: the "
                     "RMSNorm weights (two per block and a final one).")
        if diff == -2 * L * d:
            fail(ex, f"{name}: short by 2 * n_layers * d_model: each block has two RMSNorms.")
        if diff == -d:
            fail(ex, f"{name}: short by d_model: the final RMSNorm before the head.")
        if diff == V * d and c.tie_embeddings:
            fail(ex, f"{name}: {got:,} counts the head separately, but it is tied: it reuses the "
                     "embedding matrix.")
        if diff == -V * d and not c.tie_embeddings:
            fail(ex, f"{name}: short by vocab_size * d_model = {V * d:,}: an untied output head is "
                     "its own matrix.")
        if diff == -V * d and c.tie_embeddings:
            fail(ex, f"{name}: short by vocab_size * d_model = {V * d:,}: a tied head shares the "
                     "embedding matrix, so count that matrix once, not zero times.")
        if diff == -L * d * c.d_ff:
            fail(ex, f"{name}: short by n_layers * d_model * d_ff: SwiGLU has three matrices "
                     "(gate, up, down), not two.")
        fail(
            ex,
            f"{name}: expected {want:,} parameters, got {got:,} (off by {diff:+,}). Per block: q "
            "and o are d x d, k and v are d x (n_kv_heads * d_head), the MLP 3 x d x d_ff, plus "
            "two norms of d.",
        )
    passed(ex, "exact for a tiny model, Llama-2-7B, Llama-3-8B, the tied Llama-3.2-1B and "
               "Llama-3-70B.")


def _train_bytes(
    n: int, layers: int, d: int, heads: int, s: int, b: int, full: bool, state: int = 16
) -> float:
    return state * n + layers * activation_bytes_per_layer(
        s, b, d, heads, "full" if full else "none"
    )


def check_8_2(train_bytes: Callable[..., float]) -> None:
    """train_bytes(n_params, n_layers, d_model, n_heads, seq_len, batch_size, full_recompute).

    Returns bytes.
    """
    ex = "8.2"
    c = PRESETS["llama2-7b"]
    cases = [
        ("the all-ones case", (1, 1, 1, 1, 1, 1)),
        ("Llama-2-7B, s=4096, b=1", (param_count(c), c.n_layers, c.d_model, c.n_heads, 4096, 1)),
        ("Llama-2-7B, s=2048, b=4", (param_count(c), c.n_layers, c.d_model, c.n_heads, 2048, 4)),
    ]
    for name, args in cases:
        for full in (False, True):
            got = as_scalar(ex, call(ex, train_bytes, *args, full), "the byte count")
            want = _train_bytes(*args, full)
            if _close(got, want):
                continue
            n, layers, d, heads, s, b = args
            act = want - 16 * n
            # with a single parameter (the all-ones case) a byte per parameter and a byte of
            # activations look alike: read the bytes per parameter off a real model
            real = cases[1][1]
            probe = got if n > 1 else as_scalar(ex, call(ex, train_bytes, *real, full),
                                                "the byte count")
            n_real, real_act = real[0], _train_bytes(*real, full) - 16 * real[0]
            for k in (2, 4, 6, 8, 12, 14, 18):
                if _close(probe, k * n_real + real_act if n == 1 else k * n + act):
                    fail(ex, f"{name}: your states are {k} bytes per parameter. Mixed-precision "
                             "AdamW keeps 16: 2 (bf16 weights) + 2 (gradients) + 12 "
                             "(fp32 master copy, m and v).")
            if _close(got, 16 * n + act / layers) and layers > 1:
                fail(ex, f"{name}: the activations are for one layer; multiply by n_layers.")
            if _close(got, 16 * n):
                fail(ex, f"{name}: you left out the activations.")
            if full and _close(got, _train_bytes(*args, False)):
                fail(ex, f"{name}: with full_recompute=True each layer keeps only its input, "
                         "2*s*b*h bytes.")
            for k in (1, 4, 34):
                if full and _close(got, 16 * n + layers * k * s * b * d):
                    fail(ex, f"{name}: with full_recompute=True each layer keeps {k}*s*b*h bytes "
                             "in your count; it keeps only its 16-bit input, 2*s*b*h bytes.")
            if not full and _close(got, 16 * n + layers * 34 * s * b * d):
                fail(ex, f"{name}: you dropped the attention matrix's term, 5*a*s/h inside the "
                         "bracket.")
            fail(ex, f"{name} (full_recompute={full}): expected {want:,.0f} bytes, got {got:,.0f}. "
                     "Bytes = 16*N + n_layers * s*b*h*(34 + 5*a*s/h), or 16*N + n_layers * 2*s*b*h "
                     "with full recompute.")
    passed(ex, "16 bytes per parameter plus Korthikanti's activations, with and without full "
               "recomputation, from the all-ones case up to Llama-2-7B.")


def check_8_3(compute_optimal: Callable[..., tuple[float, float]]) -> None:
    """compute_optimal(dollars, usd_per_gpu_hour, peak_flops, mfu, tokens_per_param).

    Returns (n_params, n_tokens).
    """
    ex = "8.3"
    cases = [(1e6, 2.5, 989e12, 0.4, 20.0), (100, 2.5, 989e12, 0.4, 20.0),
             (5e4, 1.8, 312e12, 0.35, 100.0)]
    for dollars, price, peak, u, r in cases:
        got = call(ex, compute_optimal, dollars, price, peak, u, r)
        if not (isinstance(got, tuple) and len(got) == 2):
            fail(ex, "return a pair (n_params, n_tokens)")
        n, d = (as_scalar(ex, v, what) for v, what in zip(got, ("n_params", "n_tokens")))
        flops = budget_flops(dollars, price, peak, u)
        wn, wd = chinchilla_optimal(flops, r)
        where = f"${dollars:,.0f} at ${price}/h, {peak:.3g} FLOP/s, MFU {u}, {r:g} tokens/param"
        if _close(n, wn, 1e-3) and _close(d, wd, 1e-3):
            continue
        if _close(n, wd, 1e-3) and _close(d, wn, 1e-3):
            fail(ex, f"{where}: (n_params, n_tokens) are swapped; the model is the smaller number.")
        if _close(n * 60, wn, 1e-3):
            fail(ex, f"{where}: N is 60x too small: sqrt(3600). A GPU-hour is 3,600 seconds of "
                     "peak FLOP/s.")
        if _close(n * math.sqrt(u), wn, 1e-3):
            fail(ex, f"{where}: N is too big by 1/sqrt(mfu): the GPU delivers only mfu x its peak.")
        if _close(n, wn * math.sqrt(6), 1e-3) or _close(n, wn * math.sqrt(3), 1e-3):
            fail(ex, f"{where}: training costs C = 6 N D FLOPs; check the 6.")
        if _close(n, wn, 1e-3) and not _close(d, wd, 1e-3):
            fail(ex, f"{where}: N is right, but D should be tokens_per_param x N = {wd:.3e}, got "
                     f"{d:.3e}.")
        fail(ex, f"{where}: expected N = {wn:.3e}, D = {wd:.3e}; got N = {n:.3e}, D = {d:.3e}. "
                 "FLOPs = dollars / price x 3600 x peak x mfu; then 6 N (r N) = C.")
    passed(ex, "$1M gives a 69B model on 1.4T tokens, $100 a 0.69B one, and other prices, GPUs and "
               "ratios agree too.")


def check_8_4(zero_gpu_bytes: Callable[..., float]) -> None:
    """zero_gpu_bytes(n_params, n_layers, d_model, vocab_size, seq_len, batch_size, stage, world).

    Returns the bytes on each GPU: ZeRO-sharded states + full-recompute activations + logits.
    """
    ex = "8.4"
    for name, b, s in (("llama3.2-1b", 4, 4096), ("llama2-7b", 1, 4096)):
        c = PRESETS[name]
        n = param_count(c)
        for world in (1, 8):
            for stage in (0, 1, 2, 3):
                args = (n, c.n_layers, c.d_model, c.vocab_size, s, b, stage, world)
                got = as_scalar(ex, call(ex, zero_gpu_bytes, *args), "the byte count")
                est = training_memory(c, b, s, "full", n_shards=world, zero_stage=stage)
                if _close(got, est.total):
                    continue
                where = f"{name}, b={b}, s={s}, stage {stage}, W={world}"
                rest = est.activations + est.logits
                others = {k: training_memory(c, b, s, "full", n_shards=world, zero_stage=k).states
                          for k in range(4) if k != stage}
                for k, states in others.items():
                    if _close(got, states + rest):
                        fail(ex, f"{where}: your states are those of stage {k}. Stage 1 shards "
                                 "the optimizer states only, stage 2 the gradients too, stage 3 "
                                 "the weights as well.")
                if _close(got, est.states + est.activations):
                    fail(ex, f"{where}: you left out the loss's fp32 log-probs and their gradient, "
                             f"{est.logits:,} bytes.")
                if _close(got, est.states + est.activations + est.logits / 2):
                    fail(ex, f"{where}: the log-probs are there but not their gradient, which the "
                             "backward writes at the same size.")
                if _close(got, est.states + est.activations + est.logits / 4):
                    fail(ex, f"{where}: the loss works in fp32: 4 bytes per log-prob and per "
                             "gradient, not 2.")
                if _close(got, est.states + est.logits):
                    fail(ex, f"{where}: you left out the activations, 2*s*b*h bytes per layer "
                             "with full recomputation.")
                if _close(got, est.states + est.activations * 17 + est.logits):
                    fail(ex, f"{where}: with full recomputation each layer keeps only its input, "
                             "2*s*b*h bytes, not 34*s*b*h.")
                fail(ex, f"{where}: expected {est.total:,.0f} bytes, got {got:,.0f}: states "
                         f"{est.states:,}, activations {est.activations:,}, logits {est.logits:,}.")
    passed(ex, "states by ZeRO stage on 1 and 8 GPUs, plus activations and fp32 logits with their "
               "gradient, match companion.sizing.training_memory for Llama-3.2-1B and Llama-2-7B.")


def check_8_5(attention_flops: Callable[..., float]) -> None:
    """attention_flops(n_layers, seq_len, d_attn, causal, training) -> FLOPs per token.

    The attention core only: Q·K^T and the weighted sum over V.
    """
    ex = "8.5"
    cases = [("one layer, T=2, d=1", GPTConfig(vocab_size=3, context_length=2, d_model=1,
                                              n_layers=1, n_heads=1)),
             ("GPT-2 small", PRESETS["gpt2"]), ("Llama-3-8B at 8k", PRESETS["llama3-8b"])]
    for name, c in cases:
        d_attn = c.n_heads * c.d_head
        for causal, training in ((False, False), (True, False), (False, True), (True, True)):
            got = as_scalar(
                ex, call(ex, attention_flops, c.n_layers, c.context_length, d_attn, causal,
                         training), "the FLOP count")
            want = attention_flops_per_token(c, causal=causal, training=training)
            if _close(got, want):
                continue
            where = f"{name} (causal={causal}, training={training})"
            if _close(got, want / 2) and not causal:
                halved = as_scalar(ex, call(ex, attention_flops, c.n_layers, c.context_length,
                                            d_attn, True, training), "the FLOP count")
                if _close(halved, got):
                    fail(ex, f"{where}: half the expected {want:,.0f}, the same as with "
                             "causal=True. causal=False counts the full window of T keys; halve "
                             "only under the causal mask.")
                fail(ex, f"{where}: half the expected {want:,.0f}. Attention has two matmuls per "
                         "query, the scores against T keys and the weighted sum over T values, "
                         "and each multiply-add is 2 FLOPs.")
            if causal and _close(got, want * (c.context_length + 1) / c.context_length):
                fail(ex, f"{where}: you counted the exact average, (T + 1)/2 keys per query; the "
                         "convention the exercise asks for (Kaplan, llm.c) is T/2.")
            if _close(got, want * 2) and causal:
                fail(ex, f"{where}: a causal mask leaves query t only t + 1 keys, on average "
                         "half the window: halve the full-window count.")
            if training and _close(got, want / 3):
                fail(ex, f"{where}: with training=True add the backward, twice the forward.")
            fail(ex, f"{where}: expected {want:,.0f} FLOPs per token, got {got:,.0f}.")
    passed(ex, "4*L*T*d forward over the full window (PaLM), half under a causal mask (Kaplan, "
               "llm.c), times 3 with the backward, from one layer to Llama-3-8B.")
