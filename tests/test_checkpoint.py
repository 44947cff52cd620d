"""Checkpoints: plain dicts saved atomically, loaded with weights_only, and a resumed run equal to an uninterrupted one."""
from __future__ import annotations

import pickle
import random

import pytest
import torch

from companion.checkpoint import (FORMAT_VERSION, CheckpointError, load_checkpoint, rng_state,
                                  save_checkpoint, set_rng_state)
from companion.model import GPT, GPTConfig
from companion.train import TrainConfig, make_checkpoint, make_optimizer, train

CFG = GPTConfig(vocab_size=12, context_length=16, d_model=16, n_layers=2, n_heads=2, dropout=0.1)


def minimal(**kw) -> dict:
    return {"format_version": FORMAT_VERSION, "model": {"w": torch.arange(3.0)}, "step": 7, **kw}


class NotPlain:
    """A class instance: weights_only loading must refuse it."""


def test_save_load_round_trip_keeps_tensors_and_plain_values(tmp_path):
    ckpt = minimal(config={"d_model": 16, "bias": True, "norm": "layernorm", "d_ff": None}, losses=[1.5, 1.25])
    path = save_checkpoint(tmp_path / "sub" / "ckpt.pt", ckpt)
    got = load_checkpoint(path)
    assert torch.equal(got["model"]["w"], ckpt["model"]["w"])
    assert {k: v for k, v in got.items() if k != "model"} == {k: v for k, v in ckpt.items() if k != "model"}


def test_save_leaves_no_temporary_files(tmp_path):
    save_checkpoint(tmp_path / "ckpt.pt", minimal())
    save_checkpoint(tmp_path / "ckpt.pt", minimal(step=8))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 8


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    """torch.save cannot pickle a lambda: the write fails midway, the old file stays whole, no temp file is left."""
    save_checkpoint(tmp_path / "ckpt.pt", minimal(step=1))
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_checkpoint(tmp_path / "ckpt.pt", minimal(step=2, bad=lambda: 0))
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_load_refuses_pickled_classes(tmp_path):
    torch.save(minimal(obj=NotPlain()), tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"weights_only=True refuses: .*NotPlain"):
        load_checkpoint(tmp_path / "evil.pt")


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")  # a foreign dict
    with pytest.raises(ValueError, match="not a companion checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save(minimal(format_version=99), tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format 99"):
        load_checkpoint(tmp_path / "future.pt")
    with pytest.raises(ValueError, match="missing"):
        save_checkpoint(tmp_path / "x.pt", {"model": {}})


def test_load_names_the_file_for_empty_truncated_and_random_bytes(tmp_path):
    whole = save_checkpoint(tmp_path / "ckpt.pt", minimal()).read_bytes()
    cases = {"empty.pt": (b"", "is empty"), "cut.pt": (whole[: len(whole) // 2], "truncated"),
             "noise.pt": (random.Random(0).randbytes(4096), "not a PyTorch checkpoint")}
    for name, (data, fragment) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=fragment) as info:
            load_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)


def test_rng_state_round_trip_repeats_every_stream(tmp_path):
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(1)
    random.seed(2)
    save_checkpoint(tmp_path / "rng.pt", minimal(rng=rng_state(g)))
    first = (torch.rand(3), torch.rand(3, generator=g), random.random())
    torch.manual_seed(99)
    random.seed(99)
    g2 = torch.Generator().manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], g2)
    again = (torch.rand(3), torch.rand(3, generator=g2), random.random())
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1]) and first[2] == again[2]
    with pytest.raises(ValueError, match="1 generator states but 0"):
        set_rng_state(rng_state(g))


def test_checkpoint_is_plain_and_rebuilds_the_model(tmp_path):
    model = GPT(CFG)
    cfg = TrainConfig(max_steps=4, batch_size=2, context_length=16)
    ckpt = make_checkpoint(model, make_optimizer(model, cfg), cfg, 3, {"train_loss": [2.0]}, torch.Generator())
    save_checkpoint(tmp_path / "ckpt.pt", ckpt)
    got = load_checkpoint(tmp_path / "ckpt.pt")
    assert got["model_config"] == CFG.to_dict() and got["train_config"] == cfg.to_dict() and got["step"] == 3
    rebuilt = GPT(GPTConfig.from_dict(got["model_config"]))
    rebuilt.load_state_dict(got["model"])
    idx = torch.randint(0, 12, (2, 8))
    assert torch.equal(rebuilt.eval()(idx), model.eval()(idx))


def test_resumed_run_matches_uninterrupted_run_bit_for_bit(tmp_path):
    """Dropout on, accumulation on: 5 steps, stop, load into a fresh model, 5 more == 10 steps straight."""
    ids = torch.randint(0, 12, (4000,), generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(max_steps=10, batch_size=3, context_length=16, grad_accum_steps=2, warmup_steps=3,
                      eval_interval=4, eval_iters=2)
    torch.manual_seed(0)
    straight = GPT(CFG)
    h_straight = train(straight, ids[:3600], ids[3600:], cfg, progress=False)
    torch.manual_seed(0)
    train(GPT(CFG), ids[:3600], ids[3600:], cfg, out_dir=tmp_path, stop_at=5, progress=False)
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 5
    torch.manual_seed(1234)  # a different init and global RNG: the checkpoint must restore everything
    resumed = GPT(CFG)
    h_resumed = train(resumed, ids[:3600], ids[3600:], cfg, out_dir=tmp_path, resume=ckpt, progress=False)
    for key in ("lr", "train_loss", "eval_step", "eval_train", "eval_val"):
        assert h_resumed[key] == h_straight[key], key
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
