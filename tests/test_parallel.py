"""companion.parallel: every strategy trains exactly like one process; the arithmetic of bubbles and traffic.

Multi-process tests start real gloo worlds of 2 ranks over loopback, so they are few and tiny (2-3 steps).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from companion.model import GPT
from companion.parallel import (
    GPTStage, bubble_fraction, bytes_per_step, compare_losses, launch, layout_memory, make_batches, measured_bubble,
    ring_allreduce_bytes, shard_rows, stage_layers, tiny_config, verify, Event, RunSpec,
)
from companion.parallel.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


# --- single-process arithmetic ----------------------------------------------------------------

@pytest.mark.parametrize("p, m, want", [(1, 4, 0.0), (2, 1, 0.5), (2, 4, 0.2), (4, 4, 3 / 7), (4, 13, 0.1875)])
def test_bubble_fraction_hand_worked(p, m, want):
    """(p-1)/(m+p-1): p=2, m=4 -> 1/5; p=4, m=13 -> 3/16."""
    assert bubble_fraction(p, m) == pytest.approx(want)


def test_bubble_fraction_rejects_zero_microbatches():
    with pytest.raises(ValueError, match="m=0"):
        bubble_fraction(2, 0)


@pytest.mark.parametrize("n_layers, n_stages", [(2, 2), (5, 2), (7, 3), (12, 4), (3, 3)])
def test_stage_layers_cover_every_layer_once_and_evenly(n_layers, n_stages):
    parts = [stage_layers(n_layers, n_stages, s) for s in range(n_stages)]
    assert [i for r in parts for i in r] == list(range(n_layers))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_stage_layers_refuses_more_stages_than_layers():
    with pytest.raises(ValueError, match="n_layers=2"):
        stage_layers(2, 3, 0)


def test_gpt_stages_chained_equal_the_whole_model():
    torch.manual_seed(0)
    model = GPT(tiny_config(n_layers=3))
    x = torch.randint(0, 64, (2, 16))
    h = x
    for s in range(3):
        h = GPTStage(model, s, 3)(h)
    assert torch.allclose(h, model(x), atol=1e-6)


def test_gpt_stage_refuses_tied_embeddings():
    with pytest.raises(ValueError, match="tie_embeddings"):
        GPTStage(GPT(tiny_config(tie_embeddings=True)), 0, 2)


def test_measured_bubble_of_a_hand_drawn_timeline():
    """Two stages, one micro-batch, F and B take 1 s each: each stage is busy 2 of 4 s -> bubble 0.5 = (p-1)/(m+p-1)."""
    events = [Event(0, 0, "F", 0, 1), Event(1, 0, "F", 1, 2), Event(1, 0, "B", 2, 3), Event(0, 0, "B", 3, 4)]
    assert measured_bubble(events) == pytest.approx(0.5) == pytest.approx(bubble_fraction(2, 1))


def test_compare_losses_flags_only_real_differences():
    ref = [4.0, 3.5, 3.0]
    assert compare_losses(ref, [4.0, 3.5 + 1e-6, 3.0]) == []
    bad = compare_losses(ref, [4.0, 3.6, 3.0])
    assert len(bad) == 1 and bad[0].startswith("step 1")
    assert compare_losses(ref, ref[:2]) == ["2 losses against 3 in the reference"]


def test_shard_rows_splits_and_rejects_uneven():
    t = torch.arange(6)
    assert torch.equal(torch.cat([shard_rows(t, r, 3) for r in range(3)]), t)
    assert shard_rows(t, 1, 3).tolist() == [2, 3]
    with pytest.raises(ValueError, match="world_size=4"):
        shard_rows(t, 0, 4)


def test_ring_allreduce_bytes_hand_worked():
    """1e9 bf16 gradients over 2 ranks: each sends half and receives half, twice -> 2 (1/2) 1e9 2 B = 2e9 B."""
    assert ring_allreduce_bytes(1e9, 2, 2) == 2e9
    assert ring_allreduce_bytes(1e9, 1, 2) == 0.0


def test_fsdp_sends_one_and_a_half_times_ddp():
    rows = {r.strategy: r.bytes_per_gpu for r in bytes_per_step(1e9, 24, 2048, 2048, 8, world_size=8)}
    assert rows["fsdp"] == pytest.approx(1.5 * rows["ddp"])
    assert rows["pipeline"] == 2 * 8 * 2048 * 2048 * 2  # activations forward + gradients back, bf16
    assert rows["tp"] == pytest.approx(4 * 24 * ring_allreduce_bytes(8 * 2048 * 2048, 8, 2))


def test_layout_memory_sharding_levels():
    """16 bytes a parameter in one GPU; ZeRO-3 over 8 divides all of it by 8; ZeRO-1 only the 12 optimizer bytes."""
    assert layout_memory(1e9)["total"] == 16e9
    assert layout_memory(1e9, dp=8, shard="all")["total"] == pytest.approx(2e9)
    assert layout_memory(1e9, dp=8, shard="optimizer")["total"] == pytest.approx(4e9 + 1.5e9)
    assert layout_memory(1e9, tp=8, pp=2, dp=4, shard="none")["total"] == pytest.approx(1e9)
    with pytest.raises(ValueError, match="shard"):
        layout_memory(1e9, shard="zero9")


def test_make_batches_targets_are_inputs_shifted():
    (x, y), *_ = make_batches(RunSpec(steps=1))
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_run_spec_rejects_uneven_microbatches():
    with pytest.raises(ValueError, match="n_microbatches=3"):
        RunSpec(batch_size=8, n_microbatches=3)


# --- real two-process worlds -------------------------------------------------------------------

def _say_hello(rank: int, world: int) -> int:
    import torch.distributed as dist

    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    print(f"hello from rank {rank} of {world}")
    return int(t.item())


def _crash(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("rank 1 broke on purpose")
    import torch.distributed as dist

    dist.barrier()  # rank 0 would wait here forever without launch's clean-up


def test_launch_returns_results_and_per_rank_logs():
    run = launch(_say_hello, 2)
    assert run.results == [3, 3]  # 1 + 2 on both ranks
    assert "hello from rank 0 of 2" in run.logs[0] and "hello from rank 1 of 2" in run.logs[1]


def test_launch_reports_a_crashing_rank_with_its_traceback():
    with pytest.raises(RuntimeError, match="rank 1 broke on purpose"):
        launch(_crash, 2, timeout_s=60)


@pytest.mark.parametrize("strategy, options", [
    ("ddp", {}), ("fsdp", {}), ("pipeline", {"schedule": "gpipe"}), ("pipeline", {"schedule": "1f1b"}),
    ("tp", {"tp_method": "hand"}), ("tp", {"tp_method": "dtensor"}),
])
def test_every_strategy_matches_single_process_training(strategy, options):
    report = verify(strategy, world_size=2, steps=3, quiet=True, **options)
    assert report["ok"], report["mismatches"]
    assert report["weight_diff"] < 1e-4
    ref = report["reference"]["losses"]
    assert ref[-1] < ref[0]  # it did train
    for result in report["results"]:
        assert result["losses"] == pytest.approx(ref, rel=1e-4)
    if strategy == "fsdp":  # each rank holds about half the parameters and half the optimizer state
        full, mine = report["reference"]["bytes"], report["results"][0]["bytes"]
        assert 0.45 < mine["param"] / full["param"] < 0.55 and 0.45 < mine["optim"] / full["optim"] < 0.55
    if strategy == "pipeline":  # every micro-batch passes forward and backward on both stages, each step
        events = report["results"][0]["events"]
        assert len(events) == 2 * 4 * 2  # the first step is not timed: it starts with a trial pass
        first_step = events[:8]
        if options["schedule"] == "gpipe":  # all forwards before any backward
            assert [e.kind for e in first_step] == ["F"] * 4 + ["B"] * 4
        else:  # 1F1B on stage 0 of 2: two forwards warm up, then backward and forward alternate
            assert [e.kind for e in first_step] == ["F", "F", "B", "F", "B", "F", "B", "B"]


def test_cli_exits_zero_on_agreement(capsys):
    assert main(["--strategy", "ddp", "--world-size", "2", "--steps", "2"]) == 0
    assert "OK: every rank matches" in capsys.readouterr().out


def test_cli_exits_nonzero_on_an_injected_fault():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "companion.parallel", "--strategy", "ddp", "--steps", "2", "--inject-fault"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "MISMATCH" in proc.stdout and "step 1" in proc.stdout
