"""Fusing q, k and v (and SwiGLU's gate and up) into one matmul: faster or slower on this CPU?

Run: python benchmarks/bench_fused_qkv.py  ->  benchmarks/results/fused_qkv.json

Issue 16 asked for nanoGPT's c_attn trick without giving up the Llama-named q_proj, k_proj and
v_proj. companion.attention.linear_many can concatenate their weights under autograd
(FUSE_PROJECTIONS); this times one training step (forward, backward, clipping, fused AdamW) of the
same model with it off and on, taking turns in alternating order, best of 8, at nanoGPT's CPU configuration and at the
preset shakespeare-char-cpu's. The flag stays off where fusing loses.
"""
from __future__ import annotations

import datetime
import os
import platform

import torch
from torch import nn

from bench_train import step_times
from common import cpu_name, write_results

import companion.attention as attention
from companion.model import GPT, GPTConfig
from companion.train import TrainConfig
from companion.train_cli import PRESETS

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fused_qkv.json")


class Fused(nn.Module):
    """The same model (same weights), run with FUSE_PROJECTIONS on: autograd keeps the fused graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        attention.FUSE_PROJECTIONS = True
        try:
            return self.model(idx)
        finally:
            attention.FUSE_PROJECTIONS = False


def main() -> dict:
    ids = torch.randint(0, 65, (100_000,), generator=torch.Generator().manual_seed(0))
    preset_model, _ = PRESETS["shakespeare-char-cpu"]
    configs = [("nanoGPT's CPU config (GELU MLP)", dict(context_length=64, d_model=128, n_layers=4,
                                                         n_heads=4, mlp="gelu_exact"), 12),
               ("preset shakespeare-char-cpu (SwiGLU)", dict(preset_model), 16)]
    rows = []
    for label, model_kw, batch in configs:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=65, **model_kw))
        cfg = TrainConfig(batch_size=batch, context_length=model_kw["context_length"])
        off_s, on_s = step_times([model, Fused(model)], cfg, ids, steps=20, repeats=8)
        rows.append({"config": label, "batch": batch, "separate_ms": off_s * 1e3,
                     "fused_ms": on_s * 1e3, "speedup": off_s / on_s})
    result = {"rows": rows, "default": attention.FUSE_PROJECTIONS,
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "python": platform.python_version(),
                          "load_average_at_end": os.getloadavg()[0],
                          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                              timespec="seconds")}}
    print(f"{'config':<38} {'batch':>5} {'separate ms':>12} {'fused ms':>9} {'speed-up':>9}")
    for r in rows:
        print(f"{r['config']:<38} {r['batch']:>5} {r['separate_ms']:>12.1f} {r['fused_ms']:>9.1f} "
              f"{r['speedup']:>8.2f}x")
    write_results(__import__("pathlib").Path(RESULTS), result)
    return result


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    main()
