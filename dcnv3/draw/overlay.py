"""Annotators: small drawing steps for probe results, each with one job (numpy BGR in, BGR out).

Why one module (over 400 lines): the annotators share one convention for scale, colours and the
weight kinds' marks; each is short and self-contained.

In the style of supervision's annotators: an annotator is configured once and then draws on a
*scene* in place, returning it, so steps chain::

    scene = DetectionAnnotator().annotate(canvas.copy(), probe.detections, scale)
    scene = CellAnnotator().annotate(scene, probe, record, cell, scale=scale)

A scene is a BGR uint8 (H, W, 3) canvas: the image resized by ``scale`` = (sx, sy) canvas px per
image px (1 for the image itself). Probe coordinates are continuous image pixels (pixel i spans
[i, i+1)), so image point (x, y) lies at canvas point (x * sx, y * sy); OpenCV draws in
pixel-centre coordinates with ``SUBPIXEL_BITS`` fractional bits, hence the ``- 0.5`` in the
fixed-point conversions. The ``draw_*`` functions are the same steps on a copy of the canvas
(or on it with ``in_place``), for callers that keep their canvas clean.

Used by ``python -m dcnv3 inspect``, ``dcnv3.video.pipeline`` and the app (``viz_app.views.render``).
"""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass

import cv2
import numpy as np

from dcnv3.record.geometry import cell_step
from dcnv3.record.weight_encoding import encode_weights

__all__ = [
    "SUBPIXEL_BITS",
    "group_colours",
    "scale_pair",
    "image_to_canvas",
    "line_width",
    "point_style",
    "GHOST_COLOUR",
    "GHOST_OUTLINE",
    "POINT_RADIUS",
    "GRID_RING_RADIUS",
    "ARROW_HEAD",
    "ARROW_CLEARANCE",
    "MARKER_SIZE",
    "blend_discs",
    "hollow_ring_width",
    "cells_on_canvas",
    "field_colours",
    "DetectionAnnotator",
    "RegularGridAnnotator",
    "OffsetArrowAnnotator",
    "SamplingPointAnnotator",
    "MarkerAnnotator",
    "CellAnnotator",
    "FieldAnnotator",
    "TraceAnnotator",
    "CaptionAnnotator",
    "draw_detections",
    "draw_samples",
    "draw_marker",
    "draw_cell",
]

SUBPIXEL_BITS = 4  # fixed-point fractional bits of OpenCV's sub-pixel drawing (its ``shift``)
GHOST_COLOUR = (215, 215, 215)  # regular-grid positions (BGR)
GHOST_OUTLINE = (40, 40, 40)  # the dark edge under each grid ring: it reads on light backgrounds too
# The marks of one cell, in line widths (``line_width``) of the scene. The browser's hover drawing
# (viz_app/components/sampling_hover.js) receives these values, so both draw the same marks.
POINT_RADIUS = 4.5  # a sampling point's disc at the kind's reference weight (times encode_weights' size)
GRID_RING_RADIUS = 2.5  # a regular-grid ring
ARROW_HEAD = 5.0  # an arrow head's length (at most half the arrow)
ARROW_CLEARANCE = 2  # px: an arrow shorter than its disc's radius plus this is hidden by the disc: none drawn
MARKER_SIZE = 7  # half the cell-centre cross
_DETECTION = (80, 200, 80)
_HIGHLIGHT = (0, 230, 255)


# -- shared rules ------------------------------------------------------------------------------------------
def group_colours(groups: int) -> list[tuple[int, int, int]]:
    """A distinct BGR colour per group (evenly spaced hues, bright enough on photos)."""
    return list(_colour_table(groups))


@functools.lru_cache(maxsize=64)
def _colour_table(groups: int) -> tuple[tuple[int, int, int], ...]:
    """``group_colours`` once per group count (drawing asks for it per cell; ~20 us each time)."""
    colours = []
    for g in range(groups):
        r, gr, b = colorsys.hsv_to_rgb((g / max(groups, 1) + 0.08) % 1.0, 0.85, 1.0)
        colours.append((int(b * 255), int(gr * 255), int(r * 255)))
    return tuple(colours)


