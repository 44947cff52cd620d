"""Check a strategy against one process: same data, same initial weights, same losses.

Introduced in chapter 9.

`verify("ddp", world_size=2, steps=5)` trains a tiny companion GPT both ways and compares the
per-step losses and the final weights; `compare_losses` is the comparison, kept pure so it can
be tested without a world.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..model import GPT, GPTConfig
from .launch import DistEnv, launch
from .wrap import clip_grad_norm, full_state_dict, shard_batch, state_bytes, wrap_model

__all__ = ["RunSpec", "tiny_config", "make_batches", "train_steps", "train_single",
           "compare_losses", "verify", "pipeline_timings"]


def tiny_config(**overrides) -> GPTConfig:
    """A GPT small enough to train in a blink on CPU.

    Untied so it can be cut into pipeline stages.
    """
    base = dict(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=2,
                tie_embeddings=False, dropout=0.0)
    return GPTConfig(**{**base, **overrides})


@dataclass
class RunSpec:
    """Everything both runs share: model config, data and optimizer settings.

    The config is a dict, so it pickles plainly.
    """

    config: dict = field(default_factory=lambda: tiny_config().to_dict())
    steps: int = 5
    batch_size: int = 8
    seq_len: int = 16
    lr: float = 3e-3
    seed: int = 1337
    n_microbatches: int = 4
    schedule: str = "1f1b"
    tp_method: str = "hand"
    # low enough to bite on the first steps, so the distributed norm is checked too
    grad_clip: float = 0.5
    inject_fault: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.n_microbatches < 1:
            raise ValueError("steps, batch_size and n_microbatches must be positive, got "
                             f"{self.steps}, {self.batch_size}, {self.n_microbatches}")
        if self.batch_size % self.n_microbatches:
            raise ValueError(f"n_microbatches={self.n_microbatches} does not divide "
                             f"batch_size={self.batch_size}")


def make_batches(spec: RunSpec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Counting sequences (t, t+1, ...) mod vocab from random starts.

    Learnable, so the losses visibly fall.
    """
    g = torch.Generator().manual_seed(spec.seed)
    vocab = spec.config["vocab_size"]
    out = []
    for _ in range(spec.steps):
        start = torch.randint(0, vocab, (spec.batch_size, 1), generator=g)
        seq = (start + torch.arange(spec.seq_len + 1)) % vocab  # (B, T + 1)
        out.append((seq[:, :-1], seq[:, 1:]))
    return out


