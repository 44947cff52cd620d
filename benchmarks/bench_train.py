"""Benchmark chapter 7's CPU race: throughput against a plain nanoGPT-style model, and time and quality on 2 cores.

Run: python benchmarks/bench_train.py [--quick]
1. Training throughput (tokens/s: forward, backward, AdamW step) of companion.model.GPT against a reference
   written here (nanoGPT's block: fused qkv projection, SDPA, LayerNorm, nn.GELU), same config, same weights count,
   eager and under torch.compile. The companion model runs with mlp="gelu_exact", nanoGPT's activation, so the
   two compute the same function.
2. Costs: activations, AdamW's three implementations, Newton–Schulz in bf16 and fp32, and one step of the preset's
   model under each lever (soft-cap, QK-norm, Muon, torch.compile, one thread, bf16 autocast).
3. The race on char-level Tiny Shakespeare (90/10 split). Baseline: nanoGPT's documented CPU recipe on the
   reference model (4 layers, 128 wide, context 64, batch 12, 2000 iterations, lr 1e-3 -> 1e-4, eval every 250 on
   20 batches), in this loop (so with fused AdamW, which nanoGPT uses on CUDA only: a faster baseline than nanoGPT
   itself); its wall time is the budget. Then the previous preset (the 0.40x record), the preset
   "shakespeare-char-cpu" over its whole schedule and cut to a SPRINT_STEPS sprint, each under two seeds.
4. The targets (issue 16), side by side with the baseline of the same run: best val within the budget (<= 1.65),
   time to val <= 1.88 over the baseline's (<= 0.30), tokens/s at nanoGPT's CPU config (>= 1.10x).
Prints the tables and writes benchmarks/results/train.json (curves included). About 15 minutes on 2 cores.
"""
from __future__ import annotations

import datetime
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import best_of, cpu_features, cpu_name, write_results

import torch
import torch.nn.functional as F
from torch import nn

from companion.data import load_text
from companion.loader import random_batch, train_val_split
from companion.model import GPT, GPTConfig
from companion.muon import newton_schulz
from companion.tokenizer import CharTokenizer
from companion.train import TrainConfig, make_optimizer, next_token_loss, param_groups, train
from companion.train_cli import PRESETS

TARGET = 1.88  # nanoGPT README's CPU figure
THROUGHPUT_GOAL = 1.10  # companion tokens/s over reference tokens/s, at nanoGPT's CPU configuration
BUDGET_GOAL = 1.65  # best val within the baseline's wall time, for both seeds
SPRINT_GOAL = 0.30  # time to val <= TARGET over the baseline's
RESULTS = Path(__file__).resolve().parent / "results" / "train.json"
# (label, d_model, n_layers, n_heads, context, batch, steps per timing)
THROUGHPUT_CONFIGS = [("cpu recipe", 128, 4, 4, 64, 12, 20), ("5M model", 256, 6, 8, 256, 4, 3)]
# The preset before issue 16: the 0.40x record to val 1.88, kept here to race against
OLD_PRESET = (dict(context_length=64, d_model=128, n_layers=4, n_heads=4, d_ff=256, norm="rmsnorm", mlp="swiglu",
                   pos="rope", bias=False, dropout=0.0),
              dict(max_steps=600, batch_size=16, context_length=64, lr=3e-3, min_lr=3e-4, warmup_steps=100,
                   beta2=0.95, eval_interval=100, eval_iters=15))
# The preset cut short, with a 50-step warmup: its schedule decays over these steps. Evaluated every
# 55 steps, so that the last evaluation is the last step (nanoGPT's recipe evaluates every 250).
SPRINT_STEPS, SPRINT_EVAL = 275, 55
BASELINE = dict(max_steps=2000, batch_size=12, context_length=64, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                lr_decay_steps=2000, beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20)


