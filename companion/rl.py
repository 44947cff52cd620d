"""Per-token log-probs and RL with verifiable rewards (GRPO). Chapter 10.

Tensors follow one convention: per-token values are (batch, seq), and so is the mask that says
which of them belong to a response. The losses are per token; masked_mean or masked_normalize
turns them into one number. GRPO is DeepSeekMath's (Shao et al. 2024, eq. 3 and section 4.1.2)
without its KL penalty to a reference model, which Dr. GRPO (Liu et al. 2025) also drops.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "token_logprobs",
    "token_entropy",
    "response_logprobs",
    "masked_mean",
    "masked_normalize",
    "sft_microbatch_step",
    "group_advantages",
    "naive_pg_loss",
    "grpo_clip_loss",
    "policy_gradient_loss",
    "pg_microbatch_step",
    "Rollout",
    "sample_groups",
    "rollout_tensors",
    "GRPOConfig",
    "train_grpo",
]

LossType = Literal["no_baseline", "reinforce_with_baseline", "grpo_clip"]


def _same_shape(**tensors: torch.Tensor) -> None:
    shapes = {k: tuple(t.shape) for k, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"these need one shape: {shapes}")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[b, t] | what came before), from logits (B, T, V) and targets (B, T) -> (B, T).

    Example: token_logprobs(torch.zeros(1, 2, 4), torch.tensor([[0, 3]])) -> [[-log 4, -log 4]]
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} need targets of shape "
                         f"{tuple(logits.shape[:-1])}, got {tuple(targets.shape)}")
    # log_softmax then gather: the log-sum-exp is taken once per row, stably, in float32.
    return logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each next-token distribution: logits (B, T, V) -> (B, T).

    Example: token_entropy(torch.zeros(1, 1, 4)) -> [[log 4]]
    """
    logp = logits.float().log_softmax(-1)
    # p * log p with p = exp(logp): exp of -inf is 0, and 0 * -inf would be nan, so mask it.
    return -(logp.exp() * logp.masked_fill(torch.isinf(logp), 0.0)).sum(-1)


def response_logprobs(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, with_entropy: bool = False
) -> dict[str, torch.Tensor]:
    """One forward pass: {"log_probs": (B, T)} and, if asked, {"entropy": (B, T)}.

    Example: response_logprobs(model, x, y)["log_probs"].shape == y.shape
    """
    logits = model(inputs)
    out = {"log_probs": token_logprobs(logits, targets)}
    if with_entropy:
        with torch.no_grad():  # a diagnostic: it never carries gradient
            out["entropy"] = token_entropy(logits)
    return out


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x where mask is 1, over dim (None: all of it); padding never counts.

    Example: masked_mean(torch.tensor([[1., 2., 9.]]), torch.tensor([[1, 1, 0]])) -> 1.5
    """
    _same_shape(x=x, mask=mask)
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum()
    return (x * m).sum(dim) / m.sum(dim)


def masked_normalize(
    x: torch.Tensor, mask: torch.Tensor, constant: float, dim: int | None = None
) -> torch.Tensor:
    """Sum of x where mask is 1, over dim (None: all of it), divided by a given constant.

    The constant is fixed by the caller (a token budget, or the whole batch's count), so a row's
    weight does not depend on how many tokens its own micro-batch happens to hold.
    Example: masked_normalize(torch.tensor([[1., 2., 9.]]), torch.tensor([[1, 1, 0]]), 4.) -> 0.75
    """
    _same_shape(x=x, mask=mask)
    if constant <= 0:
        raise ValueError(f"constant must be positive, got {constant}")
    m = mask.to(x.dtype)
    return ((x * m).sum() if dim is None else (x * m).sum(dim)) / constant


def sft_microbatch_step(log_probs: torch.Tensor, mask: torch.Tensor, n_tokens: float
                        ) -> torch.Tensor:
    """Backward of one micro-batch's share of the SFT loss; returns that share (detached).

    n_tokens is the response-token count of the whole accumulated batch: summed over micro-batches,
    the shares are then exactly the full batch's mean NLL per response token, and so are the grads.
    Example: for x, y, m in micro_batches: sft_microbatch_step(lp(x, y), m, total); opt.step()
    """
    loss = -masked_normalize(log_probs, mask, n_tokens)
    loss.backward()
    return loss.detach()


# --- RL with verifiable rewards -------------------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor, group_size: int, normalize_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Each reward minus its group's mean, optionally over the group's std + eps: (N*G,) -> (N*G,).

    Rows come in groups of group_size answers to one prompt, group after group. A group whose
    answers all score the same gets advantage 0: it says nothing about which answer was better.
    Example: group_advantages(torch.tensor([1., 0., 0., 0.]), 4, False) -> [0.75, -0.25, ...]
    """
    if rewards.ndim != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} "
                         f"entries, got shape {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if normalize_by_std:
        # the sample (unbiased) std, as torch.std and Hugging Face TRL's group normalisation take it
        std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
        adv = adv / (std + eps)
    return adv.flatten()


