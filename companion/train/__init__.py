"""Training loops.

Chapter 1 introduces `train_model`; chapter 7 grows it into `train`: AdamW with parameter
groups, warmup and cosine decay, clipping, accumulation, evaluation, logs and resumable checkpoints.

Command line (chapter 7), whose one home is companion.train_cli (this package's __main__ only
calls it, so the loop never imports its command line):

    python -m companion.train --preset shakespeare-char-5m --max-steps 200 --out runs/x
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..checkpoint import FORMAT_VERSION, rng_state, save_checkpoint, set_rng_state
from ..loader import TokenIds, random_batch
from ..moe import moe_aux_loss  # chapter 6: zero for a dense model
from ..muon import Muon, muon_param_groups
from .logs import peak_flops, throughput, write_logs
from .precision import DTYPES, autocast, choose_dtype, make_scaler
from .schedule import decay_start, keep_decay_horizon, lr_at

# companion.parallel.STRATEGIES, spelled out so that single-process training never
# imports torch.distributed
PARALLEL = ("none", "ddp", "fsdp", "pipeline", "tp")
# strategies whose ranks hold different parts of the state: they checkpoint through
# torch.distributed.checkpoint, one folder of shards beside ckpt.pt
SHARDED = ("fsdp", "pipeline", "tp")
SHARDED_DIR = "ckpt.dcp"

__all__ = ["train_model", "next_token_loss", "TrainConfig", "lr_at", "param_groups",
           "make_optimizer", "estimate_loss", "train", "make_checkpoint", "resume_state",
           "keep_decay_horizon", "NonFiniteLossError", "choose_dtype", "decay_start",
           "peak_flops"]


class NonFiniteLossError(RuntimeError):
    """A loss became inf or NaN; the run stopped before that step could reach a checkpoint."""


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (..., V) against targets (...).

    The loss of every chapter's loop.
    """
    # cross_entropy wants (N, V) logits and (N,) targets, whatever the batch shape was
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


