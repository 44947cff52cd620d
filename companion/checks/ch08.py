"""Self-checks for chapter 8's exercises.

Counting parameters, training memory, a compute-optimal model for a budget.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from ..model import GPTConfig
from ..scaling import budget_flops, chinchilla_optimal
from ..sizing import PRESETS, activation_bytes_per_layer, param_count
from ._core import as_scalar, call, fail, passed

__all__ = ["check_8_1", "check_8_2", "check_8_3"]


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
            for k in (2, 4, 6, 8, 12, 14, 18):
                if _close(got, k * n + act):
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
