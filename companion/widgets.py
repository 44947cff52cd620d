"""ipywidgets that turn one knob. Each wraps a pure function that the page also calls once,
so the static HTML and the PDF show a default."""
from __future__ import annotations

from torch import nn

from .generate import generate_text
from .tokenizer import Tokenizer

__all__ = ["attention_explorer", "temperature_sampler", "sampler", "sizing_calculator",
           "merge_stepper", "tokenizer_playground"]


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
    render()
    return w.VBox([w.HBox([temperature, seed]), out])


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
    render()
    return w.VBox([w.HBox([layer, head, token]), out])


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
    bars = w.Output()

    def render(*_):
        k, p = (top_k.value or None), (top_p.value if top_p.value < 1 else None)
        sample = generate_text(
            model, tokenizer, text.value or "\n", length.value, temperature.value, seed, k, p
        )
        out.clear_output(wait=True)
        with out:
            print(f"T = {temperature.value:.2f}, top-k = {k or 'off'}, top-p = "
                  f"{p or 'off'}\n{sample}")
        bars.clear_output(wait=True)
        with bars:
            _show_sampling_bars(model, tokenizer, text.value or "\n", temperature.value, k, p)

    for knob in (text, temperature, top_k, top_p, length):
        knob.observe(render, names="value")
    render()
    return w.VBox([w.HBox([text, length]), w.HBox([temperature, top_k, top_p]), bars, out])


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
    render()
    return w.VBox([w.HBox([budget, device]), w.HBox([util, ratio, count]), out])


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
    render()
    return w.VBox([steps, out])


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
    render()
    return w.VBox([box, out])
