"""The app under test, served on a free loopback port: in this process (``served_app``: the
event handlers' state is inspectable) or as ``python app.py`` in a subprocess (``app_process``:
what the *server* does, its sockets, files and output). Every test module that needs a server
uses these; the network guard of tests/conftest.py applies to both."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from repo_paths import ROOT

OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "YOLO_OFFLINE": "true",
    "PYTHONUNBUFFERED": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served_app(registry, analyser=None):
    """``build_app`` of an ``AppContext`` launched in this process on 127.0.0.1; yields its URL.

    ``registry``: a ``ModelRegistry`` (the context is made around it and ``analyser``), or an
    ``AppContext`` whose caches the test then inspects."""
    from viz_app.state.context import AppContext
    from viz_app.ui import CSS, THEME, build_app

    context = registry if isinstance(registry, AppContext) else AppContext.create(registry, analyser)
    demo = build_app(context)
    demo.queue()
    port = free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        theme=THEME,
        css=CSS,
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextlib.contextmanager
def app_process(
    *args: str,
    cwd: Path,
    env: dict | None = None,
    prefix: list[str] | None = None,
    timeout: float = 180,
    command: list[str] | None = None,
):
    """``python app.py --port P *args`` (optionally behind ``prefix``, e.g. a namespace launcher;
    ``command`` in place of ``python app.py``, e.g. an installed ``deformlens-app``); yields
    (process, url, printed lines) once it prints its URL, and stops it afterwards."""
    port = free_port()
    server = command or [sys.executable, str(ROOT / "app.py")]
    command = [*(prefix or []), *server, "--port", str(port), *args]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, **OFFLINE_ENV, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
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
