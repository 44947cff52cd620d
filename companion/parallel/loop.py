"""Chapter 7's training loop under torch.distributed: the few places where `train` differs.

Introduced in chapter 9.

`train(..., cfg)` with cfg.parallel != "none" calls these: join the world, wrap the model, evaluate
and checkpoint collectively. A sharded strategy (fsdp, pipeline, tp) saves and resumes through
torch.distributed.checkpoint (DCP): each rank writes and reads only its own shards. Every rank
draws the same global batch from the same seeded generator; `shard_batch` then hands each rank its
share, so the losses match a single-process run.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..loader import TokenIds, random_batch
from .launch import DistEnv, setup, teardown
from .tensor import TensorParallelMLP
from .wrap import Parallel, full_state_dict, shard_batch, wrap_model

__all__ = ["start", "finish", "estimate_loss_parallel", "full_weights", "sharded_state",
           "save_sharded", "load_sharded"]


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


def sharded_state(par: Parallel, optimizer: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    """This rank's weights, AdamW moments and RNG, under names unique across the world.

    Example key: "model.blocks.1.attn.qkv.weight". DCP writes a plain tensor that several ranks
    hold under one name only once (it must be the same on all of them), and a DTensor (FSDP's
    shards) as its pieces. So names are the GPT's, not a pipeline stage's (whose blocks restart
    at 0), and a hand-split tensor-parallel slice carries its rank.
    """
    mine = {id(p) for p in par.parameters()}
    split = {id(p) for b in par.model.blocks if isinstance(b.mlp, TensorParallelMLP)
             for n, p in b.mlp.named_parameters() if n != "down_bias"}
    state: dict[str, Any] = {"step": torch.tensor(step)}
    for name, p in par.model.named_parameters():
        if id(p) not in mine:
            continue
        key = f"{name}@rank{par.env.rank}" if id(p) in split else name
        state[f"model.{key}"] = p.detach()  # shares p's storage: dcp.load fills it in place
        for k, v in optimizer.state.get(p, {}).items():
            if torch.is_tensor(v):
                state[f"optim.{key}.{k}"] = v
    # each rank's own dropout stream
    state[f"rng.rank{par.env.rank}"] = torch.get_rng_state()
    return state


def save_sharded(par: Parallel, optimizer: torch.optim.Optimizer, folder: Path, step: int) -> str:
    """Write every rank's shards to `folder` with DCP, atomically; returns its name (collective).

    The shards go to a temporary folder first; only once all ranks have finished does rank 0
    swap it in, so a crash mid-save leaves the previous folder whole. Needs a file system that
    every rank sees (one machine, or a shared one).
    """
    import torch.distributed.checkpoint as dcp

    folder = Path(folder)
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    if par.env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(sharded_state(par, optimizer, step), checkpoint_id=tmp)
    dist.barrier()
    if par.env.is_main:
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return folder.name


def _init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's moments (zeros) without moving a weight: one step with lr 0 on zero grads."""
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
        for p in g["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    optimizer.step()
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


def load_sharded(par: Parallel, optimizer: torch.optim.Optimizer, folder: str | Path,
                 step: int) -> None:
    """Fill this rank's weights, optimizer state and RNG from `folder` in place (collective).

    A folder that is missing, from another step, or that lacks this rank's shards raises
    CheckpointError naming it.
    """
    import torch.distributed.checkpoint as dcp

    from ..checkpoint import CheckpointError

    _init_optimizer_state(optimizer)  # DCP loads into existing tensors
    state = sharded_state(par, optimizer, step)
    try:
        dcp.load(state, checkpoint_id=folder)
    except Exception as err:  # noqa: BLE001 - DCP wraps each rank's failure in its own types
        line = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise CheckpointError(f"{folder}: the sharded checkpoint cannot be loaded by "
                              f"{par.strategy} on {par.env.world_size} ranks ({line})") from None
    if int(state["step"]) != step:
        raise CheckpointError(f"{folder} holds step {int(state['step'])}, its ckpt.pt step {step}")
    torch.set_rng_state(state[f"rng.rank{par.env.rank}"])
