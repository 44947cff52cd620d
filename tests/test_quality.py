"""The fastText-style quality classifier: hashed features, a hand-checked gradient, held-out pages."""
from __future__ import annotations

import numpy as np
import pytest

from companion.data import html_to_text, make_crawl, normalize_text, quality_reason
from companion.data.quality import (FastTextClassifier, binary_scores, fasttext_gradients,
                                     hashed_features, train_fasttext)


def test_hashed_features_hand_worked_count_and_determinism():
    # "a b": words a, b; bigram "a b"; char 3-grams of "<a>" and "<b>": one each.
    feats = hashed_features("a b", buckets=1000, word_ngrams=2, char_n=(3, 3))
    assert len(feats) == 5 and all(0 <= f < 1000 for f in feats)
    assert feats == hashed_features("A b", buckets=1000, word_ngrams=2, char_n=(3, 3))
    with pytest.raises(ValueError, match="buckets"):
        hashed_features("a", buckets=0)


def test_untrained_model_is_uniform_and_training_separates_toy_classes():
    m = FastTextClassifier(np.zeros((64, 2)), np.zeros(2))
    assert np.allclose(m.predict_proba(["anything"]), 0.5)
    m = train_fasttext(["the cat and the dog"] * 20 + ["### $$$ ###"] * 20, [1] * 20 + [0] * 20,
                       buckets=1 << 10, epochs=40)
    p = m.predict_proba(["the dog and the cat", "$$$ ### $$$"])[:, 1]
    assert p[0] > 0.9 and p[1] < 0.1


def test_train_fasttext_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        train_fasttext(["a", "b"], [1])
    with pytest.raises(ValueError, match="C >= 2"):
        train_fasttext(["a", "b"], [0, 0])


def test_classifier_tracks_gopher_on_held_out_pages():
    crawl = make_crawl(1000, seed=0)
    texts = [normalize_text(html_to_text(d.html)) for d in crawl]
    good = [quality_reason(t) is None for t in texts]
    cut = 700
    test = [i for i in range(cut, len(crawl)) if crawl[i].dup_of is None or crawl[i].dup_of >= cut]
    model = train_fasttext(texts[:cut], [int(g) for g in good[:cut]])
    p = model.predict_proba([texts[i] for i in test])[:, 1]
    s = binary_scores([not good[i] for i in test], [q < 0.5 for q in p])
    assert s["accuracy"] >= 0.9 and s["precision"] >= 0.9 and s["recall"] >= 0.5, s


def test_binary_scores_hand_worked():
    assert binary_scores([True, False, True], [True, True, False]) == {
        "tp": 1, "fp": 1, "fn": 1, "tn": 0, "precision": 0.5, "recall": 0.5, "accuracy": 1 / 3}


def test_fasttext_package_agrees_with_ours_on_held_out_pages(tmp_path):
    fasttext = pytest.importorskip("fasttext")
    crawl = make_crawl(1000, seed=0)
    texts = [" ".join(normalize_text(html_to_text(d.html)).split()) for d in crawl]
    good = [quality_reason(normalize_text(html_to_text(d.html))) is None for d in crawl]
    cut = 700
    test = [i for i in range(cut, len(crawl)) if crawl[i].dup_of is None or crawl[i].dup_of >= cut]
    train_file = tmp_path / "train.txt"
    train_file.write_text("".join(f"__label__{int(g)} {t}\n" for g, t in zip(good[:cut], texts)))
    ref = fasttext.train_supervised(str(train_file), epoch=10, wordNgrams=2, minn=3, maxn=5,
                                    bucket=1 << 16, seed=0, thread=1, verbose=0)
    # .f.predict: fastText 0.9.2's Python predict() trips over NumPy 2's copy=False.
    ref_bad = [ref.f.predict(texts[i] + "\n", 1, 0.0, "strict")[0][1] == "__label__0" for i in test]
    ours = train_fasttext(texts[:cut], [int(g) for g in good[:cut]])
    ours_bad = [p < 0.5 for p in ours.predict_proba([texts[i] for i in test])[:, 1]]
    assert sum(a == b for a, b in zip(ref_bad, ours_bad)) / len(test) >= 0.9
    s = binary_scores([not good[i] for i in test], ref_bad)
    assert s["precision"] >= 0.8, s


