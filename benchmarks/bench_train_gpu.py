"""The GPU half of chapter 7's benchmarks: the recorded 5M run, and time to val <= 1.47 at nanoGPT's scale.

Run on a CUDA machine: python benchmarks/bench_train_gpu.py [--skip-5m] [--skip-race]
1. The full preset shakespeare-char-5m through the command line, exactly as chapter 7 prints it; writes
   benchmarks/results/shakespeare_gpu.json (hardware, date, command, history as in log.json, samples), which
   chapter 7 plots in place of its CPU stand-in.
2. nanoGPT's shakespeare_char config (6 layers, 384 wide, 6 heads, context 256, batch 64, dropout 0.2, lr 1e-3,
   5,000 iterations, eval every 250 on 200 batches) in the companion loop with bf16 autocast and torch.compile:
   wall time to val <= 1.47 (nanoGPT's best is 1.4697), tokens/s and MFU against the GPU's dense bf16 peak.
   The goal is under 60 s on one H100. Writes benchmarks/results/train_gpu.json.
--smoke runs both for a few steps on whatever device is there and writes nothing: a check of the plumbing.
"""
from __future__ import annotations

import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_train import time_to_target
from common import write_results

from companion.checkpoint import load_checkpoint
from companion.data import load_text
from companion.generate import generate_text
from companion.loader import train_val_split
from companion.model import GPT, GPTConfig
from companion.sizing import GPUS, flops_per_token, mfu
from companion.tokenizer import CharTokenizer
from companion.train import TrainConfig, train
from companion.train_cli import main as train_cli

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 1.47
COMMAND_5M = ["--preset", "shakespeare-char-5m", "--device", "cuda", "--out", "runs/5m"]
# nanoGPT's config/train_shakespeare_char.py
NANOGPT_MODEL = dict(context_length=256, d_model=384, n_layers=6, n_heads=6, dropout=0.2)
NANOGPT_TRAIN = dict(max_steps=5000, batch_size=64, context_length=256, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                     beta2=0.99, eval_interval=250, eval_iters=200, compile=True)
SMOKE = dict(max_steps=4, eval_interval=2, eval_iters=2, batch_size=4, compile=False)


def hardware() -> dict:
    """The GPU's name and its dense bf16 peak, matched against companion.sizing.GPUS by family."""
    if not torch.cuda.is_available():
        return {"name": "cpu (smoke test)", "peak_flops": None}
    name = torch.cuda.get_device_name()
    family = next((g for g in GPUS.values() if g.name.split("-")[0] in name), None)
    return {"name": name, "peak_flops": family.peak_flops if family else None,
            "peak_from": family.name if family else None, "torch": torch.__version__}


def record_5m(smoke: bool) -> dict:
    """Chapter 7's full run via the CLI; then three samples from the final weights at temperature 0.8."""
    out = Path(tempfile.mkdtemp()) if smoke else Path("runs/5m")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu only in a smoke test
    argv = ["--preset", "shakespeare-char-5m", "--device", device, "--out", str(out), "--sample", "0"]
    if smoke:
        argv += ["--max-steps", "4", "--eval_interval=2", "--eval_iters=2", "--batch_size=4"]
    t0 = time.perf_counter()
    if train_cli(argv) != 0:
        raise SystemExit("the 5M run failed; see above")
    wall = time.perf_counter() - t0
    ckpt = load_checkpoint(out / "ckpt.pt")
    model = GPT(GPTConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    tok = CharTokenizer(ckpt["tokenizer"]["chars"])
    samples = [generate_text(model, tok, prompt, max_new_tokens=40 if smoke else 400, temperature=0.8, seed=i)
               for i, prompt in enumerate(["\n", "ROMEO:", "JULIET:"])]
    history = json.loads((out / "log.json").read_text())
    return {"hardware": hardware()["name"], "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m companion.train " + " ".join(COMMAND_5M), "wall_s": wall,
            "best_val": min(history["eval_val"]), "final_val": history["eval_val"][-1],
            "final_train": history["eval_train"][-1], "history": history, "samples": samples}


def race(smoke: bool) -> dict:
    """nanoGPT's shakespeare_char scale in the companion loop: time to val <= TARGET, tokens/s, MFU."""
    text = load_text("tinyshakespeare")
    tok = CharTokenizer.from_text(text)
    train_ids, val_ids = train_val_split(torch.tensor(tok.encode(text)), 0.1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = TrainConfig(**{**NANOGPT_TRAIN, **(SMOKE if smoke else {})})
    torch.manual_seed(1337)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **NANOGPT_MODEL))
    h = train(model, train_ids, val_ids, cfg, device)
    hit = time_to_target(h, TARGET)
    # Evaluations included, so this understates the training steps' own rate.
    tok_s = cfg.tokens_per_step * cfg.max_steps / h["elapsed"][-1]
    hw = hardware()
    fpt = flops_per_token(model.config, seq_len=cfg.context_length)
    return {"hardware": hw, "model_config": model.config.to_dict(), "train_config": cfg.to_dict(),
            "params": model.num_params(), "target_val": TARGET, "time_to_target_s": hit, "wall_s": h["elapsed"][-1],
            "best_val": min(h["eval_val"]), "tokens_per_s": tok_s, "flops_per_token": fpt,
            "mfu": mfu(tok_s, fpt, hw["peak_flops"]) if hw["peak_flops"] else None,
            "goal_s": 60.0, "curve": {k: h[k] for k in ("eval_step", "eval_train", "eval_val", "elapsed")},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(argv: list[str]) -> None:
    smoke = "--smoke" in argv
    if not smoke and not torch.cuda.is_available():
        print("no CUDA device: skipped (this benchmark records GPU runs; --smoke checks it anywhere)")
        return
    if "--skip-5m" not in argv:
        run = record_5m(smoke)
        print(f"5M run: {run['wall_s']:.0f} s, best val {run['best_val']:.4f}, final val {run['final_val']:.4f}, "
              f"final train {run['final_train']:.4f}\n{run['samples'][1]}")
        if not smoke:
            write_results(RESULTS / "shakespeare_gpu.json", run)
    if "--skip-race" not in argv:
        r = race(smoke)
        hit = "never" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f} s"
        util = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        print(f"\n{'hardware':<28} {'params':>10} {'to val<=1.47':>13} {'total s':>8} {'best val':>9} {'tok/s':>10} {'MFU':>6}")
        print(f"{r['hardware']['name']:<28} {r['params']:>10,} {hit:>13} {r['wall_s']:>8.1f} {r['best_val']:>9.4f} "
              f"{r['tokens_per_s']:>10,.0f} {util:>6}   (goal: under {r['goal_s']:.0f} s on one H100)")
        if not smoke:
            write_results(RESULTS / "train_gpu.json", r)


if __name__ == "__main__":
    main(sys.argv[1:])
