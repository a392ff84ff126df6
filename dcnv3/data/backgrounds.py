"""Textured backgrounds and unlabelled clutter for the procedural detection dataset.

Backgrounds: multi-octave value noise, linear/radial gradients, stripes, checkerboards and random
crops of the two photos that ship with ultralytics (``bus.jpg``, ``zidane.jpg``). Clutter: thin curvy
scribbles, long straight hairlines, soft-edged blobs, speckle clusters and small glyphs; none of them
looks like one of the object classes (no sharp-edged filled shape, no straight 2+ px wide bar).

Images are BGR uint8 (H, W, 3); coverage masks are float32 (H, W) in [0, 1]; colours are float32
(3,) BGR in [0, 255]. All randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import colorsys
import functools

import cv2
import numpy as np

_SHIFT = 4  # fixed-point fraction bits for cv2 drawing calls: sub-pixel positions for smooth strokes
# Letters that resemble no class outline (no o/c/l/i/x/t/+ look-alikes).
_GLYPHS = "aBdEfGhkmNpRsuwzQ3579"


# ----------------------------------------------------------------------------- colours


def luma(bgr) -> np.ndarray:
    """Rec. 601 luma of BGR colour(s) in [0, 255]; works on (..., 3) arrays."""
    bgr = np.asarray(bgr, np.float32)
    return 0.114 * bgr[..., 0] + 0.587 * bgr[..., 1] + 0.299 * bgr[..., 2]


def hsv_colour(h: float, s: float, v: float) -> np.ndarray:
    """(3,) float32 BGR in [0, 255] from hue, saturation, value in [0, 1]."""
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return np.array([b, g, r], np.float32) * 255.0


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 BGR colour: any hue, mostly muted to fairly saturated."""
    return hsv_colour(rng.random(), rng.uniform(0.0, 0.8), rng.uniform(0.1, 1.0))


def palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) float32 BGR colours scattered around a random base colour.

    The spread is random too, so some backgrounds are nearly flat and others strongly contrasted.
    """
    base = random_colour(rng)
    spread = rng.uniform(20.0, 110.0)
    return np.clip(base + rng.normal(0.0, spread, (n, 3)), 0, 255).astype(np.float32)


def colourise(t: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Map a scalar field t (H, W) in [0, 1] through a piecewise-linear colour ramp.

    Args:
        t: (H, W) float32 in [0, 1].
        colours: (k, 3) float32 BGR, k >= 2, placed evenly along [0, 1].

    Returns:
        (H, W, 3) float32 BGR.
    """
    stops = np.linspace(0.0, 1.0, len(colours))
    return np.stack([np.interp(t, stops, colours[:, c]) for c in range(3)], axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------- scalar fields


def _stretch(x: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1] (float32); a constant field becomes all zeros."""
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def value_noise(
    rng: np.random.Generator, h: int, w: int, octaves: int = 4, cell: float | None = None, persistence: float = 0.5
) -> np.ndarray:
    """(h, w) float32 multi-octave value noise in [0, 1].

    Each octave is a grid of uniform random values, one per ``cell`` pixels, upsampled bicubically
    and shifted by a random sub-cell offset (so grid lines don't align between octaves); the cell
    halves and the amplitude is multiplied by ``persistence`` from one octave to the next.
    """
    cell = rng.uniform(24.0, 128.0) if cell is None else float(cell)
    total = np.zeros((h, w), np.float32)
    amplitude = 1.0
    for _ in range(octaves):
        gh, gw = int(h / cell) + 3, int(w / cell) + 3
        grid = rng.random((gh, gw), dtype=np.float32)
        up = cv2.resize(grid, (int(round(gw * cell)), int(round(gh * cell))), interpolation=cv2.INTER_CUBIC)
        oy, ox = rng.integers(0, int(cell) + 1, 2)
        total += amplitude * up[oy : oy + h, ox : ox + w]
        amplitude *= persistence
        cell = max(cell / 2.0, 2.0)
    return _stretch(total)


def _rotated_coords(rng: np.random.Generator, h: int, w: int) -> tuple:
    """Pixel-centre coordinates (u, v), each (h, w) float32, in a frame rotated by a random angle."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    a = rng.uniform(0.0, np.pi)
    return x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)


def gradient_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 in [0, 1]: a linear ramp at a random angle or a radial one from a random centre."""
    if rng.random() < 0.6:
        u, _ = _rotated_coords(rng, h, w)
        return _stretch(u)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    return _stretch(np.hypot(x - cx, y - cy))


def stripes_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 in [0, 1]: parallel stripes, from soft sinusoids to nearly hard edges."""
    u, _ = _rotated_coords(rng, h, w)
    period = rng.uniform(6.0, 60.0)
    sharpness = rng.uniform(1.0, 8.0)
    return np.clip(0.5 + 0.5 * sharpness * np.sin(2 * np.pi * u / period), 0, 1).astype(np.float32)


def checker_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 in [0, 1]: a rotated checkerboard with slightly softened edges."""
    u, v = _rotated_coords(rng, h, w)
    cell = rng.uniform(8.0, 64.0)
    s = np.sin(np.pi * u / cell) * np.sin(np.pi * v / cell)
    return np.clip(0.5 + 4.0 * s, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------- photos


@functools.lru_cache(maxsize=1)
def load_photos() -> tuple:
    """The photos shipped with ultralytics, as BGR uint8 arrays; an empty tuple if unavailable.

    Cached per process; the files never change, so every worker sees the same pixels.
    """
    try:
        from ultralytics.utils import ASSETS
    except ImportError:
        return ()
    photos = []
    for name in ("bus.jpg", "zidane.jpg"):
        img = cv2.imread(str(ASSETS / name), cv2.IMREAD_COLOR)
        if img is not None:
            photos.append(img)
    return tuple(photos)


def photo_crop(rng: np.random.Generator, h: int, w: int, photo: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32 BGR: a random crop of ``photo`` with the target's aspect ratio, rescaled to
    (h, w) and randomly flipped."""
    ph, pw = photo.shape[:2]
    max_ch = min(ph, pw * h / w)  # tallest crop with the target aspect that fits
    ch = max_ch * rng.uniform(0.25, 1.0)
    cw = ch * w / h
    y0, x0 = rng.uniform(0, ph - ch), rng.uniform(0, pw - cw)
    crop = photo[int(y0) : int(y0 + ch), int(x0) : int(x0 + cw)]
    shrink = crop.shape[0] > h
    img = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.15:
        img = img[::-1]
    return img.astype(np.float32)


# ----------------------------------------------------------------------------- backgrounds


def _kinds(photos: tuple) -> tuple:
    """(names, probabilities) of the background kinds available in this environment."""
    names = ["noise", "gradient", "stripes", "checker"]
    weights = [0.32, 0.14, 0.12, 0.1]
    if photos:
        names.append("photo")
        weights.append(0.32)
    weights = np.asarray(weights) / np.sum(weights)
    return names, weights


def make_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 BGR textured background.

    The kind is drawn from noise / gradient / stripes / checker / photo crop (photos only if
    ultralytics' assets are installed, so the output depends on that). A third of the time the
    result is shaded by a second, low-frequency noise field, so flat patterns get uneven lighting.
    """
    photos = load_photos()
    names, weights = _kinds(photos)
    kind = names[rng.choice(len(names), p=weights)]
    if kind == "photo":
        img = photo_crop(rng, h, w, photos[rng.integers(len(photos))])
    else:
        field = {
            "noise": lambda: value_noise(rng, h, w, octaves=int(rng.integers(2, 6))),
            "gradient": lambda: gradient_field(rng, h, w),
            "stripes": lambda: stripes_field(rng, h, w),
            "checker": lambda: checker_field(rng, h, w),
        }[kind]()
        img = colourise(field, palette(rng, int(rng.integers(2, 4))))
    if rng.random() < 0.35:
        shade = value_noise(rng, h, w, octaves=2, cell=rng.uniform(64.0, 200.0))
        img = img * (1.0 + rng.uniform(0.2, 0.6) * (shade[..., None] - 0.5))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- clutter


def _fixed(pts: np.ndarray) -> np.ndarray:
    """Float pixel-centre coordinates -> int32 fixed-point coordinates for cv2 drawing (shift=_SHIFT).

    cv2 puts integer coordinate v on the centre of pixel v, i.e. at continuous coordinate v + 0.5.
    """
    return np.round((np.asarray(pts) - 0.5) * (1 << _SHIFT)).astype(np.int32)


def _scribble(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A thin curvy stroke: a random walk whose heading drifts smoothly."""
    steps = int(rng.integers(15, 60))
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, 0.35, steps))
    step = rng.uniform(2.0, 6.0)
    start = rng.uniform((0, 0), (w, h))
    pts = start + np.cumsum(step * np.stack([np.cos(heading), np.sin(heading)], axis=1), axis=0)
    canvas = np.zeros((h, w), np.uint8)
    cv2.polylines(canvas, [_fixed(pts)], False, 255, int(rng.integers(1, 3)), cv2.LINE_AA, _SHIFT)
    return canvas