def scale_pair(scale) -> tuple[float, float]:
    """A scale given as one number or (sx, sy) -> (sx, sy) floats."""
    if np.isscalar(scale):
        return float(scale), float(scale)
    return float(scale[0]), float(scale[1])


def image_to_canvas(xy, scale) -> np.ndarray:
    """(..., 2) image coordinates -> canvas coordinates (both continuous)."""
    return np.asarray(xy, dtype=np.float64) * np.asarray(scale_pair(scale))


def line_width(scene: np.ndarray) -> int:
    """Line width that reads well once the browser fits the scene in a ~500 px high view
    (1 px per 480 px of the scene's long side); sizes of marks are multiples of it."""
    return max(1, round(max(scene.shape[:2]) / 480))


def _fixed(xy, scale=(1.0, 1.0)) -> tuple[int, int]:
    """Image coordinate -> OpenCV fixed-point pixel-centre coordinate on the canvas."""
    sx, sy = scale_pair(scale)
    return (
        int(round((xy[0] * sx - 0.5) * (1 << SUBPIXEL_BITS))),
        int(round((xy[1] * sy - 0.5) * (1 << SUBPIXEL_BITS))),
    )


def _to_fixed(xy: np.ndarray) -> np.ndarray:
    """(..., 2) continuous canvas coordinates -> OpenCV's fixed-point pixel-centre integers."""
    return np.round((xy - 0.5) * (1 << SUBPIXEL_BITS)).astype(np.int64)


def _chosen(groups, num_groups: int) -> list[int]:
    """The groups to draw: all by default, else the given ones that exist (in the given order)."""
    return list(range(num_groups)) if groups is None else [g for g in groups if 0 <= g < num_groups]


def point_style(weights: np.ndarray, base_radius: float, kind: str = "softmax") -> tuple[np.ndarray, np.ndarray]:
    """(radius, opacity) per point from its weight, by the weights' kind (``dcnv3.record.weight_encoding``).

    relative = the weight on its kind's scale (softmax: w * P, 1 = uniform; sigmoid: w itself;
    free: |m| / the group's mean |m|): radius = base * sqrt(relative), kept in [0.4, 2.5] * base,
    so area grows with weight; opacity = 0.25 + 0.75 * relative, capped at 1 (the reference and
    heavier points are opaque, points that barely count fade). Which points are negative (drawn
    hollow) is ``encode_weights(...).negative``.
    """
    encoding = encode_weights(weights, kind)
    return base_radius * encoding.size, encoding.opacity


@dataclass(frozen=True)
class _SampleMarks:
    """How a cell's sampling points look on a scene, formed once for the arrows and the discs."""

    samples: np.ndarray  # (G, P, 2) continuous canvas px
    radius: np.ndarray  # (G, P) disc radius, canvas px
    opacity: np.ndarray  # (G, P)
    relative: np.ndarray  # (G, P) weight on its kind's scale: drawing order (heaviest on top)
    negative: np.ndarray  # (G, P) bool: drawn as hollow rings
    colours: tuple  # BGR per group
    chosen: list  # the groups drawn
    unit: int  # line width


def _sample_marks(
    scene: np.ndarray, locations: np.ndarray, weights: np.ndarray, groups, scale, kind: str
) -> _SampleMarks:
    unit = line_width(scene)
    samples = np.asarray(locations, dtype=np.float64) * np.array(scale_pair(scale))
    encoding = encode_weights(weights, kind)
    return _SampleMarks(
        samples,
        POINT_RADIUS * unit * encoding.size,
        encoding.opacity,
        encoding.relative,
        encoding.negative,
        _colour_table(len(samples)),
        _chosen(groups, len(samples)),
        unit,
    )


