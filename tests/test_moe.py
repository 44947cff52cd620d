"""Tests for companion.moe: the top-k router, Switch Transformer's balancing loss, capacity, and
MoE inside GPT (parameter counts, training, config errors)."""
import pytest
import torch
from torch import nn

from companion.model import GPT, MLP, GPTConfig, count_params, make_mlp
from companion.moe import MoE, expert_capacity, load_balancing_loss, moe_aux_loss, route

SMALL = dict(vocab_size=40, context_length=16, d_model=32, n_layers=2, n_heads=4)


def test_router_keeps_the_top_k_probabilities_as_gates():
    # Switch (Fedus et al. 2021, eq. 2): the gate is the router's probability p_i(x) itself
    probs, gates, experts = route(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]).log(), 2)
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    assert experts.tolist() == [[0, 1], [2, 1]]
    assert torch.allclose(gates, torch.tensor([[0.5, 0.3], [0.7, 0.2]]))


def test_norm_topk_prob_renormalises_the_kept_gates():
    # probabilities 0.5, 0.3, 0.2: top-2 keeps experts 0 and 1 with gates 0.5/0.8 and 0.3/0.8
    _, gates, _ = route(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]).log(), 2, True)
    assert torch.allclose(gates, torch.tensor([[0.625, 0.375], [0.7 / 0.9, 0.2 / 0.9]]))


def test_top_1_gate_is_the_probability_unless_renormalised():
    logits = torch.randn(10, 4)
    probs, gates, _ = route(logits, 1)
    assert torch.allclose(gates[:, 0], probs.max(-1).values) and (gates < 1).all()
    assert torch.allclose(route(logits, 1, True)[1], torch.ones(10, 1))


@pytest.mark.parametrize("top_k", [1, 2])
def test_router_gets_gradient_from_the_lm_loss(top_k):
    # the language-model loss alone (aux weight 0) must reach the router through the gates; with
    # gates renormalised at k = 1 they are all exactly 1 and it does not
    torch.manual_seed(0)
    cfg = GPTConfig(**SMALL, n_experts=4, moe_top_k=top_k, moe_aux_weight=0.0)
    m = GPT(cfg).train()
    idx = torch.randint(0, 40, (2, 16))
    logits = m(idx)
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 40), idx[:, 1:].reshape(-1))
    loss.backward()
    for b in m.blocks:
        assert b.mlp.router.weight.grad.norm() > 1e-3


def test_renormalised_top_1_cuts_the_router_off_from_the_lm_loss():
    torch.manual_seed(0)
    cfg = GPTConfig(**SMALL, n_experts=4, moe_top_k=1, moe_aux_weight=0.0, moe_norm_topk_prob=True)
    m = GPT(cfg).train()
    idx = torch.randint(0, 40, (2, 16))
    logits = m(idx)
    nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 40), idx[:, 1:].reshape(-1)).backward()
    assert all(b.mlp.router.weight.grad is None or b.mlp.router.weight.grad.norm() < 1e-4
               for b in m.blocks)


def test_old_moe_configs_keep_their_renormalised_gates():
    # a config saved before moe_norm_topk_prob existed was trained with renormalised gates
    old = GPTConfig(**SMALL, n_experts=4, moe_top_k=2).to_dict()
    del old["moe_norm_topk_prob"]
    assert GPTConfig.from_dict(old).moe_norm_topk_prob is True
    dense = GPTConfig(**SMALL).to_dict()
    del dense["moe_norm_topk_prob"]
    assert GPTConfig.from_dict(dense).moe_norm_topk_prob is False


def test_balancing_loss_is_one_when_perfectly_balanced():
    # uniform probabilities and each expert chosen equally often: E * sum (1/E)(1/E) = 1
    E = 4
    probs = torch.full((8, E), 1 / E)
    experts = torch.arange(8).remainder(E)[:, None]
    assert load_balancing_loss(probs, experts).item() == pytest.approx(1.0)