class RefBlock(nn.Module):
    """nanoGPT's block: x + attn(ln(x)), x + mlp(ln(x)); qkv in one matrix, attention by SDPA, erf GELU."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))  # nanoGPT's nn.GELU(): the erf form


class RefGPT(nn.Module):
    """nanoGPT's model without dropout: wte + wpe, blocks, ln_f, tied head; N(0, 0.02) init, residual outputs scaled."""

    def __init__(self, vocab: int, context: int, d: int, n_layers: int, n_heads: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(RefBlock(d, n_heads) for _ in range(n_layers))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for block in self.blocks:
            for proj in (block.c_proj, block.mlp_proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * n_layers))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, V)


def step_times(models: list[nn.Module], cfg: TrainConfig, ids: torch.Tensor, steps: int, repeats: int) -> list[float]:
    """Best-of-`repeats` seconds per training step (forward, backward, clip, AdamW) for each model.

    The models take turns within each repeat, in alternating order, so a burst of load on a shared
    machine hits both alike.
    """
    g = torch.Generator().manual_seed(0)
    batches = [random_batch(ids, cfg.batch_size, cfg.context_length, g) for _ in range(steps)]

    def runner(model: nn.Module):
        opt = make_optimizer(model, cfg)

        def run() -> None:
            for x, y in batches:
                next_token_loss(model(x), y).backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
        return run

    runs = [runner(m) for m in models]
    for run in runs:
        run()  # warm-up: allocations and AdamW's state stay out of the timing
    best = [math.inf] * len(runs)
    for r in range(repeats):
        # The order flips every repeat: the first of a round ran a few percent slower or faster
        # than the second with identical models (benchmarks/bench_fused_qkv.py, 2026-12-02).
        for i in (range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))):
            best[i] = min(best[i], best_of(runs[i], 1)[0])
    return [b / steps for b in best]


def kernel_shares(model: nn.Module, cfg: TrainConfig, ids: torch.Tensor, steps: int = 5) -> dict[str, float]:
    """Shares of a training step's self CPU time (torch.profiler) in matrix products and in attention.

    They say where a faster model could gain: two models that spend the same share in the same
    kernels, on the same products, cannot differ by much."""
    from torch.profiler import ProfilerActivity, profile
    g = torch.Generator().manual_seed(0)
    batches = [random_batch(ids, cfg.batch_size, cfg.context_length, g) for _ in range(steps)]
    next_token_loss(model(batches[0][0]), batches[0][1]).backward()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x, y in batches:
            next_token_loss(model(x), y).backward()
    times = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(times.values())
    matmul = sum(t for k, t in times.items() if k in ("aten::mm", "aten::addmm", "aten::bmm"))
    attention = sum(t for k, t in times.items() if "scaled_dot_product" in k)
    model.zero_grad(set_to_none=True)
    return {"matmul": matmul / total, "attention": attention / total}


def bench_throughput(vocab: int, ids: torch.Tensor, repeats: int) -> list[dict]:
    """tokens/s of the reference, of companion.model.GPT, and of GPT under torch.compile, taking turns."""
    rows = []
    for label, d, layers, heads, context, batch, steps in THROUGHPUT_CONFIGS:
        cfg = TrainConfig(batch_size=batch, context_length=context)
        torch.manual_seed(0)
        ours = GPT(GPTConfig(vocab_size=vocab, context_length=context, d_model=d, n_layers=layers, n_heads=heads,
                             mlp="gelu_exact"))
        ref = RefGPT(vocab, context, d, layers, heads)
        # nanoGPT's CPU command passes --compile=False; both compiled are timed too, for the fair comparison
        ref_s, ours_s, compiled_s, ref_compiled_s = step_times(
            [ref, ours, torch.compile(ours), torch.compile(ref)], cfg, ids, steps, repeats)
        tokens = batch * context
        best = min(ours_s, compiled_s)
        rows.append({"config": label, "d_model": d, "n_layers": layers, "n_heads": heads, "context": context,
                     "batch": batch, "params_ours": ours.num_params(),
                     "params_ref": sum(p.numel() for p in ref.parameters()),
                     "ref_tokens_per_s": tokens / ref_s, "ours_tokens_per_s": tokens / ours_s,
                     "ours_compiled_tokens_per_s": tokens / compiled_s,
                     "ref_compiled_tokens_per_s": tokens / ref_compiled_s, "ratio_eager": ref_s / ours_s,
                     "ratio_both_compiled": ref_compiled_s / compiled_s,
                     "ratio_compiled": ref_s / compiled_s, "ratio": ref_s / best,
                     "meets_goal": ref_s / best >= THROUGHPUT_GOAL,
                     "kernel_shares": {"ours": kernel_shares(ours, cfg, ids), "ref": kernel_shares(ref, cfg, ids)}})
    return rows


