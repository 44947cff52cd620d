"""Scoring a post-trained model so that the score cannot flatter it. Chapter 10.

Exact match of greedy answers (one teacher-forced pass), sampled pass@k (the unbiased estimator of
Chen et al. 2021), Wilson intervals, and log-likelihood multiple choice the way evaluation
harnesses score it: summed, and normalised by the ending's length in characters (acc_norm).
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import torch
from torch import nn

from .tokenizer import Tokenizer

__all__ = [
    "wilson_interval",
    "pass_at_k",
    "greedy_exact_match",
    "cloze_items",
    "ending_logps",
    "choice_logps",
    "multiple_choice_accuracy",
]

Example = tuple[list[int], list[int]]  # (ids, mask), mask 1 on the answer's tokens


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion (95% at z = 1.96): (low, high).

    Unlike p +- z * se it stays inside [0, 1] and is not zero-width at 0 or n successes.
    Example: wilson_interval(0, 500) -> (0.0, 0.0076)
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k answers drawn without replacement from n, c of them right,
    is right: 1 - C(n - c, k) / C(n, k), the unbiased estimator of Chen et al. (2021), eq. 1.

    Example: pass_at_k(8, 2, 1) -> 0.25; pass_at_k(8, 2, 8) -> 1.0
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # the product form of the binomial ratio: no huge factorials
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


@torch.no_grad()
def greedy_exact_match(
    model: nn.Module, examples: Sequence[Example], batch_size: int = 512, pad_id: int = 0
) -> torch.Tensor:
    """1/0 per example: would greedy decoding write exactly the masked answer? (len(examples),)

    Greedy decoding writes the answer exactly when, with the answer fed in, every answer position's
    argmax is the next answer token; so one forward pass decides it, with no generation.
    Example: greedy_exact_match(model, [encode_chat(tok, chat)]).mean() -> exact match
    """
    from .sft import pad_batch  # padding is the SFT module's: one batch layout everywhere

    was = model.training
    model.eval()
    out = []
    for i in range(0, len(examples), batch_size):
        x, y, m = pad_batch(list(examples[i : i + batch_size]), pad_id)
        right = (model(x).argmax(-1) == y) | (m == 0)
        out.append(right.all(dim=1).float())
    model.train(was)
    return torch.cat(out)


# --- multiple choice by log-likelihood (HellaSwag's method) --------------------------------------


def cloze_items(
    text: str, n: int, n_choices: int = 4, min_chars: int = 30, max_chars: int = 60, seed: int = 0
) -> list[tuple[str, list[str], int]]:
    """Multiple-choice items from a text's lines: (context, endings, index of the true ending).

    Each line is cut at a space near its middle; the wrong endings are other lines' second halves.
    Example: cloze_items(val_text, 1)[0] -> ('Why, sir, ', ['what a...', ...], 2)
    """
    lines = [
        ln
        for ln in (s.strip() for s in text.split("\n"))
        if min_chars <= len(ln) <= max_chars and not ln.endswith(":") and " " in ln[len(ln) // 3 :]
    ]
    if len(lines) < n_choices:
        raise ValueError(f"only {len(lines)} usable lines; need at least n_choices={n_choices}")
    rng = random.Random(seed)
    halves = []
    for ln in lines:
        cut = ln.index(" ", len(ln) // 3) + 1  # after a space, so every ending starts with a word
        halves.append((ln[:cut], ln[cut:]))
    items = []
    for i in rng.sample(range(len(halves)), min(n, len(halves))):
        others = rng.sample([j for j in range(len(halves)) if j != i], n_choices - 1)
        endings = [halves[j][1] for j in others]
        answer = rng.randrange(n_choices)
        endings.insert(answer, halves[i][1])
        items.append((halves[i][0], endings, answer))
    return items


@torch.no_grad()
def ending_logps(
    model: nn.Module, tok: Tokenizer, pairs: list[tuple[str, str]], batch_size: int = 256
) -> torch.Tensor:
    """Summed log-probability of each ending after its context, batched: (len(pairs),)."""
    from .sft import pad_batch

    out = []
    for i in range(0, len(pairs), batch_size):
        examples = []
        for context, ending in pairs[i : i + batch_size]:
            ctx, end = tok.encode(context), tok.encode(ending)
            examples.append((ctx + end, [0] * len(ctx) + [1] * len(end)))
        x, y, m = pad_batch(examples, 0)
        logp = model(x).float().log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        out.append((logp * m).sum(-1))
    return torch.cat(out)


def choice_logps(
    model: nn.Module, tok: Tokenizer, context: str, endings: list[str]
) -> torch.Tensor:
    """Summed log-probability of each ending after the context: (len(endings),)."""
    return ending_logps(model, tok, [(context, e) for e in endings])


def multiple_choice_accuracy(
    model: nn.Module,
    tok: Tokenizer,
    items: list[tuple[str, list[str], int]],
    normalise: bool = False,
) -> float:
    """Share of items whose true ending scores highest.

    normalise=False is lm-evaluation-harness's acc (summed log-probability); True is its acc_norm,
    which divides each ending's sum by the ending's length in characters (bytes for ASCII text),
    not in tokens, so that the score does not depend on the tokenizer.
    """
    was = model.training
    model.eval()
    k = len(items[0][1])
    scores = ending_logps(model, tok, [(c, e) for c, endings, _ in items for e in endings]).view(
        -1, k
    )
    if normalise:
        scores = scores / torch.tensor([[len(e) for e in endings] for _, endings, _ in items])
    model.train(was)
    return (scores.argmax(-1) == torch.tensor([a for _, _, a in items])).float().mean().item()
