"""Benchmark chapter 11's serving: the engine's policies, then the HTTP server against a peer.

Run: python benchmarks/bench_serve.py [--quick] [--no-peer]
A random LLaMA-style model of the chapter's CPU preset shape (4 x 128, context 256, a character
vocabulary) serves requests with prompts of 4-64 tokens, greedy. The weights are random: speed
does not depend on them.

1. In process: one-at-a-time, static and continuous batching at several batch sizes (tokens/s,
   steps, peak KV blocks against max-length preallocation).
2. Over HTTP, streaming, 1, 16 and 64 clients: the course's server (`python -m companion.serve`)
   and, when `transformers serve` is installed, `transformers serve --continuous-batching` on the
   same weights, exported with companion.hf_export (logits checked equal first). Per row:
   tokens/s, p50/p95 time to first token, p50 inter-token latency.
Writes benchmarks/results/serve.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import cpu_name, write_results

import torch

from companion.checkpoint import save_checkpoint
from companion.hf_export import char_tokenizer_to_hf, to_hf
from companion.model import GPT, GPTConfig
from companion.serve import Engine
from companion.serve.client import ServerProcess, free_port, stream

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"
CHARS = "".join(sorted(set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz \n.,:;!?'-")))


def engine_rows(model: GPT, cfg: GPTConfig, prompts: list[list[int]], answers: list[int],
                batches: tuple[int, ...]) -> list[dict]:
    rows = []
    for batch in batches:
        for policy in ("static", "continuous"):
            if batch == 1 and policy == "static":
                continue
            engine = Engine(model, max_batch=batch, block_size=16, policy=policy)
            t0 = time.perf_counter()
            engine.generate(prompts, answers)
            dt = time.perf_counter() - t0
            prealloc = batch * engine.cache.blocks_for(cfg.context_length)
            rows.append(dict(batch=batch, policy=policy, tokens_per_s=sum(answers) / dt,
                             steps=engine.steps, peak_blocks=engine.cache.peak_blocks,
                             prealloc_blocks=prealloc, preemptions=engine.preemptions))
            r = rows[-1]
            print(f"engine batch {batch:>2} {policy:<10} {r['tokens_per_s']:>7.0f} tok/s "
                  f"{r['steps']:>5} steps, peak {r['peak_blocks']:>3} of {prealloc} "
                  f"preallocated blocks", flush=True)
    return rows


def streaming_load(url: str, model_name: str, prompts: list[str], max_tokens: int,
                   clients: int) -> dict:
    """Every prompt once, streamed, `clients` at a time: TTFT, inter-token latency, tokens/s."""

    def one(prompt: str) -> tuple[float, list[float], int]:
        t0 = time.perf_counter()
        stamps, n = [], 0
        for event in stream(url, timeout=600, model=model_name, prompt=prompt,
                            max_tokens=max_tokens, temperature=0):
            if event == "[DONE]" or not event.get("choices"):
                continue
            text = event["choices"][0].get("text") or ""
            if text:
                stamps.append(time.perf_counter() - t0)
                n += len(text)  # a character vocabulary: one character is one token
        return stamps[0] if stamps else float("nan"), stamps, n

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, prompts))
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    gaps = sorted(b - a for r in results for a, b in zip(r[1], r[1][1:]))
    q = statistics.quantiles(ttft, n=20, method="inclusive") if len(ttft) > 1 else ttft * 19
    return {"clients": clients, "requests": len(results), "tokens": sum(r[2] for r in results),
            "tokens_per_s": sum(r[2] for r in results) / wall, "ttft_p50_s": q[9],
            "ttft_p95_s": q[18], "itl_p50_s": statistics.median(gaps) if gaps else float("nan")}


class Peer:
    """`transformers serve --continuous-batching FOLDER` on a free loopback port."""

    def __init__(self, folder: Path, threads: int, startup_s: float = 180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [_transformers_cli(), "serve",
                    "--continuous-batching", "--host", "127.0.0.1", "--port", str(self.port),
                    str(folder)]
        self.startup_s, self.folder = startup_s, folder
        # The same CPU threads as the course's server (--threads), for a like-for-like row.
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def __enter__(self) -> Peer:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     env=self.env)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("transformers serve did not answer /health in time")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _transformers_cli() -> str | None:
    """The `transformers` command: on PATH, or beside this Python (an unactivated venv)."""
    beside = Path(sys.executable).parent / "transformers"
    return shutil.which("transformers") or (str(beside) if beside.is_file() else None)


def export_for_peer(model: GPT, folder: Path) -> None:
    """The model and a character tokenizer in Hugging Face's format; logits checked equal."""
    from transformers import AutoModelForCausalLM

    to_hf(model, folder)
    char_tokenizer_to_hf(CHARS, folder)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    x = torch.randint(0, len(CHARS), (2, 32))
    with torch.no_grad():
        err = (hf(x).logits - model(x)).abs().max().item()
    if err > 1e-4:
        raise RuntimeError(f"the exported model's logits differ by {err:.2e}")
    print(f"exported to {folder}: logits equal to {err:.1e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer requests, and 1 and 16 clients only")
    parser.add_argument("--no-peer", action="store_true", help="skip transformers serve")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=len(CHARS), context_length=256, d_model=128, n_layers=4, n_heads=4,
                    d_ff=256, norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)
    model = GPT(cfg).eval()
    n = 8 if args.quick else 32
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, len(CHARS), (int(torch.randint(4, 65, (1,), generator=g)),),
                             generator=g).tolist() for _ in range(n)]
    answers = [int(torch.randint(8, 129, (1,), generator=g)) for _ in range(n)]
    rows = engine_rows(model, cfg, prompts, answers, (1, 8) if args.quick else (1, 4, 8, 16, 64))

    http, clients = [], (1, 16) if args.quick else (1, 16, 64)
    max_tokens = 32 if args.quick else 64
    texts = ["".join(CHARS[t] for t in p) for p in prompts]
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, folder = Path(tmp) / "ckpt.pt", Path(tmp) / "hf"
        save_checkpoint(ckpt, {"format_version": 1, "model": model.state_dict(), "step": 0,
                               "model_config": cfg.to_dict(),
                               "tokenizer": {"kind": "char", "chars": CHARS}})
        servers = [("companion", "ckpt", lambda: ServerProcess(ckpt, "--max-batch", "64",
                                                               "--threads", str(args.threads)))]
        have_peer = _transformers_cli() is not None and not args.no_peer
        if have_peer:
            export_for_peer(model, folder)
            servers.append(("transformers serve", str(folder), lambda: Peer(folder, args.threads)))
        else:
            print("transformers serve is not installed (or --no-peer): no peer row", flush=True)
        for name, model_name, start in servers:
            with start() as server:
                streaming_load(server.url, model_name, texts[:2], 4, 1)  # warm up
                for c in clients:
                    reqs = (texts * 8)[:max(2 * c, 8 if args.quick else 16)]
                    r = {"server": name, **streaming_load(server.url, model_name, reqs,
                                                          max_tokens, c)}
                    http.append(r)
                    print(f"{name:<20}{c:>4} clients {r['tokens_per_s']:>7.0f} tok/s  TTFT p50 "
                          f"{r['ttft_p50_s']:.3f} s p95 {r['ttft_p95_s']:.3f} s  ITL p50 "
                          f"{r['itl_p50_s'] * 1000:.1f} ms", flush=True)
    write_results(RESULTS, {"cpu": cpu_name(), "threads": args.threads, "requests": n,
                            "quick": args.quick, "rows": rows, "http": http,
                            "python": sys.version.split()[0], "torch": torch.__version__})


if __name__ == "__main__":
    main()
