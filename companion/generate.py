"""Sampling from a language model. Temperature is introduced in chapter 1; top-k, top-p and the KV cache in chapter 7."""
from __future__ import annotations

import torch
from torch import nn

from .tokenizer import Tokenizer

__all__ = ["temperature_softmax", "generate", "generate_text"]


def temperature_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) over the last dim. T -> 0 approaches argmax, T = 1 is the model, large T flattens.

    Example: temperature_softmax(torch.tensor([0., 1.]), 1.0) -> [0.2689, 0.7311]
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy decoding for T = 0), got {temperature}")
    return torch.softmax(logits.float() / temperature, dim=-1)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    context_length: int | None = None,
) -> torch.Tensor:
    """Extend idx (B, T) by `max_new_tokens` sampled tokens; temperature 0 means greedy."""
    if idx.ndim != 2:
        raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        window = idx if context_length is None else idx[:, -context_length:]
        logits = model(window)[:, -1, :]  # (B, V): only the last position predicts the next token
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = temperature_softmax(logits, temperature)
            # multinomial on CPU keeps a seeded generator's samples identical across devices
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(idx.device)
        idx = torch.cat([idx, nxt], dim=1)
    model.train(was_training)
    return idx


def generate_text(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    seed: int = 0,
) -> str:
    """Prompt in, prompt plus `max_new_tokens` sampled tokens out, repeatable for a given seed."""
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    device = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(seed)
    out = generate(model, idx, max_new_tokens, temperature=temperature, generator=gen)
    return tokenizer.decode(out[0].tolist())
