"""The search behind the preset shakespeare-char-cpu: which recipe reaches val 1.88 in the fewest steps.

Run: python benchmarks/search_cpu_recipe.py            print the recorded trials, in the order they ran
     python benchmarks/search_cpu_recipe.py NAME ...   rerun recorded trials and append them to the record
Each trial trains companion.model.GPT (4 x 128 over 64 characters unless it says otherwise) and evaluates val
every eval_interval steps on eval_iters batches. Trials compare by steps, which a busy machine does not change:
their wall times were taken while other jobs ran and say nothing. Steps become seconds in bench_train.py.
The record is results/cpu_recipe_search.jsonl. Its first three rounds (trials before "R4") ran before
make_optimizer switched to fused AdamW, so a rerun of those differs in the last digits; the "relu" trial of
round 1 swapped GELU for ReLU by hand, which is mlp="relu" now.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from companion.data import load_text
from companion.loader import train_val_split
from companion.model import GPT, GPTConfig
from companion.tokenizer import CharTokenizer
from companion.train import TrainConfig, train

RECORD = Path(__file__).resolve().parent / "results" / "cpu_recipe_search.jsonl"
TARGET = 1.88
BASE_MODEL = dict(d_model=128, n_layers=4, n_heads=4, dropout=0.0)


def trial(name: str, model: dict, train_kw: dict, train_ids: torch.Tensor, val_ids: torch.Tensor) -> dict:
    """One run; the first evaluated step with val <= TARGET, or None."""
    train_kw = {"eval_interval": 50, "eval_iters": 20, **train_kw}
    torch.manual_seed(1337)
    net = GPT(GPTConfig(vocab_size=65, **{**BASE_MODEL, **model}))
    t0 = time.perf_counter()
    h = train(net, train_ids, val_ids, TrainConfig(**train_kw), progress=False)
    hit = next((s for s, v in zip(h["eval_step"], h["eval_val"]) if v <= TARGET), None)
    return {"name": name, "model": model, "train": train_kw, "hit_step": hit, "final_val": h["eval_val"][-1],
            "wall": time.perf_counter() - t0, "curve": [[s, round(v, 4)] for s, v in zip(h["eval_step"], h["eval_val"])]}


def main(names: list[str]) -> None:
    recorded = [json.loads(line) for line in RECORD.read_text().splitlines()]
    if not names:
        print(f"{'trial':<34} {'batch':>5} {'steps':>5} {'lr':>7} {'warmup':>6} {'beta2':>5} {'hit 1.88 at':>11} {'final val':>9}")
        for r in recorded:
            t = r["train"]
            hit = "-" if r["hit_step"] is None else str(r["hit_step"])
            print(f"{r['name']:<34} {t['batch_size']:>5} {t['max_steps']:>5} {t.get('lr', 1e-3):>7.0e} "
                  f"{t.get('warmup_steps', 100):>6} {t.get('beta2', 0.99):>5} {hit:>11} {r['final_val']:>9.4f}")
        return
    text = load_text("tinyshakespeare")
    tok = CharTokenizer.from_text(text)
    train_ids, val_ids = train_val_split(torch.tensor(tok.encode(text)), 0.1)
    by_name = {r["name"]: r for r in recorded}
    for name in names:
        if name not in by_name:
            raise SystemExit(f"no recorded trial {name!r}; run with no arguments to list them")
        old = by_name[name]
        model = dict(old["model"])
        if old.get("act") == "relu":
            model["mlp"] = "relu"
        r = trial(name, model, old["train"], train_ids, val_ids)
        print(f"{name}: hit {r['hit_step']} (recorded {old['hit_step']}), final {r['final_val']:.4f} "
              f"(recorded {old['final_val']:.4f})")
        with open(RECORD, "a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    main(sys.argv[1:])
