"""Chapter 7's loop: dtype by device capability, fp16 with loss scaling, one host sync per step,
and the warmup-stable-decay schedule that lets a run be extended."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from companion.checkpoint import load_checkpoint
from companion.model import GPT, GPTConfig
from companion.train import TrainConfig, choose_dtype, decay_start, keep_decay_horizon, lr_at, train
from companion.train.precision import make_scaler

MODEL = dict(vocab_size=12, context_length=16, d_model=16, n_layers=1, n_heads=2)


def corpus(n: int = 3000) -> torch.Tensor:
    ids = torch.arange(n) % 12
    noise = torch.rand(n, generator=torch.Generator().manual_seed(0)) < 0.05
    return torch.where(noise, torch.zeros_like(ids), ids)


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(max_steps=6, batch_size=4, context_length=16, warmup_steps=2, eval_interval=100,
                eval_iters=1, lr=1e-2, min_lr=1e-3)
    return TrainConfig(**{**base, **kw})


def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**MODEL))


# --- which 16-bit type ---------------------------------------------------------------------------


@pytest.mark.parametrize("capability, want", [((9, 0), "bfloat16"), ((8, 0), "bfloat16"),
                                              ((7, 5), "float16"), ((7, 0), "float16")])
def test_auto_dtype_follows_cuda_capability(monkeypatch, capability, want):
    """An H100 (9.0) or A100 (8.0) has bf16 tensor cores; a T4 (7.5) or V100 (7.0) fp16 only."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert choose_dtype(torch.device("cuda", 0)) == want
    assert choose_dtype("cuda", "float32") == "float32"  # an explicit choice is kept


def test_auto_dtype_is_float32_off_cuda_and_bad_names_are_refused():
    assert choose_dtype("cpu") == choose_dtype(torch.device("mps")) == "float32"
    assert choose_dtype("cpu", "float16") == "float16"
    with pytest.raises(ValueError, match="'half'"):
        choose_dtype("cpu", "half")
    with pytest.raises(ValueError, match="dtype must be one of"):
        TrainConfig(dtype="fp8")


def test_only_fp16_gets_an_active_grad_scaler():
    cpu = torch.device("cpu")
    assert make_scaler(cpu, "float16").is_enabled()
    assert not make_scaler(cpu, "bfloat16").is_enabled()
    assert not make_scaler(cpu, "float32").is_enabled()


# --- fp16 with loss scaling ----------------------------------------------------------------------


