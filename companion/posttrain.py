"""`python -m companion.posttrain --out DIR`: chapter 10's recorded runs, from the shipped base.

One command makes everything chapter 10 loads rather than trains in its 90 seconds:
- DIR/sft_reverse.pt: masked SFT on the word-reversal demonstrations (chapter 11 serves it);
- DIR/rl_reverse.pt and DIR/dpo_reverse.pt: GRPO and on-policy DPO from that SFT model;
- DIR/posttrain.json: every stage's evaluation, the GRPO curves and ablations, the DPO beta sweep,
  LoRA against full SFT, more SFT on the same demonstrations, and SFT with plain text mixed in,
  with the command, date, hardware and seconds of each part.
The chapter's defaults are these; `--quick` shrinks every run to a smoke test. Errors are one
`error:` line and exit code 2. On a GPU the same command runs as it is (it uses the CPU).
"""

from __future__ import annotations

import copy
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import tasks
from .data import load_text
from .dpo import answer_kl, on_policy_pairs, train_dpo
from .evaluate import (
    cloze_items,
    greedy_exact_match,
    multiple_choice_accuracy,
    pass_at_k,
    wilson_interval,
)
from .lora import apply_lora, merge_lora, trainable_params
from .loader import train_val_split
from .rl import GRPOConfig, rollout_tensors, sample_groups, train_grpo
from .sft import (
    ChatTokenizer,
    encode_chat,
    finetune,
    load_base,
    pad_batch,
    render_chat,
    resize_vocab,
    save_chat_model,
)
from .utils import OneLineErrorParser

__all__ = [
    "Setup",
    "PostTrainConfig",
    "setup",
    "prompt_ids",
    "examples",
    "score",
    "evaluate_stage",
    "sample_and_score",
    "plain_loss",
    "load_record",
    "load_stage",
    "main",
]


@dataclass
class PostTrainConfig:
    """Chapter 10's recorded settings. Example: PostTrainConfig(sft_steps=10)"""

    n_test: int = 1000
    n_demos: int = 300  # demonstrations with answers; RL and DPO use the other words' prompts only
    sft_steps: int = 500
    sft_lr: float = 1e-3
    sft_batch: int = 32
    more_sft_steps: int = 200  # the control: more SFT on the same demonstrations
    plain_rows: int = 8  # rows of Shakespeare per SFT batch in the mixed run
    grpo: GRPOConfig = field(default_factory=lambda: GRPOConfig(steps=60))
    grpo_eval_every: int = 5
    dpo_betas: tuple[float, ...] = (0.05, 0.2, 1.0)
    dpo_steps: int = 60
    dpo_lr: float = 1e-4
    dpo_prompts: int = 2000
    lora_ranks: tuple[int, ...] = (1, 4, 16)
    lora_alpha: float = 8.0
    lora_lr: float = 3e-3
    k_samples: int = 8  # samples per test word for pass@k
    seed: int = 0


@dataclass
class Setup:
    """What every stage shares: words, tokenizer, base model, plain-text ids."""

    train_words: list[str]
    test_words: list[str]
    demos: list[str]
    tok: ChatTokenizer
    base: nn.Module
    end_id: int
    val_ids: torch.Tensor
    train_ids: torch.Tensor
    items: list[tuple[str, list[str], int]]


def setup(cfg: PostTrainConfig) -> Setup:
    """Load the base model and Tiny Shakespeare; split the task's words; grow the vocabulary."""
    base, base_tok, _ = load_base()
    text = load_text("tinyshakespeare")
    split = tasks.split_words(tasks.task_words(text), cfg.n_test, seed=cfg.seed)
    tok = ChatTokenizer(base_tok)
    model = resize_vocab(copy.deepcopy(base), tok.vocab_size).eval()
    ids = torch.tensor(base_tok.encode(text))
    train_ids, val_ids = train_val_split(ids, 0.1)
    val_text = base_tok.decode(val_ids.tolist())
    return Setup(split["train"], split["test"], split["train"][: cfg.n_demos], tok, model,
                 tok.special_ids["<|end|>"], val_ids, train_ids, cloze_items(val_text, n=300))


