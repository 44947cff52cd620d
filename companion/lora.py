"""LoRA: low-rank adapters on a frozen model (Hu et al. 2021). Introduced in chapter 10.

W x becomes W x + (alpha / r) * B A x with A (r, in) and B (out, r); only A and B train. B starts at
zero, so the adapted model starts as the base model exactly. `merge_lora` folds B A into W.
rsLoRA (Kalajdzievski 2023) scales by alpha / sqrt(r) instead, peft's `use_rslora=True`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LoRALinear", "apply_lora", "merge_lora", "lora_parameters", "trainable_params"]


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable rank-r update scaled by alpha / r (alpha / sqrt(r) with
    rslora).

    Example: LoRALinear(nn.Linear(8, 4), rank=2, alpha=4).lora_A.shape -> (2, 8)
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 rslora: bool = False):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if not isinstance(rank, int) or rank < 1 or rank > min(base.in_features, base.out_features):
            raise ValueError(
                f"rank must be an int in [1, {min(base.in_features, base.out_features)}], "
                f"got {rank}"
            )
        self.base, self.rank, self.alpha = base, rank, float(alpha)
        # rsLoRA: with alpha / r the update's scale falls as r grows, so high ranks learn slowly;
        # alpha / sqrt(r) keeps it rank-stable (Kalajdzievski 2023, the paper's theorem).
        self.scaling = float(alpha) / (math.sqrt(rank) if rslora else rank)
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(
            torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype)
        )
        # A random and B zero (as in the paper and peft): the update B A is 0 at the start, but its
        # gradient with respect to B is not, so training moves off the base model at once.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (
            self.dropout(x) @ self.lora_A.T @ self.lora_B.T
        )  # (..., in) -> (..., r) -> (..., out)
        return self.base(x) + self.scaling * update

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with W + (alpha / r) B A: the same outputs (without dropout)."""
        b = self.base
        out = nn.Linear(
            b.in_features,
            b.out_features,
            bias=b.bias is not None,
            device=b.weight.device,
            dtype=b.weight.dtype,
        )
        with torch.no_grad():
            out.weight.copy_(b.weight + self.scaling * (self.lora_B @ self.lora_A))
            if b.bias is not None:
                out.bias.copy_(b.bias)
        return out


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    dropout: float = 0.0,
    rslora: bool = False,
) -> nn.Module:
    """Freeze all of `model`, then wrap each nn.Linear whose name ends in a target. In place.

    Example: apply_lora(GPT(cfg), rank=4, alpha=8) adapts every block's q_proj and v_proj.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    hits = [
        (name, module)
        for name, module in model.named_modules()
        if name.split(".")[-1] in targets and isinstance(module, nn.Linear)
    ]
    if not hits:
        raise ValueError(f"no nn.Linear named {targets} in the model; nothing to adapt")
    for name, module in hits:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, rank, alpha, dropout, rslora))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged nn.Linear, in place; the logits stay the same."""
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not wrapped:
        raise ValueError("the model holds no LoRA adapters to merge")
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.merged())
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' A and B matrices, in module order."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]


def trainable_params(model: nn.Module) -> int:
    """How many parameters an optimizer would update (requires_grad), each shared tensor once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
