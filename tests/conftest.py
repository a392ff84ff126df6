"""Test-wide set-up: nothing may reach the network, ultralytics and gradio stay offline, the
markers (browser, server, training, slow) by folder, the shared model fixtures, and the
"DeformLens measurements" summary (figures tests report, and the suite's wall time).

``python -m pytest`` runs everything (the README's and CI's command);
``python -m pytest -m "not slow"`` is the quick run for a newcomer.
"""

import ipaddress
import os
import socket
import time
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dcnv3 import yolo

# The test process runs like the app and the CLI: offline ultralytics, local plot fonts, every
# core, the DCNv3 blocks and YAMLs registered. Tests of import side effects and of unregistering
# run in child processes.
yolo.prepare_runtime()
yolo.register()

from repo_paths import BUNDLED_DCNV3, BUNDLED_PLAIN  # noqa: E402

# Markers by folder: where a test file lives decides what it is. The folders mirror the package
# (ops/, record/, yolo/, analysis/, video/, lesson/, training/, cli/, app/, ...); those below are
# slow as a whole. A slow file in another folder says so itself (``pytestmark = pytest.mark.slow``).
FOLDER_MARKERS = {
    "browser": ("browser", "slow"),  # headless Chromium
    "api": ("server", "slow"),  # the app's HTTP API through gradio_client
    "training": ("training", "slow"),  # ultralytics' trainer
    "robustness": ("slow",),  # fuzzed inputs, eight sessions at once, the offline namespace
    "video": ("slow",),  # many forwards per video
    "lesson": ("slow",),  # the lesson network's checks run many forwards
}
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    for item in items:
        folder = item.path.resolve().relative_to(TESTS).parts[0]
        for marker in FOLDER_MARKERS.get(folder, ()):
            item.add_marker(getattr(pytest.mark, marker))
        if any(item.get_closest_marker(name) for name in ("browser", "server", "training")):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_shapes_data(tmp_path_factory):
    """data.yaml of a 16 + 8 image shapes dataset at 64 px (``python -m dcnv3 data``), made once
    per session for the training tests."""
    from child_process import run_python

    root = tmp_path_factory.mktemp("shapes")
    run_python("-m", "dcnv3", "data", "--out", root, "--n-train", "16", "--n-val", "8", "--seed", "7", "--imgsz", "64")
    return root / "data.yaml"


@pytest.fixture(scope="session")
def bundled_dcnv3():
    """The bundled DCNv3-YOLOv8n (``assets/models/dcnv3-yolov8n.pt``), loaded once per session.
    Tests must not change it; copy it (``copy.deepcopy``) to modify."""
    from dcnv3.yolo.loading import load_model

    return load_model(BUNDLED_DCNV3)


@pytest.fixture(scope="session")
def bundled_plain():
    """The bundled plain YOLOv8n twin, loaded once per session (read-only, as above)."""
    from dcnv3.yolo.loading import load_model

    return load_model(BUNDLED_PLAIN)


@pytest.fixture(scope="session")
def untrained_dcnv3():
    """A DCNv3-YOLOv8n built from its YAML with seed 0: zero offsets, uniform weights."""
    import torch
    from ultralytics import YOLO

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = YOLO("dcnv3-yolov8n.yaml")
    model.model.eval()
    return model


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


# Lines that tests want in the CI log (e.g. parameter counts), printed in the terminal summary.
REPORT: list[str] = []


@pytest.fixture
def report():
    return REPORT.append


_SESSION_START = time.monotonic()


def pytest_sessionstart(session):
    global _SESSION_START
    _SESSION_START = time.monotonic()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.section("DeformLens measurements")
    for line in REPORT:
        terminalreporter.write_line(line)
    wall = time.monotonic() - _SESSION_START
    terminalreporter.write_line(f"suite wall time: {wall:.0f} s ({wall / 60:.1f} min) on {os.cpu_count()} cores")
