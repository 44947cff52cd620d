"""Learning-rate schedules of chapter 7: warmup then a cosine, or warmup-stable-decay (WSD).

    lr_at(60, TrainConfig(max_steps=200, warmup_steps=10, lr_decay_steps=110))  # -> 5.5e-4

WSD (Hu et al. 2024, MiniCPM; Hägele et al. 2024) holds the peak lr and decays only over the last
`decay_fraction` of the run, so a run still in its stable phase extends by raising max_steps.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import TrainConfig

__all__ = ["lr_at", "decay_start", "keep_decay_horizon"]


def decay_start(cfg: TrainConfig) -> int:
    """The first step whose lr is below the peak: warmup's end (cosine) or WSD's last stretch.

    Example: WSD over 1000 steps with decay_fraction 0.2 -> 800.
    """
    if cfg.lr_schedule == "cosine":
        return cfg.warmup_steps
    return max(cfg.warmup_steps, cfg.decay_steps - round(cfg.decay_fraction * cfg.decay_steps))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then down to min_lr at decay_steps, then flat at min_lr.

    "cosine": a half cosine from the end of warmup. "wsd": flat at lr until `decay_start`, then a
    straight line. Example (lr 1e-3, min_lr 1e-4, warmup 10, decay 110, cosine): step 0 -> 1e-4,
    step 9 -> 1e-3, step 60 -> 5.5e-4.
    """
    if step < cfg.warmup_steps:
        # step 0 already moves; step warmup-1 reaches lr
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.decay_steps:
        return cfg.min_lr
    start = decay_start(cfg)
    if step < start:
        return cfg.lr  # WSD's stable phase
    progress = (step - start) / (cfg.decay_steps - start)  # 0 -> 1
    if cfg.lr_schedule == "wsd":
        return cfg.lr - progress * (cfg.lr - cfg.min_lr)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def keep_decay_horizon(cfg: TrainConfig, checkpoint: dict[str, Any]) -> TrainConfig:
    """The config to resume with: once decay has begun, the schedule keeps the checkpoint's end.

    A longer max_steps then adds steps at min_lr instead of lifting the lr back up. Before decay
    began (warmup; WSD's stable phase) the new max_steps moves the end: the run extends. An
    explicit cfg.lr_decay_steps wins. Example: a 600-step cosine run resumed with max_steps=800
    decays to min_lr at step 600 and stays there.
    """
    from . import TrainConfig

    old = TrainConfig.from_dict(checkpoint["train_config"])
    horizon = checkpoint.get("decay_steps")
    if horizon is None:  # a checkpoint written before the horizon was stored
        horizon = old.decay_steps
    begun = checkpoint["step"] > decay_start(dataclasses.replace(old, lr_decay_steps=horizon))
    if cfg.lr_decay_steps is not None or not begun:
        return cfg  # chosen by hand, or not decaying yet: the new horizon lowers nothing yet
    return dataclasses.replace(cfg, lr_decay_steps=horizon)
