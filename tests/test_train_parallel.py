"""Chapter 7's loop under torchrun (chapter 9's --parallel): every strategy's losses match one process's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from companion.checkpoint import load_checkpoint
from companion.parallel import free_port
from companion.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

# Tiny and untied (a pipeline stage cannot share the embedding with the head), 2 blocks: one per stage.
# RoPE on purpose: its cos/sin tables are non-persistent buffers, which the gathered checkpoint must leave out.
ARGS = ["--preset", "shakespeare-char-cpu", "--max-steps", "3", "--device", "cpu", "--sample=0", "--d_model=32",
        "--n_layers=2", "--n_heads=2", "--context_length=16", "--batch_size=8", "--eval_iters=2", "--eval_interval=3",
        "--tie_embeddings=False", "--pos=rope", "--optimizer=adamw", "--qk_norm=False", "--logit_softcap=None"]


def run(out, parallel: str) -> dict:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    launcher = [] if parallel == "none" else ["-m", "torch.distributed.run", "--nproc-per-node", "2",
                                              "--master-port", str(free_port())]
    cmd = [sys.executable, *launcher, "-m", "companion.train", *ARGS, "--out", str(out), "--parallel", parallel]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "log.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("none")
    return run(out, "none"), load_checkpoint(out / "ckpt.pt")


@pytest.mark.parametrize("parallel", ["ddp", "fsdp", "pipeline", "tp"])
def test_torchrun_losses_and_weights_match_single_process(tmp_path, single, parallel):
    ref, ref_ckpt = single
    got = run(tmp_path, parallel)
    assert len(got["train_loss"]) == len(ref["train_loss"]) == 3
    for key in ("train_loss", "eval_train", "eval_val"):
        assert got[key] == pytest.approx(ref[key], abs=1e-4), key
    assert got["eval_step"] == ref["eval_step"] == [0, 3]
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")  # rank 0 wrote the weights gathered from both ranks
    assert ckpt["model"].keys() == ref_ckpt["model"].keys()
    for name, t in ref_ckpt["model"].items():
        assert torch.allclose(ckpt["model"][name], t, atol=1e-4), name
    # Only ddp keeps the whole optimizer state on every rank, in ckpt.pt; the sharded strategies
    # name the folder where torch.distributed.checkpoint wrote each rank's shards.
    assert (ckpt["optimizer"] is not None) == (parallel == "ddp")
    assert ckpt["sharded"] == (None if parallel == "ddp" else "ckpt.dcp")
    assert (tmp_path / "ckpt.dcp" / ".metadata").is_file() == (parallel != "ddp")
    assert load_checkpoint(tmp_path / "best.pt")["sharded"] is None


def test_parallel_setting_is_validated():
    with pytest.raises(ValueError, match="parallel must be one of"):
        TrainConfig(parallel="zero3")
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="interleaved")
    assert TrainConfig().parallel == "none"
