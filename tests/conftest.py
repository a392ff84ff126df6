"""Test-wide guards: nothing may reach the network, and ultralytics/gradio stay offline."""
import ipaddress
import os
import socket

import pytest

os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: resolving it would itself touch the network
        return False


def _is_ip(host) -> bool:
    try:
        ipaddress.ip_address(host if isinstance(host, str) else host.decode())
        return True
    except ValueError:
        return False


class NetworkAccessError(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that opens a connection (or sends a datagram) to a non-loopback address."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto = socket.socket.sendto

    def guarded(real):
        def call(self, address, *args):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
                raise NetworkAccessError(f"test tried to reach the network: {address!r}")
            return real(self, address, *args)
        return call

    def guarded_sendto(self, data, *args):
        address = args[-1]
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise NetworkAccessError(f"test tried to send to the network: {address!r}")
        return real_sendto(self, data, *args)

    real_getaddrinfo = socket.getaddrinfo

    def guarded_getaddrinfo(host, *args, **kwargs):
        # A DNS look-up of a real host name is network traffic too (ultralytics' is_online()).
        if host not in (None, "localhost") and not _is_loopback((host,)) and not _is_ip(host):
            raise NetworkAccessError(f"test tried to resolve a host name: {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
    monkeypatch.setattr(socket.socket, "sendto", guarded_sendto)
    yield


# Lines that tests want in the CI log (e.g. parameter counts), printed in the terminal summary.
REPORT: list[str] = []


@pytest.fixture
def report():
    return REPORT.append


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("DeformLens measurements")
        for line in REPORT:
            terminalreporter.write_line(line)
