"""Wrap a companion GPT for one strategy so a training loop runs unchanged.

`wrap_model`, `shard_batch`. Introduced in chapter 9.

Every wrapper offers the same two things: `parameters()` for the optimizer, and
`forward_backward(x, y)`, which runs the forward and backward passes and returns the loss of the
whole global batch (same on every rank).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .launch import DistEnv
from .pipeline import GPTStage, TimedStage
from .tensor import TensorParallelMLP, apply_tensor_parallel

__all__ = ["STRATEGIES", "Parallel", "wrap_model", "shard_batch", "clip_grad_norm", "state_bytes",
           "full_state_dict"]

STRATEGIES = ("none", "ddp", "fsdp", "pipeline", "tp")


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: (B, T, V) logits against (B, T) targets."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


class Parallel:
    """A model prepared for one strategy.

    `module` holds this rank's parameters, `forward_backward` does one pass.
    """

    def __init__(self, model: nn.Module, module: nn.Module, strategy: str, env: DistEnv):
        self.model, self.module, self.strategy, self.env = model, module, strategy, env
        self.stage: TimedStage | None = None

    def parameters(self):
        return self.module.parameters()

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0, *,
                         sync: bool = True, reduce: bool = True) -> float | torch.Tensor:
        """Forward and backward on this rank's share of the batch.

        Returns the global batch's mean loss.

        scale multiplies the loss before backward (1 / accumulation steps), not the returned value.
        sync=False keeps the gradients on this rank (DDP's no_sync, FSDP's
        set_requires_gradient_sync(False)): under accumulation only the last micro-batch
        all-reduces. reduce=False returns this rank's loss as a tensor, for `global_loss` once
        per step (no collective and no device sync per micro-batch).
        """
        if self.strategy == "fsdp":
            self.module.set_requires_gradient_sync(sync)
        quiet = self.module.no_sync() if self.strategy == "ddp" and not sync else nullcontext()
        with quiet:
            loss = lm_loss(self.module(x), y)
            (loss * scale).backward()
        loss = loss.detach()
        return self._global(loss) if reduce else loss

    def global_loss(self, local: torch.Tensor) -> torch.Tensor:
        """The global batch's loss from this rank's (a sum of `forward_backward(reduce=False)`)."""
        if self.strategy in ("ddp", "fsdp"):
            local = local.clone()
            dist.all_reduce(local, op=dist.ReduceOp.AVG)
        return local

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Forward only: the global batch's mean loss, for evaluation (every rank must call it)."""
        loss = lm_loss(self.module(x), y)
        if self.strategy == "fsdp":
            # the root group stays gathered after a forward (a backward would need it): free it
            self.module.reshard()
        return self._global(loss)

    def _global(self, loss: torch.Tensor) -> float:
        # each rank saw a different slice: average the slices' losses
        if self.strategy in ("ddp", "fsdp"):
            loss = loss.clone()
            dist.all_reduce(loss, op=dist.ReduceOp.AVG)
        return float(loss)


class PipelineParallel(Parallel):
    """The pipeline wrapper: micro-batches flow through the stages under GPipe or 1F1B."""

    def __init__(self, model: nn.Module, env: DistEnv, n_microbatches: int, schedule: str):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        schedules = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}
        if schedule not in schedules:
            raise ValueError(f"schedule must be one of {sorted(schedules)}, got {schedule!r}")
        p, r = env.world_size, env.rank
        stage = TimedStage(GPTStage(model, r, p), r, n_microbatches)
        super().__init__(model, stage, "pipeline", env)
        self.stage = stage
        # The stage learns what it sends and receives from a trial pass on the first
        # step (TimedStage skips it).
        self.pipe_stage = PipelineStage(stage, r, p, env.device)
        self.scale = 1.0
        # The schedule would divide the stage's summed gradients by m at the end of each step,
        # gradients accumulated by earlier steps too: the loss carries the 1/m instead.
        self.n_microbatches = n_microbatches
        self.schedule = schedules[schedule](
            self.pipe_stage, n_microbatches=n_microbatches, loss_fn=self._loss, scale_grads=False
        )

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lm_loss(logits, y) * (self.scale / self.n_microbatches)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0, *,
                         sync: bool = True, reduce: bool = True) -> float | torch.Tensor:
        # each stage owns its gradients: there is no gradient all-reduce to skip
        self.scale = scale
        loss = self._run(self.schedule.step, x, y, reduce) * (self.n_microbatches / scale)
        # the first training step began with a trial pass; time the ones after it
        self.stage.recording = True
        return loss

    def global_loss(self, local: torch.Tensor) -> torch.Tensor:
        # only the last stage saw the loss; it tells the others
        local = local.clone()
        dist.broadcast(local, src=self.env.world_size - 1)
        return local

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.scale = 1.0
        return self._run(self.schedule.eval, x, y) * self.n_microbatches

    def _run(self, step, x: torch.Tensor, y: torch.Tensor,
             reduce: bool = True) -> float | torch.Tensor:
        first, last = self.env.rank == 0, self.env.rank == self.env.world_size - 1
        losses: list[torch.Tensor] = []
        if first and last:
            step(x, target=y, losses=losses)
        elif first:
            step(x)
        elif last:
            step(target=y, losses=losses)
        else:
            step()
        # Only the last stage sees the loss; it tells the others. The loss already carried the
        # 1/m of the mean over micro-batches.
        loss = (torch.stack(losses).mean().detach() if last
                else torch.zeros((), device=self.env.device))
        if not reduce:
            return loss
        dist.broadcast(loss, src=self.env.world_size - 1)
        return float(loss)


