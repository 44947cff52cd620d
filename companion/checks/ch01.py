"""Self-checks for chapter 1's exercises: an interpolated trigram, add-k, the loop by hand,
temperature."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..bigram import BigramLM, bigram_counts, counts_nll
from ._core import as_scalar, as_tensor, call, fail, passed

__all__ = ["check_1_1", "check_1_2", "check_1_3", "check_1_4"]


def _close(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)


# --- 1.1 an interpolated trigram -------------------------------------------------------------


def _interpolated(train: list[int], val: list[int], v: int, lambdas: tuple[float, ...],
                  fallback: bool = True, follower_counts: bool = True, smooth: bool = True,
                  skip_first: int = 2) -> float:
    """Mean NLL of val[2:] under the interpolated trigram; the flags make known mistakes.

    Example: _interpolated([0, 1, 0, 1, 0, 2], [0, 1, 0], 3, (0.1, 0.3, 0.6)) -> 0.0572
    """
    l1, l2, l3 = lambdas
    uni, bi = Counter(train), Counter(zip(train, train[1:]))
    tri = Counter(zip(train, train[1:], train[2:]))
    if follower_counts:
        after1, after2 = Counter(train[:-1]), Counter(zip(train[:-2], train[1:-1]))
    else:  # every occurrence, even the last ones, which nothing follows
        after1, after2 = uni, bi
    total = 0.0
    for a, b, c in zip(val, val[1:], val[2:]):
        w1, w2, w3 = l1, l2, l3
        if fallback and after2[(a, b)] == 0:
            w2, w3 = w2 + w3, 0.0
        if fallback and after1[b] == 0:
            w1, w2 = w1 + w2, 0.0
        p = w1 * ((uni[c] + 1) / (len(train) + v) if smooth else uni[c] / len(train))
        p += w2 * bi[(b, c)] / after1[b] if after1[b] else 0.0
        p += w3 * tri[(a, b, c)] / after2[(a, b)] if after2[(a, b)] else 0.0
        total -= math.log(p) if p > 0 else -math.inf
    return total / (len(val) - skip_first)


def check_1_1(interpolated_nll: Callable[..., float]) -> None:
    """interpolated_nll(train_ids, val_ids, vocab_size, (l1, l2, l3)) -> mean NLL of val_ids[2:]."""
    ex = "1.1"
    lam = (0.1, 0.3, 0.6)

    def run(train: list[int], val: list[int], v: int, lambdas: tuple[float, ...]) -> float:
        return as_scalar(ex, call(ex, interpolated_nll, torch.tensor(train), torch.tensor(val), v,
                                  lambdas), "the mean NLL")

    def hints(got: float, train: list[int], val: list[int], v: int) -> str:
        variants = [
            (dict(skip_first=0), "you divided by len(val_ids); a text of T tokens holds T - 2 "
                                 "trigram predictions"),
            (dict(follower_counts=False), "a context's count is how often something *follows* "
                                          "it: the last training tokens have no follower"),
            (dict(fallback=False), "when a context was never seen in training, move its weight "
                                   "down to the next order, so the weights still sum to 1"),
            (dict(smooth=False), "the unigram is add-one smoothed, (N(c) + 1) / (N + V), so "
                                 "that no token has probability 0"),
        ]
        for flags, why in variants:
            if _close(got, _interpolated(train, val, v, lam, **flags)):
                return f" It matches the answer if {why}."
        if _close(got, _interpolated(train, val, v, lam[::-1])):
            return " It matches l1 on the trigram and l3 on the unigram: lambdas = (l1, l2, l3) " \
                   "weigh the unigram, bigram and trigram, in that order."
        return ""

    # Hand-worked: every context seen. P(0 | 0, 1) = 0.1 * 4/9 + 0.3 * 2/2 + 0.6 * 2/2
    train, val = [0, 1, 0, 1, 0, 2], [0, 1, 0]
    want = -math.log(0.1 * 4 / 9 + 0.3 + 0.6)
    got = run(train, val, 3, lam)
    if not _close(got, want):
        fail(ex, f"train {train}, val {val}, V = 3, lambdas {lam}: P(0 | 0, 1) = 0.1 * (3 + 1)/"
                 f"(6 + 3) + 0.3 * 2/2 + 0.6 * 2/2, so the NLL is {want:.4f}; got {got:.4f}."
                 + hints(got, train, val, 3))
    # Contexts with no follower: the training text ends in the context token
    cases = [("a training text that ends in the context token", [0, 1, 0, 1], [0, 1, 0], 3),
             ("a pair never seen in training", [0, 1, 2, 0, 1, 2], [2, 2, 0, 1], 3),
             ("a token never seen in training", [0, 1, 0, 1, 0, 1], [0, 1, 0, 2, 0], 3)]
    for name, train, val, v in cases:
        want = _interpolated(train, val, v, lam)
        got = run(train, val, v, lam)
        if not math.isfinite(got):
            fail(ex, f"{name} (train {train}, val {val}): the NLL is a finite {want:.4f}, you "
                     f"returned {got}. Add-one smoothing keeps every token's unigram "
                     "probability above 0, and an unseen context gives its weight away.")
        if not _close(got, want):
            fail(ex, f"{name} (train {train}, val {val}, V = {v}): expected {want:.4f}, got "
                     f"{got:.4f}." + hints(got, train, val, v))
    from ..data import load_text
    from ..tokenizer import CharTokenizer

    text = load_text("tinyshakespeare")
    tok = CharTokenizer.from_text(text)
    ids, v = tok.encode(text), tok.vocab_size
    train, val = ids[:200_000], ids[-20_000:]
    want = _interpolated(train, val, v, lam)
    got = run(train, val, v, lam)
    if not _close(got, want):
        fail(ex, f"on 200,000 training and 20,000 validation characters of Tiny Shakespeare "
                 f"expected {want:.4f} nats, got {got:.4f}." + hints(got, train, val, v))
    passed(ex, f"hand-worked contexts, unseen pairs and tokens, and Tiny Shakespeare: {want:.3f} "
               "nats per character with lambdas (0.1, 0.3, 0.6).")

def _add_k_nll(counts: torch.Tensor, val: torch.Tensor, k: float, denominator_k: float,
               only_zeros: bool = False, n_div: int | None = None) -> float:
    c = counts.double()
    if only_zeros:  # k lands on the empty cells only, then each row is renormalised
        smoothed = c + k * (c == 0)
        probs = smoothed / smoothed.sum(dim=1, keepdim=True)
    else:
        probs = (c + k) / (c.sum(dim=1, keepdim=True) + denominator_k)
    logp = probs[val[:-1], val[1:]].log()
    return -(logp.sum() / (n_div if n_div else len(val) - 1)).item()


def _same_list(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(_close(a, b) for a, b in zip(got, want))


def _diagnose_nlls(ex: str, nlls: list[float], train: torch.Tensor, val: torch.Tensor, v: int,
                   ks: list[float]) -> None:
    """Fail with the hint of the first plausible mistake that reproduces nlls."""
    if len(nlls) != len(ks):
        fail(ex, f"nlls should hold one NLL per k: {len(ks)} values, got {len(nlls)}.")
    bad = [k for k, x in zip(ks, nlls) if math.isnan(x)]
    if bad:
        fail(ex, f"you returned NaN for k = {bad[0]}. A pair that does not occur in the "
                 "validation text must contribute nothing, even where its probability is 0; "
                 "one that occurs with probability 0 makes the NLL infinite, not NaN.")
    counts = bigram_counts(train, v)
    mistakes = [
        ([_add_k_nll(counts, train, k, k * v) for k in ks],
         "these are the NLLs of the training text; score val_ids. On the text it counted, the "
         "model is best with no smoothing at all, so the training text cannot choose k."),
        ([_add_k_nll(counts, val, k, k) for k in ks],
         "each row gains k for every one of the vocab_size characters, so its total grows by "
         "k * vocab_size, not by k (your rows no longer sum to 1)."),
        ([_add_k_nll(counts.T, val, k, k * v) for k in ks],
         "rows and columns are swapped: row a should count what follows a."),
        ([_add_k_nll(counts, val, k, k * v, n_div=len(val)) for k in ks],
         f"{len(val)} validation ids hold {len(val) - 1} predictions: average over "
         "len(val_ids) - 1."),
        ([_add_k_nll(counts, val, k, k * v, only_zeros=True) for k in ks],
         "add k to every cell, seen or not: smoothing lends every pair the same pseudo-count."),
    ]
    for wrong, hint in mistakes:
        if _same_list(nlls, wrong):
            fail(ex, hint)
    want = [_add_k_nll(counts, val, k, k * v) for k in ks]
    if ks[0] == 0 and want[0] == math.inf and nlls[0] != math.inf:
        fail(ex, f"at k = 0 a validation pair that training never saw has probability 0, so "
                 f"the NLL is infinite; you returned {nlls[0]:.4f}. Don't clamp or patch "
                 "probabilities: smoothing is what makes them positive.")
    if not _same_list(nlls, want):
        fail(ex, f"for {len(train)} training ids, {len(val)} validation ids over {v} symbols "
                 f"and ks {ks} expected NLLs {[round(x, 4) for x in want]}, "
                 f"got {[round(x, 4) for x in nlls]}.")


def _walk(chain: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    ids = [0]
    for _ in range(n - 1):
        ids.append(int(torch.multinomial(chain[ids[-1]], 1, generator=g)))
    return torch.tensor(ids)


def _unpack(ex: str, out: object) -> tuple[float, list[float]]:
    if not (isinstance(out, tuple) and len(out) == 2):
        fail(ex, f"return a pair (best_k, nlls), got {type(out).__name__}"
                 + (f" of length {len(out)}" if hasattr(out, "__len__") else ""))
    return as_scalar(ex, out[0], "best_k"), [as_scalar(ex, x, "each NLL") for x in out[1]]


def check_1_2(tune_add_k: Callable[..., tuple[float, list[float]]]) -> None:
    """tune_add_k(train_ids, val_ids, vocab_size, ks) -> (k of lowest val NLL, [val NLL per k])."""
    ex = "1.2"
    # Train row 0 is [3, 1]; val row 0 is [2, 1]. (3 + k) / (4 + 2k) = 2/3 exactly at k = 1.
    train, val, v = torch.tensor([0, 0, 0, 0, 1, 1]), torch.tensor([0, 0, 0, 1]), 2
    ks = [0.0, 0.5, 1.0, 3.0, 5.0]
    best, nlls = _unpack(ex, call(ex, tune_add_k, train.clone(), val.clone(), v, list(ks)))
    _diagnose_nlls(ex, nlls, train, val, v, ks)
    if best == 2:
        fail(ex, "return the k itself (here 1.0), not its position in ks.")
    if best == ks[nlls.index(max(nlls))]:
        fail(ex, "you returned the k with the highest NLL; the best k has the lowest.")
    if best != 1.0:
        fail(ex, f"the NLLs are right but best_k should be 1.0 (lowest NLL), got {best}.")
    # A short training text from a random Markov chain: validation, from the same chain, holds
    # pairs training never saw (k = 0 scores infinity), and the best k lies inside the grid.
    g = torch.Generator().manual_seed(6)
    v = 8
    chain = torch.softmax(torch.randn(v, v, generator=g) * 2, dim=1)
    train = torch.cat([torch.arange(v), _walk(chain, 60, g)])  # every row seen at least once
    val = _walk(chain, 300, g)
    ks = [0.0, 0.03, 0.1, 0.3, 1.0, 3.0]
    best, nlls = _unpack(ex, call(ex, tune_add_k, train.clone(), val.clone(), v, list(ks)))
    _diagnose_nlls(ex, nlls, train, val, v, ks)
    if best != ks[nlls.index(min(nlls))]:
        fail(ex, f"on an 8-symbol text the best k is {ks[nlls.index(min(nlls))]}, "
                 f"you returned {best}.")
    passed(ex, "the hand-worked case picks k = 1, k = 0 is infinite on unseen pairs, and a "
               f"Markov-chain text picks k = {best} like the reference.")


# --- 1.3 the training loop, with the gradient by hand ----------------------------------------


class _SpySGD(torch.optim.SGD):
    """SGD that records the weight and the gradient it was handed at every step."""

    def __init__(self, params, lr: float):
        super().__init__(params, lr=lr)
        self.record: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        p = self.param_groups[0]["params"][0]
        self.record.append((p.detach().clone(), None if p.grad is None else p.grad.clone()))
        return super().step(closure)


def _autograd_grad(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    w = weight.detach().clone().requires_grad_()
    F.cross_entropy(w[x], y).backward()
    return w.grad


def _grad_variants(weight: torch.Tensor, x: torch.Tensor,
                   y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients that plausible mistakes produce, each with the hint it deserves."""
    p = weight.softmax(dim=-1)[x]  # (B, V)
    onehot = F.one_hot(y, weight.shape[1]).float()
    b = len(x)
    overwrite = torch.zeros_like(weight)
    overwrite[x] = (p - onehot) / b  # a row that appears twice keeps only one of its gradients
    return {
        "the sign is flipped: the gradient points uphill, and the optimiser subtracts it":
            -_autograd_grad(weight, x, y),
        "you summed over the batch; the loss is a mean, so divide by the batch size":
            _autograd_grad(weight, x, y) * b,
        "subtract the one-hot of the target from the softmax":
            torch.zeros_like(weight).index_add_(0, x, p / b),
        "a character that appears several times in a batch must add up the gradients of all "
        "its rows, not keep only the last one": overwrite,
        "the gradient belongs to the row of the current character x, not of the target y":
            torch.zeros_like(weight).index_add_(0, y, (p - onehot) / b),
    }