def train_steps(rank: int, world_size: int, spec: RunSpec, strategy: str) -> dict:
    """One rank's training run (also the single-process reference with strategy "none").

    Returns losses, weights, bytes.
    """
    # the same initial weights on every rank, as a real run would broadcast
    torch.manual_seed(spec.seed)
    model = GPT(GPTConfig.from_dict(spec.config))
    env = DistEnv(rank, world_size, torch.device("cpu"))
    par = wrap_model(model, strategy, env, n_microbatches=spec.n_microbatches,
                     schedule=spec.schedule, tp_method=spec.tp_method)
    opt = torch.optim.AdamW(par.parameters(), lr=spec.lr, weight_decay=0.1)
    losses, norms = [], []
    batches = make_batches(spec)
    held_out = shard_batch(*batches[-1], env, strategy)
    # before training: the pipeline's first call may be a forward-only one
    evals = [par.eval_loss(*held_out)]
    for step, (x, y) in enumerate(batches):
        losses.append(par.forward_backward(*shard_batch(x, y, env, strategy)))
        norms.append(clip_grad_norm(par, spec.grad_clip) if spec.grad_clip > 0 else 0.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if spec.inject_fault and strategy != "none" and step == 0 and rank == 0:
            with torch.no_grad():  # a deliberate bug: rank 0's weights drift from everyone else's
                next(iter(par.parameters())).mul_(1.5)  # (a shift would vanish in LayerNorm)
        if strategy != "none":  # each rank's log shows its own view of the run
            print(f"[rank {rank}] step {step}: loss {losses[-1]:.6f}", flush=True)
    evals.append(par.eval_loss(*held_out))
    out = {"losses": losses, "grad_norms": norms, "evals": evals,
           "bytes": state_bytes(par.parameters(), opt), "weights": full_state_dict(par)}
    if par.stage is not None:
        out["events"] = par.stage.events
    return out


def train_single(spec: RunSpec) -> dict:
    """The reference: the same steps in this process, on the whole batch."""
    threads = torch.get_num_threads()
    # a model this small only loses from threads (they spin, waiting on each other)
    torch.set_num_threads(1)
    try:
        return train_steps(0, 1, spec, "none")
    finally:
        torch.set_num_threads(threads)


def compare_losses(
    reference: list[float], got: list[float], rtol: float = 1e-4, atol: float = 1e-5
) -> list[str]:
    """Mismatches between two loss curves, one line each; an empty list means they agree."""
    if len(reference) != len(got):
        return [f"{len(got)} losses against {len(reference)} in the reference"]
    return [f"step {i}: {g:.6f} vs single-process {r:.6f} (diff {abs(g - r):.2e})"
            for i, (r, g) in enumerate(zip(reference, got)) if abs(g - r) > atol + rtol * abs(r)]


def verify(
    strategy: str, world_size: int = 2, steps: int = 5, quiet: bool = False, **spec_overrides
) -> dict:
    """Run `strategy` in a world of `world_size` and the single-process reference.

    Report whether they agree.
    """
    spec = RunSpec(steps=steps, **spec_overrides)
    if strategy == "pipeline" and spec.config["n_layers"] < world_size:
        spec.config = {**spec.config, "n_layers": world_size}  # at least one block per stage
    ref = train_single(spec)
    run = launch(train_steps, world_size, spec, strategy)
    ranks = [r["losses"] for r in run.results]
    mismatches = [
        f"rank {k} {m}"
        for k, losses in enumerate(ranks)
        for m in compare_losses(ref["losses"], losses)
    ]
    # the clipped norm must be the global one, not this rank's part
    for k, result in enumerate(run.results):
        mismatches += [
            f"rank {k} gradient norm at {m}"
            for m in compare_losses(ref["grad_norms"], result["grad_norms"])
        ]
        mismatches += [
            f"rank {k} evaluation {m}" for m in compare_losses(ref["evals"], result["evals"])
        ]
    weights = run.results[0]["weights"]
    w_diff = max((weights[n] - t).abs().max().item() for n, t in ref["weights"].items())
    if w_diff > 1e-4:
        mismatches.append(f"final weights differ from single-process by up to {w_diff:.2e}")
    if not quiet:
        print(f"{strategy}, world size {world_size}, {steps} steps ({run.seconds:.1f} s)")
        print(
            f"{'step':>4} {'single':>10} "
            + " ".join(f"{'rank ' + str(k):>10}" for k in range(world_size))
        )
        for i, r in enumerate(ref["losses"]):
            print(f"{i:>4} {r:>10.6f} " + " ".join(f"{losses[i]:>10.6f}" for losses in ranks))
        print(f"largest final weight difference: {w_diff:.2e}")
        print(
            "MISMATCH:\n  " + "\n  ".join(mismatches)
            if mismatches
            else "OK: every rank matches single-process training"
        )
    return {"ok": not mismatches, "mismatches": mismatches, "reference": ref,
            "results": run.results, "logs": run.logs, "seconds": run.seconds, "spec": asdict(spec),
            "weight_diff": w_diff}


def pipeline_timings(rank: int, world_size: int, config: dict, microbatches: list[int],
                     microbatch_size: int = 4, seq_len: int = 64, schedule: str = "gpipe",
                     steps: int = 2) -> dict[int, list]:
    """One rank's pass timings for each number of micro-batches m.

    The micro-batch size stays fixed (the batch grows with m).

    Returns {m: events of the last of `steps` steps}; the first steps warm up. Run it with `launch`.
    """
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict(config))
    env = DistEnv(rank, world_size, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    out = {}
    for m in microbatches:
        par = wrap_model(model, "pipeline", env, n_microbatches=m, schedule=schedule)
        x = torch.randint(
            0, model.config.vocab_size, (m * microbatch_size, seq_len + 1), generator=g
        )
        for _ in range(steps):
            par.stage.events.clear()
            par.forward_backward(x[:, :-1], x[:, 1:])
            model.zero_grad(set_to_none=True)
        out[m] = list(par.stage.events)
    return out
