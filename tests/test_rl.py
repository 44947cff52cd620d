"""companion.rl: per-token log-probs, masked means, SFT accumulation, group advantages, the three
policy-gradient losses, rollouts and a GRPO run that raises its reward."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from companion.model import GPT, GPTConfig
from companion.rl import (
    GRPOConfig,
    grpo_clip_loss,
    group_advantages,
    masked_mean,
    masked_normalize,
    naive_pg_loss,
    pg_microbatch_step,
    policy_gradient_loss,
    response_logprobs,
    rollout_tensors,
    sample_groups,
    sft_microbatch_step,
    token_entropy,
    token_logprobs,
    train_grpo,
)


def tiny(vocab: int = 8, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab, context_length=16, d_model=32, n_layers=1, n_heads=2,
                    d_ff=64, norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)
    return GPT(cfg).eval()


def test_token_logprobs_are_the_targets_own_not_a_neighbours():
    logits = torch.randn(2, 5, 7)
    y = torch.randint(7, (2, 5))
    got = token_logprobs(logits, y)
    want = torch.stack([torch.stack([logits[b, t].log_softmax(-1)[y[b, t]] for t in range(5)])
                        for b in range(2)])
    assert torch.allclose(got, want, atol=1e-6)
    shifted = torch.stack([torch.stack([logits[b, t].log_softmax(-1)[y[b, min(t + 1, 4)]]
                                        for t in range(5)]) for b in range(2)])
    assert not torch.allclose(got, shifted)  # an off-by-one would differ
    with pytest.raises(ValueError, match="targets"):
        token_logprobs(logits, y[:, :4])


def test_token_entropy_uniform_one_hot_and_masked_logits():
    assert torch.allclose(token_entropy(torch.zeros(1, 2, 5)), torch.full((1, 2), math.log(5)))
    hard = torch.tensor([[[0.0, float("-inf"), float("-inf")]]])
    assert token_entropy(hard).item() == 0.0  # no nan from 0 * -inf
    p = torch.tensor([0.5, 0.25, 0.25])
    assert token_entropy(p.log().view(1, 1, 3)).item() == pytest.approx(
        -(p * p.log()).sum().item())


def test_response_logprobs_entropy_has_no_grad():
    model = tiny()
    x = torch.randint(8, (2, 6))
    out = response_logprobs(model, x, x, with_entropy=True)
    assert out["log_probs"].requires_grad and not out["entropy"].requires_grad
    assert out["log_probs"].shape == out["entropy"].shape == (2, 6)


def test_masked_mean_and_normalize_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 100.0], [4.0, 100.0, 100.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, m).item() == pytest.approx(7 / 3)
    assert masked_mean(x, m, dim=1).tolist() == [1.5, 4.0]
    assert x.mean().item() != pytest.approx(7 / 3)  # the mean over padding is the mistake
    assert masked_normalize(x, m, 10.0).item() == pytest.approx(0.7)
    assert masked_normalize(x, m, 2.0, dim=1).tolist() == [1.5, 2.0]
    with pytest.raises(ValueError):
        masked_normalize(x, m, 0.0)
    with pytest.raises(ValueError):
        masked_mean(x, m[:, :2])


def test_sft_accumulation_with_unequal_micro_batches_equals_the_full_batch():
    model = tiny()
    x = torch.randint(8, (6, 7))
    y = torch.randint(8, (6, 7))
    m = torch.zeros(6, 7, dtype=torch.long)
    m[:2, -1] = 1  # micro-batch 1: one answer token per row
    m[2:, 2:] = 1  # micro-batch 2: five per row
    full = copy.deepcopy(model)
    (-masked_mean(response_logprobs(full, x, y)["log_probs"], m)).backward()
    acc = copy.deepcopy(model)
    total = int(m.sum())
    for s in (slice(0, 2), slice(2, 6)):
        sft_microbatch_step(response_logprobs(acc, x[s], y[s])["log_probs"], m[s], total)
    for p, q in zip(full.parameters(), acc.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)
    # the trap: each micro-batch averaged over its own tokens, then the two averaged
    trap = copy.deepcopy(model)
    for s in (slice(0, 2), slice(2, 6)):
        lp = response_logprobs(trap, x[s], y[s])["log_probs"]
        (-masked_mean(lp, m[s]) / 2).backward()
    assert not all(torch.allclose(p.grad, q.grad, atol=1e-4)
                   for p, q in zip(full.parameters(), trap.parameters()))


def test_group_advantages_by_hand_with_and_without_std():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    plain = group_advantages(r, 4, normalize_by_std=False)
    assert plain.tolist() == [0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0]
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std().item()  # unbiased: 0.5
    scaled = group_advantages(r, 4, normalize_by_std=True, eps=1e-6)
    assert scaled[:4].tolist() == pytest.approx([0.75 / (std + 1e-6), -0.25 / (std + 1e-6)] + [
        -0.25 / (std + 1e-6)] * 2)
    assert scaled[4:].abs().max().item() == 0.0  # an all-right group teaches nothing
    with pytest.raises(ValueError):
        group_advantages(r, 3)


def test_naive_pg_gradient_is_minus_reward_times_score():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    naive_pg_loss(torch.tensor([3.0]), lp).sum().backward()
    assert lp.grad.tolist() == [[-3.0, -3.0]]


@pytest.mark.parametrize("adv, new, old, loss, clipped", [
    (1.0, 0.0, -1.0, -1.2, 1.0),  # A > 0, ratio e > 1.2: the clip binds
    (1.0, -1.0, 0.0, -math.exp(-1), 0.0),  # A > 0, ratio < 1: no clip (pessimism keeps ratio)
    (-1.0, -1.0, 0.0, 0.8, 1.0),  # A < 0, ratio e^-1 < 0.8: the clip binds at 0.8
    (-1.0, 0.0, -1.0, math.e, 0.0),  # A < 0, ratio > 1: no clip, the full penalty
    (2.0, 0.0, 0.0, -2.0, 0.0),  # ratio 1: the plain advantage
])
def test_grpo_clip_on_both_sides_of_one(adv, new, old, loss, clipped):
    got, was = grpo_clip_loss(torch.tensor([adv]), torch.tensor([[new]]), torch.tensor([[old]]),
                              0.2)
    assert got.item() == pytest.approx(loss, rel=1e-6)
    assert was.item() == clipped


def test_a_clipped_token_has_no_gradient_and_padding_never_counts():
    new = torch.tensor([[0.0, 0.0, 5.0]], requires_grad=True)
    old = torch.tensor([[-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding, with a huge ratio
    loss, meta = pg_microbatch_step(new, mask, 1, "grpo_clip", advantages=torch.tensor([1.0]),
                                    old_log_probs=old, clip=0.2)
    assert new.grad[0, 0].item() == 0.0  # clipped: ratio e > 1.2 with A > 0
    assert new.grad[0, 1].item() == pytest.approx(-0.5)  # ratio 1, masked mean over 2 tokens
    assert new.grad[0, 2].item() == 0.0  # padding
    assert loss.item() == pytest.approx((-1.2 - 1.0) / 2)
    assert meta["clip_fraction"].item() == pytest.approx(0.5)


def test_masked_normalize_weighs_every_token_the_same_across_lengths():
    lp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])
    pg_microbatch_step(lp, mask, 1, "reinforce_with_baseline", advantages=torch.ones(2))
    by_mean = lp.grad.clone()
    lp.grad = None
    pg_microbatch_step(lp, mask, 1, "reinforce_with_baseline", advantages=torch.ones(2),
                       normalize_constant=4.0)
    assert by_mean[0, 0].item() == pytest.approx(-0.5)  # a one-token answer weighs 4x per token
    assert by_mean[1, 0].item() == pytest.approx(-0.125)
    assert lp.grad[0, 0].item() == lp.grad[1, 0].item() == pytest.approx(-0.125)


def test_policy_gradient_loss_names_what_is_missing():
    lp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="old_log_probs"):
        policy_gradient_loss(lp, "grpo_clip", advantages=torch.ones(1), clip=0.2)
    with pytest.raises(ValueError, match="loss_type"):
        policy_gradient_loss(lp, "ppo", rewards=torch.ones(1))
    with pytest.raises(ValueError, match="rewards"):
        policy_gradient_loss(lp, "no_baseline", advantages=torch.ones(1))


def test_grpo_clip_at_ratio_one_is_reinforce_with_baseline():
    model = tiny()
    x = torch.randint(8, (4, 6))
    m = torch.ones(4, 6, dtype=torch.long)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    grads = []
    for loss_type in ("grpo_clip", "reinforce_with_baseline"):
        mdl = copy.deepcopy(model)
        lp = response_logprobs(mdl, x, x)["log_probs"]
        args = {"advantages": adv}
        if loss_type == "grpo_clip":
            args.update(old_log_probs=lp.detach(), clip=0.2)
        pg_microbatch_step(lp, m, 1, loss_type, **args)
        grads.append([p.grad for p in mdl.parameters()])
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(*grads))


def test_without_a_baseline_an_all_right_group_still_pushes():
    model = tiny()
    x = torch.randint(8, (4, 6))
    m = torch.ones(4, 6, dtype=torch.long)
    rewards = torch.ones(4)
    lp = response_logprobs(model, x, x)["log_probs"]
    pg_microbatch_step(lp, m, 1, "no_baseline", rewards=rewards)
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0
    model.zero_grad()
    lp = response_logprobs(model, x, x)["log_probs"]
    pg_microbatch_step(lp, m, 1, "reinforce_with_baseline",
                       advantages=group_advantages(rewards, 4))
    assert sum(p.grad.abs().sum() for p in model.parameters()) == 0


def test_rollout_tensors_mask_the_response_targets_only():
    x, y, m = rollout_tensors([([5, 6], [7, 8]), ([1], [2])], pad_id=0)
    assert x.tolist() == [[5, 6, 7], [1, 0, 0]]
    assert y.tolist() == [[6, 7, 8], [2, 0, 0]]
    assert m.tolist() == [[0, 1, 1], [1, 0, 0]]


def test_sample_groups_keeps_prompt_order_groups_and_cuts_at_stop():
    model = tiny()
    prompts = [[1, 2, 3], [4], [5, 6, 7]]
    g = torch.Generator().manual_seed(0)
    out = sample_groups(model, prompts, 3, 6, stop_id=0, generator=g)
    assert len(out) == 9 and out.group_size == 3
    for j, (p, r) in enumerate(out):
        assert p == prompts[j // 3]
        assert 1 <= len(r) <= 6
        assert 0 not in r[:-1]  # nothing after the first stop
    again = sample_groups(model, prompts, 3, 6, stop_id=0,
                          generator=torch.Generator().manual_seed(0))
    assert list(again) == list(out)


def test_grpo_raises_the_reward_of_a_toy_task():
    """Reward 1 for answering token 5 and stopping: a few batches of GRPO learn it."""
    model = tiny(seed=1)
    prompts = [[1, 2], [3, 4], [2, 3], [4, 1]]

    def verify(i: int, resp: list[int]) -> float:
        return float(resp == [5, 0])

    cfg = GRPOConfig(steps=12, prompts_per_step=4, group_size=8, lr=1e-2, max_new_tokens=3,
                     micro_batch=16)
    log = train_grpo(model, prompts, verify, stop_id=0, config=cfg)
    assert log["reward"][0] < 0.2
    assert max(log["reward"][-3:]) > 0.5
    assert max(log["clip_fraction"]) > 0  # a second epoch per batch moved the ratio past the clip
    with pytest.raises(ValueError):
        GRPOConfig(group_size=0)


def test_scoring_mid_run_through_on_batch_leaves_the_run_unchanged():
    """on_batch sees every batch, and a greedy pass inside it changes no weight and no sample."""
    prompts = [[1, 2], [3, 4], [2, 3], [4, 1]]

    def verify(i: int, resp: list[int]) -> float:
        return float(resp == [5, 0])

    cfg = GRPOConfig(steps=4, prompts_per_step=2, group_size=4, lr=1e-2, max_new_tokens=3,
                     micro_batch=8)
    plain = tiny(seed=1)
    log_plain = train_grpo(plain, prompts, verify, stop_id=0, config=cfg)
    scored = tiny(seed=1)
    seen: list[int] = []

    def score_now(n: int) -> None:
        seen.append(n)
        with torch.no_grad():
            scored(torch.tensor([[1, 2, 3]])).argmax(-1)

    log_scored = train_grpo(scored, prompts, verify, stop_id=0, config=cfg, on_batch=score_now)
    assert seen == [1, 2, 3, 4]
    assert log_scored["reward"] == log_plain["reward"]
    for a, b in zip(plain.parameters(), scored.parameters()):
        assert torch.equal(a, b)
