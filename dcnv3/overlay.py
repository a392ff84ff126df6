"""Small, composable OpenCV drawing functions for probe results (numpy BGR in, numpy BGR out).

Used by ``python -m dcnv3 inspect`` and by the app (``viz_app.render``). Drawing happens on a
*canvas*: the image resized by ``scale`` = (sx, sy) canvas px per image px (1 for the image
itself). Probe coordinates are continuous image pixels (pixel i spans [i, i+1)), so image point
(x, y) lies at canvas point (x * sx, y * sy); OpenCV draws in pixel-centre coordinates with
sub-pixel precision (``shift``), hence the ``- 0.5`` in ``_fixed``.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

__all__ = ["group_colours", "draw_detections", "draw_samples", "draw_marker", "draw_cell", "point_style",
           "image_to_canvas", "field_colours", "cells_on_canvas"]

_SHIFT = 4  # fixed-point bits for sub-pixel drawing with OpenCV
_GHOST = (215, 215, 215)  # regular-grid positions
_DETECTION = (80, 200, 80)
_HIGHLIGHT = (0, 230, 255)


def group_colours(groups: int) -> list[tuple[int, int, int]]:
    """A distinct BGR colour per group (evenly spaced hues, bright enough on photos)."""
    colours = []
    for g in range(groups):
        r, gr, b = colorsys.hsv_to_rgb((g / max(groups, 1) + 0.08) % 1.0, 0.85, 1.0)
        colours.append((int(b * 255), int(gr * 255), int(r * 255)))
    return colours


def image_to_canvas(xy, scale) -> np.ndarray:
    """(..., 2) image coordinates -> canvas coordinates (both continuous)."""
    return np.asarray(xy, dtype=np.float64) * np.asarray(_pair(scale))


def _pair(scale) -> tuple[float, float]:
    if np.isscalar(scale):
        return float(scale), float(scale)
    return float(scale[0]), float(scale[1])


def _fixed(xy, scale=(1.0, 1.0)) -> tuple[int, int]:
    """Image coordinate -> OpenCV fixed-point pixel-centre coordinate on the canvas."""
    sx, sy = _pair(scale)
    return int(round((xy[0] * sx - 0.5) * (1 << _SHIFT))), int(round((xy[1] * sy - 0.5) * (1 << _SHIFT)))


def _unit(canvas: np.ndarray) -> int:
    """Line width that reads well once the browser fits the canvas in a ~500 px high view
    (1 px per 480 px of the canvas' long side)."""
    return max(1, round(max(canvas.shape[:2]) / 480))


def draw_detections(canvas: np.ndarray, detections, scale=(1.0, 1.0), highlight: int | None = None,
                    max_labels: int = 20, max_boxes: int = 50) -> np.ndarray:
    """Detection boxes (xyxy image px) on a copy of the canvas: the ``max_boxes`` best-scoring
    ones (more would bury the image) and the highlighted one; the ``max_labels`` best get a label."""
    out = canvas.copy()
    unit = _unit(out)
    order = np.argsort(-np.asarray(detections.scores), kind="stable")[:max_boxes]
    if highlight is not None and highlight not in order:
        order = np.append(order, highlight)
    labelled = set(order[:max_labels].tolist()) | ({highlight} if highlight is not None else set())
    sx, sy = _pair(scale)
    for index in order[::-1]:  # best last, so it is on top
        x1, y1, x2, y2 = detections.boxes[index]
        # The outline runs through the box's first and last canvas pixels (continuous edge + 0.5).
        top_left = _fixed((x1 * sx + 0.5, y1 * sy + 0.5))
        bottom_right = _fixed((x2 * sx - 0.5, y2 * sy - 0.5))
        colour = _HIGHLIGHT if index == highlight else _DETECTION
        cv2.rectangle(out, top_left, bottom_right, colour, unit * (2 if index == highlight else 1),
                      cv2.LINE_AA, _SHIFT)
        if index in labelled:
            _label(out, detections.label(int(index)), (int(x1 * sx), int(y1 * sy)), colour)
    return out


def _label(canvas: np.ndarray, text: str, corner, colour) -> None:
    """A filled label box with black text above ``corner`` (canvas px), kept inside the canvas."""
    unit = _unit(canvas)
    font_scale = 0.45 * unit
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, unit)
    x = int(np.clip(corner[0], 0, max(0, canvas.shape[1] - w - 4)))
    y = int(corner[1]) if corner[1] - h - base - 4 >= 0 else int(corner[1]) + h + base + 4
    cv2.rectangle(canvas, (x, y - h - base - 4), (x + w + 4, y), colour, -1)
    cv2.putText(canvas, text, (x + 2, y - base - 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0),
                unit, cv2.LINE_AA)


