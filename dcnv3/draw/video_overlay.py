"""Drawing one processed video frame: tracked boxes, sampling points or a field map, a caption.

Built from ``dcnv3.draw.overlay``'s annotators on a copy of the frame (the decoded frame itself is
left as it is). The points' marks follow each layer's weight kind (``dcnv3.record.weight_encoding``),
and a frame that shows sampling points says which kind in a line at its bottom.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcnv3.draw.overlay import CaptionAnnotator, CellAnnotator, DetectionAnnotator, FieldAnnotator, field_colours
from dcnv3.record.geometry import box_centre
from dcnv3.record.track_stats import AUTO_LAYER
from dcnv3.record.weight_encoding import short_legend

__all__ = ["MODES", "MAX_DRAWN_TRACKS", "GRID_QUERIES", "FIELD_RANGE", "TrackBoxes", "grid_points", "draw_frame"]

MODES = {
    "samples": "sampling points at each tracked object's centre (its scale-matched layer unless a layer is chosen)",
    "grid": "sampling points at a fixed grid of query points",
    "field": "effective-dilation field map of the layer",
}
MAX_DRAWN_TRACKS = 8  # sampling points of more objects than this stop being legible
GRID_QUERIES = (3, 4)  # rows, columns of the "grid" mode's query points
FIELD_RANGE = (0.0, 3.0)  # effective dilation colour scale (cells; the regular grid is 1), fixed over frames


@dataclass
class TrackBoxes:
    """Tracked boxes in the shape ``overlay.draw_detections`` draws: boxes (N, 4), scores (N,), labels."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]

    def label(self, index: int) -> str:
        return self.labels[index]


def grid_points(shape) -> list[tuple[float, float]]:
    """The "grid" mode's query points: GRID_QUERIES rows x columns, evenly inside the frame (x, y)."""
    rows, cols = GRID_QUERIES
    height, width = shape[:2]
    return [((c + 0.5) * width / cols, (r + 0.5) * height / rows) for r in range(rows) for c in range(cols)]


def draw_frame(frame: np.ndarray, result, tracks: np.ndarray, layer: str, mode: str, caption: str) -> np.ndarray:
    """A processed frame: in "field" mode the effective-dilation map blended under everything;
    the tracked boxes (label "#id class score"); sampling points at each track's centre
    ("samples") or at fixed query points ("grid"); a caption; and, when points were drawn, the
    legend of their weight kind(s) at the bottom (``weight_encoding.short_legend``).
    ``tracks``: (N, 8) tracker rows."""
    canvas = frame.copy()  # the frame itself stays as decoded (the tracker may keep it)
    fixed = None if layer == AUTO_LAYER or not result.layers else result.layer(layer)
    middle = result.default_layer()
    if mode == "field" and result.layers:
        record = fixed or middle
        values = result.effective_dilation(record).mean(axis=-1)  # (H, W) mean over groups
        colours = field_colours("effective dilation", values, FIELD_RANGE)
        FieldAnnotator(opacity=0.5, smooth=True).annotate(canvas, result, record, colours)
    names = result.detections.names
    labels = [f"#{int(t[4])} {names.get(int(t[6]), int(t[6]))} {t[5]:.2f}" for t in tracks]
    DetectionAnnotator(max_labels=MAX_DRAWN_TRACKS).annotate(canvas, TrackBoxes(tracks[:, :4], tracks[:, 5], labels))
    queries = []
    if mode == "samples":
        for t in tracks[np.argsort(-tracks[:, 5], kind="stable")][:MAX_DRAWN_TRACKS]:
            record = fixed or result.layer_for_box(t[:4])
            if record is not None:
                queries.append((record, box_centre(t), True))
    elif mode == "grid" and result.layers:
        queries = [(fixed or middle, xy, False) for xy in grid_points(canvas.shape)]
    kinds = []
    for record, (x, y), ghost in queries:
        cell = result.cell_at(record, x, y)
        if cell is None:
            continue
        CellAnnotator(grid=ghost).annotate(canvas, result, record, cell)
        kinds.append(record.weight_kind)
    if kinds:
        legend = " | ".join(short_legend(k) for k in dict.fromkeys(kinds))
        CaptionAnnotator(at_bottom=True).annotate(canvas, legend)  # the caption keeps the top
    return CaptionAnnotator().annotate(canvas, caption)
