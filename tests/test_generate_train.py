"""Tests for companion.generate (temperature, sampling) and companion.train.train_model."""
import math

import pytest
import torch

from companion.bigram import BigramLM, bigram_counts
from companion.generate import generate, generate_text, temperature_softmax
from companion.tokenizer import CharTokenizer
from companion.train import train_model

TEXT = "the quick brown fox jumps over the lazy dog. " * 20


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer.from_text(TEXT)


@pytest.fixture(scope="module")
def count_model(tok):
    ids = torch.tensor(tok.encode(TEXT))
    return BigramLM.from_counts(bigram_counts(ids, tok.vocab_size))


# --- temperature_softmax -----------------------------------------------------------------


def test_temperature_softmax_hand_case():
    """softmax([0, 1]) = (1, e) / (1 + e) = (0.2689, 0.7311)."""
    got = temperature_softmax(torch.tensor([0.0, 1.0]), 1.0)
    e = math.e
    assert torch.allclose(got, torch.tensor([1 / (1 + e), e / (1 + e)]), atol=1e-6)
    assert torch.allclose(got, torch.tensor([0.2689, 0.7311]), atol=1e-4)


def test_temperature_divides_logits():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    for t in (0.5, 2.0):
        assert torch.allclose(temperature_softmax(logits, t), torch.softmax(logits / t, dim=-1), atol=1e-6)


def test_low_temperature_sharpens_high_temperature_flattens():
    logits = torch.tensor([0.0, 1.0, 3.0])
    cold, warm, hot = (temperature_softmax(logits, t) for t in (0.1, 1.0, 100.0))
    assert cold.max() > warm.max() > hot.max()
    assert cold.argmax() == 2
    assert torch.allclose(hot, torch.full((3,), 1 / 3), atol=1e-2)


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan")])
def test_temperature_not_positive_raises_value_error(t):
    with pytest.raises(ValueError, match="temperature"):
        temperature_softmax(torch.tensor([0.0, 1.0]), t)


# --- generate ----------------------------------------------------------------------------


def test_generate_output_shape_is_b_by_t_plus_n(count_model):
    idx = torch.zeros(3, 4, dtype=torch.long)
    out = generate(count_model, idx, 7, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 11)
    assert torch.equal(out[:, :4], idx)
    assert int(out.min()) >= 0 and int(out.max()) < count_model.vocab_size


def test_generate_same_seed_same_output(count_model):
    idx = torch.tensor([[1, 2]])
    a = generate(count_model, idx, 50, generator=torch.Generator().manual_seed(123))
    b = generate(count_model, idx, 50, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a, b)


def test_generate_different_seeds_differ(count_model):
    idx = torch.zeros(1, 1, dtype=torch.long)
    outs = {
        tuple(generate(count_model, idx, 40, temperature=2.0, generator=torch.Generator().manual_seed(s))[0].tolist())
        for s in range(4)
    }
    assert len(outs) > 1


def test_temperature_zero_is_greedy_argmax_chain(count_model):
    table = count_model.table.weight.detach()
    for start in range(count_model.vocab_size):
        out = generate(count_model, torch.tensor([[start]]), 12, temperature=0)
        want = [start]
        for _ in range(12):
            want.append(int(table[want[-1]].argmax()))
        assert out[0].tolist() == want


def test_generate_restores_training_mode(count_model):
    count_model.train()
    generate(count_model, torch.zeros(1, 1, dtype=torch.long), 2, temperature=0)
    assert count_model.training
    count_model.eval()
    generate(count_model, torch.zeros(1, 1, dtype=torch.long), 2, temperature=0)
    assert not count_model.training


def test_generate_rejects_1d_idx(count_model):
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        generate(count_model, torch.zeros(3, dtype=torch.long), 2)


def test_generate_text_starts_with_prompt_and_is_repeatable(count_model, tok):
    a = generate_text(count_model, tok, "the ", max_new_tokens=30, seed=7)
    b = generate_text(count_model, tok, "the ", max_new_tokens=30, seed=7)
    assert a.startswith("the ")
    assert len(a) == len("the ") + 30
    assert a == b


def test_generate_text_empty_prompt_raises_value_error(count_model, tok):
    with pytest.raises(ValueError, match="prompt"):
        generate_text(count_model, tok, "", max_new_tokens=5)


# --- train_model -------------------------------------------------------------------------


def _tiny_problem(n_batches=4):
    """A deterministic cycle 0 -> 1 -> 2 -> 3 -> 0: a bigram can learn it to near-zero loss."""
    ids = torch.arange(4 * 8 * n_batches + 1) % 4
    x, y = ids[:-1].view(n_batches, 1, -1), ids[1:].view(n_batches, 1, -1)
    return [(x[i], y[i]) for i in range(n_batches)]


def test_train_model_history_has_one_entry_per_step_and_per_epoch():
    torch.manual_seed(0)
    model = BigramLM(4)
    loader = _tiny_problem(n_batches=4)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    history = train_model(model, loader, opt, "cpu", epochs=3, progress=False)
    assert set(history) == {"step_loss", "epoch_loss"}
    assert len(history["step_loss"]) == 4 * 3
    assert len(history["epoch_loss"]) == 3
    for e in range(3):
        mean = sum(history["step_loss"][4 * e : 4 * e + 4]) / 4
        assert math.isclose(history["epoch_loss"][e], mean, rel_tol=1e-9)


def test_train_model_loss_decreases_on_tiny_problem():
    torch.manual_seed(0)
    model = BigramLM(4)
    opt = torch.optim.Adam(model.parameters(), lr=0.2)
    history = train_model(model, _tiny_problem(), opt, "cpu", epochs=20, progress=False)
    losses = history["epoch_loss"]
    assert losses[-1] < losses[0]
    assert losses[-1] < 0.1
    assert model.training


def test_train_model_progress_prints_epoch_losses(capsys):
    torch.manual_seed(0)
    model = BigramLM(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_model(model, _tiny_problem(), opt, "cpu", epochs=2, progress=True)
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out


@pytest.mark.parametrize("epochs", [0, -1])
def test_train_model_epochs_below_one_raise_value_error(epochs):
    model = BigramLM(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="epochs"):
        train_model(model, _tiny_problem(), opt, "cpu", epochs=epochs, progress=False)


def test_train_model_empty_loader_raises_value_error():
    model = BigramLM(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no batches"):
        train_model(model, [], opt, "cpu", epochs=1, progress=False)
