"""Hand-built DDP and ZeRO-1 equal torch's DDP and one process, with the collectives counted.

Real gloo worlds of 2 ranks: a tiny GPT with tied embeddings and one parameter that gets no
gradient, each rank starting from different weights (the constructor's broadcast must fix that).
"""
from __future__ import annotations

import pytest

from companion.parallel import (bucket_assignment, ddp_worker, launch, partition_parameters,
                                zero_worker)


def test_bucket_assignment_fills_from_the_last_parameter():
    """Caps of 8: 4 + 4 closes the first bucket (params 2, 1), param 0 is alone."""
    assert bucket_assignment([4, 4, 4], 8) == [[2, 1], [0]]
    assert bucket_assignment([1, 1, 10, 1], 2) == [[3, 2], [1, 0]]
    assert bucket_assignment([3, 3], 100) == [[1, 0]]


def test_bucket_assignment_rejects_an_empty_cap():
    with pytest.raises(ValueError, match="at least 1"):
        bucket_assignment([1], 0)


def test_partition_balances_the_elements():
    """6 on rank 0; 3 + 2 + 1 = 6 on rank 1."""
    assert partition_parameters([6, 2, 3, 1], 2) == [0, 1, 1, 1]
    assert partition_parameters([5], 3) == [0]


@pytest.mark.parametrize("kind, accumulate", [("hooked", 1), ("bucketed", 1), ("bucketed", 2)])
def test_hand_ddp_equals_torch_ddp_and_one_process(kind, accumulate):
    run = launch(ddp_worker, 2, kind, 0.01, 3, accumulate)
    for r in run.results:
        assert r["vs_torch"] < 1e-6, r
        assert r["vs_single"] < 1e-5, r
        # the unused parameter keeps grad None under both, so AdamW leaves it alone under both
        assert all(a and b for a, b in r["unused_grad_is_none"])


def test_hooked_ddp_sends_one_all_reduce_per_parameter_with_a_gradient():
    r = launch(ddp_worker, 2, "hooked", 0.01, 2).results[0]
    assert r["collectives_per_step"] == [r["n_params"] - 1] * 2  # all but the unused one


def test_bucketed_ddp_sends_one_all_reduce_per_bucket():
    r = launch(ddp_worker, 2, "bucketed", 0.01, 2).results[0]
    assert r["n_buckets"] > 2
    assert r["collectives_per_step"] == [r["n_buckets"]] * 2
    # the first bucket is the end of the model, the last holds the embeddings
    assert "norm.weight" in r["buckets"][0] and "tok_emb.weight" in r["buckets"][-1]
    big = launch(ddp_worker, 2, "bucketed", 25.0, 1).results[0]
    assert big["n_buckets"] == 1 and big["collectives_per_step"] == [1]


@pytest.mark.parametrize("optimizer", ["AdamW", "SGD"])
def test_zero1_equals_the_unsharded_optimizer_with_half_the_state(optimizer):
    run = launch(zero_worker, 2, 4, optimizer)
    owned = 0
    for r in run.results:
        assert r["vs_single"] < 1e-5, r
        assert 0.45 < r["state_bytes"] / r["unsharded_state_bytes"] < 0.55, r
        assert r["broadcasts_per_step"] == r["n_params"]
        owned += r["owned"]
    assert owned == run.results[0]["n_params"]  # every parameter owned by exactly one rank


def test_fork_runs_a_function_that_cannot_be_imported():
    """The chapter's hand-built classes live in notebook cells: fork carries them to the ranks."""
    import torch
    import torch.distributed as dist

    offset = 10.0  # a closure: no pickling could carry it to a fresh interpreter

    def local(rank, world):
        t = torch.tensor([rank + offset])
        dist.all_reduce(t)
        return t.item()

    assert launch(local, 2, start_method="fork").results == [21.0, 21.0]
