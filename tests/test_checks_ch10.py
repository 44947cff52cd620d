"""Chapter 10's self-checks pass on correct answers, and fail with a specific hint on the stub and
plausible mistakes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from checkhelpers import fails_with, passes, stub
from companion.checks import (
    check_10_1,
    check_10_2,
    check_10_3,
    check_10_4,
    check_10_5,
    check_10_6,
)
from companion.dpo import on_policy_pairs
from companion.rl import group_advantages, masked_mean

# --- 10.1 per-token log-probs and masked normalise ------------------------------------------


def logprobs(logits, targets):
    return logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]


def mnorm(x, mask, constant, dim=None):
    m = mask.to(x.dtype)
    return ((x * m).sum() if dim is None else (x * m).sum(dim)) / constant


def test_check_10_1_passes_on_a_correct_answer(capsys):
    passes(lambda f: check_10_1(f, mnorm), logprobs, capsys)


def _ahead(lg, t):  # an off-by-one: logits of the next position
    lp = lg.log_softmax(-1)
    first = lp[:, 1:].gather(-1, t[:, :-1, None])[..., 0]
    return torch.cat([first, lp[:, -1:].gather(-1, t[:, -1:, None])[..., 0]], 1)


@pytest.mark.parametrize(
    "wrong, fragment",
    [
        (stub, "not implemented"),
        (lambda lg, t: lg.softmax(-1).gather(-1, t[..., None])[..., 0], "probabilities"),
        (lambda lg, t: lg.gather(-1, t[..., None])[..., 0], "raw logits"),
        (_ahead, "off by one"),
        (lambda lg, t: logprobs(lg, t).sum(-1), "one value per target"),
    ],
)
def test_check_10_1_rejects_wrong_logprobs(wrong, fragment):
    fails_with(lambda f: check_10_1(f, mnorm), wrong, fragment)


@pytest.mark.parametrize(
    "wrong",
    [
        lambda lg, t: logprobs(lg, t).detach(),
        lambda lg, t: logprobs(lg, t).detach().numpy(),  # as_tensor accepts arrays
        torch.no_grad()(logprobs),
    ],
)
def test_check_10_1_rejects_logprobs_without_gradient(wrong):
    fails_with(lambda f: check_10_1(f, mnorm), wrong, "no gradient")


@pytest.mark.parametrize(
    "wrong",
    [
        lambda x, m, c, dim=None: mnorm(x, m, c, dim).detach(),
        lambda x, m, c, dim=None: mnorm(x, m, c).item() if dim is None else mnorm(x, m, c, dim),
    ],
)
def test_check_10_1_rejects_masked_normalize_without_gradient(wrong):
    fails_with(lambda f: check_10_1(logprobs, f), wrong, "no gradient")


@pytest.mark.parametrize(
    "wrong, fragment",
    [
        (stub, "not implemented"),
        (lambda x, m, c, dim=None: (x.sum() if dim is None else x.sum(dim)) / c, "padding counts"),
        (lambda x, m, c, dim=None: (x * m).sum() / m.sum() if dim is None
         else (x * m).sum(dim) / m.sum(dim), "masked mean"),
        (lambda x, m, c, dim=None: (x * m).sum() if dim is None else (x * m).sum(dim),
         "masked sum"),
        (lambda x, m, c, dim=None: x.mean() if dim is None else x.mean(dim), "padding"),
        (lambda x, m, c, dim=None: (x * m).sum() / c, "with dim=1"),
        (lambda x, m, c, dim=None: (x * m).sum(dim) / c if dim else (x * m).sum() / c,
         "dim=0"),
    ],
)
def test_check_10_1_rejects_wrong_masked_normalize(wrong, fragment):
    fails_with(lambda f: check_10_1(logprobs, f), wrong, fragment)


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


class ConstA(Good):
    def __init__(self, base, rank, alpha):
        super().__init__(base, rank, alpha)
        self.lora_A = nn.Parameter(torch.ones(rank, base.in_features))


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
        (lambda b, r, a: ConstA(b, r, a), "not independent"),
        (lambda b, r, a: Good(b, r, a, freeze=False), "freeze the base"),
        (lambda b, r, a: Unscaled(b, r, a), "not scaled"),
        (lambda b, r, a: Good(b, r, a, scale=lambda al, rk: al), "you scale by alpha"),
        (lambda b, r, a: Good(b, r, a, scale=lambda al, rk: rk / al), "upside down"),
        (lambda b, r, a: Good(b, r, a, scale=lambda al, rk: al / rk ** 0.5), "rsLoRA"),
        (lambda b, r, a: Good(b, r, a, scale=lambda al, rk: 2.0), "alpha = 2r"),
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
        (
            lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pc - rc) - (pr - rr)).mean()),
            "average the margins",
        ),
        (lambda pc, pr, rc, rr, b: dpo(pc, pr, rc, rr, b).item(), "no gradient"),
        (lambda pc, pr, rc, rr, b: dpo(pc, pr, rc, rr, b).detach(), "no gradient"),
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


# --- 10.5 group advantages and the GRPO clipped loss ------------------------------------------


def adv_good(r, g, normalize_by_std=True, eps=1e-6):
    return group_advantages(r, g, normalize_by_std, eps)


def grpo_good(adv, new, old, mask, clip):
    ratio = torch.exp(new - old.detach())
    a = adv[:, None]
    per_token = -torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    return masked_mean(per_token, mask, dim=1).mean()


def test_check_10_5_passes_on_a_correct_answer(capsys):
    passes(lambda f: check_10_5(f, grpo_good), adv_good, capsys)


def _adv_biased(r, g, n=True, eps=1e-6):
    x = r.view(-1, g)
    c = x - x.mean(1, keepdim=True)
    return (c / (x.std(1, unbiased=False, keepdim=True) + eps) if n else c).flatten()


def _adv_whole(r, g, n=True, eps=1e-6):
    x = r.view(-1, g)
    c = (x - x.mean(1, keepdim=True)).flatten()
    return c / (r.std() + eps) if n else c


def _adv_no_eps(r, g, n=True, eps=1e-6):
    x = r.view(-1, g)
    c = x - x.mean(1, keepdim=True)
    return (c / x.std(1, keepdim=True) if n else c).flatten()


@pytest.mark.parametrize(
    "wrong, fragment",
    [
        (stub, "not implemented"),
        (lambda r, g, n=True: r - r.mean(), "whole batch's mean"),
        (lambda r, g, n=True: r, "raw rewards"),
        (_adv_biased, "population std"),
        (_adv_whole, "whole batch's std"),
        (_adv_no_eps, "eps"),
        (lambda r, g, n=True: adv_good(r, g, not n), "without std normalisation"),
    ],
)
def test_check_10_5_rejects_wrong_advantages(wrong, fragment):
    fails_with(lambda f: check_10_5(f, grpo_good), wrong, fragment)


def _grpo(variant):
    def loss(adv, new, old, mask, clip):
        a = adv[:, None]
        old_ = old if variant == "no_detach" else old.detach()
        new_ = new.detach() if variant == "detach_both" else new
        ratio = (new_ - old_) if variant == "log_ratio" else torch.exp(new_ - old_)
        if variant == "inverted":
            ratio = 1 / ratio
        if variant == "ratio_detached":
            ratio = ratio.detach()
        clipped = ratio.clamp(1 - clip, 1 + clip) * a
        per = {
            "max": -torch.maximum(ratio * a, clipped),
            "always": -clipped,
            "none": -(ratio * a),
            "sign": torch.minimum(ratio * a, clipped),
            "min_of_ratios": -torch.minimum(ratio, ratio.clamp(1 - clip, 1 + clip)) * a,
            "log_ratio": -torch.minimum(ratio * a, clipped),
            "no_detach": -torch.minimum(ratio * a, clipped),
            "padding": -torch.minimum(ratio * a, clipped),
            "global_mean": -torch.minimum(ratio * a, clipped),
            "sum_over_rows": -torch.minimum(ratio * a, clipped),
        }.get(variant, -torch.minimum(ratio * a, clipped))
        if variant == "padding":
            return per.mean()
        if variant == "item":
            return masked_mean(per, mask, dim=1).mean().item()
        if variant == "global_mean":
            return masked_mean(per, mask)
        if variant == "sum_over_rows":
            return (per * mask).sum() / len(adv)
        return masked_mean(per, mask, dim=1).mean()
    return loss


@pytest.mark.parametrize(
    "variant, fragment",
    [
        ("max", "max of the two"),
        ("always", "always clip"),
        ("none", "no clip"),
        ("sign", "sign is flipped"),
        ("log_ratio", "exponentiate"),
        ("padding", "padding token counts"),
        ("no_detach", "detach"),
        ("global_mean", "all response tokens of the batch at once"),
        ("sum_over_rows", "divide by the rows"),
        ("inverted", "upside down"),
        ("min_of_ratios", "min of the two ratios"),
        ("detach_both", "no gradient"),
        ("ratio_detached", "no gradient"),
        ("item", "no gradient"),
    ],
)
def test_check_10_5_rejects_wrong_clipped_losses(variant, fragment):
    fails_with(lambda f: check_10_5(adv_good, f), _grpo(variant), fragment)


def test_check_10_5_rejects_the_stub_loss():
    fails_with(lambda f: check_10_5(adv_good, f), stub, "not implemented")


# --- 10.6 on-policy DPO pairs ----------------------------------------------------------------


def test_check_10_6_passes_on_the_companion(capsys):
    passes(check_10_6, on_policy_pairs, capsys)


def _pairs(variant):
    def make(samples, rewards, g):
        out = []
        for start in range(0, len(samples), g):
            grp = samples[start:start + g]
            rw = rewards[start:start + g]
            right = [r for (_, r), x in zip(grp, rw) if x > 0]
            wrong = [r for (_, r), x in zip(grp, rw) if x <= 0]
            if variant != "duplicates":
                wrong = [list(w) for w in dict.fromkeys(tuple(w) for w in wrong)]
            prompt = grp[0][0]
            if variant == "swapped":
                out += [(prompt, w, c) for c, w in zip(right, wrong)]
            elif variant == "all_wrong":
                out += [(prompt, right[0] if right else grp[0][1], w) for w in wrong] + [
                    (prompt, c, c) for c in right[:1] if not wrong]
            elif variant == "per_wrong":
                out += [(prompt, right[0], w) for w in wrong] if right else []
            elif variant == "cross":
                other = samples[(start + g) % len(samples)][0]
                out += [(other, c, w) for c, w in zip(right, wrong)]
            else:
                out += [(prompt, c, w) for c, w in zip(right, wrong)]
        return out
    return make


@pytest.mark.parametrize(
    "variant, fragment",
    [
        ("swapped", "swapped"),
        ("all_wrong", "all right"),
        ("duplicates", "sampled twice"),
        ("per_wrong", "smaller side"),
        ("cross", "never mix prompts"),
    ],
)
def test_check_10_6_rejects_mistakes(variant, fragment):
    fails_with(check_10_6, _pairs(variant), fragment)


def test_check_10_6_rejects_the_stub():
    fails_with(check_10_6, stub, "not implemented")
