"""`python -m companion.serve --checkpoint PATH --host 127.0.0.1 --port N`: load, quantize, serve.

Checkpoints with a character, BPE or chat (chapter 10) tokenizer load. Errors (a missing
checkpoint, a bad flag) are one `error:` line on stderr and exit code 2. SIGTERM drains the open
requests and exits 0. Chapter 11.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import load_checkpoint
from ..model import GPT, GPTConfig
from ..tokenizer import BPETokenizer, CharTokenizer, Tokenizer
from ..utils import OneLineErrorParser

__all__ = ["tokenizer_from_dict", "load_for_serving", "main"]


def tokenizer_from_dict(info: Any) -> Tokenizer:
    """A checkpoint's "tokenizer" entry -> the tokenizer; ValueError for a kind it cannot build.

    Kinds: {"kind": "char", "chars"}; {"kind": "bpe", "name": "gpt2"} (tiktoken's files) or
    {"kind": "bpe", "merges", "special_tokens", "pattern", "byte_ids"} (BPETokenizer.save's
    fields); {"kind": "chat", "base": <one of those>, "specials": [...]} (chapter 10).
    Example: tokenizer_from_dict({"kind": "char", "chars": "ab"}).encode("ba") -> [1, 0]
    """
    kind = info.get("kind") if isinstance(info, dict) else None
    if kind == "char":
        return CharTokenizer(info["chars"])
    if kind == "bpe" and "name" in info:
        return BPETokenizer.from_tiktoken(info["name"])
    if kind == "bpe":
        merges = {(int(a), int(b)): 256 + i for i, (a, b) in enumerate(info["merges"])}
        kwargs = {k: info[k] for k in ("pattern", "byte_ids") if info.get(k) is not None}
        return BPETokenizer(merges, info.get("special_tokens") or {}, **kwargs)
    if kind == "chat":
        from ..sft import ChatTokenizer  # chapter 10's template: the serve layer may import it

        return ChatTokenizer(tokenizer_from_dict(info.get("base")), tuple(info["specials"]))
    raise ValueError(f"cannot serve a tokenizer of kind {kind!r}; known: char, bpe, chat")


def load_for_serving(path: str | Path, bits: int | None = None,
                     group_size: int = 32) -> tuple[nn.Module, Tokenizer]:
    """A checkpoint -> (eval model, quantized to 8 or 4 bits if asked; its tokenizer)."""
    ckpt = load_checkpoint(path)
    tok_info, cfg = ckpt.get("tokenizer"), ckpt.get("model_config")
    if not isinstance(tok_info, dict) or cfg is None:
        raise ValueError(f"{path} holds no tokenizer and model config to serve from")
    try:
        tokenizer = tokenizer_from_dict(tok_info)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: its tokenizer entry is incomplete ({err!r})") from None
    model = GPT(GPTConfig.from_dict(cfg))
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"{path}: the tokenizer has {tokenizer.vocab_size} ids but the model "
                         f"only {model.config.vocab_size}")
    model.load_state_dict(ckpt["model"])
    model.eval()
    if bits is not None:
        from ..quantize import quantize

        model = quantize(model, bits=bits, group_size=group_size)
    return model, tokenizer


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until interrupted."""
    p = OneLineErrorParser(prog="python -m companion.serve", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a ckpt.pt written by companion.train")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--quantize", type=int, choices=(8, 4), default=None, help="weight bits")
    p.add_argument("--group-size", type=int, default=32, help="int4 group size")
    p.add_argument("--max-batch", type=int, default=8, help="rows in the running batch")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument("--kv-blocks", type=int, default=None,
                   help="KV blocks in the pool (default: half of max-batch full contexts)")
    p.add_argument("--max-step-tokens", type=int, default=256,
                   help="tokens one engine step reads: decodes first, then prompt chunks")
    p.add_argument("--no-prefix-cache", action="store_true", help="do not share prompt blocks")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting for a row; beyond it a 429 (default 256)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="413 above it (1 MiB)")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may run before it is dropped with a 504")
    p.add_argument("--stall-seconds", type=float, default=30.0,
                   help="/health reports 'stalled' when one engine step runs longer")
    p.add_argument("--drain-seconds", type=float, default=30.0,
                   help="on SIGTERM, how long open requests may run before the server exits")
    # One thread by default: the course's small models gain nothing from intra-op threads, and on
    # a busy CPU their spin-waits cost 15x (chapter 11); concurrency comes from batching.
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    try:
        if not 0 < args.port < 65536:
            raise ValueError(f"--port must lie in [1, 65535], got {args.port}")
        if args.max_batch < 1 or args.block_size < 1:
            raise ValueError(f"--max-batch and --block-size must be positive, got "
                             f"{args.max_batch} and {args.block_size}")
        for flag in ("max_queue", "max_body_bytes", "request_timeout", "stall_seconds",
                     "drain_seconds"):
            if not getattr(args, flag) > 0:
                raise ValueError(f"--{flag.replace('_', '-')} must be positive, got "
                                 f"{getattr(args, flag)}")
        model, tok = load_for_serving(args.checkpoint, args.quantize, args.group_size)
        from .app import Limits, build_app  # the `serve` extra: imported only to serve
        import uvicorn
    except ImportError as err:
        print(f"error: {err}; install the extra: pip install 'llm-course-companion[serve]'",
              file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(max(1, args.threads))
    from .engine import Engine

    try:
        engine = Engine(model, max_batch=args.max_batch, block_size=args.block_size,
                        num_blocks=args.kv_blocks, max_waiting=args.max_queue,
                        max_step_tokens=args.max_step_tokens,
                        prefix_cache=not args.no_prefix_cache)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = Path(args.checkpoint).stem + (f"-int{args.quantize}" if args.quantize else "")
    limits = Limits(max_body_bytes=args.max_body_bytes, request_timeout_s=args.request_timeout,
                    stall_s=args.stall_seconds)
    app = build_app(engine, tok, model_name=name, limits=limits)
    print(f"serving {name} on http://{args.host}:{args.port}", flush=True)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler it found: with
    # the default one the process would die by the signal. A handler that does nothing makes the
    # drained server return here and exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=args.drain_seconds)
    print("drained and stopped", flush=True)
    return 0
