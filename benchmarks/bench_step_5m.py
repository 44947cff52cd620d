"""Seconds per optimizer step of the shakespeare-char-5m preset on this CPU (chapter 7's 5M model).

Run: python benchmarks/bench_step_5m.py [--steps 3]  ->  benchmarks/results/step_5m.json

One step is nanoGPT's batch of 64 x 256 characters through the 4.8M-parameter model: forward,
backward, clipping and AdamW, exactly as `companion.train` runs it. The first step is a warm-up and
is not timed. The load average is recorded with the result, because the 2-core machine this was
written on is shared: a quiet machine should re-measure.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from common import cpu_name, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the companion of this checkout

from companion.data import load_text  # noqa: E402
from companion.loader import random_batch  # noqa: E402
from companion.model import GPT  # noqa: E402
from companion.tokenizer import CharTokenizer  # noqa: E402
from companion.train import make_optimizer, next_token_loss  # noqa: E402
from companion.train_cli import build_configs  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "step_5m.json"


def main(steps: int = 3) -> dict:
    """Time `steps` optimizer steps of the 5M preset after one untimed one; write the JSON."""
    text = load_text("tinyshakespeare")
    tok = CharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text))
    model_cfg, cfg = build_configs("shakespeare-char-5m", {}, tok.vocab_size)
    torch.manual_seed(0)
    model = GPT(model_cfg).train()
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    load_before = os.getloadavg()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        x, y = random_batch(ids, cfg.batch_size, cfg.context_length, gen)
        next_token_loss(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step allocates and warms caches
            times.append(time.perf_counter() - t0)
        print(f"step {i}: {time.perf_counter() - t0:.2f} s")
    result = {
        "preset": "shakespeare-char-5m",
        "params": model.num_params(),
        "batch": [cfg.batch_size, cfg.context_length],
        "seconds_per_step": times,
        "median_s": sorted(times)[len(times) // 2],
        "full_run_hours": sorted(times)[len(times) // 2] * cfg.max_steps / 3600,
        "max_steps": cfg.max_steps,
        "machine": {
            "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            # a 1-minute load average under 1 before the run: nothing else was competing for the cores
            "note": ("measured on a quiet machine" if load_before[0] < 1.0 else
                     "measured on a shared, loaded machine; re-measure on a quiet one"),
        },
    }
    write_results(OUT, result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    main(parser.parse_args().steps)