def _tiny_case() -> tuple[BigramLM, list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(7)
    model = BigramLM(4)
    with torch.no_grad():
        model.table.weight.copy_(torch.randn(4, 4, generator=g))
    # x repeats characters within each batch, the case that separates adding from overwriting
    batches = [(torch.tensor([0, 1, 0, 2, 0, 3]), torch.tensor([1, 2, 3, 0, 1, 1])),
               (torch.tensor([2, 2, 1, 3, 3, 0]), torch.tensor([0, 1, 1, 2, 0, 3])),
               (torch.tensor([1, 1, 1, 0, 2, 3]), torch.tensor([3, 0, 0, 2, 2, 1]))]
    return model, batches


def _run_without_autograd(ex: str, fn: Callable, *args) -> object:
    try:
        with torch.no_grad():
            return call(ex, fn, *args)
    except AssertionError as err:
        if "does not require grad" in str(err):
            fail(ex, "no autograd in this exercise (the check runs your loop under "
                     "torch.no_grad()): compute the gradient with the formula of §1.7 and "
                     "assign it to model.table.weight.grad yourself.")
        raise


def check_1_3(train_by_hand: Callable[..., list[float]]) -> None:
    """train_by_hand(model, batches, optimizer, epochs) -> step losses; gradients by hand."""
    ex = "1.3"
    model, batches = _tiny_case()
    opt = _SpySGD(model.parameters(), lr=0.5)
    losses = _run_without_autograd(ex, train_by_hand, model, batches, opt, 2)
    n_steps = 2 * len(batches)
    if not opt.record:
        fail(ex, "optimizer.step() was never called: write the gradient into .grad, then let "
                 "the optimiser take the step.")
    if len(opt.record) != n_steps:
        fail(ex, f"2 epochs of {len(batches)} batches make {n_steps} steps, but "
                 f"optimizer.step() ran {len(opt.record)} times.")
    for i, (weight, grad) in enumerate(opt.record):
        x, y = batches[i % len(batches)]
        want = _autograd_grad(weight, x, y)
        if grad is None:
            fail(ex, f"at step {i} model.table.weight.grad was None when optimizer.step() ran: "
                     "assign your gradient to it first.")
        if grad.shape != want.shape:
            fail(ex, f"the gradient should have the table's shape {tuple(want.shape)}, "
                     f"got {tuple(grad.shape)}.")
        if torch.allclose(grad, want, atol=1e-6):
            continue
        for hint, wrong in _grad_variants(weight, x, y).items():
            if torch.allclose(grad, wrong, atol=1e-6):
                fail(ex, f"at step {i}: {hint}.")
        if i > 0:
            if torch.allclose(grad, want + opt.record[i - 1][1], atol=1e-5):
                fail(ex, f"at step {i} the gradient of the previous batch is still in .grad "
                         "and yours was added to it: replace it (or zero it) every step.")
        fail(ex, f"at step {i} the gradient differs from softmax - one-hot averaged over the "
                 f"batch by up to {(grad - want).abs().max().item():.3g}.")
    if not isinstance(losses, (list, tuple)) or len(losses) != n_steps:
        fail(ex, f"return a list with one loss per step ({n_steps} here), got "
                 + (f"{len(losses)} values" if hasattr(losses, "__len__")
                    else type(losses).__name__))
    for i, (weight, _) in enumerate(opt.record):
        x, y = batches[i % len(batches)]
        want = F.cross_entropy(weight[x], y).item()
        got = as_scalar(ex, losses[i], "each loss")
        if not math.isclose(got, want, rel_tol=1e-4):
            fail(ex, f"loss {i} should be the mean cross-entropy of batch {i % len(batches)} "
                     f"before its step, {want:.4f}; got {got:.4f}.")
    _check_reaches_counted_model(ex, train_by_hand)


def _check_reaches_counted_model(ex: str, train_by_hand: Callable) -> None:
    """On 100,000 characters of Tiny Shakespeare, Adam must end within 0.02 nats of counting."""
    from ..data import load_text
    from ..tokenizer import CharTokenizer

    text = load_text("tinyshakespeare")
    tok = CharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text[:100_001]))
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(ids) - 1, generator=g)
    batches = [(ids[:-1][b], ids[1:][b]) for b in order.split(4096)]
    torch.manual_seed(0)
    model = BigramLM(tok.vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    _run_without_autograd(ex, train_by_hand, model, batches, opt, 4)
    counts = bigram_counts(ids, tok.vocab_size)
    floor = counts_nll(BigramLM.from_counts(counts, smoothing=0.0).table.weight, counts)
    got = counts_nll(model.table.weight, counts)
    if not got < floor + 0.02:
        fail(ex, f"after 4 epochs of Adam on 100,000 characters the table's NLL is {got:.4f}, "
                 f"more than 0.02 above the counted model's {floor:.4f}.")
    passed(ex, f"every gradient matches autograd, and Adam took a random table to {got:.4f} "
               f"nats, {got - floor:.4f} above the counted model's {floor:.4f}.")


# --- 1.4 temperature -------------------------------------------------------------------------


def check_1_4(apply_temperature: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """apply_temperature(logits, T) -> softmax(logits / T) over the last dim; T <= 0, NaN raise."""
    ex = "1.4"
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, 0.5, 3.0, 0.0]])
    for t in (1.0, 0.5, 2.0):
        got = as_tensor(ex, call(ex, apply_temperature, logits.clone(), t), "the result").float()
        want = torch.softmax(logits / t, dim=-1)
        if got.shape != want.shape:
            fail(ex, f"the result should keep the logits' shape {tuple(want.shape)}, "
                     f"got {tuple(got.shape)}.")
        if torch.allclose(got, logits / t, atol=1e-5):
            fail(ex, "you divided by T but returned logits; apply a softmax to turn them into "
                     "probabilities.")
        if not torch.allclose(got.sum(-1), torch.ones(2), atol=1e-4):
            fail(ex, f"at T={t} each row should sum to 1 (got {got.sum(-1).tolist()}); "
                     "softmax over the last dim.")
        if t != 1.0 and torch.allclose(got, torch.softmax(logits * t, dim=-1), atol=1e-5):
            fail(ex, f"at T={t} you multiplied by T; divide instead, so that small T sharpens "
                     "the distribution.")
        if not torch.allclose(got, want, atol=1e-5):
            fail(ex, f"at T={t} expected {want[0].tolist()} for the first row, "
                     f"got {got[0].tolist()}.")
    cold = as_tensor(ex, call(ex, apply_temperature, logits.clone(), 0.01), "the result").float()
    if torch.isnan(cold).any() or not torch.allclose(cold[0], torch.tensor([1.0, 0, 0, 0]),
                                                     atol=1e-3):
        fail(ex, "at T=0.01 the distribution should be (almost) one-hot on the largest logit "
                 "without NaNs; a softmax that subtracts the maximum first handles this.")
    for bad in (0.0, -1.0, float("nan")):
        try:
            out = apply_temperature(logits.clone(), bad)
        except ValueError:
            continue
        except NotImplementedError:
            fail(ex, "not implemented yet: replace the `raise NotImplementedError(...)` line "
                     "with your code.")
        except Exception as err:  # noqa: BLE001
            fail(ex, f"T={bad} should raise ValueError with a clear message, but raised "
                     f"{type(err).__name__}.")
        try:
            returned_nan = bool(torch.isnan(torch.as_tensor(out)).any())
        except Exception:  # noqa: BLE001 - whatever came back, it was not an error
            returned_nan = False
        if math.isnan(bad):
            fail(ex, "T=nan is not a temperature either, but it got through: every comparison "
                     "with NaN is False, so test that T is positive rather than that it is "
                     "not <= 0.")
        fail(ex, f"T={bad} is not a temperature: raise ValueError instead of returning a result"
                 + (" (yours is full of NaN)." if returned_nan else "."))
    passed(ex, "matches softmax(logits / T) at T = 0.5, 1, 2, stays finite at T = 0.01, and "
               "rejects T <= 0 and T = NaN.")
