"""Pure render functions of the app: a probe and a BGR image in, a BGR image or a plotly figure out.

Why one module (over 400 lines): the app's renderers share the canvas scaling and the coordinate
conventions below; a split by view (fields, histograms) is the next step when it grows.

No gradio here: every view of the app is a call to one of these functions on a cached
``dcnv3.analysis.probe.Probe``, so re-rendering after a click never runs the model.

Coordinates. Probe coordinates are continuous image pixels: pixel i spans [i, i+1), its centre
is i + 0.5. Images are drawn on a *canvas*: the image resized by ``scale`` = (sx, sy) canvas px
per image px (``display_scale`` picks it so a canvas is 640-1280 px on its long side). Since
resizing maps pixel edges to pixel edges, image point (x, y) lies at canvas point (x * sx, y * sy).
The drawing itself is ``dcnv3.draw.overlay``'s annotators; the trace search is ``dcnv3.record.trace`` and the
field maps ``dcnv3.record.fields`` (pure functions of the probe's layer records, re-exported here).

DCNv3's point order within a group is p = i*K + j, with i walking x (columns) and j walking y
(rows); ``weight_matrix`` turns the P weights into the spatial KxK picture (row j, column i).

Weights are drawn by their kind (``LayerRecord.weight_kind``: softmax DCNv3, sigmoid DCNv2, free
DCNv4) through ``dcnv3.record.weight_encoding``, the one rule for sizes, opacities and hollow (negative)
marks; every view's legend or message states the kind (``weight_encoding.legend``).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import cv2
import numpy as np
import plotly.graph_objects as go

from dcnv3.analysis.probe import default_layer
from dcnv3.draw.overlay import (
    CaptionAnnotator,
    FieldAnnotator,
    MarkerAnnotator,
    TraceAnnotator,
    draw_cell,
    draw_detections,
    draw_marker,
    draw_samples,
    field_colours,
    group_colours,
    hollow_ring_width,
    image_to_canvas,
    point_style,
    scale_pair,
)
from dcnv3.record.fields import FIELDS, field_range, field_title, field_values
from dcnv3.record.geometry import box_centre, cell_step
from dcnv3.record.trace import TraceLevel, trace_through_layers
from dcnv3.record.weight_encoding import (
    KIND_NAMES,
    encode_weights,
    legend,
    legend_lines,
    path_weight_text,
    weight_meaning,
)
from viz_app.state.files import jpeg_bytes
from viz_app.views.figure_spec import FigureSpec

__all__ = [
    "display_scale",
    "make_canvas",
    "to_rgb",
    "draw_detections",
    "draw_samples",
    "draw_marker",
    "sampling_overlay",
    "sampling_figure",
    "weight_matrix",
    "weight_matrices_figure",
    "TraceLevel",
    "trace_through_layers",
    "trace_overlay",
    "FIELDS",
    "field_values",
    "field_overlay",
    "colour_bar",
    "legend_strip",
    "trace_caption",
    "health_histograms",
    "layer_choice_label",
    "image_to_canvas",
    "canvas_to_image",
    "SamplingView",
    "initial_query",
    "query_for_detection",
    "sampling_view",
    "point_style",
    "SIGNED_COLOURS",
    "cell_under",
    "outside_message",
    "jpeg_data_uri",
]

DISPLAY_MIN_SIDE = 640  # small images are enlarged (whole pixels) so points stay legible
DISPLAY_MAX_SIDE = 1280  # large ones shrunk: clicks re-render faster and the browser gets less


# -- canvas ------------------------------------------------------------------------------------------
def display_scale(shape) -> tuple[float, float]:
    """(sx, sy) canvas px per image px for an image of ``shape`` (H, W, ...).

    Images longer than ``DISPLAY_MAX_SIDE`` shrink to it; images shorter than ``DISPLAY_MIN_SIDE``
    grow by a whole factor (so each image pixel stays a block of pixels); others stay as they are.
    """
    height, width = int(shape[0]), int(shape[1])
    longest = max(height, width)
    if longest > DISPLAY_MAX_SIDE:
        factor = DISPLAY_MAX_SIDE / longest
        return max(1, round(width * factor)) / width, max(1, round(height * factor)) / height
    if longest < DISPLAY_MIN_SIDE:
        factor = float(math.ceil(DISPLAY_MIN_SIDE / longest))
        return factor, factor
    return 1.0, 1.0


def make_canvas(image: np.ndarray, scale=None) -> tuple[np.ndarray, tuple[float, float]]:
    """The image resized by ``scale`` (default ``display_scale``): (canvas, (sx, sy))."""
    sx, sy = scale_pair(display_scale(image.shape) if scale is None else scale)
    if (sx, sy) == (1.0, 1.0):
        return image.copy(), (1.0, 1.0)
    if sx == sy and sx > 1 and float(sx).is_integer():  # enlarging: each pixel becomes an exact block
        factor = int(sx)
        return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1), (sx, sy)
    size = (max(1, round(image.shape[1] * sx)), max(1, round(image.shape[0] * sy)))
    canvas = cv2.resize(image, size, interpolation=cv2.INTER_AREA if sx <= 1 else cv2.INTER_LINEAR)
    return canvas, (size[0] / image.shape[1], size[1] / image.shape[0])


def to_rgb(bgr: np.ndarray | None) -> np.ndarray | None:
    """A BGR canvas (H, W, 3) as the contiguous RGB array gradio's image components expect."""
    return None if bgr is None else np.ascontiguousarray(bgr[..., ::-1])