def preset_step_ms(repeats: int, steps: int = 20) -> dict[str, float]:
    """ms per training step of the preset's model under each CPU execution lever, and the levers it tried.

    Same batches, same loop; each variant builds its own model and optimizer, and the variants take turns
    within each repeat, in alternating order, so that a burst of load hits them alike. bf16 autocast runs
    fewer steps: on a CPU without bf16 matmul units it is an order of magnitude slower."""
    model_d, train_d = PRESETS["shakespeare-char-cpu"]
    base_model = {**model_d, "logit_softcap": None, "qk_norm": False}
    g = torch.Generator().manual_seed(0)
    corpus = torch.randint(0, 65, (50_000,))
    adamw = {"optimizer": "adamw"}
    variants = {  # label: (model overrides, train overrides, compile, autocast bf16, threads, steps)
        "AdamW, no soft-cap, no QK-norm": ({}, adamw, False, False, None, steps),
        "AdamW + logit soft-cap": ({"logit_softcap": 15.0}, adamw, False, False, None, steps),
        "AdamW + QK-norm": ({"qk_norm": True}, adamw, False, False, None, steps),
        "AdamW + both": (dict(model_d), adamw, False, False, None, steps),
        "preset (Muon + both)": (dict(model_d), {}, False, False, None, steps),
        "preset, 3 Newton–Schulz steps": (dict(model_d), {"muon_ns_steps": 3}, False, False, None, steps),
        "preset, batch 24": (dict(model_d), {"batch_size": 24}, False, False, None, steps),
        "preset at 3 x 144": ({**model_d, "n_layers": 3, "d_model": 144, "d_ff": 288}, {}, False, False,
                              None, steps),
        "preset at 6 x 104": ({**model_d, "n_layers": 6, "d_model": 104, "d_ff": 208}, {}, False, False,
                              None, steps),
        "preset, torch.compile": (dict(model_d), {}, True, False, None, steps),
        "preset, 1 thread": (dict(model_d), {}, False, False, 1, steps),
        "preset, bf16 autocast": (dict(model_d), {}, False, True, None, 3),
    }
    out, runs = {}, {}
    threads = torch.get_num_threads()
    for label, (m_kw, t_kw, compile_, bf16, n_threads, n) in variants.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=65, **{**base_model, **m_kw}))
        cfg = TrainConfig(**{**train_d, **t_kw})
        batches = [random_batch(corpus, cfg.batch_size, cfg.context_length, g) for _ in range(n)]
        opt = make_optimizer(model, cfg)
        fwd = torch.compile(model) if compile_ else model

        def run(model=model, fwd=fwd, opt=opt, batches=batches, bf16=bf16, n_threads=n_threads) -> None:
            torch.set_num_threads(n_threads or threads)
            for x, y in batches:
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    loss = next_token_loss(fwd(x), y)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            torch.set_num_threads(threads)
        # An empty on-disk cache for the compiled variant, so its first steps pay what a first run
        # pays: with inductor's cache warm from an earlier run they took about 4 s (2026-12-02).
        with tempfile.TemporaryDirectory(prefix="bench_train_inductor_") as cache:
            saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            t0 = time.perf_counter()
            run()  # warm-up: compilation (timed apart), allocations, optimizer state
            if compile_:
                out["torch.compile's first steps (s, compilation)"] = time.perf_counter() - t0
            if saved is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved
        runs[label] = (run, n)
    best = {label: math.inf for label in runs}
    for r in range(repeats):
        for label in (list(runs) if r % 2 == 0 else reversed(list(runs))):
            run, n = runs[label]
            best[label] = min(best[label], best_of(run, 1)[0] / n * 1e3)
    return {**out, **best}


