"""The Learn tab's lesson-model views (pure: numpy, dcnv3 and plotly in, pictures and figures out;
no gradio).

* ``lesson_view``: the toy scene (``viz_app.views.toy.toy_scene``: one shape on a training-style
  background, 320 x 320) seen by the lesson network (``dcnv3.lesson.network``), with its deepest DCNv3
  layer's samples at the shape's centre cell drawn as the Image tab draws them, and the numbers
  (effective dilation, mean |offset|, principal axis) at that cell.
* ``dilation_sweep``: the same shape at every size of ``SWEEP_SIZES`` in one batched forward:
  the curve of the Learn tab's live plot (``sweep_figure``), kept per shape pose in the cache the
  caller owns (the app's ``AppContext.sweeps``, ``sweep_cache()``).
* ``watch_picture`` / ``watch_figure``: one "watch it learn" snapshot drawn on its probe scene,
  and the loss and mean |offset| over the snapshots so far.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import cv2
import numpy as np
import plotly.graph_objects as go

from dcnv3.analysis.probe import Detections, Probe
from dcnv3.data import CLASS_NAMES
from dcnv3.lesson.measure import principal_axis
from dcnv3.lesson.network import lesson_letterbox, lesson_records, one_cell
from dcnv3.record.stats import effective_dilation, offset_magnitude
from viz_app.state.cache import LRUCache
from viz_app.views.render import draw_cell, make_canvas
from viz_app.views.toy import TOY_SIDE, ToyScenes, ToyShape, toy_scene

__all__ = [
    "LessonView",
    "lesson_view",
    "dilation_sweep",
    "sweep_figure",
    "watch_picture",
    "watch_figure",
    "SWEEP_SIZES",
    "LESSON_MIN_SCALE",
    "LESSON_MAX_SCALE",
    "DISPLAY_FACTOR",
    "SWEEP_CACHE_SIZE",
    "sweep_cache",
]

LESSON_MIN_SCALE, LESSON_MAX_SCALE = 12, 150  # the sizes the lesson network was trained on (8-150 px),
# from 12 px up: below it the toy's thin strokes (bars, rings) fall under a pixel.
SWEEP_SIZES = tuple(int(s) for s in np.round(np.geomspace(LESSON_MIN_SCALE, LESSON_MAX_SCALE, 12)))
DISPLAY_FACTOR = 2

SWEEP_CACHE_SIZE = 32  # shape poses whose sweeps the app keeps


def sweep_cache(size: int = SWEEP_CACHE_SIZE) -> LRUCache[tuple, tuple[np.ndarray, np.ndarray]]:
    """A cache for ``dilation_sweep``'s curves, by (model key, class, angle, x, y, seed)."""
    return LRUCache(size)


@dataclass
class LessonView:
    """The picture (BGR, 2x), the message, the deepest layer's effective dilation (feature cells)
    and mean |offset| at the shape's centre cell, the samples' principal axis (degrees in [0, 180))
    and elongation, the cell, and the seconds taken."""

    picture: np.ndarray
    message: str
    dilation: float
    mean_offset: float
    axis_deg: float
    elongation: float
    cell: tuple[int, int] | None
    seconds: float


def _probe_of(image: np.ndarray, records) -> Probe:
    """The records of one lesson scene as a ``Probe`` without detections, so the Image tab's
    drawing functions (which take a probe) draw them."""
    side = image.shape[0]
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), {})
    return Probe((side, side), lesson_letterbox(side), empty, list(records))


def lesson_view(model, shape: ToyShape, seed: int = 0, layer: int = -1, scenes: ToyScenes | None = None) -> LessonView:
    """Draw DCNv3 layer ``layer`` (default the deepest) of the lesson ``model`` at ``shape``'s
    centre cell in the toy scene of background ``seed`` (its pieces kept in ``scenes``)."""
    start = time.perf_counter()
    image = toy_scene(shape, seed, scenes)
    _, records = lesson_records(model, [image])
    record = records[0][layer]
    probe = _probe_of(image, records[0])
    x = float(np.clip(shape.x, 0, TOY_SIDE - 1e-3))
    y = float(np.clip(shape.y, 0, TOY_SIDE - 1e-3))
    cell = probe.cell_at(record, x, y)
    canvas, scale = make_canvas(image, float(DISPLAY_FACTOR))
    canvas = draw_cell(canvas, probe, record, cell, None, scale, in_place=True)
    one = one_cell(record, cell)
    dilation = float(effective_dilation(one).mean())
    magnitude = float(offset_magnitude(one).mean())
    points = probe.sampling_locations(record, cell).reshape(-1, 2)
    axis, elongation = principal_axis(points, record.weights[cell].reshape(-1).astype(np.float64))
    message = (
        f"A {shape.size:.0f} px {CLASS_NAMES[shape.class_id]} at {shape.angle % 180:.0f}°. "
        f"Lesson network, {record.name} (the deepest of {len(records[0])} DCNv3 layers, stride 4), "
        f"cell (row {cell[0]}, col {cell[1]}): effective dilation **{dilation:.2f} cells** "
        f"(the regular grid: {record.dilation * record.offset_scale:.2f}), mean |offset| {magnitude:.2f} "
        f"cells; the samples' principal axis lies at {math.degrees(axis):.0f}° "
        f"(the shape at {shape.angle % 180:.0f}°), elongation {elongation:.2f}."
    )
    return LessonView(
        canvas, message, dilation, magnitude, math.degrees(axis), elongation, cell, time.perf_counter() - start
    )


