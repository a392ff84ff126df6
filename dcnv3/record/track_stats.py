"""Per-track statistics of a video: one row per track and frame at the object's centre cell, and summaries.

Pure functions of the frame's probe record (``dcnv3.record.stats.cell_summary``) and the tracker's rows:
the object's size (sqrt of its box area, source-video px) and the effective dilation, mean
|offset| (feature cells) and normalised weight entropy of the deformable layer at its centre cell.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from dcnv3.record import stats
from dcnv3.record.geometry import box_centre

__all__ = ["AUTO_LAYER", "CSV_COLUMNS", "track_row", "write_csv", "track_summary", "size_dilation_correlation"]

AUTO_LAYER = "auto"  # per object: the DCNv3 layer whose stride matches its size
CSV_COLUMNS = [
    "frame",
    "time_s",
    "track_id",
    "class",
    "name",
    "score",
    "x1",
    "y1",
    "x2",
    "y2",
    "size_px",
    "layer",
    "stride",
    "effective_dilation",
    "offset_magnitude",
    "weight_entropy",
]


def track_row(result, track: np.ndarray, layer: str, index: int, seconds: float, scale: float) -> dict:
    """One CSV row (``CSV_COLUMNS``) of a track in a frame: box and size in source-video pixels,
    statistics at the track's centre cell of ``layer`` (or, for ``AUTO_LAYER``, of its
    scale-matched layer), means over groups. ``result``: the frame's ``Probe``; ``track``: one
    tracker row (``tracking.update_tracks``); ``scale``: processed px per source px."""
    box = track[:4].astype(np.float64)
    record = None
    if result.layers:
        record = result.layer_for_box(box) if layer == AUTO_LAYER else result.layer(layer)
    cell = result.cell_at(record, *box_centre(box)) if record is not None else None
    dilation = magnitude = entropy = None
    if cell is not None:
        dilation, magnitude, entropy = (round(v, 5) for v in stats.cell_summary(record, cell))
    source_box = box / scale
    size = math.sqrt(max(source_box[2] - source_box[0], 0) * max(source_box[3] - source_box[1], 0))
    class_id = int(track[6])
    return {
        "frame": int(index),
        "time_s": round(seconds, 4),
        "track_id": int(track[4]),
        "class": class_id,
        "name": str(result.detections.names.get(class_id, class_id)),
        "score": round(float(track[5]), 4),
        "x1": round(float(source_box[0]), 2),
        "y1": round(float(source_box[1]), 2),
        "x2": round(float(source_box[2]), 2),
        "y2": round(float(source_box[3]), 2),
        "size_px": round(size, 2),
        "layer": record.name if record is not None else "",
        "stride": record.stride if record is not None else None,
        "effective_dilation": dilation,
        "offset_magnitude": magnitude,
        "weight_entropy": entropy,
    }


def write_csv(path: Path, rows: list[dict]) -> None:
    """The rows as a CSV file with the ``CSV_COLUMNS`` header."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def track_summary(rows: list[dict]) -> list[dict]:
    """One dict per track: id, class name, frames seen, first / last time, size range (px),
    mean effective dilation, |offset| and entropy, and the size-dilation correlation (Pearson r,
    None below 3 frames or for a constant series)."""
    tracks: dict[int, list[dict]] = {}
    for row in rows:
        tracks.setdefault(int(row["track_id"]), []).append(row)
    summary = []
    for track_id, own in sorted(tracks.items()):
        sizes = np.array([r["size_px"] for r in own], np.float64)

        def mean(key, own=own):
            values = np.array([r[key] for r in own if r[key] is not None], np.float64)
            return round(float(values.mean()), 4) if values.size else None

        classes = [r["name"] for r in own]
        summary.append(
            {
                "track_id": track_id,
                "name": max(set(classes), key=classes.count),
                "frames": len(own),
                "first_s": own[0]["time_s"],
                "last_s": own[-1]["time_s"],
                "size_min_px": round(float(sizes.min()), 1),
                "size_max_px": round(float(sizes.max()), 1),
                "effective_dilation": mean("effective_dilation"),
                "offset_magnitude": mean("offset_magnitude"),
                "weight_entropy": mean("weight_entropy"),
                "size_dilation_r": size_dilation_correlation(own),
            }
        )
    return summary


def size_dilation_correlation(rows: list[dict], track_id: int | None = None) -> float | None:
    """Pearson correlation of object size and effective dilation over a track's rows (all rows
    given if ``track_id`` is None); None below 3 rows or if either series is constant."""
    own = [
        r for r in rows if (track_id is None or int(r["track_id"]) == track_id) and r["effective_dilation"] is not None
    ]
    if len(own) < 3:
        return None
    sizes = np.array([r["size_px"] for r in own], np.float64)
    dilations = np.array([r["effective_dilation"] for r in own], np.float64)
    if sizes.std() < 1e-9 or dilations.std() < 1e-9:
        return None
    return round(float(np.corrcoef(sizes, dilations)[0, 1]), 4)
