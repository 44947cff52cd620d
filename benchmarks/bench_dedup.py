"""Benchmark chapter 2's MinHash + LSH against datasketch on the same documents, num_perm and bands.

Run: python benchmarks/bench_dedup.py   (with COMPANION_DATA_DIR set to the mirror)
Prints a table and writes benchmarks/results/dedup.json.
"""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

from common import best_of, cpu_name, write_results

import datasketch
import numpy as np
from datasketch import MinHash, MinHashLSH

from companion.data import (clean_corpus, html_to_text, lsh_candidate_pairs, lsh_params, make_crawl,
                            minhash_signatures, near_dedup, normalize_text, shingles)

N_DOCS = 2000
NUM_PERM = 128
THRESHOLD = 0.8
REPEATS = 3
RESULTS = Path(__file__).resolve().parent / "results" / "dedup.json"


def datasketch_signatures(sets: list[set[str]]) -> list[MinHash]:
    out = []
    for s in sets:
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch([x.encode("utf-8") for x in s])
        out.append(m)
    return out


def datasketch_pairs(mins: list[MinHash], bands: int, rows: int) -> set[tuple[int, int]]:
    lsh = MinHashLSH(num_perm=NUM_PERM, params=(bands, rows))
    for i, m in enumerate(mins):
        lsh.insert(i, m)
    return {(min(i, j), max(i, j)) for i, m in enumerate(mins) for j in lsh.query(m) if j != i}


def main() -> dict:
    crawl = make_crawl(N_DOCS, seed=0)
    texts = [normalize_text(html_to_text(d.html)) for d in crawl]
    sets = [shingles(t) for t in texts]
    n_shingles = sum(map(len, sets))
    bands, rows = lsh_params(THRESHOLD, NUM_PERM)

    ours_sig_s, sig = best_of(lambda: minhash_signatures(sets, NUM_PERM), REPEATS)
    ours_lsh_s, ours_pairs = best_of(lambda: lsh_candidate_pairs(sig, bands, rows), REPEATS)
    ref_sig_s, mins = best_of(lambda: datasketch_signatures(sets), REPEATS)
    ref_lsh_s, ref_pairs = best_of(lambda: datasketch_pairs(mins, bands, rows), REPEATS)
    dedup_s, kept = best_of(lambda: near_dedup(texts, THRESHOLD, NUM_PERM), REPEATS)
    pipeline_s, _ = best_of(lambda: clean_corpus([d.html for d in crawl], progress=False), 1)
    same_sig = bool(np.array_equal(sig, np.stack([m.hashvalues for m in mins])))

    stages = [
        ("MinHash signatures", ours_sig_s, ref_sig_s),
        ("LSH candidate pairs", ours_lsh_s, ref_lsh_s),
        ("signatures + LSH", ours_sig_s + ours_lsh_s, ref_sig_s + ref_lsh_s),
    ]
    result = {
        "corpus": {"docs": N_DOCS, "shingles": n_shingles, "num_perm": NUM_PERM, "bands": bands, "rows": rows,
                   "threshold": THRESHOLD},
        "stages": [{"name": name, "ours_s": o, "datasketch_s": r, "speedup": r / o,
                    "ours_docs_per_s": N_DOCS / o, "datasketch_docs_per_s": N_DOCS / r} for name, o, r in stages],
        "near_dedup_s": dedup_s, "near_dedup_kept": len(kept), "pipeline_s": pipeline_s,
        "identical_signatures": same_sig, "identical_candidate_pairs": ours_pairs == ref_pairs,
        "candidate_pairs": len(ours_pairs), "repeats": REPEATS,
        "machine": {
            "cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "datasketch": datasketch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }

    m = result["machine"]
    print(f"MinHash/LSH benchmark: {N_DOCS:,} crawl pages, {n_shingles:,} shingles, num_perm {NUM_PERM}, "
          f"{bands} bands x {rows} rows; best of {REPEATS}")
    print(f"machine: {m['cpu']}, {m['cores']} cores; python {m['python']}, numpy {m['numpy']}, "
          f"datasketch {m['datasketch']}; {m['date']}\n")
    print(f"{'stage':<22} {'ours s':>8} {'datasketch s':>13} {'ours docs/s':>12} {'speedup':>8}")
    for s in result["stages"]:
        print(f"{s['name']:<22} {s['ours_s']:>8.3f} {s['datasketch_s']:>13.3f} {s['ours_docs_per_s']:>12,.0f} "
              f"{s['speedup']:>7.1f}x")
    print(f"\nidentical signatures: {same_sig}; identical candidate pairs ({len(ours_pairs)}): {ours_pairs == ref_pairs}")
    print(f"near_dedup end to end (shingles, signatures, LSH, exact verification): {dedup_s:.2f} s, kept {len(kept)}")
    print(f"whole clean_corpus pipeline on the raw HTML: {pipeline_s:.2f} s")

    write_results(RESULTS, result)
    return result


if __name__ == "__main__":
    main()