def _hairline(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A 1 px straight line across the whole image: far longer and thinner than any bar."""
    centre = rng.uniform((0, 0), (w, h))
    a = rng.uniform(0, np.pi)
    half = (h + w) * np.array([np.cos(a), np.sin(a)])
    canvas = np.zeros((h, w), np.uint8)
    start, end = _fixed(centre - half).tolist(), _fixed(centre + half).tolist()
    cv2.line(canvas, start, end, 255, 1, cv2.LINE_AA, _SHIFT)
    return canvas


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A soft-edged, irregular, semi-transparent blob (thresholded noise, blurred)."""
    r = int(rng.uniform(6, 0.2 * min(h, w)))
    field = value_noise(rng, 2 * r, 2 * r, octaves=2, cell=max(r / 2.0, 3.0))
    y, x = np.mgrid[0 : 2 * r, 0 : 2 * r].astype(np.float32) + 0.5
    falloff = 1.0 - np.hypot(x - r, y - r) / r  # > 0 inside the blob's disc
    blob = np.clip((field + falloff - 0.9) * 4.0, 0, 1)
    blob = cv2.GaussianBlur(blob, (0, 0), rng.uniform(1.5, 4.0)) * rng.uniform(0.35, 0.8)
    canvas = np.zeros((h, w), np.float32)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    ys, xs = max(cy - r, 0), max(cx - r, 0)
    ye, xe = min(cy + r, h), min(cx + r, w)
    canvas[ys:ye, xs:xe] = blob[ys - (cy - r) : ye - (cy - r), xs - (cx - r) : xe - (cx - r)]
    return (canvas * 255).astype(np.uint8)


def _speckle(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A loose cluster of tiny dots, like dirt or sensor noise."""
    n = int(rng.integers(10, 60))
    centre = rng.uniform((0, 0), (w, h))
    pts = centre + rng.normal(0.0, rng.uniform(5.0, 25.0), (n, 2))
    canvas = np.zeros((h, w), np.uint8)
    for p, r in zip(_fixed(pts), rng.uniform(0.5, 1.5, n)):
        cv2.circle(canvas, p.tolist(), int(round(r * (1 << _SHIFT))), 255, -1, cv2.LINE_AA, _SHIFT)
    return canvas


def _glyphs(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A few small characters in one of OpenCV's built-in Hershey vector fonts (nothing to download)."""
    text = "".join(rng.choice(list(_GLYPHS), int(rng.integers(1, 5))))
    font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX]))
    canvas = np.zeros((h, w), np.uint8)
    org = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    cv2.putText(canvas, text, org, font, rng.uniform(0.3, 0.9), 255, 1, cv2.LINE_AA)
    return canvas


_CLUTTER = {"scribble": _scribble, "hairline": _hairline, "blob": _blob, "speckle": _speckle, "glyphs": _glyphs}
THIN_CLUTTER = ("scribble", "hairline", "speckle")  # may be drawn over objects: they barely hide them


def clutter(rng: np.random.Generator, h: int, w: int, count: int, kinds=tuple(_CLUTTER)) -> list:
    """``count`` unlabelled distractors.

    Returns:
        list of ``(alpha (h, w) float32 coverage in [0, 1], colour (3,) float32 BGR)``.
    """
    layers = []
    for _ in range(count):
        kind = kinds[rng.integers(len(kinds))]
        alpha = _CLUTTER[kind](rng, h, w).astype(np.float32) / 255.0
        layers.append((alpha, random_colour(rng)))
    return layers
