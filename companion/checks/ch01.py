"""Self-checks for chapter 1's exercises: counting bigrams, perplexity, temperature."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._core import as_scalar, as_tensor, call, fail, passed

__all__ = ["check_1_1", "check_1_2", "check_1_3"]


def _reference_counts(ids: list[int], vocab_size: int) -> torch.Tensor:
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)
    for a, b in zip(ids, ids[1:]):
        counts[a, b] += 1
    return counts


def check_1_1(count_bigrams: Callable[[list[int], int], torch.Tensor]) -> None:
    """count_bigrams(ids, vocab_size) -> (V, V) tensor with counts[a, b] = times b follows a."""
    ex = "1.1"
    # Hand-worked: pairs of [0, 1, 1, 2, 0] are (0,1), (1,1), (1,2), (2,0).
    ids, want = [0, 1, 1, 2, 0], torch.tensor([[0, 1, 0], [0, 1, 1], [1, 0, 0]])
    got = as_tensor(ex, call(ex, count_bigrams, ids, 3), "the result")
    if tuple(got.shape) != (3, 3):
        fail(ex, f"for vocab_size=3 the result should have shape (3, 3), got {tuple(got.shape)}.")
    if torch.equal(got.long(), want.T):
        fail(ex, "rows and columns are swapped: counts[a, b] should count a *followed by* b (row = current).")
    if int(got.sum()) != len(ids) - 1:
        fail(ex, f"{len(ids)} tokens hold {len(ids) - 1} pairs, but your counts add up to {int(got.sum())}. "
                 "Pair each token with the next one only; don't wrap around from the end to the start.")
    if not torch.equal(got.long(), want):
        fail(ex, f"for ids={ids} expected\n{want.tolist()}\n  got\n{got.long().tolist()}")
    one = as_tensor(ex, call(ex, count_bigrams, [2], 4), "the result")
    if tuple(one.shape) != (4, 4) or int(one.abs().sum()) != 0:
        fail(ex, "a single token has no pairs: expect a (4, 4) matrix of zeros. Size the matrix by "
                 "vocab_size, not by the ids you saw.")
    g = torch.Generator().manual_seed(1)
    rand = torch.randint(0, 7, (500,), generator=g).tolist()
    got = as_tensor(ex, call(ex, count_bigrams, rand, 7), "the result")
    if not torch.equal(got.long(), _reference_counts(rand, 7)):
        fail(ex, "correct on the small case but wrong on 500 random ids over 7 symbols; "
                 "check that repeated pairs are all counted.")
    passed(ex, "counts match on a hand-worked case, a single token, and 500 random ids.")


def _reference_perplexity(probs: torch.Tensor, ids: list[int]) -> float:
    ids_t = torch.tensor(ids)
    nll = -torch.log(probs[ids_t[:-1], ids_t[1:]].double()).mean()
    return math.exp(nll.item())


def check_1_2(perplexity: Callable[[torch.Tensor, list[int]], float]) -> None:
    """perplexity(probs, ids) -> exp(mean over t of -log probs[ids[t], ids[t+1]])."""
    ex = "1.2"
    v, seq = 5, [0, 3, 1, 4, 2]
    uniform = torch.full((v, v), 1.0 / v)
    got = as_scalar(ex, call(ex, perplexity, uniform, seq), "the perplexity")
    if math.isclose(got, math.log(v), rel_tol=1e-4):
        fail(ex, f"a uniform model over {v} symbols has perplexity {v}, you returned {got:.4f} = ln {v}. "
                 "That is the mean NLL: exponentiate it.")
    # Logs and exponent in different bases turn the answer v into v ** (1/ln 2) or v ** ln 2.
    if any(math.isclose(got, v ** p, rel_tol=1e-4) for p in (1 / math.log(2), math.log(2))):
        fail(ex, f"expected {v} for the uniform model, got {got:.4f}: you mixed the two bases. "
                 "Use natural logs with math.exp (or log2 with 2 **).")
    n = len(seq)
    if math.isclose(got, v ** ((n - 1) / n), rel_tol=1e-4):
        fail(ex, f"expected {v} for the uniform model, got {got:.4f}: {n} ids hold {n - 1} predictions, "
                 "so average the NLL over len(ids) - 1, not len(ids).")
    if not math.isclose(got, v, rel_tol=1e-4):
        fail(ex, f"a uniform model over {v} symbols should have perplexity exactly {v}, got {got:.4f}.")
    g = torch.Generator().manual_seed(2)
    probs = torch.softmax(torch.randn(v, v, generator=g) * 2, dim=1)
    ids = torch.randint(0, v, (200,), generator=g).tolist()
    want = _reference_perplexity(probs, ids)
    got = as_scalar(ex, call(ex, perplexity, probs, ids), "the perplexity")
    if math.isclose(got, _reference_perplexity(probs.T.contiguous(), ids), rel_tol=1e-4):
        fail(ex, "you looked up probs[next, current]; the row is the current token: probs[ids[t], ids[t+1]].")
    if not math.isclose(got, want, rel_tol=1e-4):
        fail(ex, f"on a random 5-symbol model and 200 ids expected perplexity {want:.4f}, got {got:.4f}. "
                 "Average the NLL over the len(ids) - 1 predictions, then exponentiate.")
    passed(ex, f"uniform model gives {v}, and a random model matches the reference ({want:.3f}).")


def check_1_3(apply_temperature: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """apply_temperature(logits, T) -> softmax(logits / T) over the last dim; T <= 0 raises ValueError."""
    ex = "1.3"
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 3.0, 0.0]])
    for t in (1.0, 0.5, 2.0):
        got = as_tensor(ex, call(ex, apply_temperature, logits.clone(), t), "the result").float()
        want = torch.softmax(logits / t, dim=-1)
        if got.shape != want.shape:
            fail(ex, f"the result should keep the logits' shape {tuple(want.shape)}, got {tuple(got.shape)}.")
        if torch.allclose(got, logits / t, atol=1e-5):
            fail(ex, "you divided by T but returned logits; apply a softmax to turn them into probabilities.")
        if not torch.allclose(got.sum(-1), torch.ones(2), atol=1e-4):
            fail(ex, f"at T={t} each row should sum to 1 (got {got.sum(-1).tolist()}); softmax over the last dim.")
        if t != 1.0 and torch.allclose(got, torch.softmax(logits * t, dim=-1), atol=1e-5):
            fail(ex, f"at T={t} you multiplied by T; divide instead, so that small T sharpens the distribution.")
        if not torch.allclose(got, want, atol=1e-5):
            fail(ex, f"at T={t} expected {want[0].tolist()} for the first row, got {got[0].tolist()}.")
    cold = as_tensor(ex, call(ex, apply_temperature, logits.clone(), 0.01), "the result").float()
    if torch.isnan(cold).any() or not torch.allclose(cold[0], torch.tensor([1.0, 0.0, 0.0, 0.0]), atol=1e-3):
        fail(ex, "at T=0.01 the distribution should be (almost) one-hot on the largest logit without NaNs; "
                 "softmax after dividing handles this if you use torch.softmax.")
    for bad in (0.0, -1.0):
        try:
            apply_temperature(logits.clone(), bad)
        except ValueError:
            continue
        except NotImplementedError:
            fail(ex, "not implemented yet: replace the `raise NotImplementedError(...)` line with your code.")
        except Exception as err:  # noqa: BLE001
            fail(ex, f"T={bad} should raise ValueError with a clear message, but raised {type(err).__name__}.")
        fail(ex, f"T={bad} is not a temperature: raise ValueError instead of returning a result.")
    passed(ex, "matches softmax(logits / T) at T = 0.5, 1, 2, stays finite at T = 0.01, and rejects T <= 0.")
