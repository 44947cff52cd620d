"""Chapter 1's self-checks pass right answers, and give a specific hint for the stub and for
plausible wrong answers."""
import math

import pytest
import torch
import torch.nn.functional as F

from checkhelpers import fails_with, passes, stub
from companion.bigram import bigram_counts
from companion.checks import check_1_1, check_1_2, check_1_3, check_1_4
from companion.data import DataUnavailableError, fetch


@pytest.fixture(scope="module")
def shakespeare():
    """check_1_3's last stage trains on Tiny Shakespeare: only from the mirror or the cache."""
    try:
        fetch("tinyshakespeare", offline=True)
    except DataUnavailableError as err:
        pytest.skip(f"Tiny Shakespeare unavailable (set COMPANION_DATA_DIR to the mirror): {err}")


# --- 1.1 an interpolated trigram -------------------------------------------------------------


def interpolated_nll(train_ids, val_ids, vocab_size, lambdas, *, fallback=True, followers=True,
                     smooth=True, denominator_offset=2, order=(0, 1, 2)):
    """The exercise's solution; the keyword arguments make the plausible mistakes."""
    from collections import Counter

    t, v = train_ids.tolist(), val_ids.tolist()
    uni, bi, tri = Counter(t), Counter(zip(t, t[1:])), Counter(zip(t, t[1:], t[2:]))
    after1 = Counter(t[:-1]) if followers else uni
    after2 = Counter(zip(t[:-2], t[1:-1])) if followers else bi
    l1, l2, l3 = (lambdas[i] for i in order)
    total = 0.0
    for a, b, c in zip(v, v[1:], v[2:]):
        w1, w2, w3 = l1, l2, l3
        if fallback and after2[(a, b)] == 0:
            w2, w3 = w2 + w3, 0.0
        if fallback and after1[b] == 0:
            w1, w2 = w1 + w2, 0.0
        p = w1 * ((uni[c] + 1) / (len(t) + vocab_size) if smooth else uni[c] / len(t))
        if after1[b]:
            p += w2 * bi[(b, c)] / after1[b]
        if after2[(a, b)]:
            p += w3 * tri[(a, b, c)] / after2[(a, b)]
        total -= math.log(p)
    return total / (len(v) - denominator_offset)


def test_check_1_1_passes_a_correct_answer(capsys, shakespeare):
    passes(check_1_1, interpolated_nll, capsys)


def test_check_1_1_passes_a_tensor_result(capsys, shakespeare):
    passes(check_1_1, lambda *a: torch.tensor(interpolated_nll(*a)), capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: interpolated_nll(*a, denominator_offset=0), "T - 2"),
    (lambda *a: interpolated_nll(*a, followers=False), "*follows*"),
    (lambda *a: interpolated_nll(*a, fallback=False), "move its weight"),
    (lambda *a: interpolated_nll(*a, order=(2, 1, 0)), "in that order"),
    (lambda *a: interpolated_nll(*a, smooth=False), "add-one smoothed"),
    (lambda *a: None, "forget to return"),
])
def test_check_1_1_rejects_mistakes(wrong, fragment, shakespeare):
    fails_with(check_1_1, wrong, fragment)


# --- 1.2 add-k tuned on validation -----------------------------------------------------------


def _nlls(train_ids, scored_ids, v, ks, denominator=lambda k, v: k * v, only_zeros=False,
          transpose=False, n_div=None):
    counts = bigram_counts(train_ids, v).double()
    counts = counts.T if transpose else counts
    out = []
    for k in ks:
        if only_zeros:  # k on the empty cells only, then each row renormalised
            smoothed = counts + k * (counts == 0)
            probs = smoothed / smoothed.sum(dim=1, keepdim=True)
        else:
            probs = (counts + k) / (counts.sum(dim=1, keepdim=True) + denominator(k, v))
        logp = probs[scored_ids[:-1], scored_ids[1:]].log()
        out.append(-(logp.sum() / (n_div or len(scored_ids) - 1)).item())
    return out


def _best(ks, nlls):
    return ks[nlls.index(min(nlls))]


