"""Tests for companion.generate.sampling_stages and companion.plots.plot_sampling (chapter 6)."""
import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from companion.generate import sampling_stages  # noqa: E402
from companion.plots import plot_sampling  # noqa: E402

LOGITS = torch.tensor([0.45, 0.25, 0.15, 0.08, 0.05, 0.02]).log()


def test_stages_follow_sample_next_order_and_each_sums_to_one():
    st = sampling_stages(LOGITS, temperature=1.0, top_k=4, top_p=0.8)
    assert list(st) == ["model", "temperature", "top-k", "top-p"]
    for p in st.values():
        assert p.sum().item() == pytest.approx(1.0)
    assert (st["top-k"] > 0).tolist() == [True] * 4 + [False] * 2
    # top-p on the top-k renormalised mass (0.45, 0.25, 0.15, 0.08)/0.93: 0.48 + 0.27 < 0.8, +0.16
    assert (st["top-p"] > 0).tolist() == [True] * 3 + [False] * 3


def test_temperature_stage_sharpens_below_one_and_flattens_above():
    cold, hot = (sampling_stages(LOGITS, t)["temperature"] for t in (0.5, 2.0))
    assert cold[0] > 0.45 > hot[0]


def test_filters_left_off_repeat_the_step_before():
    st = sampling_stages(LOGITS, 0.7)
    assert torch.equal(st["top-k"], st["temperature"]) and torch.equal(st["top-p"], st["top-k"])


def test_greedy_puts_all_mass_on_the_argmax():
    st = sampling_stages(LOGITS, 0.0, top_k=3)
    assert st["top-p"].tolist() == [1.0, 0, 0, 0, 0, 0]


def test_plot_sampling_draws_one_row_per_stage_with_labels():
    fig = plot_sampling(sampling_stages(LOGITS, 1.0, 3, 0.9), list("abcdef"), n_show=5)
    assert len(fig.axes) == 4
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == list("abcde")
    assert sum(len(ax.patches) for ax in fig.axes) == 4 * 5


def test_sampler_widget_shows_the_bars():
    pytest.importorskip("ipywidgets")
    from companion.model import GPT, GPTConfig
    from companion.tokenizer import CharTokenizer
    from companion.widgets import sampler

    tok = CharTokenizer.from_text("abcdef \n")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=8, d_model=16, n_layers=1,
                          n_heads=2)).eval()
    box = sampler(model, tok, prompt="abc", max_new_tokens=3)
    assert len(box.children) == 3  # knobs, knobs, the output: the bars, then the text
    # the default is recorded for static pages; outside a kernel display() prints a repr
    assert "Figure(" in repr(box) and "T = 0.80" in repr(box)
