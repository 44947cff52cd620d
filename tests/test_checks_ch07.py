"""Chapter 7's self-checks pass on correct answers, and fail with a specific hint on the stub and on plausible mistakes."""
from __future__ import annotations

import math

import pytest
import torch

from companion.checks import (ExerciseFailed, SWEEP_MODEL, check_7_1, check_7_2, check_7_3, check_7_4,
                              check_7_5, check_7_6, check_7_7, check_7_8, sweep_config)
from companion.model import GPT
from companion.train import train
from companion.utils import set_seed
from checkhelpers import stub, fails_with
from companion.train import next_token_loss


# --- 7.1 warmup-stable-decay with a cool-down shape -------------------------------------------

def wsd_lr(step, max_lr, min_lr, warmup, total, decay_fraction, shape, *, le=False, trunc=False,
           sqrt_up=False, swap=False, off_by_one=False, no_floor=False, no_warmup=False,
           zero_start=False):
    if no_warmup:
        warmup = 0
    if (step <= warmup if le else step < warmup):
        return max_lr * (step if zero_start else step + 1) / warmup
    n = int(decay_fraction * total) if trunc else round(decay_fraction * total)
    start = max(warmup, total - n)
    if step >= total and not no_floor:
        return min_lr
    if step < start:
        return max_lr
    p = (step - start) / (total - start - (1 if off_by_one else 0))
    if swap:
        shape = "linear" if shape == "1-sqrt" else "1-sqrt"
    if shape == "1-sqrt":
        f = math.sqrt(p) if sqrt_up else 1 - math.sqrt(p)
        return min_lr + f * (max_lr - min_lr)
    return max_lr - p * (max_lr - min_lr)


def test_check_7_1_passes_on_a_correct_answer(capsys):
    check_7_1(wsd_lr)
    assert "passed" in capsys.readouterr().out


def _wrong(**kw):
    return lambda *a: wsd_lr(*a, **kw)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (_wrong(no_warmup=True), "no warmup"),
    (_wrong(zero_start=True), "(step + 1) / warmup"),
    (_wrong(le=True), "not <="),
    (_wrong(trunc=True), "int() truncates"),
    (_wrong(sqrt_up=True), "1 - sqrt(p)"),
    (_wrong(swap=True), "swapped"),
    (lambda s, M, m, w, t, f, shape: wsd_lr(s, M, m, w, t, f, "linear"), "read the shape"),
    (_wrong(off_by_one=True), "not total - start - 1"),
    (_wrong(no_floor=True), "stays at min_lr"),
    (lambda *a: None, "one number"),
])
def test_check_7_1_rejects_mistakes(wrong, fragment):
    fails_with(check_7_1, wrong, fragment)


# --- 7.2 AdamW groups ----------------------------------------------------------------------

def split_params(model, weight_decay):
    no_decay = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, torch.nn.Embedding) or "Norm" in type(module).__name__:
                no_decay.add(id(p))
    params = list(model.parameters())
    return [{"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}]


def test_check_7_2_passes_on_a_correct_answer(capsys):
    check_7_2(split_params)
    assert "passed" in capsys.readouterr().out


def nanogpt_rule(model, weight_decay):  # dim >= 2 decays: embeddings included
    params = list(model.parameters())
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def by_name_twice(model, weight_decay):  # named_parameters(remove_duplicate=False) lists the tied weight twice
    groups = split_params(model, weight_decay)
    if model.config.tie_embeddings:
        groups[1]["params"].append(model.lm_head.weight)
    return groups


def decays_everything(model, weight_decay):
    return [{"params": list(model.parameters()), "weight_decay": weight_decay}, {"params": [], "weight_decay": 0.0}]


def forgets_norms(model, weight_decay):
    groups = split_params(model, weight_decay)
    groups[1]["params"] = [p for p in groups[1]["params"] if p.ndim == 2 or p is model.blocks[0].attn.q_proj.bias]
    return groups


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (nanogpt_rule, "token embedding"),
    (by_name_twice, "appears twice"),
    (decays_everything, "token embedding"),
    (forgets_norms, "missing"),
    (lambda m, wd: list(m.parameters()), "two dicts"),
    (lambda m, wd: split_params(m, wd)[::-1], "first group decays"),
])
def test_check_7_2_rejects_mistakes(wrong, fragment):
    fails_with(check_7_2, wrong, fragment)


