"""Benchmark the from-scratch BPE (chapter 3): training time, and encode speed side by side with tiktoken.

Run: python benchmarks/bench_tokenizer.py   (with COMPANION_DATA_DIR and TIKTOKEN_CACHE_DIR set to the mirror)
Prints a table and writes benchmarks/results/tokenizer.json.
`--train-speedup-only` reruns just the naive-vs-companion training race (same merges);
`--stream-only` reruns just the streaming measurement (peak RSS of encode vs encode_iterable on a
generated file of STREAM_MB megabytes, each in a fresh subprocess) and updates that file's "stream" entry.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
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
STREAM_MB = 50

# Each mode runs in its own interpreter, so ru_maxrss is that mode's peak and nothing else's.
_CHILD = r"""
import resource, sys, time
from companion.tokenizer import BPETokenizer
from companion.data.shards import write_shard, write_text_shard, sha256_text
mode, src, out = sys.argv[1:4]
tok = BPETokenizer.from_tiktoken("gpt2")
tok.encode("warm up the regex")
t0, n = time.perf_counter(), 0
if mode == "list":  # read the whole file, encode it into one list, then write the shard
    text = open(src, encoding="utf-8").read()
    ids = tok.encode(text)
    write_shard(out, ids, tokenizer="gpt2", vocab_size=tok.vocab_size, source_sha256=sha256_text(text))
    n = len(ids)
elif mode == "stream":  # one line at a time through encode_iterable, ids to disk in blocks
    with open(src, encoding="utf-8") as f:
        write_text_shard(out, f, tok, name="gpt2")
    n = -1
print(n, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def streaming_rss(mb: int = STREAM_MB) -> dict:
    """Peak RSS (MiB) of encoding a generated `mb`-MB file as one list vs through encode_iterable."""
    text = load_text("tinyshakespeare")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "big.txt"
        with open(src, "w", encoding="utf-8") as f:
            k = 0
            while f.tell() < mb * 1_000_000:  # copies numbered so the stream is not one repeat
                f.write(f"=== copy {k} ===\n{text}")
                k += 1
        size = src.stat().st_size
        for mode in ("baseline", "list", "stream"):
            out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(src), str(Path(tmp) / mode)],
                                 capture_output=True, text=True, check=True).stdout.split()
            rows[mode] = {"seconds": float(out[1]), "peak_rss_mib": int(out[2]) / 1024}
        same = (Path(tmp) / "list.bin").read_bytes() == (Path(tmp) / "stream.bin").read_bytes()
    base = rows["baseline"]["peak_rss_mib"]
    for mode in ("list", "stream"):
        rows[mode]["growth_mib"] = rows[mode]["peak_rss_mib"] - base
    return {"file_bytes": size, "copies": k, "modes": rows, "identical_shards": same,
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}}


def train_speedup(chars: int = 100_000, merges: int = 128) -> dict:
    """The naive trainer (every chunk, full recount per merge) against BPETokenizer.train, same merges."""
    import regex

    from companion.tokenizer import GPT2_PATTERN, merge

    text = load_text("tinyshakespeare")[:chars]

    def naive() -> dict:
        chunks = [list(c.encode("utf-8")) for c in regex.findall(GPT2_PATTERN, text)]
        learned = {}
        for new_id in range(256, 256 + merges):
            counts: dict = {}
            for ids in chunks:
                for p in zip(ids, ids[1:]):
                    counts[p] = counts.get(p, 0) + 1
            top = max(counts, key=counts.get)  # ties: the pair seen first, as the companion
            learned[top] = new_id
            chunks = [merge(ids, top, new_id) for ids in chunks]
        return learned

    naive_s, naive_merges = best_of(naive, 1)
    fast_s, fast = best_of(lambda: BPETokenizer.train(text, 256 + merges), REPEATS)
    return {"chars": chars, "merges": merges, "naive_seconds": naive_s, "companion_seconds": fast_s,
            "speedup": naive_s / fast_s, "same_merges": naive_merges == fast.merges,
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}}


def print_stream(s: dict) -> None:
    m = s["modes"]
    print(f"\nstreaming a generated {s['file_bytes'] / 1e6:.0f} MB file (peak RSS, fresh process each):")
    for mode in ("baseline", "list", "stream"):
        grow = f"+{m[mode]['growth_mib']:.0f} MiB" if mode != "baseline" else "(tokenizer loaded)"
        print(f"  {mode:<9} {m[mode]['peak_rss_mib']:>7.0f} MiB {grow:>20} {m[mode]['seconds']:>7.1f} s")
    print(f"  list and stream shards identical: {s['identical_shards']}")


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
    stream = streaming_rss()
    speedup = train_speedup()

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
        "stream": stream,
        "train_speedup": speedup,
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
    print_stream(stream)
    print_speedup(speedup)

    write_results(RESULTS, result)
    return result


def print_speedup(t: dict) -> None:
    print(f"\ntraining {t['merges']} merges on {t['chars']:,} characters: naive {t['naive_seconds']:.1f} s, "
          f"companion {t['companion_seconds']:.2f} s ({t['speedup']:.0f}x); same merges: {t['same_merges']}")


if __name__ == "__main__":
    if "--train-speedup-only" in sys.argv:
        result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        result["train_speedup"] = train_speedup()
        print_speedup(result["train_speedup"])
        write_results(RESULTS, result)
    elif "--stream-only" in sys.argv:
        result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        result["stream"] = streaming_rss()
        print_stream(result["stream"])
        write_results(RESULTS, result)
    else:
        main()
