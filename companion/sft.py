"""Supervised fine-tuning: the shipped base model, chat template, masked loss, packing. Chapter 10.

The base model is chapter 7's CPU preset, trained by the course's CLI, shipped in companion/assets
(`load_base`). The task: say which character speaks a line of Tiny Shakespeare (`speaker_task`).
"""

from __future__ import annotations

import json
import random
import re
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .model import GPT, GPTConfig
from .tokenizer import CharTokenizer, Tokenizer

__all__ = [
    "SPECIAL_TOKENS",
    "BASE_CHECKPOINT",
    "load_base",
    "ChatTokenizer",
    "render_chat",
    "parse_chat",
    "encode_chat",
    "resize_vocab",
    "masked_loss",
    "pad_batch",
    "pack",
    "speaker_task",
    "answer_accuracy",
    "answer",
    "chat_example",
    "cloze_items",
    "ending_logps",
    "choice_logps",
    "multiple_choice_accuracy",
]

SPECIAL_TOKENS = ("<|user|>", "<|assistant|>", "<|end|>")
BASE_CHECKPOINT = "base_char.pt"  # in companion/assets, with base_char.json (how it was made)


def load_base(name: str = BASE_CHECKPOINT) -> tuple[GPT, CharTokenizer, dict[str, Any]]:
    """The shipped base model (eval mode), tokenizer and provenance; loaded with weights_only=True.

    Example: model, tok, info = load_base(); tok.vocab_size -> 65
    """
    folder = resources.files("companion") / "assets"
    with resources.as_file(folder / name) as path:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    info = json.loads((folder / name.replace(".pt", ".json")).read_text())
    model = GPT(GPTConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), CharTokenizer(ckpt["tokenizer"]["chars"]), info


class ChatTokenizer(Tokenizer):
    """Any base tokenizer plus special tokens, numbered after the base vocabulary.

    The base may be chapter 1's characters or GPT-2's byte-level BPE.
    Example: ChatTokenizer(CharTokenizer("ab")).encode("a<|end|>") -> [0, 4]
    """

    def __init__(self, base: Tokenizer, specials: tuple[str, ...] = SPECIAL_TOKENS):
        clash = [s for s in specials if _is_base_token(base, s)]
        if clash or len(set(specials)) != len(specials):
            raise ValueError(
                f"special tokens must be distinct and not tokens of the base, got {specials}"
                + (f" ({clash} already in the base vocabulary)" if clash else "")
            )
        self.base, self.specials = base, tuple(specials)
        self.special_ids = {s: base.vocab_size + i for i, s in enumerate(specials)}
        self.vocab_size = base.vocab_size + len(specials)
        # Longest first, so that a special token is never split into a shorter one's prefix.
        self._split = re.compile(
            "(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")"
        )

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._split.split(text):
            if piece in self.special_ids:
                ids.append(self.special_ids[piece])
            elif piece:
                ids += self.base.encode(piece)
        return ids

    def decode(self, ids: Any) -> str:
        names = {i: s for s, i in self.special_ids.items()}
        out: list[str] = []
        run: list[int] = []  # base ids decode together: a BPE character may span several tokens
        for i in (int(i) for i in ids):
            if i in names:
                out += [self.base.decode(run), names[i]] if run else [names[i]]
                run = []
            elif 0 <= i < self.base.vocab_size:
                run.append(i)
            else:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size})")
        if run:
            out.append(self.base.decode(run))
        return "".join(out)


def _is_base_token(base: Tokenizer, s: str) -> bool:
    """True when the base already has `s` as one token (a character, a merge or its own special)."""
    if s in getattr(base, "special_tokens", {}):
        return True
    try:
        ids = base.encode(s)
    except ValueError:  # the base cannot spell it at all, so it cannot clash
        return False
    return len(ids) == 1 and base.decode(ids) == s


def render_chat(messages: list[dict[str, str]]) -> str:
    """Messages -> one string: <|role|>content<|end|> per turn.

    Example: render_chat([{"role": "user", "content": "hi"}]) -> '<|user|>hi<|end|>'
    """
    out = []
    for m in messages:
        if m.get("role") not in ("user", "assistant"):
            raise ValueError(f"role must be 'user' or 'assistant', got {m.get('role')!r}")
        if any(s in m["content"] for s in SPECIAL_TOKENS):
            raise ValueError(f"message content may not contain a special token: {m['content']!r}")
        out.append(f"<|{m['role']}|>{m['content']}<|end|>")
    return "".join(out)


