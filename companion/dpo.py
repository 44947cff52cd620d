"""Direct preference optimisation (Rafailov et al. 2023): pairs, no reward model. Chapter 10.

The loss of eq. 7 is -log sigmoid(beta * Delta), where Delta is how much more the policy than the
reference prefers the chosen answer to the rejected one, in log-probability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sequence_logps", "dpo_loss", "dpo_loss_as_classification", "answer_kl"]


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
