"""Does cleaning pay? The same small byte-level GPT, trained for the same steps on chapter 2's raw
crawl and on the crawl after clean_corpus, scored in bits per byte on clean held-out Shakespeare.

The crawl is built from the first 85% of Tiny Shakespeare; the held-out text is the last 15%, cut
into the crawl's passages, so neither corpus contains it. "Raw" is every page's extracted text (no
filter, no dedup); "clean" is what clean_corpus keeps. Each is trained with several seeds, so the gap
can be read against the seed-to-seed spread.

Run: COMPANION_DATA_DIR=... python benchmarks/bench_cleaning_pays.py [seed ...]
(about 4 minutes per seed on 2 shared cores; seeds are added to an existing result)
Writes benchmarks/results/cleaning_pays.json, which chapter 2 reads.
"""
from __future__ import annotations

import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import cpu_name, write_results

from companion.data import clean_corpus, html_to_text, load_text, make_crawl, normalize_text
from companion.data.crawl import passages
from companion.model import GPT, GPTConfig
from companion.train import next_token_loss

RESULTS = Path(__file__).resolve().parent / "results" / "cleaning_pays.json"
SEEDS = (0, 1, 2)
STEPS, BATCH, CONTEXT, LR = 1000, 32, 64, 2e-3
MODEL = dict(vocab_size=256, context_length=CONTEXT, d_model=96, n_layers=3, n_heads=4)


def to_bytes(docs: list[str]) -> np.ndarray:
    """Documents as one UTF-8 byte stream, separated by a blank line (what the model reads)."""
    return np.frombuffer("\n\n".join(docs).encode("utf-8"), dtype=np.uint8).astype(np.int64)


def train_and_score(stream: np.ndarray, held_out: np.ndarray, seed: int) -> float:
    """Train for STEPS random windows of `stream`; bits per byte on every window of held_out."""
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    model = GPT(GPTConfig(**MODEL))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    data = torch.from_numpy(stream)
    for step in range(STEPS):
        lr = LR * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / STEPS))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.from_numpy(gen.integers(0, len(stream) - CONTEXT - 1, BATCH))
        idx = starts[:, None] + torch.arange(CONTEXT + 1)
        batch = data[idx]
        loss = next_token_loss(model(batch[:, :-1]), batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    n = (len(held_out) - 1) // CONTEXT
    ev = torch.from_numpy(held_out[: n * CONTEXT + 1])
    xs = ev[:-1].view(n, CONTEXT)
    ys = ev[1:].view(n, CONTEXT)
    with torch.no_grad():
        nats = sum(next_token_loss(model(xs[i:i + 64]), ys[i:i + 64]).item() * len(xs[i:i + 64])
                   for i in range(0, n, 64)) / n
    return nats / math.log(2)  # one token is one byte: bits per token = bits per byte


def summarize(out: dict) -> dict:
    """Gaps and their mean and seed-to-seed standard deviation, from out["bpb"]."""
    gaps = [r - c for r, c in zip(out["bpb"]["raw"], out["bpb"]["clean"])]
    out.update(gap_raw_minus_clean=gaps, gap_mean=float(np.mean(gaps)),
               gap_std=float(np.std(gaps, ddof=1)) if len(gaps) > 1 else float("nan"))
    return out


def main(seeds: tuple[int, ...] = SEEDS) -> dict:
    """Train raw and clean for each seed. Seeds run on top of an existing result with the same
    settings are added to it, so more seeds can be recorded a few at a time."""
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is the fastest here
    text = load_text("tinyshakespeare")
    cut = text.index("\n\n", int(0.85 * len(text)))
    crawl = make_crawl(1800, seed=0, text=text[:cut])  # 2,000 pages need more text
    raw = [normalize_text(html_to_text(d.html)) for d in crawl]
    raw = [t for t in raw if t]
    result = clean_corpus([d.html for d in crawl], progress=False)
    clean = [t for t in result.texts if t is not None]
    held = to_bytes(["\n\n".join(p) for p in passages(text[cut:])])
    streams = {"raw": to_bytes(raw), "clean": to_bytes(clean)}
    settings = {"model": MODEL, "steps": STEPS, "batch": BATCH, "lr": LR,
                "docs": {"raw": len(raw), "clean": len(clean)},
                "bytes": {k: int(len(v)) for k, v in streams.items()},
                "held_out_bytes": int(len(held))}
    out = {"seeds": [], "bpb": {k: [] for k in streams}, "seconds": 0.0}
    if RESULTS.is_file():
        old = json.loads(RESULTS.read_text())
        if all(old.get(k) == v for k, v in settings.items()):
            out = {k: old[k] for k in ("seeds", "bpb", "seconds")}
        else:
            print("settings changed: the earlier result is replaced")
    for seed in seeds:
        if seed in out["seeds"]:
            print(f"seed {seed} already recorded: skipped")
            continue
        t0 = time.perf_counter()
        for name, stream in streams.items():
            out["bpb"][name].append(train_and_score(stream, held, seed))
            print(f"seed {seed} {name:<5} {out['bpb'][name][-1]:.4f} bpb", flush=True)
        out["seeds"].append(seed)
        out["seconds"] += time.perf_counter() - t0
        record = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(),
                  "python": platform.python_version(), "torch": torch.__version__,
                  **settings, **out}
        write_results(RESULTS, summarize(record))  # after every seed: a stopped run keeps its seeds
    record = json.loads(RESULTS.read_text())
    print(f"gap raw - clean: {record['gap_mean']:.4f} +- {record['gap_std']:.4f} bpb over "
          f"{len(record['seeds'])} seeds; {record['seconds']:.0f} s in all")
    return record


if __name__ == "__main__":
    # python benchmarks/bench_cleaning_pays.py [seed ...]: the default seeds, or these, added
    main(tuple(int(a) for a in sys.argv[1:]) or SEEDS)
