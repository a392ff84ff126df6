"""What the app exports, and the JSON the HTTP API returns: pure functions, probe in, dict or file out.

* ``sampling_payload``: one cell's sampling points as JSON-ready data (also the ``/sampling`` API
  answer): ``{"layer", "stride", "cell": [row, col], "points": [{"group", "k", "x", "y", "dx",
  "dy", "weight"}, ...], ...}``. x, y are original-image pixel coordinates, continuous (pixel i
  spans [i, i+1)); dx, dy the raw learned offsets in feature cells (before ``offset_scale``);
  k the point index p = i*K + j (i walks x, j walks y); ``weight_kind`` says what the weights are
  (``dcnv3.analysis.probe.WEIGHT_KINDS``: "softmax" for DCNv3, each group's P weights sum to 1; "sigmoid"
  for DCNv2, each in [0, 1]; "free" for DCNv4, signed), ``weight_meaning`` says it in words and
  ``weight_encoding`` how the views draw it; each point's ``relative_weight`` is its weight on
  its kind's scale (``dcnv3.record.weight_encoding``: softmax w * P, sigmoid w, free |m| / the group's
  mean |m|) and ``negative`` whether it subtracts its sample.
* ``detections_payload``: the detections (the ``/detect`` API answer).
* ``write_png`` (overlay; ``export_all`` adds a strip below it with the weights' legend),
  ``write_npz`` (``Probe.as_arrays()`` and each layer's ``weight_kind``), ``write_json``,
  ``write_stats_csv`` (``dcnv3.record.stats.layer_summary``, the weight kind and what the entropy is
  of, and the health flags, one row per layer).

``pixel_scale`` = (sx, sy) processed px per original px (``LoadedImage.scale``): probe coordinates
are divided by it so that exported coordinates refer to the file the user gave.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from dcnv3.analysis.probe import WEIGHT_KINDS
from dcnv3.record import stats
from dcnv3.record.weight_encoding import encode_weights, entropy_text, legend, legend_lines
from viz_app.views.health import health_report
from viz_app.views.render import legend_strip

__all__ = [
    "sampling_payload",
    "detections_payload",
    "write_png",
    "write_npz",
    "write_json",
    "write_stats_csv",
    "stats_rows",
    "export_all",
]

COORDINATES = "original-image pixels, continuous: pixel i spans [i, i+1), its centre is i + 0.5"


def _unscale(xy: np.ndarray, pixel_scale) -> np.ndarray:
    return np.asarray(xy, dtype=np.float64) / np.asarray(pixel_scale, dtype=np.float64)


def sampling_payload(probe, layer, cell, pixel_scale=(1.0, 1.0), query_xy=None) -> dict:
    """Every group's P sampling points of ``cell`` (row, col) in ``layer`` (record or name)."""
    record = probe.record(layer)
    row, col = int(cell[0]), int(cell[1])
    locations = _unscale(probe.sampling_locations(record, (row, col)), pixel_scale)  # (G, P, 2)
    offsets = record.offsets[row, col]  # (G, P, 2) raw, feature cells
    weights = record.weights[row, col]  # (G, P)
    encoding = encode_weights(weights, record.weight_kind)
    points = [
        {
            "group": g,
            "k": k,
            "x": float(locations[g, k, 0]),
            "y": float(locations[g, k, 1]),
            "dx": float(offsets[g, k, 0]),
            "dy": float(offsets[g, k, 1]),
            "weight": float(weights[g, k]),
            "relative_weight": float(encoding.relative[g, k]),
            "negative": bool(encoding.negative[g, k]),
        }
        for g in range(record.groups)
        for k in range(record.points)
    ]
    payload = {
        "layer": record.name,
        "stride": int(record.stride),
        "cell": [row, col],
        "points": points,
        "stage": record.stage,
        "groups": int(record.groups),
        "kernel": int(record.kernel),
        "offset_scale": float(record.offset_scale),
        "weight_kind": record.weight_kind,
        "weight_meaning": WEIGHT_KINDS[record.weight_kind],
        "weight_encoding": legend(record.weight_kind),
        "cell_centre": _unscale(probe.cell_centre(record, (row, col)), pixel_scale).tolist(),
        "coordinates": COORDINATES,
    }
    if query_xy is not None:
        payload["query"] = [float(query_xy[0]), float(query_xy[1])]
    return payload


