"""How long the server keeps what users sent and what it made for them.

The app writes uploads (gradio's cache) and rendered views, exports and videos (its work folder)
for every request. ``python app.py --keep-files-minutes N`` bounds how long they stay: gradio's own
``delete_cache`` drops the files it tracks, and a ``Sweeper`` thread removes anything older than
the age from the folders this process owns, so a long-running server neither fills its disk nor
keeps one user's images around for the next.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

__all__ = ["sweep", "Sweeper", "delete_cache_setting"]


def delete_cache_setting(keep_minutes: float) -> tuple[int, int]:
    """gradio's ``Blocks.delete_cache`` (every ``frequency`` s, delete files older than ``age`` s)
    for a retention of ``keep_minutes``: checked ten times per retention period (at most every
    hour), so a file outlives its age by at most a tenth of it."""
    age = max(1, round(keep_minutes * 60))
    return max(1, min(3600, age // 10)), age


def sweep(folder: str | Path, max_age_s: float, now: float | None = None) -> int:
    """Delete files under ``folder`` last modified more than ``max_age_s`` ago, then the folders
    left empty (never ``folder`` itself). Returns how many files were removed. Files that vanish
    or are busy meanwhile are skipped: a sweep must never take the server down."""
    folder = Path(folder)
    now = time.time() if now is None else now
    removed = 0
    if not folder.is_dir():
        return 0
    for root, dirs, files in os.walk(folder, topdown=False, followlinks=False):
        for name in files:
            path = Path(root) / name
            try:
                if now - path.lstat().st_mtime > max_age_s:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        for name in dirs:
            try:
                (Path(root) / name).rmdir()  # only succeeds when empty
            except OSError:
                continue
    return removed


class Sweeper(threading.Thread):
    """A daemon thread that sweeps ``folders`` every ``every_s`` seconds."""

    def __init__(self, folders: list[str | Path], max_age_s: float, every_s: float):
        super().__init__(name="deformlens-sweeper", daemon=True)
        self.folders, self.max_age_s, self.every_s = [Path(f) for f in folders], max_age_s, every_s
        self.removed = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.every_s):
            for folder in self.folders:
                self.removed += sweep(folder, self.max_age_s)

    def stop(self) -> None:
        self._stopping.set()