def _draw_arrows(scene: np.ndarray, regular: np.ndarray, marks: _SampleMarks, scale) -> None:
    """``OffsetArrowAnnotator``'s drawing, from the marks."""
    grid = np.asarray(regular, dtype=np.float64) * np.array(scale_pair(scale))
    samples, radius, chosen, unit = marks.samples, marks.radius, marks.chosen, marks.unit
    lengths = np.hypot(*(samples - grid).transpose(2, 0, 1))  # (G, P)
    arrows = np.zeros(lengths.shape, dtype=bool)
    arrows[chosen] = lengths[chosen] > radius[chosen] + ARROW_CLEARANCE  # shorter ones: the disc hides them
    g_index, p_index = np.nonzero(arrows)
    start, end = grid[g_index, p_index], samples[g_index, p_index]
    length, disc = lengths[g_index, p_index], radius[g_index, p_index]
    tip_end = end - (end - start) * (disc / length)[:, None]  # stop at the disc's edge: head stays visible
    tips = np.minimum(0.5, ARROW_HEAD * unit / (length - disc)).tolist()
    for g, a, b, tip in zip(g_index.tolist(), _to_fixed(start).tolist(), _to_fixed(tip_end).tolist(), tips):
        cv2.arrowedLine(scene, a, b, marks.colours[g], unit, cv2.LINE_AA, SUBPIXEL_BITS, tip)


def _draw_points(scene: np.ndarray, marks: _SampleMarks) -> None:
    """``SamplingPointAnnotator``'s drawing, from the marks: heavier points last (on top), negative
    ones as hollow rings."""
    points = marks.samples.shape[1]
    chosen_points = np.array([(g, p) for g in marks.chosen for p in range(points)], dtype=np.int64).reshape(-1, 2)
    heaviest_last = np.argsort(marks.relative[chosen_points[:, 0], chosen_points[:, 1]], kind="stable")
    g_index, p_index = chosen_points[heaviest_last].T
    blend_discs(
        scene,
        marks.samples[g_index, p_index] - 0.5,
        marks.radius[g_index, p_index],
        [marks.colours[g] for g in g_index.tolist()],
        marks.opacity[g_index, p_index],
        outline=(0, 0, 0),
        hollow=marks.negative[g_index, p_index],
    )


def hollow_ring_width(radius: float) -> int:
    """Line width (px) of a hollow (negative-weight) ring of ``radius`` px: a third of the radius,
    at least 2, so the ring's colour still names its group."""
    return max(2, int(round(radius / 3)))


def _disc(target: np.ndarray, centre, r: int, colour, outline, hollow: bool) -> None:
    """One disc (or, ``hollow``, a ring of ``hollow_ring_width``) at fixed-point ``centre``/``r``."""
    if not hollow:
        cv2.circle(target, centre, r, colour, -1, cv2.LINE_AA, SUBPIXEL_BITS)
        if outline is not None:
            cv2.circle(target, centre, r, outline, 1, cv2.LINE_AA, SUBPIXEL_BITS)
        return
    width = hollow_ring_width(r / (1 << SUBPIXEL_BITS))
    middle = max(1, r - (width << SUBPIXEL_BITS) // 2)  # the ring's outer edge is the disc's edge
    if outline is not None:  # dark edges inside and outside: the ring reads on any background
        cv2.circle(target, centre, middle, outline, width + 2, cv2.LINE_AA, SUBPIXEL_BITS)
    cv2.circle(target, centre, middle, colour, width, cv2.LINE_AA, SUBPIXEL_BITS)


def blend_discs(
    scene: np.ndarray,
    centres: np.ndarray,
    radii: np.ndarray,
    colours: list,
    alphas: np.ndarray,
    outline=None,
    hollow: np.ndarray | None = None,
) -> np.ndarray:
    """Filled discs, in order (later ones on top), in place: (K, 2) centres in canvas
    pixel-centre coordinates, (K,) radii (px) and opacities, K BGR colours, an optional outline;
    ``hollow`` (K,) bool draws those as rings (the outer edge at the radius, ``hollow_ring_width``
    thick) instead: negative weights.

    An opaque disc is drawn straight onto the scene; a translucent one is blended over its
    bounding box only, so drawing stays cheap on large canvases. The integer geometry of all
    discs is formed in numpy at once. Returns the scene.
    """
    one = 1 << SUBPIXEL_BITS
    fixed = np.round(centres * one).astype(np.int64).tolist()
    fixed_radii = np.maximum(1, np.round(radii * one)).astype(np.int64).tolist()
    reach = np.ceil(radii).astype(np.int64) + 2
    corner = np.trunc(centres).astype(np.int64)
    low = np.maximum(0, corner - reach[:, None])
    high = np.minimum([scene.shape[1], scene.shape[0]], corner + reach[:, None] + 2)
    local = np.round((centres - low) * one).astype(np.int64).tolist()
    rings = [False] * len(fixed) if hollow is None else np.asarray(hollow, dtype=bool).tolist()
    for centre, r, colour, alpha, (x0, y0), (x1, y1), inside, ring in zip(
        fixed, fixed_radii, colours, alphas.tolist(), low.tolist(), high.tolist(), local, rings
    ):
        if alpha >= 1.0:  # opaque: straight onto the scene
            _disc(scene, centre, r, colour, outline, ring)
            continue
        if x0 >= x1 or y0 >= y1:
            continue
        roi = scene[y0:y1, x0:x1]  # only the disc's bounding box is blended
        layer = roi.copy()
        _disc(layer, inside, r, colour, outline, ring)
        cv2.addWeighted(layer, alpha, roi, 1 - alpha, 0, dst=roi)
    return scene


def field_colours(field: str, values: np.ndarray, value_range) -> np.ndarray:
    """(H, W, 3) BGR uint8 colours of a field's cells.

    ``values``: (H, W) scalars mapped through viridis over ``value_range`` = (lo, hi), or for
    ``field == "offset direction"`` (H, W, 2) mean displacements (dx, dy): hue = angle (y down,
    so 90 degrees points down), brightness = length / hi.
    """
    if field == "offset direction":
        angle = np.degrees(np.arctan2(values[..., 1], values[..., 0])) % 360
        length = np.linalg.norm(values, axis=-1)
        hsv = np.stack([angle / 2, np.full_like(angle, 255), np.clip(length / value_range[1], 0, 1) * 255], axis=-1)
        return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    lo, hi = value_range
    scaled = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    return cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)