def canvas_to_image(xy, scale) -> np.ndarray:
    """(..., 2) canvas coordinates -> image coordinates (both continuous)."""
    return np.asarray(xy, dtype=np.float64) / np.asarray(scale_pair(scale))


# -- sampling view (drawing primitives live in dcnv3.draw.overlay) -----------------
def sampling_overlay(
    image: np.ndarray, probe, layer, cell, groups=None, highlight: int | None = None, scale=None, max_labels: int = 20
) -> tuple[np.ndarray, tuple[float, float]]:
    """The sampling view's picture: detections, the cell's samples in every chosen group, the
    regular grid ghosted, and a cross on the cell centre. Returns (canvas BGR, scale).

    ``layer`` is a ``LayerRecord`` or its name; ``cell`` (row, col) or None (detections only).
    """
    canvas, scale = make_canvas(image, scale)
    canvas = draw_detections(canvas, probe.detections, scale, highlight, max_labels)
    if layer is None or cell is None:
        return canvas, scale
    return draw_cell(canvas, probe, probe.record(layer), cell, groups, scale, in_place=True), scale


def _css_colour(bgr) -> str:
    return f"rgb({bgr[2]},{bgr[1]},{bgr[0]})"


def jpeg_data_uri(image: np.ndarray, quality: int = 92, full_colour: bool = True) -> str:
    """A BGR picture as a JPEG data URI (``viz_app.state.files.jpeg_bytes``), for a page to show
    without a file: the zoom's background, the hover's detections picture."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(image, quality, full_colour)).decode("ascii")


_FIGURE_STYLE = dict(
    template=None,
    paper_bgcolor="white",
    font=dict(family="sans-serif", size=12, color="#222"),
    hoverlabel=dict(bgcolor="white", font=dict(size=12)),
)


def sampling_figure(
    image: np.ndarray, probe, layer, cell, groups=None, max_background: int = 640, height: int = 520
) -> FigureSpec:
    """Interactive plotly view of one cell's samples, zoomed on the region they cover.

    The image crop is the background (axes in image px, y down); per group a marker trace (size
    and opacity by weight for the record's kind, ``dcnv3.record.weight_encoding``; negative weights as
    open circles) with hover: group, point p = i*K + j, (x, y), raw learned offset (dx, dy) in
    feature cells, the weight and what it means for its kind; the regular grid as grey rings,
    lines from grid to sample, and a cross on the cell centre. The title is the kind's legend.
    Returned as a ``FigureSpec`` (plain dicts: no plotly.py validation on a click).
    """
    record = probe.record(layer)
    locations = probe.sampling_locations(record, cell)  # (G, P, 2)
    regular = probe.regular_locations(record, cell)
    weights = record.weights[tuple(cell)]
    offsets = record.offsets[tuple(cell)]
    centre = probe.cell_centre(record, cell)
    num_groups, points, _ = locations.shape
    chosen = list(range(num_groups)) if groups is None else [g for g in groups if 0 <= g < num_groups]
    shown = np.concatenate([locations[chosen].reshape(-1, 2), regular[chosen].reshape(-1, 2), centre[None]])
    cell_px = cell_step(record, probe.letterbox)  # one cell in image px
    margin = max(1.5 * cell_px, 0.1 * float(np.ptp(shown, axis=0).max()), 4.0)
    lo, hi = shown.min(axis=0) - margin, shown.max(axis=0) + margin
    traces = []
    height_px, width_px = image.shape[:2]
    x0, y0 = int(max(0, math.floor(lo[0]))), int(max(0, math.floor(lo[1])))
    x1, y1 = int(min(width_px, math.ceil(hi[0]))), int(min(height_px, math.ceil(hi[1])))
    if x1 > x0 and y1 > y0:
        crop = image[y0:y1, x0:x1]
        factor = min(1.0, max_background / max(crop.shape[:2]))
        if factor < 1:
            crop = cv2.resize(
                crop,
                (max(1, round(crop.shape[1] * factor)), max(1, round(crop.shape[0] * factor))),
                interpolation=cv2.INTER_AREA,
            )
        dx, dy = (x1 - x0) / crop.shape[1], (y1 - y0) / crop.shape[0]
        # go.Image puts the centre of its first pixel at (x0, y0): crop pixel k spans [x0 + k*dx, +dx).
        traces.append(
            dict(
                type="image",
                source=jpeg_data_uri(crop, 88, full_colour=False),  # behind the marks: 4:2:0 will do
                x0=x0 + dx / 2,
                y0=y0 + dy / 2,
                dx=dx,
                dy=dy,
                hoverinfo="skip",
                name="image",
            )
        )
    colours = group_colours(num_groups)
    if chosen:
        traces.append(
            dict(
                type="scatter",
                x=regular[chosen, :, 0].ravel(),
                y=regular[chosen, :, 1].ravel(),
                mode="markers",
                name="regular grid",
                hoverinfo="skip",
                marker=dict(symbol="circle-open", size=9, color="rgb(215,215,215)", line=dict(width=2)),
            )
        )
    encoding = encode_weights(weights, record.weight_kind)
    radius, opacity = 8.0 * encoding.size, encoding.opacity
    kernel = record.kernel
    index = np.arange(points)
    if record.remove_center:  # the kernel position of point p skips the centre
        index = np.where(index >= (kernel * kernel - 1) // 2, index + 1, index)
    for g in chosen:
        segments = np.full((points, 3, 2), np.nan)
        segments[:, 0], segments[:, 1] = regular[g], locations[g]
        traces.append(
            dict(
                type="scatter",
                x=segments[..., 0].ravel(),
                y=segments[..., 1].ravel(),
                mode="lines",
                line=dict(color=_css_colour(colours[g]), width=1.5),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=f"g{g}",
                connectgaps=False,
            )
        )
        custom = np.stack(
            [
                np.full(points, g),
                np.arange(points),
                index // kernel,
                index % kernel,
                offsets[g, :, 0],
                offsets[g, :, 1],
                weights[g],
                encoding.relative[g],
            ],
            axis=1,
        )
        negative = encoding.negative[g]
        # Open circles are drawn with the marker colour at the line width: a ring a third of the radius thick.
        ring = np.array([hollow_ring_width(r) for r in radius[g]], dtype=np.float64)
        traces.append(
            dict(
                type="scatter",
                x=locations[g, :, 0],
                y=locations[g, :, 1],
                mode="markers",
                name=f"group {g}",
                legendgroup=f"g{g}",
                customdata=custom,
                text=[
                    weight_meaning(float(w), float(r), record.weight_kind)
                    for w, r in zip(weights[g], encoding.relative[g])
                ],
                marker=dict(
                    size=2 * radius[g],
                    color=_css_colour(colours[g]),
                    opacity=opacity[g],
                    symbol=np.where(negative, "circle-open", "circle").tolist(),
                    line=dict(color="black", width=np.where(negative, ring, 1.0)),
                ),
                hovertemplate=(
                    "group %{customdata[0]:d}, point %{customdata[1]:d} (i=%{customdata[2]:d}, "
                    "j=%{customdata[3]:d})<br>x=%{x:.1f} px, y=%{y:.1f} px<br>"
                    "dx=%{customdata[4]:.3f}, dy=%{customdata[5]:.3f} cells<br>"
                    "weight=%{customdata[6]:.3f} %{text}<extra></extra>"
                ),
            )
        )
    if record.weight_kind == "free":  # the legend explains the hollow marks even where none is negative
        traces.append(
            dict(
                type="scatter",
                x=[None],
                y=[None],
                mode="markers",
                name="hollow: negative weight",
                hoverinfo="skip",
                marker=dict(symbol="circle-open", size=12, color="rgb(60,60,60)", line=dict(width=3)),
            )
        )
    traces.append(
        dict(
            type="scatter",
            x=[centre[0]],
            y=[centre[1]],
            mode="markers",
            name="cell centre",
            marker=dict(symbol="cross", size=13, color="white", line=dict(width=1.5, color="black")),
            hovertemplate=f"cell {tuple(int(v) for v in cell)} centre<br>x=%{{x:.1f}}, y=%{{y:.1f}} px<extra></extra>",
        )
    )
    axis = dict(showgrid=False, zeroline=False, ticks="outside")
    lines = legend_lines(record.weight_kind)
    # The legend as the title, below the ~40 px the app's plot label takes at the top left.
    extra_legend_row = 24 * (record.weight_kind == "free")  # the "hollow" entry wraps the legend
    layout = dict(
        _FIGURE_STYLE,
        height=height,
        margin=dict(l=55, r=10, t=52 + 15 * len(lines), b=80 + extra_legend_row),
        plot_bgcolor="rgb(45,45,45)",
        title=dict(
            text="<br>".join(lines), font=dict(size=11), x=0.01, xanchor="left", y=1 - 44 / height, yanchor="top"
        ),
        xaxis=dict(axis, range=[lo[0], hi[0]], title=dict(text="x (image px)")),
        yaxis=dict(axis, range=[hi[1], lo[1]], title=dict(text="y (image px)"), scaleanchor="x", scaleratio=1),
        # the free kind's extra "hollow" entry wraps the legend to two rows: lower, below the axis title
        legend=dict(orientation="h", yanchor="top", y=-0.14 - 0.04 * (record.weight_kind == "free"), x=0),
    )
    return FigureSpec(traces, layout)


def weight_matrix(weights: np.ndarray, kernel: int, remove_center: bool = False, fill=np.nan) -> np.ndarray:
    """One group's P weights (or any P per-point values) -> the (K, K) picture: row j (y), column
    i (x), from p = i*K + j. With ``remove_center`` the centre (which has no point) is ``fill``
    (NaN; pass e.g. "" for per-point texts, which keep their dtype)."""
    values = np.asarray(weights)
    values = values.astype(np.float64) if values.dtype.kind in "biuf" else values.astype(object)
    if remove_center:
        values = np.insert(values, (kernel * kernel - 1) // 2, fill)
    return values.reshape(kernel, kernel).T  # [i, j] -> [j (row, y), i (column, x)]


# The weight matrix's colour scale for signed (free) weights: blue < 0, white 0, red > 0.
SIGNED_COLOURS = [[0.0, "rgb(33,102,172)"], [0.5, "rgb(247,247,247)"], [1.0, "rgb(178,24,43)"]]


def _matrix_scale(kind: str, weights: np.ndarray) -> tuple[dict, str]:
    """(coloraxis, title) of the weight matrices for weights of ``kind`` ((G, P) of one cell).

    softmax: viridis from 0 to the largest weight, titled with the uniform 1/P; sigmoid: viridis
    over the whole [0, 1] (absolute values compare across groups and cells); free: a diverging
    scale symmetric about 0 over the largest |m|.
    """
    points = weights.shape[-1]
    top = float(np.nanmax(np.abs(weights))) if weights.size else 0.0
    if kind == "free":
        return (
            dict(
                colorscale=SIGNED_COLOURS,
                cmin=-max(top, 1e-6),
                cmax=max(top, 1e-6),
                colorbar=dict(title=dict(text="m"), thickness=12),
            ),
            "free (DCNv4), signed: blue < 0 < red; hover: |m| x the group's mean |m|",
        )
    if kind == "sigmoid":
        return (
            dict(colorscale="Viridis", cmin=0, cmax=1, colorbar=dict(title=dict(text="weight"), thickness=12)),
            "sigmoid (DCNv2): each weight in [0, 1] on its own, 1 = fully on",
        )
    return (
        dict(colorscale="Viridis", cmin=0, cmax=max(top, 1e-6), colorbar=dict(title=dict(text="weight"), thickness=12)),
        f"softmax (DCNv3): uniform = 1/{points} = {1 / points:.3f}",
    )


def weight_matrices_figure(layer, cell, groups=None, columns: int = 4, height_per_row: int = 200) -> FigureSpec:
    """One KxK heatmap per group of a cell's weights, laid out as the kernel sits on the image (row
    j = y, column i = x), values printed, one colour scale for all groups, chosen by the weights'
    kind (``_matrix_scale``; the title names it), hover: the weight and what it means for its kind
    (a ``FigureSpec``: a click re-renders it)."""
    weights = layer.weights[tuple(cell)]
    kind = layer.weight_kind
    encoding = encode_weights(weights, kind)
    num_groups, _points = weights.shape
    chosen = list(range(num_groups)) if groups is None else [g for g in groups if 0 <= g < num_groups]
    chosen = chosen or list(range(num_groups))
    cols = min(columns, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    k = layer.kernel
    point_index = np.arange(k)[None, :] * k + np.arange(k)[:, None]  # [j, i] -> p = i*K + j
    gap_x, gap_y = 0.05, 0.22 if rows > 1 else 0.0  # room for a row's tick labels and the next title
    width, height = (1 - gap_x * (cols - 1)) / cols, (1 - gap_y * (rows - 1)) / rows
    traces, layout = [], dict(_FIGURE_STYLE, annotations=[])
    for n, g in enumerate(chosen):
        row, col = divmod(n, cols)
        suffix = "" if n == 0 else str(n + 1)
        matrix = weight_matrix(weights[g], k, layer.remove_center)
        meaning = weight_matrix(
            [weight_meaning(float(w), float(r), kind) for w, r in zip(weights[g], encoding.relative[g])],
            k,
            layer.remove_center,
            "",
        )
        traces.append(
            dict(
                type="heatmap",
                z=matrix,
                x=[f"i={i}" for i in range(k)],
                y=[f"j={j}" for j in range(k)],
                xaxis=f"x{suffix}",
                yaxis=f"y{suffix}",
                coloraxis="coloraxis",
                customdata=point_index,
                text=meaning,
                texttemplate="%{z:.2f}",
                hovertemplate=(
                    f"group {g}, point %{{customdata:d}}<br>%{{x}}, %{{y}}<br>"
                    "weight=%{z:.3f} %{text}<extra></extra>"
                ),
            )
        )
        x_domain = [max(0.0, col * (width + gap_x)), min(1.0, col * (width + gap_x) + width)]
        y_top = 1 - row * (height + gap_y)
        layout[f"xaxis{suffix}"] = dict(domain=x_domain, anchor=f"y{suffix}", side="bottom", ticks="")
        layout[f"yaxis{suffix}"] = dict(
            domain=[max(0.0, y_top - height), min(1.0, y_top)],
            anchor=f"x{suffix}",
            autorange="reversed",
            scaleanchor=f"x{suffix}",
            ticks="",
        )
        layout["annotations"].append(
            dict(
                text=f"group {g}",
                x=sum(x_domain) / 2,
                y=y_top,
                xref="paper",
                yref="paper",
                xanchor="center",
                yanchor="bottom",
                showarrow=False,
            )
        )
    coloraxis, title = _matrix_scale(kind, weights[chosen])
    layout.update(
        height=max(230, rows * height_per_row + 70),
        margin=dict(l=40, r=10, t=55, b=25),
        plot_bgcolor="white",
        coloraxis=coloraxis,
        title=dict(text=f"weights {title}", font=dict(size=12), x=0.99, xanchor="right"),
    )
    return FigureSpec(traces, layout)


# -- trace through the stacked DCNv3 layers (the search is dcnv3.record.trace's) -----------------------------
def trace_overlay(
    image: np.ndarray, levels: list[TraceLevel], start_xy, size: int = 720, min_extent: float = 96.0
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Draw a trace, zoomed on the region it covers: the deepest level's points coloured and
    sized by |path weight| (inferno: dark = weak, yellow = strong; negative paths of signed DCNv4
    weights hollow), the intermediate levels as small white rings, the start as a cross, on the
    dimmed image, captioned with the weight kinds on the path (``trace_caption``).

    Returns (canvas BGR, origin (x0, y0) in image px, (sx, sy)): image point (x, y) lies at canvas
    point ((x - x0) * sx, (y - y0) * sy). The crop spans at least ``min_extent`` image px and the canvas
    is ``size`` px on its long side.
    """
    height, width = image.shape[:2]
    points = np.concatenate([np.asarray(start_xy, dtype=np.float64)[None]] + [level.xy for level in levels])
    lo, hi = points.min(axis=0), points.max(axis=0)
    extent = np.maximum(hi - lo, 1.0)
    pad = np.maximum(0.15 * extent, (min_extent - extent) / 2)
    x0, y0 = (int(np.clip(math.floor(v), 0, lim - 1)) for v, lim in zip(lo - pad, (width, height)))
    x1, y1 = (int(np.clip(math.ceil(v), start + 1, lim)) for v, lim, start in zip(hi + pad, (width, height), (x0, y0)))
    s = size / max(x1 - x0, y1 - y0)
    crop = cv2.convertScaleAbs(image[y0:y1, x0:x1], alpha=0.55)  # dim the photo so the trace stands out
    canvas = cv2.resize(
        crop,
        (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s))),
        # INTER_AREA at a non-integer factor costs ~2 ms; above half size bilinear barely aliases
        interpolation=cv2.INTER_LINEAR if s > 0.5 else cv2.INTER_AREA,
    )
    scale = (canvas.shape[1] / (x1 - x0), canvas.shape[0] / (y1 - y0))

    TraceAnnotator().annotate(canvas, levels, (x0, y0), scale)
    start_on_crop = (start_xy[0] - x0, start_xy[1] - y0)
    MarkerAnnotator().annotate(canvas, start_on_crop, scale)
    if levels:
        # at the bottom: the app's image label covers the top left
        CaptionAnnotator(text_scale=0.3, at_bottom=True).annotate(canvas, trace_caption(levels))
    return canvas, (float(x0), float(y0)), scale