def test_check_7_2_names_a_wrongly_decayed_bias():
    def decays_biases(model, weight_decay):
        groups = split_params(model, weight_decay)
        biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
        ids = {id(b) for b in biases}
        groups[0]["params"] += biases
        groups[1]["params"] = [p for p in groups[1]["params"] if id(p) not in ids]
        return groups
    fails_with(check_7_2, decays_biases, "should not decay")


# --- 7.3 gradient accumulation and clipping --------------------------------------------------

def accumulate(model, micro_batches, max_norm, weights="share", clip=True, one_backward=False,
               concat=False, clip_each=False, post_norm=False):
    n = sum(len(x) for x, _ in micro_batches)
    if concat:
        x = torch.cat([x for x, _ in micro_batches])
        y = torch.cat([y for _, y in micro_batches])
        micro_batches = [(x, y)]
    total, pending = 0.0, []
    for x, y in micro_batches:
        w = {"share": len(x) / n, "1/k": 1 / len(micro_batches), "one": 1.0}[weights]
        loss = next_token_loss(model(x), y)
        total += loss.item() * w
        if one_backward:
            pending.append(loss * w)
        else:
            (loss * w).backward()
        if clip_each:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if one_backward:
        sum(pending).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if clip else math.inf)
    return total, (max_norm if post_norm else norm.item())


def test_check_7_3_passes_on_a_correct_answer(capsys):
    check_7_3(accumulate)
    assert "passed" in capsys.readouterr().out


def zero_each_time(model, micro_batches, max_norm):
    n = sum(len(x) for x, _ in micro_batches)
    total = 0.0
    for x, y in micro_batches:
        model.zero_grad()
        loss = next_token_loss(model(x), y) * len(x) / n
        loss.backward()
        total += loss.item()
    return total, torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item()


def zero_at_end(model, micro_batches, max_norm):
    out = accumulate(model, micro_batches, max_norm)
    model.zero_grad(set_to_none=True)
    return out


def unweighted_loss(model, micro_batches, max_norm):
    _, norm = accumulate(model, micro_batches, max_norm)
    with torch.no_grad():
        losses = [next_token_loss(model(x), y).item() for x, y in micro_batches]
    return sum(losses) / len(losses), norm


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda m, mb, c: accumulate(m, mb, c, concat=True), "one big batch"),
    (lambda m, mb, c: accumulate(m, mb, c, one_backward=True), "one backward"),
    (lambda m, mb, c: accumulate(m, mb, c, weights="1/k"), "not by 1/k"),
    (lambda m, mb, c: accumulate(m, mb, c, weights="one"), "nor 1"),
    (lambda m, mb, c: accumulate(m, mb, c, clip=False), "not clipped"),
    (lambda m, mb, c: accumulate(m, mb, c, clip_each=True), "clip after the last"),
    (lambda m, mb, c: accumulate(m, mb, c, post_norm=True), "before clipping"),
    (lambda m, mb, c: accumulate(m, mb, c)[0], "two numbers"),
    (zero_each_time, "clip after the last"),
    (zero_at_end, "None"),
    (unweighted_loss, "weighted by its size"),
])
def test_check_7_3_rejects_mistakes(wrong, fragment):
    fails_with(check_7_3, wrong, fragment)


# --- 7.4 resume ----------------------------------------------------------------------------

def resume_from(path, model, optimizer, generator):
    ckpt = torch.load(path, weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    generator.set_state(ckpt["rng"]["generators"][0])
    return ckpt["step"]


def test_check_7_4_passes_on_a_correct_answer(capsys):
    check_7_4(resume_from)
    assert "passed" in capsys.readouterr().out


def no_optimizer(path, model, optimizer, generator):
    ckpt = torch.load(path, weights_only=True)
    model.load_state_dict(ckpt["model"])
    generator.set_state(ckpt["rng"]["generators"][0])
    return ckpt["step"]


def no_generator(path, model, optimizer, generator):
    ckpt = torch.load(path, weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt["step"]


def no_model(path, model, optimizer, generator):
    ckpt = torch.load(path, weights_only=True)
    optimizer.load_state_dict(ckpt["optimizer"])
    generator.set_state(ckpt["rng"]["generators"][0])
    return ckpt["step"]


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (no_optimizer, "optimizer's moments"),
    (no_generator, "batch sampler's generator"),
    (no_model, "weights were not restored"),
    (lambda *a: (resume_from(*a), None)[1], "return the step"),
])
def test_check_7_4_rejects_mistakes(wrong, fragment):
    fails_with(check_7_4, wrong, fragment)


# --- 7.5 the over-fitting step -------------------------------------------------------------


