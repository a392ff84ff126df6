"""What the lesson network's sampling does at each shape's centre, and how well it does the task:
the figures of the lesson model's card, on a held-out set of scenes.

* ``centre_samples``: per shape, the deepest DCNv3 layer at the shape's centre cell: effective
  dilation (``dcnv3.record.stats.effective_dilation``, feature cells, mean over groups) and the
  principal axis of the sampling locations (``dcnv3.record.geometry.sampling_locations``, all groups'
  points weighted by their softmax weights).
* ``size_dilation``: Pearson r between shape size and that dilation, and the ratio of the mean
  dilation of the largest fifth of the shapes to that of the smallest fifth.
* ``axis_agreement``: circular correlation between the samples' principal axis and the bar's
  angle. An axis has no sign (theta and theta + 180 degrees are the same axis), so both are
  doubled before the correlation (Jammalamadaka and SenGupta's circular r).
* ``task_scores``: what both networks are for: centres found (peaks of the objectness),
  class accuracy and size error at the true centres; the plain twin is scored the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dcnv3.lesson.data import BAR, LESSON_STRIDE, LessonScene, cell_of, lesson_batch
from dcnv3.lesson.network import CLASSES, EXTENT, lesson_letterbox, lesson_records, one_cell, to_input
from dcnv3.record.geometry import sampling_locations
from dcnv3.record.stats import effective_dilation

__all__ = [
    "HELD_OUT_SEED",
    "HELD_OUT_SCENES",
    "CentreSample",
    "held_out_scenes",
    "centre_samples",
    "principal_axis",
    "pearson",
    "circular_correlation",
    "size_dilation",
    "axis_agreement",
    "task_scores",
    "lesson_figures",
]

HELD_OUT_SEED = 1  # the bundled networks were trained on seed 0
HELD_OUT_SCENES = 240
_BATCH = 16


@dataclass(frozen=True)
class CentreSample:
    """The deepest layer at one shape's centre cell: the shape (class, size px, angle rad) and
    the sampling there (effective dilation in feature cells, principal-axis angle in rad,
    elongation = sqrt of the ratio of the weighted covariance's eigenvalues, >= 1)."""

    class_id: int
    size: float
    angle: float
    dilation: float
    axis: float
    elongation: float


def held_out_scenes(count: int = HELD_OUT_SCENES, seed: int = HELD_OUT_SEED) -> list[LessonScene]:
    return lesson_batch(seed, "val", 0, count)


def principal_axis(points: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """(angle rad in [0, pi), elongation) of the weighted (x, y) points (M, 2) with weights (M,):
    the direction of the larger eigenvector of their weighted covariance, and sqrt of the ratio
    of its eigenvalues (1 for an isotropic cloud). y points down, as in the image."""
    w = weights / weights.sum()
    centred = points - (w[:, None] * points).sum(axis=0)
    cov = (w[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    major = eigenvectors[:, 1]
    angle = float(np.arctan2(major[1], major[0]) % np.pi)
    return angle, float(np.sqrt(eigenvalues[1] / max(eigenvalues[0], 1e-12)))


def centre_samples(model, scenes: list[LessonScene], layer: int = -1) -> list[CentreSample]:
    """One ``CentreSample`` per shape of ``scenes``, for DCNv3 layer ``layer`` (default the deepest)."""
    letterbox = lesson_letterbox(scenes[0].image.shape[0])
    found = []
    for start in range(0, len(scenes), _BATCH):
        chunk = scenes[start : start + _BATCH]
        _, records = lesson_records(model, [s.image for s in chunk])
        for scene, layers in zip(chunk, records):
            record = layers[layer]
            for obj in scene.objects:
                cell = cell_of(obj.x, obj.y, LESSON_STRIDE * record.layer_stride)
                dilation = float(effective_dilation(one_cell(record, cell)).mean())
                points = sampling_locations(record, letterbox, cell).reshape(-1, 2)  # (G*P, 2) image px
                axis, elongation = principal_axis(points, record.weights[cell].reshape(-1).astype(np.float64))
                found.append(CentreSample(obj.class_id, obj.size, obj.angle, dilation, axis, elongation))
    return found


def pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64), np.asarray(b, np.float64))[0, 1])


def circular_correlation(a, b) -> float:
    """Jammalamadaka-SenGupta circular correlation of two angle samples (rad)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sa = np.sin(a - np.angle(np.exp(1j * a).mean()))
    sb = np.sin(b - np.angle(np.exp(1j * b).mean()))
    return float((sa * sb).sum() / np.sqrt((sa**2).sum() * (sb**2).sum()))


def size_dilation(samples: list[CentreSample]) -> dict[str, float]:
    """r(size, dilation), r(log size, dilation), the top-fifth / bottom-fifth dilation ratio and
    the mean dilations of both fifths (cells)."""
    size = np.array([s.size for s in samples])
    dilation = np.array([s.dilation for s in samples])
    order = np.argsort(size)
    fifth = max(1, len(order) // 5)
    small, large = dilation[order[:fifth]].mean(), dilation[order[-fifth:]].mean()
    return {
        "shapes": len(samples),
        "r_size": pearson(size, dilation),
        "r_log_size": pearson(np.log(size), dilation),
        "dilation_small": float(small),
        "dilation_large": float(large),
        "ratio": float(large / small),
        "size_small_max": float(size[order[fifth - 1]]),
        "size_large_min": float(size[order[-fifth]]),
    }


def axis_agreement(samples: list[CentreSample], class_id: int = BAR, min_size: float = 0.0) -> dict[str, float]:
    """Circular correlation of doubled angles (samples' principal axis vs shape angle) over the
    shapes of ``class_id`` of at least ``min_size`` px, the median absolute axis difference in
    degrees, and the median elongation of the sampling."""
    chosen = [s for s in samples if s.class_id == class_id and s.size >= min_size]
    if len(chosen) < 3:
        return {
            "shapes": len(chosen),
            "circular_r": float("nan"),
            "median_error_deg": float("nan"),
            "median_elongation": float("nan"),
        }
    axis = np.array([s.axis for s in chosen])
    angle = np.array([s.angle for s in chosen]) % np.pi
    difference = np.abs((axis - angle + np.pi / 2) % np.pi - np.pi / 2)
    return {
        "shapes": len(chosen),
        "circular_r": circular_correlation(2 * axis, 2 * angle),
        "median_error_deg": float(np.degrees(np.median(difference))),
        "median_elongation": float(np.median([s.elongation for s in chosen])),
    }


def task_scores(model, scenes: list[LessonScene], threshold: float = 0.3, radius: float = 1.5) -> dict[str, float]:
    """The task on ``scenes``: objectness peaks (3x3 local maxima >= ``threshold``) matched to true
    centre cells within ``radius`` cells -> precision, recall, F1; at each true centre cell the
    class accuracy and the median |log(predicted size / true size)| (as a factor, e.g. 1.12)."""
    hits = peaks_total = objects = correct = 0
    size_errors = []
    was_training = model.training
    model.eval()
    for start in range(0, len(scenes), _BATCH):
        chunk = scenes[start : start + _BATCH]
        with torch.inference_mode():
            output = model(to_input([s.image for s in chunk]))
        heat = torch.sigmoid(output[:, 0])
        peaks = (heat == F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0]) & (heat >= threshold)
        for index, scene in enumerate(chunk):
            found = torch.nonzero(peaks[index]).numpy().astype(np.float64)  # (K, 2) row, col
            peaks_total += len(found)
            used = np.zeros(len(found), bool)
            for obj in scene.objects:
                objects += 1
                row, col = cell_of(obj.x, obj.y)
                if len(found):
                    distance = np.hypot(found[:, 0] - row, found[:, 1] - col)
                    distance[used] = np.inf
                    best = int(np.argmin(distance))
                    if distance[best] <= radius:
                        used[best] = True
                        hits += 1
                cell = output[index, :, row, col].numpy()
                correct += int(np.argmax(cell[CLASSES]) == obj.class_id)
                size_errors.append(abs(cell[EXTENT][0] - np.log(obj.size)))
    model.train(was_training)
    precision = hits / max(peaks_total, 1)
    recall = hits / max(objects, 1)
    return {
        "objects": objects,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "class_accuracy": correct / max(objects, 1),
        "size_error_factor": float(np.exp(np.median(size_errors))),
    }


def lesson_figures(model, twin=None, scenes: list[LessonScene] | None = None) -> dict:
    """Every figure of the card on ``scenes`` (default: the held-out set): the deepest layer's
    size/dilation and axis figures, the same for every layer's r, and the task scores of the
    model and of its plain ``twin``."""
    scenes = held_out_scenes() if scenes is None else scenes
    samples = centre_samples(model, scenes)
    depth = len(lesson_records(model, [scenes[0].image])[1][0])
    figures = {
        "scenes": len(scenes),
        "size_dilation": size_dilation(samples),
        "bar_axis": axis_agreement(samples),
        "bar_axis_min_24px": axis_agreement(samples, min_size=24.0),
        "r_size_by_layer": [size_dilation(centre_samples(model, scenes, layer))["r_size"] for layer in range(depth - 1)]
        + [size_dilation(samples)["r_size"]],
        "task": task_scores(model, scenes),
    }
    if twin is not None:
        figures["twin_task"] = task_scores(twin, scenes)
    return figures
