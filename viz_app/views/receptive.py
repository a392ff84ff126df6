"""Receptive fields for the app: which model to compare with, a cached pair of fields, and pictures
(pure: numpy / dcnv3 in, BGR canvases and JSON out; no gradio).

A field is drawn as a heat map of |d target / d input| (normalised by its 99.9th percentile, square
root for visibility) over the dimmed image, with the contours of the smallest regions holding
50 % (white) and 90 % (cyan) of its mass and a cross at the target. Two fields (a model and its
comparison) go side by side with their 50 % / 90 % areas in the panel titles.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dcnv3.analysis import receptive_field as rf
from dcnv3.draw.overlay import draw_marker, line_width
from viz_app.state.cache import LRUCache
from viz_app.views.render import make_canvas

__all__ = [
    "AUTO_TWIN",
    "NO_COMPARISON",
    "twin_name",
    "FieldRequest",
    "FieldCache",
    "field_panel",
    "side_by_side",
    "pair_picture",
    "pair_payload",
    "compute_pair",
    "field_label",
    "title_strip",
    "title_height",
    "fallback_layers",
    "CONTOUR_COLOURS",
]

AUTO_TWIN = "plain twin (auto)"
NO_COMPARISON = "none"
CONTOUR_COLOURS = {0.5: (255, 255, 255), 0.9: (255, 230, 0)}  # BGR: white, cyan
PANEL_SIDE = 640  # each panel's long side on the canvas


def twin_name(model_name: str, names: list[str]) -> str | None:
    """The plain twin of a model among ``names``: the same name without a "dcnv3-" / "dcnv3_"
    prefix (``dcnv3-yolov8n.pt`` -> ``yolov8n.pt``, the bundled pair), else None."""
    lowered = model_name.lower()
    for prefix in ("dcnv3-", "dcnv3_"):
        if lowered.startswith(prefix):
            candidate = model_name[len(prefix) :]
            if candidate in names:
                return candidate
    return None


def fallback_layers(runner) -> list[str]:
    """Layers to offer for models without DCNv3: the top-level backbone C2f outputs at P3-P5
    (``model.4``, ``model.6``, ``model.8`` in YOLOv8), where the DCNv3 model has its DCNv3 layers."""
    modules = dict(runner.named_modules())
    return [name for name in ("model.4", "model.6", "model.8") if name in modules]


@dataclass(frozen=True)
class FieldRequest:
    """One field to compute: on which image (its content key) and model, for which target.

    ``kind`` "cell": the output of ``module`` at the cell under processed-image point ``xy``;
    "detection": ``box`` (xyxy processed px) and ``class_id``; "anchor": ``anchor`` and ``class_id``.
    """

    image_key: str
    model_name: str
    imgsz: int
    kind: str
    module: str | None = None
    xy: tuple | None = None
    box: tuple | None = None
    class_id: int | None = None
    anchor: int | None = None


class FieldCache:
    """Computes receptive fields through ``dcnv3.analysis.receptive_field`` and keeps the last few
    (a field costs a forward and a backward pass; revisiting a point should not)."""

    def __init__(self, size: int = 16):
        self.size = size
        self._cache: LRUCache[FieldRequest, rf.ReceptiveField] = LRUCache(size)

    @property
    def computed(self) -> int:
        """How many fields were actually computed (tests check the cache)."""
        return self._cache.misses

    def get(self, yolo, image_bgr: np.ndarray, request: FieldRequest) -> rf.ReceptiveField:
        return self._cache.get_or_compute(request, lambda: _compute(yolo, image_bgr, request))


def _compute(yolo, image_bgr: np.ndarray, request: FieldRequest) -> rf.ReceptiveField:
    if request.kind == "cell":
        return rf.receptive_field(yolo, image_bgr, xy=request.xy, module=request.module, imgsz=request.imgsz)
    if request.kind == "detection":
        return rf.receptive_field(yolo, image_bgr, detection=(request.box, request.class_id), imgsz=request.imgsz)
    if request.kind == "anchor":
        return rf.receptive_field(yolo, image_bgr, anchor=(request.anchor, request.class_id), imgsz=request.imgsz)
    raise ValueError(f"unknown target kind {request.kind!r}")


def _requests(image, imgsz, primary, secondary, layer, xy, detection):
    """FieldRequests for the primary model and its comparison (see ``compute_pair``)."""
    p_name, p_model = primary
    if detection is not None:
        box, class_id = detection
        first = FieldRequest(image.key, p_name, imgsz, "detection", box=tuple(map(float, box)), class_id=int(class_id))
        return first, None
    runner = rf.gradient_network(p_model.yolo)
    if secondary is not None:
        name, twin = rf.twin_modules(runner, rf.gradient_network(secondary[1].yolo), layer)
        second = FieldRequest(image.key, secondary[0], imgsz, "cell", module=twin, xy=tuple(map(float, xy)))
    else:
        name, second = rf.target_module(runner, layer), None
    return FieldRequest(image.key, p_name, imgsz, "cell", module=name, xy=tuple(map(float, xy))), second


def compute_pair(
    cache: FieldCache, image, imgsz: int, primary, secondary=None, layer: str | None = None, xy=None, detection=None
) -> list:
    """[field of the primary model, field of the secondary model or None] for one target.

    Args:
        cache: the ``FieldCache``.
        image: ``viz_app.state.models.LoadedImage`` (fields are computed on its processed ``bgr``).
        imgsz: network input size (the Analysis' ``imgsz``).
        primary, secondary: ``(model name, LoadedModel)``; secondary None for no comparison.
        layer, xy: cell target: a layer of the primary model and a processed-image point (x, y);
            the secondary reads the matching module (``dcnv3.analysis.receptive_field.twin_modules``).
        detection: (box xyxy processed px, class id) of a primary detection instead: the secondary
            is read at the same anchor and class.
    Raises ValueError with a one-line reason (unknown layer, a point off the input, no match).
    """
    first, second = _requests(image, imgsz, primary, secondary, layer, xy, detection)
    fields = [cache.get(primary[1].yolo, image.bgr, first)]
    if secondary is not None:
        if second is None:  # detection target: the secondary's score at the primary's anchor
            anchor = fields[0].target
            second = FieldRequest(
                image.key, secondary[0], imgsz, "anchor", anchor=int(anchor["anchor"]), class_id=int(anchor["class"])
            )
        fields.append(cache.get(secondary[1].yolo, image.bgr, second))
    else:
        fields.append(None)
    return fields


def field_panel(image: np.ndarray, field: rf.ReceptiveField, title: str, side: int = PANEL_SIDE) -> np.ndarray:
    """One field drawn over the image: a BGR canvas (long side ``side``) with a title strip on top.

    The heat map is the field's share per pixel over its 99.9th percentile, square-rooted (the
    tail stays visible), coloured with inferno and blended in proportion to its strength over
    the dimmed image; contours bound the 50 % and 90 % mass regions.
    """
    scale = side / max(image.shape[:2])
    canvas, scale = make_canvas(image, (scale, scale))
    heat = cv2.resize(field.heatmap, (canvas.shape[1], canvas.shape[0]), interpolation=cv2.INTER_LINEAR)
    top = float(np.quantile(field.heatmap, 0.999)) or float(field.heatmap.max()) or 1.0
    strength = np.sqrt(np.clip(heat / top, 0, 1))
    colours = cv2.applyColorMap((strength * 255).astype(np.uint8), cv2.COLORMAP_INFERNO).astype(np.float32)
    alpha = (0.15 + 0.75 * strength)[..., None]
    dimmed = canvas.astype(np.float32) * 0.55
    out = np.clip(dimmed * (1 - alpha) + colours * alpha, 0, 255).astype(np.uint8)
    unit = line_width(out)
    for fraction, mask in zip(field.fractions, field.masks):
        resized = cv2.resize(mask.astype(np.uint8), (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(resized, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        colour = CONTOUR_COLOURS.get(round(fraction, 2), (200, 200, 200))
        cv2.drawContours(out, contours, -1, (0, 0, 0), 3 * unit, cv2.LINE_AA)
        cv2.drawContours(out, contours, -1, colour, unit + 1, cv2.LINE_AA)
    out = draw_marker(out, field.target["centre"], scale, colour=(80, 255, 80))
    # OpenCV's Hershey fonts are ASCII only: "px^2", "-".
    areas = "   ".join(
        f"{int(round(f * 100))}% of the mass in {a:,.0f} px^2" for f, a in zip(field.fractions, field.areas)
    )
    return np.vstack([title_strip(out.shape[1], [title, areas]), out])


_LINE_HEIGHT = 22


def title_height(lines: int) -> int:
    """Height (px) of a ``title_strip`` of that many lines."""
    return _LINE_HEIGHT * lines + 8


def title_strip(width: int, lines: list[str]) -> np.ndarray:
    """(title_height(len(lines)), width, 3) white BGR strip with the lines of text (first in bold)."""
    line_h = _LINE_HEIGHT
    strip = np.full((title_height(len(lines)), width, 3), 255, np.uint8)
    for n, text in enumerate(lines):
        cv2.putText(
            strip,
            text,
            (8, line_h * (n + 1) - 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.55 if n == 0 else 0.5,
            (20, 20, 20),
            1 if n else 2,
            cv2.LINE_AA,
        )
    return strip


def side_by_side(panels: list[np.ndarray], gap: int = 12) -> np.ndarray:
    """Panels (BGR) left to right on white, top-aligned, ``gap`` px apart."""
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    out = np.full((height, width, 3), 255, np.uint8)
    x = 0
    for panel in panels:
        out[: panel.shape[0], x : x + panel.shape[1]] = panel
        x += panel.shape[1] + gap
    return out


def pair_picture(image: np.ndarray, names: list[str], fields: list, gap: int = 12) -> np.ndarray:
    """The fields of ``names`` (None entries skipped) as titled ``field_panel``s side by side (BGR)."""
    return side_by_side(
        [
            field_panel(image, field, field_label(name, field))
            for name, field in zip(names, fields)
            if field is not None
        ],
        gap,
    )


def field_label(name: str, field: rf.ReceptiveField) -> str:
    """Panel title: model, module (or score) and cell."""
    target = field.target
    if target["kind"] == "detection":
        return f"{name}: class {target['class']} score {target['value']:.2f} at anchor {target['anchor']}"
    return f"{name}: {target['module']} cell ({target['cell'][0]}, {target['cell'][1]}), stride {target['stride']}"


def pair_payload(names: list[str], fields: list, pixel_scale=(1.0, 1.0)) -> dict:
    """JSON for the API and the UI: per model, its target and the 50 % / 90 % areas, in
    original-image px and px^2 (``pixel_scale``: (sx, sy) processed px per original px, as
    ``LoadedImage.scale``)."""
    sx, sy = (pixel_scale, pixel_scale) if np.isscalar(pixel_scale) else pixel_scale
    models = []
    for name, field in zip(names, fields):
        if field is None:
            continue
        summary = field.summary()
        summary["areas_px2"] = {k: round(v / (sx * sy), 2) for k, v in summary["areas_px2"].items()}
        summary["centre"] = [summary["centre"][0] / sx, summary["centre"][1] / sy]
        if "box" in summary:
            summary["box"] = [v / (sx if n % 2 == 0 else sy) for n, v in enumerate(summary["box"])]
        models.append({"model": name, **summary})
    payload = {"models": models}
    if len(models) == 2:
        a, b = (m["areas_px2"]["50%"] for m in models)
        payload["area_ratio_50"] = round(a / b, 4) if b else None
    return payload