def test_fp16_with_grad_scaler_trains_and_skips_a_step_whose_gradient_overflows(tmp_path):
    """A hook makes step 3's gradient inf: the scaler skips that update (weights unchanged) and
    halves its scale, and the run goes on learning; the checkpoint keeps the scale."""
    m = model()
    snapshots, calls = [], [0]
    head = m.lm_head.weight

    def poison(grad: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        snapshots.append(head.detach().clone())  # the weights before this step's update
        return torch.full_like(grad, math.inf) if calls[0] == 3 else grad

    head.register_hook(poison)
    history = train(m, corpus()[:2700], corpus()[2700:], tiny_cfg(dtype="float16"),
                    out_dir=tmp_path, progress=False)
    assert math.isinf(history["grad_norm"][2])  # logged, not hidden
    assert all(math.isfinite(n) for i, n in enumerate(history["grad_norm"]) if i != 2)
    assert torch.equal(snapshots[2], snapshots[3])  # step 3 changed nothing
    assert not torch.equal(snapshots[1], snapshots[2])  # the others did
    assert history["train_loss"][-1] < history["train_loss"][0]
    scaler = load_checkpoint(tmp_path / "ckpt.pt")["scaler"]
    assert scaler["scale"] == 2.0**16 / 2  # one overflow halved the initial 65536


@pytest.mark.parametrize("parallel", ["fsdp", "pipeline", "tp"])
def test_fp16_is_refused_where_the_scaler_cannot_see_the_whole_gradient(parallel):
    # refused before any world is joined: no torchrun needed to see the message
    with pytest.raises(ValueError, match=f"float16.*not '{parallel}'"):
        train(model(), corpus()[:2700], corpus()[2700:], tiny_cfg(dtype="float16",
                                                                  parallel=parallel))


# --- one host sync per step ----------------------------------------------------------------------


def _count_syncs(monkeypatch, **kw) -> int:
    """Calls that copy a tensor to the host (item, float, tolist, bool) during one train run."""
    count = [0]
    for name in ("item", "__float__", "tolist", "__bool__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            count[0] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    train(model(), corpus()[:2700], corpus()[2700:], tiny_cfg(**kw), progress=False)
    monkeypatch.undo()
    return count[0]


def test_the_loop_syncs_with_the_host_once_per_optimizer_step_not_per_micro_batch(monkeypatch):
    """Evaluations (at step 0 and the end) cost the same in every run, so differences count the
    training steps: 3 more steps cost 3 syncs, and 4 micro-batches per step cost no more than 1."""
    base = _count_syncs(monkeypatch, max_steps=3)
    assert _count_syncs(monkeypatch, max_steps=6) - base == 3
    assert _count_syncs(monkeypatch, max_steps=3, grad_accum_steps=4) == base


# --- warmup-stable-decay -------------------------------------------------------------------------


def test_wsd_hand_worked_values():
    """lr 1e-3 to 1e-4, warmup 10, 100 steps, last 20% decaying: peak from step 9 to 80, then a
    straight line: step 90 is halfway (5.5e-4), step 100 on is min_lr."""
    cfg = TrainConfig(max_steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10, lr_schedule="wsd",
                      decay_fraction=0.2)
    assert decay_start(cfg) == 80
    assert math.isclose(lr_at(0, cfg), 1e-4) and math.isclose(lr_at(9, cfg), 1e-3)
    assert lr_at(10, cfg) == lr_at(50, cfg) == lr_at(80, cfg) == 1e-3
    assert math.isclose(lr_at(90, cfg), 5.5e-4)
    assert lr_at(100, cfg) == lr_at(150, cfg) == 1e-4
    lrs = [lr_at(s, cfg) for s in range(80, 101)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_wsd_settings_are_validated():
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="decay_fraction"):
        TrainConfig(lr_schedule="wsd", decay_fraction=0.0)


def test_a_wsd_run_resumed_in_its_stable_phase_extends_like_a_longer_run(tmp_path):
    """Stopped at step 5 of 10 (decay would start at 8), resumed with max_steps=20: every lr
    equals a 20-step run's, which decays over steps 16-20; a cosine run would keep step 10."""
    wsd = dict(lr_schedule="wsd", decay_fraction=0.2, warmup_steps=2)
    train(model(), corpus()[:2700], corpus()[2700:], tiny_cfg(max_steps=10, **wsd),
          out_dir=tmp_path, stop_at=5, progress=False)
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    longer = tiny_cfg(max_steps=20, **wsd)
    assert keep_decay_horizon(longer, ckpt) is longer  # still stable: the end may move
    resumed = train(model(), corpus()[:2700], corpus()[2700:], longer, resume=ckpt,
                    progress=False)
    assert resumed["lr"] == [lr_at(s, longer) for s in range(20)]
    assert resumed["lr"][5:16] == [1e-2] * 11  # the stable phase simply went on
    # once decay began (step 9 of 10), the horizon stays: extending adds min_lr steps
    decaying = {**ckpt, "step": 9}
    kept = keep_decay_horizon(longer, decaying)
    assert kept.decay_steps == 10 and lr_at(12, kept) == kept.min_lr
    cosine = dataclasses.replace(longer, lr_schedule="cosine")
    assert keep_decay_horizon(cosine, {**ckpt, "train_config": {**ckpt["train_config"],
                                                                "lr_schedule": "cosine"}}
                              ).decay_steps == 10