def trace_caption(levels: list[TraceLevel]) -> str:
    """The trace picture's caption: the weight kinds on the path and, for signed ones, a second
    line saying what hollow means."""
    kinds = list(dict.fromkeys(level.weight_kind for level in levels))
    text = "path weight = product of " + " / ".join(KIND_NAMES[k] for k in kinds) + " weights"
    return text + ("\nsigned: hollow = negative path" if "free" in kinds else "")


# -- the whole sampling view -----------------------------------------------------------------------------
@dataclass
class SamplingView:
    """Everything the sampling view shows for one query: canvases are BGR."""

    overlay: np.ndarray  # canvas: detections, samples, grid, arrows, cell cross
    scale: tuple[float, float]  # canvas px per image px
    figure: FigureSpec | None  # interactive zoom (None without a DCNv3 layer)
    weights: FigureSpec | None  # KxK weight matrices
    trace: np.ndarray | None  # canvas of the trace through the stacked layers
    cell: tuple[int, int] | None
    message: str  # one line for the user (what is shown, or why nothing is)


def initial_query(probe) -> tuple[float, float, str | None, int | None]:
    """Where to look first: the best detection's centre in its scale's layer, else the image
    centre in the middle DCNv3 layer. Returns (x, y, layer name or None, detection or None)."""
    height, width = probe.image_shape
    if len(probe.detections) and probe.layers:
        best = int(np.argmax(probe.detections.scores))
        box = probe.detections.boxes[best]
        return (*box_centre(box), probe.layer_for_box(box).name, best)
    layer = default_layer(probe.layers)
    return width / 2, height / 2, layer.name if layer is not None else None, None


