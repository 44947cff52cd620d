"""The command line behind `python -m companion.train`: presets, --key=value, run and resume.

The --key=value overrides are typed.

Like nanoGPT's configurator, an override must name an existing field and keep its type, but the
value is parsed with ast.literal_eval, never exec. Introduced in chapter 7.
"""
from __future__ import annotations

import ast
import dataclasses
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import torch

from .checkpoint import CheckpointError, load_checkpoint, require_keys, resolve_sharded
from .data import load_text
from .loader import train_val_split
from .model import GPT, GPTConfig
from .tokenizer import CharTokenizer
from .train import NonFiniteLossError, TrainConfig, train
from .utils import OneLineErrorParser, get_device

__all__ = ["PRESETS", "parse_overrides", "apply_overrides", "load_corpus", "build_configs", "main"]

# name -> (GPTConfig fields without vocab_size, TrainConfig fields). vocab_size
# comes from the tokenizer.
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # Chapter 7's model: 6 layers of 256 with 8 heads over 256 characters, about 4.8M parameters; on
    # a GPU, nanoGPT's shakespeare_char schedule. About 19 h on a 2-core CPU:
    # use the cpu preset there.
    "shakespeare-char-5m": (
        dict(context_length=256, d_model=256, n_layers=6, n_heads=8, dropout=0.2),
        dict(max_steps=5000, batch_size=64, context_length=256, lr=1e-3, min_lr=1e-4,
             warmup_steps=100, eval_interval=250, eval_iters=200),
    ),
    # The two-core CPU record (chapter 7.9; benchmarks/search_cpu_recipe.py found it by steps and
    # benchmarks/bench_train.py raced it by seconds): a LLaMA-style block of 4 x 128 with a narrow
    # SwiGLU (256), QK-norm and logits soft-capped at 15; Muon (lr 0.02) for the hidden matrices,
    # AdamW (lr 3e-3, beta2 0.95) for the rest, over a 1,000-step cosine of batch 16, which fits
    # in the wall time of nanoGPT's CPU recipe with a few percent to spare (105 s against 109 s,
    # 2026-12-02, once Newton–Schulz ran as batched addmm; 900 steps fitted before).
    # --max-steps 275 --warmup_steps=50 --eval_interval=55 is the sprint to nanoGPT's val 1.88.
    # Evaluations see 15 x 16 x 64 tokens per split, as many as nanoGPT's CPU recipe (20 x 12 x 64).
    "shakespeare-char-cpu": (
        dict(context_length=64, d_model=128, n_layers=4, n_heads=4, d_ff=256, norm="rmsnorm",
             mlp="swiglu", pos="rope", bias=False, dropout=0.0, qk_norm=True, logit_softcap=15.0),
        dict(max_steps=1000, batch_size=16, context_length=64, lr=3e-3, min_lr=3e-4,
             warmup_steps=100, beta2=0.95, eval_interval=125, eval_iters=15, optimizer="muon",
             muon_lr=0.02),
    ),
}


