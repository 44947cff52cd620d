"""Tests for companion.bigram: counting, the counted model, the learned model, and their NLL."""
import math

import pytest
import torch

from companion.bigram import BigramLM, bigram_counts, counts_nll, sequence_nll, tune_smoothing
from companion.data import DataUnavailableError, fetch, load_text
from companion.tokenizer import CharTokenizer
from companion.train import train_model


@pytest.fixture(scope="module")
def tiny_ids():
    try:
        fetch("tinyshakespeare", offline=True)  # never the network: the mirror or the cache only
    except DataUnavailableError as err:
        pytest.skip(f"Tiny Shakespeare unavailable (set COMPANION_DATA_DIR to the mirror): {err}")
    text = load_text("tinyshakespeare")
    tok = CharTokenizer.from_text(text)
    return torch.tensor(tok.encode(text), dtype=torch.long), tok.vocab_size


# --- bigram_counts -----------------------------------------------------------------------


def test_counts_hand_worked_case():
    """[0, 1, 1] holds the pairs (0, 1) and (1, 1): row 0 has one 1 in column 1, row 1 likewise."""
    got = bigram_counts(torch.tensor([0, 1, 1]), 2)
    assert got.tolist() == [[0, 1], [0, 1]]


def test_counts_row_is_current_column_is_next():
    got = bigram_counts(torch.tensor([0, 1, 1, 2, 0]), 3)
    assert got.tolist() == [[0, 1, 0], [0, 1, 1], [1, 0, 0]]


def test_counts_accept_a_list_and_match_a_python_loop():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (300,), generator=g).tolist()
    want = torch.zeros(6, 6, dtype=torch.long)
    for a, b in zip(ids, ids[1:]):
        want[a, b] += 1
    assert torch.equal(bigram_counts(ids, 6), want)


@pytest.mark.parametrize("n", [1, 2, 10, 257])
def test_counts_sum_to_len_minus_one(n):
    ids = torch.arange(n) % 5
    counts = bigram_counts(ids, 5)
    assert counts.shape == (5, 5)
    assert int(counts.sum()) == n - 1


def test_counts_sized_by_vocab_not_by_ids_seen():
    counts = bigram_counts(torch.tensor([2]), 4)
    assert counts.shape == (4, 4)
    assert int(counts.abs().sum()) == 0


@pytest.mark.parametrize("ids", [[0, 1, 3], [-1, 0], [5]])
def test_counts_out_of_range_ids_raise_value_error(ids):
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        bigram_counts(torch.tensor(ids), 3)


# --- BigramLM.from_counts ---------------------------------------------------------------


def test_from_counts_probs_rows_sum_to_one_and_equal_smoothed_frequencies():
    counts = torch.tensor([[0, 3, 1], [2, 0, 0], [0, 0, 0]])
    model = BigramLM.from_counts(counts)
    probs = model.probs()
    assert probs.shape == (3, 3)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-6)
    smoothed = counts.double() + 1
    want = smoothed / smoothed.sum(dim=1, keepdim=True)
    assert torch.allclose(probs.double(), want, atol=1e-6)
    # hand-worked row 0: (0+1, 3+1, 1+1) / 7
    row0 = torch.tensor([1 / 7, 4 / 7, 2 / 7], dtype=torch.double)
    assert torch.allclose(probs[0].double(), row0, atol=1e-6)


def test_from_counts_rejects_non_square_and_negative_smoothing():
    with pytest.raises(ValueError, match="square"):
        BigramLM.from_counts(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="smoothing"):
        BigramLM.from_counts(torch.zeros(2, 2), smoothing=-1.0)


def test_bigram_lm_forward_shape():
    model = BigramLM(7)
    assert model(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 7)


def test_uniform_model_nll_is_log_vocab():
    model = BigramLM.from_counts(torch.zeros(5, 5))
    ids = torch.tensor([0, 3, 1, 4, 2, 2])
    assert math.isclose(sequence_nll(model, ids), math.log(5), rel_tol=1e-6)


# --- NLL on Tiny Shakespeare --------------------------------------------------------------


