"""Tests for companion.generate's samplers: top-k, top-p, argument checks, and KV-cached generation."""
import pytest
import torch

from companion.generate import check_sampling, generate, generate_text, sample_next, top_k_filter, top_p_filter
from companion.model import GPT, GPTConfig

INF = float("-inf")


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    base = dict(vocab_size=40, context_length=24, d_model=32, n_layers=2, n_heads=4)
    return GPT(GPTConfig(**{**base, **kw})).eval()


STYLES = {
    "gpt2": dict(),
    "llama-gqa": dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, n_kv_heads=2, tie_embeddings=False),
}


# --- top-k -------------------------------------------------------------------------------------


def test_top_k_by_hand():
    assert torch.equal(top_k_filter(torch.tensor([1.0, 3.0, 2.0]), 2), torch.tensor([INF, 3.0, 2.0]))


@pytest.mark.parametrize("k", [1, 2, 5, 9])
def test_top_k_keeps_exactly_k_even_with_ties(k):
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, -1.0, 0.5]])
    kept = torch.isfinite(top_k_filter(logits, k))
    assert kept.sum().item() == k
    # Whatever was kept is at least as large as whatever was dropped.
    if k < logits.shape[-1]:
        assert logits[kept].min() >= logits[~kept].max()


def test_top_k_larger_than_vocab_keeps_everything():
    logits = torch.randn(3, 5)
    assert torch.equal(top_k_filter(logits, 50), logits)


# --- top-p -------------------------------------------------------------------------------------


def test_top_p_by_hand():
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [True, True, False]  # 0.5 < 0.7 <= 0.8
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [True, False, False]  # 0.5 reaches 0.5 exactly
    assert torch.isfinite(top_p_filter(logits, 0.01)).tolist() == [True, False, False]  # the top token always stays
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9, 0.99])
def test_top_p_keeps_the_smallest_set_with_mass_at_least_p(p):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 30, generator=g) * 2
    probs = logits.softmax(-1)
    kept = torch.isfinite(top_p_filter(logits, p))
    for row in range(8):
        mass = probs[row][kept[row]].sum().item()
        n = int(kept[row].sum())
        top = probs[row].sort(descending=True).values
        assert mass >= p - 1e-6  # enough mass
        assert top[:n - 1].sum().item() < p  # one fewer token would not be enough: the set is the smallest
        assert probs[row][kept[row]].min() >= probs[row][~kept[row]].max() if n < 30 else True  # the most likely


def test_top_p_of_one_keeps_every_token_even_where_float_mass_saturates():
    # In float32 the first token's probability rounds to 1.0, so the mass before each tail token
    # is already 1.0: a test of "before < p" alone would drop them.
    logits = torch.tensor([[0.0, -30.0, -40.0, -50.0]])
    probs = logits.softmax(-1)
    assert (probs.cumsum(-1) - probs)[0, 1] == 1.0  # the saturation the short cut guards against
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    assert torch.isinf(top_p_filter(logits, 0.999)[0, 1:]).all()


def test_sampling_after_top_k_never_leaves_the_set():
    logits = torch.randn(1, 20, generator=torch.Generator().manual_seed(3))
    allowed = set(logits.topk(3).indices[0].tolist())
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.5, top_k=3, generator=g).item() for _ in range(200)}
    assert draws <= allowed and len(draws) == 3


def test_temperature_zero_is_argmax_whatever_the_filters():
    logits = torch.randn(4, 10)
    assert torch.equal(sample_next(logits, 0.0, top_k=3, top_p=0.5), logits.argmax(-1, keepdim=True))


# --- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, word", [
    (dict(top_k=0), "top_k"), (dict(top_k=-2), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_p=-0.1), "top_p"),
    (dict(temperature=-0.5), "temperature"), (dict(temperature=float("nan")), "temperature"),
])
def test_bad_sampling_arguments_raise(kwargs, word):
    with pytest.raises(ValueError, match=word):
        check_sampling(**kwargs)
    with pytest.raises(ValueError, match=word):
        generate(tiny(), torch.zeros(1, 1, dtype=torch.long), 1, **kwargs)


# --- the KV cache in generation ----------------------------------------------------------------


class Counting(torch.nn.Module):
    """Wraps a GPT and records how many tokens each forward call reads."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model, self.config, self.lengths = model, model.config, []

    def make_caches(self, *args, **kw):
        return self.model.make_caches(*args, **kw)

    def forward(self, idx, caches=None):
        self.lengths.append(idx.shape[1])
        return self.model(idx, caches=caches)


@pytest.mark.parametrize("style", STYLES)
def test_cached_greedy_equals_uncached_greedy(style):
    m = tiny(**STYLES[style])
    prompt = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(1))
    a = generate(m, prompt, 15, temperature=0, use_cache=True)
    b = generate(m, prompt, 15, temperature=0, use_cache=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("kw", [dict(), dict(top_k=5), dict(top_p=0.8), dict(top_k=10, top_p=0.9, temperature=0.7)])
def test_cached_sampling_equals_uncached_sampling_for_a_seed(style, kw):
    m = tiny(**STYLES[style])
    prompt = torch.randint(0, 40, (3, 4), generator=torch.Generator().manual_seed(2))
    a = generate(m, prompt, 15, generator=torch.Generator().manual_seed(7), use_cache=True, **kw)
    b = generate(m, prompt, 15, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
    assert torch.equal(a, b)


def test_cache_prefills_once_then_feeds_one_token_per_step():
    counting = Counting(tiny())
    generate(counting, torch.zeros(1, 6, dtype=torch.long), 5, temperature=0)
    assert counting.lengths == [6, 1, 1, 1, 1]


def test_without_cache_every_step_rereads_everything():
    counting = Counting(tiny())
    generate(counting, torch.zeros(1, 6, dtype=torch.long), 4, temperature=0, use_cache=False)
    assert counting.lengths == [6, 7, 8, 9]


@pytest.mark.parametrize("style", STYLES)
def test_generation_past_the_context_slides_the_window_and_matches_uncached(style):
    m = tiny(**STYLES[style])  # context_length 24
    prompt = torch.randint(0, 40, (1, 20), generator=torch.Generator().manual_seed(3))
    a = generate(m, prompt, 12, temperature=0, use_cache=True)
    b = generate(m, prompt, 12, temperature=0, use_cache=False)
    assert a.shape == (1, 32) and torch.equal(a, b)


def test_generate_restores_training_mode_and_zero_tokens_is_identity():
    m = tiny().train()
    prompt = torch.zeros(1, 3, dtype=torch.long)
    assert torch.equal(generate(m, prompt, 0), prompt)
    assert m.training


class CharTok:
    def encode(self, s):
        return [ord(c) % 40 for c in s]

    def decode(self, ids):
        return "".join(chr(65 + i) for i in ids)


def test_generate_text_is_repeatable_and_passes_filters():
    m = tiny()
    a = generate_text(m, CharTok(), "hi", 10, 1.0, seed=3, top_k=4, top_p=0.9)
    b = generate_text(m, CharTok(), "hi", 10, 1.0, seed=3, top_k=4, top_p=0.9)
    assert a == b and len(a) == 12
