"""Peak memory of causal attention against T: written out (softmax(QK^T)V), tiled, and SDPA.

Run: python benchmarks/bench_attention_memory.py
Prints a table and writes benchmarks/results/attention_memory.json. CPU, float32, no_grad, batch 1,
4 heads of width 64, one torch thread (SDPA's scratch buffers are per thread; speed is not measured).
"""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

from common import cpu_name, write_results

import torch
import torch.nn.functional as F

from companion.attention import causal_mask, scaled_dot_product, tiled_attention
from companion.tiled import peak_cpu_bytes

LENGTHS = [256, 512, 1024, 2048, 4096]
B, H, D, BLOCK = 1, 4, 64, 64
RESULTS = Path(__file__).resolve().parent / "results" / "attention_memory.json"

METHODS = {
    "written_out": lambda q, k, v: scaled_dot_product(q, k, v, causal_mask(q.shape[2])),
    "tiled": lambda q, k, v: tiled_attention(q, k, v, causal=True, block_size=BLOCK),
    "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
}


def main() -> dict:
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    rows = []
    for T in LENGTHS:
        g = torch.Generator().manual_seed(T)
        q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
        row = {"T": T, "qkv_bytes": 3 * q.numel() * 4, "scores_bytes": B * H * T * T * 4}
        for name, fn in METHODS.items():
            row[f"{name}_peak_bytes"] = peak_cpu_bytes(lambda: fn(q, k, v))
        want = METHODS["sdpa"](q, k, v)
        row["tiled_max_abs_diff"] = (METHODS["tiled"](q, k, v) - want).abs().max().item()
        rows.append(row)
    result = {
        "setup": {"batch": B, "heads": H, "d_head": D, "block_size": BLOCK, "dtype": "float32",
                  "causal": True, "measure": "torch.profiler profile_memory: peak live bytes"},
        "rows": rows,
        "machine": {
            "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch thread); "
          f"torch {m['torch']}; {m['date']}")
    print(f"causal attention, batch {B}, {H} heads, d_head {D}, fp32; peak MiB above q, k, v")
    print(f"{'T':>5} {'scores':>8} {'written':>8} {'tiled':>7} {'SDPA':>7} {'|tiled-SDPA|':>12}")
    for r in rows:
        print(f"{r['T']:>5} {r['scores_bytes'] / 2**20:>8.1f} {r['written_out_peak_bytes'] / 2**20:>8.1f}"
              f" {r['tiled_peak_bytes'] / 2**20:>7.2f} {r['sdpa_peak_bytes'] / 2**20:>7.2f}"
              f" {r['tiled_max_abs_diff']:>12.1e}")
    write_results(RESULTS, result)
    return result


if __name__ == "__main__":
    main()
