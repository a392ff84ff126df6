"""The offline guarantee, enforced by the kernel rather than by a Python guard: part of the test suite
and a scripted app session run inside a network namespace that has only a loopback interface
(``unshare -n``, as root or through a user namespace with ``-r``). Any attempt to reach the network
there fails with "network unreachable" whatever library makes it.

Where no namespace can be made (no ``unshare``, no privileges, a seccomp profile that forbids it),
the tests skip and say why.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from serving import EXAMPLES, OFFLINE_ENV, ROOT

pytestmark = pytest.mark.server

# Brings the namespace's loopback up (it starts down) with the SIOCSIFFLAGS ioctl, so neither
# iproute2 nor any other tool is needed, then runs the given command in its place.
LOOPBACK_UP = textwrap.dedent("""
    import fcntl, os, socket, struct, sys
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, request))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))  # SIOCSIFFLAGS, IFF_UP
    os.execvp(sys.argv[1], sys.argv[1:])
""")

# Inside the namespace: the loopback works and nothing else is routed.
CHECK = textwrap.dedent("""
    import socket
    server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
    socket.create_connection(server.getsockname(), timeout=5).close()
    try:
        socket.create_connection(("192.0.2.1", 80), timeout=5)  # TEST-NET-1
    except OSError as error:
        print("unreachable:", error)
    else:
        raise SystemExit("the namespace reaches the network")
""")


def _namespace_prefix() -> list[str] | None:
    """The command prefix that runs a command in a fresh network namespace with loopback up, or
    None (with the reason in ``_namespace_prefix.reason``)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        _namespace_prefix.reason = "no unshare(1) on this machine"
        return None
    reasons = []
    for flags in (["-n"], ["-r", "-n"]):  # root; else an unprivileged user namespace
        prefix = [unshare, *flags, sys.executable, "-c", LOOPBACK_UP]
        result = subprocess.run([*prefix, sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
        if result.returncode == 0 and "unreachable" in result.stdout:
            return prefix
        reasons.append(f"unshare {' '.join(flags)}: {(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    _namespace_prefix.reason = "cannot create a network namespace (" + "; ".join(reasons) + ")"
    return None


@pytest.fixture(scope="module")
def offline():
    prefix = _namespace_prefix()
    if prefix is None:
        pytest.skip(_namespace_prefix.reason)
    return prefix


def test_test_suite_passes_without_a_network(offline):
    """The app API, checkpoint and fuzzed-checkpoint tests, inside the namespace."""
    env = {**os.environ, **OFFLINE_ENV}
    command = [
        *offline,
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/api/test_app_api.py",
        "tests/yolo/test_checkpoints.py",
        "tests/robustness/test_fuzz_checkpoints.py",
        "-k",
        "not fork_a_matches and not other_fork_layouts",
    ]  # fresh-interpreter fork builds: slow, covered outside
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail


SESSION = textwrap.dedent("""
    import subprocess, sys, time, socket
    from gradio_client import Client, handle_file
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    app = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        for line in app.stdout:
            print(line, end="")
            if "is running at" in line:
                break
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        _, payload = client.predict(handle_file(__IMAGE__), "", 0.25, 0.7, api_name="/detect")
        layer = payload["deformable_layers"][0]["name"]
        _, points = client.predict(handle_file(__IMAGE__), "", layer, 100.5, 100.5, api_name="/sampling")
        print("session:", payload["model"], len(payload["detections"]), "detections,", len(points["points"]), "points")
    finally:
        app.terminate()
        app.wait(timeout=60)
""")


def test_app_session_works_without_a_network(offline):
    env = {**os.environ, **OFFLINE_ENV}
    code = SESSION.replace("__IMAGE__", repr(str(EXAMPLES / "shapes_0.jpg")))
    result = subprocess.run(
        [*offline, sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "session: dcnv3-yolov8n.pt" in output and " points" in output, output[-3000:]


def test_without_unshare_the_reason_is_given(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert _namespace_prefix() is None
    assert _namespace_prefix.reason == "no unshare(1) on this machine"
