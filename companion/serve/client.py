"""A small HTTP client for the server (standard library only), a subprocess launcher, a load test.

Talks only to the URL it is given; the course uses 127.0.0.1. Chapter 11.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

__all__ = ["free_port", "post", "complete", "stream", "ServerProcess", "load_test"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes | dict, timeout: float = 60) -> tuple[int, dict]:
    """POST JSON (or raw bytes); return (status, decoded JSON body), 4xx included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def complete(base: str, **params: Any) -> dict:
    """POST /v1/completions and return the JSON answer; RuntimeError on a non-200 status."""
    status, body = post(f"{base}/v1/completions", params)
    if status != 200:
        raise RuntimeError(f"status {status}: {body}")
    return body


def stream(base: str, timeout: float = 60, **params: Any) -> Iterator[dict | str]:
    """POST with stream=true; yield each server-sent event's JSON, then the final "[DONE]"."""
    data = json.dumps({**params, "stream": True}).encode()
    req = urllib.request.Request(f"{base}/v1/completions", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: "):
                continue
            payload = line[len("data: "):]
            yield payload if payload == "[DONE]" else json.loads(payload)


class ServerProcess:
    """`python -m companion.serve` in a subprocess on a free loopback port; a context manager.

    Example: with ServerProcess("ckpt.pt") as server: complete(server.url, prompt="Hi")
    """

    def __init__(self, checkpoint: str | os.PathLike, *args: str, startup_s: float = 90):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "companion.serve", "--checkpoint", str(checkpoint),
                    "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.startup_s = startup_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        atexit.register(self.__exit__)  # never leave a server behind, even if the caller fails
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:  # bounded: the server is up, or it died, or time ran out
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {out}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"the server did not answer /health within {self.startup_s} s")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def load_test(base: str, prompts: list[str], max_tokens: int = 16, clients: int = 16,
              temperature: float = 0.0) -> dict[str, float]:
    """Send every prompt once, `clients` at a time; latency percentiles and tokens per second."""

    def one(prompt: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        body = complete(base, prompt=prompt, max_tokens=max_tokens, temperature=temperature)
        return time.perf_counter() - t0, body["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, prompts))
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    q = statistics.quantiles(lat, n=20, method="inclusive")  # q[9] = p50, q[18] = p95
    return {"requests": len(results), "clients": clients, "p50_s": q[9], "p95_s": q[18],
            "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}
