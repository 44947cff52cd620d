"""Tests for the chapter 1 self-checks: they pass right answers and give a specific hint for wrong ones."""
import math

import pytest
import torch

from companion.checks import ExerciseFailed, check_1_1, check_1_2, check_1_3


def _not_implemented(*args, **kwargs):
    raise NotImplementedError("exercise stub")


def _assert_fails_with(check, fn, fragment):
    with pytest.raises(ExerciseFailed) as info:
        check(fn)
    assert fragment in str(info.value), str(info.value)
    return str(info.value)


# --- 1.1 count_bigrams -------------------------------------------------------------------


def count_bigrams_right(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)
    for a, b in zip(ids, ids[1:]):
        counts[a, b] += 1
    return counts


def count_bigrams_transposed(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)
    for a, b in zip(ids, ids[1:]):
        counts[b, a] += 1
    return counts


def count_bigrams_wraparound(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)
    for a, b in zip(ids, ids[1:] + ids[:1]):  # pairs the last token with the first
        counts[a, b] += 1
    return counts


def count_bigrams_sized_by_max_id(ids, vocab_size):
    n = max(ids) + 1
    counts = torch.zeros(n, n, dtype=torch.long)
    for a, b in zip(ids, ids[1:]):
        counts[a, b] += 1
    return counts


def count_bigrams_only_first_occurrence(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)
    for a, b in zip(ids, ids[1:]):
        counts[a, b] = 1  # sets instead of adding
    return counts


def test_check_1_1_passes_a_correct_count_bigrams(capsys):
    check_1_1(count_bigrams_right)
    assert "passed" in capsys.readouterr().out


def test_check_1_1_passes_a_numpy_result(capsys):
    check_1_1(lambda ids, v: count_bigrams_right(ids, v).numpy())
    assert "passed" in capsys.readouterr().out


def test_check_1_1_stub_fails_as_not_implemented():
    _assert_fails_with(check_1_1, _not_implemented, "not implemented")


def test_check_1_1_transposed_counts_hint_swapped():
    _assert_fails_with(check_1_1, count_bigrams_transposed, "swapped")


def test_check_1_1_wraparound_hint_says_dont_wrap():
    _assert_fails_with(check_1_1, count_bigrams_wraparound, "wrap around")


def test_check_1_1_matrix_sized_by_max_id_hint_says_vocab_size():
    _assert_fails_with(check_1_1, count_bigrams_sized_by_max_id, "Size the matrix by vocab_size")


def test_check_1_1_setting_instead_of_adding_hint_says_repeated_pairs():
    # the hand-worked case has no repeated pair, so this passes it and is caught on random ids
    _assert_fails_with(check_1_1, count_bigrams_only_first_occurrence, "repeated pairs")


def test_check_1_1_crash_names_the_input():
    def crashes(ids, vocab_size):
        raise IndexError("boom")

    message = _assert_fails_with(check_1_1, crashes, "IndexError: boom")
    assert "[0, 1, 1, 2, 0]" in message


def test_check_1_1_missing_return_fails_with_hint():
    _assert_fails_with(check_1_1, lambda ids, vocab_size: None, "should be a tensor")


def test_check_1_1_non_function_fails():
    _assert_fails_with(check_1_1, 42, "expected a function")


# --- 1.2 perplexity ----------------------------------------------------------------------


def _nll(probs, ids, log=torch.log):
    ids = torch.as_tensor(ids)
    return -log(probs[ids[:-1], ids[1:]].double()).mean().item()


def perplexity_right(probs, ids):
    return math.exp(_nll(probs, ids))


def perplexity_returns_mean_nll(probs, ids):
    return _nll(probs, ids)


def perplexity_transposed_lookup(probs, ids):
    ids = torch.as_tensor(ids)
    return math.exp(-torch.log(probs[ids[1:], ids[:-1]].double()).mean().item())


def perplexity_log2_then_exp(probs, ids):
    return math.exp(_nll(probs, ids, log=torch.log2))


def perplexity_ln_then_pow2(probs, ids):
    return 2 ** _nll(probs, ids)


def perplexity_sums_instead_of_mean(probs, ids):
    ids = torch.as_tensor(ids)
    return math.exp(-torch.log(probs[ids[:-1], ids[1:]].double()).sum().item() / len(ids))


