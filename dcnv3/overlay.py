"""Small, composable OpenCV drawing functions for probe results (numpy BGR in, numpy BGR out).

Used by ``python -m dcnv3 inspect`` and by the app's static overlays. Points are drawn with
sub-pixel precision (OpenCV ``shift``) so that a sample at x = 10.5 lands on pixel 10's centre.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

__all__ = ["group_colours", "draw_detections", "draw_sampling_points", "draw_cell_marker"]

_SHIFT = 4  # fixed-point bits for sub-pixel drawing
_SCALE = 1 << _SHIFT


def group_colours(groups: int) -> list[tuple[int, int, int]]:
    """A distinct BGR colour per group (evenly spaced hues, bright enough on photos)."""
    colours = []
    for g in range(groups):
        r, gr, b = colorsys.hsv_to_rgb((g / max(groups, 1) + 0.08) % 1.0, 0.85, 1.0)
        colours.append((int(b * 255), int(gr * 255), int(r * 255)))
    return colours


def _fixed(xy) -> tuple[int, int]:
    # Continuous coordinate x maps to OpenCV pixel-centre coordinate x - 0.5.
    return int(round((xy[0] - 0.5) * _SCALE)), int(round((xy[1] - 0.5) * _SCALE))


def draw_detections(image: np.ndarray, detections, highlight: int | None = None) -> np.ndarray:
    """Boxes and labels of a ``Detections`` on a copy of ``image`` (BGR uint8)."""
    out = image.copy()
    thickness = max(1, round(min(out.shape[:2]) / 400))
    for index in range(len(detections)):
        x1, y1, x2, y2 = (int(round(v)) for v in detections.boxes[index])
        colour = (0, 255, 255) if index == highlight else (60, 200, 60)
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, thickness + (index == highlight))
        label = detections.label(index)
        scale = 0.4 * thickness
        (w, h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(out, (x1, max(0, y1 - h - 4)), (x1 + w + 2, max(h + 4, y1)), colour, -1)
        cv2.putText(out, label, (x1 + 1, max(h + 1, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return out


def draw_sampling_points(image: np.ndarray, locations: np.ndarray, weights: np.ndarray,
                         regular: np.ndarray | None = None, groups: list[int] | None = None,
                         radius: float = 4.0) -> np.ndarray:
    """Sampling points of one cell on a copy of ``image``.

    Args:
        locations: (G, P, 2) image pixels (x, y); weights: (G, P) softmax weights.
        regular: (G, P, 2) zero-offset grid positions: ghosted, with an arrow to each sample.
        groups: which groups to draw (default all). A point's radius grows with its weight
            relative to the uniform 1/P.
    """
    out = image.copy()
    num_groups, points, _ = locations.shape
    colours = group_colours(num_groups)
    chosen = range(num_groups) if groups is None else groups
    for g in chosen:
        for p in range(points):
            relative = float(weights[g, p]) * points  # 1 = uniform weight
            r = max(1.5, radius * np.sqrt(relative))
            if regular is not None:
                cv2.circle(out, _fixed(regular[g, p]), int(2 * _SCALE), (200, 200, 200), 1,
                           cv2.LINE_AA, _SHIFT)
                cv2.line(out, _fixed(regular[g, p]), _fixed(locations[g, p]), colours[g], 1,
                         cv2.LINE_AA, _SHIFT)
            cv2.circle(out, _fixed(locations[g, p]), int(r * _SCALE), colours[g], -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(out, _fixed(locations[g, p]), int(r * _SCALE), (0, 0, 0), 1, cv2.LINE_AA, _SHIFT)
    return out


def draw_cell_marker(image: np.ndarray, centre_xy, size: float = 6.0) -> np.ndarray:
    """A white cross on the queried cell's centre."""
    out = image.copy()
    x, y = centre_xy
    for (ax, ay), (bx, by) in (((x - size, y), (x + size, y)), ((x, y - size), (x, y + size))):
        cv2.line(out, _fixed((ax, ay)), _fixed((bx, by)), (255, 255, 255), 2, cv2.LINE_AA, _SHIFT)
    return out
