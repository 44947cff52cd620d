"""Self-checks for chapter 7's exercises.

Warmup + cosine, AdamW groups, gradient accumulation, resuming, the over-fitting step, a
learning-rate sweep, Muon's Newton–Schulz iteration, and Adam's step with L2 or decoupled decay.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..checkpoint import save_checkpoint
from ..model import GPT, GPTConfig
from ..muon import newton_schulz
from ..train import (TrainConfig, lr_at, make_checkpoint, make_optimizer, next_token_loss,
                     param_groups, train)
from ..utils import set_seed
from ._core import as_scalar, call, fail, passed

__all__ = ["check_7_1", "check_7_2", "check_7_3", "check_7_4", "check_7_5", "check_7_6",
           "check_7_7", "check_7_8", "SWEEP_MODEL", "SWEEP_LRS", "sweep_config"]

TINY = GPTConfig(vocab_size=11, context_length=8, d_model=16, n_layers=2, n_heads=2)


def check_7_1(wsd_lr: Callable[..., float]) -> None:
    """wsd_lr(step, max_lr, min_lr, warmup, total, decay_fraction, shape): warmup-stable-decay
    with a "linear" or "1-sqrt" cool-down (Hägele et al. 2024)."""
    ex = "7.1"
    max_lr, min_lr, warmup, total = 1e-3, 1e-4, 10, 110

    def run(step: int, frac: float = 0.2, shape: str = "linear") -> float:
        return as_scalar(ex, call(ex, wsd_lr, step, max_lr, min_lr, warmup, total, frac, shape),
                         f"lr at step {step} ({shape}, decay_fraction={frac})")

    got0 = run(0)
    if math.isclose(got0, max_lr):
        fail(ex, f"step 0 already has the peak {max_lr}: there is no warmup. For step < warmup use "
                 "max_lr * (step + 1) / warmup.")
    if got0 == 0:
        fail(ex, "step 0 gives lr 0, so the first update does nothing: use (step + 1) / warmup, "
                 "which reaches max_lr at step warmup - 1.")
    if not math.isclose(run(warmup - 1), max_lr, rel_tol=1e-6):
        fail(ex, f"the warmup should reach max_lr={max_lr} at step warmup - 1 = {warmup - 1}, "
                 f"got {run(warmup - 1)}")
    if not math.isclose(run(warmup), max_lr, rel_tol=1e-6):
        fail(ex, f"at step warmup = {warmup} the stable phase holds max_lr={max_lr}, got "
                 f"{run(warmup)} (warmup is step < warmup, not <=)")
    # decay_fraction 0.25 of 110 is 27.5: round() gives 28 (start 82), int() 27 (start 83)
    for step in (60, 81, 82):
        if not math.isclose(run(step, 0.25), max_lr, rel_tol=1e-6):
            fail(ex, f"with decay_fraction=0.25 the decay starts at step 82 (110 - round(27.5)); "
                     f"step {step} should still be at max_lr, got {run(step, 0.25)}")
    if math.isclose(run(83, 0.25), max_lr, rel_tol=1e-9):
        fail(ex, "with decay_fraction=0.25 the decay should have begun at step 82: start is "
                 "max(warmup, total - round(decay_fraction * total)); int() truncates 27.5 to 27")
    for step in (total, total + 5, 1000):
        for shape in ("linear", "1-sqrt"):
            if not math.isclose(run(step, shape=shape), min_lr, rel_tol=1e-6):
                fail(ex, f"from step total={total} on the lr stays at min_lr={min_lr}; step "
                         f"{step} ({shape}) gave {run(step, shape=shape)}")
    half_lin, half_sqrt = run(99), run(99, shape="1-sqrt")  # start 88: step 99 is p = 0.5
    if math.isclose(half_sqrt, min_lr + math.sqrt(0.5) * (max_lr - min_lr), rel_tol=1e-6):
        fail(ex, "your 1-sqrt cool-down uses sqrt(p) where it needs 1 - sqrt(p): it must fall "
                 "from max_lr to min_lr")
    if math.isclose(half_sqrt, half_lin, rel_tol=1e-9):
        fail(ex, "shape='1-sqrt' gives the same rate as 'linear': read the shape argument")
    if math.isclose(half_lin, min_lr + (1 - math.sqrt(0.5)) * (max_lr - min_lr), rel_tol=1e-6):
        fail(ex, "shape='linear' gives the 1-sqrt rate: the two shapes are swapped")
    if not math.isclose(half_lin, 5.5e-4, rel_tol=1e-6):
        p_off = 11 / 21  # (step - start) / (total - start - 1)
        hint = (" The progress runs over total - start steps, not total - start - 1."
                if math.isclose(half_lin, max_lr - p_off * (max_lr - min_lr), rel_tol=1e-6)
                else "")
        fail(ex, f"halfway through the linear cool-down (step 99, p = 0.5) the lr is 5.5e-4, got "
                 f"{half_lin}.{hint}")
    want_sqrt = min_lr + (1 - math.sqrt(0.5)) * (max_lr - min_lr)
    if not math.isclose(half_sqrt, want_sqrt, rel_tol=1e-6):
        fail(ex, f"halfway through the 1-sqrt cool-down the lr is min_lr + (1 - sqrt(0.5)) * "
                 f"(max_lr - min_lr) = {want_sqrt:.4e}, got {half_sqrt}")
    for frac in (0.2, 0.25, 1.0):
        cfg = TrainConfig(max_steps=total, lr=max_lr, min_lr=min_lr, warmup_steps=warmup,
                          lr_schedule="wsd", decay_fraction=frac)
        bad = [s for s in [*range(0, 130, 3), warmup, 81, 82, 83, total - 1, total]
               if not math.isclose(run(s, frac), lr_at(s, cfg), rel_tol=1e-6)]
        if bad:
            fail(ex, f"the linear shape differs from companion.train.lr_at (WSD, decay_fraction="
                     f"{frac}) at steps {bad[:5]}")
    passed(ex, "warmup to the peak at step 9, stable until total - round(fraction * total), a "
               "linear or 1-sqrt cool-down to min_lr, flat after; the linear one matches lr_at.")


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
            fail(ex, "you decay the token embedding. That is nanoGPT's convention (every "
                     "parameter of 2 or more dimensions decays), but this exercise follows the "
                     "companion's: a rare token's row would shrink between its rare updates, so "
                     "embeddings go in the no-decay group.")
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
    accumulate: Callable[[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]], float],
                         tuple[float, float]],
) -> None:
    """accumulate(model, micro_batches, max_norm) -> (mean loss, gradient norm before clipping).

    Leaves in .grad the gradient of one batch made of them all, clipped to max_norm.
    """
    ex = "7.3"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, TINY.vocab_size, (6, 8), generator=g)
    y = torch.randint(0, TINY.vocab_size, (6, 8), generator=g)
    sizes = (2, 3, 1)  # unequal: the last micro-batch of an epoch often is
    cuts = [0, 2, 5, 6]
    micro = [(x[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:])]
    torch.manual_seed(0)
    model = GPT(TINY)

    def grads_of(weights: list[float]) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        for (xb, yb), w in zip(micro, weights):
            (next_token_loss(model(xb), yb) * w).backward()
        return [p.grad.clone() for p in model.parameters()]

    def clipped(gs: list[torch.Tensor], limit: float) -> list[torch.Tensor]:
        norm = torch.sqrt(sum(t.pow(2).sum() for t in gs))
        return [t * min(1.0, limit / (norm.item() + 1e-6)) for t in gs]

    whole = [n / 6 for n in sizes]
    want_raw = grads_of(whole)
    want_norm = torch.sqrt(sum(t.pow(2).sum() for t in want_raw)).item()
    max_norm = want_norm / 2  # clipping is on: the gradient is twice the limit
    want = clipped(want_raw, max_norm)
    want_loss = next_token_loss(model(x), y).item()
    wrong = {  # plausible gradients, each with a diagnosis
        # clipped, 1/k and no weighting at all point the same way
        "weights 1/k": (clipped(grads_of([1 / 3] * 3), max_norm),
                        "the micro-batches hold 2, 3 and 1 rows: weight each one's mean loss by "
                        "its share of all the rows (n_i / N), not by 1/k (nor 1), so that the "
                        "sum is the mean over the whole batch"),
        "no clip": (want_raw, "the gradient was not clipped: rescale it to max_norm once all "
                              "micro-batches have been added (torch.nn.utils.clip_grad_norm_)"),
    }
    model.zero_grad(set_to_none=True)
    calls: list[int] = []
    backwards: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    first = next(model.parameters())
    grad_hook = first.register_hook(lambda grad: backwards.append(1))
    try:
        out = call(ex, accumulate, model, [(a.clone(), b.clone()) for a, b in micro], max_norm)
    finally:
        hook.remove()
        grad_hook.remove()
    if not isinstance(out, tuple) or len(out) != 2:
        fail(ex, "return two numbers: (mean loss, gradient norm before clipping)")
    loss, norm = (as_scalar(ex, v, w) for v, w in zip(out, ("the loss", "the norm")))
    if any(c > max(sizes) for c in calls) or len(calls) < len(micro):
        fail(ex, f"the model saw batches of {calls} rows: one big batch. Accumulation exists "
                 "because the whole batch does not fit; run forward and backward on each "
                 "micro-batch in turn.")
    if len(backwards) == 1:
        fail(ex, "one backward over the summed losses keeps every micro-batch's graph in memory "
                 "at once, which is what accumulation avoids: call backward once per "
                 "micro-batch and let .grad add up.")
    got = [p.grad for p in model.parameters()]
    if any(t is None for t in got):
        fail(ex, "some .grad is None: call backward for every micro-batch and don't zero the "
                 "gradients at the end.")

    def same(gs: list[torch.Tensor]) -> bool:
        return all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, gs))

    if not same(want):
        for candidate, message in wrong.values():
            if same(candidate):
                fail(ex, message + ".")
        fail(ex, "the clipped, accumulated gradients differ from one batch of all 6 rows "
                 "clipped once: clip after the last micro-batch, not after each one.")
    if math.isclose(norm, max_norm, rel_tol=1e-4):
        fail(ex, f"return the norm before clipping ({want_norm:.4f}, what clip_grad_norm_ "
                 f"returns), not after it ({max_norm:.4f}).")
    if not math.isclose(norm, want_norm, rel_tol=1e-4):
        fail(ex, f"the gradient norm before clipping is {want_norm:.4f}; got {norm:.4f}")
    if not math.isclose(loss, want_loss, rel_tol=1e-5):
        fail(ex, f"return the mean loss over all the rows, {want_loss:.4f} (each micro-batch "
                 f"weighted by its size); got {loss:.4f}")
    passed(ex, "micro-batches of 2, 3 and 1 rows give the gradient, the loss and the norm of one "
               "batch of 6, clipped once after the last.")


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


def _history(steps: list[int], train: list[float], val: list[float]) -> dict[str, list]:
    return {"eval_step": list(steps), "eval_train": list(train), "eval_val": list(val)}


def _curves() -> list[tuple[str, dict[str, list], int | None]]:
    """Histories in companion.train's format, each with the answer."""
    steps = list(range(0, 2600, 250))
    # train falls throughout; val bottoms out at step 1250, then creeps up (the 5M recipe's shape)
    train = [4.2 - 3.0 * (1 - math.exp(-s / 600)) for s in steps]
    val = [4.2 - 2.7 * (1 - math.exp(-s / 500)) + 2.2e-7 * max(0, s - 1000) ** 2 for s in steps]
    bumpy = [v + 0.004 * (-1) ** i for i, v in enumerate(val)]
    # the training loss turns up after validation's best step (1500)
    rising_train = train[:7] + [train[6] + 0.1 * k for k in range(1, len(train) - 6)]
    resumed = [0, 100, 200, 400, 800, 1600, 3200]  # uneven intervals
    return [
        ("a run that over-fits after step 1250", _history(steps, train, val), steps[min(
            range(len(val)), key=val.__getitem__)]),
        ("the same, with noise", _history(steps, train, bumpy), steps[min(
            range(len(bumpy)), key=bumpy.__getitem__)]),
        ("a run still improving", _history(steps, train, sorted(val, reverse=True)), None),
        ("a tie at the bottom", _history(steps[:6], train[:6], [3, 2, 1.5, 1.5, 1.6, 1.7]), 500),
        ("a run whose training loss rose too", _history(steps, rising_train, val), None),
        ("uneven evaluation steps", _history(
            resumed, [4, 3, 2.5, 2.2, 2.0, 1.8, 1.6], [4, 3.1, 2.7, 2.5, 2.6, 2.8, 3.0]), 400),
        # the boundaries, in values exact in float32: a last evaluation that ties the minimum is
        # not above it; a training loss back at its value is not below it; only the last
        # evaluation decides, not the one before it
        ("a last evaluation that ties the minimum", _history(
            steps[:5], [4, 3, 2.5, 2.25, 2], [3, 2, 1.5, 1.75, 1.5]), None),
        ("a flat training loss", _history(
            steps[:6], [4, 3, 2, 2, 2, 2], [3, 2, 1.5, 1.75, 2, 2.25]), None),
        ("a rise at the last evaluation only", _history(
            steps[:5], [4, 3, 2.5, 2.25, 2], [3, 2, 1.75, 1.5, 1.625]), 750),
    ]