def bench_costs(repeats: int) -> dict:
    """What a CPU charges for the small pieces: each activation's forward + backward beside the matmul that feeds it
    (2,048 tokens, 128 -> 512, the cpu recipe's MLP), one AdamW step of the preset's model three ways, one
    Newton–Schulz iteration (Muon's) in bf16 and float32, and a preset step under each lever."""
    def ms(fn: Callable[[], object], n: int = 20) -> float:
        fn()
        return best_of(lambda: [fn() for _ in range(n)], repeats)[0] / n * 1e3

    x = torch.randn(2048, 128, requires_grad=True)
    w = torch.randn(512, 128, requires_grad=True)
    h = torch.randn(2048, 512, requires_grad=True)
    g = torch.randn(2048, 512)
    ops = {"matmul 128 -> 512": lambda: F.linear(x, w).backward(g),
           "GELU, tanh form (GPT-2)": lambda: F.gelu(h, approximate="tanh").backward(g),
           "GELU, erf form": lambda: F.gelu(h).backward(g),
           "SiLU (SwiGLU's gate)": lambda: F.silu(h).backward(g),
           "ReLU": lambda: F.relu(h).backward(g)}
    model_d, train_d = PRESETS["shakespeare-char-cpu"]
    model = GPT(GPTConfig(vocab_size=65, **model_d))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    cfg = TrainConfig(**train_d)
    adamw = {}
    for label, kw in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=1e-4, **kw)
        adamw[label] = ms(opt.step)
    m = torch.randn(128, 128)
    ns = {"bfloat16": ms(lambda: newton_schulz(m, dtype=torch.bfloat16), 5),
          "float32": ms(lambda: newton_schulz(m, dtype=torch.float32))}
    return {"fwd_bwd_ms": {k: ms(f) for k, f in ops.items()}, "adamw_step_ms": adamw,
            "adamw_tensors": sum(1 for _ in model.parameters()), "newton_schulz_128_ms": ns,
            "preset_step_ms": preset_step_ms(repeats)}


def time_to_target(history: dict, target: float = TARGET) -> float | None:
    """Wall seconds at the first evaluation with val <= target (evaluation time included), None if never."""
    return next((s for val, s in zip(history["eval_val"], history["elapsed"]) if val <= target), None)


def best_within(history: dict, seconds: float) -> float | None:
    """The lowest val among the evaluations logged within `seconds` of the start (None if none was)."""
    vals = [v for v, s in zip(history["eval_val"], history["elapsed"]) if s <= seconds]
    return min(vals) if vals else None


def quality_runs(vocab: int) -> list[tuple[str, nn.Module, TrainConfig]]:
    """The time-to-quality runs: nanoGPT's CPU recipe; the previous preset (the 0.40x record); the preset
    shakespeare-char-cpu over its whole schedule (the budget record) and cut short to SPRINT_STEPS (the sprint
    to 1.88), each under two batch orders (seeds), since one run's luck is worth a few hundredths of a nat."""
    model_d, train_d = PRESETS["shakespeare-char-cpu"]
    sprint = {**train_d, "max_steps": SPRINT_STEPS, "warmup_steps": 50, "eval_interval": SPRINT_EVAL}
    runs = []
    for name, make, cfg in (
        ("nanoGPT CPU recipe (its model)", lambda: RefGPT(vocab, 64, 128, 4, 4), TrainConfig(**BASELINE)),
        ("previous preset (600 steps)", lambda: GPT(GPTConfig(vocab_size=vocab, **OLD_PRESET[0])),
         TrainConfig(**OLD_PRESET[1])),
        ("preset shakespeare-char-cpu", lambda: GPT(GPTConfig(vocab_size=vocab, **model_d)), TrainConfig(**train_d)),
        ("preset shakespeare-char-cpu, seed 7", lambda: GPT(GPTConfig(vocab_size=vocab, **model_d)),
         TrainConfig(**{**train_d, "seed": 7})),
        (f"preset, {SPRINT_STEPS} steps", lambda: GPT(GPTConfig(vocab_size=vocab, **model_d)), TrainConfig(**sprint)),
        (f"preset, {SPRINT_STEPS} steps, seed 7", lambda: GPT(GPTConfig(vocab_size=vocab, **model_d)),
         TrainConfig(**{**sprint, "seed": 7})),
    ):
        torch.manual_seed(1337)
        runs.append((name, make(), cfg))
    return runs