def cells_on_canvas(colours: np.ndarray, probe, record, canvas_shape, scale, smooth: bool) -> np.ndarray:
    """Warp a (H, W, 3) per-cell picture of ``record`` onto a canvas of ``canvas_shape`` so each
    cell's colour is centred on its cell centre (``Probe.cell_centre``); ``smooth`` interpolates
    bilinearly between cell centres instead of drawing blocks."""
    sx, sy = scale_pair(scale)
    origin = probe.cell_centre(record, (0, 0))  # image px
    step = cell_step(record, probe.letterbox)  # image px between cells
    # canvas pixel-centre coordinate of cell c: (origin + c * step) * s - 0.5
    matrix = np.array([[step * sx, 0, origin[0] * sx - 0.5], [0, step * sy, origin[1] * sy - 0.5]])
    return cv2.warpAffine(
        colours,
        matrix,
        (canvas_shape[1], canvas_shape[0]),
        flags=cv2.INTER_LINEAR if smooth else cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_REPLICATE,
    )


# -- annotators --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectionAnnotator:
    """Detection boxes with their labels: the ``max_boxes`` best-scoring ones (more would bury the
    image) and the highlighted one; the ``max_labels`` best (and the highlighted) get a label."""

    max_boxes: int = 50
    max_labels: int = 20

    def annotate(self, scene: np.ndarray, detections, scale=(1.0, 1.0), highlight: int | None = None) -> np.ndarray:
        """``detections``: boxes (K, 4) xyxy image px, scores (K,) and ``label(index)`` (a
        ``dcnv3.analysis.probe.Detections`` or anything shaped like it). Drawn best last, on top."""
        unit = line_width(scene)
        order = np.argsort(-np.asarray(detections.scores), kind="stable")[: self.max_boxes]
        if highlight is not None and highlight not in order:
            order = np.append(order, highlight)
        labelled = set(order[: self.max_labels].tolist()) | ({highlight} if highlight is not None else set())
        sx, sy = scale_pair(scale)
        for index in order[::-1]:  # best last, so it is on top
            x1, y1, x2, y2 = detections.boxes[index]
            # The outline runs through the box's first and last canvas pixels (continuous edge + 0.5).
            top_left = _fixed((x1 * sx + 0.5, y1 * sy + 0.5))
            bottom_right = _fixed((x2 * sx - 0.5, y2 * sy - 0.5))
            colour = _HIGHLIGHT if index == highlight else _DETECTION
            cv2.rectangle(
                scene,
                top_left,
                bottom_right,
                colour,
                unit * (2 if index == highlight else 1),
                cv2.LINE_AA,
                SUBPIXEL_BITS,
            )
            if index in labelled:
                _label(scene, detections.label(int(index)), (int(x1 * sx), int(y1 * sy)), colour)
        return scene


