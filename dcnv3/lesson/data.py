"""Scenes for the lesson model: a few shapes of widely varying size and orientation with their
exact truth (centre, size, angle), and the per-cell training targets of the lesson network.

The dataset generator's pieces (``dcnv3.data``: textured backgrounds, the seven shape classes,
appearance and photometric augmentation) paint the scenes; unlike ``render_scene`` the objects
never overlap and stay inside the image, and each keeps the size and angle it was placed with,
which the lesson's measurements compare the sampling against.

Conventions: images BGR uint8 (side, side, 3); positions in continuous pixel coordinates
(pixel i spans [i, i+1)); ``size`` is a shape's longest canonical extent in pixels (a bar's
length, a disc's diameter) and ``angle`` its rotation in radians, clockwise on screen, as
``dcnv3.data.shapes.place`` uses them: a bar's long axis points along (cos angle, sin angle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcnv3.data.backgrounds import luma, make_background
from dcnv3.data.generator import augment_image, image_rng, paint_object, sample_appearance
from dcnv3.data.shapes import CLASS_NAMES, extent, place, rasterise, sample_geometry

__all__ = [
    "LESSON_SIDE",
    "LESSON_STRIDE",
    "MIN_SIZE_PX",
    "MAX_SIZE_PX",
    "LessonObject",
    "LessonScene",
    "lesson_scene",
    "lesson_batch",
    "cell_of",
    "targets",
    "BAR",
]

LESSON_SIDE = 256  # scene side in pixels: room for a 150 px shape anywhere near the middle
LESSON_STRIDE = 4  # the lesson network's one output stride: a 64 x 64 grid of cells
MIN_SIZE_PX = 8.0  # smallest and largest shape size, log-uniform in between (ratio ~19)
MAX_SIZE_PX = 150.0
MAX_OBJECTS = 3
BAR = CLASS_NAMES.index("bar")  # the one clearly elongated class: its axis is a target and a measurement
_PLACEMENT_TRIES = 12


@dataclass(frozen=True)
class LessonObject:
    """One painted shape: class index into ``CLASS_NAMES``, centre (x, y) px, size px, angle rad,
    and its tight axis-aligned box (x1, y1, x2, y2) px of the placed polygons."""

    class_id: int
    x: float
    y: float
    size: float
    angle: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class LessonScene:
    image: np.ndarray  # (side, side, 3) BGR uint8
    objects: tuple[LessonObject, ...]


def _sample_size(rng: np.random.Generator) -> float:
    return float(np.exp(rng.uniform(np.log(MIN_SIZE_PX), np.log(MAX_SIZE_PX))))


def lesson_scene(rng: np.random.Generator, side: int = LESSON_SIDE, objects: int | None = None) -> LessonScene:
    """One scene of 1-3 (``objects``: exactly that many, if there is room) non-overlapping shapes.

    The first shape's size is drawn first and the others fit around it; a shape that finds no
    free spot in ``_PLACEMENT_TRIES`` draws is left out, so a scene has at least one shape.
    """
    canvas = make_background(rng, side, side).astype(np.float32)
    count = int(rng.integers(1, MAX_OBJECTS + 1)) if objects is None else int(objects)
    placed_boxes: list[tuple] = []
    painted = []
    for _ in range(count):
        class_id = int(rng.integers(len(CLASS_NAMES)))
        size = min(_sample_size(rng), 0.9 * side)
        geometry = sample_geometry(rng, class_id, size)
        angle = float(rng.uniform(0.0, 2.0 * np.pi))
        x0, y0, x1, y1 = extent(place(geometry, 0.0, 0.0, size, angle))
        for _ in range(_PLACEMENT_TRIES):
            cx = float(rng.uniform(-x0 + 1.0, side - x1 - 1.0))
            cy = float(rng.uniform(-y0 + 1.0, side - y1 - 1.0))
            box = (cx + x0, cy + y0, cx + x1, cy + y1)
            margin = 4.0  # px of background kept between shapes, so no shape touches another
            if all(
                box[2] + margin < b[0] or b[2] + margin < box[0] or box[3] + margin < b[1] or b[3] + margin < box[1]
                for b in placed_boxes
            ):
                break
        else:
            continue
        patch = rasterise(place(geometry, cx, cy, size, angle))
        window = canvas[max(int(box[1]), 0) : int(np.ceil(box[3])), max(int(box[0]), 0) : int(np.ceil(box[2]))]
        appearance = sample_appearance(rng, float(luma(window).mean()), size, outline_p=0.2)
        paint_object(rng, canvas, patch, appearance, (cx, cy), size)
        placed_boxes.append(box)
        painted.append(LessonObject(class_id, cx, cy, size, angle, tuple(float(v) for v in box)))
    image = augment_image(rng, canvas)
    return LessonScene(image, tuple(painted))


def lesson_batch(seed: int, split: str, start: int, count: int, side: int = LESSON_SIDE) -> list[LessonScene]:
    """Scenes ``start .. start + count - 1`` of ``split``: each a pure function of (seed, split,
    index) through ``dcnv3.data.image_rng``, so a held-out set is another seed or split."""
    return [lesson_scene(image_rng(seed, split, index), side) for index in range(start, start + count)]


def cell_of(x: float, y: float, stride: int = LESSON_STRIDE) -> tuple[int, int]:
    """(row, col) of the output cell whose centre is nearest image point (x, y): cell (r, c) is
    centred on pixel ((c + 0.5) * stride, (r + 0.5) * stride) - the probe's convention."""
    return int(np.floor(y / stride)), int(np.floor(x / stride))