def test_count_model_nll_on_tinyshakespeare_is_about_2_455(tiny_ids):
    ids, v = tiny_ids
    model = BigramLM.from_counts(bigram_counts(ids, v))
    nll = sequence_nll(model, ids)
    assert 2.44 < nll < 2.47


def test_trained_bigram_reaches_count_model_nll(tiny_ids):
    ids, v = tiny_ids
    sub = ids[:50_001]
    counted = sequence_nll(BigramLM.from_counts(bigram_counts(sub, v)), sub)
    # the unsmoothed count model is the exact minimum of cross-entropy on `sub`
    floor = sequence_nll(BigramLM.from_counts(bigram_counts(sub, v), smoothing=0.0), sub)

    torch.manual_seed(0)
    model = BigramLM(v)
    x, y = sub[:-1].view(10, -1), sub[1:].view(10, -1)
    loader = [(x[i : i + 1], y[i : i + 1]) for i in range(10)]
    before = sequence_nll(model, sub)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    history = train_model(model, loader, opt, "cpu", epochs=6, progress=False)
    trained = sequence_nll(model, sub)

    assert before > counted + 1.0  # random init is far off
    assert abs(trained - counted) < 0.05
    assert trained >= floor - 1e-4
    assert history["epoch_loss"][-1] < history["epoch_loss"][0]


def test_sequence_nll_needs_two_tokens():
    model = BigramLM(3)
    for ids in ([], [1]):
        with pytest.raises(ValueError, match="two tokens"):
            sequence_nll(model, torch.tensor(ids, dtype=torch.long))


def test_sequence_nll_matches_hand_computation():
    """probs row 0 (smoothed counts (1,2)) is (1/3, 2/3); row 1 (counts (1,1)) is (1/2, 1/2).
    ids [0, 1, 0] predicts 1 after 0 and 0 after 1: NLL = -(ln 2/3 + ln 1/2) / 2.
    """
    model = BigramLM.from_counts(torch.tensor([[0, 1], [0, 0]]))
    want = -(math.log(2 / 3) + math.log(1 / 2)) / 2
    assert math.isclose(sequence_nll(model, torch.tensor([0, 1, 0])), want, rel_tol=1e-6)


@pytest.fixture(scope="module")
def mle_setup(tiny_ids):
    ids, v = tiny_ids
    sub = ids[:100_001]
    model = BigramLM.from_counts(bigram_counts(sub, v), smoothing=0.0)
    return model, sub


def test_from_counts_unsmoothed_minimises_cross_entropy_under_perturbation(mle_setup):
    model, sub = mle_setup
    base = sequence_nll(model, sub)
    g = torch.Generator().manual_seed(0)
    weight = model.table.weight.detach().clone()
    for scale in (0.3, 0.03):
        for _ in range(3):
            noise = torch.randn(weight.shape, generator=g) * scale
            perturbed = BigramLM(model.vocab_size)
            with torch.no_grad():
                perturbed.table.weight.copy_(weight + noise)
            assert sequence_nll(perturbed, sub) > base


def test_from_counts_unsmoothed_has_zero_gradient(mle_setup):
    model, sub = mle_setup
    model.zero_grad()
    logits = model(sub[:-1].unsqueeze(0)).squeeze(0)
    loss = torch.nn.functional.cross_entropy(logits, sub[1:])
    loss.backward()
    grad = model.table.weight.grad
    assert torch.isfinite(grad).all()
    assert grad.abs().max().item() < 1e-5


def test_smoothed_count_model_is_close_to_the_minimum(mle_setup, tiny_ids):
    model, sub = mle_setup
    _, v = tiny_ids
    smoothed = BigramLM.from_counts(bigram_counts(sub, v), smoothing=1.0)
    floor = sequence_nll(model, sub)
    assert floor < sequence_nll(smoothed, sub) < floor + 0.05


# --- counts_nll and tune_smoothing --------------------------------------------------------


def test_counts_nll_equals_sequence_nll_on_random_text():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 6, (400,), generator=g)
    model = BigramLM(6)
    with torch.no_grad():
        model.table.weight.copy_(torch.randn(6, 6, generator=g))
    got = counts_nll(model.table.weight, bigram_counts(ids, 6))
    assert math.isclose(got, sequence_nll(model, ids), rel_tol=1e-5)