def _label(scene: np.ndarray, text: str, corner, colour) -> None:
    """A filled label box with black text above ``corner`` (canvas px), kept inside the scene."""
    unit = line_width(scene)
    font_scale = 0.45 * unit
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, unit)
    x = int(np.clip(corner[0], 0, max(0, scene.shape[1] - w - 4)))
    y = int(corner[1]) if corner[1] - h - base - 4 >= 0 else int(corner[1]) + h + base + 4
    cv2.rectangle(scene, (x, y - h - base - 4), (x + w + 4, y), colour, -1)
    cv2.putText(scene, text, (x + 2, y - base - 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), unit, cv2.LINE_AA)


@dataclass(frozen=True)
class RegularGridAnnotator:
    """The zero-offset KxK grid of a cell as grey rings (each position once: groups share it)."""

    def annotate(self, scene: np.ndarray, regular: np.ndarray, groups=None, scale=(1.0, 1.0)) -> np.ndarray:
        """``regular``: (G, P, 2) grid positions (x, y) in image px; ``groups``: which to draw."""
        unit = line_width(scene)
        grid = np.asarray(regular, dtype=np.float64) * np.array(scale_pair(scale))
        ring = int(GRID_RING_RADIUS * unit * (1 << SUBPIXEL_BITS))
        rings = _to_fixed(grid[_chosen(groups, len(grid))]).reshape(-1, 2).tolist()
        rings = list(dict.fromkeys(map(tuple, rings)))  # groups share the regular grid: each ring once
        for width, colour in ((unit + 1, GHOST_OUTLINE), (unit, GHOST_COLOUR)):
            for centre in rings:
                cv2.circle(scene, centre, ring, colour, width, cv2.LINE_AA, SUBPIXEL_BITS)
        return scene


@dataclass(frozen=True)
class OffsetArrowAnnotator:
    """An arrow in the group's colour from each grid position to its sample, ending at the
    sample's disc (``SamplingPointAnnotator``'s size); samples whose disc covers the arrow get none."""

    weight_kind: str = "softmax"  # what the weights are (dcnv3.record.weight_encoding): sets the disc sizes

    def annotate(
        self,
        scene: np.ndarray,
        regular: np.ndarray,
        locations: np.ndarray,
        weights: np.ndarray,
        groups=None,
        scale=(1.0, 1.0),
    ) -> np.ndarray:
        """``regular``, ``locations``: (G, P, 2) image px; ``weights``: (G, P)."""
        _draw_arrows(scene, regular, _sample_marks(scene, locations, weights, groups, scale, self.weight_kind), scale)
        return scene


@dataclass(frozen=True)
class SamplingPointAnnotator:
    """A cell's sampling points as discs in their group's colour (``group_colours``), size and
    opacity by weight for the weights' kind (``point_style``, ``dcnv3.record.weight_encoding``), heavier
    points drawn last (on top); negative weights (DCNv4's "free" kind) as hollow rings."""

    weight_kind: str = "softmax"

    def annotate(
        self, scene: np.ndarray, locations: np.ndarray, weights: np.ndarray, groups=None, scale=(1.0, 1.0)
    ) -> np.ndarray:
        """``locations``: (G, P, 2) sample positions (x, y) in image px; ``weights``: (G, P)."""
        _draw_points(scene, _sample_marks(scene, locations, weights, groups, scale, self.weight_kind))
        return scene


@dataclass(frozen=True)
class MarkerAnnotator:
    """A cross with a dark outline (visible on any background) at an image point."""

    colour: tuple[int, int, int] = (255, 255, 255)

    def annotate(self, scene: np.ndarray, xy, scale=(1.0, 1.0)) -> np.ndarray:
        unit = line_width(scene)
        size = MARKER_SIZE * unit
        sx, sy = scale_pair(scale)
        x, y = xy[0] * sx, xy[1] * sy
        for width, col in ((3 * unit, (0, 0, 0)), (unit, self.colour)):
            for (ax, ay), (bx, by) in (((x - size, y), (x + size, y)), ((x, y - size), (x, y + size))):
                cv2.line(scene, _fixed((ax, ay)), _fixed((bx, by)), col, width, cv2.LINE_AA, SUBPIXEL_BITS)
        return scene