def parse_chat(text: str) -> list[dict[str, str]]:
    """Inverse of render_chat; text that is not a sequence of whole turns is an error."""
    turns = re.findall(r"<\|(user|assistant)\|>(.*?)<\|end\|>", text, flags=re.S)
    messages = [{"role": r, "content": c} for r, c in turns]
    if render_chat(messages) != text:
        raise ValueError(f"not a rendered chat: {text[:60]!r}")
    return messages


def encode_chat(tok: ChatTokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of the chat and a 0/1 mask, 1 on what the assistant writes (its <|end|> too).

    The role token itself is part of the prompt: at inference we type it, the model writes the rest.
    """
    ids: list[int] = []
    mask: list[int] = []
    for m in messages:
        head = tok.encode(f"<|{m['role']}|>")
        body = tok.encode(m["content"] + "<|end|>")
        learn = int(m["role"] == "assistant")
        ids += head + body
        mask += [0] * len(head) + [learn] * len(body)
    return ids, mask


def resize_vocab(model: GPT, vocab_size: int) -> GPT:
    """Grow tok_emb and lm_head to vocab_size rows in place; new rows start at the old rows' mean.

    The mean keeps a new token's logit near the average one (Hewitt 2021), where a random row's
    logit is unrelated to anything the model learned. Tied weights stay tied.
    """
    old = model.tok_emb.weight
    n_old, d = old.shape
    if vocab_size < n_old:
        raise ValueError(f"cannot shrink the vocabulary from {n_old} to {vocab_size}")
    emb = nn.Embedding(vocab_size, d, device=old.device, dtype=old.dtype)
    with torch.no_grad():
        emb.weight[:n_old] = old
        emb.weight[n_old:] = old.mean(dim=0)
    head = nn.Linear(d, vocab_size, bias=False, device=old.device, dtype=old.dtype)
    if model.config.tie_embeddings:
        head.weight = emb.weight
    else:
        with torch.no_grad():
            head.weight[:n_old] = model.lm_head.weight
            head.weight[n_old:] = model.lm_head.weight.mean(dim=0)
    model.tok_emb, model.lm_head = emb, head
    model.config.vocab_size = vocab_size
    return model


def masked_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    n_tokens: int | float | None = None,
) -> torch.Tensor:
    """Cross-entropy summed where mask is 1, divided by n_tokens (default: mask.sum()).

    Under gradient accumulation pass the count of the whole accumulated batch as n_tokens, so that
    every response token weighs the same whatever micro-batch it landed in.
    Example: masked_loss(torch.zeros(1, 2, 4), torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    -> log 4
    """
    ce = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="none"
    )
    mask = mask.reshape(-1).to(ce.dtype)
    count = mask.sum() if n_tokens is None else torch.as_tensor(float(n_tokens))
    if count <= 0:
        raise ValueError("the mask selects no tokens: there is nothing to learn from")
    return (ce * mask).sum() / count


Example = tuple[list[int], list[int]]  # (ids, mask) from encode_chat


def pad_batch(
    examples: list[Example], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row per example, right-padded to the longest: (inputs, targets, mask), each (B, T).

    mask says which targets count: an assistant token, never padding.
    """
    T = max(len(ids) for ids, _ in examples) - 1
    x = torch.full((len(examples), T), pad_id, dtype=torch.long)
    y = torch.full((len(examples), T), pad_id, dtype=torch.long)
    m = torch.zeros((len(examples), T), dtype=torch.long)
    for row, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        x[row, :n] = torch.tensor(ids[:-1])
        y[row, :n] = torch.tensor(ids[1:])
        m[row, :n] = torch.tensor(mask[1:])  # the mask of the token being predicted
    return x, y, m


def pack(examples: list[Example], context_length: int, pad_id: int = 0) -> tuple[torch.Tensor, ...]:
    """Concatenate whole examples into rows of context_length + 1 tokens: (x, y, mask).

    Fewer rows and little padding; the price is that a later example can attend to an earlier one in
    row (no document mask), which the prompt's leading role token makes harmless here.
    """
    rows: list[Example] = []
    ids: list[int] = []
    mask: list[int] = []
    for e_ids, e_mask in examples:
        if len(e_ids) > context_length + 1:
            raise ValueError(
                f"an example of {len(e_ids)} tokens exceeds context_length + 1 = "
                f"{context_length + 1}"
            )
        if len(ids) + len(e_ids) > context_length + 1:
            rows.append((ids, mask))
            ids, mask = [], []
        ids, mask = ids + e_ids, mask + e_mask
    if ids:
        rows.append((ids, mask))
    x, y, m = pad_batch(
        [
            (r + [pad_id] * (context_length + 1 - len(r)), k + [0] * (context_length + 1 - len(k)))
            for r, k in rows
        ],
        pad_id,
    )
    return x, y, m


def speaker_task(
    text: str,
    speakers: tuple[str, ...],
    max_chars: int = 40,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> dict[str, list[tuple[str, str]]]:
    """(line, speaker) pairs from the text's speeches, split by speech into "train" and "test".

    Each line of a speech by one of `speakers` (at most max_chars long, at least 12) is one example;
    a whole speech goes to one side, so no test line's neighbours were trained on.
    Example: speaker_task(text, ("ROMEO", "JULIET"))["test"][0] -> ('...', 'JULIET')
    """
    speeches: list[tuple[str, list[str]]] = []
    for block in text.split("\n\n"):
        head, *lines = block.split("\n")
        if head.endswith(":") and head[:-1] in speakers:
            keep = [ln.strip() for ln in lines if 12 <= len(ln.strip()) <= max_chars]
            if keep:
                speeches.append((head[:-1], keep))
    if not speeches:
        raise ValueError(f"no speeches by {speakers} in the text")
    random.Random(seed).shuffle(speeches)
    n_test = int(len(speeches) * test_fraction)
    split = {"test": speeches[:n_test], "train": speeches[n_test:]}
    return {k: [(ln, who) for who, lines in v for ln in lines] for k, v in split.items()}


def chat_example(tok: ChatTokenizer, line: str, speaker: str) -> Example:
    """One task example as (ids, mask): the user gives the line, the assistant names its speaker."""
    return encode_chat(
        tok, [{"role": "user", "content": line}, {"role": "assistant", "content": speaker}]
    )


@torch.no_grad()
def answer_accuracy(
    model: nn.Module, tok: ChatTokenizer, pairs: list[tuple[str, str]], batch_size: int = 256
) -> float:
    """Exact-match accuracy of greedy answers, from one teacher-forced pass per batch.

    Greedy decoding writes "NAME<|end|>" exactly when, with that answer fed in, each answer slot's
    argmax is the next answer token; so one forward pass decides exact match without generating.
    """
    was = model.training
    model.eval()
    hits = 0
    for i in range(0, len(pairs), batch_size):
        x, y, m = pad_batch(
            [chat_example(tok, ln, who) for ln, who in pairs[i : i + batch_size]], 0
        )
        right = (model(x).argmax(-1) == y) | (m == 0)
        hits += int(right.all(dim=1).sum())
    model.train(was)
    return hits / len(pairs)


@torch.no_grad()
def answer(model: nn.Module, tok: ChatTokenizer, line: str, max_new_tokens: int = 20) -> str:
    """The model's greedy reply to a line, up to its <|end|> (or max_new_tokens)."""
    from .generate import generate  # generation is chapter 7's; only this helper needs it

    prompt = tok.encode(f"<|user|>{line}<|end|><|assistant|>")
    room = min(max_new_tokens, model.config.context_length - len(prompt))
    out = generate(model, torch.tensor([prompt]), room, temperature=0.0)[0, len(prompt) :].tolist()
    end = tok.special_ids["<|end|>"]
    return tok.decode(out[: out.index(end)] if end in out else out)


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
    """Share of items whose true ending scores highest; normalise divides by the ending's length."""
    was = model.training
    model.eval()
    k = len(items[0][1])
    scores = ending_logps(model, tok, [(c, e) for c, endings, _ in items for e in endings]).view(
        -1, k
    )
    if normalise:
        scores = scores / torch.tensor(
            [[len(tok.encode(e)) for e in endings] for _, endings, _ in items]
        )
    model.train(was)
    return (scores.argmax(-1) == torch.tensor([a for _, _, a in items])).float().mean().item()