def wrap_model(model: nn.Module, strategy: str, env: DistEnv, *, n_microbatches: int = 4,
               schedule: str = "1f1b", tp_method: str = "hand") -> Parallel:
    """Prepare a companion GPT (same initial weights on every rank) for `strategy`.

    See STRATEGIES.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    # Dropout is allowed where each rank computes its own activations: data-parallel ranks
    # draw their own masks, as real runs do, so a run tracks one process's curve rather than
    # repeating it bit for bit. Tensor-parallel ranks share activations: their masks would
    # have to agree.
    if strategy == "tp" and getattr(model.config, "dropout", 0.0) > 0:
        raise ValueError(f"dropout={model.config.dropout} under tp: the ranks would drop "
                         "different units of the activations they share; use dropout=0")
    if strategy == "none":
        return Parallel(model, model, "none", env)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return Parallel(model,
                        DDP(model, device_ids=None if env.device.type == "cpu" else [env.device]),
                        "ddp", env)
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(env.device.type, (env.world_size,))
        # one all-gather per block: only one block's full weights exist at a time
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)  # the rest (embeddings, final norm, head) as one group
        return Parallel(model, model, "fsdp", env)
    if strategy == "tp":
        apply_tensor_parallel(model, env.rank, env.world_size, method=tp_method)
        return Parallel(model, model, "tp", env)
    return PipelineParallel(model, env, n_microbatches, schedule)


def shard_batch(
    x: torch.Tensor, y: torch.Tensor, env: DistEnv, strategy: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of a global batch.

    A slice of rows for data parallelism, all of it otherwise.
    """
    if strategy in ("ddp", "fsdp"):
        if x.shape[0] % env.world_size:
            raise ValueError(f"world_size={env.world_size} does not divide the global batch of "
                             f"{x.shape[0]}")
        return x.chunk(env.world_size)[env.rank], y.chunk(env.world_size)[env.rank]
    return x, y


def clip_grad_norm(par: Parallel, max_norm: float) -> float:
    """Scale every gradient so their global norm is at most max_norm.

    Returns the norm before clipping.

    Each rank holds part of the gradient: its FSDP shard, its pipeline stage, its slice of each MLP.
    The squares are summed across the ranks; gradients every rank holds in full are counted once.
    """
    grads = [p.grad for p in par.parameters() if p.grad is not None]
    if par.strategy in ("none", "ddp"):  # every rank holds the whole (averaged) gradient
        return float(nn.utils.clip_grad_norm_(par.parameters(), max_norm))
    split, whole = torch.zeros(()), torch.zeros(())
    for g in grads:
        placements = getattr(g, "placements", None)
        replicated = placements is not None and all(pl.is_replicate() for pl in placements)
        is_split = par.strategy in ("fsdp", "pipeline") or (
            not replicated and (placements is not None or _tp_split(par, g))
        )
        sq = _local(g).float().pow(2).sum()
        if is_split:
            split += sq
        else:
            whole += sq
    dist.all_reduce(split)
    norm = float((split + whole).sqrt())
    coef = min(1.0, max_norm / (norm + 1e-6))
    if coef < 1.0:
        for g in grads:
            _local(g).mul_(coef)
    return norm


def _tp_split(par: Parallel, grad: torch.Tensor) -> bool:
    """Is this gradient a hand-split MLP slice?

    Not a replicated weight, nor the bias added after the sum.
    """
    if not hasattr(par, "_split_grads"):
        par._split_grads = {id(p) for b in par.model.blocks if isinstance(b.mlp, TensorParallelMLP)
                            for n, p in b.mlp.named_parameters() if n != "down_bias"}
    return any(p.grad is grad for p in par.model.parameters() if id(p) in par._split_grads)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this rank


def state_bytes(params, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this rank holds for parameters and optimizer state (the local shards of DTensors)."""
    param = sum(_local(p).numel() * p.element_size() for p in params)
    optim = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            optim += sum(
                _local(v).numel() * v.element_size()
                for v in state.values()
                if torch.is_tensor(v) and v.dim()
            )
    return {"param": param, "optim": optim}


def full_state_dict(par: Parallel) -> dict[str, torch.Tensor]:
    """Every parameter at full size under its GPT name, on every rank.

    A collective: all ranks must call it.
    """
    if par.strategy == "pipeline":
        mine = {id(p) for p in par.module.parameters()}
        local = {n: p.detach().clone() for n, p in par.model.named_parameters() if id(p) in mine}
        gathered: list[dict] = [None] * par.env.world_size  # type: ignore[list-item]
        dist.all_gather_object(gathered, local)
        return {k: v for part in gathered for k, v in part.items()}
    out = {}
    for name, p in par.model.named_parameters():
        p = p.detach()
        if hasattr(p, "full_tensor"):
            p = p.full_tensor()  # FSDP shards and DTensor tensor-parallel weights
        out[name] = p.clone()
    if par.strategy == "tp" and any(isinstance(b.mlp, TensorParallelMLP) for b in par.model.blocks):
        out = _unsplit_tp(out, par.env.world_size)
    return out


def _unsplit_tp(state: dict[str, torch.Tensor], world: int) -> dict[str, torch.Tensor]:
    """Gather the hand-split MLP shards back into the unsplit layer's names and shapes."""
    full = {}
    for name, t in state.items():
        if ".mlp." not in name:
            full[name] = t
            continue
        if name.endswith("down_bias"):
            full[name.replace("down_bias", "down_proj.bias")] = t
            continue
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        full[name] = torch.cat(parts, dim=1 if "down_proj.weight" in name else 0)
    return full
