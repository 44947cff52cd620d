"""Benchmark chapter 11's engine: throughput of one-at-a-time, static and continuous batching.

Run: python benchmarks/bench_serve.py [--quick]
A random LLaMA-style model of the chapter's CPU preset shape (4 x 128, context 256) serves a mix of
requests with prompts of 4-64 tokens and answers of 8-128 tokens, greedy. For each batch size, it
prints tokens/s, decoding steps, and the peak KV blocks against max-length preallocation.
Writes benchmarks/results/serve.json. The weights are random: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import cpu_name, write_results

import torch

from companion.model import GPT, GPTConfig
from companion.serve import Engine

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 requests instead of 32")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=65, context_length=256, d_model=128, n_layers=4, n_heads=4, d_ff=256,
                    norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)
    model = GPT(cfg).eval()
    n = 8 if args.quick else 32
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 65, (int(torch.randint(4, 65, (1,), generator=g)),),
                             generator=g).tolist() for _ in range(n)]
    answers = [int(torch.randint(8, 129, (1,), generator=g)) for _ in range(n)]
    rows = []
    for batch in (1, 4, 8, 16):
        for policy in ("static", "continuous"):
            if batch == 1 and policy == "static":
                continue
            engine = Engine(model, max_batch=batch, block_size=16, policy=policy)
            t0 = time.perf_counter()
            engine.generate(prompts, answers)
            dt = time.perf_counter() - t0
            prealloc = batch * engine.cache.blocks_for(cfg.context_length)
            rows.append(dict(batch=batch, policy=policy, tokens_per_s=sum(answers) / dt,
                             steps=engine.steps, peak_blocks=engine.cache.peak_blocks,
                             prealloc_blocks=prealloc))
            r = rows[-1]
            print(f"batch {batch:>2} {policy:<10} {r['tokens_per_s']:>7.0f} tok/s {r['steps']:>5} "
                  f"steps, peak {r['peak_blocks']:>3} of {prealloc} preallocated blocks", flush=True)
    write_results(RESULTS, {"cpu": cpu_name(), "threads": args.threads, "requests": n, "rows": rows})


if __name__ == "__main__":
    main()