@dataclass(frozen=True)
class CellAnnotator:
    """One cell of a probed layer as every view draws it: the regular grid ghosted with arrows to
    the samples (unless ``grid`` is False), the groups' sampling points, and a cross on the cell
    centre. The points' marks follow the record's ``weight_kind`` (``dcnv3.record.weight_encoding``)."""

    grid: bool = True

    def annotate(self, scene: np.ndarray, probe, layer, cell, groups=None, scale=(1.0, 1.0)) -> np.ndarray:
        """``probe``: a ``dcnv3.analysis.probe.Probe``; ``layer``: one of its ``LayerRecord``s; ``cell``: (row, col)."""
        cell = tuple(cell)
        locations, weights = probe.sampling_locations(layer, cell), layer.weights[cell]
        marks = _sample_marks(scene, locations, weights, groups, scale, layer.weight_kind)  # arrows and points
        if self.grid:
            regular = probe.regular_locations(layer, cell)
            RegularGridAnnotator().annotate(scene, regular, groups, scale)
            _draw_arrows(scene, regular, marks, scale)
        _draw_points(scene, marks)
        return MarkerAnnotator().annotate(scene, probe.cell_centre(layer, cell), scale)


@dataclass(frozen=True)
class FieldAnnotator:
    """Per-cell colours of a layer blended over the scene (``opacity`` of the colour), each cell's
    colour centred on its cell centre (``cells_on_canvas``)."""

    opacity: float = 0.6
    smooth: bool = False

    def annotate(self, scene: np.ndarray, probe, layer, colours: np.ndarray, scale=(1.0, 1.0)) -> np.ndarray:
        """``colours``: (H, W, 3) BGR uint8 per cell of ``layer`` (e.g. ``field_colours``)."""
        warped = cells_on_canvas(colours, probe, layer, scene.shape, scale, self.smooth)
        opacity = float(self.opacity)
        return cv2.addWeighted(warped, opacity, scene, 1 - opacity, 0, dst=scene)


@dataclass(frozen=True)
class TraceAnnotator:
    """A trace through the stacked layers (``dcnv3.record.trace``): the deepest level's points coloured and
    sized by |path weight| (inferno from 30 % up: dark = weak, yellow = strong), negative paths
    (signed DCNv4 weights) as hollow rings, the intermediate levels as small white rings."""

    def annotate(self, scene: np.ndarray, levels: list, origin=(0.0, 0.0), scale=(1.0, 1.0)) -> np.ndarray:
        """``levels``: ``TraceLevel``s (xy (N, 2) image px, weight (N,), signed); image point (x, y) lies
        at scene point ((x - x0) * sx, (y - y0) * sy) for ``origin`` (x0, y0)."""
        unit = line_width(scene)
        x0, y0 = origin
        # Intermediate levels: small white rings, up to a few hundred per trace. Drawn without
        # anti-aliasing (4x cheaper: they were half of a click's drawing time); the deepest level's
        # weighted discs below stay anti-aliased.
        ring = int(3 * unit * (1 << SUBPIXEL_BITS))
        for level in levels[:-1]:
            centres = _to_fixed((level.xy - (x0, y0)) * scale).tolist()
            for centre in centres:
                cv2.circle(scene, centre, ring, (255, 255, 255), unit, cv2.LINE_8, SUBPIXEL_BITS)
        if levels:
            last = levels[-1]
            strength = np.abs(last.weight)
            relative = strength / max(float(strength.max()), 1e-12)
            # inferno from 30 % up: its darkest colours vanish on a dimmed photo
            shades = ((0.3 + 0.7 * relative) * 255).astype(np.uint8)[:, None]
            colours = cv2.applyColorMap(shades, cv2.COLORMAP_INFERNO)[:, 0]
            order = np.argsort(relative)  # strongest on top
            centres = image_to_canvas(last.xy[order] - (x0, y0), scale) - 0.5  # (K, 2)
            blend_discs(
                scene,
                centres,
                (2.5 + 5 * np.sqrt(relative[order])) * unit,
                [tuple(c) for c in colours[order].tolist()],
                np.ones(len(order)),
                outline=(0, 0, 0),
                hollow=last.weight[order] < 0,
            )
        return scene


