"""Self-checks for chapter 10's exercises: masked SFT loss, LoRA layer with merge, DPO, ranking."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..dpo import dpo_loss, sequence_logps
from ..model import GPT, GPTConfig
from ._core import as_scalar, as_tensor, call, fail, passed

__all__ = ["check_10_1", "check_10_2", "check_10_3", "check_10_4"]


def check_10_1(masked_mean_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]) -> None:
    """masked_mean_loss(logits (B, T, V), targets (B, T), mask (B, T)) -> mean CE where mask=1."""
    ex = "10.1"
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 1] = 50.0  # a confident wrong guess at a masked-out position
    got = as_scalar(
        ex,
        call(ex, masked_mean_loss, logits, torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]])),
        "the loss",
    )
    if math.isclose(got, 2 * math.log(4), rel_tol=1e-4):
        fail(ex, "you return the sum over the answer tokens; divide by how many the mask selects.")
    if got > 10:
        fail(
            ex,
            "the loss counts position 0, whose mask is 0: multiply each token's loss by the mask.",
        )
    if math.isclose(got, 2 * math.log(4) / 3, rel_tol=1e-4):
        fail(
            ex,
            "you divide by all 3 positions; divide by the number of answer tokens "
            "(the mask's sum), 2.",
        )
    if not math.isclose(got, math.log(4), rel_tol=1e-4):
        fail(
            ex,
            f"uniform logits over 4 tokens cost log 4 = {math.log(4):.4f} per answer token; "
            f"got {got:.4f}",
        )
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g)
    targets = torch.randint(0, 7, (3, 5), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    ce = F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), reduction="none").reshape(3, 5)
    want = (ce * mask).sum() / mask.sum()
    per_row = ((ce * mask).sum(1) / mask.sum(1)).mean()
    got = as_scalar(ex, call(ex, masked_mean_loss, logits, targets, mask), "the loss")
    if math.isclose(got, per_row.item(), rel_tol=1e-4):
        fail(
            ex,
            "you average per row, then over rows: a row with one answer token weighs as much as "
            "one with "
            "four. Sum over all answer tokens and divide once by their count.",
        )
    if not math.isclose(got, want.item(), rel_tol=1e-4):
        fail(ex, f"on a random batch of 3 rows, expected {want.item():.4f}, got {got:.4f}")
    passed(ex, "only answer tokens count, each with the same weight; a uniform guess costs log V.")


def check_10_2(make_lora: Callable[[nn.Linear, int, float], nn.Module]) -> None:
    """make_lora(base, rank, alpha) -> module with lora_A (r, in), lora_B (out, r), merge()."""
    ex = "10.2"
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    x = torch.randn(4, 6)
    layer = call(ex, make_lora, copy.deepcopy(base), 2, 4.0)
    for name, shape in (("lora_A", (2, 6)), ("lora_B", (5, 2))):
        value = getattr(layer, name, None)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            fail(
                ex,
                f"{name} should be a parameter of shape {shape} (rank 2, in 6, out 5), got "
                f"{None if value is None else tuple(getattr(value, 'shape', ()))}",
            )
    out = as_tensor(ex, call(ex, layer, x), "the output")
    if tuple(out.shape) != (4, 5):
        fail(ex, f"the output should have shape (4, 5), got {tuple(out.shape)}")
    if not torch.allclose(out, base(x), atol=1e-6):
        fail(
            ex,
            "a fresh layer must equal its base layer exactly: start lora_B at zero (and A random).",
        )
    if torch.count_nonzero(layer.lora_A) == 0:
        fail(
            ex,
            "lora_A is all zeros: with A and B both zero, B's gradient is zero too and "
            "nothing ever trains.",
        )
    trainable = {id(p) for p in layer.parameters() if p.requires_grad}
    if id(layer.lora_A) not in trainable or id(layer.lora_B) not in trainable:
        fail(ex, "lora_A and lora_B must be trainable parameters (nn.Parameter)")
    if trainable - {id(layer.lora_A), id(layer.lora_B)}:
        fail(
            ex,
            "only lora_A and lora_B may train: freeze the base layer's weight and bias "
            "(requires_grad_(False))",
        )
    with torch.no_grad():
        layer.lora_A.copy_(torch.ones(2, 6))
        layer.lora_B.copy_(torch.ones(5, 2))
    out = as_tensor(ex, call(ex, layer, x), "the output")
    update = x.sum(1, keepdim=True).expand(4, 5) * 2  # B A x = 2 * sum(x) in every output
    for scale, hint in (
        (1.0, "the update is not scaled: multiply B A x by alpha / rank"),
        (4.0, "you scale by alpha; LoRA scales by alpha / rank"),
        (1.0 / 2, "you scale by 1 / rank; LoRA scales by alpha / rank"),
    ):
        if torch.allclose(out, base(x) + scale * update, atol=1e-4):
            fail(ex, hint)
    if not torch.allclose(out, base(x) + 2.0 * update, atol=1e-4):
        fail(ex, "with A = B = ones, the output should be base(x) + (alpha / rank) * B A x")
    merged = call(ex, layer.merge) if hasattr(layer, "merge") else fail(ex, "add a merge() method")
    if not isinstance(merged, nn.Linear):
        fail(ex, f"merge() should return an nn.Linear, got {type(merged).__name__}")
    if not torch.allclose(merged(x), out, atol=1e-4):
        fail(
            ex,
            "the merged nn.Linear gives different outputs: its weight is "
            "W + (alpha / rank) * B @ A, "
            "and the bias is the base's",
        )
    passed(
        ex, "starts as the base layer, trains only A and B, scales by alpha / rank, merges exactly."
    )


def check_10_3(my_dpo_loss: Callable[..., Any]) -> None:
    """my_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta) -> mean loss."""
    ex = "10.3"
    z = torch.zeros(3)
    got = as_scalar(ex, call(ex, my_dpo_loss, z, z, z, z, 0.1), "the loss")
    if math.isclose(got, 0.5, rel_tol=1e-4):
        fail(ex, "you return sigmoid(...), a probability; the loss is minus its logarithm.")
    if math.isclose(got, 3 * math.log(2), rel_tol=1e-4):
        fail(ex, "you sum over the batch; return the mean")
    if not math.isclose(got, math.log(2), rel_tol=1e-4):
        fail(
            ex,
            f"with no preference at all (every log-prob 0) the loss is log 2 = "
            f"{math.log(2):.4f}; got {got:.4f}",
        )
    g = torch.Generator().manual_seed(0)
    a = [-5 * torch.rand(6, generator=g) for _ in range(4)]
    want = dpo_loss(*a, beta=0.5)[0].item()
    got = as_scalar(ex, call(ex, my_dpo_loss, *a, 0.5), "the loss")
    pc, pr, rc, rr = a
    wrongs = [
        (
            -F.logsigmoid(0.5 * (pc - pr)).mean(),
            "you ignore the reference: subtract its log-probs from the policy's",
        ),
        (
            -F.logsigmoid(0.5 * ((pr - rr) - (pc - rc))).mean(),
            "the sign is flipped: chosen minus rejected",
        ),
        (
            -F.logsigmoid((pc - rc) - (pr - rr)).mean(),
            "beta is missing: multiply the difference by beta",
        ),
        (
            -F.logsigmoid(0.5 * ((pc - rc) - (pr - rr))).sum(),
            "you sum over the batch; return the mean",
        ),
    ]
    for value, hint in wrongs:
        if math.isclose(got, value.item(), rel_tol=1e-4) and not math.isclose(
            want, value.item(), rel_tol=1e-4
        ):
            fail(ex, hint)
    if not math.isclose(got, want, rel_tol=1e-4):
        fail(ex, f"expected {want:.5f} (companion.dpo.dpo_loss), got {got:.5f}")
    big = torch.tensor([200.0])
    huge = as_scalar(
        ex, call(ex, my_dpo_loss, -big, torch.zeros(1), torch.zeros(1), -big, 1.0), "the loss"
    )
    if not math.isfinite(huge) or not math.isclose(huge, 400.0, rel_tol=1e-3):
        fail(
            ex,
            f"for a margin of -400 the loss is 400, got {huge}: log(sigmoid(z)) underflows; "
            "use F.logsigmoid, the stable form",
        )
    passed(
        ex, "-log sigmoid(beta * Delta), averaged, stable for large margins; matches companion.dpo."
    )


def check_10_4(rank_endings: Callable[[nn.Module, list[int], list[list[int]]], Any]) -> None:
    """rank_endings(model, context_ids, endings_ids) -> index of the most likely ending (summed)."""
    ex = "10.4"
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=7, context_length=16, d_model=16, n_layers=1, n_heads=2)
    ).eval()
    g = torch.Generator().manual_seed(1)
    shapes = [(4, [3, 3, 3]), (3, [2, 5, 1, 4]), (5, [4, 1])]
    wrong, worst = [], 0
    for trial in range(12):
        n_ctx, lengths = shapes[trial % len(shapes)]
        context = torch.randint(0, 7, (n_ctx,), generator=g).tolist()
        endings = [torch.randint(0, 7, (n,), generator=g).tolist() for n in lengths]
        scores = []
        with torch.no_grad():
            for e in endings:
                ids = torch.tensor([context + e])
                mask = torch.tensor([[0] * (n_ctx - 1) + [1] * len(e)])
                scores.append(sequence_logps(model(ids[:, :-1]), ids[:, 1:], mask).item())
        want = max(range(len(scores)), key=scores.__getitem__)
        got = call(ex, rank_endings, model, list(context), [list(e) for e in endings])
        if isinstance(got, torch.Tensor):
            got = int(got.item()) if got.numel() == 1 else None
        if not isinstance(got, int) or isinstance(got, bool):
            fail(ex, f"return the index of the best ending as an int, got {type(got).__name__}")
        worst += got == min(range(len(scores)), key=scores.__getitem__)
        if got != want:
            wrong.append((context, endings, want, got))
    if worst == 12:
        fail(
            ex,
            "you picked the least likely ending every time: the best has the highest "
            "log-probability",
        )
    if wrong:
        context, endings, want, got = wrong[0]
        fail(
            ex,
            f"{len(wrong)} of 12 rankings differ. On context {context} with endings {endings} "
            "the best "
            f"ending is {want}, you chose {got}. Score each ending token by the logits at the "
            "position "
            "before it, and sum over the ending.",
        )
    passed(
        ex,
        "ranks endings of different lengths by summed log-probability, reading each token's "
        "prediction one position earlier.",
    )
