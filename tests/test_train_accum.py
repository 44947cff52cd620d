"""Chapter 7's loop under ddp and fsdp with gradient accumulation and dropout (2 gloo ranks).

With grad_accum_steps > 1 only the last micro-batch all-reduces, and the weights still equal one
process's; with dropout each rank draws its own masks and the loss tracks one process's curve.
"""
from __future__ import annotations

import pytest
import torch

from companion.model import GPT, GPTConfig
from companion.parallel import launch
from companion.train import TrainConfig, train

MODEL = dict(vocab_size=12, context_length=16, d_model=16, n_layers=2, n_heads=2,
             tie_embeddings=False)


def corpus(n: int = 3000) -> torch.Tensor:
    ids = torch.arange(n) % 12
    noise = torch.rand(n, generator=torch.Generator().manual_seed(0)) < 0.05
    return torch.where(noise, torch.zeros_like(ids), ids)


def _cfg(parallel: str, **kw) -> TrainConfig:
    base = dict(max_steps=3, batch_size=8, context_length=16, warmup_steps=1, eval_interval=100,
                eval_iters=1, grad_accum_steps=3, parallel=parallel)
    return TrainConfig(**{**base, **kw})


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # full_tensor gathers an FSDP shard: a collective, called in the same order on every rank
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()}


def _count_gradient_reductions(strategy: str) -> list[int]:
    """Count DDP's bucket all-reduces (a comm hook) or FSDP's reduce-scatters, per train call."""
    calls = [0]
    if strategy == "ddp":
        import companion.parallel.loop as loop_module

        real_wrap = loop_module.wrap_model

        def wrap_and_count(*args, **kwargs):
            par = real_wrap(*args, **kwargs)

            def hook(state, bucket):
                calls[0] += 1
                import torch.distributed as dist

                fut = dist.all_reduce(bucket.buffer().div_(dist.get_world_size()),
                                      async_op=True).get_future()
                return fut.then(lambda f: f.value()[0])

            par.module.register_comm_hook(None, hook)
            return par

        loop_module.wrap_model = wrap_and_count
    else:
        import torch.distributed.fsdp._fully_shard._fsdp_param_group as group_module

        real_reduce = group_module.foreach_reduce

        def counted(*args, **kwargs):
            calls[0] += 1
            return real_reduce(*args, **kwargs)

        group_module.foreach_reduce = counted
    return calls


def _train_parallel(rank: int, world: int, strategy: str, kw: dict, count: bool) -> dict:
    calls = _count_gradient_reductions(strategy) if count else [None]
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**MODEL, **kw.pop("model", {})}))
    ids = corpus()
    history = train(model, ids[:2700], ids[2700:], _cfg(strategy, **kw), progress=False)
    return {"weights": _weights(model), "loss": history["train_loss"], "calls": calls[0]}


def _train_single(**kw) -> dict:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**MODEL, **kw.pop("model", {})}))
    ids = corpus()
    history = train(model, ids[:2700], ids[2700:], _cfg("none", **kw), progress=False)
    return {"weights": _weights(model), "loss": history["train_loss"]}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_accumulation_under_data_parallelism_equals_one_process_and_reduces_once_per_step(
        strategy):
    """3 steps of 3 micro-batches: the weights match one process's, and the gradients are
    reduced on the last micro-batch of each step only (3 times a group's count, not 9)."""
    ref = _train_single()
    run = launch(_train_parallel, 2, strategy, {}, True, timeout_s=240)
    for got in run.results:
        assert got["loss"] == pytest.approx(ref["loss"], abs=1e-5)
        for name, w in ref["weights"].items():
            torch.testing.assert_close(got["weights"][name], w, atol=1e-5, rtol=1e-4, msg=name)
    calls = run.results[0]["calls"]
    # DDP: one bucket for so small a model; FSDP: one group per block plus the root
    groups = 1 if strategy == "ddp" else MODEL["n_layers"] + 1
    assert calls == 3 * groups, calls


def test_dropout_runs_under_ddp_and_tracks_the_single_process_curve():
    """dropout 0.1 over 15 steps: each rank drops its own units, so the curve is not the same
    one, but it falls as one process's does (the mean gap stays under 0.1 nats)."""
    kw = dict(max_steps=15, grad_accum_steps=1, lr=1e-2, min_lr=1e-3, model={"dropout": 0.1})
    ref = _train_single(**{**kw, "model": {"dropout": 0.1}})
    run = launch(_train_parallel, 2, "ddp", kw, False, timeout_s=240)
    got = run.results[0]["loss"]
    assert got != ref["loss"]  # the masks differ from one process's
    assert got[-1] < got[0] - 0.3 and ref["loss"][-1] < ref["loss"][0] - 0.3
    gap = sum(abs(a - b) for a, b in zip(got, ref["loss"])) / len(got)
    assert gap < 0.1, (gap, got, ref["loss"])
    print(f"dropout gap {gap:.4f}; last {got[-1]:.4f} vs {ref['loss'][-1]:.4f}")


