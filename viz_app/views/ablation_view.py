"""The Ablation view's computation and pictures (pure: numpy / dcnv3 in, tables, BGR canvases and
JSON out; no gradio): does the model rely on each deformable layer's offsets or weights?

``AblationCache.ablation(analyser, registry, analysis)`` runs ``dcnv3.analysis.ablation.run_ablation`` once
per (image content, model, network input size), under the analyser's ``model_lock`` (an override
is visible to every forward of the probe's inference copy), on the image the analysis probed; the
detections at the analysis' confidence / IoU are a query on the cached runs
(``AblationRun.compare``), so a threshold change never reruns anything.

``overlay`` draws one variant against the model's own detections: kept boxes that stayed put thin
green, kept boxes that moved (IoU < ``MOVED_IOU``) as the model's box (white) and the variant's
(orange) joined centre to centre, lost boxes red, gained boxes cyan; a legend strip on top.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from dcnv3.analysis.ablation import AblationRun, ImageAblation, run_ablation
from dcnv3.draw.overlay import line_width
from viz_app.state.cache import LRUCache
from viz_app.views.render import make_canvas

__all__ = [
    "AblationCache",
    "MOVED_IOU",
    "COLOURS",
    "table_rows",
    "variant_choices",
    "default_variant",
    "overlay",
    "summary_markdown",
    "EXPLANATION",
]

MOVED_IOU = 0.9  # a kept box whose IoU with the model's own is below this is drawn as moved
# BGR colours of the overlay's classes of boxes.
COLOURS = {
    "kept": (80, 200, 80),
    "baseline": (255, 255, 255),
    "moved": (0, 150, 255),
    "lost": (40, 40, 230),
    "gained": (255, 220, 0),
}
EXPLANATION = (
    "**Does the model rely on its deformation?** The model is rerun with one deformable layer's offsets forced to "
    "its regular K x K grid (**grid**), or its modulation weights forced uniform, each group's mean (**uniform**), "
    "and then with every layer at once. Each rerun's detections are matched to the model's own: same class and "
    "IoU >= 0.5, pairs taken greedily, highest IoU first. **kept** / **lost** / **gained** count the matched, the "
    "model's unmatched and the rerun's unmatched boxes; **mean IoU** and **mean score change** (rerun - model) "
    "are over the kept pairs. The picture shows the chosen rerun: "
    f"green kept in place, white -> orange moved (IoU < {MOVED_IOU}), red lost, cyan gained."
)


class AblationCache:
    """The app's ablation runs, one ``AblationRun`` per (image key, model name, imgsz), the last
    ``size`` kept (a run holds only the head outputs of its 13 forwards: about 1 MB at 640 px)."""

    def __init__(self, size: int = 8):
        self._runs: LRUCache[tuple, AblationRun] = LRUCache(size)
        self.computed = 0  # how many ablation runs were actually computed (tests check the cache)

    def run(self, analyser, registry, analysis) -> AblationRun:
        """The cached runs of ``analysis``' image, model and input size (computed on a miss).
        Raises ValueError for a model without deformable layers."""
        key = (analysis.image.key, analysis.model_name, analysis.imgsz)
        cached = self._runs.get(key)
        if cached is not None:
            return cached
        max_det = analysis.probe.thresholds[2] if analysis.probe.thresholds else 300

        def compute() -> AblationRun:
            model = registry.load(analysis.model_name)
            self.computed += 1
            return run_ablation(model.yolo, analysis.image.bgr, imgsz=analysis.imgsz, max_det=max_det)

        with analyser.model_lock:  # another request may have computed it meanwhile: the cache looks again
            return self._runs.get_or_compute(key, compute)

    def ablation(self, analyser, registry, analysis) -> ImageAblation:
        """Every variant against the model's own detections at the analysis' thresholds."""
        return self.run(analyser, registry, analysis).compare(analysis.conf, analysis.iou)


def _number(value: float, digits: int, signed: bool = False) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def table_rows(ablation: ImageAblation) -> list[dict]:
    """The view's table: one row per variant, numbers as text ("-" where nothing was kept)."""
    return [
        {
            "rerun with": row["layer"],
            "change": row["kind"],
            "model's boxes": row["baseline"],
            "rerun's boxes": row["detections"],
            "kept": row["kept"],
            "lost": row["lost"],
            "gained": row["gained"],
            "mean IoU": _number(row["mean_iou"], 3),
            "mean score change": _number(row["mean_score_change"], 3, True),
        }
        for row in ablation.rows()
    ]


def variant_choices(ablation: ImageAblation) -> list[str]:
    return [result.variant.name for result in ablation.results]


def default_variant(ablation: ImageAblation) -> str | None:
    """The variant shown first: the one that changes the detections most (lost + gained, then the
    lowest mean IoU, then the largest score drop); None without variants."""
    if not ablation.results:
        return None

    def change(result):
        iou = result.mean_iou if not math.isnan(result.mean_iou) else 0.0
        score = result.mean_score_change if not math.isnan(result.mean_score_change) else 0.0
        return (-(result.lost + result.gained), iou, score)

    return min(ablation.results, key=change).variant.name


