"""The worker `run_two_nodes` starts on each "node": join, all-reduce rank + 1, say who it is.

Introduced in chapter 9. Run by torchrun: `torchrun ... -m companion.parallel.node_worker`.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .launch import setup


def main() -> None:
    """Join the world torchrun describes, all-reduce, print node, local and global rank."""
    env = setup("gloo")
    t = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(t)  # 1 + 2 = 3 over two nodes
    e = os.environ
    print(f"node {e['GROUP_RANK']} local rank {e['LOCAL_RANK']} -> global rank {env.rank} of "
          f"{env.world_size} (master {e['MASTER_ADDR']}:{e['MASTER_PORT']}): all_reduce "
          f"{t.item():.0f}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
