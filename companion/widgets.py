"""ipywidgets that turn one knob. Each wraps a pure function that the page also calls once,
so the static HTML and the PDF show a default."""
from __future__ import annotations

from torch import nn

from .generate import generate_text
from .tokenizer import Tokenizer

__all__ = ["attention_explorer", "temperature_sampler"]


def temperature_sampler(model: nn.Module, tokenizer: Tokenizer, prompt: str = "\n", max_new_tokens: int = 200):
    """A temperature slider and a seed box that resample text from `model` (chapter 1)."""
    import ipywidgets as w

    temperature = w.FloatLogSlider(value=1.0, base=10, min=-1, max=0.7, step=0.05, description="temperature")
    seed = w.IntText(value=0, description="seed")
    out = w.Output(layout=w.Layout(border="1px solid #ddd", padding="4px"))

    def render(*_):
        text = generate_text(model, tokenizer, prompt, max_new_tokens, temperature.value, seed.value)
        out.clear_output(wait=True)
        with out:
            print(f"T = {temperature.value:.2f}\n{text}")

    temperature.observe(render, names="value")
    seed.observe(render, names="value")
    render()
    return w.VBox([w.HBox([temperature, seed]), out])


def attention_explorer(weights: list, tokens: list[str]):
    """Layer, head and query-token sliders over stored attention weights, one (H, T, T) tensor per layer (chapter 5).

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
        reads = ", ".join(f"{show_char(tokens[int(i)])!r}@{int(i)} ({float(v):.2f})" for v, i in zip(*top))
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
