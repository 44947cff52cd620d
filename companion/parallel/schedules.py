"""Pipeline schedules on paper: GPipe, 1F1B and interleaved 1F1B, their timelines and bubbles.

Introduced in chapter 9.

A schedule is one list of `Op`s per device, in the order that device runs them. `simulate` plays it
with fixed pass times and free sends, respecting the pipeline's dependencies, and returns the same
`Event`s that `TimedStage` measures, so `plot_timeline` and `measured_bubble` work on both.
"""
from __future__ import annotations

from dataclasses import dataclass

from .pipeline import Event, bubble_fraction, measured_bubble

__all__ = ["Op", "gpipe_schedule", "one_f_one_b_schedule", "interleaved_schedule", "simulate",
           "interleaved_bubble", "zero_bubble_fraction", "peak_in_flight", "plot_schedules"]


@dataclass(frozen=True)
class Op:
    """One pass: kind "F" or "B", of micro-batch `microbatch`, through model chunk `chunk`."""

    kind: str
    microbatch: int
    chunk: int = 0


def _check(p: int, m: int, v: int = 1) -> None:
    if p < 1 or m < 1 or v < 1:
        raise ValueError(f"need p, m and v >= 1, got p={p}, m={m}, v={v}")


def gpipe_schedule(p: int, m: int) -> list[list[Op]]:
    """Every forward, then every backward (last micro-batch first), on each of p stages."""
    _check(p, m)
    return [[Op("F", i) for i in range(m)] + [Op("B", i) for i in reversed(range(m))]
            for _ in range(p)]


def one_f_one_b_schedule(p: int, m: int) -> list[list[Op]]:
    """1F1B: stage s runs p - s - 1 warm-up forwards, then alternates F and B, then drains.

    Example: one_f_one_b_schedule(2, 2)[1] -> [F0, B0, F1, B1].
    """
    _check(p, m)
    stages = []
    for s in range(p):
        warm = min(p - s - 1, m)
        ops = [Op("F", i) for i in range(warm)]
        for i in range(m - warm):  # steady state: one forward, one backward
            ops += [Op("F", warm + i), Op("B", i)]
        ops += [Op("B", i) for i in range(m - warm, m)]
        stages.append(ops)
    return stages


def interleaved_schedule(p: int, m: int, v: int) -> list[list[Op]]:
    """Megatron's interleaved 1F1B: device d holds chunks d, d + p, ...; v chunks each.

    Micro-batches go through in groups of p, chunk by chunk, so m must be a multiple of p.
    """
    _check(p, m, v)
    if m % p:
        raise ValueError(f"interleaving needs m a multiple of p, got m={m}, p={p}")
    total = m * v

    def op(kind: str, k: int) -> Op:
        group, within = divmod(k, p * v)
        chunk = within // p
        return Op(kind, group * p + within % p, chunk if kind == "F" else v - 1 - chunk)

    stages = []
    for d in range(p):
        # enough forwards in flight that the first backward finds its input ready
        warm = total if m == p else min((p - d - 1) * 2 + (v - 1) * p, total)
        ops = [op("F", k) for k in range(warm)]
        for k in range(total - warm):
            ops += [op("F", warm + k), op("B", k)]
        ops += [op("B", k) for k in range(total - warm, total)]
        stages.append(ops)
    return stages


def simulate(schedule: list[list[Op]], t_f: float = 1.0, t_b: float = 2.0) -> list[Event]:
    """Run a schedule with forward time t_f and backward time t_b per chunk; sends are free.

    Device d's chunk c is virtual stage c * p + d: F there needs F at the stage before, B needs B
    at the stage after (the last stage's B needs its own F). Raises ValueError on a deadlock.
    """
    p = len(schedule)
    n_virtual = p * (1 + max(op.chunk for ops in schedule for op in ops))
    done: dict[tuple[str, int, int], float] = {}
    pos, free, events = [0] * p, [0.0] * p, []
    while any(pos[d] < len(schedule[d]) for d in range(p)):
        progressed = False
        for d in range(p):
            while pos[d] < len(schedule[d]):
                op = schedule[d][pos[d]]
                vs = op.chunk * p + d
                if op.kind == "F":
                    dep = ("F", op.microbatch, vs - 1) if vs > 0 else None
                else:
                    dep = ("B", op.microbatch, vs + 1) if vs < n_virtual - 1 else (
                        "F", op.microbatch, vs)
                if dep is not None and dep not in done:
                    break
                start = max(free[d], done[dep] if dep else 0.0)
                free[d] = start + (t_f if op.kind == "F" else t_b)
                done[(op.kind, op.microbatch, vs)] = free[d]
                events.append(Event(d, op.microbatch, op.kind, start, free[d]))
                pos[d] += 1
                progressed = True
        if not progressed:
            stuck = {d: schedule[d][pos[d]] for d in range(p) if pos[d] < len(schedule[d])}
            raise ValueError(f"the schedule deadlocks: each device waits on another, at {stuck}")
    return events


