"""`python -m companion.serve --checkpoint PATH --host 127.0.0.1 --port N`: load, quantize, serve.

Errors (a missing checkpoint, a bad flag) are one `error:` line on stderr and exit code 2.
Chapter 11.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from torch import nn

from ..checkpoint import load_checkpoint
from ..model import GPT, GPTConfig
from ..tokenizer import CharTokenizer

__all__ = ["load_for_serving", "main"]


def load_for_serving(path: str | Path, bits: int | None = None,
                     group_size: int = 32) -> tuple[nn.Module, CharTokenizer]:
    """A chapter 7 checkpoint -> (eval model, quantized to 8 or 4 bits if asked; tokenizer)."""
    ckpt = load_checkpoint(path)
    tok_info, cfg = ckpt.get("tokenizer") or {}, ckpt.get("model_config")
    if tok_info.get("kind") != "char" or cfg is None:
        raise ValueError(f"{path} holds no character tokenizer and model config to serve from")
    model = GPT(GPTConfig.from_dict(cfg))
    model.load_state_dict(ckpt["model"])
    model.eval()
    if bits is not None:
        from ..quantize import quantize

        model = quantize(model, bits=bits, group_size=group_size)
    return model, CharTokenizer(tok_info["chars"])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until interrupted."""
    p = _Parser(prog="python -m companion.serve", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a ckpt.pt written by companion.train")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--quantize", type=int, choices=(8, 4), default=None, help="weight bits")
    p.add_argument("--group-size", type=int, default=32, help="int4 group size")
    p.add_argument("--max-batch", type=int, default=8, help="rows in the running batch")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
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
        model, tok = load_for_serving(args.checkpoint, args.quantize, args.group_size)
        from .app import build_app  # FastAPI is the `serve` extra: imported only to serve
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

    engine = Engine(model, max_batch=args.max_batch, block_size=args.block_size)
    name = Path(args.checkpoint).stem + (f"-int{args.quantize}" if args.quantize else "")
    app = build_app(engine, tok, model_name=name)
    print(f"serving {name} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