def check_7_5(overfit_step: Callable[[dict[str, list]], int | None]) -> None:
    """overfit_step(history) -> the step where validation bottomed out, or None.

    None when validation is still at its best at the last evaluation, or when the training loss has
    not kept falling since then.
    """
    ex = "7.5"
    for name, history, want in _curves():
        got = call(ex, overfit_step, {k: list(v) for k, v in history.items()})
        if got == want:
            continue
        steps, train, val = history["eval_step"], history["eval_train"], history["eval_val"]
        best = min(val)
        if want is None and val[-1] == best:
            fail(ex, f"{name}: validation is still at its best at the last evaluation, so the run "
                     "has not begun to over-fit: return None.")
        if want is not None and got == steps.index(want):
            fail(ex, f"{name}: {got} is a position in the lists; return the step from "
                     f"history['eval_step'], here {want}.")
        lowest_train = steps[min(range(len(train)), key=train.__getitem__)]
        if got == lowest_train and got not in (want, steps[val.index(best)]):
            fail(ex, f"{name}: {got} is where the training loss is lowest. Over-fitting is read "
                     "from the validation curve.")
        if want is not None and got == max(s for s, v in zip(steps, val) if v == best):
            fail(ex, f"{name}: the validation minimum is first reached at step {want}; return "
                     "the earliest evaluation that reaches it.")
        if want is not None and got in steps and steps.index(got) == steps.index(want) + 1:
            fail(ex, f"{name}: {got} is the first evaluation after the best one; return the step "
                     f"where validation is lowest, {want}.")
        if want is None and train[-1] == train[val.index(best)]:
            fail(ex, f"{name}: the training loss at the last evaluation equals its value at "
                     "validation's best step: it did not keep falling, so return None (below, "
                     "not below or equal).")
        if want is None:
            fail(ex, f"{name}: validation rose, but so did the training loss: that is a run "
                     "going wrong, not memorisation. Return None unless the training loss kept "
                     "falling after validation's best step.")
        if got is None and val[-1] > best:
            fail(ex, f"{name}: the last evaluation's validation loss ({val[-1]}) is above the "
                     f"minimum {best}, and the training loss kept falling: expected {want}. "
                     "Compare the *last* evaluation, history['eval_val'][-1].")
        fail(ex, f"{name}: expected {want}, got {got!r}")
    passed(ex, "finds validation's best step, the earliest on a tie, with noise and uneven "
               "intervals, and returns None while the run still improves (a tie at the last "
               "evaluation included) or the training loss rises or stays flat.")