def tune_right(train_ids, val_ids, v, ks):
    nlls = _nlls(train_ids, val_ids, v, ks)
    return _best(ks, nlls), nlls


def tune_on_train(train_ids, val_ids, v, ks):
    nlls = _nlls(train_ids, train_ids, v, ks)
    return _best(ks, nlls), nlls


def tune_denominator_plus_k(train_ids, val_ids, v, ks):
    nlls = _nlls(train_ids, val_ids, v, ks, denominator=lambda k, v: k)
    return _best(ks, nlls), nlls


def tune_transposed(train_ids, val_ids, v, ks):
    nlls = _nlls(train_ids, val_ids, v, ks, transpose=True)
    return _best(ks, nlls), nlls


def tune_divides_by_len_val(train_ids, val_ids, v, ks):
    nlls = _nlls(train_ids, val_ids, v, ks, n_div=len(val_ids))
    return _best(ks, nlls), nlls


def tune_returns_index(train_ids, val_ids, v, ks):
    nlls = _nlls(train_ids, val_ids, v, ks)
    return nlls.index(min(nlls)), nlls


def tune_returns_argmax(train_ids, val_ids, v, ks):
    nlls = _nlls(train_ids, val_ids, v, ks)
    return ks[nlls.index(max(nlls))], nlls


def tune_smooths_only_zero_cells(train_ids, val_ids, v, ks):
    nlls = _nlls(train_ids, val_ids, v, ks, only_zeros=True)
    return _best(ks, nlls), nlls


def tune_nan_at_k_zero(train_ids, val_ids, v, ks):
    """Scores with counts * log p over all cells: 0 * log 0 gives NaN instead of counting as 0."""
    counts = bigram_counts(train_ids, v).double()
    val_counts = bigram_counts(val_ids, v).double()
    nlls = []
    for k in ks:
        probs = (counts + k) / (counts.sum(dim=1, keepdim=True) + k * v)
        nlls.append(-(val_counts * probs.log()).sum().item() / val_counts.sum().item())
    finite = [x if not math.isnan(x) else math.inf for x in nlls]
    return _best(ks, finite), nlls


def tune_clamps_zero_probabilities(train_ids, val_ids, v, ks):
    counts = bigram_counts(train_ids, v).double()
    nlls = []
    for k in ks:
        probs = (counts + k) / (counts.sum(dim=1, keepdim=True) + k * v)
        nlls.append(-probs.clamp(min=1e-10)[val_ids[:-1], val_ids[1:]].log().mean().item())
    return _best(ks, nlls), nlls


def test_check_1_2_passes_a_correct_tuner(capsys):
    passes(check_1_2, tune_right, capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (tune_on_train, "score val_ids"),
    (tune_denominator_plus_k, "k * vocab_size, not by k"),
    (tune_transposed, "rows and columns are swapped"),
    (tune_divides_by_len_val, "len(val_ids) - 1"),
    (tune_returns_index, "not its position"),
    (tune_returns_argmax, "the best k has the lowest"),
    (tune_smooths_only_zero_cells, "every cell, seen or not"),
    (tune_nan_at_k_zero, "you returned NaN"),
    (tune_clamps_zero_probabilities, "the NLL is infinite"),
    (lambda *a: None, "return a pair"),
    (lambda t, v, n, ks: (1.0, [0.0] * (len(ks) - 1)), "one NLL per k"),
])
def test_check_1_2_rejects_mistakes(wrong, fragment):
    fails_with(check_1_2, wrong, fragment)


# --- 1.3 the training loop, with the gradient by hand ----------------------------------------


def _grad(table, x, y, sign=1.0, one_hot=True, mean=True, rows_of=None, add=True):
    p = table[x].softmax(dim=-1)
    if one_hot:
        p[torch.arange(len(x)), y] -= 1
    p = sign * p / (len(x) if mean else 1)
    index = x if rows_of is None else rows_of(x, y)
    if add:
        return torch.zeros_like(table).index_add_(0, index, p)
    g = torch.zeros_like(table)
    g[index] = p
    return g