def dilation_sweep(
    model,
    shape: ToyShape,
    seed: int = 0,
    model_key: str = "lesson",
    cache: LRUCache | None = None,
    scenes: ToyScenes | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(sizes (S,), effective dilation (S,) cells) of the deepest layer at the shape's centre cell
    for every size of ``SWEEP_SIZES``, the pose otherwise ``shape``'s: one batched forward, kept
    in ``cache`` (a ``sweep_cache()``; the app's ``AppContext.sweeps``) per (``model_key``, class,
    angle, x, y, seed); without one it is computed each call. ``scenes``: as ``lesson_view``."""
    key = (model_key, shape.class_id, round(shape.angle, 3), round(shape.x, 3), round(shape.y, 3), seed)

    def sweep():
        pieces = scenes or ToyScenes()  # one background and geometry for every size
        images = [pieces.scene(replace(shape, size=float(size)), seed) for size in SWEEP_SIZES]
        _, records = lesson_records(model, images)
        values = []
        for per_image in records:
            record = per_image[-1]
            cell = _probe_of(images[0], per_image).cell_at(
                record, float(np.clip(shape.x, 0, TOY_SIDE - 1e-3)), float(np.clip(shape.y, 0, TOY_SIDE - 1e-3))
            )
            values.append(float(effective_dilation(one_cell(record, cell)).mean()))
        sizes, dilations = np.array(SWEEP_SIZES, np.float64), np.array(values)
        sizes.setflags(write=False)
        dilations.setflags(write=False)
        return sizes, dilations

    return sweep() if cache is None else cache.get_or_compute(key, sweep)


def sweep_figure(
    sizes: np.ndarray, dilations: np.ndarray, current: tuple[float, float] | None = None, height: int = 260
) -> go.Figure:
    """Effective dilation (cells) against shape size (px, log axis), with the current setting."""
    figure = go.Figure(
        go.Scatter(
            x=sizes,
            y=dilations,
            mode="lines+markers",
            name="this shape, all sizes",
            line=dict(color="#1f77b4"),
            hovertemplate="%{x:.0f} px: %{y:.2f} cells",
        )
    )
    if current is not None:
        figure.add_trace(
            go.Scatter(
                x=[current[0]],
                y=[current[1]],
                mode="markers",
                name="now",
                marker=dict(size=13, color="#d62728", symbol="diamond"),
                hovertemplate="%{x:.0f} px: %{y:.2f} cells",
            )
        )
    figure.add_hline(
        y=1.0, line=dict(color="#999", dash="dot"), annotation_text="regular grid", annotation_position="bottom right"
    )
    figure.update_layout(
        template=None,
        height=height,
        margin=dict(l=50, r=10, t=30, b=80),
        title=dict(text="Effective dilation at the centre vs size", font=dict(size=13)),
        xaxis=dict(title="shape size (px)", type="log"),
        yaxis=dict(title="effective dilation (cells)", rangemode="tozero"),
        legend=dict(orientation="h", y=-0.5),
        paper_bgcolor="white",
    )
    return figure


def watch_picture(image: np.ndarray, snapshot, start_points: np.ndarray | None = None) -> np.ndarray:
    """(2x) BGR picture of one ``dcnv3.lesson.watch.WatchSnapshot`` on its probe scene: the
    points where they started (grey, the regular grid), where they sample now (one colour per
    group, size by weight) and the cell centre."""
    canvas, scale = make_canvas(image, float(DISPLAY_FACTOR))
    colours = [(40, 40, 230), (230, 140, 30), (40, 200, 40), (200, 40, 200)]
    if start_points is not None:
        for point in start_points.reshape(-1, 2):
            cv2.circle(canvas, tuple(int(round(v * scale[0])) for v in point), 6, (200, 200, 200), 2, cv2.LINE_AA)
    points, weights = snapshot.points, snapshot.weights
    uniform = 1.0 / points.shape[1]
    for group in range(points.shape[0]):
        for point, weight in zip(points[group], weights[group]):
            radius = int(np.clip(4 + 4 * weight / uniform, 3, 14))
            centre = tuple(int(round(v * scale[0])) for v in point)
            cv2.circle(canvas, centre, radius, colours[group % len(colours)], -1, cv2.LINE_AA)
            cv2.circle(canvas, centre, radius, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def watch_figure(snapshots: list, height: int = 260) -> go.Figure:
    """Loss and mean |offset| (cells, at the watched cell and over the scene) by iteration."""
    iterations = [s.iteration for s in snapshots]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(x=iterations, y=[s.loss for s in snapshots], name="loss", yaxis="y", line=dict(color="#d62728"))
    )
    figure.add_trace(
        go.Scatter(
            x=iterations,
            y=[s.cell_offset for s in snapshots],
            name="|offset| at the pixel",
            yaxis="y2",
            line=dict(color="#1f77b4"),
        )
    )
    figure.add_trace(
        go.Scatter(
            x=iterations,
            y=[s.mean_offset for s in snapshots],
            name="|offset|, whole scene",
            yaxis="y2",
            line=dict(color="#1f77b4", dash="dot"),
        )
    )
    figure.update_layout(
        template=None,
        height=height,
        margin=dict(l=50, r=50, t=30, b=80),
        paper_bgcolor="white",
        xaxis=dict(title="iteration"),
        yaxis=dict(title="loss", rangemode="tozero"),
        yaxis2=dict(title="mean |offset| (cells)", overlaying="y", side="right", rangemode="tozero"),
        legend=dict(orientation="h", y=-0.5),
    )
    return figure
