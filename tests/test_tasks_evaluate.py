"""companion.tasks (word reversal and its verifier), companion.evaluate (Wilson, pass@k, acc_norm)
and companion.posttrain's command (a smoke run, and errors as one line)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from companion import tasks
from companion.evaluate import multiple_choice_accuracy, pass_at_k, wilson_interval
from companion.tokenizer import CharTokenizer


def test_words_are_distinct_lowercase_and_split_by_word():
    words = tasks.task_words("The cat SAT; the dog, the cat. A b", 2, 3)
    assert words == ["cat", "dog", "sat", "the"]
    split = tasks.split_words(words, 1, seed=0)
    assert len(split["test"]) == 1 and not set(split["test"]) & set(split["train"])
    assert sorted(split["test"] + split["train"]) == words
    with pytest.raises(ValueError, match="distinct"):
        tasks.split_words(["a", "a"], 1)
    with pytest.raises(ValueError, match="n_test"):
        tasks.split_words(words, 4)
    with pytest.raises(ValueError, match="no words"):
        tasks.task_words("123", 3, 7)


def test_reward_needs_the_exact_reversal_and_the_end_of_turn():
    assert tasks.reward("honour", "ruonoh") == 1.0
    assert tasks.reward("honour", "ruonoh", ended=False) == 0.0
    assert tasks.reward("honour", "ruono") == 0.0
    assert tasks.reward("honour", "honour") == 0.0
    assert tasks.reward("abba", "abba") == 1.0  # a palindrome is its own reversal


def test_trivial_baselines_by_hand():
    b = tasks.trivial_baselines(["aba", "abc", "xyz"], ["zyx", "q"])
    assert b["copy the prompt"] == pytest.approx(1 / 3)
    assert b["commonest answer"] in (0.0, pytest.approx(1 / 3))
    assert b["random letters"] == pytest.approx(26.0 ** -3)


def test_wilson_interval_matches_the_formula_and_stays_in_range():
    lo, hi = wilson_interval(0, 500)
    assert lo == 0.0 and hi == pytest.approx(0.0076, abs=1e-4)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson_interval(100, 100)
    assert hi == pytest.approx(1.0) and lo < 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_pass_at_k_is_unbiased_against_brute_force():
    from itertools import combinations

    n, c = 6, 2
    draws = list(combinations([1] * c + [0] * (n - c), 3))
    brute = sum(any(d) for d in draws) / len(draws)
    assert pass_at_k(n, c, 3) == pytest.approx(brute)
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(8, 2, 1) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_acc_norm_divides_by_characters_not_tokens():
    """Two endings: the shorter wins on the sum, the longer on the per-character mean."""
    tok = CharTokenizer("abxy ")

    class Fixed(torch.nn.Module):
        training = False

        def forward(self, x):  # every next character costs log 5 except 'a', which is cheap
            logits = torch.zeros(*x.shape, 5)
            logits[..., 0] = 3.0
            return logits

    items = [("x ", ["aaaa", "b"], 0)]
    assert multiple_choice_accuracy(Fixed(), tok, items) == 0.0  # sum favours the short 'b'
    assert multiple_choice_accuracy(Fixed(), tok, items, normalise=True) == 1.0


def test_posttrain_command_errors_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "companion.posttrain", "--out", str(tmp_path),
                          "--threads", "0"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error:") and len(out.stderr.strip().splitlines()) == 1
    out = subprocess.run([sys.executable, "-m", "companion.posttrain"], capture_output=True,
                         text=True)
    assert out.returncode == 2 and out.stderr.startswith("error:")


def test_shipped_record_and_checkpoints_agree():
    """The shipped posttrain.json describes the shipped SFT model: its greedy score reproduces."""
    from companion.evaluate import greedy_exact_match
    from companion.posttrain import PostTrainConfig, examples, load_record, load_stage, setup

    record = load_record()
    assert not record["provenance"]["quick"] and record["overlap"] == 0
    cfg = record["config"]
    s = setup(PostTrainConfig(n_test=cfg["n_test"], n_demos=cfg["n_demos"], seed=cfg["seed"]))
    sft, tok, info = load_stage("sft")
    hits = greedy_exact_match(sft, examples(s, s.test_words))
    assert int(hits.sum()) == record["stages"]["SFT"]["greedy_correct"]
    assert math.isclose(record["stages"]["SFT"]["greedy"], float(hits.mean()), rel_tol=1e-6)
    json.dumps(record)  # plain values only
