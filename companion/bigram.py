"""The character bigram model of chapter 1: counted, smoothed, scored and learned, as one module."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["bigram_counts", "BigramLM", "sequence_nll", "counts_nll", "tune_smoothing"]


def bigram_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Count every (current, next) pair: counts[a, b] = #{t : ids[t] = a and ids[t+1] = b}.

    Example: bigram_counts(torch.tensor([0, 1, 1]), 2) -> [[0, 1], [0, 1]]
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}); "
                         f"got min {int(ids.min())}, max {int(ids.max())}")
    pair = ids[:-1] * vocab_size + ids[1:]  # one flat index per (a, b) pair
    return torch.bincount(pair, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size)


class BigramLM(nn.Module):
    """Next-token logits from the current token alone: a V x V lookup table.

    Counting and gradient descent fill the same table: `from_counts` sets it to the log of
    the (smoothed) count frequencies. With smoothing=0 that is exactly the table that minimises
    training cross-entropy; smoothing trades a little of it for finite loss on unseen pairs.
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = vocab_size
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table(idx)  # (B, T) -> (B, T, V)

    @classmethod
    def from_counts(cls, counts: torch.Tensor, smoothing: float = 1.0) -> "BigramLM":
        """The counting model: logits = log((counts + smoothing) / row total)."""
        if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
            raise ValueError(f"counts must be a square V x V matrix, "
                             f"got shape {tuple(counts.shape)}")
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        model = cls(counts.shape[0])
        probs = counts.double() + smoothing
        # A token never seen as "current" has no evidence at all: predict uniformly after it.
        probs[probs.sum(dim=1) == 0] = 1.0
        probs = probs / probs.sum(dim=1, keepdim=True)
        with torch.no_grad():
            model.table.weight.copy_(probs.log().float())
        return model

    def probs(self) -> torch.Tensor:
        """P(next | current) as a V x V matrix whose rows sum to 1."""
        return self.table.weight.detach().softmax(dim=-1)


@torch.no_grad()
def sequence_nll(model: nn.Module, ids: torch.Tensor) -> float:
    """Mean NLL (nats per token) of ids[1:] given ids[:-1], for a model that sees one token.

    Example: sequence_nll(BigramLM.from_counts(torch.zeros(5, 5)), torch.tensor([0, 3])) -> ln 5
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() < 2:
        raise ValueError("need at least two tokens to score a next-token prediction")
    logits = model(ids[:-1].unsqueeze(0)).squeeze(0)  # (T, V)
    return F.cross_entropy(logits.float(), ids[1:]).item()


def counts_nll(logits: torch.Tensor, counts: torch.Tensor) -> float:
    """Mean NLL (nats per pair) of a text given only its bigram counts, under a V x V logits table.

    A bigram model sees a text only through its counts, so this equals sequence_nll(model, ids)
    for counts = bigram_counts(ids, V), at the cost of a V x V sum instead of one row per token.
    Example: counts_nll(torch.zeros(2, 2), torch.tensor([[1, 0], [0, 1]])) -> 0.6931 (ln 2)
    """
    if logits.shape != counts.shape or logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits {tuple(logits.shape)} and counts {tuple(counts.shape)} "
                         "must be the same V x V shape")
    total = counts.sum()
    if total <= 0:
        raise ValueError("counts hold no pairs: need at least two tokens of text to score")
    counts = counts.double()
    logp = logits.detach().double().log_softmax(dim=-1)
    # 0 * log 0 counts as 0: a pair that never occurs costs nothing, even at a logit of -inf
    terms = torch.where(counts > 0, counts * logp, torch.zeros_like(logp))
    return -(terms.sum() / total).item()


def tune_smoothing(
    train_counts: torch.Tensor, val_counts: torch.Tensor, ks: list[float]
) -> tuple[float, list[float]]:
    """Add-k smoothing tuned on held-out text: (the k of lowest validation NLL, val NLL at each k).

    Example: train row [3, 1], val row [2, 1] -> k = 1: (3 + 1) / (4 + 2) = 2/3, val's share.
    """
    if len(ks) == 0:
        raise ValueError("ks is empty: give at least one smoothing value to try")
    if min(ks) < 0:
        raise ValueError(f"smoothing values must be >= 0, got {min(ks)}")
    nlls = [counts_nll(BigramLM.from_counts(train_counts, k).table.weight, val_counts) for k in ks]
    best = min(range(len(ks)), key=nlls.__getitem__)  # the first k wins a tie
    return float(ks[best]), nlls
