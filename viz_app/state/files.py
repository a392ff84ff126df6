"""Where the app writes what it makes for users: ``FileStore``, one folder per app.

Rendered views (JPEG), inspected video frames (PNG), exports and video runs go under one
temporary folder, ``deformlens_*`` in the system's temp dir, removed when the process exits;
gradio serves its own cached copies of each file, so the store may prune its files early.
``app.py`` hands ``FileStore.root`` to the retention sweeper (``viz_app.state.retention``), which
removes anything older than ``--keep-files-minutes``; the sweeper may also remove the (then
empty) subfolders, so each is made again when next needed.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

__all__ = ["FileStore", "KEEP_VIEWS", "KEEP_RUNS", "jpeg_bytes", "store_once", "write_atomically"]

KEEP_VIEWS = 300  # picture files kept in the views folder (gradio copies each into its cache at once)
KEEP_RUNS = 4  # video runs kept (each holds an MP4 and a CSV)


def jpeg_bytes(image: np.ndarray, quality: int = 92, full_colour: bool = True) -> bytes:
    """A BGR picture (H, W, 3) uint8 as JPEG bytes: the app's views are encoded here.

    Quality 92 without chroma subsampling (``full_colour``) keeps thin coloured lines crisp and
    takes a few ms for 1 MP where a PNG takes ~55 ms even at zlib level 1; ``full_colour=False``
    (4:2:0) is for backgrounds where no mark is drawn (the zoom's crop).
    """
    options = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if full_colour:
        options += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    _, data = cv2.imencode(".jpg", image, options)
    return data.tobytes()


class FileStore:
    """A fresh folder under the temp dir (``root``), removed at exit. Thread-safe."""

    def __init__(self, keep_views: int = KEEP_VIEWS, keep_runs: int = KEEP_RUNS):
        self.root = Path(tempfile.mkdtemp(prefix="deformlens_"))
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)
        self.keep_views, self.keep_runs = keep_views, keep_runs
        self._runs_lock = threading.Lock()

    def _folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def picture(self, image: np.ndarray | None) -> str | None:
        """A BGR canvas (H, W, 3) uint8 as a JPEG file (``jpeg_bytes``) for a gr.Image; returns
        its path. The file is named by its content, so an unchanged view is stored once; beyond
        ``keep_views`` files the oldest go.
        """
        if image is None:
            return None
        data = jpeg_bytes(image)
        views = self._folder("views")
        path = views / f"{hashlib.blake2b(data, digest_size=12).hexdigest()}.jpg"
        store_once(path, data)
        files = sorted(views.glob("*.jpg"), key=_mtime)
        for old in files[: -self.keep_views]:
            old.unlink(missing_ok=True)
        return str(path)

    def frame(self, name: str, image: np.ndarray) -> str:
        """A BGR frame (H, W, 3) uint8 as a lossless PNG named ``name``.png; returns its path."""
        path = self._folder("views") / f"{name}.png"
        _, data = cv2.imencode(".png", image)
        write_atomically(path, data.tobytes())
        return str(path)

    def export_dir(self) -> Path:
        """A fresh folder for one export's files."""
        return Path(tempfile.mkdtemp(prefix="export_", dir=self._folder("exports")))

    def run_dir(self) -> Path:
        """A fresh folder for one video run; the oldest runs beyond ``keep_runs`` go."""
        root = self._folder("video")
        with self._runs_lock:
            runs = sorted((p for p in root.iterdir() if p.is_dir()), key=_mtime)
            for old in runs[: max(0, len(runs) - self.keep_runs + 1)]:
                shutil.rmtree(old, ignore_errors=True)
            return Path(tempfile.mkdtemp(prefix="run_", dir=root))


def _mtime(path: Path) -> float:
    """Modification time, or 0 for a file another thread (or the sweeper) removed meanwhile."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def store_once(path: Path, data: bytes) -> None:
    """A content-addressed file (``path`` named by ``data``'s hash): written atomically the first
    time; when it is already there it is never rewritten (a reader may be serving it), only its
    time refreshed, so age-based cleanups (``keep_views``, gradio's ``delete_cache``, the
    sweeper) count from its latest use. A file removed meanwhile is written again."""
    try:
        os.utime(path)
    except FileNotFoundError:
        write_atomically(path, data)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so that a reader (gradio
    copying or serving the file for another request) never sees it truncated or half written."""
    temporary = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
