"""A fastText-style quality classifier, from scratch: hashed word and character n-grams, averaged,
then one linear layer. Introduced in chapter 2.

fastText (Joulin et al. 2017) represents a text by the mean of the embeddings of its words and
word bigrams (and, for subwords, character n-grams), each hashed into a fixed number of buckets,
then applies a linear classifier. Here the mean and its gradient are np.bincount over bucket ids.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

from dataclasses import dataclass

import numpy as np

__all__ = ["hashed_features", "FastTextClassifier", "fasttext_gradients", "train_fasttext",
           "binary_scores"]

_WORD = re.compile(r"\w+|[^\w\s]")  # words, and each punctuation mark or symbol on its own


def hashed_features(
    text: str, buckets: int = 1 << 16, word_ngrams: int = 2, char_n: tuple[int, int] = (3, 5)
) -> list[int]:
    """Bucket ids of the words, word n-grams up to `word_ngrams`, and char n-grams of each word.

    crc32 is fixed across runs and machines (Python's hash() is salted per process).
    Example: len(hashed_features("a b", word_ngrams=2, char_n=(3, 3))) -> 2 words + 1 bigram + 2
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    words = _WORD.findall(text.lower())
    feats = [
        f"w:{' '.join(words[i: i + k])}"
        for k in range(1, word_ngrams + 1)
        for i in range(len(words) - k + 1)
    ]
    lo, hi = char_n
    for w in set(words):
        w = f"<{w}>"
        feats += [f"c:{w[i: i + k]}" for k in range(lo, hi + 1) for i in range(len(w) - k + 1)]
    return [zlib.crc32(f.encode("utf-8")) % buckets for f in feats]


def _bags(feats: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat bucket ids, the text each belongs to, and weight 1/len(text): a sparse mean."""
    feats = [f or [0] for f in feats]  # an empty text: one feature, bucket 0
    sizes = np.fromiter(map(len, feats), dtype=np.int64, count=len(feats))
    ids = np.fromiter((i for f in feats for i in f), dtype=np.int64, count=int(sizes.sum()))
    doc = np.repeat(np.arange(len(feats)), sizes)
    return ids, doc, 1.0 / sizes[doc]


@dataclass
class FastTextClassifier:
    """Class logits = a linear layer applied to the mean of a text's hashed n-gram one-hot vectors.

    Row k of `weight` is bucket k's contribution to each class. fastText puts a dim-d embedding
    before the linear layer (a rank-d factorisation of this matrix); with 2 classes the matrix
    itself is small (buckets x 2), so we train it directly, with the gradient written by hand.
    """

    weight: np.ndarray  # (buckets, C)
    bias: np.ndarray  # (C,)

    @property
    def buckets(self) -> int:
        return self.weight.shape[0]

    def _logits(self, ids: np.ndarray, doc: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
        cols = [
            np.bincount(doc, weights=w * self.weight[ids, c], minlength=n)
            for c in range(self.weight.shape[1])
        ]
        return np.stack(cols, axis=1) + self.bias  # (N, C)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(N, n_classes) class probabilities."""
        logits = self._logits(*_bags([hashed_features(t, self.buckets) for t in texts]), len(texts))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def fasttext_gradients(
    model: FastTextClassifier, feats: list[list[int]], y: np.ndarray, weight_decay: float = 0.0
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy of a batch plus (weight_decay / 2) * |W|^2, and its gradients (dW, db).

    With X the (N, buckets) matrix of mean one-hot vectors and Y the one-hot labels:
    dW = X^T (softmax(XW + b) - Y) / N + weight_decay * W, db = mean(softmax(XW + b) - Y).
    Example: fasttext_gradients(m, [[3, 7]], np.array([1]))[1].shape -> (buckets, 2)
    """
    ids, doc, w = _bags(feats)
    n, n_classes = len(feats), model.weight.shape[1]
    logits = model._logits(ids, doc, w, n)
    # log-softmax, not log(softmax): a probability that underflows to 0 (large logits, as a large
    # learning rate gives) would make the loss inf; its log is finite
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    loss = float(-log_p[np.arange(n), y].mean() + weight_decay / 2 * (model.weight**2).sum())
    g = (p - np.eye(n_classes)[y]) / n  # d(mean loss)/d(logits): softmax - onehot
    # X^T g without forming X: each (bucket, text) entry w scatters w * g[text] onto its bucket.
    d_weight = np.stack(
        [np.bincount(ids, weights=w * g[doc, c], minlength=model.buckets)
         for c in range(n_classes)],
        axis=1,
    )
    return loss, d_weight + weight_decay * model.weight, g.sum(axis=0)


def train_fasttext(
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    epochs: int = 10,
    buckets: int = 1 << 16,
    lr: float = 0.1,
    batch_size: int = 128,
    seed: int = 0,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
) -> FastTextClassifier:
    """Train a FastTextClassifier: softmax cross-entropy, minibatch Adam (or plain "sgd"); seconds
    for 1,000s of pages. Each epoch visits the texts in the order rng.permutation(N) of a
    numpy default_rng(seed).

    Example: train_fasttext(["good text", "### $$$"] * 50, [1, 0] * 50).predict_proba(["### ###"])
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise ValueError("texts is empty: pass at least one labelled text")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    y = np.asarray(labels, dtype=np.int64)
    n_classes = int(y.max()) + 1
    if n_classes < 2 or int(y.min()) < 0:
        raise ValueError(f"labels must be 0..C-1 with C >= 2, got min {y.min()}, max {y.max()}")
    rng = np.random.default_rng(seed)
    model = FastTextClassifier(np.zeros((buckets, n_classes)), np.zeros(n_classes))
    feats = [hashed_features(t, buckets) for t in texts]  # featurize once, not per epoch
    params = [model.weight, model.bias]
    m1, m2 = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(texts))
        for start in range(0, len(texts), batch_size):
            batch = order[start : start + batch_size]
            _, *grads = fasttext_gradients(model, [feats[i] for i in batch], y[batch], weight_decay)
            step += 1
            for param, grad, a, v in zip(params, grads, m1, m2):
                if optimizer == "sgd":
                    param -= lr * grad
                    continue
                a *= 0.9  # Adam, with bias correction
                a += 0.1 * grad
                v *= 0.999
                v += 0.001 * grad**2
                param -= lr * (a / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return model


def binary_scores(truth: Sequence[bool], pred: Sequence[bool]) -> dict:
    """Counts, precision, recall and accuracy of boolean predictions of the positive class.

    Example: binary_scores([True, False], [True, True]) -> {"tp": 1, "fp": 1, "fn": 0, "tn": 0,
    "precision": 0.5, "recall": 1.0, "accuracy": 0.5}
    """
    if len(truth) != len(pred):
        raise ValueError(f"truth has {len(truth)} labels but pred {len(pred)}")
    tp = sum(bool(t) and bool(p) for t, p in zip(truth, pred))
    fp = sum(not t and bool(p) for t, p in zip(truth, pred))
    fn = sum(bool(t) and not p for t, p in zip(truth, pred))
    tn = len(truth) - tp - fp - fn
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "accuracy": (tp + tn) / len(truth) if truth else 1.0,
    }
