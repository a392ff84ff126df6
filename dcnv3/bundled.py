"""Where the files bundled with DeformLens are: the checkpoints and their cards, the lesson
network, the example images, the demo video and the training demo.

One rule, used by every module that opens one of them. In an installed wheel they sit in the
package (``dcnv3/assets/``, put there by ``setup.py``); in a checkout (editable install, or run from
the repository) they are the repository's top-level ``assets/`` folder. Both hold the same tree::

    models/            dcnv3-yolov8n.pt, yolov8n.pt, MODEL_CARD.md, lesson/ (lesson-dcnv3.pt, ...)
    examples/          *.jpg
    demo_shapes.mp4
    training_demo/     run/ (health.csv, weights/epoch*.pt), scene.jpg
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["assets_root", "bundled_path", "resolve_bundled_model"]


def assets_root() -> Path:
    """The folder holding the bundled files (the installed package's copy, else the checkout's)."""
    package = Path(str(files("dcnv3")))
    installed = package / "assets"
    if installed.is_dir():
        return installed
    # A checkout: dcnv3/ and assets/ are siblings at the repository's top level.
    return package.parent / "assets"


def bundled_path(*parts: str) -> Path:
    """The path of a bundled file or folder, e.g. ``bundled_path("models", "dcnv3-yolov8n.pt")``.
    It may not exist (a checkout without the training demo, say): callers check."""
    return assets_root().joinpath(*parts)


def resolve_bundled_model(name: str | Path) -> Path:
    """``name`` as a path when it names an existing file; otherwise, when it is a bare file name
    of a bundled checkpoint (``"dcnv3-yolov8n.pt"``, as the app's model list names them), that
    checkpoint; otherwise ``name`` unchanged (so the caller reports the missing file)."""
    path = Path(name)
    if path.exists() or path.name != str(name):
        return path
    candidate = bundled_path("models", path.name)
    return candidate if candidate.is_file() else path