def test_counts_nll_hand_worked_case():
    """Uniform logits over 2 symbols cost ln 2 per pair, whatever the pairs are."""
    got = counts_nll(torch.zeros(2, 2), torch.tensor([[1, 0], [0, 1]]))
    assert math.isclose(got, math.log(2), rel_tol=1e-9)


def test_counts_nll_ignores_minus_infinity_on_pairs_that_never_occur():
    """The unsmoothed model has logits of -inf on unseen pairs; they must cost 0, not NaN."""
    counts = torch.tensor([[3, 0], [1, 1]])
    model = BigramLM.from_counts(counts, smoothing=0.0)
    assert math.isinf(model.table.weight[0, 1].item())
    want = -(math.log(1.0) * 3 + 2 * math.log(0.5)) / 5
    assert math.isclose(counts_nll(model.table.weight, counts), want, rel_tol=1e-6)


def test_counts_nll_is_infinite_when_an_occurring_pair_has_probability_zero():
    model = BigramLM.from_counts(torch.tensor([[3, 0], [1, 1]]), smoothing=0.0)
    assert counts_nll(model.table.weight, torch.tensor([[0, 1], [0, 0]])) == math.inf


@pytest.mark.parametrize("logits, counts, match", [
    (torch.zeros(2, 3), torch.zeros(2, 3), "V x V"),
    (torch.zeros(2, 2), torch.zeros(3, 3), "same"),
    (torch.zeros(2, 2), torch.zeros(2, 2), "no pairs"),
])
def test_counts_nll_rejects_bad_shapes_and_empty_counts(logits, counts, match):
    with pytest.raises(ValueError, match=match):
        counts_nll(logits, counts)


def test_tune_smoothing_hand_worked_best_k_is_one():
    """Train row 0 is [3, 1], val row 0 is [2, 1]. Add-k gives P(0 | 0) = (3 + k) / (4 + 2k),
    which equals val's share 2/3 at k = 1, the k of maximum validation likelihood."""
    train = torch.tensor([[3, 1], [0, 0]])
    val = torch.tensor([[2, 1], [0, 0]])
    ks = [0.0, 0.5, 1.0, 2.0, 4.0]
    best, nlls = tune_smoothing(train, val, ks)
    assert best == 1.0
    assert len(nlls) == len(ks) and nlls.index(min(nlls)) == 2
    want = -(2 * math.log(4 / 6) + math.log(2 / 6)) / 3
    assert math.isclose(nlls[2], want, rel_tol=1e-6)


def test_tune_smoothing_on_the_training_text_itself_prefers_the_least_smoothing():
    g = torch.Generator().manual_seed(4)
    counts = bigram_counts(torch.randint(0, 5, (300,), generator=g), 5)
    best, nlls = tune_smoothing(counts, counts, [0.0, 0.1, 1.0, 10.0])
    assert best == 0.0
    assert nlls == sorted(nlls)  # more smoothing only ever costs on the counted text


def test_tune_smoothing_unseen_validation_pair_makes_k_zero_infinite():
    train = torch.tensor([[3, 0], [1, 1]])
    val = torch.tensor([[1, 1], [0, 0]])
    best, nlls = tune_smoothing(train, val, [0.0, 1.0])
    assert nlls[0] == math.inf and math.isfinite(nlls[1]) and best == 1.0


@pytest.mark.parametrize("ks, match", [([], "empty"), ([1.0, -0.5], ">= 0")])
def test_tune_smoothing_rejects_empty_or_negative_ks(ks, match):
    with pytest.raises(ValueError, match=match):
        tune_smoothing(torch.ones(2, 2), torch.ones(2, 2), ks)


def test_tune_smoothing_on_tinyshakespeare_picks_an_interior_k(tiny_ids):
    ids, v = tiny_ids
    n = int(0.9 * len(ids))
    train, val = bigram_counts(ids[:n], v), bigram_counts(ids[n:], v)
    ks = [0.0, 0.01, 0.1, 1.0, 10.0]
    best, nlls = tune_smoothing(train, val, ks)
    assert nlls[0] == math.inf  # the validation text holds pairs the training text never saw
    assert 0.0 < best < 10.0 and nlls[ks.index(best)] < nlls[-1]
