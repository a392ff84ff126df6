"""What the browser needs to draw a deformable layer's sampling under the pointer, with no server
request while the pointer moves (the Sampling view's hover, ``viz_app/components/sampling_hover.js``).

Two parts, both plain JSON values:

* ``hover_state``: the component's value, a few KB, sent when the run, the detections picture
  or the layer changes: the token that names the run (``hover_token``), the picture's
  transforms, every layer's geometry (``layer_geometry``, a few hundred bytes each), the marks'
  style (the same constants ``dcnv3.draw.overlay`` draws with) and the name of the
  detections-only picture the hover draws over (so the clicked cell's marks do not show under
  the hovered ones).
* What the browser fetches once and keeps: a layer's arrays (``layer_arrays``: the record's
  offsets (H, W, G, P, 2) and weights (H, W, G, P) as their raw float32 bytes, little-endian, C
  order, base64) when it first shows that layer, and each detections picture
  (``base_picture``, a JPEG data URI) when it first draws over it.

Float32 is what the record holds, so the browser computes with the very numbers ``/sampling``
computes with: the same cell, and positions equal up to float64 rounding. Float16 would halve
the bytes but move a point by up to ~2^-11 of its offset: a quarter pixel for an offset of a few
cells at stride 32 on a large image, beyond the 0.01 px the hover is held to.

The browser repeats ``dcnv3.record.geometry``'s arithmetic in the same order (original px ->
processed px -> letterbox -> cell; cell + kernel point + offset -> feature index -> network input
-> processed px -> original px), so a point it draws is bit-for-bit the point ``/sampling``
returns for the same ``data-xy`` up to the last bit of a float64 sum.
"""

from __future__ import annotations

import base64
import hashlib

import numpy as np

from dcnv3.draw.overlay import (
    ARROW_CLEARANCE,
    ARROW_HEAD,
    GHOST_COLOUR,
    GHOST_OUTLINE,
    GRID_RING_RADIUS,
    MARKER_SIZE,
    POINT_RADIUS,
    group_colours,
    line_width,
)
from dcnv3.record.geometry import kernel_offsets
from dcnv3.record.weight_encoding import OPACITY_FLOOR, SIZE_RANGE, legend
from viz_app.views.render import jpeg_data_uri

__all__ = [
    "hover_token",
    "base_name",
    "base_picture",
    "layer_geometry",
    "layer_arrays",
    "arrays_request",
    "hover_state",
    "array_bytes",
    "mark_style",
]


def hover_token(image_key: str, model_name: str, imgsz: int) -> str:
    """The name of one model run for the browser's array requests (its arrays differ per image,
    model and network size; thresholds and the chosen detection do not change them)."""
    return hashlib.blake2b(f"{image_key}\0{model_name}\0{imgsz}".encode(), digest_size=12).hexdigest()


def base_name(analysis_key: tuple, highlight: int | None) -> list:
    """The name of one detections picture (a run at some thresholds, with one detection
    highlighted or none), as the browser asks for it (once each: ``base_picture``): the picture's
    key in ``AppContext.canvases`` (``Analysis.key`` and the highlight), as a JSON list."""
    return [*analysis_key, highlight]


def _css(bgr) -> str:
    return f"rgb({int(bgr[2])},{int(bgr[1])},{int(bgr[0])})"


def layer_geometry(record) -> dict:
    """One layer's geometry as ``dcnv3.record.geometry`` uses it, and how its weights are drawn.

    ``kernel_points``: the (P, 2) fixed kernel offsets (x, y) in feature cells, point order
    p = i*K + j (``geometry.kernel_offsets``); ``centre`` = dilation * (K - 1) // 2.
    """
    return {
        "name": record.name,
        "stage": record.stage,
        "grid": [int(record.grid[0]), int(record.grid[1])],
        "groups": int(record.groups),
        "points": int(record.points),
        "kernel": int(record.kernel),
        "dilation": int(record.dilation),
        "pad": int(record.pad),
        "stride": int(record.stride),
        "layer_stride": int(record.layer_stride),
        "offset_scale": float(record.offset_scale),
        "centre": (int(record.dilation) * (int(record.kernel) - 1)) // 2,
        "kernel_points": kernel_offsets(record.kernel, record.dilation, record.remove_center).tolist(),
        "weight_kind": record.weight_kind,
        "legend": legend(record.weight_kind),
        "colours": [_css(c) for c in group_colours(record.groups)],
    }


def _float32_base64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def array_bytes(record) -> int:
    """Bytes of one layer's arrays before base64 (which adds a third): 4 * H * W * G * P * 3."""
    height, width = record.grid
    return 4 * height * width * record.groups * record.points * 3


