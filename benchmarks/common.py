"""Helpers shared by the benchmark scripts (run as `python benchmarks/bench_*.py`, so this folder is on sys.path)."""
from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["best_of", "cpu_name", "write_results"]


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Fastest wall time of `repeats` calls, and the last result: the minimum is the least noisy estimate."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, for the record that goes with every result."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_features() -> list[str]:
    """The vector and matrix extensions that decide CPU speed in low precision (from /proc/cpuinfo)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def write_results(path: Path, result: dict) -> None:
    """Write a benchmark's result as JSON and say where it went."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    print(f"wrote {shown}")
