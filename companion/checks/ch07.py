"""Self-checks for chapter 7's exercises.

Warmup + cosine, AdamW groups, gradient accumulation, resuming.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..checkpoint import save_checkpoint
from ..model import GPT, GPTConfig
from ..train import (TrainConfig, lr_at, make_checkpoint, make_optimizer, next_token_loss,
                     param_groups)
from ._core import as_scalar, call, fail, passed

__all__ = ["check_7_1", "check_7_2", "check_7_3", "check_7_4"]

TINY = GPTConfig(vocab_size=11, context_length=8, d_model=16, n_layers=2, n_heads=2)


def check_7_1(lr_at_step: Callable[[int, float, float, int, int], float]) -> None:
    """lr_at_step(step, max_lr, min_lr, warmup, decay_steps).

    Linear warmup to max_lr, cosine to min_lr, then flat.
    """
    ex = "7.1"
    max_lr, min_lr, warmup, decay = 1e-3, 1e-4, 10, 110

    def run(step: int) -> float:
        return as_scalar(
            ex, call(ex, lr_at_step, step, max_lr, min_lr, warmup, decay), f"lr at step {step}"
        )

    cfg = TrainConfig(max_steps=decay, lr=max_lr, min_lr=min_lr, warmup_steps=warmup)
    got0 = run(0)
    if math.isclose(got0, max_lr):
        fail(ex, f"step 0 already has the peak {max_lr}: there is no warmup. For step < warmup use "
                 "max_lr * (step + 1) / warmup.")
    if got0 == 0:
        fail(ex, "step 0 gives lr 0, so the first update does nothing: use (step + 1) / warmup, "
                 "which reaches max_lr at step warmup - 1.")
    if not math.isclose(run(9), max_lr, rel_tol=1e-6):
        fail(ex, f"the warmup should reach max_lr={max_lr} at step warmup - 1 = 9, got {run(9)}")
    if math.isclose(run(110), 0.0, abs_tol=1e-12) or math.isclose(
        run(60), max_lr / 2, rel_tol=1e-6
    ):
        fail(ex, f"the cosine ends at min_lr={min_lr}, not 0: lr = min_lr + (max_lr - min_lr) * "
                 "(1 + cos(pi * progress)) / 2.")
    if not math.isclose(run(60), 5.5e-4, rel_tol=1e-6):
        fail(ex, "halfway through the decay (step 60) the lr is (max_lr + min_lr) / 2 = 5.5e-4, "
                 f"got {run(60)}")
    for step in (110, 150, 1000):
        if not math.isclose(run(step), min_lr, rel_tol=1e-6):
            fail(ex, f"from decay_steps={decay} on the lr stays at min_lr={min_lr}; step {step} "
                     f"gave {run(step)}")
    bad = [s for s in range(0, 200, 7) if not math.isclose(run(s), lr_at(s, cfg), rel_tol=1e-6)]
    if bad:
        fail(ex, f"differs from companion.train.lr_at at steps {bad[:5]}")
    passed(ex, "warmup from (1/10) max_lr, peak at step 9, cosine through 5.5e-4 to min_lr, flat "
               "after; matches lr_at.")


def check_7_2(split_params: Callable[[torch.nn.Module, float], list[dict]]) -> None:
    """split_params(model, weight_decay) -> two AdamW parameter groups.

    [{"params": decayed, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}].
    """
    ex = "7.2"
    for config in (
        TINY,
        GPTConfig.llama(
            **{
                k: getattr(TINY, k)
                for k in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads")
            }
        ),
    ):
        model = GPT(config)
        groups = call(ex, split_params, model, 0.1)
        if not (
            isinstance(groups, (list, tuple))
            and len(groups) == 2
            and all(isinstance(g, dict) for g in groups)
        ):
            fail(ex, "return a list of two dicts, each with 'params' and 'weight_decay'")
        if groups[0].get("weight_decay") != 0.1 or groups[1].get("weight_decay") != 0.0:
            fail(ex, "the first group decays (weight_decay=0.1), the second does not "
                     "(weight_decay=0.0)")
        decay, rest = ([id(p) for p in g["params"]] for g in groups)
        want_decay, want_rest = ({id(p) for p in g["params"]} for g in param_groups(model, 0.1))
        if len(decay) + len(rest) != len(set(decay) | set(rest)):
            fail(ex, "a parameter appears twice: with tied embeddings lm_head.weight IS "
                     "tok_emb.weight; list it once (model.parameters() already yields it once).")
        if set(decay) | set(rest) != want_decay | want_rest:
            fail(ex, "every trainable parameter belongs to exactly one group; some are missing")
        if id(model.tok_emb.weight) in decay:
            fail(ex, "you decay the token embedding. It is 2-D like a weight matrix, but rare "
                     "tokens' rows would shrink between their rare updates: embeddings go in the "
                     "no-decay group.")
        names = {id(p): n for n, p in model.named_parameters()}
        wrong = sorted(names[i] for i in set(decay) - want_decay)
        if wrong:
            fail(ex, f"these should not decay (biases, norm scales, embeddings): {wrong[:4]}")
        missing = sorted(names[i] for i in want_decay - set(decay))
        if missing:
            fail(ex, f"these weight matrices should decay: {missing[:4]}")
    passed(ex, "weight matrices decay; biases, norms and embeddings do not; tied weights appear "
               "once (GPT-2 and LLaMA styles).")


def check_7_3(
    accumulate: Callable[[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]], float],
) -> None:
    """accumulate(model, micro_batches) -> mean loss.

    Leaves in .grad the gradient of one batch made of them all.
    """
    ex = "7.3"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, TINY.vocab_size, (6, 8), generator=g)
    y = torch.randint(0, TINY.vocab_size, (6, 8), generator=g)
    torch.manual_seed(0)
    model = GPT(TINY)
    next_token_loss(model(x), y).backward()
    want = [p.grad.clone() for p in model.parameters()]
    want_loss = next_token_loss(model(x), y).item()
    model.zero_grad(set_to_none=True)
    loss = as_scalar(
        ex,
        call(ex, accumulate, model, [(x[i : i + 2], y[i : i + 2]) for i in range(0, 6, 2)]),
        "the loss",
    )
    got = [p.grad for p in model.parameters()]
    if any(t is None for t in got):
        fail(ex, "some .grad is None: call loss.backward() for every micro-batch and don't zero "
                 "the gradients at the end.")
    ratio = (got[0] * want[0]).sum().item() / (want[0] * want[0]).sum().item()
    if math.isclose(ratio, 3.0, rel_tol=1e-3):
        fail(ex, "the gradients are 3x too large: with 3 micro-batches divide each loss by 3 "
                 "before backward, so the sum of the gradients is their mean.")
    if math.isclose(ratio, 1 / 3, rel_tol=0.2):
        fail(ex, "the gradients look like one micro-batch's share only: don't zero .grad between "
                 "micro-batches; backward adds into .grad.")
    if not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want)):
        fail(ex, "the accumulated gradients differ from one batch of all 6 rows")
    if not math.isclose(loss, want_loss, rel_tol=1e-5):
        fail(ex, f"return the mean loss over the micro-batches, {want_loss:.4f}; got {loss:.4f}")
    passed(ex, "3 micro-batches of 2 give the gradient and the loss of one batch of 6.")


def check_7_4(
    resume_from: Callable[[str, torch.nn.Module, torch.optim.Optimizer, torch.Generator], int],
) -> None:
    """resume_from(path, model, optimizer, generator) -> the step to resume at.

    It restores the weights, the optimizer and the batch generator.
    """
    ex = "7.4"
    cfg = TrainConfig(max_steps=10, batch_size=2, context_length=8, warmup_steps=1)
    torch.manual_seed(0)
    model = GPT(TINY)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):  # three real steps, so the optimizer has moments worth keeping
        x = torch.randint(0, TINY.vocab_size, (2, 8), generator=gen)
        next_token_loss(model(x), x).backward()
        opt.step()
        opt.zero_grad()
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(Path(tmp) / "ckpt.pt", make_checkpoint(model, opt, cfg, 3, {}, gen))
        torch.manual_seed(1)
        fresh = GPT(TINY)
        fresh_opt = make_optimizer(fresh, cfg)
        fresh_gen = torch.Generator().manual_seed(123)
        step = call(ex, resume_from, str(path), fresh, fresh_opt, fresh_gen)
    if step != 3:
        fail(ex, f"return the step stored in the checkpoint (3), got {step!r}")
    if not all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values())
    ):
        fail(
            ex, "the model's weights were not restored: model.load_state_dict(checkpoint['model'])"
        )
    if not fresh_opt.state:
        fail(ex, "the optimizer's moments were not restored: "
                 "optimizer.load_state_dict(checkpoint['optimizer']). Without them AdamW restarts "
                 "its running averages and the losses jump.")
    p0 = next(iter(model.parameters()))
    q0 = next(iter(fresh.parameters()))
    if not torch.equal(opt.state[p0]["exp_avg"], fresh_opt.state[q0]["exp_avg"]):
        fail(ex, "the optimizer state differs from the saved one")
    if not torch.equal(gen.get_state(), fresh_gen.get_state()):
        fail(ex, "the batch sampler's generator was not restored: "
                 "generator.set_state(checkpoint['rng']['generators'][0]). Without it the resumed "
                 "run draws different batches than the uninterrupted one.")
    passed(ex, "weights, AdamW moments and the batch generator come back, and the step is 3.")