def test_balancing_loss_is_E_when_everything_goes_to_one_confident_expert():
    E = 4
    probs = torch.zeros(8, E)
    probs[:, 2] = 1.0
    assert load_balancing_loss(probs, torch.full((8, 1), 2)).item() == pytest.approx(E)


def test_balancing_loss_sends_gradient_to_the_router_probabilities():
    logits = torch.randn(16, 4, requires_grad=True)
    probs, _, experts = route(logits, 2)
    load_balancing_loss(probs, experts).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_capacity_formula():
    assert expert_capacity(64, 4, 2, 1.0) == 32
    assert expert_capacity(10, 4, 1, 1.25) == 4  # ceil(3.125)


def identity_moe(n_experts: int, top_k: int, capacity_factor, norm_topk_prob: bool = False):
    """An MoE whose experts return their input: the output is gate-weighted copies of x."""
    torch.manual_seed(0)
    return MoE(8, n_experts, top_k, capacity_factor, nn.Identity, norm_topk_prob)


def test_capacity_drops_the_overflow_and_the_dropped_tokens_add_nothing():
    moe = identity_moe(2, 1, 0.5, norm_topk_prob=True).train()  # gates 1: kept tokens are x
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0  # every token with x[0] > 0 goes to expert 0
    x = torch.randn(1, 8, 8).abs()  # all eight tokens choose expert 0
    y = moe(x)
    cap = expert_capacity(8, 2, 1, 0.5)  # 2 tokens
    assert cap == 2 and moe.dropped == 8 - cap
    assert torch.allclose(y[0, :cap], x[0, :cap])  # the first two in token order are kept
    assert torch.equal(y[0, cap:], torch.zeros(8 - cap, 8))  # the rest pass only via the residual


def test_capacity_drops_second_choices_before_first_choices():
    moe = identity_moe(2, 2, 0.5).train()  # capacity ceil(0.5 * 4 * 2 / 2) = 2 per expert
    x = torch.randn(1, 4, 8)
    probs, gates, chosen = route(moe.router(x[0]), 2)
    y = moe(x)[0]
    # top-2 of 2: each expert gets all 4 tokens; it serves first choices, then second, in order
    kept = torch.zeros(4)
    for e in range(2):
        order = [(r, t) for r in range(2) for t in range(4) if chosen[t, r] == e][:2]
        for r, t in order:
            kept[t] += gates[t, r]
    assert torch.allclose(y, x[0] * kept[:, None], atol=1e-6)
    assert moe.dropped == 8 - 4


def test_no_capacity_limit_at_inference():
    moe = identity_moe(2, 1, 0.5, norm_topk_prob=True).eval()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0
        x = torch.randn(1, 8, 8).abs()
        assert torch.allclose(moe(x), x) and moe.dropped == 0


def test_one_expert_top_1_without_capacity_equals_the_dense_mlp():
    dense_cfg = GPTConfig(**SMALL)
    moe_cfg = GPTConfig(**SMALL, n_experts=1, moe_top_k=1, capacity_factor=None)
    dense, moe = make_mlp(dense_cfg), make_mlp(moe_cfg)
    assert isinstance(dense, MLP) and isinstance(moe, MoE)
    moe.experts[0].load_state_dict(dense.state_dict())
    x = torch.randn(2, 5, 32)
    moe.train()
    assert torch.allclose(moe(x), dense(x), atol=1e-6)
    assert moe.dropped == 0 and moe.aux_loss.item() == pytest.approx(1.0)


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_count_params_total_and_active(mlp):
    cfg = GPTConfig(**SMALL, mlp=mlp, n_experts=4, moe_top_k=2, d_ff=48)
    m = GPT(cfg)
    counts = count_params(cfg)
    assert counts["total"] == m.num_params()
    assert counts["mlp"] == sum(p.numel() for b in m.blocks for p in b.mlp.parameters())
    one_expert = sum(p.numel() for p in m.blocks[0].mlp.experts[0].parameters())
    assert counts["total"] - counts["active"] == 2 * (4 - 2) * one_expert
    dense = count_params(GPTConfig(**SMALL, mlp=mlp, d_ff=48))
    assert dense["active"] == dense["total"]