def targets(scene: LessonScene, stride: int = LESSON_STRIDE) -> dict[str, np.ndarray]:
    """Per-cell training targets on the (side / stride)^2 grid.

    * ``heat`` (H, W) float32: CenterNet's objectness, a Gaussian peak of 1 at each shape's
      centre cell, sigma growing with the shape (at least 0.7 cells);
    * ``positive`` (H, W) bool: the cells whose class and extent are trained (heat >= 0.6,
      the centre cell always);
    * ``class_id`` (H, W) int64 (-1 elsewhere) and ``extent`` (H, W, 3) float32: log of the
      shape's size and of its box width and height, in pixels;
    * ``axis`` (H, W, 2) float32 and ``axis_mask`` (H, W) bool: a bar's long axis as
      (cos 2 angle, sin 2 angle) (an axis has no sign) at its positive cells.
    """
    side = scene.image.shape[0]
    grid = side // stride
    heat = np.zeros((grid, grid), np.float32)
    positive = np.zeros((grid, grid), bool)
    class_id = np.full((grid, grid), -1, np.int64)
    extent_log = np.zeros((grid, grid, 3), np.float32)
    axis = np.zeros((grid, grid, 2), np.float32)
    axis_mask = np.zeros((grid, grid), bool)
    rows, cols = np.mgrid[0:grid, 0:grid].astype(np.float32)
    for obj in scene.objects:
        row, col = cell_of(obj.x, obj.y, stride)
        u, v = obj.x / stride - 0.5, obj.y / stride - 0.5  # centre in cell-index units
        sigma = max(0.7, obj.size / stride / 8.0)
        peak = np.exp(-((cols - u) ** 2 + (rows - v) ** 2) / (2 * sigma**2))
        peak[row, col] = 1.0
        np.maximum(heat, peak, out=heat)
        mine = peak >= 0.6
        mine[row, col] = True
        positive |= mine
        class_id[mine] = obj.class_id
        x1, y1, x2, y2 = obj.box
        extent_log[mine] = np.log([obj.size, max(x2 - x1, 1.0), max(y2 - y1, 1.0)])
        if obj.class_id == BAR:
            axis[mine] = (np.cos(2 * obj.angle), np.sin(2 * obj.angle))
            axis_mask |= mine
    return {
        "heat": heat,
        "positive": positive,
        "class_id": class_id,
        "extent": extent_log,
        "axis": axis,
        "axis_mask": axis_mask,
    }
