"""companion.muon: the Newton–Schulz iteration, and Muon against torch.optim.Muon and AdamW."""
from __future__ import annotations

import copy

import pytest
import torch

from companion.model import GPT, GPTConfig
from companion.muon import Muon, muon_param_groups, newton_schulz


@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32)])
def test_newton_schulz_puts_every_singular_value_near_one(shape):
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0]))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1]))
    k = min(shape)
    s = torch.logspace(-2, 0, k)  # two decades of spread: five steps reach down to about 1e-2
    g = u[:, :k] @ torch.diag(s) @ v[:, :k].T
    for dtype in (torch.float32, torch.bfloat16):
        out = torch.linalg.svdvals(newton_schulz(g, dtype=dtype).float())
        assert out.min() > 0.6 and out.max() < 1.25, (dtype, out.min(), out.max())
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 90
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.ones(4))


def test_a_stack_of_matrices_iterates_each_on_its_own():
    torch.manual_seed(0)
    stack = torch.randn(3, 40, 24) * torch.tensor([1.0, 10.0, 0.01]).view(3, 1, 1)
    together = newton_schulz(stack)
    for g, out in zip(stack, together):
        torch.testing.assert_close(out, newton_schulz(g), atol=1e-5, rtol=1e-5)
    # each matrix is normalised by its own norm: a shared norm would shrink the 0.01 one to ~0
    assert torch.linalg.svdvals(together[2]).min() > 0.6


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(48, 16), (16, 48), (24, 24), (24, 24)]]


def _run(opt_cls, params, steps: int = 5, **kw) -> list[torch.Tensor]:
    opt = opt_cls(params, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach().clone() for p in params]


def test_muon_steps_like_torch_optim_muon():
    kw = dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1)
    ours = _run(lambda ps, **k: Muon([{"params": ps, "use_muon": True}], **k), _params(), **kw)
    theirs = _run(torch.optim.Muon, _params(), **kw)
    start = _params()
    for o, t, s in zip(ours, theirs, start):
        moved = (t - s).abs().max()
        assert moved > 0.04  # the step is large enough for the comparison to mean something
        assert (o - t).abs().max() < 0.05 * moved  # torch's iteration runs in bf16, ours in fp32 on CPU
    # Without Nesterov, the two differ from ours-with-Nesterov: the comparison is not vacuous.
    plain = _run(torch.optim.Muon, _params(), **{**kw, "nesterov": False})
    assert max((o - p).abs().max() for o, p in zip(ours, plain)) > 0.05 * moved


def test_adamw_groups_step_like_torch_adamw():
    kw = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours = _run(lambda ps, **k: Muon([{"params": ps, "use_muon": False}], **k), _params(), **kw)
    theirs = _run(torch.optim.AdamW, _params(), **kw)
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t, rtol=1e-5, atol=1e-6)


def test_param_groups_keep_embeddings_head_and_norms_on_adamw():
    cfg = GPTConfig(vocab_size=65, context_length=16, d_model=32, n_layers=2, n_heads=4,
                    norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, tie_embeddings=False)
    model = GPT(cfg)
    groups = muon_param_groups(model, lr=3e-3, muon_lr=0.02)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    muon = {id(p) for g in groups if g["use_muon"] for p in g["params"]}
    assert id(model.tok_emb.weight) not in muon and id(model.lm_head.weight) not in muon
    assert all(p.ndim == 2 for g in groups if g["use_muon"] for p in g["params"])
    assert sorted(g["lr_scale"] for g in groups) == pytest.approx([1.0, 1.0, 0.02 / 3e-3])


def test_muon_trains_a_tiny_model_faster_than_adamw_at_equal_steps():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=32, context_length=16, d_model=32, n_layers=2, n_heads=4,
                    norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, tie_embeddings=False)
    base = GPT(cfg)
    x = torch.randint(0, 32, (8, 16))
    y = torch.roll(x, -1, dims=1)
    losses = {}
    for name in ("adamw", "muon"):
        model = copy.deepcopy(base)
        if name == "muon":
            opt = Muon(muon_param_groups(model, lr=3e-3, muon_lr=0.02))
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
        for _ in range(30):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[name] = loss.item()
    assert losses["muon"] < losses["adamw"] < 3.4


def test_muon_refuses_bad_settings():
    with pytest.raises(ValueError, match="momentum"):
        Muon(_params(), momentum=1.0)
    with pytest.raises(ValueError, match="matrices only"):
        Muon([{"params": [torch.nn.Parameter(torch.ones(3))], "use_muon": True}])


def test_train_config_sets_the_iteration_count():
    from companion.train import TrainConfig, make_optimizer
    model = GPT(GPTConfig(vocab_size=11, context_length=8, d_model=16, n_layers=1, n_heads=2))
    opt = make_optimizer(model, TrainConfig(optimizer="muon", muon_ns_steps=3))
    assert {g["ns_steps"] for g in opt.param_groups} == {3}
    with pytest.raises(ValueError, match="muon_ns_steps"):
        TrainConfig(optimizer="muon", muon_ns_steps=0)
    # fewer iterations leave the singular values further from 1: the count reaches the iteration
    g = torch.randn(24, 24)
    assert not torch.allclose(newton_schulz(g, steps=3), newton_schulz(g, steps=5), atol=1e-3)
