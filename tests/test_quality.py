"""The fastText-style quality classifier: hashed features, a hand-checked gradient, held-out pages."""
from __future__ import annotations

import numpy as np
import pytest

from companion.data import html_to_text, make_crawl, normalize_text, quality_reason
from companion.data.quality import FastTextClassifier, binary_scores, hashed_features, train_fasttext


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