@dataclass(frozen=True)
class CaptionAnnotator:
    """Text on a dark band at the scene's top left (``at_bottom``: bottom left, where a UI's label
    does not cover it), one band per line of ``text`` ("\\n" splits); ``text_scale``: OpenCV font
    scale per line width (smaller for long captions on narrow scenes)."""

    text_scale: float = 0.42
    at_bottom: bool = False

    def annotate(self, scene: np.ndarray, text: str) -> np.ndarray:
        unit = line_width(scene)
        font_scale = self.text_scale * unit
        lines = text.split("\n")
        sizes = [cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, font_scale, unit) for line in lines]
        heights = [h + base + 6 for (_, h), base in sizes]
        top = scene.shape[0] - sum(heights) if self.at_bottom else 0
        for line, ((w, h), _), band in zip(lines, sizes, heights):
            cv2.rectangle(scene, (0, top), (min(scene.shape[1], w + 8), top + band), (30, 30, 30), -1)
            cv2.putText(
                scene, line, (4, top + h + 3), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), unit, cv2.LINE_AA
            )
            top += band
        return scene


# -- the same steps on a copy ------------------------------------------------------------------------------
def draw_detections(
    canvas: np.ndarray,
    detections,
    scale=(1.0, 1.0),
    highlight: int | None = None,
    max_labels: int = 20,
    max_boxes: int = 50,
) -> np.ndarray:
    """``DetectionAnnotator`` on a copy of the canvas."""
    return DetectionAnnotator(max_boxes, max_labels).annotate(canvas.copy(), detections, scale, highlight)


def draw_samples(
    canvas: np.ndarray,
    locations: np.ndarray,
    weights: np.ndarray,
    regular: np.ndarray | None = None,
    groups=None,
    scale=(1.0, 1.0),
    in_place: bool = False,
    weight_kind: str = "softmax",
) -> np.ndarray:
    """Sampling points of one cell on a copy of the canvas (on the canvas itself with ``in_place``).

    Args:
        locations: (G, P, 2) sample positions (x, y) in image px; weights: (G, P) modulation
            weights of ``weight_kind`` (``dcnv3.record.weight_encoding``: sets sizes, opacities, hollow).
        regular: (G, P, 2) zero-offset grid positions: drawn as grey rings, with an arrow in the
            group's colour from each to its sample (``RegularGridAnnotator``, ``OffsetArrowAnnotator``).
        groups: groups to draw (default all); each group has its own colour (``group_colours``).
        scale: canvas px per image px.
    The points are ``SamplingPointAnnotator``'s.
    """
    out = canvas if in_place else canvas.copy()
    marks = _sample_marks(out, locations, weights, groups, scale, weight_kind)
    if regular is not None:
        RegularGridAnnotator().annotate(out, regular, groups, scale)
        _draw_arrows(out, regular, marks, scale)
    _draw_points(out, marks)
    return out


def draw_marker(canvas: np.ndarray, xy, scale=(1.0, 1.0), colour=(255, 255, 255), in_place: bool = False) -> np.ndarray:
    """``MarkerAnnotator`` at image point ``xy``, on a copy of the canvas or, with ``in_place``,
    on the canvas itself (a caller that owns a fresh canvas saves a full-frame copy)."""
    return MarkerAnnotator(tuple(colour)).annotate(canvas if in_place else canvas.copy(), xy, scale)


def draw_cell(
    canvas: np.ndarray, probe, layer, cell, groups=None, scale=(1.0, 1.0), grid: bool = True, in_place: bool = False
) -> np.ndarray:
    """``CellAnnotator`` on a copy of the canvas (on the canvas itself with ``in_place``).

    ``probe``: a ``dcnv3.analysis.probe.Probe``; ``layer``: one of its ``LayerRecord``s; ``cell``: (row, col).
    """
    return CellAnnotator(grid).annotate(canvas if in_place else canvas.copy(), probe, layer, cell, groups, scale)