def bench_quality(vocab: int, train_ids: torch.Tensor, val_ids: torch.Tensor) -> dict:
    runs = {}
    for name, model, cfg in quality_runs(vocab):
        h = train(model, train_ids, val_ids, cfg, progress=False)
        runs[name] = {"train_config": cfg.to_dict(), "params": sum(p.numel() for p in model.parameters()),
                      "model_config": model.config.to_dict() if isinstance(model, GPT) else "nanoGPT (RefGPT)",
                      "wall_s": h["elapsed"][-1], "time_to_target_s": time_to_target(h), "final_val": h["eval_val"][-1],
                      "best_val": min(h["eval_val"]), "tokens": cfg.tokens_per_step * cfg.max_steps,
                      "curve": {k: h[k] for k in ("eval_step", "eval_train", "eval_val", "elapsed")}}
        print(f"  {name}: val {h['eval_val'][-1]:.4f} after {h['elapsed'][-1]:.1f} s", flush=True)
    return runs


def targets(throughput: list[dict], runs: dict) -> list[dict]:
    """Issue 16's three rows: best val in the baseline's time, time to TARGET, and throughput, as ratios."""
    base = runs["nanoGPT CPU recipe (its model)"]
    budget = base["wall_s"]
    base_time = base["time_to_target_s"] if base["time_to_target_s"] is not None else base["wall_s"]
    rows = []
    for seed, key in (("1337", "preset shakespeare-char-cpu"), ("7", "preset shakespeare-char-cpu, seed 7")):
        h = runs[key]["curve"]
        val = best_within(h, budget)
        rows.append({"target": f"best val within nanoGPT's {budget:.0f} s, seed {seed}", "value": val,
                     "goal": f"<= {BUDGET_GOAL}", "met": val is not None and val <= BUDGET_GOAL})
    for seed, key in (("1337", f"preset, {SPRINT_STEPS} steps"), ("7", f"preset, {SPRINT_STEPS} steps, seed 7")):
        t = runs[key]["time_to_target_s"]
        ratio = None if t is None else t / base_time
        rows.append({"target": f"time to val <= {TARGET} / nanoGPT's, seed {seed}", "value": ratio,
                     "goal": f"<= {SPRINT_GOAL}", "met": ratio is not None and ratio <= SPRINT_GOAL})
    # Two rows: against nanoGPT's recipe as its README runs it (--compile=False), ours in its faster mode;
    # and like for like, both compiled, which says whether the model itself is faster.
    row = throughput[0]
    mode = "compiled" if row["ratio_compiled"] > row["ratio_eager"] else "eager"
    for label, value in ((f"ours {mode} / nanoGPT's recipe (eager)", row["ratio"]),
                         ("both compiled", row["ratio_both_compiled"])):
        rows.append({"target": f"tokens/s at nanoGPT's CPU config, {label}", "value": value,
                     "goal": f">= {THROUGHPUT_GOAL}", "met": value >= THROUGHPUT_GOAL})
    return rows