def naive_pg_loss(weights: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """Per-token policy-gradient loss -w * log pi, w per row (B,) or (B, 1) -> (B, T).

    With w the raw reward this is REINFORCE without a baseline; with w a group advantage, REINFORCE
    with the group mean as its baseline. Its gradient is the score-function estimator.
    Example: naive_pg_loss(torch.tensor([2.]), torch.tensor([[-1., -3.]])) -> [[2., 6.]]
    """
    return -weights.reshape(-1, 1).to(log_probs.dtype) * log_probs


def grpo_clip_loss(
    advantages: torch.Tensor, log_probs: torch.Tensor, old_log_probs: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's clipped per-token loss and a 0/1 tensor of where the clip was active: (B, T) each.

    loss = -min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A), ratio = pi / pi_old, taken from
    log-probs (old_log_probs come from the policy that sampled, and carry no gradient).
    Example: grpo_clip_loss(torch.tensor([1.]), torch.tensor([[0.]]), torch.tensor([[-1.]]), .2)
    -> loss [[-1.2]], clipped [[1.]]
    """
    _same_shape(log_probs=log_probs, old_log_probs=old_log_probs)
    if clip <= 0:
        raise ValueError(f"clip must be positive, got {clip}")
    a = advantages.reshape(-1, 1).to(log_probs.dtype)
    ratio = torch.exp(log_probs - old_log_probs.detach())
    unclipped = ratio * a
    clipped = ratio.clamp(1 - clip, 1 + clip) * a
    # min: the clipped term binds only when it is the smaller (the pessimistic bound).
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).to(log_probs.dtype)


def policy_gradient_loss(
    log_probs: torch.Tensor,
    loss_type: LossType,
    rewards: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss (B, T) of one of the three losses, and diagnostics (the clip fraction).

    no_baseline: raw rewards; reinforce_with_baseline: advantages; grpo_clip: advantages, old
    log-probs and the clip range. Example: policy_gradient_loss(lp, "no_baseline", rewards=r)
    """
    needs = {"no_baseline": ("rewards",), "reinforce_with_baseline": ("advantages",),
             "grpo_clip": ("advantages", "old_log_probs", "clip")}
    if loss_type not in needs:
        raise ValueError(f"loss_type must be one of {sorted(needs)}, got {loss_type!r}")
    given = {"rewards": rewards, "advantages": advantages, "old_log_probs": old_log_probs,
             "clip": clip}
    missing = [k for k in needs[loss_type] if given[k] is None]
    if missing:
        raise ValueError(f"loss_type {loss_type!r} needs {', '.join(missing)}")
    if loss_type == "no_baseline":
        return naive_pg_loss(rewards, log_probs), {}
    if loss_type == "reinforce_with_baseline":
        return naive_pg_loss(advantages, log_probs), {}
    loss, was_clipped = grpo_clip_loss(advantages, log_probs, old_log_probs, clip)
    return loss, {"clipped": was_clipped}


def pg_microbatch_step(
    log_probs: torch.Tensor,
    response_mask: torch.Tensor,
    grad_accum_steps: int,
    loss_type: LossType,
    normalize_constant: float | None = None,
    **loss_args: torch.Tensor | float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Backward of one micro-batch's policy-gradient loss; returns it (detached) and diagnostics.

    Each row's per-token loss is averaged over its response tokens (masked_mean), or summed and
    divided by normalize_constant (masked_normalize: every token weighs the same, whatever its
    answer's length); then averaged over rows and divided by grad_accum_steps.
    Example: pg_microbatch_step(lp, mask, 4, "grpo_clip", advantages=a, old_log_probs=o, clip=.2)
    """
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    per_token, meta = policy_gradient_loss(log_probs, loss_type, **loss_args)
    if normalize_constant is None:
        per_row = masked_mean(per_token, response_mask, dim=1)
    else:
        per_row = masked_normalize(per_token, response_mask, normalize_constant, dim=1)
    loss = per_row.mean() / grad_accum_steps
    loss.backward()
    if "clipped" in meta:
        meta = {"clip_fraction": masked_mean(meta["clipped"], response_mask)}
    return loss.detach(), meta


# --- rollouts -------------------------------------------------------------------------------------


class Rollout(list):
    """(prompt ids, response ids) pairs, G per prompt, in prompt order: a list with a group size."""

    group_size: int = 1


@torch.no_grad()
def sample_groups(
    model: nn.Module,
    prompts: list[list[int]],
    group_size: int,
    max_new_tokens: int,
    stop_id: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Rollout:
    """G sampled responses per prompt, each cut after its first stop_id (kept) or at the limit.

    Prompts of one length are decoded together, with the KV cache; the result keeps prompt order.
    Example: sample_groups(model, [tok.encode(p)], 8, 10, end_id)[0] -> (prompt ids, response ids)
    """
    from .generate import generate  # sampling is chapter 7's

    if group_size < 1 or max_new_tokens < 1:
        raise ValueError(f"group_size and max_new_tokens must be >= 1, got {group_size} and "
                         f"{max_new_tokens}")
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    out: list[tuple[list[int], list[int]] | None] = [None] * (len(prompts) * group_size)
    for n, idx in by_len.items():
        rows = torch.tensor([prompts[i] for i in idx for _ in range(group_size)])
        room = min(max_new_tokens, model.config.context_length - n)
        new = generate(model, rows, room, temperature=temperature, generator=generator)[:, n:]
        for r, row in enumerate(new.tolist()):
            i, g = idx[r // group_size], r % group_size
            cut = row.index(stop_id) + 1 if stop_id in row else len(row)
            out[i * group_size + g] = (list(prompts[i]), row[:cut])
    result = Rollout(out)
    result.group_size = group_size
    return result


def rollout_tensors(pairs: list[tuple[list[int], list[int]]], pad_id: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt, response) pairs -> inputs, targets, response mask, each (B, T), right-padded.

    The mask is 1 where the target is a response token, so the prompt and padding never count.
    Example: rollout_tensors([([5, 6], [7, 8])]) -> x [[5, 6, 7]], y [[6, 7, 8]], m [[0, 1, 1]]
    """
    T = max(len(p) + len(r) for p, r in pairs) - 1
    x = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    y = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    m = torch.zeros((len(pairs), T), dtype=torch.long)
    for b, (p, r) in enumerate(pairs):
        ids = list(p) + list(r)
        x[b, : len(ids) - 1] = torch.tensor(ids[:-1])
        y[b, : len(ids) - 1] = torch.tensor(ids[1:])
        m[b, len(p) - 1 : len(ids) - 1] = 1  # target t is token t + 1: responses start at len(p)
    return x, y, m


Verifier = Callable[[int, list[int]], float]  # (prompt index, response ids) -> reward


@dataclass
class GRPOConfig:
    """The knobs of one GRPO run. Example: GRPOConfig(loss_type="reinforce_with_baseline")"""

    steps: int = 20  # rollout batches
    prompts_per_step: int = 32
    group_size: int = 8
    epochs_per_rollout: int = 2  # optimizer steps on each rollout batch: the clip then matters
    micro_batch: int = 128  # rows per forward pass; a step accumulates rollout rows / micro_batch
    lr: float = 3e-4
    clip: float = 0.2
    loss_type: LossType = "grpo_clip"
    normalize_by_std: bool = True
    temperature: float = 1.0
    max_new_tokens: int = 12
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "prompts_per_step", "group_size", "epochs_per_rollout",
                     "micro_batch", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.clip <= 0 or self.temperature <= 0:
            raise ValueError(f"lr, clip and temperature must be positive, got {self.lr}, "
                             f"{self.clip} and {self.temperature}")
        if self.loss_type not in ("no_baseline", "reinforce_with_baseline", "grpo_clip"):
            raise ValueError(f"unknown loss_type {self.loss_type!r}")


def train_grpo(
    model: nn.Module,
    prompts: list[list[int]],
    verify: Verifier,
    stop_id: int,
    config: GRPOConfig,
    progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """RL with a verifier: sample G answers per prompt, score, normalise in groups, and take
    epochs_per_rollout optimizer steps on each batch. Returns the log, one entry per batch.
    on_batch(n) runs after batch n (1-based), e.g. to score held-out data mid-run while the
    optimizer's moments and the sampling RNG carry on.

    Example: log = train_grpo(model, prompt_ids, lambda i, r: float(...), end_id, GRPOConfig())
    """
    c = config
    g = torch.Generator().manual_seed(c.seed)
    rng = random.Random(c.seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=c.lr,
                            weight_decay=0.0, betas=(0.9, 0.95))
    log: dict[str, list[float]] = {k: [] for k in (
        "reward", "response_length", "entropy", "clip_fraction", "mixed_groups", "seconds")}
    steps = range(c.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"GRPO ({c.loss_type})")
    t0 = time.perf_counter()
    for _ in steps:
        chosen = rng.sample(range(len(prompts)), c.prompts_per_step)
        rollout = sample_groups(model, [prompts[i] for i in chosen], c.group_size,
                                c.max_new_tokens, stop_id, c.temperature, g)
        rewards = torch.tensor([verify(chosen[j // c.group_size], resp)
                                for j, (_, resp) in enumerate(rollout)])
        adv = group_advantages(rewards, c.group_size, c.normalize_by_std)
        x, y, m = rollout_tensors(rollout)
        with torch.no_grad():  # the sampling policy's log-probs: pi_old of the ratio
            old = torch.cat([response_logprobs(model, x[i:i + c.micro_batch],
                                               y[i:i + c.micro_batch])["log_probs"]
                             for i in range(0, len(x), c.micro_batch)])
        n_micro = math.ceil(len(x) / c.micro_batch)
        model.train()
        ent, clipped = [], []
        for _epoch in range(c.epochs_per_rollout):
            for i in range(0, len(x), c.micro_batch):
                s = slice(i, i + c.micro_batch)
                out = response_logprobs(model, x[s], y[s], with_entropy=True)
                args = ({"rewards": rewards[s]} if c.loss_type == "no_baseline" else
                        {"advantages": adv[s], "old_log_probs": old[s], "clip": c.clip})
                if c.loss_type == "reinforce_with_baseline":
                    args = {"advantages": adv[s]}
                _, meta = pg_microbatch_step(out["log_probs"], m[s], n_micro, c.loss_type, **args)
                ent.append(masked_mean(out["entropy"], m[s]).item())
                clipped.append(meta["clip_fraction"].item() if meta else 0.0)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.eval()
        r = rewards.view(-1, c.group_size)
        log["reward"].append(rewards.mean().item())
        log["response_length"].append(m.sum(1).float().mean().item())
        log["entropy"].append(sum(ent) / len(ent))
        log["clip_fraction"].append(sum(clipped) / len(clipped))
        log["mixed_groups"].append(((r.min(1).values < r.max(1).values).float().mean().item()))
        log["seconds"].append(time.perf_counter() - t0)
        if on_batch is not None:
            on_batch(len(log["reward"]))
    return log
