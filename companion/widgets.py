"""ipywidgets that turn one knob, each with a static default for pages that have no kernel.

Each widget wraps a pure function. Its first call, at the default settings, is recorded, and the
widget is returned inside a `LiveView`: a kernel shows the live widget, while the static HTML and
the PDF show the recorded output (the book's _config.yml drops the widget-view mime type, which
has no kernel to drive it). Example: interactive(show, rows=IntSlider(6, 1, 32)).
"""
from __future__ import annotations

import base64
import html
import io
import sys
from typing import Any, Callable

from torch import nn

from .generate import generate_text
from .tokenizer import Tokenizer

__all__ = ["LiveView", "attention_explorer", "interactive", "temperature_sampler", "sampler",
           "sizing_calculator", "merge_stepper", "tokenizer_playground"]

VIEW = "application/vnd.jupyter.widget-view+json"


class _Recorder(list):
    """A stdout that keeps printed text and displayed objects in the order they came."""

    def write(self, s: str) -> int:
        s = s.replace("\033[2K\r", "")  # clear_output outside IPython prints this
        if self and isinstance(self[-1], str):
            self[-1] += s
        else:
            self.append(s)
        return len(s)

    def flush(self) -> None:
        pass


def _record(fn: Callable[[], Any]) -> tuple[Any, list]:
    """Run fn, returning its result and what it printed (str) and displayed (IPython outputs)."""
    try:
        from IPython.core.displaypub import CapturingDisplayPublisher
        from IPython.core.getipython import get_ipython
        shell = get_ipython()
    except ImportError:
        shell = None
    rec, stdout = _Recorder(), sys.stdout
    publisher = getattr(shell, "display_pub", None)
    try:
        sys.stdout = rec
        if shell is not None:
            class Publisher(CapturingDisplayPublisher):
                def set_parent(self, parent) -> None:  # ipywidgets' Output calls the kernel's
                    pass

            shell.display_pub = Publisher()
            shell.display_pub.outputs = rec  # displays land in the same list as prints
        result = fn()
    finally:
        sys.stdout = stdout
        if shell is not None:
            shell.display_pub = publisher
    return result, list(rec)


def _text(item) -> str:
    """The plain text of a recorded item; figures have none worth showing."""
    if isinstance(item, str):
        return item
    return "" if "image/png" in item["data"] else item["data"].get("text/plain", "")


def _png_with_text(pngs: list[bytes], text: str) -> bytes:
    """One PNG for the PDF: the recorded figures stacked, the printed text below them."""
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    images = [mpimg.imread(io.BytesIO(p), format="png") for p in pngs]
    lines = text.rstrip("\n").splitlines()
    width = max([im.shape[1] for im in images] + [1]) / 100
    heights = [im.shape[0] / 100 for im in images] + ([0.17 * len(lines) + 0.2] if lines else [])
    fig, axes = plt.subplots(len(heights), 1, figsize=(width, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights}, dpi=100)
    for ax, im in zip(axes[:, 0], images):
        ax.imshow(im)
    if lines:
        axes[-1, 0].text(0.01, 1, "\n".join(lines), va="top", family="monospace", fontsize=9,
                         transform=axes[-1, 0].transAxes)
    for ax in axes[:, 0]:
        ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1, hspace=0)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


class LiveView:
    """A widget and its recorded default: live in a kernel, the default on a static page.

    Example: LiveView(widget, ["T = 1.00\\nsome text"]) shows that text in the HTML and PDF.
    """

    def __init__(self, widget, recorded: list):
        self.widget, self.recorded = widget, recorded

    def __getattr__(self, name: str) -> Any:
        # public names are the widget's: view.children, view.observe(...); private ones (IPython's
        # _repr_*_ and _ipython_display_ probes among them) stay this object's own
        if name in ("widget", "recorded") or name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.widget, name)

    def __repr__(self) -> str:
        return self._plain() or f"<LiveView of a figure: {type(self.widget).__name__}>"

    def _plain(self) -> str:
        """What the default printed, and the text of what it displayed, figures left out."""
        return "".join(_text(item) for item in self.recorded).rstrip("\n")

    def _static(self) -> dict[str, Any]:
        """text/plain, text/html and (for a figure) image/png of the recorded default."""
        parts, pngs = [], []
        for item in self.recorded:
            data = {"text/plain": item} if isinstance(item, str) else item["data"]
            if "image/png" in data:
                png = data["image/png"]
                png = png if isinstance(png, str) else base64.b64encode(png).decode()
                pngs.append(base64.b64decode(png))
                parts.append(f'<img src="data:image/png;base64,{png}" alt="default figure">')
            elif "text/html" in data:
                parts.append(data["text/html"])
            elif data.get("text/plain"):
                parts.append(f'<pre class="widget-default">{html.escape(data["text/plain"])}</pre>')
        text = self._plain()
        bundle = {"text/plain": text or "(a figure)",
                  "text/html": "<div>" + "".join(parts) + "</div>"}
        if pngs:  # the PDF prefers an image to text: put the text into it
            only = len(pngs) == 1 and not text.strip()
            bundle["image/png"] = base64.b64encode(
                pngs[0] if only else _png_with_text(pngs, text)).decode()
        return bundle

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, Any]:
        bundle = self._static()
        view = (self.widget._repr_mimebundle_() or {}).get(VIEW)
        if view is not None:
            bundle[VIEW] = view
        return bundle


