"""Did the offsets learn to adapt? Effective dilation by object size, as in Table 2 of DCNv1.

For every DCNv3 layer, over a labelled YOLO dataset split: the effective dilation (mean
distance between kernel-adjacent sampling points, in feature cells; the regular grid gives 1)
at the cells under the centres of small, medium and large ground-truth objects and at
background cells (centres inside no box), with the layer-wide mean |offset| and mean
normalised weight entropy. Sizes follow COCO: sqrt(box area) < 32 px small, < 96 px medium,
larger large, in original-image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcnv3.record import stats
from dcnv3.record.geometry import box_centre, cell_at, cell_centres

__all__ = ["SIZE_BUCKETS", "LayerTally", "analyze_dataset", "dilation_at_objects", "format_table", "size_bucket"]

SIZE_BUCKETS = ("small", "medium", "large", "background")


def size_bucket(box) -> str:
    side = np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 0.0))
    return "small" if side < 32 else "medium" if side < 96 else "large"


def dilation_at_objects(record, letterbox, boxes: np.ndarray, size_scale: float = 1.0) -> dict:
    """Group-mean effective dilation (feature cells) of one layer for one image, by object size.

    Returns {bucket: 1-D float64 array}: one value per box, at the cell under the box centre, in
    the box's size bucket, and one value per background cell (centre inside the image and inside
    no box). ``boxes`` (K, 4) xyxy in original-image pixels; sizes are judged on sides divided
    by ``size_scale`` (image pixels per original pixel, when the image was resized).
    """
    dilation = stats.effective_dilation(record).mean(axis=-1)  # (H, W)
    values = {bucket: [] for bucket in SIZE_BUCKETS}
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for box in boxes:
        cell = cell_at(record, letterbox, *box_centre(box))
        if cell is not None:
            values[size_bucket(box / size_scale)].append(float(dilation[cell]))
    centres = cell_centres(record, letterbox)  # (H, W, 2)
    cx, cy = centres[..., 0], centres[..., 1]
    height, width = letterbox.image_shape
    background = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
    for x1, y1, x2, y2 in boxes:
        background &= ~((cx >= x1) & (cx < x2) & (cy >= y1) & (cy < y2))
    values["background"] = dilation[background].tolist()
    return {bucket: np.asarray(v, dtype=np.float64) for bucket, v in values.items()}


@dataclass
class LayerTally:
    """Running collections for one layer over the dataset."""

    name: str
    stage: str
    groups: int
    dilation: dict = field(default_factory=lambda: {b: [] for b in SIZE_BUCKETS})
    offset_sum: float = 0.0
    entropy_sum: float = 0.0
    cells: int = 0

    def add(self, record, letterbox, boxes: np.ndarray) -> None:
        for bucket, values in dilation_at_objects(record, letterbox, boxes).items():
            self.dilation[bucket].extend(values.tolist())
        self.offset_sum += float(stats.offset_magnitude(record).sum())
        self.entropy_sum += float(stats.weight_entropy(record).sum())
        self.cells += int(np.prod(record.offsets.shape[:3]))

    def row(self) -> dict:
        result = {"layer": self.name, "stage": self.stage, "groups": self.groups}
        for bucket in SIZE_BUCKETS:
            values = np.asarray(self.dilation[bucket])
            result[f"{bucket}_n"] = int(values.size)
            result[f"{bucket}_mean"] = float(values.mean()) if values.size else float("nan")
            result[f"{bucket}_std"] = float(values.std()) if values.size else float("nan")
        result["large_over_small"] = result["large_mean"] / result["small_mean"]
        result["mean_abs_offset"] = self.offset_sum / max(self.cells, 1)
        result["mean_entropy"] = self.entropy_sum / max(self.cells, 1)
        return result


def _split_images(data_yaml: str | Path, split: str) -> list[Path]:
    from ultralytics.data.utils import IMG_FORMATS, check_det_dataset

    from dcnv3.analysis.health import image_files

    data = check_det_dataset(str(data_yaml))
    source = data.get(split)
    if not source:
        raise ValueError(f"{data_yaml}: no '{split}' split")
    folders = source if isinstance(source, list) else [source]
    suffixes = {f".{name}" for name in IMG_FORMATS}  # ultralytics' own image formats, as its loaders read
    return [path for folder in folders for path in image_files(folder, recursive=True, suffixes=suffixes)]


def _ground_truth(image_path: Path, shape: tuple) -> np.ndarray:
    """(K, 4) xyxy original-pixel boxes from the image's YOLO label file (empty if none)."""
    from ultralytics.data.utils import img2label_paths

    label = Path(img2label_paths([str(image_path)])[0])
    if not label.is_file() or label.stat().st_size == 0:
        return np.zeros((0, 4))
    rows = np.loadtxt(label, ndmin=2)
    height, width = shape
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def analyze_dataset(
    model, data_yaml: str | Path, split: str = "val", imgsz: int = 640, max_images: int | None = None
) -> list[dict]:
    """One result row per DCNv3 layer (see ``LayerTally.row``) over a dataset split."""
    import cv2

    from dcnv3.analysis.probe import probe

    tallies: dict[str, LayerTally] = {}
    for image_path in _split_images(data_yaml, split)[:max_images]:
        image = cv2.imread(str(image_path))
        if image is None:
            continue
        result = probe(model, image, imgsz=imgsz, conf=0.25)
        boxes = _ground_truth(image_path, image.shape[:2])
        for record in result.layers:
            tally = tallies.setdefault(record.name, LayerTally(record.name, record.stage, record.groups))
            tally.add(record, result.letterbox, boxes)
    return [tally.row() for tally in tallies.values()]


def format_table(rows: list[dict]) -> str:
    """A Markdown table in the layout of DCNv1's Table 2, plus |offset| and entropy."""
    lines = [
        "| layer | stage | G | small | medium | large | background | large/small | mean abs offset | mean entropy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"{row[f'{b}_mean']:.2f} ± {row[f'{b}_std']:.2f} (n={row[f'{b}_n']})" for b in SIZE_BUCKETS]
        lines.append(
            f"| {row['layer']} | {row['stage']} | {row['groups']} | "
            + " | ".join(cells)
            + f" | {row['large_over_small']:.2f} | {row['mean_abs_offset']:.2f} | {row['mean_entropy']:.3f} |"
        )
    return "\n".join(lines)
