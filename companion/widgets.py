"""ipywidgets that turn one knob. Each wraps a pure function that the page also calls once,
so the static HTML and the PDF show a default."""
from __future__ import annotations

from torch import nn

from .generate import generate_text
from .tokenizer import Tokenizer

__all__ = ["temperature_sampler"]


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
