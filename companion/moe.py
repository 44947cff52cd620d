"""Mixture of experts: a routed feed-forward layer that replaces a block's MLP.

Introduced in chapter 6.

Each token's router picks `top_k` of `n_experts` MLPs and mixes their outputs weighted by the
router's probabilities p_i(x) (Switch Transformer, Fedus et al. 2021, eq. 2), so a token pays
for k experts while the layer holds n. `norm_topk_prob=True` renormalises the k kept gates to
sum to 1 (Mixtral; Hugging Face's `norm_topk_prob`, False by default in Qwen2-MoE's config;
GPTConfig(moe_norm_topk_prob=True)). A load-balancing loss (Switch Transformer) keeps the
router from sending everything to a few experts, and a capacity caps each expert's share of a
batch while training. GPTConfig(n_experts=N) selects it.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["route", "load_balancing_loss", "expert_capacity", "MoE", "moe_aux_loss",
           "check_moe"]


def check_moe(n_experts: int, top_k: int, capacity_factor: float | None,
              aux_weight: float) -> None:
    """ValueError unless the MoE settings make sense; n_experts=0 means a dense MLP."""
    if not isinstance(n_experts, int) or isinstance(n_experts, bool) or n_experts < 0:
        raise ValueError(f"n_experts must be an int >= 0 (0: a dense MLP), got {n_experts!r}")
    if n_experts == 0:
        return
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= n_experts:
        raise ValueError(f"moe_top_k must be between 1 and n_experts={n_experts}, got {top_k!r}")
    if capacity_factor is not None and not capacity_factor > 0:
        raise ValueError(f"capacity_factor must be positive (or None: no limit), got "
                         f"{capacity_factor!r}")
    if not aux_weight >= 0:
        raise ValueError(f"moe_aux_weight must be >= 0, got {aux_weight!r}")


def route(logits: torch.Tensor, top_k: int, norm_topk_prob: bool = False
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router logits (N, E) -> (probs (N, E), gates (N, k), experts (N, k)).

    probs is the softmax over all experts; gates are the k largest of them, p_i(x) as in Switch,
    or with norm_topk_prob renormalised to sum to 1 (Mixtral). Renormalising at k = 1 makes
    every gate exactly 1, which cuts the router off from the LM loss's gradient.
    Example: route(torch.tensor([[2., 1., 1.]]).log(), 2)[1] -> [[0.5, 0.25]]
    """
    probs = F.softmax(logits.float(), dim=-1)  # float32: a bf16 softmax over experts is coarse
    gates, experts = probs.topk(top_k, dim=-1)  # (N, k) each, best first
    if norm_topk_prob:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return probs, gates, experts


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's auxiliary loss, E * sum_i f_i * P_i (Fedus et al. 2021, eq. 4).

    f_i: the share of routing choices that went to expert i (counted, so not differentiable);
    P_i: the router's mean probability for expert i (differentiable). 1 when perfectly balanced.
    Example: load_balancing_loss(torch.full((4, 2), 0.5), torch.tensor([[0], [1], [0], [1]])) -> 1.
    """
    E = probs.shape[-1]
    f = torch.bincount(experts.reshape(-1), minlength=E).to(probs.dtype) / experts.numel()
    return E * (f * probs.mean(dim=0)).sum()


def expert_capacity(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    """Most assignments one expert takes: ceil(capacity_factor * tokens * k / experts).

    Example: expert_capacity(64, 4, 2, 1.0) -> 32
    """
    return math.ceil(capacity_factor * n_tokens * top_k / n_experts)


class MoE(nn.Module):
    """n_experts MLPs behind a top-k router: (B, T, d) -> (B, T, d). Introduced in chapter 6.

    After each forward, `aux_loss` holds the load-balancing loss (unweighted) and `dropped` the
    number of token-expert assignments that went over capacity. Capacity applies while training
    only, so a cached decode equals the full pass at inference. `norm_topk_prob` as in `route`.
    Example:
    MoE(16, 4, 2, None, lambda: nn.Linear(16, 16))(torch.randn(1, 3, 16)).shape -> (1, 3, 16)
    """

    def __init__(self, d_model: int, n_experts: int, top_k: int, capacity_factor: float | None,
                 make_expert: Callable[[], nn.Module], norm_topk_prob: bool = False):
        super().__init__()
        check_moe(n_experts, top_k, capacity_factor, 0.0)
        if n_experts < 1:
            raise ValueError(f"an MoE layer needs n_experts >= 1, got {n_experts}")
        self.top_k, self.capacity_factor = top_k, capacity_factor
        self.norm_topk_prob = norm_topk_prob
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(make_expert() for _ in range(n_experts))
        self.aux_loss = torch.zeros(())
        self.dropped = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        flat = x.reshape(B * T, d)  # (B, T, d) -> (N, d): routing ignores where a token sits
        # probs (N, E), gates (N, k), chosen (N, k)
        probs, gates, chosen = route(self.router(flat), self.top_k, self.norm_topk_prob)
        self.aux_loss = load_balancing_loss(probs, chosen)
        E = len(self.experts)
        cap = (B * T * self.top_k if self.capacity_factor is None or not self.training
               else expert_capacity(B * T, E, self.top_k, self.capacity_factor))
        out, dropped = torch.zeros_like(flat), 0
        for e, expert in enumerate(self.experts):
            # (rank, token) pairs routed to e, all first choices before any second choice, each in
            # token order: over capacity, a token's later choices are the ones dropped first
            rank, tok = (chosen == e).T.nonzero(as_tuple=True)
            dropped += max(0, len(tok) - cap)
            rank, tok = rank[:cap], tok[:cap]
            if len(tok):
                # a dropped assignment adds nothing: the block's residual carries the token on
                out.index_add_(0, tok, gates[tok, rank, None].to(x.dtype) * expert(flat[tok]))
        self.dropped = dropped
        return out.view(B, T, d)


def moe_aux_loss(model: nn.Module) -> torch.Tensor | float:
    """moe_aux_weight times the sum of every MoE layer's last load-balancing loss; 0.0 if none.

    Add it to the training loss after a forward pass. Example: moe_aux_loss(GPT(dense)) -> 0.0
    """
    weight = getattr(getattr(model, "config", None), "moe_aux_weight", 0.0)
    losses = [m.aux_loss for m in model.modules() if isinstance(m, MoE)]
    return weight * torch.stack(losses).sum() if losses and weight else 0.0