def detections_payload(probe, pixel_scale=(1.0, 1.0), model: str | None = None, notices=()) -> dict:
    """Detections (boxes xyxy in original-image px), the image size, the network input size
    (letterboxed, [width, height]), the model's deformable layers (DCNv2, DCNv3, DCNv4) under
    ``deformable_layers``, and the same list under ``dcnv3_layers``: the key's old name, deprecated
    (kept until 0.3)."""
    boxes = _unscale(np.asarray(probe.detections.boxes, dtype=np.float64).reshape(-1, 2, 2), pixel_scale)
    detections = probe.detections
    height, width = probe.image_shape
    layers = [
        {
            "name": r.name,
            "stage": r.stage,
            "stride": int(r.stride),
            "groups": int(r.groups),
            "kernel": int(r.kernel),
            "grid": list(map(int, r.grid)),
            "weight_kind": r.weight_kind,
            "weight_meaning": WEIGHT_KINDS[r.weight_kind],
        }
        for r in probe.layers
    ]
    return {
        "model": model,
        "image_size": [round(width / pixel_scale[0]), round(height / pixel_scale[1])],
        "network_input": [int(probe.letterbox.input_shape[1]), int(probe.letterbox.input_shape[0])],
        "detections": [
            {
                "box": boxes[i].reshape(4).tolist(),
                "score": float(detections.scores[i]),
                "class": int(detections.classes[i]),
                "name": str(detections.names.get(int(detections.classes[i]), detections.classes[i])),
            }
            for i in range(len(detections))
        ],
        "deformable_layers": layers,
        "dcnv3_layers": layers,  # deprecated alias of deformable_layers (until 0.3)
        "notices": list(notices),
        "coordinates": COORDINATES,
    }


def write_png(path: str | Path, image_bgr: np.ndarray) -> Path:
    path = Path(path)
    if not cv2.imwrite(str(path), image_bgr):
        raise OSError(f"could not write {path}")
    return path


def write_npz(path: str | Path, probe) -> Path:
    """``probe.as_arrays()`` (offsets, weights, sampling locations per layer; detections;
    letterbox) compressed; keys as ``Probe.as_arrays`` documents, plus ``<layer>/weight_kind`` (a
    0-d string array: what that layer's weights are, ``WEIGHT_KINDS``)."""
    path = Path(path)
    arrays = probe.as_arrays()
    for record in probe.layers:
        arrays[f"{record.name}/weight_kind"] = np.array(record.weight_kind)
    np.savez_compressed(path, **arrays)
    return path


def write_json(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    path.write_text(json.dumps(payload, indent=1))
    return path


def stats_rows(probe) -> list[dict]:
    """One row per layer: geometry, ``layer_summary`` (means and stds), group cosine and flags."""
    rows = []
    for record, health in zip(probe.layers, health_report(probe)):
        row = {
            "layer": record.name,
            "stage": record.stage,
            "stride": record.stride,
            "grid": f"{record.grid[0]}x{record.grid[1]}",
            "groups": record.groups,
            "kernel": record.kernel,
            "dilation": record.dilation,
            "offset_scale": record.offset_scale,
            "weight_kind": record.weight_kind,
        }
        row.update(stats.layer_summary(record, probe.letterbox))
        row["weight_entropy_of"] = entropy_text(record.weight_kind)  # what the weight_entropy columns measure
        row["group_cosine"] = "" if health.group_similarity is None else health.group_similarity
        row["flags"] = "; ".join(health.flags.values())
        rows.append(row)
    return rows


def write_stats_csv(path: str | Path, probe) -> Path:
    path = Path(path)
    rows = stats_rows(probe)
    with path.open("w", newline="") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        else:
            handle.write("layer\n")  # a detector without DCNv3 layers: header only
    return path


def export_all(directory: str | Path, stem: str, overlay_bgr: np.ndarray, probe, selection: dict | None) -> list[Path]:
    """Write the four exports into ``directory``; returns their paths (the JSON only with a selection).

    With a selection (a ``sampling_payload``), the PNG gets a strip below the overlay with the
    legend of the selection's weight kind, so the picture says what its point sizes mean."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if selection is not None and selection.get("weight_kind") in WEIGHT_KINDS:
        strip = legend_strip(overlay_bgr.shape[1], legend_lines(selection["weight_kind"]))
        overlay_bgr = np.vstack([overlay_bgr, strip])
    files = [
        write_png(directory / f"{stem}_overlay.png", overlay_bgr),
        write_npz(directory / f"{stem}_probe.npz", probe),
    ]
    if selection is not None:
        files.append(write_json(directory / f"{stem}_sampling.json", selection))
    files.append(write_stats_csv(directory / f"{stem}_stats.csv", probe))
    return files