def prompt_ids(s: Setup, word: str) -> list[int]:
    """The chat up to the assistant's role token: what the model is given."""
    return s.tok.encode(render_chat(tasks.prompt_messages(word)) + "<|assistant|>")


def examples(s: Setup, words: list[str]) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) of the chats with the right answers."""
    return [encode_chat(s.tok, tasks.chat_messages(w)) for w in words]


def score(s: Setup, word: str, response: list[int]) -> float:
    """The verifier on token ids: decode up to <|end|>; a special token inside is wrong."""
    ended = bool(response) and response[-1] == s.end_id
    body = response[:-1] if ended else response
    if any(t >= s.tok.base.vocab_size for t in body):
        return 0.0
    return tasks.reward(word, s.tok.base.decode(body), ended)


def sample_and_score(s: Setup, model: nn.Module, words: list[str], k: int, seed: int = 0
                     ) -> tuple[list[tuple[list[int], list[int]]], torch.Tensor]:
    """k sampled answers (temperature 1) per word and their rewards, in word order."""
    g = torch.Generator().manual_seed(seed)
    rollout = sample_groups(model, [prompt_ids(s, w) for w in words], k, 10, s.end_id, 1.0, g)
    rewards = torch.tensor([score(s, words[j // k], r) for j, (_, r) in enumerate(rollout)])
    return rollout, rewards


@torch.no_grad()
def plain_loss(s: Setup, model: nn.Module, batches: int = 20) -> float:
    """Mean next-character loss on held-out Shakespeare (fixed windows): the alignment tax."""
    g = torch.Generator().manual_seed(1)
    start = torch.randint(len(s.val_ids) - 65, (batches * 32,), generator=g)
    win = torch.stack([s.val_ids[i : i + 65] for i in start.tolist()])
    model.eval()
    losses = [nn.functional.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten())
              for w in win.split(32)]
    return float(torch.stack(losses).mean())


def evaluate_stage(s: Setup, model: nn.Module, k: int = 8, seed: int = 0) -> dict[str, Any]:
    """Greedy exact match with its Wilson interval, sampled pass@1..k, answer length, the plain
    text's loss, and multiple choice (acc and acc_norm): one stage's row."""
    hits = greedy_exact_match(model, examples(s, s.test_words))
    n, c = len(hits), int(hits.sum())
    rollout, rewards = sample_and_score(s, model, s.test_words, k, seed)
    right = rewards.view(-1, k).sum(1).long().tolist()
    lengths = [len(r) for _, r in rollout]
    return {
        "greedy_correct": c, "n": n, "greedy": c / n, "greedy_ci": wilson_interval(c, n),
        "pass_at": {j: sum(pass_at_k(k, r, j) for r in right) / n
                    for j in sorted({1, 2, 4, k}) if j <= k},
        "response_length": sum(lengths) / len(lengths),
        "plain_loss": plain_loss(s, model),
        "mc_acc": multiple_choice_accuracy(model, s.tok.base, s.items),
        "mc_acc_norm": multiple_choice_accuracy(model, s.tok.base, s.items, normalise=True),
    }


def load_record() -> dict[str, Any]:
    """The shipped posttrain.json (companion/assets), made by this module's command."""
    from importlib import resources

    return json.loads((resources.files("companion") / "assets" / "posttrain.json").read_text())


