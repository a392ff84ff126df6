"""Running python in a child process for tests: the CLI (``-m dcnv3 ...``), a script or ``-c``."""

import os
import subprocess
import sys


def run_python(*args, cwd=None, timeout: float = 900) -> str:
    """``python *args`` offline; returns stdout + stderr, and fails the test on a non-zero exit."""
    result = subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "YOLO_OFFLINE": "true"},
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output
