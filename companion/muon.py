"""Muon: momentum, orthogonalised by a Newton–Schulz iteration, for the 2-D hidden weights.

Chapter 7's race. Keller Jordan's Muon (2024; used by modded-nanogpt and nanochat) replaces each
hidden matrix's momentum M = U S Vᵀ by roughly U Vᵀ: every direction the gradient has found gets
the same step size, so rare directions are not drowned by the dominant one. Embeddings, the head
and the norm gains are not "hidden" matrices and keep AdamW.

Example:
    >>> opt = Muon(muon_param_groups(model, lr=3e-3, muon_lr=0.02))  # doctest: +SKIP
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["NS_COEFFICIENTS", "ns_dtype", "newton_schulz", "muon_param_groups", "Muon"]

# The quintic's coefficients from Keller Jordan's post (and torch.optim.Muon): chosen to make the
# slope at 0 steep, so five steps push every singular value into roughly [0.7, 1.2].
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def ns_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA, float32 elsewhere. Example: ns_dtype(torch.device("cpu")) == torch.float32

    bf16 is enough precision (the result only has to be near 1), but a CPU without bf16 matmul
    units emulates it: on a 2-core AVX2 machine five iterations on a 128 x 128 matrix took 20 ms
    in bf16 and 1.7 ms in float32; on a 2-core machine with AVX-512 BF16, 0.54 and 0.53 ms
    (benchmarks/bench_train.py, "costs"; results/train-avx2-2026-12-02.json and train.json).
    float32 is never the slow choice on a CPU.
    """
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def newton_schulz(g: torch.Tensor, steps: int = 5, coefficients: tuple[float, float, float] =
                  NS_COEFFICIENTS, eps: float = 1e-7, dtype: torch.dtype | None = None
                  ) -> torch.Tensor:
    """Approximately U Vᵀ for g = U S Vᵀ, without an SVD. Example: newton_schulz(w).shape == w.shape

    Each step maps X -> aX + b(XXᵀ)X + c(XXᵀ)²X, an odd polynomial applied to every singular
    value at once (Uᵀ X V stays diagonal). g may be a stack (n, rows, cols) of same-shape
    matrices: one batched matmul is cheaper than n small ones. dtype None: ns_dtype(g.device).
    """
    if g.ndim not in (2, 3):
        raise ValueError(f"newton_schulz needs a matrix or a stack of them, got shape "
                         f"{tuple(g.shape)}")
    a, b, c = coefficients
    x = g.to(dtype or ns_dtype(g.device))
    tall = g.size(-2) > g.size(-1)
    if tall:  # iterate on the short side: XXᵀ is then the smaller Gram matrix
        x = x.mT
    # Frobenius >= spectral norm, so every singular value starts <= 1
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    # addmm's beta * input + alpha * (m1 @ m2) is one call: each step costs three matmuls and
    # none of the elementwise passes that a * x + (...) would add
    fma = torch.addmm if x.ndim == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        x = fma(x, fma(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.mT if tall else x).to(g.dtype)


def muon_param_groups(model: nn.Module, lr: float, muon_lr: float, weight_decay: float = 0.1,
                      muon_weight_decay: float = 0.0) -> list[dict]:
    """Hidden 2-D weights -> a Muon group; embeddings, head, norms and biases -> AdamW groups.

    "lr_scale" records each group's learning rate relative to `lr`, so a schedule that sets one
    lr per step can scale every group: Muon's steps are ~10x larger than AdamW's.
    """
    seen: set[int] = set()
    hidden, decay, no_decay = [], [], []
    skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(model, "lm_head", None)
    if head is not None:
        skip.add(id(head.weight))
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim == 2 and id(p) not in skip:
            hidden.append(p)
        elif p.ndim >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": hidden, "use_muon": True, "lr": muon_lr, "weight_decay": muon_weight_decay},
        {"params": decay, "use_muon": False, "lr": lr, "weight_decay": weight_decay},
        {"params": no_decay, "use_muon": False, "lr": lr, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr_scale"] = g["lr"] / lr
    return groups


class Muon(torch.optim.Optimizer):
    """Muon on groups with use_muon=True, AdamW on the rest (one optimizer, one state_dict).

    Muon's step matches torch.optim.Muon (Nesterov momentum by lerp, Newton–Schulz, the update
    scaled by sqrt(max(1, rows/cols)), decoupled weight decay); tests compare the two.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, betas: tuple[float, float] =
                 (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0):
        if lr < 0 or not 0 <= momentum < 1 or ns_steps < 1:
            raise ValueError(f"need lr >= 0, 0 <= momentum < 1, ns_steps >= 1; got lr={lr}, "
                             f"momentum={momentum}, ns_steps={ns_steps}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        betas=betas, eps=eps, weight_decay=weight_decay, use_muon=False)
        super().__init__(params, defaults)
        for group in self.param_groups:
            bad = [tuple(p.shape) for p in group["params"] if group["use_muon"] and p.ndim != 2]
            if bad:
                raise ValueError(f"Muon groups take matrices only, got shapes {bad[:3]}")

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["use_muon"]:
                self._muon(params, group)
            else:
                for p in params:
                    self._adamw(p, group)
        return loss

    def _muon(self, params: list[torch.Tensor], group: dict) -> None:
        mu = group["momentum"]
        updates = []
        for p in params:
            buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
            buf.lerp_(p.grad, 1 - mu)  # an EMA of gradients: (1 - mu) * sum of mu^k g_{t-k}
            updates.append(p.grad.lerp(buf, mu) if group["nesterov"] else buf)
        # Matrices of one shape up to a transpose (every layer's q, k, v, o; SwiGLU's up and down)
        # go through one batched iteration: one large matmul is cheaper than many small ones.
        tall = [p.size(0) > p.size(1) for p in params]  # stacked transposed, as (short, long)
        by_shape: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            key = (min(p.shape), max(p.shape), p.device, p.dtype)
            by_shape.setdefault(key, []).append(i)
        for idx in by_shape.values():
            stack = torch.stack([updates[i].mT if tall[i] else updates[i] for i in idx])
            for i, o in zip(idx, newton_schulz(stack, group["ns_steps"])):
                p = params[i]
                o = o.mT if tall[i] else o
                # A tall matrix's U Vᵀ has a smaller RMS per entry; this scale evens that out.
                scale = math.sqrt(max(1.0, p.size(0) / p.size(1)))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(o, alpha=-group["lr"] * scale)

    def _adamw(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        b1, b2 = group["betas"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(p.grad, 1 - b1)
        v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        t = state["step"]
        denom = (v / (1 - b2 ** t)).sqrt_().add_(group["eps"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcdiv_(m, denom, value=-group["lr"] / (1 - b1 ** t))
