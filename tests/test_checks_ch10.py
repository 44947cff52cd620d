"""Chapter 10's self-checks pass on correct answers, and fail with a specific hint on the stub and
plausible mistakes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from checkhelpers import fails_with, passes, stub
from companion.checks import check_10_1, check_10_2, check_10_3, check_10_4

# --- 10.1 masked loss ------------------------------------------------------------------------


def ce(logits, targets):
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none"
    )


def masked_mean_loss(logits, targets, mask):
    m = mask.reshape(-1).float()
    return (ce(logits, targets) * m).sum() / m.sum()


def test_check_10_1_passes_on_a_correct_answer(capsys):
    passes(check_10_1, masked_mean_loss, capsys)


@pytest.mark.parametrize(
    "wrong, fragment",
    [
        (stub, "not implemented"),
        (lambda lg, t, m: (ce(lg, t) * m.reshape(-1)).sum(), "sum over the answer tokens"),
        (lambda lg, t, m: ce(lg, t).mean(), "multiply each token's loss by the mask"),
        (lambda lg, t, m: (ce(lg, t) * m.reshape(-1)).mean(), "divide by all 3 positions"),
        (
            lambda lg, t, m: ((ce(lg, t).reshape(t.shape) * m).sum(1) / m.sum(1)).mean(),
            "average per row",
        ),
        (lambda lg, t, m: None, "one number"),
    ],
)
def test_check_10_1_rejects_mistakes(wrong, fragment):
    fails_with(check_10_1, wrong, fragment)


# --- 10.2 LoRA layer -------------------------------------------------------------------------


class Good(nn.Module):
    def __init__(self, base, rank, alpha, b_init=0.0, a_init=1.0, scale=None, freeze=True):
        super().__init__()
        self.base, self.scaling = base, alpha / rank if scale is None else scale(alpha, rank)
        for p in base.parameters():
            p.requires_grad_(not freeze)
        self.lora_A = nn.Parameter(a_init * torch.randn(rank, base.in_features))
        self.lora_B = nn.Parameter(b_init * torch.ones(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)

    def merge(self):
        out = nn.Linear(self.base.in_features, self.base.out_features)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
            out.bias.copy_(self.base.bias)
        return out


class NoBiasMerge(Good):
    def merge(self):
        out = nn.Linear(self.base.in_features, self.base.out_features)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
        return out


class Unscaled(Good):
    def forward(self, x):
        return self.base(x) + x @ self.lora_A.T @ self.lora_B.T


def test_check_10_2_passes_on_a_correct_answer(capsys):
    passes(check_10_2, Good, capsys)


@pytest.mark.parametrize(
    "wrong, fragment",
    [
        (stub, "not implemented"),
        (lambda b, r, a: Good(b, r, a, b_init=0.1), "start lora_B at zero"),
        (lambda b, r, a: Good(b, r, a, a_init=0.0), "nothing ever trains"),
        (lambda b, r, a: Good(b, r, a, freeze=False), "freeze the base"),
        (lambda b, r, a: Unscaled(b, r, a), "not scaled"),
        (lambda b, r, a: Good(b, r, a, scale=lambda al, rk: al), "you scale by alpha;"),
        (lambda b, r, a: NoBiasMerge(b, r, a), "merged nn.Linear gives different outputs"),
    ],
)
def test_check_10_2_rejects_mistakes(wrong, fragment):
    fails_with(check_10_2, wrong, fragment)


# --- 10.3 DPO loss ---------------------------------------------------------------------------


def dpo(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()


def test_check_10_3_passes_on_a_correct_answer(capsys):
    passes(check_10_3, dpo, capsys)


@pytest.mark.parametrize(
    "wrong, fragment",
    [
        (stub, "not implemented"),
        (
            lambda pc, pr, rc, rr, b: torch.sigmoid(b * ((pc - rc) - (pr - rr))).mean(),
            "minus its logarithm",
        ),
        (lambda pc, pr, rc, rr, b: -F.logsigmoid(b * (pc - pr)).mean(), "ignore the reference"),
        (lambda pc, pr, rc, rr, b: dpo(pr, pc, rr, rc, b), "sign is flipped"),
        (lambda pc, pr, rc, rr, b: dpo(pc, pr, rc, rr, 1.0), "beta is missing"),
        (
            lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pc - rc) - (pr - rr))).sum(),
            "sum over the batch",
        ),
        (
            lambda pc, pr, rc, rr, b: -torch.log(torch.sigmoid(b * ((pc - rc) - (pr - rr)))).mean(),
            "logsigmoid",
        ),
    ],
)
def test_check_10_3_rejects_mistakes(wrong, fragment):
    fails_with(check_10_3, wrong, fragment)


# --- 10.4 log-likelihood ranking -------------------------------------------------------------


def scores(model, context, endings, shift=True, normalise=False):
    out = []
    for e in endings:
        ids = torch.tensor([context + e])
        logp = model(ids[:, :-1] if shift else ids).log_softmax(-1)[0]
        start = len(context) - 1 if shift else len(context)
        s = logp[start : start + len(e)].gather(-1, ids[0, len(context) :, None]).sum().item()
        out.append(s / len(e) if normalise else s)
    return out


def best(model, context, endings):
    s = scores(model, context, endings)
    return max(range(len(s)), key=s.__getitem__)


def test_check_10_4_passes_on_a_correct_answer(capsys):
    passes(check_10_4, torch.no_grad()(best), capsys)


def worst(model, context, endings):
    s = scores(model, context, endings)
    return min(range(len(s)), key=s.__getitem__)


def unshifted(model, context, endings):
    s = scores(model, context, endings, shift=False)
    return max(range(len(s)), key=s.__getitem__)


def mean_not_sum(model, context, endings):
    s = scores(model, context, endings, normalise=True)
    return max(range(len(s)), key=s.__getitem__)


@pytest.mark.parametrize(
    "wrong, fragment",
    [
        (stub, "not implemented"),
        (torch.no_grad()(worst), "least likely"),
        (torch.no_grad()(unshifted), "position before it"),
        (torch.no_grad()(mean_not_sum), "best ending is"),
        (lambda m, c, e: "0", "as an int"),
    ],
)
def test_check_10_4_rejects_mistakes(wrong, fragment):
    fails_with(check_10_4, wrong, fragment)
