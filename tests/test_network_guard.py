"""The autouse guard in conftest.py really blocks outbound connections."""
import socket
import urllib.request

import pytest



def test_outbound_connection_is_blocked():
    sock = socket.socket()
    with pytest.raises(RuntimeError, match="tried to connect") as info:
        sock.connect(("93.184.216.34", 80))
    sock.close()
    assert type(info.value).__name__ == "NetworkBlocked"


def test_dns_lookup_is_blocked():
    with pytest.raises(RuntimeError, match="tried to resolve"):
        socket.getaddrinfo("example.com", 443)


def test_urlopen_is_blocked():
    with pytest.raises(Exception) as info:
        urllib.request.urlopen("https://example.com", timeout=1)
    assert "NetworkBlocked" in repr(info.value) or "tried to" in str(info.value)


def test_loopback_is_allowed():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=1)
    client.close()
    server.close()
