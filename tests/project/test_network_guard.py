"""The network guard itself: loopback works, anything else fails the test."""

import socket
import threading

import pytest
from conftest import NetworkAccessError


def test_non_loopback_connection_is_refused():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(NetworkAccessError):
            sock.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed, never contacted
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(NetworkAccessError):
            sock.sendto(b"x", ("192.0.2.1", 53))


def test_host_name_lookup_is_refused():
    with pytest.raises(NetworkAccessError):
        socket.getaddrinfo("dns.google", 0)
    assert socket.getaddrinfo("localhost", 80)


def test_loopback_connection_is_allowed():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    accepted = threading.Thread(target=lambda: server.accept()[0].close())
    accepted.start()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.connect(server.getsockname())
    accepted.join(timeout=5)
    server.close()
