"""Speculative decoding: a small draft proposes k tokens, the target checks them in one pass.

Greedy: keep the drafted tokens while they equal the target's argmax, then take the target's own.
Sampling: keep token x with probability min(1, p(x) / q(x)); on a rejection draw from
max(0, p - q), normalised. Either way the output has the target's distribution (Leviathan et al.
2023, Chen et al. 2023). Introduced in chapter 11.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .attention import KVCache
from .generate import check_sampling, top_k_filter, top_p_filter

__all__ = ["accept_reject", "SpecStats", "speculative_generate", "truncated_draft"]


@dataclass
class SpecStats:
    """What a speculative run did: rounds, tokens drafted and accepted, target forward passes."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    per_round: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts over proposed drafts (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0


def accept_reject(p: torch.Tensor, q: torch.Tensor, drafted: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[int, int]:
    """Target probs p (k + 1, V), draft probs q (k, V), drafts (k,) -> (accepted n, next token).

    Token i survives if u < p_i(x_i) / q_i(x_i); the first rejection draws from max(0, p_i - q_i);
    if all k survive, the next token comes from p_k, the target's distribution after the last draft.
    Example: p == q accepts every draft, so n == k.
    """
    k = drafted.shape[0]
    if p.shape[0] != k + 1 or q.shape[0] != k:
        raise ValueError(f"need p of k + 1 = {k + 1} rows and q of k = {k} rows, "
                         f"got {p.shape[0]} and {q.shape[0]}")
    u = torch.rand(k, generator=generator)
    for i in range(k):
        x = int(drafted[i])
        # u < p/q written as u * q < p: no division (a drafted token has q > 0 anyway)
        if u[i] * q[i, x] < p[i, x]:
            continue
        residual = (p[i] - q[i]).clamp(min=0)
        if residual.sum() <= 0:  # p == q up to rounding: any draw from p is right
            residual = p[i]
        return i, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    return k, int(torch.multinomial(p[k], 1, generator=generator))


def _probs(logits: torch.Tensor, temperature: float, top_k: int | None,
           top_p: float | None) -> torch.Tensor:
    """The sampling distribution generate() would use for these logits (rows)."""
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits.softmax(dim=-1)


def _rollback(caches: list[KVCache], n: int) -> None:
    """Forget every cached token from position n on; the buffers are overwritten later."""
    for c in caches:
        c.pos = min(c.pos, n)


def _feed(model: nn.Module, caches: list[KVCache], seq: torch.Tensor) -> torch.Tensor:
    """Feed the tokens of seq (1, L) the caches lack; return their logits (1, T, V)."""
    if caches[0].pos >= seq.shape[1]:  # nothing new: re-read the last token to get its logits
        _rollback(caches, seq.shape[1] - 1)
    return model(seq[:, caches[0].pos:], caches=caches)


@torch.no_grad()
def speculative_generate(
    target: nn.Module,
    draft: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    k: int = 4,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    stats: SpecStats | None = None,
) -> torch.Tensor:
    """Extend idx (1, T) by max_new_tokens: the draft proposes k a round, the target verifies.

    At temperature 0 the result equals generate(target, idx, max_new_tokens, temperature=0).
    Pass a SpecStats to read the acceptance rate afterwards.
    """
    if idx.ndim != 2 or idx.shape[0] != 1:
        raise ValueError(f"speculative_generate takes one sequence, idx of shape (1, T); "
                         f"got {tuple(idx.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_sampling(temperature, top_k, top_p)
    total = idx.shape[1] + max_new_tokens
    limit = min(target.config.context_length, draft.config.context_length)
    if total > limit:
        raise ValueError(f"prompt {idx.shape[1]} + max_new_tokens {max_new_tokens} = {total} "
                         f"exceeds the context length {limit}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"target and draft vocabularies differ: {target.config.vocab_size} "
                         f"vs {draft.config.vocab_size}")
    stats = SpecStats() if stats is None else stats
    modes = (target.training, draft.training)
    target.eval(), draft.eval()
    t_caches = target.make_caches(1, max_len=total, device=idx.device)
    d_caches = draft.make_caches(1, max_len=total, device=idx.device)
    greedy = temperature == 0
    seq = idx
    while seq.shape[1] < total:
        n_draft = min(k, total - seq.shape[1] - 1)  # a round's last token is the target's
        ext, q_rows = seq, []
        for _ in range(n_draft):
            logits = _feed(draft, d_caches, ext)[0, -1]  # (V,)
            stats.draft_calls += 1
            if greedy:
                nxt = logits.argmax().view(1)
            else:
                q_rows.append(_probs(logits, temperature, top_k, top_p))
                nxt = torch.multinomial(q_rows[-1].cpu(), 1, generator=generator).to(idx.device)
            ext = torch.cat([ext, nxt.view(1, 1)], dim=1)
        # One target pass reads every token it lacks (the whole prompt in round one) and scores
        # the n_draft proposals plus one more position.
        logits = _feed(target, t_caches, ext)[0, -(n_draft + 1):]  # (n_draft + 1, V)
        stats.target_calls += 1
        drafted = ext[0, seq.shape[1]:]
        if greedy:
            best = logits.argmax(dim=-1)  # (n_draft + 1,)
            n = 0
            while n < n_draft and int(best[n]) == int(drafted[n]):
                n += 1
            nxt_tok = int(best[n])
        else:
            p = _probs(logits, temperature, top_k, top_p).cpu()
            q = torch.stack(q_rows).cpu() if q_rows else p[:0]
            n, nxt_tok = accept_reject(p, q, drafted.cpu(), generator)
        new = torch.tensor([[nxt_tok]], device=idx.device)
        seq = torch.cat([seq, drafted[None, :n], new], dim=1)
        # Both caches keep what they read of the accepted prefix; the rest is overwritten later.
        _rollback(t_caches, seq.shape[1] - 1)
        _rollback(d_caches, seq.shape[1] - 1)
        stats.rounds += 1
        stats.drafted += n_draft
        stats.accepted += n
        stats.per_round.append(n)
    target.train(modes[0]), draft.train(modes[1])
    return seq


def truncated_draft(target: nn.Module, n_layers: int) -> nn.Module:
    """A draft made of the target's embedding, its first n_layers blocks, its final norm and head.

    Example: truncated_draft(GPT(cfg), 1) shares the weights of GPT(cfg)'s first block.
    """
    from .model import GPT  # only the draft builder needs the class

    if not 1 <= n_layers <= target.config.n_layers:
        raise ValueError(f"n_layers must lie in [1, {target.config.n_layers}], got {n_layers}")
    cfg = type(target.config).from_dict({**target.config.to_dict(), "n_layers": n_layers})
    draft = GPT(cfg).to(target.tok_emb.weight.device, target.tok_emb.weight.dtype)
    state = {k: v for k, v in target.state_dict().items()
             if not k.startswith("blocks.") or int(k.split(".")[1]) < n_layers}
    draft.load_state_dict(state)
    return draft.eval()
