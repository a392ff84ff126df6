"""The Training tab's pure side (no gradio): open a run, plot per-layer health over the epochs
(plotly), and draw one pixel's sampling points at each saved epoch side by side.

A run is a folder written by ultralytics' trainer with DeformLens' health monitor
(``dcnv3.training.monitor``: ``health.csv``; epoch checkpoints ``weights/epoch{k}.pt`` when trained
with ``save_period``), or just a folder of ``epoch{k}.pt`` checkpoints: then the health over the
epochs is computed from the checkpoints on the image the user gives. ``epoch{k}.pt`` holds the
model after epoch k + 1 (ultralytics counts saved epochs from 0, results.csv from 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dcnv3.analysis import health as layer_health
from dcnv3.draw.overlay import draw_cell
from dcnv3.training.monitor import read_health

__all__ = [
    "METRICS",
    "TrainingRun",
    "open_run",
    "epoch_checkpoints",
    "health_figure",
    "checkpoint_health_rows",
    "sampling_strip",
    "STRIP_PANEL",
]

# The four panels of the health figure: (title, health.csv column).
METRICS = (
    ("mean |offset| (point spacings)", "offset_ratio"),
    ("normalised weight entropy", "entropy"),
    ("effective dilation (cells)", "effective_dilation"),
    ("samples pushed off the image (share beyond the grid's)", "outside_excess"),
)
STRIP_PANEL = 220  # px, side of one epoch's square panel in the strip
_EPOCH_FILE = re.compile(r"epoch(\d+)\.pt$")


@dataclass
class TrainingRun:
    """``rows``: health.csv rows (``read_health``; [] when the run has none); ``checkpoints``:
    [(epoch counted from 1, path)] sorted by epoch."""

    folder: Path
    rows: list[dict]
    checkpoints: list[tuple[int, Path]]

    @property
    def layers(self) -> list[str]:
        """Layer names in the order health.csv lists them."""
        return list(dict.fromkeys(row["layer"] for row in self.rows))

    def describe(self) -> str:
        epochs = sorted({row["epoch"] for row in self.rows})
        parts = [f"**{self.folder.name}**"]
        parts.append(
            f"health of {len(self.layers)} layers over epochs {epochs[0]}-{epochs[-1]}"
            if epochs
            else "no health.csv (health computed from the checkpoints)"
        )
        parts.append(
            f"{len(self.checkpoints)} epoch checkpoints (" + ", ".join(f"epoch {e}" for e, _ in self.checkpoints) + ")"
            if self.checkpoints
            else "no epoch checkpoints (train with save_period=1 for the sampling strip)"
        )
        return "; ".join(parts)


def epoch_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The ``epoch{k}.pt`` files of a run folder (in ``weights/`` or the folder itself) as
    [(k + 1, path)], sorted."""
    found = []
    for place in (folder / "weights", folder):
        if place.is_dir():
            for path in place.glob("epoch*.pt"):
                match = _EPOCH_FILE.search(path.name)
                if match:
                    found.append((int(match.group(1)) + 1, path))
    return sorted(set(found))


def open_run(path) -> TrainingRun:
    """A run folder (health.csv and/or epoch checkpoints) -> ``TrainingRun``; ValueError if it has neither."""
    folder = Path(str(path).strip()).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    run = TrainingRun(folder, read_health(folder), epoch_checkpoints(folder))
    if not run.rows and not run.checkpoints:
        raise ValueError(f"{folder}: no health.csv and no epoch*.pt checkpoints in it (or in weights/)")
    return run


def checkpoint_health_rows(checkpoints: list[tuple[int, object]], image: np.ndarray, imgsz: int) -> list[dict]:
    """Health rows like health.csv's, computed from loaded checkpoints [(epoch, YOLO)] on one image."""
    rows = []
    for epoch, model in checkpoints:
        for layer in layer_health.health(model, [image], imgsz=imgsz).layers:
            values = layer.as_dict()
            rows.append({**values, "epoch": epoch, "layer": layer.name, "flags": list(layer.flags)})
    return rows


