"""The training command line through the real command: `python -m companion.train` in a subprocess.

Bad input is one `error:` line with exit code 2 and no traceback; --sample prints what it promises;
a resumed run never lifts the learning rate; a diverging run stops and keeps its last good
checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from companion.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "shakespeare-char-cpu", "--device", "cpu", "--n_layers=1", "--d_model=16",
        "--n_heads=2", "--context_length=16", "--batch_size=4", "--eval_iters=2",
        "--eval_interval=2", "--warmup_steps=2"]
SAMPLE = 40  # longer than the context of 16: the window has to slide


def cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "companion.train", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "text.txt"
    path.write_text("to be or not to be, that is the question. " * 60)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus) -> tuple[Path, subprocess.CompletedProcess]:
    """One real 6-step run: its folder and the finished process."""
    out = tmp_path_factory.mktemp("run")
    proc = cli(*TINY, f"--dataset={corpus}", "--max-steps", "6", "--sample", str(SAMPLE),
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def assert_one_error_line(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2):
    """Exit `code` and one `error:` line on stderr, after the progress bar if training began."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == lines[-1], proc.stderr[-3000:]
    assert lines[-1].startswith("error: ") and (len(lines) == 1 or code != 2), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


# --- bad checkpoints given to --resume ------------------------------------------------------------


def _truncated(real: Path) -> bytes:
    data = real.read_bytes()
    return data[: len(data) * 2 // 3]


BAD_FILES = {
    "random bytes": (lambda real, path: path.write_bytes(random.Random(0).randbytes(2048)),
                     "not a PyTorch checkpoint"),
    "truncated": (lambda real, path: path.write_bytes(_truncated(real)), "truncated"),
    "empty": (lambda real, path: path.write_bytes(b""), "is empty"),
    "foreign dict": (lambda real, path: torch.save({"weights": torch.zeros(2)}, path),
                     "not a companion checkpoint"),
    "no train config": (lambda real, path: torch.save(
        {k: v for k, v in load_checkpoint(real).items() if k != "train_config"}, path),
        "lacks train_config"),
    "weights of another model": (lambda real, path: torch.save(
        {**load_checkpoint(real), "model": {"w": torch.zeros(1)}}, path), "do not fit"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_checkpoint_to_resume_is_one_error_line_naming_the_file(kind, run, tmp_path):
    make, fragment = BAD_FILES[kind]
    bad = tmp_path / "bad.pt"
    make(run[0] / "ckpt.pt", bad)
    assert_one_error_line(cli("--resume", str(bad), "--device", "cpu"), str(bad), fragment)


@pytest.mark.parametrize("args, fragments", [
    (["--resume", "does/not/exist.pt"], ["no checkpoint at does/not/exist.pt"]),
    (["--lr=fast"], ["--lr=fast", "expected float"]),
    (["--n_layer=3"], ["unknown setting --n_layer"]),
    (["--max-steps", "many"], ["--max-steps", "invalid int"]),
    (["--context_length=5000"], ["--context_length=5000", "validation split"]),
    (["--dataset=missing.txt"], ["missing.txt"]),
])
def test_bad_input_is_one_error_line_with_exit_code_2(args, fragments, corpus):
    # a corpus given first, so that only the argument under test is wrong
    dataset = [] if any(a.startswith("--dataset") for a in args) else [f"--dataset={corpus}"]
    assert_one_error_line(cli(*TINY, *dataset, *args), *fragments)


def test_resume_with_a_context_longer_than_the_model_is_one_error_line(run):
    proc = cli("--resume", str(run[0] / "ckpt.pt"), "--context_length=32", "--device", "cpu")
    assert_one_error_line(proc, "--context_length=32 exceeds the model's 16")


# --- what a good run does ------------------------------------------------------------------------


def test_sample_prints_n_characters_past_the_context(run):
    out, proc = run
    head, _, sample = proc.stdout.partition(f"sample of {SAMPLE} characters from best.pt")
    assert sample, proc.stdout
    text = sample.split("\n", 1)[1].removesuffix("\n")
    assert len(text) == SAMPLE > 16
    assert (out / "ckpt.pt").is_file() and (out / "best.pt").is_file()


def test_resume_with_more_steps_never_raises_the_learning_rate(run, tmp_path):
    """6 steps decaying to min_lr at step 6, resumed to 12: steps 7-12 stay at min_lr (a horizon
    moved to 12 would climb back up to about 0.9 of the peak)."""
    out, _ = run
    proc = cli("--resume", str(out / "ckpt.pt"), "--max-steps", "12", "--sample", "0",
               "--device", "cpu", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lrs = json.loads((tmp_path / "log.json").read_text())["lr"]
    before, after = lrs[:6], lrs[6:]
    assert len(after) == 6
    assert max(after) <= min(before[2:])  # never above any lr once decay began
    assert all(math.isclose(lr, 3e-4) for lr in after)  # the preset's min_lr
    assert load_checkpoint(tmp_path / "ckpt.pt")["decay_steps"] == 6


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    proc = cli(*TINY, f"--dataset={corpus}", "--lr=1e30", "--eval_interval=100", "--max-steps",
               "6", "--sample", "0", "--out", str(tmp_path))
    assert_one_error_line(proc, "loss is", "diverged", str(tmp_path / "ckpt.pt"), "(step 0)",
                          code=1)
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["step"] == 0
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


# --- one home for the command line ---------------------------------------------------------------


def test_the_loop_does_not_import_its_command_line_and_help_documents_the_checkpoints():
    code = "import sys, companion.train; print('companion.train_cli' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert probe.stdout.strip() == "False", probe.stderr[-3000:]
    proc = cli("--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = " ".join(proc.stdout.split())
    assert "best.pt (the lowest validation loss)" in text and "decay horizon" in text
