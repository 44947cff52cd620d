"""Figures shared by the chapters. Each helper returns a matplotlib Figure and never saves files."""
from __future__ import annotations

from collections.abc import Sequence

import html

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

__all__ = ["show_char", "plot_bigram_counts", "plot_loss", "plot_train_val", "TokenView",
           "plot_attention", "plot_sampling"]


def show_char(c: str) -> str:
    """A printable label for a character: newline and space get names."""
    return {"\n": "\\n", " ": "␣", "\t": "\\t"}.get(c, c)


def plot_bigram_counts(
    counts: torch.Tensor, itos: Sequence[str], chars: str | None = None
) -> Figure:
    """Heatmap of bigram counts, rows = current character, columns = next character.

    `chars` picks a readable subset (default: space, newline and a-z).
    """
    chars = chars if chars is not None else " \n" + "abcdefghijklmnopqrstuvwxyz"
    stoi = {c: i for i, c in enumerate(itos)}
    keep = [stoi[c] for c in chars if c in stoi]
    sub = counts[keep][:, keep].float()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(torch.log1p(sub), cmap="Blues")
    labels = [show_char(itos[i]) for i in keep]
    ax.set_xticks(range(len(keep)), labels, fontsize=8)
    ax.set_yticks(range(len(keep)), labels, fontsize=8)
    ax.set_xlabel("next character")
    ax.set_ylabel("current character")
    fig.colorbar(im, ax=ax, label="log(1 + count)", shrink=0.8)
    fig.tight_layout()
    return fig


def plot_loss(
    history: dict[str, list[float]],
    reference: dict[str, float] | None = None,
    steps_per_epoch: int | None = None,
) -> Figure:
    """Training loss per step, with optional horizontal reference lines (label -> loss)."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(history["step_loss"], lw=1, alpha=0.8, label="train loss (per step)")
    if steps_per_epoch and history.get("epoch_loss"):
        xs = [steps_per_epoch * (i + 1) - 1 for i in range(len(history["epoch_loss"]))]
        ax.plot(xs, history["epoch_loss"], "o", label="epoch mean")
    for i, (label, value) in enumerate((reference or {}).items()):
        ax.axhline(value, ls="--", color=f"C{i + 2}", label=f"{label} ({value:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


class TokenView:
    """Text cut into tokens: alternating colours in a notebook, `|` between tokens in plain text.

    Example: TokenView(["Hel", "lo"]) prints as Hel|lo. Introduced in chapter 3.
    """

    COLOURS = ("#cfe8fc", "#fde2c8", "#d7f5d0", "#f6d0ec", "#fff4b8")

    def __init__(self, pieces: Sequence[str], ids: Sequence[int] | None = None):
        self.pieces, self.ids = list(pieces), None if ids is None else list(ids)

    def __repr__(self) -> str:
        return "|".join(self.pieces)

    def _repr_html_(self) -> str:
        spans = []
        for i, piece in enumerate(self.pieces):
            title = f' title="id {self.ids[i]}"' if self.ids is not None else ""
            text = html.escape(piece).replace(" ", "&nbsp;").replace("\n", "&#8629;<br>")
            spans.append(f'<span style="background:{self.COLOURS[i % len(self.COLOURS)]};'
                         f'border-radius:3px;padding:0 1px"{title}>{text}</span>')
        return ('<div style="font-family:monospace;line-height:1.9;white-space:normal">'
                f'{"".join(spans)}<br><small>{len(self.pieces)} tokens</small></div>')


def plot_attention(
    weights: torch.Tensor,
    tokens: Sequence[str],
    title: str = "",
    highlight: int | None = None,
    ax=None,
) -> Figure:
    """Heatmap of one head's (T, T) attention weights.

    Row = query token, column = key token it reads.

    `highlight` outlines one query row, as the chapter 5 explorer does. Introduced in chapter 5.
    """
    w = torch.as_tensor(weights).detach().float().cpu()
    if w.ndim != 2 or w.shape[0] != len(tokens) or w.shape[1] != len(tokens):
        raise ValueError(f"expected ({len(tokens)}, {len(tokens)}) weights for {len(tokens)} "
                         f"tokens, got {tuple(w.shape)}")
    if ax is None:
        size = min(7.0, 2.5 + 0.22 * len(tokens))
        fig, ax = plt.subplots(figsize=(size + 1, size))
    else:
        fig = ax.figure
    im = ax.imshow(w, cmap="Blues", vmin=0, vmax=1)
    labels = [show_char(t) if len(t) == 1 else t for t in tokens]
    ax.set_xticks(range(len(tokens)), labels, fontsize=8, family="monospace")
    ax.set_yticks(range(len(tokens)), labels, fontsize=8, family="monospace")
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if highlight is not None:
        ax.add_patch(
            plt.Rectangle((-0.5, highlight - 0.5), len(tokens), 1, fill=False, ec="C3", lw=2)
        )
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8, label="weight")
    fig.tight_layout()
    return fig


def plot_train_val(
    history: dict[str, list[float]],
    reference: dict[str, float] | None = None,
    title: str | None = None,
) -> Figure:
    """Training loss per step (faint), evaluated train and val losses, reference levels (dashed).

    `history` is what companion.train.train returns. Introduced in chapter 7.
    """
    fig, ax = plt.subplots(figsize=(7, 3.8))
    steps = range(1, len(history["train_loss"]) + 1)
    ax.plot(
        steps, history["train_loss"], lw=0.8, alpha=0.3, color="C0", label="train loss (one batch)"
    )
    ax.plot(history["eval_step"], history["eval_train"], "o-", color="C0", ms=3,
            label="train loss (evaluated)")
    ax.plot(history["eval_step"], history["eval_val"], "s-", color="C1", ms=3,
            label="val loss (evaluated)")
    for i, (label, value) in enumerate((reference or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{i + 2}", label=f"{label} ({value:.2f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_sampling(
    stages: dict[str, torch.Tensor], labels: Sequence[str] | None = None, n_show: int = 15,
    title: str | None = None,
) -> Figure:
    """Bars of the next-token distribution after each sampling step, one row per step.

    `stages` is what companion.generate.sampling_stages returns; the n_show tokens the model finds
    likeliest are drawn, likeliest first, and a filtered-out token is an empty bar. Chapter 6.
    """
    first = next(iter(stages.values()))
    order = first.argsort(descending=True)[:n_show]
    names = [show_char(labels[i]) if labels is not None else str(int(i)) for i in order.tolist()]
    fig, axes = plt.subplots(len(stages), 1, figsize=(7, 1.3 * len(stages) + 0.6), sharex=True,
                             sharey=True)
    axes = [axes] if len(stages) == 1 else list(axes)
    for i, (ax, (stage, probs)) in enumerate(zip(axes, stages.items())):
        shown = probs[order].tolist()
        kept = int((probs > 0).sum())
        ax.bar(range(len(shown)), shown, color=[f"C{i}" if p > 0 else "0.85" for p in shown])
        ax.text(0.99, 0.9, f"{stage}: {kept} token{'s' * (kept != 1)} left", ha="right",
                va="top", transform=ax.transAxes, fontsize=9)
        ax.set_ylabel("p", rotation=0, labelpad=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(names)), names, fontsize=8)
    axes[-1].set_xlabel(f"the {len(names)} likeliest next tokens, as the model ranks them")
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    return fig
