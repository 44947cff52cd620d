"""Supervised fine-tuning: the shipped base model, chat template, masked loss, packing. Chapter 10.

The base model is chapter 7's CPU preset, trained by the course's CLI, shipped in companion/assets
(`load_base`); chapter 10's SFT model is shipped beside it (`load_chat_model`), and chapter 11's
server loads it. The task it learns is in companion.tasks.
"""

from __future__ import annotations

import json
import random
import re
from importlib import resources
from pathlib import Path
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
    "reply",
    "finetune",
    "tokenizer_info",
    "chat_tokenizer",
    "save_chat_model",
    "load_chat_model",
    "CHAT_CHECKPOINT",
]

SPECIAL_TOKENS = ("<|user|>", "<|assistant|>", "<|end|>")
BASE_CHECKPOINT = "base_char.pt"  # in companion/assets, with base_char.json (how it was made)
CHAT_CHECKPOINT = "sft_reverse.pt"  # chapter 10's SFT model, with sft_reverse.json


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
    render_chat(messages)  # the same checks: known roles, and no special string in any content
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


def reply(model: nn.Module, tok: ChatTokenizer, messages: list[dict[str, str]],
          max_new_tokens: int = 20) -> str:
    """The model's greedy answer to a chat, up to its <|end|> (or max_new_tokens).

    Example: reply(model, tok, [{"role": "user", "content": "reverse: ab"}]) -> 'ba'
    """
    from .generate import generate  # generation is chapter 7's; only this helper needs it

    prompt = tok.encode(render_chat(messages) + "<|assistant|>")
    room = min(max_new_tokens, model.config.context_length - len(prompt))
    if room < 1:
        raise ValueError(f"the chat is {len(prompt)} tokens: no room to answer in a context of "
                         f"{model.config.context_length}")
    out = generate(model, torch.tensor([prompt]), room, temperature=0.0)[0, len(prompt):].tolist()
    end = tok.special_ids["<|end|>"]
    return tok.decode(out[: out.index(end)] if end in out else out)


def finetune(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    steps: int,
    lr: float = 1e-3,
    batch: int = 32,
    seed: int = 0,
    params: list[nn.Parameter] | None = None,
    plain: torch.Tensor | None = None,
    plain_rows: int = 0,
) -> list[float]:
    """Masked SFT with AdamW over random rows of (x, y, mask); returns the loss of every step.

    With plain (token ids of pre-training text) and plain_rows > 0, each batch also holds that many
    windows of plain text, every token counted: pre-training data mixed in against forgetting.
    Example: finetune(model, pad_batch(examples, 0), steps=300)
    """
    x, y, m = data
    params = [p for p in model.parameters() if p.requires_grad] if params is None else params
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    T = x.shape[1]
    losses = []
    model.train()
    for _ in range(steps):
        i = torch.randint(len(x), (batch,), generator=g)
        xb, yb, mb = x[i], y[i], m[i]
        if plain is not None and plain_rows > 0:
            # windows as wide as the SFT rows, so that one tensor holds both kinds of row
            start = torch.randint(len(plain) - T - 1, (plain_rows,), generator=g)
            win = torch.stack([plain[s : s + T + 1] for s in start.tolist()])
            xb, yb = torch.cat([xb, win[:, :-1]]), torch.cat([yb, win[:, 1:]])
            mb = torch.cat([mb, torch.ones(plain_rows, T, dtype=mb.dtype)])
        loss = masked_loss(model(xb), yb, mb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def tokenizer_info(tok: ChatTokenizer) -> dict[str, Any]:
    """A chat tokenizer as plain values, for a checkpoint: kind, base and specials."""
    if not isinstance(tok.base, CharTokenizer):
        raise ValueError(f"only a character base is saved here, got {type(tok.base).__name__}")
    return {"kind": "chat", "base": {"kind": "char", "chars": "".join(tok.base.itos)},
            "specials": list(tok.specials)}


def chat_tokenizer(info: dict[str, Any]) -> ChatTokenizer:
    """Inverse of tokenizer_info. Example: chat_tokenizer(tokenizer_info(tok)).vocab_size"""
    base = info.get("base") or {}
    if info.get("kind") != "chat" or base.get("kind") != "char":
        raise ValueError(f"not a chat tokenizer over characters: {info!r:.80}")
    return ChatTokenizer(CharTokenizer(base["chars"]), tuple(info["specials"]))


def save_chat_model(path: str | Path, model: GPT, tok: ChatTokenizer,
                    info: dict[str, Any] | None = None) -> Path:
    """Save a chat model atomically: weights, config, chat tokenizer and provenance (plain values).

    Chapter 11's server loads it with load_chat_model. Example: save_chat_model("sft.pt", m, tok)
    """
    from .checkpoint import FORMAT_VERSION, save_checkpoint

    return save_checkpoint(path, {
        "format_version": FORMAT_VERSION, "model": model.state_dict(), "step": 0,
        "model_config": model.config.to_dict(), "tokenizer": tokenizer_info(tok),
        "info": dict(info or {}),
    })


def load_chat_model(path: str | Path | None = None) -> tuple[GPT, ChatTokenizer, dict[str, Any]]:
    """A chat model (eval mode), its chat tokenizer and provenance; weights_only=True.

    No path: the shipped SFT model of chapter 10 (companion/assets/CHAT_CHECKPOINT).
    Example: model, tok, info = load_chat_model(); tok.vocab_size -> 68
    """
    from .checkpoint import CheckpointError, load_checkpoint

    if path is None:
        with resources.as_file(resources.files("companion") / "assets" / CHAT_CHECKPOINT) as p:
            return load_chat_model(p)
    ckpt = load_checkpoint(path)
    if "model_config" not in ckpt or (ckpt.get("tokenizer") or {}).get("kind") != "chat":
        raise CheckpointError(f"{path} holds no chat model: it needs model_config and a chat "
                              f"tokenizer")
    model = GPT(GPTConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), chat_tokenizer(ckpt["tokenizer"]), dict(ckpt.get("info") or {})


