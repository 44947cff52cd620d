"""Self-checks for chapter 10's exercises: per-token log-probs and masked normalise, LoRA with
merge, the DPO loss, ranking, GRPO's advantages and clipped loss, on-policy DPO pairs."""

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

__all__ = ["check_10_1", "check_10_2", "check_10_3", "check_10_4", "check_10_5",
           "check_10_6"]


def check_10_1(token_logprobs: Callable[[torch.Tensor, torch.Tensor], Any],
               masked_normalize: Callable[..., Any]) -> None:
    """token_logprobs(logits (B, T, V), targets (B, T)) -> (B, T) log p(target);
    masked_normalize(x, mask, constant, dim=None) -> masked sum over dim / constant."""
    ex = "10.1"
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    targets = torch.randint(0, 7, (2, 5), generator=g)
    got = as_tensor(ex, call(ex, token_logprobs, logits, targets), "the log-probs")
    if tuple(got.shape) != (2, 5):
        fail(ex, f"token_logprobs should return one value per target, shape (2, 5); got "
                 f"{tuple(got.shape)}")
    logp = logits.log_softmax(-1)
    want = logp.gather(-1, targets[..., None])[..., 0]
    ahead = torch.cat([logp[:, 1:].gather(-1, targets[:, :-1, None])[..., 0],
                       want[:, -1:]], dim=1)
    behind = torch.cat([want[:, :1], logp[:, :-1].gather(-1, targets[:, 1:, None])[..., 0]],
                       dim=1)
    wrongs = [
        (logits.softmax(-1).gather(-1, targets[..., None])[..., 0],
         "these are probabilities; return their logarithms (log_softmax, then pick)"),
        (logits.gather(-1, targets[..., None])[..., 0],
         "these are raw logits: normalise them with log_softmax over the vocabulary first"),
        (ahead, "off by one: logits[:, t] already predict targets[:, t]; do not shift again"),
        (behind, "off by one: logits[:, t] predict targets[:, t], not targets[:, t + 1]"),
    ]
    for value, hint in wrongs:
        if torch.allclose(got.float(), value, atol=1e-5):
            fail(ex, hint)
    if not torch.allclose(got.float(), want, atol=1e-5):
        fail(ex, f"log p(targets) differ from log_softmax(logits) picked at the targets by up "
                 f"to {(got.float() - want).abs().max().item():.3g}")
    x = torch.tensor([[1.0, 2.0, 9.0], [4.0, 8.0, 8.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    total = as_scalar(ex, call(ex, masked_normalize, x, mask, 4.0), "masked_normalize(x, m, 4)")
    for value, hint in (
        (32 / 4, "padding counts: multiply by the mask before summing"),
        (7 / 3, "you divide by the mask's count (a masked mean); divide by the given constant"),
        (7.0, "you return the masked sum; divide it by the given constant"),
        (32 / 6, "you average over every position, padding included"),
    ):
        if math.isclose(total, value, rel_tol=1e-5):
            fail(ex, hint)
    if not math.isclose(total, 7 / 4, rel_tol=1e-5):
        fail(ex, f"masked sum 1 + 2 + 4 = 7 over the constant 4 is 1.75; got {total}")
    rows = as_tensor(ex, call(ex, masked_normalize, x, mask, 2.0, 1), "masked_normalize(dim=1)")
    if tuple(rows.shape) != (2,) or not torch.allclose(rows.float(), torch.tensor([1.5, 2.0])):
        fail(ex, f"with dim=1 each row's masked sum is divided by the constant: expected "
                 f"[1.5, 2.0], got {rows.tolist()}")
    cols = as_tensor(ex, call(ex, masked_normalize, x, mask, 2.0, 0), "masked_normalize(dim=0)")
    if tuple(cols.shape) != (3,) or not torch.allclose(cols.float(), torch.tensor([2.5, 1.0, 0.0])):
        fail(ex, f"with dim=0 each column's masked sum is divided by the constant: expected "
                 f"[2.5, 1.0, 0.0], got {cols.tolist()} (is dim=0 mistaken for no dim?)")
    # a loss is built from these: both must carry gradient (no .detach(), .item() or NumPy)
    leaf = logits.clone().requires_grad_()
    out = call(ex, token_logprobs, leaf, targets)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        fail(ex, "token_logprobs returns values with no gradient to the logits (a .detach(), "
                 ".item(), NumPy or torch.no_grad?): no loss built on them could train")
    out.float().sum().backward()
    want_grad = F.one_hot(targets, 7).float() - logits.softmax(-1)
    if leaf.grad is None or not torch.allclose(leaf.grad, want_grad, atol=1e-5):
        fail(ex, "the gradient of token_logprobs to the logits is not one-hot(target) minus "
                 "softmax(logits): is part of the computation detached?")
    x_leaf = x.clone().requires_grad_()
    out = call(ex, masked_normalize, x_leaf, mask, 4.0)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        fail(ex, "masked_normalize returns a number with no gradient to x (a .item(), float() "
                 "or .detach()?): a loss must stay a tensor that backward() can run through")
    out.sum().backward()
    if x_leaf.grad is None or not torch.allclose(x_leaf.grad, mask / 4.0):
        fail(ex, "the gradient of masked_normalize to x should be mask / constant")
    passed(ex, "each target's own log-probability, no shift; padding never counts; "
               "the constant, not the count, divides; gradients flow.")


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
    if torch.linalg.matrix_rank(layer.lora_A.detach().float()) < 2:
        fail(ex, "lora_A's rows are not independent (a constant start?): B's columns then get "
                 "the same gradient forever and the update never exceeds rank 1; start A random")
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
        (1.0 / 2, "you scale by 1 / rank (or rank / alpha, upside down); LoRA scales by "
                  "alpha / rank"),
        (4.0 / 2 ** 0.5, "you scale by alpha / sqrt(rank), rsLoRA's rule; plain LoRA uses "
                         "alpha / rank"),
    ):
        if torch.allclose(out, base(x) + scale * update, atol=1e-4):
            fail(ex, hint)
    if not torch.allclose(out, base(x) + 2.0 * update, atol=1e-4):
        fail(ex, "with A = B = ones, the output should be base(x) + (alpha / rank) * B A x")
    layer = call(ex, make_lora, copy.deepcopy(base), 4, 6.0)  # alpha 6 is not 2r: 1.5 per unit
    with torch.no_grad():
        layer.lora_A.copy_(torch.ones(4, 6))
        layer.lora_B.copy_(torch.ones(5, 4))
    out4 = as_tensor(ex, call(ex, layer, x), "the output")
    update4 = x.sum(1, keepdim=True).expand(4, 5) * 4  # B A x = 4 * sum(x) at rank 4
    for scale, hint in (
        (4 / 6, "you scale by rank / alpha: the ratio is upside down"),
        (6.0, "you scale by alpha alone; LoRA scales by alpha / rank"),
        (6 / 4 ** 0.5, "you scale by alpha / sqrt(rank), rsLoRA's rule; plain LoRA uses "
                       "alpha / rank"),
        (2.0, "your scale does not depend on alpha and rank as given (2: alpha = 2r was "
              "assumed?)"),
    ):
        if torch.allclose(out4, base(x) + scale * update4, atol=1e-4):
            fail(ex, hint + " (rank 4, alpha 6)")
    if not torch.allclose(out4, base(x) + 1.5 * update4, atol=1e-4):
        fail(ex, "at rank 4 and alpha 6 the update should be scaled by alpha / rank = 1.5")
    layer = call(ex, make_lora, copy.deepcopy(base), 2, 4.0)
    with torch.no_grad():
        layer.lora_A.copy_(torch.ones(2, 6))
        layer.lora_B.copy_(torch.ones(5, 2))
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
        (
            -F.logsigmoid(0.5 * ((pc - rc) - (pr - rr)).mean()),
            "you average the margins, then take the loss; take each pair's loss, then average",
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
    # the loss must train the policy: a tensor whose gradient reaches both policy log-probs
    pol = [a[0].clone().requires_grad_(), a[1].clone().requires_grad_()]
    loss = call(ex, my_dpo_loss, pol[0], pol[1], a[2], a[3], 0.5)
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        fail(ex, "the loss carries no gradient to the policy's log-probs (a .item(), float() or "
                 ".detach()?): return the tensor, so that backward() can train the policy")
    loss.backward()
    ref = [a[0].clone().requires_grad_(), a[1].clone().requires_grad_()]
    dpo_loss(ref[0], ref[1], a[2], a[3], beta=0.5)[0].backward()
    for mine, theirs, which in zip(pol, ref, ("chosen", "rejected")):
        if mine.grad is None or not torch.allclose(mine.grad, theirs.grad, atol=1e-6):
            fail(ex, f"the gradient to the policy's {which} log-probs differs from "
                     f"companion.dpo.dpo_loss's: is part of the loss detached?")
    passed(
        ex, "-log sigmoid(beta * Delta), averaged, stable for large margins, with its gradient; "
            "matches companion.dpo."
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


def check_10_5(group_advantages: Callable[..., Any], grpo_loss: Callable[..., Any]) -> None:
    """group_advantages(rewards (N*G,), group_size, normalize_by_std) -> (N*G,);
    grpo_loss(advantages (B,), log_probs, old_log_probs, mask (B, T), clip) -> scalar."""
    ex = "10.5"
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    got = as_tensor(ex, call(ex, group_advantages, r, 4, False), "the advantages").float()
    if tuple(got.shape) != (8,):
        fail(ex, f"one advantage per answer: shape (8,), got {tuple(got.shape)}")
    if torch.allclose(got, r - r.mean()):
        fail(ex, "you subtract the whole batch's mean; each answer is compared with its own "
                 "group (the answers to the same prompt)")
    if torch.allclose(got, r):
        fail(ex, "the advantages are the raw rewards: subtract each group's mean")
    want = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5])
    if not torch.allclose(got, want, atol=1e-6):
        fail(ex, f"without std normalisation, rewards {r.tolist()} in groups of 4 give "
                 f"{want.tolist()}; got {[round(v, 4) for v in got.tolist()]}")
    got = as_tensor(ex, call(ex, group_advantages, r, 4, True), "the advantages").float()
    groups = r.view(2, 4)
    centred = (groups - groups.mean(1, keepdim=True))
    unbiased = (centred / (groups.std(1, keepdim=True) + 1e-6)).flatten()
    biased = (centred / (groups.std(1, unbiased=False, keepdim=True) + 1e-6)).flatten()
    whole = (centred.flatten() / (r.std() + 1e-6))
    if torch.allclose(got, biased, atol=1e-4):
        fail(ex, "you divide by the population std (unbiased=False); GRPO, like torch.std, uses "
                 "the sample std")
    if torch.allclose(got, whole, atol=1e-4):
        fail(ex, "you divide by the whole batch's std; each group uses its own")
    if not torch.allclose(got, unbiased, atol=1e-4):
        fail(ex, f"with std normalisation expected {[round(v, 4) for v in unbiased.tolist()]}, "
                 f"got {[round(v, 4) for v in got.tolist()]}")
    same = as_tensor(ex, call(ex, group_advantages, torch.ones(4), 4, True), "the advantages")
    if not torch.isfinite(same.float()).all() or same.abs().max() > 1e-6:
        fail(ex, "a group whose answers all score the same must get advantage 0, not nan: "
                 "add eps to the std")
    # the clipped loss: one row per case, token 0 a real token, token 1 padding with a wild ratio
    # advantages of unequal sizes, so that no two wrong answers give the same number
    adv = torch.tensor([1.0, 0.5, -1.0, -2.0])
    # token 0 of every row is real; row 1 has a second real token at ratio 1; the last column is
    # padding with a wild ratio
    new = torch.tensor([[0.0, 0.0, 5.0], [-1.0, 0.0, 5.0], [-1.0, 0.0, 5.0], [0.0, 0.0, 5.0]])
    old = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0]])
    e = math.e
    # per row, the mean over its real tokens: the clip binds in rows 0 and 2
    per_case = torch.tensor([-1.2, (-0.5 / e - 0.5) / 2, 0.8, 2 * e])
    leaf = new.clone().requires_grad_()
    old_leaf = old.clone().requires_grad_()
    got = as_scalar(ex, call(ex, grpo_loss, adv, leaf, old_leaf, mask, 0.2), "the loss")
    m = mask.float()
    a = adv[:, None]
    ratio = torch.exp(new - old)

    def per_row(per_token: torch.Tensor) -> torch.Tensor:  # each row over its own tokens
        return ((per_token * m).sum(1) / m.sum(1)).mean()

    right_tokens = -torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a)
    for value, hint in (
        ((right_tokens * m).sum() / m.sum(), "you average over all response tokens of the batch "
                                             "at once; average each row over its own tokens, "
                                             "then over the rows"),
        ((right_tokens * m).sum() / len(adv), "you sum the batch's tokens and divide by the rows; "
                                              "average each row over its own tokens first"),
    ):
        if math.isclose(got, value.item(), rel_tol=1e-4):
            fail(ex, hint)
    log_ratio = new - old
    wrongs = [
        (per_row(-torch.maximum(ratio * a, ratio.clamp(0.8, 1.2) * a)),
         "you take the max of the two terms; GRPO takes the min (the pessimistic bound)"),
        (per_row(-(ratio.clamp(0.8, 1.2) * a)),
         "you always clip; the min keeps the unclipped ratio where it is the smaller term"),
        (per_row(-(ratio * a)), "there is no clip: clamp the ratio to [1 - clip, 1 + clip]"),
        (per_case.mean().neg(), "the sign is flipped: the loss is minus the objective"),
        (per_row(-torch.minimum(log_ratio * a, log_ratio.clamp(0.8, 1.2) * a)),
         "the ratio is pi / pi_old: exponentiate the difference of the log-probs"),
        (per_row(-torch.minimum(a / ratio, (1 / ratio).clamp(0.8, 1.2) * a)),
         "the ratio is upside down: pi / pi_old is exp(log_probs - old_log_probs)"),
        (per_row(-torch.minimum(ratio, ratio.clamp(0.8, 1.2)) * a),
         "you take the min of the two ratios, then multiply by A; take the min of the two "
         "products, rho * A and clip(rho) * A, which differ when A < 0"),
    ]
    for value, hint in wrongs:
        if math.isclose(got, value.item(), rel_tol=1e-4, abs_tol=1e-6):
            fail(ex, hint)
    if got > 10:
        fail(ex, "a padding token counts: average over the tokens whose mask is 1")
    if not math.isclose(got, per_case.mean().item(), rel_tol=1e-4):
        fail(ex, f"on the four hand cases (clip on both sides of 1, and two unclipped), the mean "
                 f"loss is {per_case.mean().item():.4f}; got {got:.4f}")
    loss = call(ex, grpo_loss, adv, leaf, old_leaf, mask, 0.2)
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        fail(ex, "the loss carries no gradient to log_probs (a .item(), float(), or log_probs "
                 "detached along with the old ones?): only old_log_probs are constants")
    loss.backward()
    if old_leaf.grad is not None and old_leaf.grad.abs().sum() > 0:
        fail(ex, "gradient flows into the old log-probs: they are the sampling policy's "
                 "constants (detach them)")
    if leaf.grad is None or leaf.grad[0, 0] != 0 or leaf.grad[2, 0] != 0:
        fail(ex, "a clipped token still gets gradient: clipping must cut it")
    # d loss / d log pi = -ratio * A / (row's tokens * rows) where the clip does not bind
    want_grad = torch.tensor([[0.0, 0.0, 0.0], [-0.5 / (e * 8), -0.5 / 8, 0.0],
                              [0.0, 0.0, 0.0], [2 * e / 4, 0.0, 0.0]])
    if not torch.allclose(leaf.grad.float(), want_grad, atol=1e-5):
        fail(ex, f"the gradient to log_probs should be -ratio * A / (tokens in the row * rows) "
                 f"on unclipped real tokens and 0 elsewhere: expected {want_grad.tolist()}, got "
                 f"{[[round(v, 4) for v in row] for row in leaf.grad.tolist()]} (is the ratio "
                 f"detached?)")
    passed(ex, "advantages within each group, std on or off; the clipped ratio on both sides of "
               "1, the min, and padding ignored.")


