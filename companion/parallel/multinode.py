"""Multi-node torchrun, rehearsed on one machine: two "nodes" as two torchrun agents on loopback.

Introduced in chapter 9.

`torchrun_command` builds the command each node runs; `run_two_nodes` starts two of them on
127.0.0.1 with gloo and returns what their workers printed (`companion.parallel.node_worker`).
"""
from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["torchrun_command", "run_two_nodes"]

_WORKER = ("-m", "companion.parallel.node_worker")


def torchrun_command(node_rank: int, nnodes: int = 2, nproc_per_node: int = 1,
                     master_addr: str = "127.0.0.1", master_port: int = 29500,
                     rendezvous: str = "static", target: tuple[str, ...] = _WORKER) -> list[str]:
    """The argv one node runs: python -m torch.distributed.run (torchrun) with its flags.

    rendezvous="static": node 0 hosts the store at master_addr:master_port and node ranks are
    given. "c10d": the agents meet at the endpoint and agree on node ranks themselves.
    """
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"node_rank must be in 0..{nnodes - 1}, got {node_rank}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
           "--nproc-per-node", str(nproc_per_node)]
    if rendezvous == "static":
        cmd += ["--node-rank", str(node_rank), "--master-addr", master_addr,
                "--master-port", str(master_port)]
    elif rendezvous == "c10d":
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"{master_addr}:{master_port}",
                "--rdzv-id", "companion-demo"]
    else:
        raise ValueError(f"rendezvous must be 'static' or 'c10d', got {rendezvous!r}")
    return cmd + list(target)


def run_two_nodes(timeout_s: float = 90.0, rendezvous: str = "static") -> list[str]:
    """Start node 0 and node 1 (one worker each) over loopback; return each node's output."""
    from .launch import free_port

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           # the interface the ranks talk over: NCCL_SOCKET_IFNAME plays this part for NCCL
           "GLOO_SOCKET_IFNAME": "lo0" if sys.platform == "darwin" else "lo"}
    procs = [subprocess.Popen(torchrun_command(r, master_port=port, rendezvous=rendezvous),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for r in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout_s)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    bad = [r for r, p in enumerate(procs) if p.returncode != 0]
    if bad:
        raise RuntimeError(f"nodes {bad} failed:\n" + "\n".join(outs))
    return outs