# Exercise 7.6's experiment: a one-layer model, 60 steps of 8 x 32 characters per learning rate.
SWEEP_MODEL = GPTConfig(vocab_size=65, context_length=32, d_model=32, n_layers=1, n_heads=2)


def sweep_config(lr: float) -> TrainConfig:
    """The sweep's run at peak rate `lr`: warmup 6 steps, cosine to lr/10, one final evaluation."""
    return TrainConfig(max_steps=60, batch_size=8, context_length=32, lr=lr, min_lr=lr / 10,
                       warmup_steps=6, eval_interval=60, eval_iters=4)


SWEEP_LRS = (3e-4, 3e-3, 3e-2, 3e-1)


def _shakespeare() -> tuple[torch.Tensor, torch.Tensor]:
    from ..data import load_text
    from ..loader import train_val_split
    from ..tokenizer import CharTokenizer

    text = load_text("tinyshakespeare")
    return train_val_split(torch.tensor(CharTokenizer.from_text(text).encode(text)), 0.1)


def check_7_6(
    sweep: Callable[[list[float], torch.Tensor, torch.Tensor], tuple[dict[float, float], float]],
) -> None:
    """sweep(lrs, train_ids, val_ids) -> ({lr: final val loss}, best lr).

    Each run: set_seed(0), GPT(SWEEP_MODEL), train(..., sweep_config(lr)); the check reruns them.
    """
    threads = torch.get_num_threads()
    # a model this small gains nothing from a second thread, and loses much on a busy machine
    torch.set_num_threads(1)
    try:
        _check_7_6(sweep)
    finally:
        torch.set_num_threads(threads)


