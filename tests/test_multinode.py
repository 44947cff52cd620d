"""Multi-node torchrun rehearsed on one machine: two agents with --nnodes 2 over loopback."""
from __future__ import annotations

import pytest

from companion.parallel import run_two_nodes, torchrun_command


def test_command_carries_the_multi_node_flags():
    cmd = torchrun_command(1, master_port=1234)
    for flag, value in [("--nnodes", "2"), ("--node-rank", "1"), ("--nproc-per-node", "1"),
                        ("--master-addr", "127.0.0.1"), ("--master-port", "1234")]:
        assert cmd[cmd.index(flag) + 1] == value
    c10d = torchrun_command(0, rendezvous="c10d", master_port=29400)
    assert c10d[c10d.index("--rdzv-endpoint") + 1] == "127.0.0.1:29400"
    assert "--node-rank" not in c10d


def test_bad_node_rank_is_refused():
    with pytest.raises(ValueError, match="0..1, got 2"):
        torchrun_command(2)


def test_two_nodes_on_loopback_all_reduce_across_nodes():
    outs = run_two_nodes(timeout_s=120)
    assert "node 0 local rank 0 -> global rank 0 of 2" in outs[0]
    assert "node 1 local rank 0 -> global rank 1 of 2" in outs[1]
    assert all("all_reduce 3" in o for o in outs)
