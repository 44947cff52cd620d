"""Start a small torch.distributed world on one machine and collect each rank's result and log.

Introduced in chapter 9.

`launch(fn, world_size, *args)` spawns one process per rank (gloo over loopback), runs
fn(rank, world_size, *args) in each, and returns their results with everything each rank printed.
`setup()`/`teardown()` are the same set-up for a process started by torchrun, which sets RANK,
WORLD_SIZE and MASTER_ADDR/PORT itself.
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Imported once by the forkserver, so that each new world starts with them loaded
# (they take seconds to import).
_HEAVY = ["torch.distributed.fsdp", "torch.distributed.pipelining",
          "torch.distributed.tensor.parallel", "torch.nn.parallel"]

__all__ = ["DistEnv", "LaunchResult", "free_port", "setup", "teardown", "launch"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the world.

    Its rank, the world size, and the device it computes on.
    """

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class LaunchResult:
    """What `launch` brings back: one result and one captured log per rank, and the wall time."""

    results: list[Any]
    logs: list[str]
    seconds: float


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody is listening on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(backend: str | None = None, timeout_s: float = 120.0) -> DistEnv:
    """Join the world described by the environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

    As torchrun sets it.
    """
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"{key} is not set: start this process with torchrun or "
                               "companion.parallel.launch")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo" and os.environ["MASTER_ADDR"] in ("127.0.0.1", "localhost"):
        # gloo picks its network interface from the hostname; on one machine, loopback is
        # the one that always works.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0" if sys.platform == "darwin" else "lo")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
    return DistEnv(rank, world, device)


def teardown() -> None:
    """Leave the world cleanly (a no-op when there is none)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _child(
    rank: int, world: int, port: int, fn: Callable, args: tuple, folder: str, timeout_s: float
) -> None:
    # Everything the rank writes, Python or C++ (gloo's warnings), goes to its own log file.
    log = open(Path(folder) / f"rank{rank}.log", "w", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # One process per core: more threads per rank than cores only makes the ranks fight.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        setup("gloo", timeout_s)
        result = fn(rank, world, *args)
        teardown()
        torch.save({"result": result}, Path(folder) / f"rank{rank}.pt")
    except BaseException:  # noqa: BLE001 - the parent reads the traceback from the log
        traceback.print_exc()
        log.flush()
        os._exit(1)
    log.flush()


def launch(fn: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 120.0,
           start_method: str | None = None) -> LaunchResult:
    """Run fn(rank, world_size, *args) in world_size fresh processes joined by gloo.

    Return results and logs.

    fn must be importable (defined in a module, not in a notebook cell): the
    ranks are new interpreters. With start_method="fork" (Linux, macOS) the ranks are copies of
    this process instead, so functions and classes defined in a notebook cell work too.
    start_method defaults to "forkserver" where there is one: a helper process imports torch once,
    and every later world forks from it in a blink, where "spawn" pays the import again each time.
    Both are safe with threads.
    A rank that raises, or a world that runs past timeout_s, stops them all and
    raises with the ranks' logs.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if start_method is None:
        start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload(["torch", "companion.parallel", *_HEAVY])
    port = free_port()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="companion-parallel-") as folder:
        procs = [
            ctx.Process(
                target=_child, args=(r, world_size, port, fn, args, folder, timeout_s), daemon=True
            )
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        failed = _wait(procs, start + timeout_s)
        logs = [_read(Path(folder) / f"rank{r}.log") for r in range(world_size)]
        if failed:
            shown = "\n".join(f"--- rank {r} ---\n{logs[r][-3000:]}" for r in failed)
            raise RuntimeError(f"ranks {failed} failed or timed out after "
                               f"{time.perf_counter() - start:.1f} s:\n{shown}")
        results = [
            torch.load(Path(folder) / f"rank{r}.pt", weights_only=False)["result"]
            for r in range(world_size)
        ]
    return LaunchResult(results, logs, time.perf_counter() - start)


def _wait(procs: list, deadline: float) -> list[int]:
    """Wait for every process.

    When one fails (or time is up) stop the rest, who would block in a collective.
    """
    while any(p.is_alive() for p in procs):
        bad = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
        if bad or time.perf_counter() > deadline:
            time.sleep(0.5)  # give the others a moment to write their own error
            for p in procs:
                if p.is_alive():
                    p.kill()
            break
        time.sleep(0.02)
    for p in procs:
        p.join()
    return [r for r, p in enumerate(procs) if p.exitcode != 0]


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