def query_for_detection(probe, index: int) -> tuple[float, float, str | None]:
    """A detection's centre and the DCNv3 layer whose stride matches its size."""
    box = tuple(float(v) for v in probe.detections.boxes[index])
    layer = probe.layer_for_box(box)
    return (*box_centre(box), layer.name if layer is not None else None)


def outside_message(xy) -> str:
    """What the sampling view says for a point with no cell under it."""
    return f"({float(xy[0]):.1f}, {float(xy[1]):.1f}) is outside the image: click on the picture"


def cell_under(probe, layer: str | None, xy) -> tuple[int, int] | None:
    """(row, col) of ``layer``'s cell under image point ``xy`` (continuous processed-image px):
    None off the image, off the network input, or without a layer. The one lookup behind the
    sampling view, a click and ``/sampling`` (``viz_app/components/sampling_hover.js`` repeats it
    in the browser)."""
    if layer is None or not probe.layers:
        return None
    x, y = float(xy[0]), float(xy[1])
    height, width = probe.image_shape
    return probe.cell_at(probe.record(layer), x, y) if (0 <= x < width and 0 <= y < height) else None


def sampling_view(
    image: np.ndarray,
    probe,
    layer: str | None,
    xy,
    groups=None,
    highlight: int | None = None,
    scale=None,
    base: np.ndarray | None = None,
    trace_top: int = 60,
    with_overlay: bool = True,
) -> SamplingView:
    """Render the sampling view for image point ``xy`` (continuous image px) in ``layer``.

    ``base``: the canvas with detections already drawn (``draw_detections`` on ``make_canvas``),
    which a caller may cache per image; ``scale`` must then be the canvas' scale.
    ``with_overlay=False``: the cell is not drawn (``overlay`` is ``base``), for a caller that
    has drawn the picture already (a click shows its picture first).
    """
    if base is None:
        base, scale = make_canvas(image, scale)
        base = draw_detections(base, probe.detections, scale, highlight)
    scale = scale_pair(scale if scale is not None else display_scale(image.shape))
    if layer is None or not probe.layers:
        return SamplingView(base, scale, None, None, None, None, "no deformable layer in this model: detections only")
    record = probe.record(layer)
    cell = cell_under(probe, layer, xy)
    if cell is None:
        return SamplingView(base, scale, None, None, None, None, outside_message(xy))
    overlay = draw_cell(base, probe, record, cell, groups, scale) if with_overlay else base  # a copy: base stays clean
    centre = probe.cell_centre(record, cell)
    levels = trace_through_layers(probe, record, cell, groups, top=trace_top)
    trace, _, _ = trace_overlay(image, levels, centre)
    message = (
        f"{record.stage}, {record.name}: cell (row {cell[0]}, col {cell[1]}) centred at "
        f"({centre[0]:.1f}, {centre[1]:.1f}) px; {record.groups} group(s) x {record.points} points; "
        f"trace through {len(levels)} deformable layer(s)  \n**{legend(record.weight_kind)}**.  \n"
        f"Trace: {path_weight_text(level.weight_kind for level in levels)}."
    )
    return SamplingView(
        overlay,
        scale,
        sampling_figure(image, probe, record, cell, groups),
        weight_matrices_figure(record, cell, groups),
        trace,
        cell,
        message,
    )