def health_figure(rows: list[dict], height: int = 560) -> go.Figure:
    """Per-layer health over the epochs: four panels (``METRICS``), one line per layer in the same
    colour in every panel; an epoch where the layer raised a flag is a red cross, its flags on hover."""
    figure = make_subplots(
        rows=2, cols=2, subplot_titles=[title for title, _ in METRICS], horizontal_spacing=0.08, vertical_spacing=0.16
    )
    layers = list(dict.fromkeys(row["layer"] for row in rows))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    for index, layer in enumerate(layers):
        mine = sorted((row for row in rows if row["layer"] == layer), key=lambda row: row["epoch"])
        epochs = [row["epoch"] for row in mine]
        colour = palette[index % len(palette)]
        for panel, (title, column) in enumerate(METRICS):
            values = [row.get(column) for row in mine]
            position = dict(row=panel // 2 + 1, col=panel % 2 + 1)
            figure.add_trace(
                go.Scatter(
                    x=epochs,
                    y=values,
                    mode="lines+markers",
                    name=layer,
                    legendgroup=layer,
                    showlegend=panel == 0,
                    line=dict(color=colour),
                    hovertemplate=f"{layer}<br>epoch %{{x}}<br>{title}: %{{y:.3f}}<extra></extra>",
                ),
                **position,
            )
            flagged = [(row["epoch"], row.get(column), ", ".join(row["flags"])) for row in mine if row["flags"]]
            if flagged:
                figure.add_trace(
                    go.Scatter(
                        x=[f[0] for f in flagged],
                        y=[f[1] for f in flagged],
                        mode="markers",
                        legendgroup=layer,
                        showlegend=False,
                        marker=dict(symbol="x", size=11, color="#d62728"),
                        customdata=[f[2] for f in flagged],
                        hovertemplate=f"{layer}<br>epoch %{{x}}: flagged %{{customdata}}<extra></extra>",
                    ),
                    **position,
                )
    figure.update_xaxes(title_text="epoch", dtick=1)
    figure.update_layout(height=height, margin=dict(l=40, r=10, t=50, b=40), legend=dict(orientation="h", y=-0.12))
    return figure


def _window(points: list[np.ndarray], image_shape: tuple[int, int], margin: float = 0.25) -> tuple[int, int, int, int]:
    """One square window (x0, y0, x1, y1) around every epoch's sampling points, inside the image."""
    stacked = np.concatenate([p.reshape(-1, 2) for p in points])
    (x0, y0), (x1, y1) = stacked.min(axis=0), stacked.max(axis=0)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin) + 16
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    height, width = image_shape
    side = min(side, width, height)
    left = int(np.clip(cx - side / 2, 0, width - side))
    top = int(np.clip(cy - side / 2, 0, height - side))
    return left, top, left + int(side), top + int(side)


def sampling_strip(probes: list[tuple[int, object]], image: np.ndarray, layer_name: str, xy) -> tuple[np.ndarray, str]:
    """One pixel's sampling points at each saved epoch, side by side (small multiples).

    Args:
        probes: [(epoch, ``dcnv3.analysis.probe.Probe`` of ``image`` with that epoch's checkpoint)].
        image: the probed BGR image (H, W, 3).
        layer_name: the deformable layer to show.
        xy: (x, y) original-image pixel.

    Returns:
        (BGR strip (STRIP_PANEL + caption, n * STRIP_PANEL, 3) uint8, a markdown line per epoch
        with the cell's mean |offset|). Every panel crops the same window, so that the points'
        movement between epochs is what differs.
    """
    drawn, points, lines = [], [], []
    for epoch, result in probes:
        record = result.layer(layer_name)
        cell = result.cell_at(record, *xy)
        if cell is None:
            raise ValueError(f"({xy[0]:.0f}, {xy[1]:.0f}) is outside the image")
        drawn.append(draw_cell(image, result, record, cell))
        points.append(result.sampling_locations(record, cell))
        offset = float(np.linalg.norm(record.offset_scale * record.offsets[cell], axis=-1).mean())
        lines.append(f"epoch {epoch}: cell {cell}, mean |offset| {offset:.3f} cells")
    x0, y0, x1, y1 = _window(points, image.shape[:2])
    panels = []
    for (epoch, _), picture in zip(probes, drawn):
        crop = cv2.resize(picture[y0:y1, x0:x1], (STRIP_PANEL, STRIP_PANEL), interpolation=cv2.INTER_NEAREST)
        caption = np.full((28, STRIP_PANEL, 3), 255, np.uint8)
        cv2.putText(caption, f"epoch {epoch}", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        panel = np.vstack([caption, crop])
        panel[:, -1] = 255  # a white line between the panels
        panels.append(panel)

    return np.hstack(panels), "\n".join(f"- {line}" for line in lines)