def overfit_step(history, *, earliest=True, index=False, need_train=True, need_rise=True, after=0,
                 strict_rise=True, strict_train=True, last=-1):
    steps, train, val = history["eval_step"], history["eval_train"], history["eval_val"]
    best = min(val)
    i = val.index(best) if earliest else len(val) - 1 - val[::-1].index(best)
    if need_rise and (val[last] <= best if strict_rise else val[last] < best):
        return None
    if need_train and not (train[-1] < train[i] if strict_train else train[-1] <= train[i]):
        return None
    i = min(i + after, len(steps) - 1)
    return i if index else steps[i]


def test_check_7_5_passes_on_a_correct_answer(capsys):
    check_7_5(overfit_step)
    assert "passed" in capsys.readouterr().out


def lowest_train(history):
    return history["eval_step"][history["eval_train"].index(min(history["eval_train"]))]


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda h: overfit_step(h, index=True), "position in the lists"),
    (lowest_train, "training loss is lowest"),
    (lambda h: overfit_step(h, earliest=False), "earliest evaluation"),
    (lambda h: overfit_step(h, after=1), "first evaluation after"),
    (lambda h: overfit_step(h, need_rise=False, need_train=False), "still at its best"),
    (lambda h: overfit_step(h, need_train=False), "so did the training loss"),
    (lambda h: overfit_step(h, strict_rise=False), "still at its best"),  # val[-1] < best
    (lambda h: overfit_step(h, strict_train=False), "did not keep falling"),  # train <=
    (lambda h: overfit_step(h, last=-2), "still at its best"),  # reads val[-2]
])
def test_check_7_5_rejects_mistakes(wrong, fragment):
    fails_with(check_7_5, wrong, fragment)


def test_check_7_5_accepts_the_companions_history_format():
    """The histories the check builds use train()'s keys, so a reader can run it on a real run's."""
    from companion.checks.ch07 import _curves
    for _, history, _ in _curves():
        assert set(history) == {"eval_step", "eval_train", "eval_val"}
        assert len({len(v) for v in history.values()}) == 1


# --- 7.6 the learning-rate sweep ------------------------------------------------------------


def sweep(lrs, train_ids, val_ids, *, seed=True, key="eval_val", pick=min):
    results = {}
    for lr in lrs:
        if seed:
            set_seed(0)
        history = train(GPT(SWEEP_MODEL), train_ids, val_ids, sweep_config(lr), progress=False)
        results[lr] = history[key][-1]
    return results, pick(results, key=results.get)


def test_check_7_6_passes_on_a_correct_answer(capsys):
    check_7_6(sweep)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: sweep(*a, key="eval_train"), "training split's loss"),
    (lambda *a: sweep(*a, pick=max), "highest loss"),
    (lambda *a: sweep(*a)[0], "a pair"),
    (lambda lrs, t, v: sweep(lrs[:2], t, v), "one entry per swept rate"),
])
def test_check_7_6_rejects_mistakes(wrong, fragment):
    fails_with(check_7_6, wrong, fragment)


def test_check_7_6_rejects_runs_that_start_from_different_weights():
    set_seed(123)
    fails_with(check_7_6, lambda *a: sweep(*a, seed=False), "same seed")


# --- 7.7 one Muon step ---------------------------------------------------------------------

from companion.checks.ch07 import _muon_reference
from companion.muon import Muon, newton_schulz


def muon_step(p, grad, buf, lr, momentum, weight_decay, nesterov=True, scaled=True, orthogonal=True,
              ema=True, decay_first=True):
    _muon_reference(p, grad, buf, lr, momentum, weight_decay, nesterov=nesterov, scaled=scaled,
                    orthogonal=orthogonal, ema=ema, decay_first=decay_first)


def test_the_checks_reference_steps_like_companion_muon():
    torch.manual_seed(0)
    for shape in [(24, 24), (12, 36), (36, 12)]:
        p = torch.nn.Parameter(torch.randn(shape))
        q, buf = p.detach().clone(), torch.zeros(shape)
        opt = Muon([{"params": [p], "use_muon": True}], lr=0.05, momentum=0.9, weight_decay=0.2)
        for _ in range(4):
            grad = torch.randn(shape)
            p.grad = grad.clone()
            opt.step()
            _muon_reference(q, grad, buf, 0.05, 0.9, 0.2)
        torch.testing.assert_close(p.detach(), q)