def point_style(weights: np.ndarray, base_radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(radius, opacity) per point from its weight relative to the uniform 1/P.

    relative = w * P (1 = uniform): radius = base * sqrt(relative), kept in [0.4, 2.5] * base, so
    area grows with weight; opacity = 0.25 + 0.75 * relative, capped at 1 (uniform and heavier
    points are opaque, points that barely count fade).
    """
    relative = np.asarray(weights, dtype=np.float64) * weights.shape[-1]
    radius = base_radius * np.clip(np.sqrt(relative), 0.4, 2.5)
    opacity = np.clip(0.25 + 0.75 * relative, 0.25, 1.0)
    return radius, opacity


def draw_samples(canvas: np.ndarray, locations: np.ndarray, weights: np.ndarray,
                 regular: np.ndarray | None = None, groups=None, scale=(1.0, 1.0),
                 in_place: bool = False) -> np.ndarray:
    """Sampling points of one cell on a copy of the canvas (on the canvas itself with ``in_place``).

    Args:
        locations: (G, P, 2) sample positions (x, y) in image px; weights: (G, P) softmax weights.
        regular: (G, P, 2) zero-offset grid positions: drawn as grey rings, with an arrow in the
            group's colour from each to its sample.
        groups: groups to draw (default all); each group has its own colour (``group_colours``).
        scale: canvas px per image px.
    Point size and opacity follow ``point_style``; heavier points are drawn last (on top).
    """
    out = canvas if in_place else canvas.copy()
    num_groups, points, _ = locations.shape
    colours = group_colours(num_groups)
    chosen = list(range(num_groups)) if groups is None else [g for g in groups if 0 <= g < num_groups]
    unit = _unit(out)
    base = 4.5 * unit
    radius, opacity = point_style(weights, base)
    # Canvas coordinates and OpenCV's fixed-point integers of every shape are formed in numpy at
    # once: the video draws a few cells per frame and the app up to a few hundred shapes per
    # click, where per-point Python arithmetic would cost more than the drawing itself.
    to_canvas = np.array(_pair(scale))
    samples = np.asarray(locations, dtype=np.float64) * to_canvas  # (G, P, 2) continuous canvas px
    if regular is not None:
        grid = np.asarray(regular, dtype=np.float64) * to_canvas
        ring = int(2.5 * unit * (1 << _SHIFT))
        rings = _to_fixed(grid[chosen]).reshape(-1, 2).tolist()
        rings = list(dict.fromkeys(map(tuple, rings)))  # groups share the regular grid: each ring once
        for width, colour in ((unit + 1, (40, 40, 40)), (unit, _GHOST)):
            for centre in rings:
                cv2.circle(out, centre, ring, colour, width, cv2.LINE_AA, _SHIFT)
        lengths = np.hypot(*(samples - grid).transpose(2, 0, 1))  # (G, P)
        arrows = np.zeros(lengths.shape, dtype=bool)
        arrows[chosen] = lengths[chosen] > radius[chosen] + 2  # shorter ones: the disc hides them
        g_index, p_index = np.nonzero(arrows)
        start, end = grid[g_index, p_index], samples[g_index, p_index]
        length, disc = lengths[g_index, p_index], radius[g_index, p_index]
        tip_end = end - (end - start) * (disc / length)[:, None]  # stop at the disc's edge: head stays visible
        tips = np.minimum(0.5, 5.0 * unit / (length - disc)).tolist()
        for g, a, b, tip in zip(g_index.tolist(), _to_fixed(start).tolist(), _to_fixed(tip_end).tolist(), tips):
            cv2.arrowedLine(out, a, b, colours[g], unit, cv2.LINE_AA, _SHIFT, tip)
    chosen_points = np.array([(g, p) for g in chosen for p in range(points)], dtype=np.int64).reshape(-1, 2)
    heaviest_last = np.argsort(weights[chosen_points[:, 0], chosen_points[:, 1]], kind="stable")
    g_index, p_index = chosen_points[heaviest_last].T
    _blend_discs(out, samples[g_index, p_index] - 0.5, radius[g_index, p_index],
                 [colours[g] for g in g_index.tolist()], opacity[g_index, p_index], outline=(0, 0, 0))
    return out


def _to_fixed(xy: np.ndarray) -> np.ndarray:
    """(..., 2) continuous canvas coordinates -> OpenCV's fixed-point pixel-centre integers."""
    return np.round((xy - 0.5) * (1 << _SHIFT)).astype(np.int64)


def _blend_discs(canvas: np.ndarray, centres: np.ndarray, radii: np.ndarray, colours: list,
                 alphas: np.ndarray, outline=None) -> None:
    """Filled discs, in order (later ones on top), in place: (K, 2) centres in canvas
    pixel-centre coordinates, (K,) radii (px) and opacities, K BGR colours, an optional outline.

    An opaque disc is drawn straight onto the canvas; a translucent one is blended over its
    bounding box only, so drawing stays cheap on large canvases. The integer geometry of all
    discs is formed in numpy at once.
    """
    fixed = np.round(centres * (1 << _SHIFT)).astype(np.int64).tolist()
    fixed_radii = np.maximum(1, np.round(radii * (1 << _SHIFT))).astype(np.int64).tolist()
    reach = np.ceil(radii).astype(np.int64) + 2
    corner = np.trunc(centres).astype(np.int64)
    low = np.maximum(0, corner - reach[:, None])
    high = np.minimum([canvas.shape[1], canvas.shape[0]], corner + reach[:, None] + 2)
    local = np.round((centres - low) * (1 << _SHIFT)).astype(np.int64).tolist()
    for centre, r, colour, alpha, (x0, y0), (x1, y1), inside in zip(
            fixed, fixed_radii, colours, alphas.tolist(), low.tolist(), high.tolist(), local):
        if alpha >= 1.0:  # opaque: straight onto the canvas
            cv2.circle(canvas, centre, r, colour, -1, cv2.LINE_AA, _SHIFT)
            if outline is not None:
                cv2.circle(canvas, centre, r, outline, 1, cv2.LINE_AA, _SHIFT)
            continue
        if x0 >= x1 or y0 >= y1:
            continue
        roi = canvas[y0:y1, x0:x1]  # only the disc's bounding box is blended
        layer = roi.copy()
        cv2.circle(layer, inside, r, colour, -1, cv2.LINE_AA, _SHIFT)
        if outline is not None:
            cv2.circle(layer, inside, r, outline, 1, cv2.LINE_AA, _SHIFT)
        cv2.addWeighted(layer, alpha, roi, 1 - alpha, 0, dst=roi)


def draw_marker(canvas: np.ndarray, xy, scale=(1.0, 1.0), colour=(255, 255, 255),
                in_place: bool = False) -> np.ndarray:
    """A cross (with a dark outline, visible on any background) at image point ``xy``, on a copy
    of the canvas, or on the canvas itself with ``in_place`` (a caller that owns a fresh canvas
    saves a full-frame copy)."""
    out = canvas if in_place else canvas.copy()
    unit = _unit(out)
    size = 7 * unit
    sx, sy = _pair(scale)
    x, y = xy[0] * sx, xy[1] * sy
    for width, col in ((3 * unit, (0, 0, 0)), (unit, colour)):
        for (ax, ay), (bx, by) in (((x - size, y), (x + size, y)), ((x, y - size), (x, y + size))):
            cv2.line(out, _fixed((ax, ay)), _fixed((bx, by)), col, width, cv2.LINE_AA, _SHIFT)
    return out


def draw_cell(canvas: np.ndarray, probe, layer, cell, groups=None, scale=(1.0, 1.0), grid: bool = True,
              in_place: bool = False) -> np.ndarray:
    """One cell of a probed layer as every view draws it: the groups' sampling points
    (``draw_samples``), the regular grid ghosted with arrows to the samples unless ``grid`` is
    False, and a cross on the cell centre (``draw_marker``).

    ``probe``: a ``dcnv3.probe.Probe``; ``layer``: one of its ``LayerRecord``s; ``cell``: (row, col).
    """
    cell = tuple(cell)
    out = draw_samples(canvas, probe.sampling_locations(layer, cell), layer.weights[cell],
                       probe.regular_locations(layer, cell) if grid else None, groups, scale, in_place=in_place)
    return draw_marker(out, probe.cell_centre(layer, cell), scale, in_place=True)


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
    sx, sy = _pair(scale)
    origin = probe.cell_centre(record, (0, 0))  # image px
    step = record.stride * record.layer_stride / probe.letterbox.ratio  # image px between cells
    # canvas pixel-centre coordinate of cell c: (origin + c * step) * s - 0.5
    matrix = np.array([[step * sx, 0, origin[0] * sx - 0.5], [0, step * sy, origin[1] * sy - 0.5]])
    return cv2.warpAffine(colours, matrix, (canvas_shape[1], canvas_shape[0]),
                          flags=cv2.INTER_LINEAR if smooth else cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
