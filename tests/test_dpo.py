"""companion.dpo: eq. 7 by hand, a second formulation (loss and gradient), masked sums, KL."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from companion.dpo import answer_kl, dpo_loss, dpo_loss_as_classification, sequence_logps


def logps(seed: int, n: int = 6) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(-5 * torch.rand(n, generator=g)).requires_grad_(i < 2) for i in range(4)]


def test_no_preference_costs_log_two():
    loss, chosen, rejected = dpo_loss(*[torch.zeros(3)] * 4)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    assert torch.equal(chosen, torch.zeros(3)) and torch.equal(rejected, torch.zeros(3))


def test_hand_worked_case():
    """pi_c=-1, pi_r=-3, ref_c=ref_r=-2, beta=0.5: rewards 0.5 and -0.5, loss -log sigmoid(1)."""
    loss, rc, rr = dpo_loss(
        torch.tensor([-1.0]),
        torch.tensor([-3.0]),
        torch.tensor([-2.0]),
        torch.tensor([-2.0]),
        beta=0.5,
    )
    assert math.isclose(loss.item(), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    assert math.isclose(rc.item(), 0.5) and math.isclose(rr.item(), -0.5)


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 5.0])
def test_loss_is_minus_log_sigmoid_of_beta_delta(beta):
    pc, pr, rc, rr = logps(0)
    delta = (pc - rc) - (pr - rr)
    want = -torch.log(torch.sigmoid(beta * delta)).mean()
    assert torch.allclose(dpo_loss(pc, pr, rc, rr, beta)[0], want, atol=1e-6)


@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_second_formulation_gives_the_same_loss_and_gradient(beta):
    a = logps(1)
    b = [t.detach().clone().requires_grad_(t.requires_grad) for t in a]
    loss_a = dpo_loss(*a, beta=beta)[0]
    loss_b = dpo_loss_as_classification(*b, beta=beta)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    loss_a.backward()
    loss_b.backward()
    for x, y in zip(a[:2], b[:2]):
        assert torch.allclose(x.grad, y.grad, atol=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down_with_weight_sigmoid_minus_margin():
    """d loss / d pi_c = -beta * sigmoid(-beta * delta) / B (eq. 8 of the paper, per pair)."""
    pc, pr, rc, rr = logps(2)
    beta = 0.3
    dpo_loss(pc, pr, rc, rr, beta)[0].backward()
    delta = ((pc - rc) - (pr - rr)).detach()
    weight = beta * torch.sigmoid(-beta * delta) / len(pc)
    assert torch.allclose(pc.grad, -weight, atol=1e-6) and torch.allclose(
        pr.grad, weight, atol=1e-6
    )


def test_large_margins_stay_finite():
    loss = dpo_loss(
        torch.tensor([0.0]), torch.tensor([-1e4]), torch.tensor([-1e4]), torch.tensor([0.0])
    )[0]
    assert torch.isfinite(loss) and loss.item() < 1e-6
    loss = dpo_loss(
        torch.tensor([-1e4]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([-1e4])
    )[0]
    assert math.isclose(loss.item(), 0.1 * 2e4, rel_tol=1e-4)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(*[torch.zeros(2)] * 4, beta=0.0)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2))


def test_sequence_logps_sums_only_masked_positions():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(2, 5, 7, generator=g), torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 0], [1, 1, 1, 1, 1]])
    full = F.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    want = torch.stack([full[0, 2:4].sum(), full[1].sum()])
    assert torch.allclose(sequence_logps(logits, targets, mask), want, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        sequence_logps(logits, targets, mask[:, :4])


def test_answer_kl_is_zero_for_equal_models_and_matches_torch():
    g = torch.Generator().manual_seed(3)
    p, q = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0]])
    assert answer_kl(p, p, mask).abs().item() < 1e-6
    per = F.kl_div(q.log_softmax(-1), p.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(answer_kl(p, q, mask), per[mask.bool()].mean(), atol=1e-6)


def test_on_policy_pairs_pair_right_with_distinct_wrong_within_a_prompt():
    from companion.dpo import on_policy_pairs

    rollout = [([1], [5, 0]), ([1], [6, 0]), ([1], [6, 0]), ([1], [5, 0]),
               ([2], [5, 0]), ([2], [5, 0]), ([2], [5, 0]), ([2], [5, 0])]
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    pairs = on_policy_pairs(rollout, rewards, 4)
    assert pairs == [([1], [5, 0], [6, 0])]  # one distinct wrong answer; prompt 2 all right
    with pytest.raises(ValueError, match="whole groups"):
        on_policy_pairs(rollout[:3], rewards[:3], 4)


def test_train_dpo_learns_to_prefer_the_chosen_answers():
    from companion.dpo import train_dpo
    from companion.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8, context_length=8, d_model=16, n_layers=1, n_heads=2,
                          d_ff=32)).eval()
    ref = copy.deepcopy(model)
    pairs = [([1, 2], [3, 0], [4, 0]), ([2, 1], [3, 0], [5, 0])] * 4
    log = train_dpo(model, ref, pairs, beta=0.5, steps=30, lr=1e-2, batch=8)
    assert log["pref_acc"][-1] == 1.0 and log["margin"][-1] > log["margin"][0]
    assert log["loss"][-1] < log["loss"][0]
    with pytest.raises(ValueError, match="no preference pairs"):
        train_dpo(model, ref, [], beta=0.1, steps=1)