def peak_in_flight(ops: list[Op]) -> int:
    """Most forwards on one device whose backward has not run yet: the activations it holds."""
    live = peak = 0
    for op in ops:
        live += 1 if op.kind == "F" else -1
        peak = max(peak, live)
    return peak


def interleaved_bubble(p: int, m: int, v: int) -> float:
    """Idle share of an interleaved 1F1B step: (p - 1) / (v*m + p - 1).

    Narayanan et al. 2021 quote bubble over busy time, (p - 1) / (v*m); this is bubble over the
    step, which for v = 1 is GPipe's (p - 1) / (m + p - 1). Example: (4, 8, 2) -> 3/19.
    """
    _check(p, m, v)
    return (p - 1) / (v * m + p - 1)


def zero_bubble_fraction(p: int, m: int, variant: str = "zb-h1") -> float:
    """Idle share of Qi et al.'s zero-bubble schedules, with F, B and W passes of equal length.

    The backward splits into B (input gradient, on the critical path) and W (weight gradient,
    free to move into the bubble). ZB-H1 keeps 1F1B's memory and idles (p - 1)(t_F + t_B - t_W):
    a third of 1F1B's (p - 1)(t_F + t_B + t_W). ZB-H2 spends more memory and idles about zero.
    Example: zero_bubble_fraction(4, 8, "1f1b") -> 3/11, as bubble_fraction(4, 8).
    """
    _check(p, m)
    if variant == "1f1b":
        return bubble_fraction(p, m)
    if variant == "zb-h1":
        return (p - 1) / (3 * m + p - 1)  # bubble (p - 1) slots of the 3m busy ones
    if variant == "zb-h2":
        return 0.0
    raise ValueError(f"variant must be '1f1b', 'zb-h1' or 'zb-h2', got {variant!r}")


def plot_schedules(schedules: dict[str, list[list[Op]]], t_f: float = 1.0, t_b: float = 2.0):
    """One timeline per schedule, stacked, on a shared time axis in units of one forward.

    For a schedule with v chunks per device, each pass is 1/v as long. Lighter bars: later chunks.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(schedules), 1, sharex=True,
                             figsize=(9, 0.5 + 0.45 * sum(len(s) for s in schedules.values())))
    for ax, (title, sched) in zip(list(getattr(axes, "flat", [axes])), schedules.items()):
        v = 1 + max(op.chunk for ops in sched for op in ops)
        events = simulate(sched, t_f / v, t_b / v)
        chunks = [op.chunk for d in range(len(sched)) for op in sched[d]]
        order = [e for d in range(len(sched)) for e in events if e.stage == d]
        for e, c in zip(order, chunks):
            color = "tab:blue" if e.kind == "F" else "tab:orange"
            ax.barh(e.stage, e.end - e.start, left=e.start, color=color, alpha=1 - 0.45 * c / v,
                    edgecolor="white", height=0.8)
            ax.text((e.start + e.end) / 2, e.stage, str(e.microbatch), ha="center", va="center",
                    color="white", fontsize=7)
        ax.set_yticks(range(len(sched)))
        ax.set_yticklabels([f"GPU {d}" for d in range(len(sched))], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{title}: bubble {measured_bubble(events):.2f}", fontsize=9)
    ax.set_xlabel("time (forward passes)  -  blue: forward, orange: backward, number: micro-batch")
    fig.tight_layout()
    return fig
