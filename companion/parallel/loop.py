"""Chapter 7's training loop under torch.distributed: the few places where `train` differs.

Introduced in chapter 9.

`train(..., cfg)` with cfg.parallel != "none" calls these: join the world, wrap the model, evaluate
and checkpoint collectively. Every rank draws the same global batch from the same seeded generator;
`shard_batch` then hands each rank its share, so the losses match a single-process run.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..loader import TokenIds, random_batch
from .launch import DistEnv, setup, teardown
from .wrap import Parallel, full_state_dict, shard_batch, wrap_model

__all__ = ["start", "finish", "estimate_loss_parallel", "full_weights"]


def start(model: nn.Module, cfg: Any, device: torch.device) -> tuple[DistEnv, Parallel, bool]:
    """Join the world (unless already in one), check the config fits it, wrap the model.

    Returns (env, par, owned).
    """
    owned = not dist.is_initialized()
    env = setup("gloo" if device.type == "cpu" else None)
    if env.device.type != device.type:
        # an initialised world on another backend: trust the caller
        env = DistEnv(env.rank, env.world_size, device)
    if cfg.parallel in ("ddp", "fsdp") and cfg.batch_size % env.world_size:
        raise ValueError(f"--parallel={cfg.parallel}: world_size={env.world_size} does not divide "
                         f"batch_size={cfg.batch_size}")
    if cfg.parallel == "pipeline" and cfg.batch_size % cfg.microbatches:
        raise ValueError(f"--parallel=pipeline: microbatches={cfg.microbatches} does not divide "
                         f"batch_size={cfg.batch_size}")
    if cfg.compile:
        raise ValueError("compile=True is supported single-process only; drop it with --parallel")
    par = wrap_model(
        model, cfg.parallel, env, n_microbatches=cfg.microbatches, schedule=cfg.schedule
    )
    return env, par, owned


def finish(owned: bool) -> None:
    """Leave the world if `start` joined it; a caller's own world stays up."""
    if owned:
        teardown()


@torch.no_grad()
def estimate_loss_parallel(
    par: Parallel, ids: TokenIds, cfg: Any, seed: int | None = None
) -> float:
    """`estimate_loss`'s batches (same seed, same draws), each evaluated by all ranks together."""
    was_training = par.model.training
    par.model.eval()
    g = torch.Generator().manual_seed(cfg.seed + 1 if seed is None else seed)
    total = 0.0
    for _ in range(cfg.eval_iters):
        x, y = random_batch(ids, cfg.batch_size, cfg.context_length, g)
        x, y = shard_batch(x.to(par.env.device), y.to(par.env.device), par.env, par.strategy)
        total += par.eval_loss(x, y)
    par.model.train(was_training)
    return total / cfg.eval_iters


def full_weights(par: Parallel) -> dict[str, torch.Tensor]:
    """The model's whole state dict on every rank (collective), tied names included, on the CPU."""
    full = {k: v.cpu() for k, v in full_state_dict(par).items()}
    # full_state_dict names each parameter once; a tied lm_head must appear under its own name too.
    by_id = {}
    for name, p in par.model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    for names in by_id.values():
        known = next((n for n in names if n in full), None)
        for n in names:
            if known is not None and n not in full:
                full[n] = full[known]
    for mod_name, module in par.model.named_modules():
        for name, b in module.named_buffers(recurse=False):
            # Non-persistent buffers (RoPE's cos/sin tables) are derived from the config:
            # no state dict holds them.
            if name not in module._non_persistent_buffers_set:
                full.setdefault(f"{mod_name}.{name}" if mod_name else name, b.detach().cpu())
    return full
