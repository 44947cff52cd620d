"""Unit-test fixtures. Every test runs with outbound network blocked: only loopback and
Unix sockets may connect (nbval's kernels and gloo's rendezvous use loopback)."""
from __future__ import annotations

import ipaddress
import os
import socket

import pytest


# transformers is only a parity reference built from configs: it must never look for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class NetworkBlocked(RuntimeError):
    """A test tried to reach the network; tests must use the mirror in COMPANION_DATA_DIR."""


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """Session-scoped, so that module- and session-scoped fixtures are guarded too."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def guarded_connect(self, address):
        if not _is_local(address):
            raise NetworkBlocked(f"test tried to connect to {address!r}")
        return real_connect(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in (None, "localhost") and not _is_local((host,)):
            raise NetworkBlocked(f"test tried to resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", guarded_connect)
        mp.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run on one thread: on a busy 2-core machine OpenMP's waits cost 15x.

    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