def _check_7_6(sweep: Callable[..., tuple[dict[float, float], float]]) -> None:
    ex = "7.6"
    train_ids, val_ids = _shakespeare()
    got = call(ex, sweep, list(SWEEP_LRS), train_ids, val_ids)
    if not (isinstance(got, tuple) and len(got) == 2 and isinstance(got[0], dict)):
        fail(ex, "return a pair: a dict {lr: final val loss} and the best lr")
    results, best_lr = got
    if sorted(results) != sorted(SWEEP_LRS):
        fail(ex, f"results should have one entry per swept rate {list(SWEEP_LRS)}, got "
                 f"{sorted(results)}")
    want = {}
    for lr in SWEEP_LRS:
        set_seed(0)
        history = train(GPT(SWEEP_MODEL), train_ids, val_ids, sweep_config(lr), progress=False)
        want[lr] = history["eval_val"][-1]
        loss = as_scalar(ex, results[lr], f"the loss at lr={lr}")
        if math.isclose(loss, want[lr], rel_tol=1e-4):
            continue
        if math.isclose(loss, history["eval_train"][-1], rel_tol=1e-4):
            fail(ex, f"lr={lr}: {loss:.4f} is the training split's loss; report the validation "
                     f"loss, {want[lr]:.4f}.")
        fail(ex, f"lr={lr}: expected a final val loss of {want[lr]:.4f}, got {loss:.4f}. Every run "
                 "must start from the same seed and so the same weights and batches, so that "
                 "only the learning rate differs.")
    best = min(want, key=want.get)
    if best_lr == max(want, key=want.get):
        fail(ex, f"{best_lr} has the highest loss; the best rate has the lowest.")
    if best_lr != best:
        fail(ex, f"the best rate is the swept one with the lowest val loss; got {best_lr!r}")
    ends = ", ".join(f"{want[lr]:.3f} at {lr:g}" for lr in (SWEEP_LRS[0], SWEEP_LRS[-1]))
    passed(ex, f"{len(want)} runs reproduced; on this budget the best peak rate is {best:g} "
               f"(val {want[best]:.3f}); the ends of the sweep: {ends}.")


