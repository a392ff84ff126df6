"""The Learn tab's live toy (pure: numpy and dcnv3 in, a BGR picture out; no gradio).

A 320 x 320 scene from the dataset generator's own pieces (``dcnv3.data``: a textured background
and one shape of the seven classes, painted as in training data) in which the user scales,
rotates and moves the shape; the bundled DCNv3 model runs once per move at its training size
(``imgsz`` 320, one forward of about 30 ms on a laptop CPU) and the picture shows where the chosen
layer's groups sample around the shape's centre, with the detections.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from dcnv3.analysis.probe import probe as run_probe
from dcnv3.data import CLASS_NAMES
from dcnv3.data.backgrounds import luma, make_background
from dcnv3.data.generator import Appearance, contrasting_colour, paint_object
from dcnv3.data.shapes import place, rasterise, sample_geometry
from viz_app.state.cache import LRUCache
from viz_app.views.render import sampling_overlay

__all__ = [
    "TOY_SIDE",
    "ToyShape",
    "ToyScenes",
    "toy_scene",
    "toy_view",
    "ToyView",
    "background",
    "DEFAULT_LAYER_PREFIX",
]

TOY_SIDE = 320  # the bundled models' training size: the scene is shown to the model unscaled
DISPLAY_FACTOR = 2  # the picture is drawn at 2x so the 3x3 grids stay legible
DEFAULT_LAYER_PREFIX = "model.6."  # P4: the level where mid-sized shapes are detected


@dataclass(frozen=True)
class ToyShape:
    """The toy's one object: class, size (longest extent, px), rotation (degrees, clockwise on
    screen) and centre (x, y) in continuous image px of the 320 x 320 scene."""

    class_id: int = 3
    size: float = 120.0
    angle: float = 0.0
    x: float = 160.0
    y: float = 160.0


class ToyScenes:
    """The scenes' pieces that do not move with the sliders, each drawn once and kept: the
    backgrounds by seed and each shape's canonical geometry and fill colour by (class, seed). Both
    are pure functions of small integers. The app keeps one (``AppContext.toy_scenes``) and hands it
    to ``toy_view`` and ``viz_app.views.lesson_view``; a call given none draws its pieces afresh.
    Thread-safe (``LRUCache``); the arrays it returns are read-only."""

    def __init__(self, backgrounds: int = 8, shapes: int = 32):
        self._backgrounds: LRUCache[int, np.ndarray] = LRUCache(backgrounds)
        self._shapes: LRUCache[tuple[int, int], tuple] = LRUCache(shapes)

    def background(self, seed: int) -> np.ndarray:
        """(320, 320, 3) BGR uint8: a calm training-style background (read-only)."""

        def draw():
            array = make_background(np.random.default_rng(seed), TOY_SIDE, TOY_SIDE)
            array.setflags(write=False)
            return array

        return self._backgrounds.get_or_compute(seed, draw)

    def geometry_and_colour(self, class_id: int, seed: int):
        """The shape's canonical geometry and a fill colour that stands out from the background.
        Drawn once per (class, seed), so scaling or rotating changes nothing else."""

        def draw():
            rng = np.random.default_rng([seed, class_id])
            geometry = sample_geometry(rng, class_id, 24.0)  # thin parts stay >= 2 px down to 24 px
            colour = contrasting_colour(rng, float(luma(self.background(seed)).mean()), min_contrast=90.0)
            return geometry, colour

        return self._shapes.get_or_compute((class_id, seed), draw)

    def scene(self, shape: ToyShape, seed: int = 0) -> np.ndarray:
        """(320, 320, 3) BGR uint8: the background of ``seed`` with the shape painted on it."""
        if not 0 <= shape.class_id < len(CLASS_NAMES):
            raise ValueError(f"class_id must lie in [0, {len(CLASS_NAMES)}), got {shape.class_id}")
        canvas = self.background(seed).astype(np.float32)
        geometry, colour = self.geometry_and_colour(shape.class_id, seed)
        patch = rasterise(place(geometry, shape.x, shape.y, shape.size, math.radians(shape.angle)))
        appearance = Appearance(colour, np.zeros(2, np.float32), 0.0, None, 0)  # flat fill: no randomness
        paint_object(np.random.default_rng(0), canvas, patch, appearance, (shape.x, shape.y), shape.size)
        return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def background(seed: int, scenes: ToyScenes | None = None) -> np.ndarray:
    """(320, 320, 3) BGR uint8: a calm training-style background (read-only; kept in ``scenes``)."""
    return (scenes or ToyScenes()).background(seed)


def toy_scene(shape: ToyShape, seed: int = 0, scenes: ToyScenes | None = None) -> np.ndarray:
    """(320, 320, 3) BGR uint8: the background of ``seed`` with the shape painted on it (its pieces
    kept in ``scenes``)."""
    return (scenes or ToyScenes()).scene(shape, seed)


@dataclass
class ToyView:
    picture: np.ndarray  # (640, 640, 3) BGR
    message: str
    seconds: float  # scene + model + drawing
    cell: tuple[int, int] | None


def toy_view(
    model, layer: str, shape: ToyShape, seed: int = 0, groups=None, scenes: ToyScenes | None = None
) -> ToyView:
    """Render the scene, run ``model`` once (imgsz 320) and draw ``layer``'s sampling points at the
    cell under the shape's centre, the regular grid and the detections.

    Args:
        model: ultralytics YOLO with DCNv3 layers (the bundled ``dcnv3-yolov8n.pt``).
        layer: one of ``model.deformable_layers``.
        shape: the ``ToyShape``; seed: the background.
        scenes: where the scene's pieces are kept (the app's ``AppContext.toy_scenes``).
    """
    start = time.perf_counter()
    image = toy_scene(shape, seed, scenes)
    probe = run_probe(model, image, imgsz=TOY_SIDE, conf=0.25, iou=0.7)
    record = probe.layer(layer)
    x = float(np.clip(shape.x, 0, TOY_SIDE - 1e-3))
    y = float(np.clip(shape.y, 0, TOY_SIDE - 1e-3))
    cell = probe.cell_at(record, x, y)
    # The Image tab's picture: detections, the cell's samples, the grid, the centre (2x enlarged)
    canvas, _ = sampling_overlay(image, probe, record, cell, groups, scale=float(DISPLAY_FACTOR))
    if cell is None:
        return ToyView(canvas, "the shape's centre is off the image", time.perf_counter() - start, None)
    spread = _spread(probe, record, cell)
    found = ", ".join(probe.detections.label(i) for i in np.argsort(-probe.detections.scores)[:3]) or "nothing"
    message = (
        f"**{record.stage}**, {record.name}, cell (row {cell[0]}, col {cell[1]}): the samples spread "
        f"{spread:.1f} px from the cell centre on average (the regular grid: "
        f"{_spread(probe, record, cell, regular=True):.1f} px). Detected: {found}."
    )
    return ToyView(canvas, message, time.perf_counter() - start, cell)


def _spread(probe, record, cell, regular: bool = False) -> float:
    """Weighted mean distance (image px) of the samples from the cell centre."""
    points = (probe.regular_locations if regular else probe.sampling_locations)(record, cell)  # (G, P, 2)
    distance = np.linalg.norm(points - probe.cell_centre(record, cell), axis=-1)
    weights = record.weights[cell]
    return float((distance * weights).sum() / weights.sum())
