"""The search behind the preset shakespeare-char-cpu: which recipe reaches val 1.88 in the fewest steps.

Run: python benchmarks/search_cpu_recipe.py            print the recorded trials, in the order they ran
     python benchmarks/search_cpu_recipe.py NAME ...   rerun recorded trials and append them to the record
     python benchmarks/search_cpu_recipe.py --round R9  run a round's trials not yet recorded (ROUNDS below)
Each trial trains companion.model.GPT (4 x 128 over 64 characters unless it says otherwise) and evaluates val
every eval_interval steps on eval_iters batches. Trials compare by steps, which a busy machine does not change:
their wall times were taken while other jobs ran and say nothing. Steps become seconds in bench_train.py.
The record is results/cpu_recipe_search.jsonl. Its first three rounds (trials before "R4") ran before
make_optimizer switched to fused AdamW, so a rerun of those differs in the last digits; the "relu" trial of
round 1 swapped GELU for ReLU by hand, which is mlp="relu" now.
"""
from __future__ import annotations

import json
import os
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


# Round 9 (issue 16): the preset at 1,500 steps (the length that fits nanoGPT's CPU time) against the
# modded-nanogpt speedrun's levers, one at a time. Judged by the best val at equal steps; each
# lever's cost per step is timed separately, in bench_train.py.
PRESET_MODEL = dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, d_ff=256, context_length=64)
PRESET_1500 = dict(batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=100, beta2=0.95, eval_interval=100,
                   eval_iters=15, max_steps=1500, seed=1337, context_length=64)
