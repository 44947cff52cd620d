"""Sampling from a language model.

Temperature is introduced in chapter 1, the KV cache in chapter 5, top-k and top-p in chapter 6;
chapter 7 generates from trained models.

A model is anything that maps token ids (B, T) to logits (B, T, V). Models with `make_caches`
(companion.model.GPT) are decoded with a KV cache: the prompt is read once (prefill), then each step
feeds only the newest token.
"""
from __future__ import annotations

import torch
from torch import nn

from .tokenizer import Tokenizer

__all__ = ["temperature_softmax", "check_sampling", "top_k_filter", "top_p_filter", "sample_next",
           "sampling_stages", "generate", "generate_text"]


def temperature_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) over the last dim.

    T -> 0 approaches argmax, T = 1 is the model, large T flattens.

    Example: temperature_softmax(torch.tensor([0., 1.]), 1.0) -> [0.2689, 0.7311]
    """
    if not temperature > 0:
        raise ValueError("temperature must be > 0 (use greedy decoding for T = 0), got "
                         f"{temperature}")
    return torch.softmax(logits.float() / temperature, dim=-1)


def check_sampling(
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> None:
    """Raise ValueError unless temperature >= 0, top_k >= 1 and 0 < top_p <= 1.

    None switches a filter off.
    """
    if not temperature >= 0:  # written so that NaN fails too
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 (or None for no limit), got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1] (or None for no limit), got {top_p}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits per row (ties broken by position); the rest become -inf.

    Chapter 6.

    Example: top_k_filter(torch.tensor([1., 3., 2.]), 2) -> [-inf, 3., 2.]
    """
    check_sampling(top_k=k)
    if k >= logits.shape[-1]:
        return logits
    # Scatter by index rather than compare with the k-th value: a threshold would keep
    # every tie, i.e. more than k.
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(
        -1, logits.topk(k, dim=-1).indices, True
    )
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p.

    The rest -inf. Chapter 6.

    Example: probabilities [0.5, 0.3, 0.2] with p = 0.7 keep the first two (0.5 < 0.7 <= 0.8).
    """
    check_sampling(top_p=p)
    if p >= 1.0:
        # p = 1 keeps everything. Said outright because float32 cumulative sums can reach 1.0
        # before the last token, which the test below would then drop.
        return logits
    probs, order = logits.float().softmax(dim=-1).sort(dim=-1, descending=True)
    # A token stays if the mass strictly before it is still short of p: the first token always
    # stays, and the token that carries the total past p stays too.
    before = probs.cumsum(dim=-1) - probs
    keep_sorted = before < p
    # back to vocabulary order
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One next token per row from last-position logits (B, V) -> (B, 1).

    Greedy at temperature 0, else sampled.

    Order: temperature scales the logits, then top-k, then top-p on the tempered
    distribution (as Hugging Face does).
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # greedy: the filters cannot change the argmax
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)
    # multinomial on CPU keeps a seeded generator's samples identical across devices
    return torch.multinomial(probs.cpu(), 1, generator=generator).to(logits.device)


def sampling_stages(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
    top_p: float | None = None,
) -> dict[str, torch.Tensor]:
    """The next-token distribution (V,) after each of sample_next's steps, for plotting.

    Keys: "model" (T = 1), "temperature", "top-k", "top-p" (a filter left off repeats the step
    before). Example: sampling_stages(torch.tensor([2., 1., 0.]), top_k=1)["top-k"] -> [1., 0., 0.]
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:  # greedy: all the mass on the argmax, whatever the filters say
        best = logits.argmax(-1, keepdim=True)
        one_hot = torch.zeros_like(logits, dtype=torch.float).scatter_(-1, best, 1.0)
        return {"model": logits.float().softmax(-1), "temperature": one_hot, "top-k": one_hot,
                "top-p": one_hot}
    stages = {"model": logits.float().softmax(-1)}
    z = logits.float() / temperature
    stages["temperature"] = z.softmax(-1)
    z = top_k_filter(z, top_k) if top_k is not None else z
    stages["top-k"] = z.softmax(-1)
    z = top_p_filter(z, top_p) if top_p is not None else z
    stages["top-p"] = z.softmax(-1)
    return stages


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    context_length: int | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Extend idx (B, T) by `max_new_tokens` tokens; temperature 0 means greedy.

    With use_cache and a model that has `make_caches`, the prompt is prefilled once and
    each step feeds one token.
    Once the sequence outgrows the context, every step re-reads the last
    context_length tokens, cache or not.
    """
    if idx.ndim != 2:
        raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_sampling(temperature, top_k, top_p)
    config = getattr(model, "config", None)
    if context_length is None and config is not None:
        context_length = config.context_length
    cached = use_cache and hasattr(model, "make_caches")
    was_training = model.training
    model.eval()
    caches = (
        model.make_caches(idx.shape[0], max_len=context_length, device=idx.device)
        if cached
        else None
    )
    fresh = idx  # tokens the model has not read yet: the whole prompt at first
    for _ in range(max_new_tokens):
        if caches is None:
            window = idx if context_length is None else idx[:, -context_length:]
            # (B, V): only the last position predicts the next token
            logits = model(window)[:, -1, :]
        else:
            if caches[0].pos + fresh.shape[1] > caches[0].max_len:
                # Full: start again from the last context_length tokens
                # (a sliding window, no saving).
                for c in caches:
                    c.reset()
                fresh = idx[:, -caches[0].max_len:]
            # prefill (whole prompt) or one new token
            logits = model(fresh, caches=caches)[:, -1, :]
        nxt = sample_next(logits, temperature, top_k, top_p, generator).to(idx.device)
        idx = torch.cat([idx, nxt], dim=1)
        fresh = nxt
    model.train(was_training)
    return idx


def generate_text(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    seed: int = 0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> str:
    """Prompt in, prompt plus `max_new_tokens` sampled tokens out, repeatable for a given seed."""
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    device = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(seed)
    out = generate(
        model, idx, max_new_tokens, temperature=temperature, generator=gen, top_k=top_k, top_p=top_p
    )
    return tokenizer.decode(out[0].tolist())