def _muon_reference(p: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, lr: float,
                    momentum: float, weight_decay: float, nesterov: bool = True,
                    scaled: bool = True, orthogonal: bool = True, ema: bool = True,
                    decay_first: bool = True) -> None:
    """One Muon step for one matrix, in place, with switches for the plausible mistakes."""
    if ema:
        buf.lerp_(grad, 1 - momentum)
    else:
        buf.mul_(momentum).add_(grad)
    update = grad.lerp(buf, momentum) if nesterov else buf
    if orthogonal:
        update = newton_schulz(update, dtype=torch.float32)
    scale = math.sqrt(max(1.0, p.size(0) / p.size(1))) if scaled else 1.0
    if decay_first:
        p.mul_(1 - lr * weight_decay)
        p.add_(update, alpha=-lr * scale)
    else:
        p.add_(update, alpha=-lr * scale)
        p.mul_(1 - lr * weight_decay)


def check_7_7(muon_step: Callable[..., object]) -> None:
    """muon_step(p, grad, buf, lr, momentum, weight_decay) updates p and buf in place, as Muon."""
    ex = "7.7"
    lr, mu, wd = 0.05, 0.9, 0.2
    mistakes = {
        "nesterov": ("the update should look ahead (Nesterov): orthogonalise grad.lerp(buf, "
                     "momentum), not the buffer itself"),
        "scaled": ("a tall matrix (more rows than columns) needs its update scaled by "
                   "sqrt(rows / cols): its U Vᵀ has smaller entries"),
        "orthogonal": "the update must go through newton_schulz before the step: that is Muon",
        "ema": ("the buffer is an average, buf <- momentum * buf + (1 - momentum) * grad "
                "(buf.lerp_(grad, 1 - momentum)), not a running sum"),
        "decay_first": ("decoupled weight decay shrinks p by (1 - lr * weight_decay) before the "
                        "update is added"),
    }
    g = torch.Generator().manual_seed(7)
    for rows, cols in ((24, 24), (12, 36), (36, 12)):
        p0 = torch.randn(rows, cols, generator=g)
        grads = [torch.randn(rows, cols, generator=g) for _ in range(4)]
        p, buf = p0.clone(), torch.zeros(rows, cols)
        for step, grad in enumerate(grads):
            before = p.clone()
            call(ex, muon_step, p, grad.clone(), buf, lr, mu, wd)
            if step == 0 and torch.equal(p, before):
                fail(ex, f"p did not change after a step on a {rows} x {cols} matrix: update it "
                         "in place (p.mul_, p.add_), do not rebind the name.")
        if not torch.isfinite(p).all():
            fail(ex, f"the {rows} x {cols} weights became inf or NaN after {len(grads)} steps")

        def replay(**switch: bool) -> torch.Tensor:
            q, b = p0.clone(), torch.zeros(rows, cols)
            for grad in grads:
                _muon_reference(q, grad.clone(), b, lr, mu, wd, **switch)
            replayed_buf[0] = b
            return q
        replayed_buf = [torch.zeros(())]
        if torch.allclose(p, replay(), atol=1e-4):
            # the weights are right; the buffer is the optimizer's state, saved in checkpoints
            want_buf = replayed_buf[0]
            if torch.allclose(buf, want_buf, atol=1e-5):
                continue
            if torch.count_nonzero(buf) == 0:
                fail(ex, "the weights are right but buf is still all zeros: the momentum must "
                         "live in the buffer the caller passed (update it in place), since the "
                         "optimizer saves and restores it from there.")
            fail(ex, f"the weights are right but after {len(grads)} steps buf differs from "
                     "the average of the gradients, momentum * buf + (1 - momentum) * grad "
                     f"(largest gap {(buf - want_buf).abs().max():.3g}): keep in buf the "
                     "average itself, not the look-ahead or the update.")
        for switch, message in mistakes.items():
            if torch.allclose(p, replay(**{switch: False}), atol=1e-4):
                fail(ex, f"after {len(grads)} steps on a {rows} x {cols} matrix the weights match "
                         f"a Muon with one thing different: {message}.")
        fail(ex, f"after {len(grads)} steps on a {rows} x {cols} matrix the weights differ from "
                 "companion.muon.Muon's (largest gap "
                 f"{(p - replay()).abs().max():.3g}): check the order buffer, look-ahead, "
                 "orthogonalise, scale, decay, step.")
    passed(ex, "your steps match companion.muon.Muon on a square, a wide and a tall matrix, "
               "weights and momentum buffer: Muon is momentum, made orthogonal.")


