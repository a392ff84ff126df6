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


def cli(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    """``python -m dcnv3 *args`` offline; fails the test on a non-zero exit unless ``check=False``."""
    result = subprocess.run(
        [sys.executable, "-m", "dcnv3", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "YOLO_OFFLINE": "true"},
        timeout=900,
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result
