"""Training loops. Chapter 1 introduces `train_model`; chapter 7 grows it rather than replacing it."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

__all__ = ["train_model"]


def train_model(
    model: nn.Module,
    data_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    epochs: int,
    *,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Minimise next-token cross-entropy; returns {"step_loss": [...], "epoch_loss": [...]} for plotting.

    Each batch is (inputs, targets) of equal shape; the model maps inputs to logits with one
    extra trailing vocabulary dim. Introduced in chapter 1.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    model.to(device)
    model.train()
    history: dict[str, list[float]] = {"step_loss": [], "epoch_loss": []}
    for epoch in range(1, epochs + 1):
        total, batches = 0.0, 0
        bar = tqdm(data_loader, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for inputs, targets in bar:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad(set_to_none=True)
            logits = model(inputs)
            # cross_entropy wants (N, V) logits and (N,) targets, whatever the batch shape was
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
            loss.backward()
            optimizer.step()
            history["step_loss"].append(loss.item())
            total, batches = total + loss.item(), batches + 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if batches == 0:
            raise ValueError("data_loader yielded no batches; is the dataset empty?")
        history["epoch_loss"].append(total / batches)
        if progress:
            print(f"epoch {epoch}/{epochs}: mean loss {total / batches:.4f}")
    return history