# --- 7.8: Adam's step, with L2 or with decoupled decay ------------------------------------------


def _adam_reference(p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float,
                    betas: tuple[float, float], eps: float, weight_decay: float,
                    decoupled: bool, *, correct: bool = True, decay_first: bool = True,
                    eps_inside: bool = False, swap: bool = False) -> None:
    """One Adam(W) step in place; the keyword switches make one plausible mistake each."""
    beta1, beta2 = betas
    if swap:
        decoupled = not decoupled
    if not decoupled:
        grad = grad + weight_decay * p  # L2: the decay goes through the moments
    if not state:
        state.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
    state["step"] += 1
    t, m, v = state["step"], state["m"], state["v"]
    m.mul_(beta1).add_(grad, alpha=1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    m_hat = m / (1 - beta1**t) if correct else m
    v_hat = v / (1 - beta2**t) if correct else v
    update = m_hat / ((v_hat + eps).sqrt() if eps_inside else v_hat.sqrt() + eps)
    if decoupled and decay_first:
        p.mul_(1 - lr * weight_decay)
    p.add_(update, alpha=-lr)
    if decoupled and not decay_first:
        p.mul_(1 - lr * weight_decay)


def check_7_8(adam_step: Callable[..., object]) -> None:
    """adam_step(p, grad, state, lr, betas, eps, weight_decay, decoupled) updates p and state."""
    ex = "7.8"
    lr, betas, eps, wd = 0.05, (0.9, 0.95), 1e-3, 0.5  # an eps that matters for small grads
    mistakes = {
        "correct": ("both moments start at zero, so divide m by 1 - beta1**t and v by "
                    "1 - beta2**t (t counts from 1): the bias correction"),
        "decay_first": ("decoupled decay shrinks p by (1 - lr * weight_decay) before the Adam "
                        "update is added, as torch.optim.AdamW does"),
        "eps_inside": "eps is added to sqrt(v_hat), not inside the square root",
        "swap": ("decoupled=True is AdamW (decay applied to the weights directly); "
                 "decoupled=False is Adam's L2, weight_decay * p added to the gradient"),
    }
    g = torch.Generator().manual_seed(3)
    for decoupled in (True, False):
        name = "AdamW" if decoupled else "Adam with L2 (torch.optim.Adam's weight_decay)"
        p0 = torch.randn(6, 5, generator=g)
        grads = [torch.randn(6, 5, generator=g) * 10 ** (-k) for k in range(5)]
        p, state = p0.clone(), {}
        ref = torch.nn.Parameter(p0.clone())
        opt_cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        opt = opt_cls([ref], lr=lr, betas=betas, eps=eps, weight_decay=wd)
        for step, grad in enumerate(grads):
            before = p.clone()
            call(ex, adam_step, p, grad.clone(), state, lr, betas, eps, wd, decoupled)
            if step == 0 and torch.equal(p, before):
                fail(ex, "p did not change after a step: update it in place (p.mul_, p.add_, "
                         "p.addcdiv_), do not rebind the name.")
            if step == 0 and not state:
                fail(ex, "state is still empty after a step: keep the step count and both "
                         "moments in the dict the caller passed, so the next step finds them.")
            ref.grad = grad.clone()
            opt.step()
        if not torch.isfinite(p).all():
            fail(ex, f"{name}: the weights became inf or NaN; does t start at 1 in 1 - beta**t?")
        if torch.allclose(p, ref.detach(), atol=1e-6):
            continue

        def replay(**switch: bool) -> torch.Tensor:
            q, st = p0.clone(), {}
            for grad in grads:
                _adam_reference(q, grad.clone(), st, lr, betas, eps, wd, decoupled, **switch)
            return q
        for switch, message in mistakes.items():
            if torch.allclose(p, replay(**{switch: not _DEFAULTS[switch]}), atol=1e-6):
                fail(ex, f"{name}: after {len(grads)} steps the weights match an optimizer with "
                         f"one thing different: {message}.")
        fail(ex, f"{name}: after {len(grads)} steps the weights differ from "
                 f"{opt_cls.__module__}.{opt_cls.__name__}'s by up to "
                 f"{(p - ref.detach()).abs().max():.3g}: check moments, bias correction, "
                 "the eps, then the decay.")
    passed(ex, "five steps match torch.optim.AdamW (decoupled) and torch.optim.Adam with L2 "
               "(coupled) to 1e-6, with gradients from 1 down to 1e-4.")


_DEFAULTS = {"correct": True, "decay_first": True, "eps_inside": False, "swap": False}