def _accepts(hint: Any, raw: str, value: Any) -> tuple[bool, Any]:
    """Whether a parsed value fits a type hint, and the value to store.

    Hints: int, float, bool, str, Literal, X | None.
    """
    if typing.get_origin(hint) in (Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, v = _accepts(arm, raw, value)
            if ok:
                return True, v
        return False, None
    if hint is type(None):
        return value is None, None
    if typing.get_origin(hint) is Literal:
        return raw in typing.get_args(hint), raw
    if hint is bool:
        lowered = raw.lower()
        return (lowered in ("true", "false"), lowered == "true")
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:  # an int is a fine float: --lr=1 means 1.0
        return isinstance(value, (int, float)) and not isinstance(value, bool), (
            float(value) if isinstance(value, (int, float)) else None
        )
    if hint is str:
        return True, raw
    return False, None


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def parse_overrides(args: list[str]) -> dict[str, str]:
    """['--lr=3e-3', '--compile=True'] -> {'lr': '3e-3', 'compile': 'True'}.

    Anything else is an error.
    """
    out: dict[str, str] = {}
    for arg in args:
        if not (arg.startswith("--") and "=" in arg):
            raise ValueError(f"unrecognised argument {arg!r}: overrides are written --key=value")
        key, raw = arg[2:].split("=", 1)
        out[key.replace("-", "_")] = raw
    return out


def apply_overrides(
    overrides: dict[str, str], train_cfg: dict[str, Any], model_cfg: dict[str, Any] | None
) -> None:
    """Set each override, type-checked, in the TrainConfig fields, the GPTConfig fields or both.

    context_length, for one, lives in both.
    """
    targets = [(TrainConfig, train_cfg)] + (
        [(GPTConfig, model_cfg)] if model_cfg is not None else []
    )
    for key, raw in overrides.items():
        hits = [(cls, d) for cls, d in targets if key in {f.name for f in dataclasses.fields(cls)}]
        if not hits:
            known = sorted({f.name for cls, _ in targets for f in dataclasses.fields(cls)})
            raise ValueError(f"unknown setting --{key}; known settings: {', '.join(known)}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare word such as rmsnorm is a string
        for cls, d in hits:
            hint = typing.get_type_hints(cls)[key]
            ok, v = _accepts(hint, raw, value)
            if not ok:
                raise ValueError(f"--{key}={raw}: expected {_describe(hint)}")
            d[key] = v


def load_corpus(dataset: str) -> str:
    """A registered data set's text, or a UTF-8 file's; an empty corpus is an error."""
    path = Path(dataset)
    if path.suffix and path.is_file():
        text = path.read_text(encoding="utf-8")
    else:
        try:
            text = load_text(dataset)
        except KeyError as err:  # neither a file nor a registered name: say which
            raise ValueError(f"--dataset={dataset}: no such file, and {err.args[0]}") from None
    if not text:
        raise ValueError(f"the corpus {dataset} is empty: there is nothing to train on")
    return text


def build_configs(
    preset: str, overrides: dict[str, str], vocab_size: int
) -> tuple[GPTConfig, TrainConfig]:
    """A preset's two configs with overrides applied; unknown presets name the known ones."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    model_d, train_d = (dict(d) for d in PRESETS[preset])
    model_d["vocab_size"] = vocab_size
    apply_overrides(overrides, train_d, model_d)
    return GPTConfig(**model_d), TrainConfig(**train_d)


RESUME_KEYS = ("model_config", "train_config", "optimizer", "rng", "history", "tokenizer")


def _resume_configs(path: str, overrides: dict[str, str]) -> tuple[dict, GPTConfig, TrainConfig]:
    """The checkpoint at `path` and its two configs, the run's overrides applied to TrainConfig."""
    ckpt = load_checkpoint(path)
    # a sharded run's optimizer state is in its folder of shards, not in the file
    require_keys(ckpt, RESUME_KEYS if ckpt.get("sharded") is None
                 else tuple(k for k in RESUME_KEYS if k != "optimizer"), path)
    resolve_sharded(ckpt, path)
    if not isinstance(ckpt["tokenizer"], dict) or ckpt["tokenizer"].get("kind") != "char":
        raise CheckpointError(f"{path} holds no character tokenizer to rebuild the run from")
    train_d = dict(ckpt["train_config"])
    # the model is fixed by its weights; the run can change
    apply_overrides(overrides, train_d, None)
    try:
        model_cfg = GPTConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has a model_config this companion cannot build: "
                              f"{err}") from None
    return ckpt, model_cfg, TrainConfig.from_dict(train_d)


def _check_run(model_cfg: GPTConfig, train_cfg: TrainConfig, n_val: int) -> None:
    """Refuse, before any training, a context the model or the data cannot hold."""
    if train_cfg.context_length > model_cfg.context_length:
        raise ValueError(f"--context_length={train_cfg.context_length} exceeds the model's "
                         f"{model_cfg.context_length} (fixed by its position table on resume)")
    if n_val < train_cfg.context_length + 1:
        raise ValueError(f"--context_length={train_cfg.context_length} is too long for "
                         f"{train_cfg.dataset}: its validation split holds {n_val} tokens")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, train (or resume), print a sample.

    Bad input is one `error:` line on stderr, exit code 2; a diverged run is one line, exit 1.
    """
    parser = OneLineErrorParser(
        prog="python -m companion.train",
        description=__doc__.splitlines()[0],
        epilog="Any TrainConfig or GPTConfig field can be set as --key=value.",
    )
    parser.add_argument(
        "--preset", default="shakespeare-char-5m", help=f"one of: {', '.join(PRESETS)}"
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, mps (default: the best available)"
    )
    parser.add_argument(
        "--max-steps", type=int, default=None,
        help="optimizer steps (overrides the preset). On --resume, the cosine keeps the "
             "checkpoint's decay horizon, so steps past it run at min_lr and the lr never rises "
             "again; --lr_decay_steps=N sets a new horizon"
    )
    parser.add_argument(
        "--out", default=None,
        help="folder for ckpt.pt (the latest weights), best.pt (the lowest validation loss), "
             "log.csv and log.json (default runs/PRESET)"
    )
    parser.add_argument("--resume", default=None, help="a ckpt.pt (or best.pt) to continue from")
    parser.add_argument("--parallel", default=None,
                        help="chapter 9, under torchrun: none, ddp, fsdp, pipeline or tp")
    parser.add_argument(
        "--sample", type=int, default=200,
        help="characters to sample at the end from best.pt (0: none); past the context length "
             "the window slides"
    )
    args, rest = parser.parse_known_args(argv)
    try:
        if args.sample < 0:
            raise ValueError(f"--sample must be >= 0 characters, got {args.sample}")
        overrides = parse_overrides(rest)
        if args.max_steps is not None:
            overrides["max_steps"] = str(args.max_steps)
        if args.parallel is not None:
            overrides["parallel"] = args.parallel
        if args.resume is not None:
            ckpt, model_cfg, train_cfg = _resume_configs(args.resume, overrides)
            tok = CharTokenizer(ckpt["tokenizer"]["chars"])
            text = load_corpus(train_cfg.dataset)
        else:
            ckpt = None
            dataset = overrides.get(
                "dataset", PRESETS.get(args.preset, ({}, {}))[1].get("dataset", TrainConfig.dataset)
            )
            text = load_corpus(dataset)
            tok = CharTokenizer.from_text(text)
            model_cfg, train_cfg = build_configs(args.preset, overrides, tok.vocab_size)
        ids = torch.tensor(tok.encode(text), dtype=torch.long)
        train_ids, val_ids = train_val_split(ids, train_cfg.val_fraction)
        _check_run(model_cfg, train_cfg, len(val_ids))
        device = get_device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here")
        torch.manual_seed(train_cfg.seed)  # under torchrun, every rank builds the same weights
        model = GPT(model_cfg)
        if ckpt is not None:
            try:
                model.load_state_dict(ckpt["model"])  # train() loads them again; this checks
            except RuntimeError as err:
                raise CheckpointError(f"{args.resume}: its weights do not fit its model_config "
                                      f"({str(err).splitlines()[0].strip()})") from None
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = (
        Path(args.out)
        if args.out
        else (Path(args.resume).parent if args.resume else Path("runs") / args.preset)
    )
    is_main = int(os.environ.get("RANK", "0")) == 0  # torchrun's ranks: only rank 0 talks
    if is_main:
        print(f"{args.preset}: {model.num_params():,} parameters on {device}; "
              f"{train_cfg.max_steps} steps of {train_cfg.tokens_per_step:,} tokens; writing {out}")
    extra = {"tokenizer": {"kind": "char", "chars": "".join(tok.itos)}}
    try:
        history = train(
            model, train_ids, val_ids, train_cfg, device, out_dir=out, resume=ckpt, extra=extra
        )
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (CheckpointError, ValueError) as err:  # e.g. shards that another world size wrote
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not is_main:
        return 0
    print(f"step {history['eval_step'][-1]}: train {history['eval_train'][-1]:.4f}, val "
          f"{history['eval_val'][-1]:.4f}")
    if args.sample > 0:
        # sampling is chapter 7's other half; loaded only when asked
        from .generate import generate_text

        # best.pt holds gathered weights, also where this rank's model holds only shards; a
        # resumed run whose evaluations never beat the old best has only ckpt.pt in `out`
        path = out / "best.pt" if (out / "best.pt").is_file() else out / "ckpt.pt"
        best = load_checkpoint(path)
        model = GPT(model_cfg)
        model.load_state_dict(best["model"])
        print(f"sample of {args.sample} characters from {path.name} (step {best['step']}):")
        prompt = "\n" if "\n" in tok.itos else tok.itos[0]  # a corpus may have no newline
        text = generate_text(model, tok, prompt, max_new_tokens=args.sample, seed=train_cfg.seed)
        print(text[len(prompt):])
    return 0