def make_loop(accumulate=False, step=True, loss_after=False, **grad_kwargs):
    def train(model, batches, optimizer, epochs):
        table = model.table.weight
        losses = []
        for _ in range(epochs):
            for x, y in batches:
                loss = F.cross_entropy(table[x], y).item()
                g = _grad(table, x, y, **grad_kwargs)
                table.grad = table.grad + g if accumulate and table.grad is not None else g
                if step:
                    optimizer.step()
                losses.append(F.cross_entropy(table[x], y).item() if loss_after else loss)
        return losses
    return train


def uses_autograd(model, batches, optimizer, epochs):
    losses = []
    for _ in range(epochs):
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    return losses


def test_check_1_3_passes_a_correct_loop(capsys, shakespeare):
    passes(check_1_3, make_loop(), capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (uses_autograd, "no autograd"),
    (make_loop(sign=-1.0), "sign is flipped"),
    (make_loop(mean=False), "divide by the batch size"),
    (make_loop(one_hot=False), "subtract the one-hot"),
    (make_loop(add=False), "add up the gradients"),
    (make_loop(rows_of=lambda x, y: y), "row of the current character x"),
    (make_loop(accumulate=True), "previous batch is still in .grad"),
    (make_loop(step=False), "never called"),
    (make_loop(loss_after=True), "before its step"),
    (lambda model, batches, optimizer, epochs: None, "never called"),
])
def test_check_1_3_rejects_mistakes(wrong, fragment):
    fails_with(check_1_3, wrong, fragment)


def test_check_1_3_one_epoch_only_is_caught_by_the_step_count():
    def one_epoch(model, batches, optimizer, epochs):
        return make_loop()(model, batches, optimizer, 1)

    fails_with(check_1_3, one_epoch, "make 6 steps")


def test_check_1_3_missing_losses_are_caught():
    def no_losses(model, batches, optimizer, epochs):
        make_loop()(model, batches, optimizer, epochs)

    fails_with(check_1_3, no_losses, "one loss per step")


# --- 1.4 temperature -------------------------------------------------------------------------


def temperature_right(logits, temperature):
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(logits / temperature, dim=-1)


def temperature_no_softmax(logits, temperature):
    if not temperature > 0:
        raise ValueError("temperature must be > 0")
    return logits / temperature


def temperature_multiplies(logits, temperature):
    if not temperature > 0:
        raise ValueError("temperature must be > 0")
    return torch.softmax(logits * temperature, dim=-1)


def temperature_no_value_error(logits, temperature):  # T = 0 returns NaN
    return torch.softmax(logits / temperature, dim=-1)


def temperature_lets_nan_through(logits, temperature):
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return torch.softmax(logits / temperature, dim=-1)


def temperature_wrong_dim(logits, temperature):
    if not temperature > 0:
        raise ValueError("temperature must be > 0")
    return torch.softmax(logits / temperature, dim=0)


def temperature_wrong_exception(logits, temperature):
    if not temperature > 0:
        raise AssertionError("bad temperature")
    return torch.softmax(logits / temperature, dim=-1)


def temperature_naive_softmax(logits, temperature):  # exp overflows at small T: NaN
    if not temperature > 0:
        raise ValueError("temperature must be > 0")
    e = (logits / temperature).exp()
    return e / e.sum(dim=-1, keepdim=True)


def test_check_1_4_passes_a_correct_apply_temperature(capsys):
    passes(check_1_4, temperature_right, capsys)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (temperature_no_softmax, "apply a softmax"),
    (temperature_multiplies, "multiplied by T"),
    (temperature_no_value_error, "full of NaN"),
    (temperature_lets_nan_through, "T=nan is not a temperature"),
    (temperature_wrong_dim, "last dim"),
    (temperature_wrong_exception, "raised AssertionError"),
    (temperature_naive_softmax, "without NaNs"),
    (lambda logits, temperature: None, "should be a tensor"),
])
def test_check_1_4_rejects_mistakes(wrong, fragment):
    fails_with(check_1_4, wrong, fragment)