def layer_arrays(record) -> dict:
    """``{"layer", "offsets", "weights", "bytes"}``: the record's offsets (H, W, G, P, 2) and
    weights (H, W, G, P), float32 little-endian in C order, base64; ``bytes`` before base64."""
    return {
        "layer": record.name,
        "offsets": _float32_base64(record.offsets),
        "weights": _float32_base64(record.weights),
        "bytes": array_bytes(record),
    }


def base_picture(canvases, request) -> dict:
    """The browser's request for a detections picture, answered: ``request`` = {"base":
    ``base_name``}; ``canvases``: the detections canvases the Sampling view draws on
    (``AppContext.canvases``, (``Analysis.key``, highlight) -> (BGR canvas, scale)). Returns
    {"base", "picture": JPEG data URI, encoded as the served views are} or {"error": reason}."""
    name = request.get("base") if isinstance(request, dict) else None
    if not isinstance(name, list) or len(name) < 2:
        return {"error": "expected {base: [..., highlight]}"}
    try:
        entry = canvases.get((tuple(name[:-1]), name[-1]))
    except TypeError:  # an unhashable part: no such picture
        entry = None
    if entry is None:
        return {"error": "this picture is no longer cached on the server: choose the image again"}
    return {"base": name, "picture": jpeg_data_uri(entry[0])}


def arrays_request(probes, request) -> dict:
    """The browser's request for a layer's arrays, answered: ``request`` = {"token", "layer"};
    ``probes`` maps tokens to the runs' probes (``AppContext.hover_probes``). Returns
    ``layer_arrays`` of that layer, or {"error": reason}: a request that is not such a mapping,
    an unknown layer, or a run no longer cached (the browser says so; choosing the image again
    offers it anew)."""
    if not isinstance(request, dict):
        return {"error": "expected {token, layer}"}
    probe = probes.get(str(request.get("token")))
    if probe is None:
        return {"error": "this run is no longer cached on the server: choose the image again"}
    layer = request.get("layer")
    if layer not in [record.name for record in probe.layers]:
        return {"error": f"unknown layer {layer!r}"}
    return layer_arrays(probe.layer(layer))


def mark_style() -> dict:
    """The marks' sizes in line widths and colours (``dcnv3.draw.overlay``'s constants) and the
    weight rule's bounds (``dcnv3.record.weight_encoding``), for the browser's drawing."""
    return {
        "point_radius": POINT_RADIUS,
        "grid_ring_radius": GRID_RING_RADIUS,
        "arrow_head": ARROW_HEAD,
        "arrow_clearance": ARROW_CLEARANCE,
        "marker_size": MARKER_SIZE,
        "size_range": list(SIZE_RANGE),
        "opacity_floor": OPACITY_FLOOR,
        "ghost": _css(GHOST_COLOUR),
        "ghost_outline": _css(GHOST_OUTLINE),
    }


def hover_state(
    token: str,
    probe,
    layer: str | None,
    image_scale,
    original_shape,
    base: list,
    base_canvas: np.ndarray,
    canvas_scale,
) -> dict:
    """The hover's value: what the browser keeps for one run and the layer shown.

    Args:
        token: ``hover_token`` of the run (the browser asks for a layer's arrays by it).
        probe: the run's ``dcnv3.analysis.probe.Probe``; ``layer``: the layer shown (a name).
        image_scale: (sx, sy) processed px per original px (``LoadedImage.scale``).
        original_shape: (H, W) of the uploaded file.
        base: ``base_name`` of the detections-only picture, ``base_canvas`` (BGR (h, w, 3)
            uint8, the one the Sampling view's overlay is drawn on); ``canvas_scale``: its
            (sx, sy) px per processed px.
    """
    letterbox = probe.letterbox
    return {
        "token": token,
        "layer": layer,
        "layers": {record.name: layer_geometry(record) for record in probe.layers},
        "letterbox": {
            "ratio": float(letterbox.ratio),
            "pad": [float(letterbox.pad[0]), float(letterbox.pad[1])],
            "input_shape": [int(letterbox.input_shape[0]), int(letterbox.input_shape[1])],
        },
        "image_scale": [float(image_scale[0]), float(image_scale[1])],
        "processed_shape": [int(probe.image_shape[0]), int(probe.image_shape[1])],
        "original_shape": [int(original_shape[0]), int(original_shape[1])],
        "canvas_scale": [float(canvas_scale[0]), float(canvas_scale[1])],
        "canvas_shape": [int(base_canvas.shape[0]), int(base_canvas.shape[1])],
        "unit": line_width(base_canvas),
        "style": mark_style(),
        "base": base,
    }