def _dense(feats: list[list[int]], buckets: int) -> np.ndarray:
    """The (N, buckets) matrix of mean one-hot vectors that `fasttext_gradients` never forms."""
    X = np.zeros((len(feats), buckets))
    for row, f in zip(X, feats):
        np.add.at(row, f or [0], 1 / max(len(f), 1))
    return X


def test_fasttext_gradients_equal_torch_autograd():
    torch = pytest.importorskip("torch")
    from companion.data.quality import fasttext_gradients
    texts = ["the cat sat", "### $$$", "", "to be or not to be, that is the question"]
    y = np.array([1, 0, 0, 1])
    feats = [hashed_features(t, 256) for t in texts]
    rng = np.random.default_rng(0)
    m = FastTextClassifier(rng.normal(size=(256, 2)), rng.normal(size=2))
    loss, d_w, d_b = fasttext_gradients(m, feats, y, weight_decay=0.01)
    w = torch.tensor(m.weight, requires_grad=True)
    b = torch.tensor(m.bias, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(torch.tensor(_dense(feats, 256)) @ w + b,
                                            torch.tensor(y)) + 0.005 * (w**2).sum()
    ref.backward()
    assert loss == pytest.approx(ref.item(), abs=1e-12)
    assert np.allclose(d_w, w.grad.numpy(), atol=1e-12) and np.allclose(d_b, b.grad.numpy())
    assert np.abs(d_w).max() > 0.01  # the penalty and the labels both move W


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_train_fasttext_equals_a_dense_hand_loop(optimizer):
    """Plain SGD is W -= lr * (X^T (P - Y) / n + wd * W); Adam is the same gradient, rescaled."""
    texts = ["the cat and the dog", "### $$$ ###", "a dog", "$$$", "the hat", "### ###"] * 3
    labels = [1, 0, 1, 0, 1, 0] * 3
    buckets, lr, wd, bs = 128, 0.5, 0.01, 4
    m = train_fasttext(texts, labels, buckets=buckets, lr=lr, batch_size=bs, epochs=3, seed=1,
                       optimizer=optimizer, weight_decay=wd)
    X = _dense([hashed_features(t, buckets) for t in texts], buckets)
    Y = np.eye(2)[labels]
    W, b = np.zeros((buckets, 2)), np.zeros(2)
    mom = [[np.zeros_like(W), np.zeros_like(W)], [np.zeros(2), np.zeros(2)]]
    rng, step = np.random.default_rng(1), 0
    for _ in range(3):
        order = rng.permutation(len(texts))
        for s in range(0, len(texts), bs):
            i = order[s: s + bs]
            z = X[i] @ W + b
            P = np.exp(z - z.max(1, keepdims=True))
            P /= P.sum(1, keepdims=True)
            grads = (X[i].T @ (P - Y[i]) / len(i) + wd * W, (P - Y[i]).mean(0))
            step += 1
            for param, g, (a, v) in zip((W, b), grads, mom):
                if optimizer == "sgd":
                    param -= lr * g
                    continue
                a[:] = 0.9 * a + 0.1 * g
                v[:] = 0.999 * v + 0.001 * g**2
                param -= lr * (a / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    assert np.abs(W).max() > 0.01
    assert np.allclose(m.weight, W, atol=1e-10) and np.allclose(m.bias, b, atol=1e-10)


def test_train_fasttext_rejects_unknown_optimizer():
    with pytest.raises(ValueError, match="optimizer"):
        train_fasttext(["a", "b"], [0, 1], optimizer="rmsprop")


def test_fasttext_loss_stays_finite_when_a_probability_underflows():
    # a logit gap of 2,000 makes softmax's smaller probability exactly 0.0 in float64
    m = FastTextClassifier(np.zeros((8, 2)), np.array([0.0, 2000.0]))
    loss, d_weight, d_bias = fasttext_gradients(m, [[1, 2]], np.array([0]))
    assert np.isfinite(loss) and abs(loss - 2000.0) < 1e-9
    assert np.allclose(d_bias, [-1.0, 1.0])
