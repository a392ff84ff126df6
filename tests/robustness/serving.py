"""Shared pieces of the robustness suite (imported by its test modules): a free loopback port and
``python app.py`` in a subprocess.

The suite's servers run as separate processes where it matters what the *server* does (its memory,
its sockets, its files); in-process servers (``viz_app.ui.build_app``) elsewhere, as in
tests/test_app_api.py. The network guard of tests/conftest.py applies here too.
"""
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORK_A = ROOT / "tests" / "data" / "fork_fixture" / "fork_A.pt"
EXAMPLES = ROOT / "assets" / "examples"
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "true",
               "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def app_process(*args: str, cwd: Path, env: dict | None = None, prefix: list[str] | None = None,
                timeout: float = 180):
    """``python app.py --port P *args`` (optionally behind ``prefix``, e.g. a namespace launcher);
    yields (process, url, printed lines) once it prints its URL, and stops it afterwards."""
    port = free_port()
    command = [*(prefix or []), sys.executable, str(ROOT / "app.py"), "--port", str(port), *args]
    process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **OFFLINE_ENV, **(env or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "is running at" in line:
                break
        if not any("is running at" in line for line in lines):
            raise RuntimeError("app.py did not start:\n" + "".join(lines[-40:]))
        # Keep reading what the server prints (a full pipe would block it); tests may inspect it.
        threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
        yield process, f"http://127.0.0.1:{port}/", lines
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