def check_10_6(make_pairs: Callable[..., Any]) -> None:
    """make_pairs(samples [(prompt, response)], rewards (N*G,), group_size) ->
    [(prompt, chosen, rejected)]: per prompt, right answers against distinct wrong ones."""
    ex = "10.6"
    P, Q, R, S = [1, 2], [3, 4], [5, 6], [6, 5]
    samples = [
        (P, [7, 0]), (P, [8, 0]), (P, [8, 0]), (P, [9, 0]),  # one right, two distinct wrong
        (Q, [7, 0]), (Q, [9, 0]), (Q, [7, 0]), (Q, [9, 0]),  # two right, one wrong twice
        (R, [7, 0]), (R, [7, 0]), (R, [7, 0]), (R, [7, 0]),  # all right: nothing to prefer
        (S, [7, 0]), (S, [7, 0]), (S, [8, 0]), (S, [9, 0]),  # two right, two distinct wrong
    ]
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0])
    pairs = call(ex, make_pairs, [(list(p), list(r)) for p, r in samples], rewards.clone(), 4)
    try:
        pairs = [(list(p), list(c), list(r)) for p, c, r in pairs]
    except (TypeError, ValueError):
        fail(ex, "return a list of (prompt, chosen, rejected) triples of token-id lists")
    right = {(1, 2): [[7, 0]], (3, 4): [[7, 0]], (5, 6): [[7, 0]], (6, 5): [[7, 0]]}
    wrong = {(1, 2): [[8, 0], [9, 0]], (3, 4): [[9, 0]], (5, 6): [], (6, 5): [[8, 0], [9, 0]]}
    for prompt, chosen, rejected in pairs:
        key = tuple(prompt)
        if key not in right:
            fail(ex, f"a pair's prompt {prompt} is not one of the prompts")
        if chosen in wrong[key] and rejected in right[key]:
            fail(ex, "chosen and rejected are swapped: the right answer is the chosen one")
        if rejected in right[key]:
            fail(ex, f"for prompt {prompt} the rejected answer is a right one: pair right against "
                     "wrong only; a prompt whose answers are all right gives no pair")
        if chosen not in right[key]:
            fail(ex, f"for prompt {prompt} the chosen {chosen} is not one of its right answers "
                     "(pairs never mix prompts)")
        if rejected not in wrong[key]:
            fail(ex, f"for prompt {prompt} the rejected {rejected} is not one of its wrong "
                     "answers (pairs never mix prompts)")
    count = {k: sum(tuple(p) == k for p, _, _ in pairs) for k in right}
    if count[(5, 6)]:
        fail(ex, "a prompt whose answers are all right gives no pair: there is no wrong answer")
    if count[(3, 4)] == 2:
        fail(ex, "the same wrong answer sampled twice makes two pairs: keep distinct ones")
    if count[(1, 2)] == 2:
        fail(ex, "prompt [1, 2] has one right answer: it makes one pair, not one per wrong "
                 "answer (as many pairs as the smaller side)")
    want = {(1, 2): 1, (3, 4): 1, (5, 6): 0, (6, 5): 2}
    if count != want:
        fail(ex, f"expected pairs per prompt {[list(k) + [v] for k, v in want.items()]} "
                 f"(prompt, count), got {[list(k) + [v] for k, v in count.items()]}")
    rejected_s = [tuple(r) for p, _, r in pairs if tuple(p) == (6, 5)]
    if len(set(rejected_s)) != 2:
        fail(ex, "each right answer of a prompt is paired with a different wrong one")
    passed(ex, "right against wrong within each prompt, distinct wrong answers, as many pairs as "
               "the smaller side, none from an all-right group.")
