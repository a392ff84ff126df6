"""Shape rasterisers: the seven object classes of the procedural detection dataset.

The classes are chosen for strongly different geometry (thin and elongated, hollow, convex, pointed,
concave) so that a deformable convolution has something to adapt its sampling offsets to.

Conventions used throughout ``dcnv3.data``:

* Image coordinates are continuous pixel coordinates, x to the right, y down. Pixel ``(row i, col j)``
  covers ``[j, j+1) x [i, i+1)``; its centre is ``(j + 0.5, i + 0.5)``.
* A shape is first described in a *canonical frame*: centred on the origin, its longest extent
  (before rotation) is 1. :func:`place` maps it into the image with a mild perspective warp, a uniform
  scale (``size`` pixels), a rotation and a translation.
* A shape is an ordered list of polygons; each polygon either adds coverage (``fill=True``) or
  erases it (``fill=False``, used for the hole of a ring and the bite of a crescent).
* Rasterised shapes are anti-aliased *coverage* masks: float32 in ``[0, 1]``, the fraction of each
  pixel the shape covers, estimated on a ``SUPERSAMPLE x SUPERSAMPLE`` grid of sub-pixel samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CLASS_NAMES = ("bar", "ring", "disc", "triangle", "cross", "crescent", "star")

SUPERSAMPLE = 4  # sub-pixel samples per pixel side; 16 samples give smooth, cheap edges
_SHIFT = 4  # fixed-point fraction bits for cv2.fillPoly vertices (1/16 of a sample)
MIN_STROKE_PX = 2.0  # thinnest part (bar width, ring wall, cross arm) at the smallest rendered size
_CIRCLE_VERTICES = 96  # polygon approximation of ellipses: < 0.1 px error at 200 px radius


@dataclass(frozen=True)
class Geometry:
    """A shape in its canonical frame.

    Attributes:
        class_id: index into :data:`CLASS_NAMES`.
        polygons: tuple of (N, 2) float64 arrays of (x, y) vertices, drawn in order.
        fills: one bool per polygon; True adds coverage, False erases it.
    """

    class_id: int
    polygons: tuple
    fills: tuple


@dataclass(frozen=True)
class Patch:
    """An anti-aliased coverage mask on a pixel-aligned window of the image.

    Attributes:
        alpha: (h, w) float32 coverage in [0, 1].
        x0, y0: integer image coordinates of the window's top-left pixel; ``alpha[r, c]`` is the
            coverage of image pixel ``(y0 + r, x0 + c)``. The window may extend past the image.
    """

    alpha: np.ndarray
    x0: int
    y0: int


# ----------------------------------------------------------------------------- canonical polygons


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = _CIRCLE_VERTICES) -> np.ndarray:
    """(n, 2) float64 vertices of an axis-aligned ellipse centred on (cx, cy)."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def rectangle(cx: float, cy: float, w: float, h: float) -> np.ndarray:
    """(4, 2) float64 vertices of an axis-aligned w x h rectangle centred on (cx, cy)."""
    return np.array(
        [[cx - w / 2, cy - h / 2], [cx + w / 2, cy - h / 2], [cx + w / 2, cy + h / 2], [cx - w / 2, cy + h / 2]]
    )


def _normalise(polygons: list) -> list:
    """Centre the bounding box of ``polygons`` on the origin and scale its longest side to 1."""
    pts = np.concatenate(polygons)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre, extent = (lo + hi) / 2, (hi - lo).max()
    return [(p - centre) / extent for p in polygons]


def _bar(rng: np.random.Generator, size_px: float) -> list:
    # Width never falls below MIN_STROKE_PX, so the tiniest bars are a little stubbier than 12:1.
    aspect = rng.uniform(4.0, 12.0)
    width = max(1.0 / aspect, MIN_STROKE_PX / size_px)
    return [(rectangle(0, 0, 1.0, width), True)]


def _ring(rng: np.random.Generator, size_px: float) -> list:
    squash = rng.uniform(0.6, 1.0)
    inner = rng.uniform(0.45, 0.8)
    # Wall thickness 0.5 * squash * (1 - inner) * size_px must stay >= MIN_STROKE_PX.
    inner = min(inner, 1.0 - MIN_STROKE_PX / (0.5 * squash * size_px))
    inner = max(inner, 0.3)  # keep a visible hole even when the wall would want to be thicker
    return [(ellipse(0, 0, 0.5, 0.5 * squash), True), (ellipse(0, 0, 0.5 * inner, 0.5 * squash * inner), False)]


