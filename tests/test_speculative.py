"""companion.speculative: greedy equals generate(), sampling keeps the target's distribution."""
from __future__ import annotations

import itertools

import pytest
import torch

from companion.generate import generate
from companion.model import GPT, GPTConfig
from companion.speculative import SpecStats, accept_reject, speculative_generate, truncated_draft


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed: int, vocab: int = 20, layers: int = 3, pos: str = "rope",
         sharp: float = 20.0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab, context_length=40, d_model=32, n_layers=layers, n_heads=4,
                    n_kv_heads=2, pos=pos, norm="rmsnorm", mlp="swiglu", bias=False,
                    tie_embeddings=False)
    model = GPT(cfg).double().eval()
    with torch.no_grad():  # a random model is nearly uniform; a sharper head gives real choices
        model.lm_head.weight.mul_(sharp)
    return model


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_greedy_equals_generate(k, pos):
    target = tiny(0, pos=pos)
    for draft in (truncated_draft(target, 1), tiny(1, layers=1, pos=pos)):
        idx = torch.tensor([[3, 1, 4, 1, 5]])
        stats = SpecStats()
        got = speculative_generate(target, draft, idx, 25, k=k, stats=stats)
        assert torch.equal(got, generate(target, idx, 25, temperature=0))
        assert stats.accepted + stats.rounds == 25  # each round adds its accepted drafts + one


def test_a_draft_equal_to_the_target_is_always_accepted():
    target = tiny(0)
    stats = SpecStats()
    speculative_generate(target, target, torch.tensor([[1, 2]]), 21, k=4, stats=stats)
    assert stats.acceptance_rate == 1.0 and stats.rounds == 5  # 4 rounds of 4 + 1, then 1 left


def test_a_bad_draft_still_gives_the_target_output_with_fewer_acceptances():
    target, bad = tiny(0), tiny(7, layers=1)
    good, poor = SpecStats(), SpecStats()
    idx = torch.tensor([[2, 7]])
    speculative_generate(target, truncated_draft(target, 2), idx, 30, k=4, stats=good)
    out = speculative_generate(target, bad, idx, 30, k=4, stats=poor)
    assert torch.equal(out, generate(target, idx, 30, temperature=0))
    assert poor.acceptance_rate < good.acceptance_rate


def test_accept_reject_hand_worked():
    """p = q: every draft is accepted (u < 1); q puts all mass where p has none: always rejected,
    and the residual max(0, p - q) is p itself."""
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    n, _ = accept_reject(p, p[:1], torch.tensor([1]))
    assert n == 1
    q = torch.tensor([[0.0, 0.0, 1.0]])
    for seed in range(20):
        n, tok = accept_reject(p, q, torch.tensor([2]), torch.Generator().manual_seed(seed))
        assert n == 0 and tok in (0, 1)


def test_accept_reject_matches_target_distribution():
    """One step, V = 3: the accept/reject rule's output frequencies match p, not q."""
    p = torch.tensor([[0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    q = torch.tensor([[0.1, 0.3, 0.6]])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    for _ in range(6000):
        x = torch.multinomial(q[0], 1, generator=g)
        n, tok = accept_reject(p, q, x, g)
        counts[int(x) if n == 1 else tok] += 1
    assert torch.allclose(counts / counts.sum(), p[0], atol=0.025)


def exact_distribution(model: GPT, idx: torch.Tensor, n: int, temperature: float) -> dict:
    """Probability of every continuation of n tokens, by enumeration."""
    out = {}
    V = model.config.vocab_size
    for cont in itertools.product(range(V), repeat=n):
        seq = torch.cat([idx, torch.tensor([cont])], dim=1)
        logp = (model(seq)[0, idx.shape[1] - 1:-1].double() / temperature).log_softmax(-1)
        out[cont] = float(logp[torch.arange(n), torch.tensor(cont)].sum().exp())
    return out


def chi_square(counts: dict, probs: dict, total: int) -> float:
    return sum((counts.get(c, 0) - total * p) ** 2 / (total * p) for c, p in probs.items())


def test_sampling_preserves_the_target_distribution():
    """V = 3, 3 new tokens, k = 2: the 27 continuations' frequencies fit the target's exact
    probabilities (chi-square, 26 degrees of freedom: 54.1 is the 0.1% critical value) and not the
    draft's."""
    target, draft = tiny(0, vocab=3, sharp=3.0), tiny(5, vocab=3, layers=1, sharp=3.0)
    idx, n, T, trials = torch.tensor([[1, 2]]), 3, 1.0, 600
    g = torch.Generator().manual_seed(0)
    counts: dict = {}
    for _ in range(trials):
        out = speculative_generate(target, draft, idx, n, k=2, temperature=T, generator=g)
        key = tuple(out[0, 2:].tolist())
        counts[key] = counts.get(key, 0) + 1
    p_target = exact_distribution(target, idx, n, T)
    p_draft = exact_distribution(draft, idx, n, T)
    assert chi_square(counts, p_target, trials) < 54.1
    assert chi_square(counts, p_draft, trials) > 150


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), "k must be >= 1"),
    (dict(max_new_tokens=50), "exceeds the context length"),
    (dict(temperature=-1.0), "temperature"),
])
def test_bad_arguments_raise(kwargs, match):
    target = tiny(0)
    args = dict(max_new_tokens=5, k=2)
    with pytest.raises(ValueError, match=match):
        speculative_generate(target, target, torch.tensor([[1]]), **{**args, **kwargs})


def test_truncated_draft_shares_the_first_blocks():
    target = tiny(0)
    draft = truncated_draft(target, 1)
    assert draft.config.n_layers == 1
    assert torch.equal(draft.blocks[0].attn.q_proj.weight, target.blocks[0].attn.q_proj.weight)
    with pytest.raises(ValueError, match="n_layers must lie in"):
        truncated_draft(target, 4)

