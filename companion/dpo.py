"""Direct preference optimisation (Rafailov et al. 2023): pairs, no reward model. Chapter 10.

The loss of eq. 7 is -log sigmoid(beta * Delta), where Delta is how much more the policy than the
reference prefers the chosen answer to the rejected one, in log-probability.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

__all__ = [
    "sequence_logps",
    "dpo_loss",
    "dpo_loss_as_classification",
    "answer_kl",
    "on_policy_pairs",
    "train_dpo",
]


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the masked targets per row: logits (B, T, V), mask (B, T) -> (B,).

    Example: sequence_logps(torch.zeros(1, 2, 4), torch.tensor([[0, 1]]), torch.tensor([[1, 1]]))
    -> [-2 log 4]
    """
    if logits.shape[:-1] != targets.shape or targets.shape != mask.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} need targets and mask of shape "
            f"{tuple(logits.shape[:-1])}, "
            f"got {tuple(targets.shape)} and {tuple(mask.shape)}"
        )
    logp = (
        logits.float().log_softmax(dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    )  # (B, T)
    return (logp * mask.to(logp.dtype)).sum(dim=-1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO's loss (eq. 7), averaged over the batch, and both answers' implicit rewards (detached).

    reward = beta * (log pi(y|x) - log pi_ref(y|x)); loss = -log sigmoid(r_chosen - r_rejected).
    Example: dpo_loss(*[torch.zeros(2)] * 4)[0] -> log 2 (no preference yet: a coin flip)
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    shapes = {
        tuple(t.shape)
        for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    }
    if len(shapes) != 1:
        raise ValueError(f"the four log-probability tensors need one shape, got {sorted(shapes)}")
    chosen = policy_chosen_logps - ref_chosen_logps  # log pi/pi_ref of the chosen answer
    rejected = policy_rejected_logps - ref_rejected_logps
    # logsigmoid is the stable form of log(sigmoid(z)): no overflow for large |z|.
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, (beta * chosen).detach(), (beta * rejected).detach()


def dpo_loss_as_classification(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """A second formulation: a two-way softmax over the implicit rewards, the chosen one the label.

    The Bradley-Terry model is that softmax; its cross-entropy must equal dpo_loss's, gradients too.
    """
    rewards = (
        torch.stack(
            [policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps],
            dim=-1,
        )
        * beta
    )  # (B, 2)
    return F.cross_entropy(rewards, torch.zeros(len(rewards), dtype=torch.long))


def answer_kl(
    policy_logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean KL(policy || reference) of next-token distributions where mask is 1, exact over V."""
    logp = policy_logits.float().log_softmax(-1)
    logq = ref_logits.float().log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)  # (B, T)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum()


def on_policy_pairs(
    rollout: list[tuple[list[int], list[int]]],
    rewards: torch.Tensor,
    group_size: int,
    seed: int = 0,
) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) from the model's own samples: a right answer against a wrong
    one to the same prompt, as many distinct pairs per prompt as the smaller side allows.

    Rows come in groups of group_size samples of one prompt (companion.rl.sample_groups). A prompt
    whose samples are all right or all wrong gives no pair: there is nothing to prefer.
    Example: on_policy_pairs(rollout, torch.tensor([1., 0.]), 2) -> [(prompt, right, wrong)]
    """
    if len(rollout) != len(rewards) or len(rollout) % group_size:
        raise ValueError(f"need one reward per sample and whole groups of {group_size}, got "
                         f"{len(rollout)} samples and {len(rewards)} rewards")
    rng = random.Random(seed)
    pairs = []
    for start in range(0, len(rollout), group_size):
        group = range(start, start + group_size)
        right = [rollout[i][1] for i in group if rewards[i] > 0]
        wrong = [rollout[i][1] for i in group if rewards[i] <= 0]
        # distinct wrong answers: the same mistake sampled twice would count twice otherwise
        wrong = [list(w) for w in dict.fromkeys(tuple(w) for w in wrong)]
        rng.shuffle(wrong)
        for chosen, rejected in zip(right, wrong):
            pairs.append((list(rollout[start][0]), list(chosen), list(rejected)))
    return pairs


def train_dpo(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    pairs: list[tuple[list[int], list[int], list[int]]],
    beta: float,
    steps: int,
    lr: float = 1e-4,
    batch: int = 32,
    seed: int = 0,
) -> dict[str, list[float]]:
    """DPO on (prompt, chosen, rejected) ids; the reference is frozen. Returns the log per step:
    loss, preference accuracy and margin of the batch.

    Example: log = train_dpo(copy.deepcopy(sft), sft, pairs, beta=0.1, steps=40)
    """
    from .rl import rollout_tensors  # one padded layout for prompts and answers

    if not pairs:
        raise ValueError("no preference pairs: every prompt's samples were all right or all wrong")
    xc, yc, mc = rollout_tensors([(p, c) for p, c, _ in pairs])
    xr, yr, mr = rollout_tensors([(p, r) for p, _, r in pairs])
    reference.eval()
    with torch.no_grad():  # the reference never changes: its log-probs are computed once
        ref_c = sequence_logps(reference(xc), yc, mc)
        ref_r = sequence_logps(reference(xr), yr, mr)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    log: dict[str, list[float]] = {"loss": [], "pref_acc": [], "margin": []}
    policy.train()
    for _ in range(steps):
        i = torch.randint(len(xc), (min(batch, len(xc)),), generator=g)
        loss, r_w, r_l = dpo_loss(sequence_logps(policy(xc[i]), yc[i], mc[i]),
                                  sequence_logps(policy(xr[i]), yr[i], mr[i]),
                                  ref_c[i], ref_r[i], beta)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        log["loss"].append(loss.item())
        log["pref_acc"].append((r_w > r_l).float().mean().item())
        log["margin"].append((r_w - r_l).mean().item())
    policy.eval()
    return log
