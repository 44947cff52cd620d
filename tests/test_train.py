"""Tests for chapter 7's training loop: the schedule, AdamW groups, accumulation, evaluation, logs and the CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from companion.model import GPT, GPTConfig
from companion.checkpoint import load_checkpoint
from companion.train import (NonFiniteLossError, TrainConfig, estimate_loss, keep_decay_horizon,
                             lr_at, make_optimizer, param_groups, train)
from companion.train_cli import PRESETS, apply_overrides, build_configs, main, parse_overrides

TINY = dict(vocab_size=12, context_length=16, d_model=16, n_layers=1, n_heads=2)


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(max_steps=6, batch_size=4, context_length=16, warmup_steps=2, eval_interval=3, eval_iters=2)
    return TrainConfig(**{**base, **kw})


def corpus(n: int = 3000) -> torch.Tensor:
    """A repeating 12-token cycle with a little noise: learnable, so the loss must fall."""
    ids = torch.arange(n) % 12
    noise = torch.rand(n, generator=torch.Generator().manual_seed(0)) < 0.05
    return torch.where(noise, torch.zeros_like(ids), ids)


class StandIn(nn.Module):
    """Any (B, T) -> (B, T, V) module trains: an embedding, a norm and a linear head."""

    def __init__(self, vocab: int = 12, d: int = 8):
        super().__init__()
        self.emb, self.norm, self.head = nn.Embedding(vocab, d), nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.emb(idx)))


# --- the learning-rate schedule -----------------------------------------------------------------


def test_lr_at_hand_worked_values():
    """lr 1e-3, min 1e-4, warmup 10, decay at 110: warmup gives (k+1)/10 * 1e-3; halfway down the
    cosine (step 60) is min + (lr - min)/2 = 5.5e-4; from step 110 on it stays at 1e-4."""
    cfg = TrainConfig(max_steps=200, lr=1e-3, min_lr=1e-4, warmup_steps=10, lr_decay_steps=110)
    assert math.isclose(lr_at(0, cfg), 1e-4)
    assert math.isclose(lr_at(4, cfg), 5e-4)
    assert math.isclose(lr_at(9, cfg), 1e-3)
    assert math.isclose(lr_at(10, cfg), 1e-3)
    assert math.isclose(lr_at(60, cfg), 5.5e-4)
    assert lr_at(110, cfg) == lr_at(199, cfg) == 1e-4


def test_lr_at_rises_then_never_rises():
    cfg = TrainConfig(max_steps=300, warmup_steps=50)
    lrs = [lr_at(s, cfg) for s in range(300)]
    assert all(a < b for a, b in zip(lrs[:49], lrs[1:50]))
    assert all(a >= b for a, b in zip(lrs[49:], lrs[50:]))
    assert max(lrs) == cfg.lr and min(lrs[50:]) >= cfg.min_lr and lrs[0] == cfg.lr / 50


def test_lr_at_matches_torch_linear_then_cosine_schedulers():
    """Reference: LinearLR(1/w -> 1 over w-1 steps), then CosineAnnealingLR(T_max = decay - w, eta_min)."""
    w, decay = 5, 40
    cfg = TrainConfig(max_steps=decay, lr=2e-3, min_lr=2e-4, warmup_steps=w)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / w, end_factor=1.0, total_iters=w - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=decay - w, eta_min=cfg.min_lr),
    ], milestones=[w])
    for step in range(decay):
        assert math.isclose(opt.param_groups[0]["lr"], lr_at(step, cfg), rel_tol=1e-6), step
        opt.step()
        sched.step()


def test_no_warmup_starts_at_peak_and_a_run_shorter_than_warmup_only_warms_up():
    assert lr_at(0, TrainConfig(max_steps=10, warmup_steps=0)) == 1e-3
    short = TrainConfig(max_steps=10, warmup_steps=100)
    assert [lr_at(s, short) for s in range(3)] == [1e-5, 2e-5, 3e-5]


# --- TrainConfig --------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, fragment", [
    (dict(max_steps=0), "max_steps"), (dict(batch_size=0), "batch_size"),
    (dict(min_lr=1e-2, lr=1e-3), "min_lr=0.01"), (dict(warmup_steps=-1), "warmup_steps"),
    (dict(lr_decay_steps=50, warmup_steps=100), "lr_decay_steps=50"), (dict(dtype="fp16"), "dtype"),
    (dict(beta2=1.0), "beta2=1.0"), (dict(val_fraction=0.0), "val_fraction"), (dict(grad_clip=-1.0), "grad_clip"),
])
def test_train_config_rejects_bad_values_naming_them(kw, fragment):
    with pytest.raises(ValueError, match=fragment):
        TrainConfig(**kw)


def test_train_config_round_trips_through_dict():
    cfg = tiny_cfg(lr_decay_steps=5, compile=True)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.tokens_per_step == 4 * 16
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({**cfg.to_dict(), "n_layer": 3})


# --- AdamW parameter groups ---------------------------------------------------------------------


def test_param_groups_decay_only_weight_matrices_gpt2_style():
    """Tied GPT-2 style: decayed are q, k, v, o, up, down per layer (6 matrices); the rest is not."""
    model = GPT(GPTConfig(**TINY))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) == 6
    assert all(p.ndim == 2 for p in decay["params"])
    ids = {id(p) for p in no_decay["params"]}
    assert id(model.tok_emb.weight) in ids and id(model.lm_head.weight) in ids  # tied: one tensor
    assert all(id(p) in ids for n, p in model.named_parameters() if "norm" in n or n.endswith("bias") or "pos_emb" in n)
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_params()


def test_param_groups_llama_style_untied_head_decays_rmsnorm_does_not():
    model = GPT(GPTConfig.llama(**TINY))
    decay, no_decay = param_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    assert id(model.lm_head.weight) in decayed and id(model.tok_emb.weight) not in decayed
    assert all(id(m.weight) not in decayed for m in model.modules() if type(m).__name__ == "RMSNorm")
    assert len(decay["params"]) == 7 + 1  # q, k, v, o, gate, up, down, and the untied head


def test_make_optimizer_is_adamw_with_config_betas():
    opt = make_optimizer(StandIn(), tiny_cfg(beta2=0.95))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    assert opt.defaults["fused"]  # plain CPU float parameters: the one-kernel implementation


def test_fused_adamw_steps_like_the_default_one():
    torch.manual_seed(0)
    a = GPT(GPTConfig(**TINY))
    b = GPT(GPTConfig(**TINY))
    b.load_state_dict(a.state_dict())
    cfg = tiny_cfg()
    fused = make_optimizer(a, cfg)
    plain = torch.optim.AdamW(param_groups(b, cfg.weight_decay), lr=fused.param_groups[0]["lr"], betas=(0.9, 0.99))
    idx = torch.randint(0, TINY["vocab_size"], (2, 8))
    for model, opt in ((a, fused), (b, plain)):
        for _ in range(3):
            model(idx).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


# --- the loop -------------------------------------------------------------------------------------


def test_train_loss_falls_and_history_has_the_documented_shape():
    ids = corpus()
    torch.manual_seed(0)
    h = train(GPT(GPTConfig(**TINY)), ids[:2700], ids[2700:], tiny_cfg(max_steps=40, lr=1e-2, eval_interval=10),
              progress=False)
    assert len(h["train_loss"]) == len(h["lr"]) == 40
    assert h["eval_step"] == [0, 10, 20, 30, 40]
    assert len(h["eval_train"]) == len(h["eval_val"]) == len(h["elapsed"]) == 5
    assert h["eval_val"][0] > math.log(12) - 0.3  # untrained: about ln(vocab)
    assert h["eval_val"][-1] < h["eval_val"][0] - 1.0
    assert len(h["grad_norm"]) == 40 and all(n > 0 for n in h["grad_norm"])
    # tokens/s of the steps since the previous evaluation; no MFU on a CPU (no known peak)
    assert h["tokens_per_s"][0] is None and all(t > 0 for t in h["tokens_per_s"][1:])
    assert h["mfu"] == [None] * 5


def test_train_accepts_any_module():
    ids = corpus()
    h = train(StandIn(), ids[:2700], ids[2700:], tiny_cfg(max_steps=20, lr=1e-2), progress=False)
    assert h["eval_val"][-1] < h["eval_val"][0]


def test_gradient_accumulation_equals_one_big_batch():
    """Two micro-batches of 2, each loss halved, give the gradient of one batch of 4 (same windows)."""
    ids = corpus()
    models = []
    for batch, accum in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**TINY))
        train(model, ids[:2700], ids[2700:], tiny_cfg(max_steps=1, batch_size=batch, grad_accum_steps=accum,
                                                      warmup_steps=0, grad_clip=0.0), progress=False)
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_estimate_loss_repeats_for_a_seed_and_leaves_mode_alone():
    model, ids = StandIn(), corpus()
    model.train()
    a, b = (estimate_loss(model, ids, tiny_cfg(), "cpu") for _ in range(2))
    assert a == b and model.training


def test_train_refuses_context_longer_than_the_model():
    with pytest.raises(ValueError, match="context_length=32 exceeds the model's 16"):
        train(GPT(GPTConfig(**TINY)), corpus(), corpus(), tiny_cfg(context_length=32), progress=False)


def test_out_dir_gets_checkpoint_and_logs(tmp_path):
    ids = corpus()
    h = train(StandIn(), ids[:2700], ids[2700:], tiny_cfg(), out_dir=tmp_path, progress=False)
    assert (tmp_path / "ckpt.pt").is_file()
    assert json.loads((tmp_path / "log.json").read_text())["train_loss"] == h["train_loss"]
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0] == "step,lr,train_loss,eval_train_loss,val_loss,grad_norm,tokens_per_s,mfu"
    assert len(rows) == 1 + 1 + 6  # header, the step-0 evaluation, six steps
    assert rows[4].startswith("3,") and rows[4].split(",")[4] != ""  # evaluated after step 3
    assert rows[3].startswith("2,") and rows[3].split(",")[4] == ""  # not after step 2
    assert float(rows[3].split(",")[5]) == pytest.approx(h["grad_norm"][1], rel=1e-3)
    assert float(rows[4].split(",")[6]) > 0  # tokens/s where an evaluation ran


def test_logged_grad_norm_is_the_norm_before_clipping():
    """Clipped at 1e-3 the step still logs the gradient's own norm, far above the limit."""
    h = train(StandIn(), corpus(), corpus(), tiny_cfg(max_steps=2, grad_clip=1e-3), progress=False)
    assert min(h["grad_norm"]) > 1e-2


