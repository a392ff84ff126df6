"""Deterministic procedural detection data: seven shape classes of strongly different geometry on
textured backgrounds, for training and comparing DCNv3-YOLOv8 against a plain YOLOv8 twin.

* :func:`render_scene` - one random image with its boxes (and optionally masks).
* :func:`write_dataset` - an ultralytics-layout dataset with ``data.yaml`` and ``recipe.json``.
* :func:`video_frames` - a short deterministic demo sequence of moving shapes.
"""

from dcnv3.data.generator import GENERATOR_VERSION, image_rng, render_scene, video_frames, write_dataset
from dcnv3.data.shapes import CLASS_NAMES

__all__ = ["CLASS_NAMES", "GENERATOR_VERSION", "image_rng", "render_scene", "video_frames", "write_dataset"]