def load_stage(name: str) -> tuple[nn.Module, ChatTokenizer, dict[str, Any]]:
    """A shipped chat model by stage: "sft", "rl" or "dpo" (companion/assets/NAME_reverse.pt)."""
    from importlib import resources

    from .sft import load_chat_model

    if name not in ("sft", "rl", "dpo"):
        raise ValueError(f"stage must be 'sft', 'rl' or 'dpo', got {name!r}")
    with resources.as_file(resources.files("companion") / "assets" / f"{name}_reverse.pt") as p:
        return load_chat_model(p)


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def run(cfg: PostTrainConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Every recorded run of chapter 10; writes the checkpoints and posttrain.json into out."""
    t_all = time.perf_counter()
    torch.manual_seed(cfg.seed)
    s = setup(cfg)
    rec: dict[str, Any] = {"config": _plain(asdict(cfg)), "stages": {}, "seconds": {}}
    say = print if progress else (lambda *a, **k: None)
    stages = rec["stages"]
    stages["base"] = evaluate_stage(s, s.base, cfg.k_samples)
    rec["baselines"] = tasks.trivial_baselines(s.test_words, s.train_words)
    rec["overlap"] = len(set(s.test_words) & set(s.train_words))

    demo_data = pad_batch(examples(s, s.demos), 0)
    sft = copy.deepcopy(s.base)
    losses, rec["seconds"]["sft"] = _timed(finetune, sft, demo_data, cfg.sft_steps, cfg.sft_lr,
                                           cfg.sft_batch, cfg.seed)
    rec["sft_losses"] = losses
    stages["SFT"] = evaluate_stage(s, sft, cfg.k_samples)
    say(f"SFT: {stages['SFT']['greedy']:.3f} in {rec['seconds']['sft']:.0f} s")
    save_chat_model(out / "sft_reverse.pt", sft, s.tok, {"stage": "SFT"})

    more = copy.deepcopy(sft)
    finetune(more, demo_data, cfg.more_sft_steps, cfg.sft_lr, cfg.sft_batch, cfg.seed + 1)
    stages["SFT, more steps"] = evaluate_stage(s, more, cfg.k_samples)
    mixed = copy.deepcopy(s.base)
    finetune(mixed, demo_data, cfg.sft_steps, cfg.sft_lr, cfg.sft_batch, cfg.seed,
             plain=s.train_ids, plain_rows=cfg.plain_rows)
    stages["SFT + plain text"] = evaluate_stage(s, mixed, cfg.k_samples)

    # GRPO and its two ablations, from the same SFT model, on prompts only (no answers)
    prompts = [prompt_ids(s, w) for w in s.train_words]
    rec["grpo"] = {}
    for name, grpo_cfg in (("GRPO", cfg.grpo),
                           ("no baseline", replace(cfg.grpo, loss_type="no_baseline")),
                           ("no clip", replace(cfg.grpo, loss_type="reinforce_with_baseline"))):
        policy = copy.deepcopy(sft)
        curve = {"step": [0], "greedy": [stages["SFT"]["greedy"]]}

        def checkpoint(n: int, policy: torch.nn.Module = policy, curve: dict = curve,
                       last: int = grpo_cfg.steps) -> None:
            # One run with one AdamW: scoring mid-run must not restart the optimizer's moments.
            if n % cfg.grpo_eval_every == 0 or n == last:
                curve["step"].append(n)
                curve["greedy"].append(float(greedy_exact_match(policy, examples(s, s.test_words))
                                             .mean()))

        t0 = time.perf_counter()
        log = train_grpo(policy, prompts, lambda j, r: score(s, s.train_words[j], r), s.end_id,
                         grpo_cfg, on_batch=checkpoint)
        rec["seconds"][f"grpo {name}"] = time.perf_counter() - t0
        rec["grpo"][name] = {"log": log, "curve": curve}
        stages[name if name != "GRPO" else "GRPO"] = evaluate_stage(s, policy, cfg.k_samples)
        say(f"{name}: {stages[name]['greedy']:.3f}")
        if name == "GRPO":
            save_chat_model(out / "rl_reverse.pt", policy, s.tok, {"stage": "GRPO"})

    # DPO on the SFT model's own samples: a right answer against a wrong one per prompt
    rollout, rewards = sample_and_score(s, sft, s.train_words[: cfg.dpo_prompts], cfg.k_samples,
                                        seed=cfg.seed + 7)
    pairs = on_policy_pairs(rollout, rewards, cfg.k_samples, seed=cfg.seed)
    rec["dpo"] = {"pairs": len(pairs), "prompts": cfg.dpo_prompts, "runs": {}}
    if pairs:
        xt, yt, mt = pad_batch(examples(s, s.test_words), 0)
        with torch.no_grad():
            ref_logits = sft(xt)
        for beta in cfg.dpo_betas:
            policy = copy.deepcopy(sft)
            log, secs = _timed(train_dpo, policy, sft, pairs, beta, cfg.dpo_steps, cfg.dpo_lr)
            with torch.no_grad():
                kl = float(answer_kl(policy(xt), ref_logits, mt))
            row = evaluate_stage(s, policy, cfg.k_samples)
            rec["dpo"]["runs"][str(beta)] = {"log": log, "kl": kl, "eval": row, "seconds": secs}
            say(f"DPO beta={beta}: {row['greedy']:.3f}, KL {kl:.3f}")
        best = max(cfg.dpo_betas, key=lambda b: rec["dpo"]["runs"][str(b)]["eval"]["greedy"])
        rec["dpo"]["chosen_beta"] = best
        stages["DPO"] = rec["dpo"]["runs"][str(best)]["eval"]
        policy = copy.deepcopy(sft)
        train_dpo(policy, sft, pairs, best, cfg.dpo_steps, cfg.dpo_lr)
        save_chat_model(out / "dpo_reverse.pt", policy, s.tok, {"stage": "DPO", "beta": best})

    # LoRA against full SFT: alpha / r and rsLoRA's alpha / sqrt(r), alpha fixed across ranks
    rec["lora"] = {"full_params": trainable_params(s.base), "runs": []}
    for rank in cfg.lora_ranks:
        for rs in (False, True):
            model = apply_lora(copy.deepcopy(s.base), rank=rank, alpha=cfg.lora_alpha, rslora=rs)
            _unfreeze_new_rows(model, s.tok.base.vocab_size)
            n_params = trainable_params(model)
            finetune(model, demo_data, cfg.sft_steps, cfg.lora_lr, cfg.sft_batch, cfg.seed)
            merge_lora(model)
            hits = greedy_exact_match(model, examples(s, s.test_words))
            c = int(hits.sum())
            rec["lora"]["runs"].append({"rank": rank, "rslora": rs, "params": n_params,
                                        "greedy": c / len(hits),
                                        "greedy_ci": wilson_interval(c, len(hits)),
                                        "plain_loss": plain_loss(s, model)})
            say(f"LoRA r={rank} rslora={rs}: {c / len(hits):.3f}")
    rec["seconds"]["total"] = time.perf_counter() - t_all
    return rec


def _unfreeze_new_rows(model: nn.Module, n_old: int) -> None:
    """Let the special tokens' embedding rows learn under LoRA (peft's trainable_token_indices)."""
    emb = model.tok_emb.weight.requires_grad_(True)
    new_rows = (torch.arange(emb.shape[0]) >= n_old)[:, None].to(emb.dtype)
    emb.register_hook(lambda g: g * new_rows)


def _plain(x: Any) -> Any:
    """Dataclass dicts with tuples -> JSON-ready values."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _cpu_name() -> str:
    """The CPU's model name where Linux tells it, else the platform's machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run everything, write the record."""
    p = OneLineErrorParser(prog="python -m companion.posttrain",
                           description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the checkpoints and posttrain.json")
    p.add_argument("--quick", action="store_true", help="tiny runs: a smoke test, not a record")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = p.parse_args(argv)
    cfg = PostTrainConfig()
    if args.quick:
        cfg = replace(cfg, n_test=40, n_demos=40, sft_steps=4, more_sft_steps=2, dpo_steps=2,
                      dpo_prompts=16, dpo_betas=(0.1,), lora_ranks=(1,), k_samples=2,
                      grpo=replace(cfg.grpo, steps=2, prompts_per_step=4, group_size=2),
                      grpo_eval_every=1)
    out = Path(args.out)
    try:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        out.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(args.threads)
        rec = run(cfg, out)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    rec["provenance"] = {
        "command": "python -m companion.posttrain " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "hardware": f"{_cpu_name()}, {torch.get_num_threads()} torch thread(s)",
        "torch": torch.__version__, "quick": args.quick,
    }
    (out / "posttrain.json").write_text(json.dumps(rec, indent=1) + "\n")
    print(f"wrote {out}/posttrain.json and the checkpoints in {rec['seconds']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