# -- fields view ----------------------------------------------------------------------------------------
def colour_bar(width: int, field: str, value_range, unit: int = 1, title: str | None = None) -> np.ndarray:
    """A (h, width, 3) BGR strip: the field's colour scale with its range and name (``title``, by
    default the field's name and unit; ``field_overlay`` passes ``dcnv3.record.fields.field_title``, which
    says what the entropy is of for the layer's weight kind)."""
    height = 46 * unit
    strip = np.full((height, width, 3), 255, np.uint8)
    margin = 12 * unit
    bar_w = max(1, width - 2 * margin)
    ramp = np.linspace(0, 1, bar_w)
    if field == "offset direction":
        angles = (ramp * 360 - 180) % 360
        hsv = np.stack([angles / 2, np.full(bar_w, 255), np.full(bar_w, 255)], axis=-1)[None].astype(np.uint8)
        row = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]
        ticks = [(0.0, "-180 left"), (0.25, "-90 up"), (0.5, "0 right"), (0.75, "90 down"), (1.0, "180 left")]
        title = f"offset direction (deg); brightness = length, max {value_range[1]:.2f} cells"
    else:
        row = cv2.applyColorMap((ramp * 255).astype(np.uint8)[None], cv2.COLORMAP_VIRIDIS)[0]
        lo, hi = value_range
        ticks = [(t, f"{lo + t * (hi - lo):.3g}") for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
        title = title or field + {"offset magnitude": " (cells)", "effective dilation": " (cells)"}.get(field, "")
    strip[18 * unit : 30 * unit, margin : margin + bar_w] = row[None]
    font = 0.4 * unit
    cv2.putText(strip, title, (margin, 13 * unit), cv2.FONT_HERSHEY_SIMPLEX, font, (30, 30, 30), unit, cv2.LINE_AA)
    for t, text in ticks:
        (w, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, unit)
        x = int(np.clip(margin + t * bar_w - w / 2, 0, width - w))
        cv2.putText(strip, text, (x, 43 * unit), cv2.FONT_HERSHEY_SIMPLEX, font, (30, 30, 30), unit, cv2.LINE_AA)
    return strip


def legend_strip(width: int, lines: list[str], unit: int | None = None) -> np.ndarray:
    """A (h, width, 3) BGR strip of text lines on white (e.g. ``weight_encoding.legend_lines``), to
    go below a picture that leaves the page (an exported overlay). A line too long for the width
    is wrapped at spaces."""
    unit = unit or max(1, round(width / 640))
    font = 0.4 * unit
    wrapped = []
    for line in lines:
        words, current = line.split(), ""
        for word in words:
            trial = f"{current} {word}".strip()
            if current and cv2.getTextSize(trial, cv2.FONT_HERSHEY_SIMPLEX, font, unit)[0][0] > width - 16 * unit:
                wrapped.append(current)
                trial = word
            current = trial
        wrapped.append(current)
    step = 16 * unit
    strip = np.full((step * len(wrapped) + 8 * unit, width, 3), 255, np.uint8)
    for n, text in enumerate(wrapped):
        cv2.putText(
            strip, text, (8 * unit, step * (n + 1)), cv2.FONT_HERSHEY_SIMPLEX, font, (30, 30, 30), unit, cv2.LINE_AA
        )
    return strip


def field_overlay(
    image: np.ndarray,
    probe,
    layer,
    field: str,
    group: int | None = None,
    opacity: float = 0.6,
    scale=None,
    smooth: bool = False,
) -> tuple[np.ndarray, tuple[float, float]]:
    """A field blended over the image (``opacity`` of the colour), with a colour bar strip below.

    Each cell's colour is centred on its cell centre (``Probe.cell_centre``); ``smooth`` blends
    between cell centres (bilinear) instead of drawing cells as blocks. Returns (picture, scale);
    the picture is the canvas plus the strip, so its height exceeds the canvas'.
    """
    canvas, scale = make_canvas(image, scale)
    record = probe.record(layer)
    values = field_values(probe, record, field, group)
    magnitude = np.linalg.norm(values, axis=-1) if field == "offset direction" else values
    value_range = field_range(field, magnitude)
    blended = FieldAnnotator(opacity, smooth).annotate(
        canvas, probe, record, field_colours(field, values, value_range), scale
    )  # ``canvas`` is make_canvas' own: drawn on in place
    unit = max(1, round(canvas.shape[1] / 640))  # the strip's text stays legible but modest
    return np.vstack(
        [
            blended,
            colour_bar(
                canvas.shape[1],
                field,
                value_range,
                unit,
                None if field == "offset direction" else field_title(field, record),
            ),
        ]
    ), scale


# -- health view ------------------------------------------------------------------------------------------
def layer_choice_label(layer) -> str:
    """Dropdown text of a layer: stage, stride, groups and kernel, weight kind, then its module name."""
    return (
        f"{layer.stage} · stride {layer.stride} · G={layer.groups} K={layer.kernel} · {layer.weight_kind} "
        f"weights · {layer.name}"
    )


def health_histograms(probe, bins: int = 40, height: int = 400) -> go.Figure:
    """Per-layer distributions (over cells and groups) of offset magnitude and weight entropy, as
    step lines (share of cell-groups per bin), one colour per layer, side by side."""
    magnitudes = [probe.offset_magnitude(r).ravel() for r in probe.layers]
    top = max([float(m.max()) for m in magnitudes if m.size] + [1e-3])
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    traces = []
    for n, (record, magnitude) in enumerate(zip(probe.layers, magnitudes)):
        colour = palette[n % len(palette)]
        name = f"{record.stage.split()[0]} {record.name} ({record.weight_kind})"
        for axis, values, edges in (
            ("", magnitude, np.linspace(0, top * 1.0001, bins + 1)),
            ("2", probe.weight_entropy(record).ravel(), np.linspace(0, 1.0001, bins + 1)),
        ):
            counts, _ = np.histogram(values, edges)
            traces.append(
                dict(
                    type="scatter",
                    x=(edges[:-1] + edges[1:]) / 2,
                    y=counts / max(values.size, 1),
                    mode="lines",
                    line_shape="hvh",
                    line=dict(color=colour, width=2),
                    name=name,
                    legendgroup=record.name,
                    showlegend=axis == "",
                    xaxis=f"x{axis}",
                    yaxis=f"y{axis}",
                    hovertemplate=name + "<br>%{x:.3f}: %{y:.1%} of cells<extra></extra>",
                )
            )
    grid = dict(gridcolor="#e5e5e5", zeroline=False)
    layout = dict(
        _FIGURE_STYLE,
        height=height,
        margin=dict(l=60, r=10, t=36, b=110),
        plot_bgcolor="white",
        xaxis=dict(grid, domain=[0, 0.45], title=dict(text="offset magnitude (feature cells)")),
        yaxis=dict(grid, title=dict(text="share of cells x groups"), tickformat=".0%"),
        xaxis2=dict(
            grid,
            domain=[0.55, 1],
            anchor="y2",
            title=dict(text="normalised weight entropy (of |m| / sum |m| per group)"),
        ),
        yaxis2=dict(grid, anchor="x2", tickformat=".0%"),
        legend=dict(orientation="h", yanchor="top", y=-0.2, x=0, font=dict(size=11)),
    )
    return go.Figure(data=traces, layout=layout)