# --- sharded checkpoints: torch.distributed.checkpoint ------------------------------------------

CHARS = "abcdefghijkl"  # the 12 "characters" of the corpus, for the command line's tokenizer


def _stop_then_resume(rank: int, world: int, strategy: str, folder: str, dataset: str) -> dict:
    from companion.checkpoint import load_checkpoint, resolve_sharded

    ids = corpus()
    cfg = _cfg(strategy, max_steps=4, grad_accum_steps=2, eval_interval=2, dataset=dataset)
    extra = {"tokenizer": {"kind": "char", "chars": CHARS}}
    torch.manual_seed(0)
    train(GPT(GPTConfig(**MODEL)), ids[:2700], ids[2700:], cfg, out_dir=folder, stop_at=3,
          extra=extra, progress=False)
    ckpt = resolve_sharded(load_checkpoint(f"{folder}/ckpt.pt"), f"{folder}/ckpt.pt")
    torch.manual_seed(99)  # other initial weights: everything must come from the checkpoint
    model = GPT(GPTConfig(**MODEL))
    history = train(model, ids[:2700], ids[2700:], cfg, out_dir=folder, resume=ckpt,
                    extra=extra, progress=False)
    weights = _weights(model)
    if strategy == "pipeline":  # this rank trained its own stage only
        from companion.parallel import stage_layers

        mine = [f"blocks.{i}." for i in stage_layers(MODEL["n_layers"], world, rank)]
        mine += ["tok_emb.", "pos_emb."] if rank == 0 else []
        mine += ["norm.", "lm_head."] if rank == world - 1 else []
        weights = {n: w for n, w in weights.items() if n.startswith(tuple(mine))}
    return {"weights": weights, "history": history, "sharded": ckpt["sharded"]}


@pytest.fixture(scope="module")
def uninterrupted() -> dict:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODEL))
    ids = corpus()
    cfg = _cfg("none", max_steps=4, grad_accum_steps=2, eval_interval=2)
    history = train(model, ids[:2700], ids[2700:], cfg, progress=False)
    return {"weights": _weights(model), "history": history}


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory) -> dict[str, tuple]:
    """ddp, fsdp and pipeline runs stopped after step 3 of 4 and resumed (one world each)."""
    data = tmp_path_factory.mktemp("data") / "text.txt"
    data.write_text(CHARS * 250)
    runs = {}
    for strategy in ("ddp", "fsdp", "pipeline"):
        folder = tmp_path_factory.mktemp(strategy)
        results = launch(_stop_then_resume, 2, strategy, str(folder), str(data),
                         timeout_s=300).results
        # ddp and fsdp: every rank holds every weight; pipeline: each its stage's
        runs[strategy] = (folder, {**results[0], "weights": {**results[1]["weights"],
                                                              **results[0]["weights"]}})
    return runs


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "pipeline"])
def test_a_resumed_parallel_run_matches_an_uninterrupted_one(strategy, sharded_runs,
                                                              uninterrupted):
    folder, got = sharded_runs[strategy]
    ref = uninterrupted
    assert got["sharded"] == (None if strategy == "ddp" else str(folder / "ckpt.dcp"))
    assert got["history"]["train_loss"] == pytest.approx(ref["history"]["train_loss"], abs=1e-5)
    assert got["history"]["eval_val"] == pytest.approx(ref["history"]["eval_val"], abs=1e-5)
    assert got["weights"].keys() == ref["weights"].keys()
    for name, w in ref["weights"].items():
        torch.testing.assert_close(got["weights"][name], w, atol=1e-5, rtol=1e-4, msg=name)
    # the swap left no temporary folder behind
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def _cli(*args: str):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "companion.train", *args], env=env, cwd=root,
                          capture_output=True, text=True, timeout=120)


def _break_missing(folder):
    import shutil

    shutil.rmtree(folder / "ckpt.dcp")


def _break_metadata(folder):
    (folder / "ckpt.dcp" / ".metadata").write_bytes(b"not a pickle at all")


def _break_shard(folder):
    shard = next((folder / "ckpt.dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:10])


@pytest.mark.parametrize("breaks, fragment", [
    (_break_missing, "ckpt.dcp is missing"), (_break_metadata, ".metadata cannot be read"),
    (_break_shard, "is truncated"),
])
def test_a_broken_sharded_checkpoint_is_one_error_line_with_exit_code_2(
        breaks, fragment, sharded_runs, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(sharded_runs["fsdp"][0], folder)
    breaks(folder)
    proc = _cli("--resume", str(folder / "ckpt.pt"), "--device", "cpu", "--sample=0")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