def _live(widget, out, render: Callable[[], Any]) -> LiveView:
    """`widget` with render()'s first output recorded, and shown in its Output `out`."""
    _, recorded = _record(render)
    out.outputs = _outputs(recorded)
    return LiveView(widget, recorded)


def _outputs(recorded: list) -> tuple[dict, ...]:
    """Recorded items as an Output widget's outputs: a kernel shows the default in the widget."""
    return tuple(
        {"output_type": "stream", "name": "stdout", "text": item} if isinstance(item, str) else
        {"output_type": "display_data", "data": item["data"], "metadata": item.get("metadata", {})}
        for item in recorded)


def interactive(fn: Callable[..., Any], **knobs) -> LiveView:
    """ipywidgets.interactive(fn, **knobs), with fn's default output kept for static pages.

    Example: interactive(show_decay, log10_base=FloatSlider(4.0, min=2.0, max=7.0))
    """
    import ipywidgets as w

    # interactive renders fn's default as it is built: record the building.
    view, recorded = _record(lambda: w.interactive(fn, **knobs))
    view.out.outputs = _outputs(recorded)
    return LiveView(view, recorded)


def temperature_sampler(
    model: nn.Module, tokenizer: Tokenizer, prompt: str = "\n", max_new_tokens: int = 200
):
    """A temperature slider and a seed box that resample text from `model` (chapter 1)."""
    import ipywidgets as w

    temperature = w.FloatLogSlider(
        value=1.0, base=10, min=-1, max=0.7, step=0.05, description="temperature"
    )
    seed = w.IntText(value=0, description="seed")
    out = w.Output(layout=w.Layout(border="1px solid #ddd", padding="4px"))

    def render(*_):
        text = generate_text(
            model, tokenizer, prompt, max_new_tokens, temperature.value, seed.value
        )
        out.clear_output(wait=True)
        with out:
            print(f"T = {temperature.value:.2f}\n{text}")

    temperature.observe(render, names="value")
    seed.observe(render, names="value")
    return _live(w.VBox([w.HBox([temperature, seed]), out]), out, render)