def _disc(rng: np.random.Generator, size_px: float) -> list:
    return [(ellipse(0, 0, 0.5, 0.5 * rng.uniform(0.5, 1.0)), True)]


def _triangle(rng: np.random.Generator, size_px: float) -> list:
    # Equilateral vertex directions jittered by up to 20 degrees: varied but never a needle.
    angles = np.deg2rad(np.array([-90.0, 30.0, 150.0]) + rng.uniform(-20, 20, 3))
    radii = rng.uniform(0.75, 1.0, 3)
    tri = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    tri[:, 1] *= rng.uniform(0.6, 1.0)
    return [(p, True) for p in _normalise([tri])]


def _cross(rng: np.random.Generator, size_px: float) -> list:
    vertical_len = rng.uniform(0.7, 1.0)
    thick_h, thick_v = np.maximum(rng.uniform(0.15, 0.4, 2), MIN_STROKE_PX / size_px)
    # The arms meet near, not always exactly at, their middles: still a plus sign.
    off_x, off_y = rng.uniform(-0.08, 0.08, 2)
    return [
        (rectangle(0, off_y * vertical_len, 1.0, thick_h), True),
        (rectangle(off_x, 0, thick_v, vertical_len), True),
    ]


def _crescent(rng: np.random.Generator, size_px: float) -> list:
    r_in = rng.uniform(0.36, 0.48)
    # The bite's centre sits at +d; d + r_in > 0.5 makes it cut the rim (horns, not a ring), and the
    # widest part of the crescent, 0.5 + d - r_in, is kept between ~0.12 and ~0.6 of the size.
    widest = rng.uniform(max(1.0 - 2.0 * r_in + 0.06, MIN_STROKE_PX / size_px), 1.0 - 2.0 * r_in + 0.3)
    d = widest - 0.5 + r_in
    squash = rng.uniform(0.8, 1.0)
    return [(ellipse(0, 0, 0.5, 0.5 * squash), True), (ellipse(d, 0, r_in, r_in * squash), False)]


def _star(rng: np.random.Generator, size_px: float) -> list:
    points = int(rng.integers(5, 8))
    inner = rng.uniform(0.38, 0.55)
    t = rng.uniform(0, 2 * np.pi) + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    star = np.stack([r * np.cos(t), r * np.sin(t) * rng.uniform(0.75, 1.0)], axis=1)
    return [(p, True) for p in _normalise([star])]


_SAMPLERS = (_bar, _ring, _disc, _triangle, _cross, _crescent, _star)
assert len(_SAMPLERS) == len(CLASS_NAMES)


def sample_geometry(rng: np.random.Generator, class_id: int, size_px: float) -> Geometry:
    """Draw a random instance of class ``class_id`` in its canonical frame.

    Args:
        rng: the only source of randomness.
        class_id: index into :data:`CLASS_NAMES`.
        size_px: the smallest size (pixels, longest canonical extent) the shape will be drawn at;
            thin parts are widened so they stay at least :data:`MIN_STROKE_PX` wide there.
    """
    parts = _SAMPLERS[class_id](rng, float(size_px))
    return Geometry(int(class_id), tuple(p for p, _ in parts), tuple(f for _, f in parts))


# ----------------------------------------------------------------------------- placement


def perspective_jitter(rng: np.random.Generator, strength: float = 0.08) -> np.ndarray:
    """(3, 3) float64 homography of the canonical frame: the unit square's corners moved by up to
    ``strength`` (in canonical units) each; a mild out-of-plane tilt."""
    src = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]], np.float32)
    dst = src + rng.uniform(-strength, strength, src.shape).astype(np.float32)
    return cv2.getPerspectiveTransform(src, dst).astype(np.float64)


def place(
    geometry: Geometry, cx: float, cy: float, size: float, angle: float, homography: np.ndarray | None = None
) -> list:
    """Map a canonical shape into image coordinates.

    Order: homography (canonical frame) -> scale by ``size`` pixels -> rotate by ``angle`` radians
    (clockwise on screen, as y points down) -> translate to the centre ``(cx, cy)``.

    Returns:
        list of ``(polygon (N, 2) float64 image coordinates, fill bool)``.
    """
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, s], [-s, c]])  # the usual rotation matrix, transposed for row vectors
    placed = []
    for poly, fill in zip(geometry.polygons, geometry.fills):
        pts = poly
        if homography is not None:
            h = np.concatenate([pts, np.ones((len(pts), 1))], axis=1) @ homography.T
            pts = h[:, :2] / h[:, 2:3]
        placed.append((pts * size @ rot + (cx, cy), fill))
    return placed