def main(quick: bool = False) -> dict:
    text = load_text("tinyshakespeare")
    tok = CharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text))
    train_ids, val_ids = train_val_split(ids, 0.1)
    throughput = bench_throughput(tok.vocab_size, train_ids, repeats=2 if quick else 5)
    costs = bench_costs(repeats=2 if quick else 3)
    quality = {} if quick else bench_quality(tok.vocab_size, train_ids, val_ids)
    result = {
        "throughput": {"goal_ratio": THROUGHPUT_GOAL, "dtype": "float32", "rows": throughput},
        "costs": costs,
        "time_to_quality": {"target_val": TARGET, "runs": quality},
        "machine": {"cpu": cpu_name(), "cpu_features": cpu_features(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_at_end": os.getloadavg()[0],
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
    }
    m = result["machine"]
    print(f"machine: {m['cpu']} ({', '.join(m['cpu_features'])}), {m['cores']} cores ({m['torch_threads']} torch threads); "
          f"python {m['python']}, torch {m['torch']}; {m['date']}; load average {m['load_average_at_end']:.1f}")
    print("\n1. Training throughput, fp32, forward + backward + AdamW; ratio = companion / reference tokens/s")
    print("(compiled: torch.compile, steady state; its compilation is timed apart, in 2.)")
    print(f"{'config':<12} {'params':>10} {'ref tok/s':>10} {'ours':>8} {'ours compiled':>14} {'ref compiled':>13} "
          f"{'eager':>6} {'ours compiled':>14} {'both compiled':>14}")
    for r in throughput:
        print(f"{r['config']:<12} {r['params_ours']:>10,} {r['ref_tokens_per_s']:>10,.0f} "
              f"{r['ours_tokens_per_s']:>8,.0f} {r['ours_compiled_tokens_per_s']:>14,.0f} "
              f"{r['ref_compiled_tokens_per_s']:>13,.0f} {r['ratio_eager']:>5.2f}x {r['ratio_compiled']:>13.2f}x "
              f"{r['ratio_both_compiled']:>13.2f}x")
    for r in throughput:
        k = r["kernel_shares"]
        print(f"{r['config']}: share of forward + backward self time in matrix products "
              f"{k['ours']['matmul']:.0%} (ours) and {k['ref']['matmul']:.0%} (ref); in attention "
              f"{k['ours']['attention']:.0%} and {k['ref']['attention']:.0%}")
    print("\n2. Small costs, fp32: forward + backward of each op on a (2048, 512) activation; one AdamW step")
    for name, t in costs["fwd_bwd_ms"].items():
        print(f"{name:<26} {t:>7.2f} ms")
    for name, t in costs["adamw_step_ms"].items():
        print(f"AdamW {name:<20} {t:>7.2f} ms ({costs['adamw_tensors']} tensors)")
    for name, t in costs["newton_schulz_128_ms"].items():
        print(f"Newton–Schulz 128 x 128, {name:<9} {t:>6.2f} ms")
    print("one training step of the preset's model (16 x 64 tokens):")
    for name, t in costs["preset_step_ms"].items():
        print(f"  {name:<46} {t:>8.1f}" + (" s" if name.endswith("compilation)") else " ms"))
    if quality:
        print(f"\n3. Time to quality on char Tiny Shakespeare (90/10), wall time including evaluations")
        print(f"{'run':<38} {'params':>9} {'tokens':>10} {'to 1.88 s':>10} {'total s':>8} {'best val':>9}")
        for name, r in quality.items():
            hit = "never" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
            print(f"{name:<38} {r['params']:>9,} {r['tokens']:>10,} {hit:>10} {r['wall_s']:>8.1f} {r['best_val']:>9.4f}")
        rows = targets(throughput, quality)
        result["targets"] = rows
        print("\n4. Targets, side by side with nanoGPT's CPU recipe in this run")
        for r in rows:
            value = "never" if r["value"] is None else f"{r['value']:.3f}"
            print(f"{r['target']:<62} {value:>7} (goal {r['goal']}) {'met' if r['met'] else 'MISSED'}")
    if not quick:
        write_results(RESULTS, result)
    return result


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))  # the recorded figures are for 2 cores
    main(quick="--quick" in sys.argv)