def attention_explorer(weights: list, tokens: list[str]):
    """Layer, head and query-token sliders over stored attention weights.

    One (H, T, T) tensor per layer (chapter 5).

    The heatmap outlines the chosen query row; the line below it lists the keys that row reads most.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    from .plots import plot_attention, show_char

    layer = w.IntSlider(0, 0, len(weights) - 1, description="layer")
    head = w.IntSlider(0, 0, weights[0].shape[0] - 1, description="head")
    token = w.IntSlider(len(tokens) - 1, 0, len(tokens) - 1, description="token")
    out = w.Output()

    def render(*_):
        row = weights[layer.value][head.value, token.value]
        top = row.topk(min(3, token.value + 1))
        reads = ", ".join(
            f"{show_char(tokens[int(i)])!r}@{int(i)} ({float(v):.2f})" for v, i in zip(*top)
        )
        out.clear_output(wait=True)
        with out:
            fig = plot_attention(weights[layer.value][head.value], tokens, highlight=token.value,
                                 title=f"layer {layer.value}, head {head.value}")
            display(fig)
            plt.close(fig)
            print(f"query {show_char(tokens[token.value])!r}@{token.value} reads most: {reads}")

    for s in (layer, head, token):
        s.observe(render, names="value")
    return _live(w.VBox([w.HBox([layer, head, token]), out]), out, render)


def sampler(model: nn.Module, tokenizer: Tokenizer, prompt: str = "\n", max_new_tokens: int = 60,
            seed: int = 0):
    """Prompt, temperature, top-k, top-p and length knobs over `generate_text` (chapter 6).

    top-k 0 and top-p 1 mean off. Beside the text, bars show the first next token's
    distribution after each step (plots.plot_sampling).
    """
    import ipywidgets as w

    text = w.Text(value=prompt, description="prompt", continuous_update=False)
    temperature = w.FloatSlider(value=0.8, min=0.0, max=2.0, step=0.05, description="temperature")
    top_k = w.IntSlider(value=0, min=0,
                        max=min(200, getattr(getattr(model, "config", None), "vocab_size", 200)),
                        description="top-k")
    top_p = w.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p")
    length = w.IntSlider(value=max_new_tokens, min=1, max=400, description="length")
    out = w.Output(layout=w.Layout(border="1px solid #ddd", padding="4px"))

    def render(*_):
        k, p = (top_k.value or None), (top_p.value if top_p.value < 1 else None)
        sample = generate_text(
            model, tokenizer, text.value or "\n", length.value, temperature.value, seed, k, p
        )
        out.clear_output(wait=True)
        with out:
            _show_sampling_bars(model, tokenizer, text.value or "\n", temperature.value, k, p)
            print(f"T = {temperature.value:.2f}, top-k = {k or 'off'}, top-p = "
                  f"{p or 'off'}\n{sample}")

    for knob in (text, temperature, top_k, top_p, length):
        knob.observe(render, names="value")
    return _live(w.VBox([w.HBox([text, length]), w.HBox([temperature, top_k, top_p]), out]),
                 out, render)


def _show_sampling_bars(model: nn.Module, tokenizer: Tokenizer, prompt: str, temperature: float,
                        top_k: int | None, top_p: float | None) -> None:
    """Display the sampler's bars: the prompt's next-token distribution after each step."""
    import matplotlib.pyplot as plt
    import torch
    from IPython.display import display

    from .generate import sampling_stages
    from .plots import plot_sampling

    context = getattr(getattr(model, "config", None), "context_length", None)
    ids = tokenizer.encode(prompt)[-context:] if context else tokenizer.encode(prompt)
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=next(model.parameters()).device))[0, -1]
    labels = [tokenizer.decode([i]) for i in range(logits.shape[-1])]
    fig = plot_sampling(sampling_stages(logits.cpu(), temperature, top_k, top_p), labels,
                        title=f"next token after {prompt[-20:]!r}")
    display(fig)
    plt.close(fig)  # shown once, by display, not again when the cell ends


def sizing_calculator(dollars: float = 1e6, gpu: str = "H100-SXM-80GB", mfu: float = 0.4,
                      tokens_per_param: float = 20.0, n_gpus: int = 1024):
    """Budget, GPU, MFU and tokens-per-parameter knobs -> the compute-optimal model (chapter 8).

    It shows the model, its data, time and memory.
    """
    import ipywidgets as w

    from .scaling import describe_plan, plan_budget
    from .sizing import GPUS

    budget = w.FloatLogSlider(
        value=dollars, base=10, min=1, max=8, step=0.1, description="budget $"
    )
    device = w.Dropdown(options=sorted(GPUS), value=gpu, description="GPU")
    util = w.FloatSlider(value=mfu, min=0.05, max=0.7, step=0.05, description="MFU")
    ratio = w.FloatLogSlider(
        value=tokens_per_param, base=10, min=0, max=4, step=0.05, description="tokens/param"
    )
    count = w.IntText(value=n_gpus, description="GPUs")
    out = w.Output(layout=w.Layout(border="1px solid #ddd", padding="4px"))

    def render(*_):
        plan = plan_budget(budget.value, device.value, util.value, ratio.value, max(1, count.value))
        out.clear_output(wait=True)
        with out:
            print(describe_plan(plan))

    for knob in (budget, device, util, ratio, count):
        knob.observe(render, names="value")
    return _live(w.VBox([w.HBox([budget, device]), w.HBox([util, ratio, count]), out]), out,
                 render)


def merge_stepper(tokenizer, text: str, n_merges: int | None = None):
    """A slider over the number of merges, showing `text` in that tokenizer's tokens (chapter 3).

    Wraps companion.tokenizer.tools.tokens_after_merges, which the page also calls once.
    """
    import ipywidgets as w
    from IPython.display import display

    from .plots import TokenView
    from .tokenizer.tools import tokens_after_merges

    total = len(tokenizer.merges)
    steps = w.IntSlider(value=total if n_merges is None else n_merges, min=0, max=total,
                        description="merges", continuous_update=False)
    out = w.Output()

    def render(*_):
        pieces = tokens_after_merges(tokenizer, text, steps.value)
        out.clear_output(wait=True)
        with out:
            display(TokenView(pieces))

    steps.observe(render, names="value")
    return _live(w.VBox([steps, out]), out, render)


def tokenizer_playground(tokenizers: dict, text: str = "Hello world! 12345 naïve 生きる"):
    """A text box whose contents are shown in each named tokenizer's pieces (chapter 3).

    Wraps companion.tokenizer.tools.compare_tokenizers, which the page also calls once.
    """
    import ipywidgets as w
    from IPython.display import display

    from .plots import TokenView
    from .tokenizer.tools import compare_tokenizers

    box = w.Textarea(value=text, description="text", continuous_update=False,
                     layout=w.Layout(width="90%"))
    out = w.Output()

    def render(*_):
        out.clear_output(wait=True)
        with out:
            for name, pieces in compare_tokenizers(box.value, tokenizers).items():
                print(f"{name}: {len(pieces)} tokens")
                display(TokenView(pieces))

    box.observe(render, names="value")
    return _live(w.VBox([box, out]), out, render)
