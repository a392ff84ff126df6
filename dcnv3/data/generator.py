"""Scene composition, the YOLO dataset writer and the demo video sequence.

Why one module (over 400 lines): scene composition, the dataset writer and the video sequence draw
from the same seeded generators; together they keep every dataset reproducible from its seed.

A scene is a textured background, a few unlabelled distractors, 1-8 objects of the seven classes in
:data:`~dcnv3.data.shapes.CLASS_NAMES` painted one over the other (later objects occlude earlier
ones), sometimes thin distractors over the objects, then photometric augmentation. Labels are the
tight axis-aligned boxes of what stays *visible* of each object.

Conventions: images are BGR uint8 (H, W, 3); boxes are float32 (K, 4) ``x1, y1, x2, y2`` in
continuous pixel coordinates (pixel ``i`` spans ``[i, i+1)``, so a box around pixels ``c0..c1``
inclusive has ``x1 = c0`` and ``x2 = c1 + 1``); classes are int64 (K,).

Determinism: every image draws all of its randomness from its own ``numpy.random.Generator``, seeded
from ``(seed, split, index)`` (see :func:`image_rng`); nothing touches global random state, so the
output is byte-identical for any number of worker processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from dcnv3.data.backgrounds import THIN_CLUTTER, clutter, hsv_colour, luma, make_background, value_noise
from dcnv3.data.shapes import (
    CLASS_NAMES,
    Geometry,
    Patch,
    extent,
    frame_window,
    outline_band,
    perspective_jitter,
    place,
    rasterise,
    sample_geometry,
    to_frame,
)

GENERATOR_VERSION = "1"  # bump whenever the same seed would produce different images
MIN_OBJECT_PX = 12.0  # smallest object size (longest canonical extent, pixels)
MAX_OBJECT_FRACTION = 0.6  # largest object size, as a fraction of the image side
MAX_OBJECTS = 8
MIN_VISIBLE_FRACTION = 0.35  # objects hidden (occluded or out of frame) beyond this go unlabelled
MIN_BOX_PX = 6  # ... as do objects whose visible box has its longer side below this
MIN_BOX_SIDE_PX = 2  # ... or its shorter side below this
MAX_OVERHANG = 0.4  # at most this fraction of an object's extent may leave the image
_COVERED = 0.5  # a pixel belongs to an object's visible mask at >= 50 % coverage
_JPEG_QUALITY = 95  # of the written dataset images (distinct from the JPEG augmentation)


# ----------------------------------------------------------------------------- randomness


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of image ``index`` of ``split``: a pure function of its arguments.

    The split name is mixed in through CRC-32 (stable across processes, unlike ``hash``), so the
    train and val streams differ even for the same index.
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]))


def sample_size(rng: np.random.Generator, image_side: int) -> float:
    """Object size in pixels, log-uniform in [MIN_OBJECT_PX, MAX_OBJECT_FRACTION * image_side]:
    small, medium and large objects are all common."""
    hi = max(MAX_OBJECT_FRACTION * image_side, MIN_OBJECT_PX)
    return float(np.exp(rng.uniform(np.log(MIN_OBJECT_PX), np.log(hi))))


# ----------------------------------------------------------------------------- appearance


@dataclass(frozen=True)
class Appearance:
    """How an object is painted.

    Attributes:
        fill: (3,) float32 BGR base colour.
        shade: (2,) float32 brightness gradient (relative change per object size along x and y);
            zeros for a flat fill.
        texture: amplitude of a multiplicative noise texture (0 for none).
        outline: (3,) float32 BGR colour of an inner rim, or None.
        outline_width: rim width in pixels.
    """

    fill: np.ndarray
    shade: np.ndarray
    texture: float
    outline: np.ndarray | None
    outline_width: int


def contrasting_colour(
    rng: np.random.Generator, reference_luma: float, min_contrast: float = 60.0, tries: int = 16
) -> np.ndarray:
    """(3,) float32 BGR random colour whose luma differs from ``reference_luma`` by >= min_contrast.

    Rejection sampling keeps the hue free; after ``tries`` misses it falls back to black or white,
    whichever is further away. The number of draws depends only on the rng, so it stays deterministic.
    """
    for _ in range(tries):
        colour = hsv_colour(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.1, 1.0))
        if abs(float(luma(colour)) - reference_luma) >= min_contrast:
            return colour
    return np.full(3, 0.0 if reference_luma > 127.5 else 255.0, np.float32)


def sample_appearance(
    rng: np.random.Generator, background_luma: float, size: float, texture: bool = True, outline_p: float = 0.3
) -> Appearance:
    """A random :class:`Appearance` that stands out against a background of the given mean luma."""
    fill = contrasting_colour(rng, background_luma)
    shade = rng.uniform(-0.4, 0.4, 2).astype(np.float32) if rng.random() < 0.35 else np.zeros(2, np.float32)
    tex = float(rng.uniform(0.1, 0.3)) if texture and rng.random() < 0.15 else 0.0
    outline, width = None, 0
    if rng.random() < outline_p:
        outline = contrasting_colour(rng, float(luma(fill)), min_contrast=80.0)
        width = int(np.clip(round(size * rng.uniform(0.03, 0.08)), 1, 4))
    return Appearance(fill, shade, tex, outline, width)


def _fill_field(rng, appearance: Appearance, region: tuple, centre: tuple, size: float) -> np.ndarray:
    """(h, w, 3) float32 BGR paint for the object's interior over an image region: base colour x
    shading x texture.

    Args:
        region: ``(rows, cols)`` slices of the image to paint (bounded, non-negative).
        centre: object centre ``(cx, cy)`` in image coordinates; shading is relative to it.
    """
    rows, cols = region
    h, w = rows.stop - rows.start, cols.stop - cols.start
    gain = np.ones((h, w), np.float32)
    if appearance.shade.any():
        y, x = np.mgrid[rows, cols].astype(np.float32) + 0.5
        gain += (appearance.shade[0] * (x - centre[0]) + appearance.shade[1] * (y - centre[1])) / size
    if appearance.texture > 0:
        cell = float(np.clip(size / 4.0, 3.0, 40.0))
        gain += appearance.texture * (value_noise(rng, h, w, octaves=2, cell=cell) - 0.5) * 2.0
    return np.clip(appearance.fill * gain[..., None], 0, 255)


# ----------------------------------------------------------------------------- compositing


@dataclass
class _SceneObject:
    """An object drawn on the canvas: its class, full coverage area (before occlusion and frame
    clipping) and its still-visible coverage, (H, W) float32, reduced as later layers cover it."""

    class_id: int
    area: float
    visible: np.ndarray


def composite(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """In place ``canvas = canvas * (1 - alpha) + colour * alpha``.

    Args:
        canvas: (H, W, 3) float32 BGR (may be a view of a region of a larger image).
        alpha: (H, W) float32 coverage in [0, 1].
        colour: (3,) or (H, W, 3) float32 BGR.
    """
    a = alpha[..., None]
    canvas *= 1.0 - a
    canvas += a * colour


def composite_layer(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """:func:`composite` of a full-frame layer (H, W) with a (3,) colour, restricted to the box of
    its non-zero coverage: most distractors touch a small part of the image."""
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if len(rows):
        region = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        composite(canvas[region], alpha[region], colour)


def occlude(objects: list, alpha: np.ndarray) -> None:
    """A new layer with coverage ``alpha`` hides that fraction of every earlier object."""
    for obj in objects:
        obj.visible *= 1.0 - alpha


def paint_object(
    rng, canvas: np.ndarray, patch: Patch, appearance: Appearance, centre: tuple, size: float
) -> np.ndarray:
    """Paint a rasterised object (fill, then optional rim) onto ``canvas`` in place.

    Only the image region under the patch is touched, which keeps small objects cheap.

    Returns:
        (H, W) float32 coverage of the object in the frame (the rim lies inside it).
    """
    h, w = canvas.shape[:2]
    alpha = to_frame(patch, h, w)
    window = frame_window(patch, h, w)
    if window is None:
        return alpha
    region, inside = window
    composite(canvas[region], alpha[region], _fill_field(rng, appearance, region, centre, size))
    if appearance.outline is not None:
        band = outline_band(patch.alpha, appearance.outline_width)[inside]
        composite(canvas[region], band, appearance.outline)
    return alpha


def _mean_luma_under(canvas: np.ndarray, patch: Patch) -> float:
    """Coverage-weighted mean luma of the canvas under a patch: the object's local background
    (the whole image's mean luma if the patch covers no image pixel)."""
    window = frame_window(patch, *canvas.shape[:2])
    weight = patch.alpha[window[1]] if window is not None else None
    if weight is None or weight.sum() <= 0:
        return float(luma(canvas).mean())
    return float((luma(canvas[window[0]]) * weight).sum() / weight.sum())


def _choose_centre(rng, placed_at_origin: list, shape: tuple, occupied: np.ndarray, tries: int = 3) -> tuple:
    """Centre for a shape: inside the image up to :data:`MAX_OVERHANG`, preferring (best of
    ``tries``) spots whose bounding box overlaps already-drawn objects least, so occlusion stays
    partial rather than total."""
    h, w = shape
    x_min, y_min, x_max, y_max = extent(placed_at_origin)
    ew, eh = x_max - x_min, y_max - y_min
    best, best_overlap = None, np.inf
    for _ in range(tries):
        cx = rng.uniform(-x_min - MAX_OVERHANG * ew, w - x_max + MAX_OVERHANG * ew)
        cy = rng.uniform(-y_min - MAX_OVERHANG * eh, h - y_max + MAX_OVERHANG * eh)
        xs, xe = int(np.clip(cx + x_min, 0, w)), int(np.clip(np.ceil(cx + x_max), 0, w))
        ys, ye = int(np.clip(cy + y_min, 0, h)), int(np.clip(np.ceil(cy + y_max), 0, h))
        window = occupied[ys:ye, xs:xe]
        overlap = float(window.mean()) if window.size else 0.0
        if overlap < best_overlap:
            best, best_overlap = (cx, cy), overlap
    return best


def _add_random_object(rng, canvas: np.ndarray, objects: list, occupied: np.ndarray) -> _SceneObject:
    """Sample, place and paint one object; earlier objects lose what it covers."""
    h, w = canvas.shape[:2]
    class_id = int(rng.integers(len(CLASS_NAMES)))
    size = sample_size(rng, min(h, w))
    geometry = sample_geometry(rng, class_id, size)
    angle, homography = rng.uniform(0.0, 2.0 * np.pi), perspective_jitter(rng)
    cx, cy = _choose_centre(rng, place(geometry, 0.0, 0.0, size, angle, homography), (h, w), occupied)
    patch = rasterise(place(geometry, cx, cy, size, angle, homography))
    appearance = sample_appearance(rng, _mean_luma_under(canvas, patch), size)
    alpha = paint_object(rng, canvas, patch, appearance, (cx, cy), size)
    occlude(objects, alpha)
    np.maximum(occupied, alpha, out=occupied)
    return _SceneObject(class_id, float(patch.alpha.sum()), alpha)


def visible_labels(objects: list) -> tuple:
    """Boxes, classes and masks of the objects that stay visible enough.

    An object is kept if at least :data:`MIN_VISIBLE_FRACTION` of its coverage is visible and the
    box of its visible mask (pixels >= 50 % covered) is at least :data:`MIN_BOX_PX` long and
    :data:`MIN_BOX_SIDE_PX` wide.

    Returns:
        boxes (K, 4) float32 xyxy pixels, classes (K,) int64, masks (K, H, W) bool.
    """
    boxes, classes, masks = [], [], []
    for obj in objects:
        if obj.area <= 0 or obj.visible.sum() < MIN_VISIBLE_FRACTION * obj.area:
            continue
        mask = obj.visible >= _COVERED
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not len(rows):
            continue
        x1, x2, y1, y2 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
        if max(x2 - x1, y2 - y1) < MIN_BOX_PX or min(x2 - x1, y2 - y1) < MIN_BOX_SIDE_PX:
            continue
        boxes.append((x1, y1, x2, y2))
        classes.append(obj.class_id)
        masks.append(mask)
    shape = objects[0].visible.shape if objects else (0, 0)
    return (
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(classes, np.int64),
        np.asarray(masks, bool).reshape(-1, *shape),
    )


# ----------------------------------------------------------------------------- augmentation


def augment_image(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Photometric augmentation of a float32 (H, W, 3) BGR image in [0, 255] -> uint8.

    Hue/saturation shift, brightness/contrast, mild Gaussian blur, Gaussian noise and occasional
    JPEG re-compression. Nothing moves, so labels stay valid (blur spreads edges by < 1 px).
    """
    img = np.clip(image, 0, 255)
    if rng.random() < 0.5:
        hsv = cv2.cvtColor(img / 255.0, cv2.COLOR_BGR2HSV)  # float path: H in degrees, S, V in [0, 1]
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-20, 20)) % 360.0
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.7, 1.3), 0, 1)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR) * 255.0
    if rng.random() < 0.8:
        img = (img - 128.0) * rng.uniform(0.75, 1.25) + 128.0 + rng.uniform(-25, 25)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0))
    if rng.random() < 0.5:
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(1.0, 8.0)
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if rng.random() < 0.15:
        _ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 70))])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out


# ----------------------------------------------------------------------------- scenes


def render_scene(rng: np.random.Generator, size: int = 320, return_masks: bool = False) -> tuple:
    """One random training image and its labels.

    Args:
        rng: the only source of randomness (see :func:`image_rng`).
        size: side of the square image in pixels (>= 32).
        return_masks: also return the visible masks the boxes were taken from.

    Returns:
        ``(image, boxes, classes)`` or, with ``return_masks``, ``(image, boxes, classes, masks)``:
        image (size, size, 3) uint8 BGR; boxes (K, 4) float32 xyxy in continuous pixel coordinates,
        each the tight box of its mask; classes (K,) int64 indices into ``CLASS_NAMES``;
        masks (K, size, size) bool, the object's pixels visible (>= 50 % covered) in the final image.
        K may be 0 when every object ended up hidden.
    """
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    canvas = make_background(rng, size, size).astype(np.float32)
    for alpha, colour in clutter(rng, size, size, int(rng.integers(1, 6))):
        composite_layer(canvas, alpha, colour)
    objects, occupied = [], np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        objects.append(_add_random_object(rng, canvas, objects, occupied))
    if rng.random() < 0.35:  # a few thin strokes across the objects, hiding slivers of them
        for alpha, colour in clutter(rng, size, size, int(rng.integers(1, 3)), THIN_CLUTTER):
            composite_layer(canvas, alpha, colour)
            occlude(objects, alpha)
    boxes, classes, masks = visible_labels(objects)
    image = augment_image(rng, canvas)
    return (image, boxes, classes, masks) if return_masks else (image, boxes, classes)


def yolo_label_text(boxes: np.ndarray, classes: np.ndarray, width: int, height: int) -> str:
    """YOLO label file contents: one ``cls cx cy w h`` line per box, normalised, 6 decimals."""
    lines = []
    for (x1, y1, x2, y2), c in zip(boxes.tolist(), classes.tolist()):
        lines.append(
            f"{c} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
            f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"
        )
    return "".join(line + "\n" for line in lines)


# ----------------------------------------------------------------------------- dataset writer

_SPLITS = ("train", "val")
_OUTPUTS = ("images", "labels", "data.yaml", "recipe.json")


def _write_one(task: tuple) -> None:
    """Render and write image ``index`` of ``split``; a pure function of the task tuple."""
    out_dir, split, index, seed, imgsz = task
    image, boxes, classes = render_scene(image_rng(seed, split, index), imgsz)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {split} image {index}")
    stem = f"{index:06d}"
    (Path(out_dir) / "images" / split / f"{stem}.jpg").write_bytes(buf.tobytes())
    (Path(out_dir) / "labels" / split / f"{stem}.txt").write_text(yolo_label_text(boxes, classes, imgsz, imgsz))


def _prepare_output(out: Path, overwrite: bool) -> None:
    """Create the directory layout; refuse to mix with (or, with ``overwrite``, remove) a previous
    dataset. Stale images or ultralytics ``*.cache`` files would otherwise silently survive."""
    existing = [out / name for name in _OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds a dataset ({', '.join(p.name for p in existing)}); pass overwrite=True to replace it"
        )
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for kind in ("images", "labels"):
        for split in _SPLITS:
            (out / kind / split).mkdir(parents=True, exist_ok=True)


def _default_workers() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_tasks(tasks: list, workers: int) -> None:
    """Run ``_write_one`` over ``tasks``, in this process or in a pool of ``workers`` processes.

    Each task seeds its own generator, so the order and the worker a task lands on don't matter.
    Fork is preferred where available: workers start instantly and inherit the loaded photos.
    """
    if workers <= 1:
        for task in tasks:
            _write_one(task)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    chunk = max(1, len(tasks) // (workers * 8))
    with ctx.Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_one, tasks, chunksize=chunk):
            pass


def write_dataset(
    out_dir,
    n_train: int,
    n_val: int,
    seed: int = 0,
    imgsz: int = 320,
    workers: int | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Generate a procedural detection dataset in the standard ultralytics layout.

    Writes ``out_dir/images/{train,val}/NNNNNN.jpg`` (JPEG quality 95), ``out_dir/labels/{train,val}/
    NNNNNN.txt`` (``cls cx cy w h``, normalised, 6 decimals; empty when no object stayed visible),
    ``out_dir/data.yaml`` (absolute ``path``, ``train: images/train``, ``val: images/val``, ``names``)
    and, last, ``out_dir/recipe.json`` (generator version, seed, counts, imgsz, class names), so a
    dataset without a recipe is an interrupted one.

    Image ``i`` of a split is rendered from ``image_rng(seed, split, i)``: the same arguments give
    byte-identical files whatever ``workers`` is, and val images come from a different stream than
    train images.

    Args:
        out_dir: output directory (created if needed).
        n_train, n_val: number of images per split.
        seed: non-negative integer; different seeds give different datasets.
        imgsz: side of the square images in pixels (>= 32).
        workers: processes to render with; default: the CPUs available to this process.
        overwrite: replace a dataset already in ``out_dir`` (only its images/, labels/, data.yaml and
            recipe.json are removed); otherwise an existing one raises ``FileExistsError``.

    Returns:
        Path of the written ``data.yaml`` (absolute), ready for ``YOLO.train(data=...)``.
    """
    if n_train < 0 or n_val < 0 or seed < 0:
        raise ValueError("n_train, n_val and seed must be non-negative")
    if imgsz < 32:
        raise ValueError(f"imgsz must be >= 32, got {imgsz}")
    out = Path(out_dir).expanduser().resolve()
    _prepare_output(out, overwrite)
    tasks = [
        (str(out), split, i, int(seed), int(imgsz)) for split, n in zip(_SPLITS, (n_train, n_val)) for i in range(n)
    ]
    workers = _default_workers() if workers is None else int(workers)
    _run_tasks(tasks, max(1, min(workers, len(tasks))))

    data = {"path": str(out), "train": "images/train", "val": "images/val", "names": dict(enumerate(CLASS_NAMES))}
    data_yaml = out / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    recipe = {
        "generator": "dcnv3.data",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "imgsz": int(imgsz),
        "class_names": list(CLASS_NAMES),
        "image_format": "jpg",
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    return data_yaml


# ----------------------------------------------------------------------------- video


@dataclass(frozen=True)
class _Track:
    """A shape moving through the demo video along smooth periodic paths.

    centre(t) = centre + amplitude * sin(2 pi freq t + phase) per axis; size(t) = size *
    exp(zoom * sin(2 pi zoom_freq t + zoom_phase)); angle(t) = angle + spin * t.
    """

    geometry: Geometry
    homography: np.ndarray
    appearance: Appearance
    centre: np.ndarray
    amplitude: np.ndarray
    freq: np.ndarray
    phase: np.ndarray
    size: float
    zoom: float
    zoom_freq: float
    zoom_phase: float
    angle: float
    spin: float

    def pose(self, t: float) -> tuple:
        """(cx, cy, size, angle) at time ``t`` seconds."""
        cx, cy = self.centre + self.amplitude * np.sin(2 * np.pi * self.freq * t + self.phase)
        size = self.size * np.exp(self.zoom * np.sin(2 * np.pi * self.zoom_freq * t + self.zoom_phase))
        return float(cx), float(cy), float(size), self.angle + self.spin * t


def _sample_track(rng: np.random.Generator, class_id: int, width: int, height: int, background_luma: float) -> _Track:
    """A random :class:`_Track` of class ``class_id`` whose centre stays inside the frame and whose
    speed stays below ~6 px per frame at 15 fps."""
    dims = np.array([width, height], np.float64)
    size = float(np.exp(rng.uniform(np.log(20.0), np.log(0.4 * min(width, height)))))
    zoom = float(rng.uniform(0.15, 0.5))
    geometry = sample_geometry(rng, class_id, size * np.exp(-zoom))
    amplitude = rng.uniform(0.05, 0.25, 2) * dims
    centre = rng.uniform(amplitude + 0.05 * dims, dims - amplitude - 0.05 * dims)
    appearance = sample_appearance(rng, background_luma, size, texture=False, outline_p=0.6)
    return _Track(
        geometry=geometry,
        homography=perspective_jitter(rng),
        appearance=appearance,
        centre=centre,
        amplitude=amplitude,
        freq=rng.uniform(0.03, 0.1, 2),
        phase=rng.uniform(0, 2 * np.pi, 2),
        size=size,
        zoom=zoom,
        zoom_freq=float(rng.uniform(0.04, 0.12)),
        zoom_phase=float(rng.uniform(0, 2 * np.pi)),
        angle=float(rng.uniform(0, 2 * np.pi)),
        spin=float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.9)),
    )


def video_frames(seed: int = 0, size: tuple = (480, 320), seconds: float = 12.0, fps: float = 15, n_objects: int = 5):
    """A short deterministic demo sequence: shapes drifting, growing, shrinking and spinning over a
    slowly panning textured background.

    Every track has a different class (``n_objects <= 7``), so a class index identifies an object
    across frames. Labels follow the same visibility rules as :func:`render_scene`; an object that
    is mostly hidden in a frame is absent from that frame's labels.

    Args:
        seed: non-negative integer.
        size: ``(width, height)`` of the frames in pixels.
        seconds, fps: duration and frame rate; ``round(seconds * fps)`` frames.
        n_objects: number of moving shapes, 1..7.

    Yields:
        ``(frame, boxes, classes)``: frame (height, width, 3) uint8 BGR; boxes (K, 4) float32 xyxy
        pixels; classes (K,) int64.
    """
    if not 1 <= n_objects <= len(CLASS_NAMES):
        raise ValueError(f"n_objects must be in 1..{len(CLASS_NAMES)}, got {n_objects}")
    width, height = int(size[0]), int(size[1])
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(b"video")]))
    margin = int(0.2 * max(width, height))  # room for the background to pan
    background = make_background(rng, height + margin, width + margin).astype(np.float32)
    pan_phase, pan_period = rng.uniform(0, 2 * np.pi, 2), seconds * rng.uniform(1.0, 2.0, 2)
    bg_luma = float(luma(background).mean())
    tracks = [
        _sample_track(rng, int(c), width, height, bg_luma)
        for c in rng.choice(len(CLASS_NAMES), n_objects, replace=False)
    ]
    for f in range(int(round(seconds * fps))):
        t = f / fps
        # Sub-pixel pan along a slow sinusoid; warpAffine interpolates, so the motion is smooth.
        ox, oy = margin / 2 * (1 + 0.9 * np.sin(2 * np.pi * t / pan_period + pan_phase))
        shift = np.float32([[1, 0, -ox], [0, 1, -oy]])
        canvas = cv2.warpAffine(background, shift, (width, height), flags=cv2.INTER_LINEAR)
        objects = []
        for track in tracks:
            cx, cy, s, angle = track.pose(t)
            patch = rasterise(place(track.geometry, cx, cy, s, angle, track.homography))
            alpha = paint_object(None, canvas, patch, track.appearance, (cx, cy), s)
            occlude(objects, alpha)
            objects.append(_SceneObject(track.geometry.class_id, float(patch.alpha.sum()), alpha))
        boxes, classes, _ = visible_labels(objects)
        yield np.clip(np.round(canvas), 0, 255).astype(np.uint8), boxes, classes
