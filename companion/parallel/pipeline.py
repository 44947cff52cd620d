"""Pipeline parallelism: cut a companion GPT into stages, run GPipe or 1F1B, and time every pass.

Introduced in chapter 9.

Each rank holds a contiguous run of blocks; the first stage also holds the embeddings, the last the
final norm and the head. torch.distributed.pipelining moves activations forward and their gradients
back between stages, one micro-batch at a time. `TimedStage` stamps each forward and backward so
the schedule can be drawn.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..model import soft_cap

__all__ = ["bubble_fraction", "stage_layers", "GPTStage", "TimedStage", "Event", "measured_bubble",
           "plot_timeline", "plot_bubble"]


def bubble_fraction(n_stages: int, n_microbatches: int) -> float:
    """Idle share of a GPipe/1F1B step with equal stages: (p - 1) / (m + p - 1).

    Example: (2, 4) -> 0.2.
    """
    if n_stages < 1 or n_microbatches < 1:
        raise ValueError(f"need at least one stage and one micro-batch, got p={n_stages}, "
                         f"m={n_microbatches}")
    return (n_stages - 1) / (n_microbatches + n_stages - 1)


def stage_layers(n_layers: int, n_stages: int, stage: int) -> range:
    """The blocks stage `stage` holds.

    As even a split as possible, earlier stages get the extras.
    """
    if n_stages > n_layers:
        raise ValueError(f"{n_stages} stages need at least {n_stages} layers, the model has "
                         f"n_layers={n_layers}")
    base, extra = divmod(n_layers, n_stages)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (stage < extra))


class GPTStage(nn.Module):
    """One pipeline stage of a companion GPT: (embeddings) -> blocks[a:b] -> (norm, head)."""

    def __init__(self, model: nn.Module, stage: int, n_stages: int):
        super().__init__()
        if model.config.tie_embeddings and n_stages > 1:
            # The tied matrix would live on the first and the last stage, and its two
            # gradients would need summing.
            raise ValueError("pipeline stages need tie_embeddings=False: the tied matrix would sit "
                             "on two stages")
        self.first, self.last = stage == 0, stage == n_stages - 1
        self.tok_emb = model.tok_emb if self.first else None
        self.pos_emb = model.pos_emb if self.first else None
        self.blocks = nn.ModuleList(
            model.blocks[i] for i in stage_layers(len(model.blocks), n_stages, stage)
        )
        self.norm = model.norm if self.last else None
        self.lm_head = model.lm_head if self.last else None
        self.softcap = model.config.logit_softcap if self.last else None
        # TimedStage's stamp, if any
        self.on_embedded: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            T = x.shape[1]
            x = self.tok_emb(x)  # (B, T) ids -> (B, T, d)
            if self.pos_emb is not None:
                x = x + self.pos_emb(T)
            if self.on_embedded is not None:
                x = self.on_embedded(x)
        for block in self.blocks:
            x = block(x)  # (B, T, d): this is what travels to the next stage
        return soft_cap(self.lm_head(self.norm(x)), self.softcap) if self.last else x


@dataclass
class Event:
    """One pass of one micro-batch on one stage: kind "F" or "B", start and end in seconds."""

    stage: int
    microbatch: int
    kind: str
    start: float
    end: float


class _Stamp(torch.autograd.Function):
    """Identity that calls `hook` when the gradient flows back through it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, hook: Callable[[], None]) -> torch.Tensor:
        ctx.hook = hook
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.hook()
        return grad, None


class TimedStage(nn.Module):
    """Wrap a stage so each forward and backward is recorded as an Event.

    The schedules don't expose timings.
    """

    def __init__(self, inner: nn.Module, stage: int, n_microbatches: int):
        super().__init__()
        self.inner, self.stage, self.m = inner, stage, n_microbatches
        self.events: list[Event] = []
        self._n_forward = 0
        # Off until the first schedule step is over: that step begins with a
        # shape-finding trial pass.
        self.recording = False
        self._open: dict[int, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the trial pass, or evaluation: nothing to time
        if not (self.recording and torch.is_grad_enabled()):
            self.inner.on_embedded = None
            return self.inner(x)
        mb = self._n_forward % self.m
        self._n_forward += 1
        start = self._now()
        end_of_backward = lambda h: _Stamp.apply(h, lambda: self._backward_end(mb))  # noqa: E731
        if x.is_floating_point():
            x = end_of_backward(x)  # the gradient reaches the stage's input last: the pass is done
        else:
            # token ids carry no gradient: stamp after the embedding
            self.inner.on_embedded = end_of_backward
        y = self.inner(x)
        self.events.append(Event(self.stage, mb, "F", start, self._now()))
        # reached first in backward
        return _Stamp.apply(y, lambda: self._open.__setitem__(mb, self._now()))

    def _backward_end(self, mb: int) -> None:
        self.events.append(Event(self.stage, mb, "B", self._open.pop(mb), self._now()))

    @staticmethod
    def _now() -> float:
        # one monotonic clock shared by every process on the machine, so ranks line up
        return time.perf_counter()


def measured_bubble(events: list[Event]) -> float:
    """Idle share of the step, averaged over stages: 1 - busy time / (last end - first start)."""
    if not events:
        raise ValueError("no events to measure")
    t0, t1 = min(e.start for e in events), max(e.end for e in events)
    stages = sorted({e.stage for e in events})
    busy = [sum(e.end - e.start for e in events if e.stage == s) for s in stages]
    return 1.0 - sum(busy) / (len(stages) * (t1 - t0))


def plot_timeline(events: list[Event], title: str = ""):
    """Gantt chart: one row per stage, forward passes in blue and backward in orange.

    Labelled by micro-batch.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.6 * len({e.stage for e in events})))
    t0 = min(e.start for e in events)
    for e in events:
        color = "tab:blue" if e.kind == "F" else "tab:orange"
        ax.barh(e.stage, (e.end - e.start) * 1e3, left=(e.start - t0) * 1e3, color=color,
                edgecolor="white", height=0.8)
        ax.text((e.start - t0 + (e.end - e.start) / 2) * 1e3, e.stage, str(e.microbatch),
                ha="center", va="center", color="white", fontsize=8)
    ax.set_yticks(sorted({e.stage for e in events}))
    ax.set_yticklabels([f"stage {s}" for s in sorted({e.stage for e in events})])
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)  -  blue: forward, orange: backward, number: micro-batch")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_bubble(microbatches: list[int], measured: list[float], n_stages: int):
    """Measured bubble against (p - 1) / (m + p - 1) as the number of micro-batches grows."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ms = range(1, max(microbatches) + 1)
    ax.plot(ms, [bubble_fraction(n_stages, m) for m in ms], "-",
            label=f"theory (p-1)/(m+p-1), p={n_stages}")
    ax.plot(microbatches, measured, "o", label="measured")
    ax.set_xlabel("micro-batches m")
    ax.set_ylabel("bubble (idle share of the step)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    return fig