def rebinds(p, grad, buf, lr, momentum, weight_decay):  # p = ... makes a new tensor: the caller sees nothing
    buf = buf * momentum + grad * (1 - momentum)
    p = p - lr * newton_schulz(grad.lerp(buf, momentum))


def plain_sgd(p, grad, buf, lr, momentum, weight_decay):
    p.add_(grad, alpha=-lr)


def test_check_7_7_passes_on_a_correct_answer(capsys):
    check_7_7(muon_step)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (rebinds, "in place"),
    (lambda *a: muon_step(*a, nesterov=False), "Nesterov"),
    (lambda *a: muon_step(*a, scaled=False), "sqrt(rows / cols)"),
    (lambda *a: muon_step(*a, orthogonal=False), "newton_schulz"),
    (lambda *a: muon_step(*a, ema=False), "running sum"),
    (lambda *a: muon_step(*a, decay_first=False), "before the update"),
    (plain_sgd, "differ from companion.muon.Muon"),
])
def test_check_7_7_rejects_mistakes(wrong, fragment):
    fails_with(check_7_7, wrong, fragment)


def keeps_its_own_momentum(p, grad, buf, lr, momentum, weight_decay, _state={}):
    """Right weights, but the momentum lives in a private dict, not in the caller's buffer."""
    own = _state.setdefault(id(buf), torch.zeros_like(buf))
    muon_step(p, grad, own, lr, momentum, weight_decay)


def buffer_holds_the_look_ahead(p, grad, buf, lr, momentum, weight_decay, _state={}):
    """Right weights, but buf ends each step holding the look-ahead, not the average."""
    avg = _state.setdefault(id(buf), torch.zeros_like(buf))
    muon_step(p, grad, avg, lr, momentum, weight_decay)
    buf.copy_(grad.lerp(avg, momentum))


@pytest.mark.parametrize("wrong, fragment", [
    (keeps_its_own_momentum, "all zeros"),
    (buffer_holds_the_look_ahead, "average itself"),
])
def test_check_7_7_inspects_the_momentum_buffer(wrong, fragment):
    fails_with(check_7_7, wrong, fragment)


# --- 7.8 Adam's step ------------------------------------------------------------------------

from companion.checks.ch07 import _adam_reference


def adam_step(p, grad, state, lr, betas, eps, weight_decay, decoupled, **switch):
    _adam_reference(p, grad, state, lr, betas, eps, weight_decay, decoupled, **switch)


def adam_step_by_hand(p, grad, state, lr, betas, eps, weight_decay, decoupled):
    """The exercise's answer, written apart from the check's reference."""
    b1, b2 = betas
    if not decoupled:
        grad = grad.add(p, alpha=weight_decay)
    if "m" not in state:
        state["t"], state["m"], state["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
    state["t"] += 1
    state["m"].lerp_(grad, 1 - b1)
    state["v"].lerp_(grad * grad, 1 - b2)
    m_hat = state["m"] / (1 - b1 ** state["t"])
    v_hat = state["v"] / (1 - b2 ** state["t"])
    if decoupled:
        p.mul_(1 - lr * weight_decay)
    p.sub_(lr * m_hat / (v_hat.sqrt() + eps))


def test_check_7_8_passes_on_a_correct_answer(capsys):
    check_7_8(adam_step)
    check_7_8(adam_step_by_hand)
    assert "passed" in capsys.readouterr().out


def rebinds(p, grad, state, lr, betas, eps, weight_decay, decoupled):
    p = p - lr * grad  # a new tensor: the caller's p never changes


def forgets_state(p, grad, state, lr, betas, eps, weight_decay, decoupled):
    adam_step(p, grad, {}, lr, betas, eps, weight_decay, decoupled)


def t_from_zero(p, grad, state, lr, betas, eps, weight_decay, decoupled):
    t = state.get("t", 0)
    adam_step(p, grad, state, lr, betas, eps, weight_decay, decoupled)
    state["t"] = t + 1
    # with t counted from 0 the first correction divides by zero
    if t == 0:
        p.fill_(float("nan"))


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda *a: adam_step(*a, correct=False), "bias correction"),
    (lambda *a: adam_step(*a, decay_first=False), "before the Adam"),
    (lambda *a: adam_step(*a, eps_inside=True), "not inside the square root"),
    (lambda *a: adam_step(*a, swap=True), "decoupled=True is AdamW"),
    (rebinds, "in place"),
    (forgets_state, "state is still empty"),
    (t_from_zero, "inf or NaN"),
])
def test_check_7_8_rejects_mistakes(wrong, fragment):
    fails_with(check_7_8, wrong, fragment)