SPRINT_MODEL = {"logit_softcap": 15.0, "qk_norm": True}
SPRINT_TRAIN = {"optimizer": "muon", "max_steps": 300, "warmup_steps": 50, "eval_interval": 25}
SPRINT_275 = {**SPRINT_TRAIN, "max_steps": 275}
SPRINT_24 = {**SPRINT_TRAIN, "batch_size": 24, "max_steps": 200, "warmup_steps": 40}
ROUNDS: dict[str, dict[str, tuple[dict, dict]]] = {
    "R9": {
        "R9 preset 1500": ({}, {}),
        "R9 relu2": ({"mlp": "relu2", "d_ff": 384}, {}),  # 2 x 128 x 384 = SwiGLU's 3 x 128 x 256
        "R9 softcap 15": ({"logit_softcap": 15.0}, {}),
        "R9 untied": ({"tie_embeddings": False}, {}),
        "R9 qk_norm": ({"qk_norm": True}, {}),
        "R9 lr 5e-3 w50": ({}, {"lr": 5e-3, "min_lr": 5e-4, "warmup_steps": 50}),
    },
    # Round 10: Muon (companion.muon) on the hidden matrices, AdamW at lr on the rest.
    # Then warmup-stable-decay, and the batch trade: half the batch for twice the steps, equal tokens.
    "R10": {
        "R10 muon 0.02": ({}, {"optimizer": "muon", "muon_lr": 0.02}),
        "R10 wsd": ({}, {"lr_schedule": "wsd"}),
        "R10 batch 8 x 3000": ({}, {"batch_size": 8, "max_steps": 3000, "eval_interval": 200}),
    },
    # Round 11: Muon won by far; on top of it, the levers that helped AdamW, and Muon's own rate.
    "R11": {
        "R11 muon softcap qk_norm": ({"logit_softcap": 15.0, "qk_norm": True}, {"optimizer": "muon"}),
        "R11 muon 0.04": ({}, {"optimizer": "muon", "muon_lr": 0.04}),
        "R11 muon softcap qk_norm wsd": ({"logit_softcap": 15.0, "qk_norm": True},
                                         {"optimizer": "muon", "lr_schedule": "wsd"}),
    },
    # Round 12: the sprint to 1.88, that recipe on a short schedule (its cosine decays over it).
    "R12": {
        "R12 sprint 300": (SPRINT_MODEL, {**SPRINT_TRAIN, "warmup_steps": 100}),
        "R12 sprint 300 w50": (SPRINT_MODEL, SPRINT_TRAIN),
        "R12 sprint 300 w50 seed 7": (SPRINT_MODEL, {**SPRINT_TRAIN, "seed": 7}),
        "R12 sprint 250 w50": (SPRINT_MODEL, {**SPRINT_TRAIN, "max_steps": 250}),
    },
    # Round 13: QK-norm costs about 14 ms of a 120 ms step on 2 cores (bench_train.py): does the
    # sprint need it? And a sprint of 275 steps, which the 0.30x goal would like.
    "R13": {
        "R13 sprint 300 w50 softcap only": ({"logit_softcap": 15.0}, SPRINT_TRAIN),
        "R13 sprint 275 w50": (SPRINT_MODEL, {**SPRINT_TRAIN, "max_steps": 275}),
        "R13 sprint 275 w50 seed 7": (SPRINT_MODEL, {**SPRINT_TRAIN, "max_steps": 275, "seed": 7}),
    },
    # Round 14: Newton–Schulz is a fifth of the preset's step on 2 cores (16 x 64 tokens amortise
    # little): do 3 or 4 iterations train as well as 5? And the width trade at about equal
    # parameters (4 x 128 has 655k in its blocks; 3 x 144, 622k; 6 x 104, 649k), with the budget
    # recipe (Muon, soft-cap, QK-norm).
    "R14": {
        "R14 sprint 275 ns3": (SPRINT_MODEL, {**SPRINT_275, "muon_ns_steps": 3}),
        "R14 sprint 275 ns3 seed 7": (SPRINT_MODEL, {**SPRINT_275, "muon_ns_steps": 3, "seed": 7}),
        "R14 sprint 275 ns4": (SPRINT_MODEL, {**SPRINT_275, "muon_ns_steps": 4}),
        "R14 sprint 275 ns4 seed 7": (SPRINT_MODEL, {**SPRINT_275, "muon_ns_steps": 4, "seed": 7}),
        "R14 muon softcap qk_norm ns3": (SPRINT_MODEL, {"optimizer": "muon", "muon_ns_steps": 3}),
        "R14 3 x 144": ({**SPRINT_MODEL, "n_layers": 3, "d_model": 144, "d_ff": 288},
                        {"optimizer": "muon"}),
        "R14 6 x 104": ({**SPRINT_MODEL, "n_layers": 6, "d_model": 104, "d_ff": 208},
                        {"optimizer": "muon"}),
    },
    # Round 15: the sprint's batch trade. Newton–Schulz costs the same per step at any batch, so a
    # larger batch amortises it: 24 x 200 and 32 x 150 see about the tokens of 16 x 275.
    "R15": {
        "R15 sprint 24 x 200": (SPRINT_MODEL, SPRINT_24),
        "R15 sprint 32 x 150": (SPRINT_MODEL, {**SPRINT_TRAIN, "batch_size": 32, "max_steps": 150,
                                               "warmup_steps": 30}),
    },
    # Round 16: 24 x 200 hit 1.88 with room to spare, in the time 16 x 275 takes: how short can
    # the 24-sequence sprint go, for both seeds?
    "R16": {
        "R16 sprint 24 x 200 seed 7": (SPRINT_MODEL, {**SPRINT_24, "max_steps": 200, "seed": 7}),
        "R16 sprint 24 x 175": (SPRINT_MODEL, {**SPRINT_24, "max_steps": 175, "warmup_steps": 35}),
        "R16 sprint 24 x 175 seed 7": (SPRINT_MODEL, {**SPRINT_24, "max_steps": 175,
                                                      "warmup_steps": 35, "seed": 7}),
        "R16 sprint 24 x 150": (SPRINT_MODEL, {**SPRINT_24, "max_steps": 150, "warmup_steps": 30}),
        "R16 sprint 24 x 150 seed 7": (SPRINT_MODEL, {**SPRINT_24, "max_steps": 150,
                                                      "warmup_steps": 30, "seed": 7}),
    },
}


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
    if names[:1] == ["--round"]:
        done = {r["name"] for r in recorded}
        for name, (model, train_kw) in ROUNDS[names[1]].items():
            if name in done:  # a round resumes where it stopped; rerun one by name
                continue
            r = trial(name, {**PRESET_MODEL, **model}, {**PRESET_1500, **train_kw}, train_ids, val_ids)
            best = min(v for _, v in r["curve"])
            print(f"{name}: best val {best:.4f}, final {r['final_val']:.4f}, hit 1.88 at {r['hit_step']}")
            with open(RECORD, "a") as f:
                f.write(json.dumps(r) + "\n")
        return
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
    # Steps, not seconds, are compared here, so SEARCH_THREADS=1 lets a search share a busy machine.
    torch.set_num_threads(int(os.environ.get("SEARCH_THREADS", min(2, torch.get_num_threads()))))
    main(sys.argv[1:])
