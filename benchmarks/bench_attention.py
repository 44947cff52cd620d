"""Benchmark chapter 5's attention: KV-cache decoding against recomputing, and the written-out maths against SDPA.

Run: python benchmarks/bench_attention.py
Prints two tables and writes benchmarks/results/attention.json. CPU, float32, inference (no_grad) throughout.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

from common import best_of, cpu_name, write_results

import torch
import torch.nn.functional as F
from torch import nn

from companion.attention import KVCache, MultiHeadAttention, causal_mask, kv_cache_bytes, scaled_dot_product

# The decoding model: small enough for a 2-core CPU, big enough that recomputing costs something.
VOCAB, D_MODEL, N_HEADS, N_LAYERS = 512, 256, 8, 4
PROMPT, NEW_TOKENS = 64, 256
DECODE_GOAL = 5.0  # speed-up of the cache over recomputing
DECODE_REPEATS = 3
# Attention alone: (T, d_model) at batch 2 and 8 heads.
SIZES = [(128, 256), (512, 256), (1024, 256), (128, 512), (512, 512), (1024, 512)]
ATTN_BATCH, ATTN_REPEATS = 2, 5
RESULTS = Path(__file__).resolve().parent / "results" / "attention.json"


class Block(nn.Module):
    """Pre-norm block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, use_sdpa: bool):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
        self.attn = MultiHeadAttention(D_MODEL, N_HEADS, use_sdpa=use_sdpa)
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, 4 * D_MODEL), nn.GELU(), nn.Linear(4 * D_MODEL, D_MODEL))

    def forward(self, x: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """Token + learned position embeddings, N_LAYERS blocks, a linear head: just enough to decode greedily."""

    def __init__(self, use_sdpa: bool = False):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Embedding(PROMPT + NEW_TOKENS, D_MODEL)
        self.blocks = nn.ModuleList(Block(use_sdpa) for _ in range(N_LAYERS))
        self.ln_f, self.head = nn.LayerNorm(D_MODEL), nn.Linear(D_MODEL, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        start = 0 if caches is None else caches[0].pos  # positions continue after the cached tokens
        pos = torch.arange(start, start + idx.shape[1])
        x = self.tok(idx) + self.pos(pos)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.ln_f(x))  # (B, T, V)


@torch.no_grad()
def decode_recompute(model: TinyLM, prompt: torch.Tensor) -> torch.Tensor:
    """Greedy decoding that reruns the whole sequence for every new token: O(T) work per token."""
    idx = prompt
    for _ in range(NEW_TOKENS):
        nxt = model(idx)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


@torch.no_grad()
def decode_cached(model: TinyLM, prompt: torch.Tensor) -> torch.Tensor:
    """Greedy decoding with one KV cache per layer: the prompt once, then one token per step."""
    caches = [KVCache(prompt.shape[0], PROMPT + NEW_TOKENS, N_HEADS, D_MODEL // N_HEADS) for _ in range(N_LAYERS)]
    idx, logits = prompt, model(prompt, caches)
    for _ in range(NEW_TOKENS):
        nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        idx = torch.cat([idx, nxt], dim=1)
        if idx.shape[1] < PROMPT + NEW_TOKENS:  # the last token needs no forward pass of its own
            logits = model(nxt, caches)
    return idx


def bench_decoding() -> list[dict]:
    prompt = torch.randint(0, VOCAB, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    rows = []
    for use_sdpa in (False, True):
        torch.manual_seed(0)  # the same weights for both attention paths
        model = TinyLM(use_sdpa).eval()
        decode_cached(model, prompt)  # warm-up: first-call allocations stay out of the timings
        recompute_s, ids_recompute = best_of(lambda: decode_recompute(model, prompt), DECODE_REPEATS)
        cached_s, ids_cached = best_of(lambda: decode_cached(model, prompt), DECODE_REPEATS)
        rows.append({
            "attention": "use_sdpa" if use_sdpa else "written-out", "new_tokens": NEW_TOKENS,
            "recompute_s": recompute_s, "cached_s": cached_s,
            "recompute_tokens_per_s": NEW_TOKENS / recompute_s, "cached_tokens_per_s": NEW_TOKENS / cached_s,
            "speedup": recompute_s / cached_s, "meets_goal": recompute_s / cached_s >= DECODE_GOAL,
            "same_tokens": torch.equal(ids_recompute, ids_cached),
        })
    return rows


def bench_attention() -> list[dict]:
    """Per size: the bare kernels on the same q, k, v, then whole modules (projections included), same weights."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for T, d_model in SIZES:
        D = d_model // N_HEADS
        q, k, v = (torch.randn(ATTN_BATCH, N_HEADS, T, D, generator=g) for _ in range(3))  # (B, H, T, D)
        x = torch.randn(ATTN_BATCH, T, d_model, generator=g)
        torch.manual_seed(0)
        written = MultiHeadAttention(d_model, N_HEADS).eval()
        sdpa = MultiHeadAttention(d_model, N_HEADS, use_sdpa=True).eval()
        sdpa.load_state_dict(written.state_dict())
        with torch.no_grad():
            sdpa_s, ref = best_of(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), ATTN_REPEATS)
            # The mask is built inside, as the module does, so both sides pay for what they need.
            ours_s, out = best_of(lambda: scaled_dot_product(q, k, v, causal_mask(T)), ATTN_REPEATS)
            mod_sdpa_s, y_sdpa = best_of(lambda: sdpa(x), ATTN_REPEATS)
            mod_written_s, y_written = best_of(lambda: written(x), ATTN_REPEATS)
        rows.append({
            "T": T, "d_model": d_model, "batch": ATTN_BATCH, "heads": N_HEADS,
            "kernel_sdpa_ms": 1e3 * sdpa_s, "kernel_written_ms": 1e3 * ours_s,
            "kernel_ratio": ours_s / sdpa_s, "kernel_max_abs_diff": (out - ref).abs().max().item(),
            "module_sdpa_ms": 1e3 * mod_sdpa_s, "module_written_ms": 1e3 * mod_written_s,
            "module_ratio": mod_written_s / mod_sdpa_s, "module_max_abs_diff": (y_written - y_sdpa).abs().max().item(),
        })
    return rows


def main() -> dict:
    torch.set_grad_enabled(False)
    decoding = bench_decoding()
    attention = bench_attention()
    cache_bytes = kv_cache_bytes(N_LAYERS, N_HEADS, D_MODEL // N_HEADS, PROMPT + NEW_TOKENS, bytes_per_value=4)
    result = {
        "decoding": {"model": {"vocab": VOCAB, "d_model": D_MODEL, "heads": N_HEADS, "layers": N_LAYERS,
                               "prompt": PROMPT, "new_tokens": NEW_TOKENS, "dtype": "float32", "batch": 1},
                     "goal_speedup": DECODE_GOAL, "repeats": DECODE_REPEATS, "kv_cache_bytes": cache_bytes,
                     "rows": decoding},
        "attention": {"repeats": ATTN_REPEATS, "causal": True, "dtype": "float32", "rows": attention},
        "machine": {
            "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }

    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads); "
          f"python {m['python']}, torch {m['torch']}; {m['date']}")
    print(f"\n1. Greedy decoding, {NEW_TOKENS} new tokens after a {PROMPT}-token prompt: {N_LAYERS} layers, "
          f"d_model {D_MODEL}, {N_HEADS} heads, fp32, batch 1, best of {DECODE_REPEATS}")
    print(f"   KV cache for {PROMPT + NEW_TOKENS} tokens: {cache_bytes / 2**20:.2f} MiB")
    print(f"{'attention':<12} {'recompute tok/s':>16} {'cached tok/s':>13} {'speed-up':>9} {'same tokens':>12}")
    for r in decoding:
        goal = "" if r["meets_goal"] else f"  (MISSES the {DECODE_GOAL:.0f}x goal)"
        print(f"{r['attention']:<12} {r['recompute_tokens_per_s']:>16,.0f} {r['cached_tokens_per_s']:>13,.0f} "
              f"{r['speedup']:>8.1f}x {str(r['same_tokens']):>12}{goal}")
    print(f"\n2. Causal attention forward, batch {ATTN_BATCH}, {N_HEADS} heads, fp32, best of {ATTN_REPEATS}; "
          f"ratio = written-out time / SDPA time")
    print(f"{'T':>5} {'d_model':>7} | {'SDPA ms':>8} {'written ms':>10} {'ratio':>6} | "
          f"{'module sdpa ms':>14} {'module written ms':>17} {'ratio':>6}")
    for r in attention:
        print(f"{r['T']:>5} {r['d_model']:>7} | {r['kernel_sdpa_ms']:>8.2f} {r['kernel_written_ms']:>10.2f} "
              f"{r['kernel_ratio']:>5.2f}x | {r['module_sdpa_ms']:>14.2f} {r['module_written_ms']:>17.2f} "
              f"{r['module_ratio']:>5.2f}x")
    worst = max(max(r["kernel_max_abs_diff"], r["module_max_abs_diff"]) for r in attention)
    print(f"largest |written-out - SDPA| over all sizes: {worst:.1e}")

    write_results(RESULTS, result)
    return result


if __name__ == "__main__":
    main()