def extent(placed: list) -> tuple:
    """(x_min, y_min, x_max, y_max) of the filled polygons of a placed shape, image coordinates."""
    pts = np.concatenate([p for p, fill in placed if fill])
    return (*pts.min(axis=0), *pts.max(axis=0))


# ----------------------------------------------------------------------------- rasterisation


def inset(poly: np.ndarray, d: float) -> np.ndarray:
    """(N, 2) polygon with every edge moved ``d`` inward (mitred corners), either orientation.

    Each vertex goes to the intersection of its two shifted edges:
    ``p + d * (n_prev + n_next) / (1 + n_prev . n_next)`` with unit inward normals ``n``.
    Only meant for ``d`` much smaller than the polygon's edges and thickness.
    """
    edges = np.roll(poly, -1, axis=0) - poly
    area2 = np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1])
    normals = np.sign(area2) * np.stack([-edges[:, 1], edges[:, 0]], axis=1)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    n_prev, n_next = np.roll(normals, 1, axis=0), normals
    denom = 1.0 + np.sum(n_prev * n_next, axis=1, keepdims=True)
    return poly + d * (n_prev + n_next) / np.maximum(denom, 1e-3)


def rasterise(placed: list, pad: int = 2) -> Patch:
    """Anti-aliased coverage of a placed shape on the smallest pixel window that holds it.

    Each pixel's coverage is the fraction of its ``SUPERSAMPLE x SUPERSAMPLE`` sub-pixel sample
    centres that lie inside the shape (erase polygons applied in order).

    Args:
        placed: output of :func:`place`.
        pad: extra pixels of zero coverage around the window, so later morphology (outlines) has
            room on every side.
    """
    x_min, y_min, x_max, y_max = extent(placed)
    x0, y0 = int(np.floor(x_min)) - pad, int(np.floor(y_min)) - pad
    w, h = int(np.ceil(x_max)) + pad - x0, int(np.ceil(y_max)) + pad - y0
    ss = SUPERSAMPLE
    canvas = np.zeros((h * ss, w * ss), np.uint8)
    for poly, fill in placed:
        # cv2 puts integer vertex v at the centre of sample v; sample k's centre is image coordinate
        # (k + 0.5) / ss, so image coordinate x maps to sample coordinate x * ss - 0.5.
        pts = (poly - (x0, y0)) * ss - 0.5
        # cv2.fillPoly also fills samples whose centre lies up to half a sample outside the polygon;
        # insetting by half a sample makes "centre inside" the rule, for fill and erase alike.
        pts = np.round(inset(pts, 0.5) * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 255 if fill else 0, lineType=cv2.LINE_8, shift=_SHIFT)
    # INTER_AREA at an exact integer factor is a box filter: the mean of each pixel's ss x ss samples.
    alpha = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return Patch(alpha, x0, y0)


def outline_band(alpha: np.ndarray, width: int) -> np.ndarray:
    """(h, w) float32 coverage of the inner rim of a shape, ``width`` pixels wide.

    The band lies inside the shape (coverage minus its erosion), so drawing an outline never grows
    the object's footprint or its bounding box.
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    eroded = cv2.erode(alpha, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return np.clip(alpha - eroded, 0.0, 1.0)


def frame_window(patch: Patch, height: int, width: int) -> tuple | None:
    """The part of the image a patch overlaps, as ``(image_slices, patch_slices)`` (each a
    ``(rows, cols)`` pair of slices), or None if the patch lies entirely outside the image."""
    ys, ye = max(patch.y0, 0), min(patch.y0 + patch.alpha.shape[0], height)
    xs, xe = max(patch.x0, 0), min(patch.x0 + patch.alpha.shape[1], width)
    if ys >= ye or xs >= xe:
        return None
    return ((slice(ys, ye), slice(xs, xe)), (slice(ys - patch.y0, ye - patch.y0), slice(xs - patch.x0, xe - patch.x0)))


def to_frame(patch: Patch, height: int, width: int) -> np.ndarray:
    """(height, width) float32 image-sized copy of a patch's coverage, clipped at the image border."""
    full = np.zeros((height, width), np.float32)
    window = frame_window(patch, height, width)
    if window is not None:
        full[window[0]] = patch.alpha[window[1]]
    return full