def test_moe_with_two_of_four_experts_has_the_active_count_of_a_dense_model_twice_as_wide():
    moe = count_params(GPTConfig(**SMALL, n_experts=4, moe_top_k=2, d_ff=32))
    dense = count_params(GPTConfig(**SMALL, d_ff=64))
    router = SMALL["n_layers"] * SMALL["d_model"] * 4
    # biases: each expert has its own down_proj bias, so two active experts carry two of them
    bias = SMALL["n_layers"] * SMALL["d_model"]
    assert moe["active"] == dense["total"] + router + bias


def test_gpt_with_moe_trains_and_the_aux_loss_reaches_the_router():
    cfg = GPTConfig(**SMALL, n_experts=4, moe_top_k=2, moe_aux_weight=0.5)
    m = GPT(cfg).train()
    idx = torch.randint(0, 40, (2, 16))
    m(idx)
    aux = moe_aux_loss(m)
    assert isinstance(aux, torch.Tensor) and aux.item() >= 0.5 * 2 * 1.0 - 1e-6  # >= weight*L*1
    aux.backward()
    assert all(b.mlp.router.weight.grad.abs().sum() > 0 for b in m.blocks)


def test_aux_loss_is_zero_for_a_dense_model_or_zero_weight():
    m = GPT(GPTConfig(**SMALL))
    m(torch.randint(0, 40, (1, 8)))
    assert moe_aux_loss(m) == 0.0
    m = GPT(GPTConfig(**SMALL, n_experts=2, moe_aux_weight=0.0))
    m(torch.randint(0, 40, (1, 8)))
    assert moe_aux_loss(m) == 0.0


def test_moe_model_decodes_with_cache_like_the_full_pass():
    m = GPT(GPTConfig(**SMALL, n_experts=4, moe_top_k=2, capacity_factor=0.5)).eval()
    idx = torch.randint(0, 40, (1, 12))
    with torch.no_grad():
        caches = m.make_caches(1)
        parts = [m(idx[:, :5], caches=caches)] + [m(idx[:, t:t + 1], caches=caches)
                                                 for t in range(5, 12)]
        assert torch.allclose(torch.cat(parts, 1), m(idx), atol=1e-5)


def test_train_loop_adds_the_aux_loss(monkeypatch):
    from companion import train as train_mod
    from companion.train import TrainConfig, train

    calls = []
    real = train_mod.moe_aux_loss
    monkeypatch.setattr(train_mod, "moe_aux_loss", lambda model: calls.append(1) or real(model))
    ids = torch.randint(0, 40, (400,))
    cfg = TrainConfig(max_steps=2, batch_size=2, context_length=8, eval_interval=2, eval_iters=1,
                      warmup_steps=1)
    hist = train(GPT(GPTConfig(**SMALL, n_experts=2, moe_top_k=1)), ids, ids, cfg,
                 progress=False)
    assert len(calls) == 2 and len(hist["train_loss"]) == 2


@pytest.mark.parametrize("bad, words", [
    (dict(n_experts=-1), "n_experts"),
    (dict(n_experts=2.0), "n_experts"),
    (dict(n_experts=4, moe_top_k=5), "moe_top_k"),
    (dict(n_experts=4, moe_top_k=0), "moe_top_k"),
    (dict(n_experts=4, capacity_factor=0.0), "capacity_factor"),
    (dict(n_experts=4, moe_aux_weight=-0.1), "moe_aux_weight"),
    (dict(n_experts=4, moe_norm_topk_prob=1), "moe_norm_topk_prob"),
])
def test_bad_moe_configs_raise(bad, words):
    with pytest.raises(ValueError, match=words):
        GPTConfig(**SMALL, **bad)


def test_dense_config_ignores_the_moe_knobs_and_round_trips():
    cfg = GPTConfig(**SMALL, n_experts=4, moe_top_k=2)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    assert GPTConfig(**SMALL, moe_top_k=99).n_experts == 0  # dense: top-k unused