def test_check_1_2_passes_a_correct_perplexity(capsys):
    check_1_2(perplexity_right)
    assert "passed" in capsys.readouterr().out


def test_check_1_2_passes_log2_with_pow2_consistently(capsys):
    check_1_2(lambda probs, ids: 2 ** _nll(probs, ids, log=torch.log2))
    assert "passed" in capsys.readouterr().out


def test_check_1_2_stub_fails_as_not_implemented():
    _assert_fails_with(check_1_2, _not_implemented, "not implemented")


def test_check_1_2_mean_nll_hint_says_exponentiate():
    _assert_fails_with(check_1_2, perplexity_returns_mean_nll, "exponentiate")


def test_check_1_2_transposed_lookup_hint_names_probs_next_current():
    _assert_fails_with(check_1_2, perplexity_transposed_lookup, "probs[next, current]")


def test_check_1_2_dividing_by_len_ids_fails():
    _assert_fails_with(check_1_2, perplexity_sums_instead_of_mean, "Exercise 1.2")


def test_check_1_2_dividing_by_len_ids_hint_says_len_minus_one():
    _assert_fails_with(check_1_2, perplexity_sums_instead_of_mean, "len(ids) - 1")




def test_check_1_2_log2_with_exp_fails():
    # The wrong answer is rejected; which hint it gets is tested below.
    _assert_fails_with(check_1_2, perplexity_log2_then_exp, "Exercise 1.2")


def test_check_1_2_log2_with_exp_hint_says_mixed_bases():
    _assert_fails_with(check_1_2, perplexity_log2_then_exp, "mixed the two bases")


def test_check_1_2_ln_with_pow2_hint_says_mixed_bases():
    _assert_fails_with(check_1_2, perplexity_ln_then_pow2, "mixed the two bases")


def test_check_1_2_missing_return_fails_with_hint():
    _assert_fails_with(check_1_2, lambda probs, ids: None, "forget to return")


def test_check_1_2_per_token_tensor_fails_with_hint():
    _assert_fails_with(check_1_2, lambda probs, ids: torch.ones(len(ids) - 1), "forget to average")


# --- 1.3 apply_temperature ---------------------------------------------------------------


def apply_temperature_right(logits, temperature):
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(logits / temperature, dim=-1)


def apply_temperature_no_softmax(logits, temperature):
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return logits / temperature


def apply_temperature_multiplies(logits, temperature):
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return torch.softmax(logits * temperature, dim=-1)


def apply_temperature_no_value_error(logits, temperature):
    return torch.softmax(logits / temperature, dim=-1)


def apply_temperature_wrong_dim(logits, temperature):
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return torch.softmax(logits / temperature, dim=0)


def apply_temperature_wrong_exception(logits, temperature):
    if temperature <= 0:
        raise AssertionError("bad temperature")
    return torch.softmax(logits / temperature, dim=-1)


def test_check_1_3_passes_a_correct_apply_temperature(capsys):
    check_1_3(apply_temperature_right)
    assert "passed" in capsys.readouterr().out


def test_check_1_3_stub_fails_as_not_implemented():
    _assert_fails_with(check_1_3, _not_implemented, "not implemented")


def test_check_1_3_logits_over_t_without_softmax_hint_says_apply_softmax():
    _assert_fails_with(check_1_3, apply_temperature_no_softmax, "apply a softmax")


def test_check_1_3_multiplying_by_t_hint_says_divide():
    _assert_fails_with(check_1_3, apply_temperature_multiplies, "multiplied by T")


def test_check_1_3_no_value_error_for_nonpositive_t_hint_says_raise():
    _assert_fails_with(check_1_3, apply_temperature_no_value_error, "raise ValueError")


def test_check_1_3_softmax_over_wrong_dim_hint_says_last_dim():
    _assert_fails_with(check_1_3, apply_temperature_wrong_dim, "last dim")


def test_check_1_3_missing_return_fails_with_hint():
    _assert_fails_with(check_1_3, lambda logits, temperature: None, "should be a tensor")


def test_check_1_3_wrong_exception_type_is_named():
    _assert_fails_with(check_1_3, apply_temperature_wrong_exception, "raised AssertionError")