def train_model(
    model: nn.Module,
    data_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device | str,
    epochs: int,
    *,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Minimise next-token cross-entropy.

    Returns {"step_loss": [...], "epoch_loss": [...]} for plotting.

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
            loss = next_token_loss(model(inputs), targets)
            (loss + moe_aux_loss(model)).backward()  # MoE (chapter 6): load balancing; else 0
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


# --- chapter 7: the full loop -------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Every knob of a training run, validated on construction. Introduced in chapter 7.

    The defaults follow nanoGPT's shakespeare_char recipe: lr 1e-3 decaying to 1e-4 after 100 warmup
    steps, AdamW with beta2 0.99 and weight decay 0.1, gradients clipped at norm 1.
    """

    max_steps: int = 5000
    batch_size: int = 64
    context_length: int = 256
    # micro-batches per optimizer step: the effective batch is their product
    grad_accum_steps: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    lr_decay_steps: int | None = None  # None: decay over the whole run (max_steps)
    # "cosine", or "wsd": warmup, the peak held, a straight decay over the last decay_fraction
    lr_schedule: str = "cosine"
    decay_fraction: float = 0.2  # wsd only
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 turns clipping off
    eval_interval: int = 250
    eval_iters: int = 200
    # "auto": bf16 autocast on CUDA with bf16 (capability >= 8.0), fp16 with loss scaling on
    # older CUDA (a T4), float32 elsewhere: see choose_dtype
    dtype: str = "auto"
    compile: bool = False
    seed: int = 1337
    val_fraction: float = 0.1
    # a name registered in companion.data, or a path to a UTF-8 text file
    dataset: str = "tinyshakespeare"
    # chapter 9: a companion.parallel strategy; run under torchrun for anything else
    parallel: str = "none"
    microbatches: int = 4  # pipeline only: micro-batches per batch
    schedule: str = "1f1b"  # pipeline only: "1f1b" or "gpipe"
    # chapter 7's race: "muon" orthogonalises the hidden matrices' momentum (companion.muon) at
    # muon_lr, the peak of their own schedule; embeddings, head and norms keep AdamW at lr
    optimizer: str = "adamw"
    muon_lr: float = 0.02
    muon_ns_steps: int = 5  # Newton–Schulz iterations per Muon step

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "context_length", "grad_accum_steps",
                     "eval_interval", "eval_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        # A run shorter than its warmup is fine (a quick try: all warmup); a decay
        # set shorter is a mistake.
        if self.lr_decay_steps is not None and self.lr_decay_steps < self.warmup_steps:
            raise ValueError(f"lr_decay_steps={self.lr_decay_steps} is shorter than "
                             f"warmup_steps={self.warmup_steps}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"weight_decay and grad_clip must be >= 0, got {self.weight_decay} "
                             f"and {self.grad_clip}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(
                f"betas must lie in [0, 1), got beta1={self.beta1}, beta2={self.beta2}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.lr_schedule not in ("cosine", "wsd") or not 0 < self.decay_fraction <= 1:
            raise ValueError("need lr_schedule 'cosine' or 'wsd' and 0 < decay_fraction <= 1, got "
                             f"{self.lr_schedule!r}, {self.decay_fraction}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel must be one of {PARALLEL}, got {self.parallel!r}")
        if self.microbatches < 1 or self.schedule not in ("1f1b", "gpipe"):
            raise ValueError("need microbatches >= 1 and schedule '1f1b' or 'gpipe', got "
                             f"{self.microbatches}, {self.schedule!r}")
        if self.optimizer not in ("adamw", "muon") or not self.muon_lr > 0 \
                or self.muon_ns_steps < 1:
            raise ValueError("need optimizer 'adamw' or 'muon', muon_lr > 0 and muon_ns_steps >= 1,"
                             f" got {self.optimizer!r}, {self.muon_lr}, {self.muon_ns_steps}")
        if self.optimizer == "muon" and self.parallel not in ("none", "ddp"):
            raise ValueError(f"optimizer='muon' needs whole matrices: parallel 'none' or 'ddp', "
                             f"got {self.parallel!r} (pass optimizer='adamw', --optimizer=adamw)")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must lie strictly between 0 and 1, got "
                             f"{self.val_fraction}")

    @property
    def decay_steps(self) -> int:
        """The step at which the schedule reaches min_lr."""
        return self.max_steps if self.lr_decay_steps is None else self.lr_decay_steps

    @property
    def tokens_per_step(self) -> int:
        """Tokens seen by one optimizer step: batch_size * context_length * grad_accum_steps."""
        return self.batch_size * self.context_length * self.grad_accum_steps

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, safe to store in a weights_only checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are an error."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {unknown}")
        return cls(**d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices; none on biases, norms and embeddings.

    Introduced in chapter 7.

    Decay pulls weights toward zero; a norm's scale should stay near 1, a bias has no scale to
    limit, and an embedding row of a rare token would shrink between its rare updates.
    """
    no_decay: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            # Class names catch RMSNorm and any other home-made norm; a tied lm_head
            # weight is the embedding's.
            if (
                name == "bias"
                or isinstance(module, nn.Embedding)
                or "Norm" in type(module).__name__
                or p.ndim < 2
            ):
                no_decay.add(id(p))
    # parameters() yields a tied matrix once
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over `param_groups` (or Muon, cfg.optimizer), with the config's betas.

    The loop sets each group's lr every step, times the group's "lr_scale" (Muon's groups).

    The fused implementation (one kernel for all tensors) where PyTorch has it: plain float
    parameters on CPU or CUDA. Sharded parameters (chapter 9's DTensors) get
    the default implementation.
    """
    if cfg.optimizer == "muon":
        groups = muon_param_groups(model, lr=cfg.lr, muon_lr=cfg.muon_lr,
                                   weight_decay=cfg.weight_decay)
        for g in groups:
            g["lr"] = lr_at(0, cfg) * g["lr_scale"]
        return Muon(groups, betas=(cfg.beta1, cfg.beta2), ns_steps=cfg.muon_ns_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and all(
        type(p) is nn.Parameter
        and p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
        for p in params
    )
    # For-loop AdamW launches a dozen small ops per tensor: on a small model that
    # is a tenth of a CPU step.
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr_at(0, cfg),
                             betas=(cfg.beta1, cfg.beta2), fused=fused)


@torch.no_grad()
def estimate_loss(model: nn.Module, ids: TokenIds, cfg: TrainConfig, device: torch.device | str,
                  seed: int | None = None) -> float:
    """Mean loss over cfg.eval_iters random batches.

    The same seed draws the same batches, so evaluations compare.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(cfg.seed + 1 if seed is None else seed)
    total = 0.0
    for _ in range(cfg.eval_iters):
        x, y = random_batch(ids, cfg.batch_size, cfg.context_length, g)
        with autocast(device, choose_dtype(device, cfg.dtype)):
            total += next_token_loss(model(x.to(device)), y.to(device)).item()
    model.train(was_training)
    return total / cfg.eval_iters


def _model_config(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else None


def make_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int,
                    history: dict[str, list], batch_generator: torch.Generator,
                    extra: dict[str, Any] | None = None,
                    weights: dict[str, torch.Tensor] | None = None, sharded: str | None = None,
                    scaler: torch.amp.GradScaler | None = None) -> dict[str, Any]:
    """Everything a run needs to continue exactly: a plain dict for `save_checkpoint`.

    Introduced in chapter 7.

    A parallel run passes `weights` gathered from its ranks. Its optimizer state is in the dict
    only where every rank holds all of it (none, ddp); a sharded run (fsdp, pipeline, tp) names
    instead the folder, beside the file, where torch.distributed.checkpoint wrote each rank's
    shards of weights and optimizer state (`sharded`).
    """
    # torch.compile wraps the module; save the original's names
    model = getattr(model, "_orig_mod", model)
    whole_optimizer = cfg.parallel in ("none", "ddp")
    return {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict() if weights is None else weights,
        "optimizer": optimizer.state_dict() if whole_optimizer else None,
        "sharded": sharded,
        # fp16's loss scale; None where no scaler runs
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "model_config": _model_config(model),
        "train_config": cfg.to_dict(),
        "step": step,
        # the schedule's end, kept on resume (see keep_decay_horizon)
        "decay_steps": cfg.decay_steps,
        "history": {k: list(v) for k, v in history.items()},
        "rng": rng_state(batch_generator),
        **(extra or {}),
    }


def resume_state(checkpoint: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                 batch_generator: torch.Generator, *, par: Any = None,
                 scaler: torch.amp.GradScaler | None = None) -> tuple[int, dict[str, list]]:
    """Load a checkpoint's weights, optimizer and RNG states in place; returns (step, history).

    A sharded checkpoint's "sharded" must be the path of its shards' folder (the command line
    resolves it beside the file), and `par` the run's companion.parallel wrapper.
    """
    saved = TrainConfig.from_dict(checkpoint["train_config"]).parallel
    # first: a sharded checkpoint then restores each rank's own torch stream over rank 0's
    set_rng_state(checkpoint["rng"], batch_generator)
    if checkpoint.get("sharded") is not None:
        if par is None or par.strategy != saved:
            raise ValueError(f"this checkpoint was saved in shards by parallel={saved!r}: resume "
                             "it with the same strategy and world size")
        from ..parallel import loop

        loop.load_sharded(par, optimizer, checkpoint["sharded"], checkpoint["step"])
    elif checkpoint["optimizer"] is None:
        raise ValueError("this checkpoint holds no optimizer state (best.pt of a sharded run, or "
                         "an old one): it cannot resume exactly; resume from ckpt.pt")
    else:
        getattr(model, "_orig_mod", model).load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler is not None and scaler.is_enabled() and checkpoint.get("scaler") is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    return checkpoint["step"], {k: list(v) for k, v in checkpoint["history"].items()}


def train(
    model: nn.Module,
    train_ids: TokenIds,
    val_ids: TokenIds,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    *,
    out_dir: str | Path | None = None,
    resume: dict[str, Any] | None = None,
    stop_at: int | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, list]:
    """Train `model` for cfg.max_steps optimizer steps on random batches of train_ids.

    Returns the history.

    history: per step "lr", "train_loss", "grad_norm" (before clipping); per evaluation (at step 0,
    every eval_interval, and the end) "eval_step", "eval_train", "eval_val", "elapsed" seconds,
    "tokens_per_s" of training since the previous evaluation and "mfu" (None where the device's
    peak is unknown, e.g. a CPU, and at step 0). With
    out_dir, each evaluation also writes ckpt.pt (the latest weights), log.csv and log.json there,
    and best.pt when its validation loss is the lowest so far (chapter 7 samples from the model as
    the loop leaves it, the weights of ckpt.pt; the command line samples from best.pt). `resume`
    is a loaded checkpoint (its decay horizon is kept: `keep_decay_horizon`; a sharded one's
    folder resolved by companion.checkpoint.resolve_sharded); `stop_at` ends early
    as if interrupted (the schedule still runs to max_steps). A non-finite loss raises
    NonFiniteLossError and leaves the last good checkpoints as they were.
    `extra` goes into every checkpoint (e.g. the tokenizer). Introduced in chapter 7; cfg.parallel
    (chapter 9) runs it under torchrun, one process per rank, with logs and checkpoints written by
    rank 0 only.
    """
    device = torch.device(device)
    model.to(device)
    model.train()
    cfg_model = getattr(model, "config", None)
    if (
        cfg_model is not None
        and getattr(cfg_model, "context_length", cfg.context_length) < cfg.context_length
    ):
        raise ValueError(f"context_length={cfg.context_length} exceeds the model's "
                         f"{cfg_model.context_length}")
    if resume is not None:
        cfg = keep_decay_horizon(cfg, resume)
    # CUDA ranks share the capability of the device asked for
    dtype = choose_dtype(device, cfg.dtype)
    if dtype == "float16" and cfg.parallel not in ("none", "ddp"):
        raise ValueError(f"dtype float16 (loss scaling) is supported single-process and with ddp, "
                         f"not {cfg.parallel!r}: use bfloat16 or float32")
    par, is_main = None, True
    if cfg.parallel != "none":
        # torch.distributed only when asked for
        from ..parallel import clip_grad_norm, loop, shard_batch

        env, par, owned = loop.start(model, cfg, device)
        device, is_main, progress = env.device, env.is_main, progress and env.is_main
    # on for fp16 only: a no-op pass-through otherwise
    scaler = make_scaler(device, dtype)
    # a pipeline stage holds its own blocks
    optimizer = make_optimizer(model if par is None else par.module, cfg)
    # the batch sampler's own stream, saved in checkpoints
    gen = torch.Generator().manual_seed(cfg.seed)
    history: dict[str, list] = {"lr": [], "train_loss": [], "grad_norm": [], "eval_step": [],
                                "eval_train": [], "eval_val": [], "elapsed": [],
                                "tokens_per_s": [], "mfu": []}
    step = 0
    if resume is not None:
        # ddp: every rank loads the same state; fsdp, pipeline, tp: each its own shard
        step, history = resume_state(resume, model, optimizer, gen, par=par, scaler=scaler)
        for key in ("grad_norm", "tokens_per_s", "mfu"):  # older checkpoints lack them
            history.setdefault(key, [])
    else:
        torch.manual_seed(cfg.seed)  # dropout masks repeat too
    if par is not None and resume is None:
        # Each rank draws its own dropout masks, as a real run does; rank 0 those of one process.
        # A sharded resume restores each rank's stream; ddp's checkpoint holds rank 0's only.
        torch.manual_seed(cfg.seed + env.rank)
    end = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
    forward = torch.compile(model) if cfg.compile else model
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and is_main:
        out.mkdir(parents=True, exist_ok=True)
    resumed_at = history["elapsed"][-1] if history["elapsed"] else 0.0
    t0 = time.perf_counter() - resumed_at

    saved = [resume["step"] if resume is not None else None]  # the last good checkpoint's step
    peak = peak_flops(device)
    n_devices = torch.distributed.get_world_size() if par is not None else 1
    # training time and steps since the last evaluation, for tokens/s without the evaluations
    since = {"seconds": 0.0, "steps": 0}

    def evaluate() -> None:
        losses = {key: estimate_loss(forward, ids, cfg, device) if par is None
                  else loop.estimate_loss_parallel(par, ids, cfg)
                  for key, ids in (("eval_train", train_ids), ("eval_val", val_ids))}
        if not all(map(math.isfinite, losses.values())):
            stop(f"step {step}: the evaluation loss is {losses['eval_val']}")
        history["eval_step"].append(step)
        for key, loss in losses.items():
            history[key].append(loss)
        history["elapsed"].append(time.perf_counter() - t0)
        tok_s, util = (None, None) if not since["steps"] else throughput(
            model, cfg, cfg.tokens_per_step * since["steps"], since["seconds"], peak, n_devices)
        history["tokens_per_s"].append(tok_s)
        history["mfu"].append(util)
        since.update(seconds=0.0, steps=0)
        checkpoint(best=losses["eval_val"] <= min(history["eval_val"]))
        if out is not None and is_main:
            write_logs(out, history)

    def checkpoint(best: bool = False) -> None:
        if out is None:
            return
        sharded = None
        if par is not None and cfg.parallel in SHARDED:
            # each rank writes its own shards of weights and optimizer state (a collective)
            sharded = loop.save_sharded(par, optimizer, out / SHARDED_DIR, step)
        # full_weights is a collective: every rank calls it
        ckpt = make_checkpoint(model, optimizer, cfg, step, history, gen, extra,
                               weights=None if par is None else loop.full_weights(par),
                               sharded=sharded, scaler=scaler)
        if is_main:
            save_checkpoint(out / "ckpt.pt", ckpt)
            if best:  # the weights to keep when the run goes on to over-fit
                # best.pt's step has no shards of its own: it samples, it does not resume
                save_checkpoint(out / "best.pt", {**ckpt, "sharded": None})
        if par is not None:
            # no rank goes on (or reads ckpt.pt back) before rank 0 has written it
            torch.distributed.barrier()
        saved[0] = step

    def stop(what: str) -> None:
        if par is not None:
            loop.finish(owned)
        kept = ("" if out is None or saved[0] is None
                else f"; the last good checkpoint, {out / 'ckpt.pt'} (step {saved[0]}), is kept")
        raise NonFiniteLossError(f"{what}: training diverged and stopped{kept}. Try a lower lr "
                                 "or a smaller grad_clip")

    if step == 0 and not history["eval_step"]:
        evaluate()  # the untrained model: about ln(vocab_size)
    bar = tqdm(range(step, end), initial=step, total=end, desc="train", disable=not progress)
    for step in bar:
        t_step = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        # a tensor on the device: no host sync per micro-batch, one per step (below)
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum_steps):
            x, y = random_batch(train_ids, cfg.batch_size, cfg.context_length, gen)
            x, y = x.to(device), y.to(device)
            # every rank drew the same batch; each runs its share, the loss is the whole batch's
            if par is not None:
                # only the last micro-batch all-reduces the gradients: the others add them up
                # locally, as one process would
                with autocast(device, dtype):
                    loss_sum += par.forward_backward(
                        *shard_batch(x, y, env, cfg.parallel), scale=1 / cfg.grad_accum_steps,
                        sync=micro == cfg.grad_accum_steps - 1, reduce=False)
                continue
            with autocast(device, dtype):
                loss = next_token_loss(forward(x), y)
            # Dividing by the number of micro-batches makes the summed gradients their mean:
            # accumulating k batches of B gives the gradient of one batch of k*B. The scaler
            # multiplies fp16's loss up so that small gradients do not underflow (else x1).
            # MoE (chapter 6): the routers' load-balancing loss joins the gradient, not the log.
            scaler.scale((loss + moe_aux_loss(model)) / cfg.grad_accum_steps).backward()
            loss_sum += loss.detach()
        if par is not None:
            loss_sum = par.global_loss(loss_sum)
        # unscale before measuring and clipping: the norm is the true gradient's
        scaler.unscale_(optimizer)
        # the norm before clipping, logged; an infinite limit measures without clipping
        limit = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        if par is not None:
            # the norm of the whole gradient, summed across the ranks' parts
            norm = torch.as_tensor(clip_grad_norm(par, limit), dtype=torch.float32)
        else:
            norm = nn.utils.clip_grad_norm_(model.parameters(), limit)
        # the step's one host sync: loss and norm together
        train_loss, grad_norm = torch.stack(
            [loss_sum.float() / cfg.grad_accum_steps, norm.float().to(loss_sum.device)]).tolist()
        if not math.isfinite(train_loss):
            stop(f"step {step + 1}: the training loss is {train_loss}")
        # fp16: skips the update when a gradient overflowed (and lowers the scale)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1  # from here on, `step` counts completed optimizer steps
        history["lr"].append(lr)
        history["train_loss"].append(train_loss)
        history["grad_norm"].append(grad_norm)
        since["seconds"] += time.perf_counter() - t_step
        since["steps"] += 1
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            evaluate()
            bar.set_postfix(train=f"{history['eval_train'][-1]:.3f}",
                            val=f"{history['eval_val'][-1]:.3f}",
                            tok_s=f"{history['tokens_per_s'][-1]:,.0f}")
    bar.close()
    if (
        out is not None
        and step < cfg.max_steps
        and (not history["eval_step"] or history["eval_step"][-1] != step)
    ):
        # Stopped early: save where we are, without an evaluation, so a resumed run's history
        # matches an uninterrupted one entry for entry.
        checkpoint()
    if par is not None:
        loop.finish(owned)
    return history