def summary_markdown(ablation: ImageAblation, name: str) -> str:
    result = ablation.result(name)
    return (
        f"**{name}**: of the model's {len(ablation.baseline)} detections {result.kept} kept, {result.lost} "
        f"lost; {result.gained} gained; mean IoU {_number(result.mean_iou, 3)}, mean score change "
        f"{_number(result.mean_score_change, 3, True)} (conf {ablation.conf}, NMS IoU {ablation.iou}, "
        f"network input {ablation.imgsz})"
    )


def _box(canvas, box, scale, colour, width):
    sx, sy = scale
    x1, y1, x2, y2 = (int(round(v)) for v in (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
    cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, width, cv2.LINE_AA)
    return x1, y1, x2, y2


def _label(canvas, text, corner, colour, unit):
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.45 * unit
    (w, h), base = cv2.getTextSize(text, font, size, max(1, unit // 2))
    x, y = corner[0], max(corner[1], h + base + 2)
    cv2.rectangle(canvas, (x, y - h - base - 2), (x + w + 4, y), colour, -1)
    cv2.putText(canvas, text, (x + 2, y - base), font, size, (0, 0, 0), max(1, unit // 2), cv2.LINE_AA)


def _legend(width: int, unit: int) -> np.ndarray:
    """A white strip ``width`` wide with a swatch and a name per box class, wrapped onto more rows
    when they do not fit in one."""
    font, size, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.45 * unit, max(1, unit // 2)
    items = (
        ("kept", "kept in place"),
        ("baseline", "model's box"),
        ("moved", f"moved (IoU < {MOVED_IOU})"),
        ("lost", "lost"),
        ("gained", "gained"),
    )
    row_height, swatch = 22 * unit, 16 * unit
    places, x, row = [], 6 * unit, 0
    for key, text in items:
        item_width = swatch + 4 * unit + cv2.getTextSize(text, font, size, thickness)[0][0]
        if x + item_width > width and x > 6 * unit:
            x, row = 6 * unit, row + 1
        places.append((key, text, x, row * row_height))
        x += item_width + 16 * unit
    strip = np.full(((row + 1) * row_height, width, 3), 255, np.uint8)
    for key, text, x, top in places:
        corner, far = (x, top + 5 * unit), (x + swatch, top + 17 * unit)
        if key == "baseline":  # a white swatch needs a rim to show on white
            cv2.rectangle(strip, corner, far, (90, 90, 90), 1)
        else:
            cv2.rectangle(strip, corner, far, COLOURS[key], -1)
        cv2.putText(
            strip, text, (x + swatch + 4 * unit, top + 15 * unit), font, size, (30, 30, 30), thickness, cv2.LINE_AA
        )
    return strip


def overlay(image: np.ndarray, ablation: ImageAblation, name: str, scale=None) -> np.ndarray:
    """One variant's boxes against the model's, over ``image`` (the BGR (H, W, 3) image the
    ablation ran on) at ``scale`` (default ``render.display_scale``), with a legend on top:
    a BGR (legend + H', W', 3) uint8 canvas."""
    canvas, scale = make_canvas(image, scale)
    unit = line_width(canvas)
    result = ablation.result(name)
    baseline, variant = ablation.baseline, result.detections
    for (before, after), iou in zip(result.matching.pairs, result.matching.ious):
        if iou >= MOVED_IOU:
            _box(canvas, baseline.boxes[before], scale, COLOURS["kept"], unit)
            continue
        a = _box(canvas, baseline.boxes[before], scale, COLOURS["baseline"], unit)
        b = _box(canvas, variant.boxes[after], scale, COLOURS["moved"], 2 * unit)
        centre = lambda box: ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)  # noqa: E731
        cv2.line(canvas, centre(a), centre(b), COLOURS["moved"], unit, cv2.LINE_AA)
        _label(
            canvas,
            f"IoU {iou:.2f} {variant.scores[after] - baseline.scores[before]:+.2f}",
            (b[0], b[3] + 16 * unit),
            COLOURS["moved"],
            unit,
        )
    for index in result.matching.lost:
        x1, y1, _, _ = _box(canvas, baseline.boxes[index], scale, COLOURS["lost"], 2 * unit)
        _label(canvas, f"lost {baseline.label(int(index))}", (x1, y1 - 2), COLOURS["lost"], unit)
    for index in result.matching.gained:
        x1, y1, _, _ = _box(canvas, variant.boxes[index], scale, COLOURS["gained"], 2 * unit)
        _label(canvas, f"gained {variant.label(int(index))}", (x1, y1 - 2), COLOURS["gained"], unit)
    return np.vstack([_legend(canvas.shape[1], max(1, unit)), canvas])