def test_best_checkpoint_keeps_the_lowest_validation_loss_while_ckpt_keeps_the_latest(tmp_path):
    """Train on 0, 1, 2, ..., 5, 0, validate on the cycle run backwards: learning the training
    split makes validation worse, so best.pt stays at the untrained step 0; ckpt.pt moves on."""
    ids = torch.arange(3000)
    h = train(StandIn(vocab=6), ids % 6, -ids[:600] % 6, tiny_cfg(lr=1e-2), out_dir=tmp_path,
              progress=False)
    assert h["eval_val"][-1] > h["eval_val"][0]  # the premise: validation got worse
    best, last = (load_checkpoint(tmp_path / name) for name in ("best.pt", "ckpt.pt"))
    assert best["step"] == h["eval_step"][h["eval_val"].index(min(h["eval_val"]))] == 0
    assert last["step"] == 6
    assert not torch.equal(best["model"]["head.weight"], last["model"]["head.weight"])


def test_resume_keeps_the_decay_horizon_once_decay_has_begun():
    old = tiny_cfg(max_steps=6)
    ckpt = {"step": 4, "decay_steps": 6, "train_config": old.to_dict()}
    longer = tiny_cfg(max_steps=12)
    kept = keep_decay_horizon(longer, ckpt)
    assert kept.decay_steps == 6 and kept.max_steps == 12
    assert max(lr_at(s, kept) for s in range(4, 12)) <= lr_at(3, old)
    # still warming up: the new horizon lowers nothing yet; a horizon chosen by hand wins
    assert keep_decay_horizon(longer, {**ckpt, "step": 2}).decay_steps == 12
    assert keep_decay_horizon(tiny_cfg(max_steps=12, lr_decay_steps=9), ckpt).decay_steps == 9
    # a checkpoint from before the horizon was stored: its train_config says it
    assert keep_decay_horizon(longer, {"step": 4, "train_config": old.to_dict()}).decay_steps == 6


