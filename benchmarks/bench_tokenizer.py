"""Benchmark the from-scratch BPE (chapter 3): training time, and encode speed side by side with tiktoken.

Run: python benchmarks/bench_tokenizer.py   (with COMPANION_DATA_DIR and TIKTOKEN_CACHE_DIR set to the mirror)
Prints a table and writes benchmarks/results/tokenizer.json.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

from common import best_of, cpu_name, write_results

import tiktoken
import torch

from companion.data import load_text
from companion.tokenizer import BPETokenizer

TRAIN_VOCAB = 1024
TRAIN_GOAL_S = 10.0
REPEATS = 3
RESULTS = Path(__file__).resolve().parent / "results" / "tokenizer.json"


def main() -> dict:
    text = load_text("tinyshakespeare")
    n_bytes = len(text.encode("utf-8"))
    mb = n_bytes / 1e6

    # 1. Training: a fresh run each repeat, so nothing is cached between them.
    train_s, trained = best_of(lambda: BPETokenizer.train(text, TRAIN_VOCAB), REPEATS)

    # 2. Encoding the same text. Ours caches per-chunk results, so a cold run (new tokenizer, empty cache)
    # and a warm run (cache already filled by a previous encode) are reported separately.
    gpt2 = BPETokenizer.from_tiktoken("gpt2")
    reference = tiktoken.get_encoding("gpt2")
    ref_s, ref_ids = best_of(lambda: reference.encode(text, allowed_special="all"), REPEATS)
    def encode_cold() -> list[int]:
        gpt2._cache.clear()  # forget every chunk, so each repeat pays the full merge work
        return gpt2.encode(text, allowed_special="all")

    cold_s, ids = best_of(encode_cold, REPEATS)
    warm_s, ids_warm = best_of(lambda: gpt2.encode(text, allowed_special="all"), REPEATS)
    trained_s, trained_ids = best_of(lambda: trained.encode(text), REPEATS)
    parity = ids == ids_warm == ref_ids

    rows = [
        ("tiktoken gpt2 (Rust)", ref_s, len(ref_ids)),
        ("from-scratch, GPT-2 merges, cold cache", cold_s, len(ids)),
        ("from-scratch, GPT-2 merges, warm cache", warm_s, len(ids_warm)),
        (f"from-scratch, trained vocab {TRAIN_VOCAB}, warm cache", trained_s, len(trained_ids)),
    ]
    encode = [
        {"name": name, "seconds": s, "tokens": n, "mb_per_s": mb / s, "tokens_per_s": n / s,
         "slowdown_vs_tiktoken": s / ref_s}
        for name, s, n in rows
    ]
    result = {
        "text": {"name": "tinyshakespeare", "bytes": n_bytes, "chars": len(text)},
        "train": {"vocab_size": TRAIN_VOCAB, "merges": len(trained.merges), "seconds": train_s,
                  "goal_seconds": TRAIN_GOAL_S, "meets_goal": train_s <= TRAIN_GOAL_S, "repeats": REPEATS},
        "encode": encode,
        "parity_with_tiktoken": parity,
        "machine": {
            "cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "tiktoken": tiktoken.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }

    m = result["machine"]
    print(f"Tokenizer benchmark on Tiny Shakespeare ({n_bytes:,} bytes), best of {REPEATS}")
    print(f"machine: {m['cpu']}, {m['cores']} cores; python {m['python']}, torch {m['torch']}, "
          f"tiktoken {m['tiktoken']}; {m['date']}")
    goal = "meets" if train_s <= TRAIN_GOAL_S else "MISSES"
    print(f"\ntrain to vocab {TRAIN_VOCAB} ({len(trained.merges)} merges): {train_s:.2f} s "
          f"({goal} the {TRAIN_GOAL_S:.0f} s goal)\n")
    print(f"{'encoder':<46} {'time s':>8} {'MB/s':>7} {'tokens/s':>11} {'x tiktoken time':>16}")
    for e in encode:
        print(f"{e['name']:<46} {e['seconds']:>8.3f} {e['mb_per_s']:>7.2f} {e['tokens_per_s']:>11,.0f} "
              f"{e['slowdown_vs_tiktoken']:>15.1f}x")
    print(f"\nids identical to tiktoken gpt2 on the whole text: {parity}")

    write_results(RESULTS, result)
    return result


if __name__ == "__main__":
    main()