class Diverges(StandIn):
    """Fine until its weights pass 2 in size, then its logits are NaN."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = super().forward(idx)
        return logits * float("nan") if self.head.weight.abs().max() > 2 else logits


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"loss is nan.*ckpt.pt \(step 3\)"):
        train(Diverges(), corpus(), corpus(), tiny_cfg(lr=0.5, warmup_steps=0, max_steps=100),
              out_dir=tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 3 and all(torch.isfinite(t).all() for t in ckpt["model"].values())


# --- overrides and the command line -------------------------------------------------------------


def test_overrides_keep_types_and_reach_both_configs():
    train_d, model_d = {}, {}
    apply_overrides(parse_overrides(["--lr=1", "--compile=true", "--lr_decay_steps=None", "--context_length=32",
                                     "--norm=rmsnorm", "--n-layers=3"]), train_d, model_d)
    assert train_d == {"lr": 1.0, "compile": True, "lr_decay_steps": None, "context_length": 32}
    assert model_d == {"context_length": 32, "norm": "rmsnorm", "n_layers": 3}
    assert isinstance(train_d["lr"], float)


@pytest.mark.parametrize("arg, fragment", [
    ("--n_layer=3", "unknown setting --n_layer"), ("--max_steps=1.5", "expected int"),
    ("--lr=fast", "expected float"), ("--compile=1", "expected bool"), ("--norm=batchnorm", "one of"),
    ("--max_steps=True", "expected int"), ("lr=3", "--key=value"),
])
def test_overrides_refuse_unknown_keys_and_wrong_types(arg, fragment):
    with pytest.raises(ValueError, match=fragment):
        apply_overrides(parse_overrides([arg]), {}, {})


def test_presets_build_valid_configs_and_the_5m_model_is_about_5m():
    for name in PRESETS:
        build_configs(name, {}, vocab_size=65)
    model_cfg, train_cfg = build_configs("shakespeare-char-5m", {}, vocab_size=65)
    n = GPT(model_cfg).num_params()
    assert 4.5e6 < n < 5.2e6
    assert train_cfg.context_length == model_cfg.context_length == 256


@pytest.mark.parametrize("argv, fragment", [
    (["--preset", "gpt5"], "unknown preset 'gpt5'"),
    (["--resume", "does/not/exist.pt"], "no checkpoint at"),
    (["--lr=fast"], "expected float"),
])
def test_cli_bad_input_is_one_clear_line(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and fragment in err


def test_cli_empty_corpus_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main([f"--dataset={empty}"]) == 2
    assert "empty" in capsys.readouterr().err


def test_cli_trains_then_resumes_to_the_same_losses(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question. " * 60)
    common = [f"--dataset={text}", "--n_layers=1", "--d_model=16", "--n_heads=2", "--context_length=16",
              "--batch_size=4", "--eval_iters=2", "--eval_interval=2", "--lr_decay_steps=6", "--warmup_steps=2",
              "--device", "cpu", "--sample", "0", "--dropout=0.1"]
    assert main(common + ["--max-steps", "6", "--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--max-steps", "4", "--out", str(tmp_path / "b")]) == 0
    assert main(["--resume", str(tmp_path / "b" / "ckpt.pt"), "--max-steps", "6", "--sample", "0", "--device", "cpu"]) == 0
    a, b = (json.loads((tmp_path / d / "log.json").read_text()) for d in "ab")
    assert a["train_loss"] == b["train_loss"] and len(a["train_loss"]) == 6
    assert a["eval_val"] == b["eval_val"]
    capsys.readouterr()


def test_muon_optimizer_trains_scales_its_groups_lr_and_resumes(tmp_path):
    """optimizer='muon': hidden matrices at muon_lr x schedule, the rest at lr x schedule; the
    loss falls; its state round-trips through the checkpoint (a resumed run equals a whole one)."""
    from companion.muon import Muon
    from companion.train import make_optimizer

    ids = corpus()
    cfg = tiny_cfg(max_steps=30, lr=1e-2, eval_interval=10, optimizer="muon", muon_lr=0.05)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, Muon)
    h = train(model, ids[:2700], ids[2700:], cfg, progress=False, out_dir=tmp_path / "whole")
    assert h["eval_val"][-1] < h["eval_val"][0] - 1.0
    ckpt = load_checkpoint(tmp_path / "whole" / "ckpt.pt")
    lrs = {g["use_muon"]: g["lr"] for g in ckpt["optimizer"]["param_groups"]}
    assert lrs[True] == pytest.approx(lrs[False] * 5.0)  # 0.05 / 1e-2, at every step
    torch.manual_seed(0)
    train(GPT(GPTConfig(**TINY)), ids[:2700], ids[2700:], cfg, progress=False,
          out_dir=tmp_path / "part", stop_at=15)
    torch.manual_seed(99)  # other weights: everything must come from the checkpoint
    resumed = GPT(GPTConfig(**TINY))
    train(resumed, ids[:2700], ids[2700:], cfg, progress=False, out_dir=tmp_path / "part",
          resume=load_checkpoint(tmp_path / "part" / "ckpt.pt"))
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="muon"):
        TrainConfig(optimizer="muon", parallel="fsdp")
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd")
