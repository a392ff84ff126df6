"""Health of a probe's DCNv3 layers: per-layer numbers and plain-language flags (pure numpy).

Each number is an image-wide mean over the layer's cells and groups (``dcnv3.stats``). A layer is
flagged when:

* **collapsed to the grid**: mean |offset| < 0.05 feature cells. The samples sit on the regular
  KxK grid, so the layer acts like a plain (dilated) convolution: the offsets learned nothing
  (or the model is untrained).
* **exploding off the image**: more than 30 % of the samples fall outside the image, or mean
  |offset| > 4 feature cells. The layer reads mostly padding or far-away context.
* **weights saturated on one point**: mean normalised weight entropy < 0.2 (0 = all weight on one
  point, 1 = uniform 1/P). The K*K points degenerate to about one sample.
* **groups learned the same thing**: mean pairwise cosine similarity of the groups' offset fields
  (each group's offsets over all cells and points, flattened) > 0.95, only when G >= 2. The
  groups are redundant: fewer would do.

``dilation_by_size`` gives the DCNv1 paper's Table 2 for one image: rows = layers, columns =
small / medium / large detections (sqrt(box area) < 32, < 96, >= 96 original-image px, the COCO
convention) and background (cells whose centre lies inside the image but in no detection box);
each entry is the mean +- std of the effective dilation (feature cells, mean over groups) at the
cells under the detections' centres, or over the background cells.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dcnv3 import stats
from dcnv3.analysis import dilation_at_objects
from dcnv3.stats import group_similarity  # re-exported: the health table's fourth number

__all__ = ["THRESHOLDS", "LayerHealth", "group_similarity", "layer_health", "health_report", "health_rows",
           "dilation_by_size", "dilation_by_size_rows", "SIZE_CLASSES", "thresholds_markdown"]

THRESHOLDS = {
    "collapsed_offset": 0.05,  # cells: mean |offset| below this = collapsed to the grid
    "exploding_share": 0.3,  # share of samples off the image above this = exploding
    "exploding_offset": 4.0,  # cells: mean |offset| above this = exploding
    "saturated_entropy": 0.2,  # mean normalised entropy below this = saturated on one point
    "same_groups_cosine": 0.95,  # mean pairwise cosine above this = groups learned the same thing
}
SIZE_CLASSES = ("small", "medium", "large")  # sqrt(area) < 32, < 96, >= 96 px (COCO)


@dataclass
class LayerHealth:
    """One layer's image-wide means and the flags they raise (empty list = healthy)."""
    name: str
    stage: str
    stride: int
    groups: int
    kernel: int
    grid: tuple[int, int]
    mean_offset: float  # feature cells
    outside_share: float  # 0..1
    entropy: float  # 0..1
    effective_dilation: float  # feature cells
    group_similarity: float | None  # None when G < 2 or fewer than two groups moved
    flags: list[str] = field(default_factory=list)


def _flags(health: LayerHealth) -> list[str]:
    t = THRESHOLDS
    flags = []
    if health.mean_offset < t["collapsed_offset"]:
        flags.append(f"collapsed to the grid (mean |offset| {health.mean_offset:.3f} < "
                     f"{t['collapsed_offset']} cells): acts like a plain convolution")
    reasons = []
    if health.outside_share > t["exploding_share"]:
        reasons.append(f"{health.outside_share:.0%} of samples off the image > {t['exploding_share']:.0%}")
    if health.mean_offset > t["exploding_offset"]:
        reasons.append(f"mean |offset| {health.mean_offset:.2f} > {t['exploding_offset']:g} cells")
    if reasons:
        flags.append(f"exploding off the image ({'; '.join(reasons)})")
    if health.entropy < t["saturated_entropy"]:
        flags.append(f"weights saturated on one point (entropy {health.entropy:.2f} < {t['saturated_entropy']})")
    if health.group_similarity is not None and health.group_similarity > t["same_groups_cosine"]:
        flags.append(f"groups learned the same thing (cosine {health.group_similarity:.3f} > "
                     f"{t['same_groups_cosine']})")
    return flags


def layer_health(layer, letterbox) -> LayerHealth:
    """Numbers and flags of one ``LayerRecord`` (``letterbox`` locates the image's border)."""
    summary = stats.layer_summary(layer, letterbox)
    health = LayerHealth(layer.name, layer.stage, layer.stride, layer.groups, layer.kernel, tuple(layer.grid),
                         summary["offset_magnitude_mean"], summary["outside_share_mean"],
                         summary["weight_entropy_mean"], summary["effective_dilation_mean"],
                         group_similarity(layer))
    health.flags = _flags(health)
    return health


def health_report(probe) -> list[LayerHealth]:
    return [layer_health(record, probe.letterbox) for record in probe.layers]


def health_rows(probe) -> list[dict]:
    """The health table: one row (column name -> value) per layer, for a dataframe."""
    rows = []
    for h in health_report(probe):
        rows.append({
            "layer": h.name, "stage": h.stage, "G": h.groups, "K": h.kernel, "grid": f"{h.grid[0]}x{h.grid[1]}",
            "|offset| cells": round(h.mean_offset, 3), "off image": round(h.outside_share, 3),
            "entropy": round(h.entropy, 3), "dilation cells": round(h.effective_dilation, 3),
            "group cos": "n/a" if h.group_similarity is None else round(h.group_similarity, 3),
            "flags": "; ".join(h.flags) if h.flags else "OK"})
    return rows


def dilation_by_size(probe, pixel_scale: float = 1.0) -> dict[str, dict[str, np.ndarray]]:
    """Effective dilation samples per layer and size class (Table 2 of DCNv1, for one image).

    Returns {layer name: {"small" | "medium" | "large" | "background": 1-D array of values}}, each
    value the group-mean effective dilation (feature cells) at one detection's centre cell, or at
    one background cell (see ``dcnv3.analysis.dilation_at_objects``). ``pixel_scale``: probe px
    per original-image px (for size classes in original pixels when the image was downscaled).
    """
    return {layer.name: dilation_at_objects(layer, probe.letterbox, probe.detections.boxes, pixel_scale)
            for layer in probe.layers}


def dilation_by_size_rows(probe, pixel_scale: float = 1.0) -> list[dict]:
    """``dilation_by_size`` as table rows: "mean ± std (n=...)" per size class and background."""
    headers = {"small": "small (<32 px)", "medium": "medium (32-96 px)", "large": "large (>=96 px)",
               "background": "background"}
    table = dilation_by_size(probe, pixel_scale)
    rows = []
    for layer in probe.layers:
        row = {"layer": f"{layer.stage} {layer.name}"}
        for key, header in headers.items():
            v = table[layer.name][key]
            row[header] = f"{v.mean():.2f} ± {v.std():.2f} (n={v.size})" if v.size else "no cells"
        rows.append(row)
    return rows


def thresholds_markdown() -> str:
    """The flag thresholds, for the UI (image-wide means over cells and groups)."""
    t = THRESHOLDS
    return "\n".join([
        "**Flags** (image-wide means over cells and groups):",
        f"- *collapsed to the grid*: mean |offset| < {t['collapsed_offset']} feature cells",
        f"- *exploding off the image*: more than {t['exploding_share']:.0%} of the samples off the image, "
        f"or mean |offset| > {t['exploding_offset']:g} cells",
        f"- *weights saturated on one point*: mean normalised entropy < {t['saturated_entropy']}",
        f"- *groups learned the same thing*: mean pairwise cosine similarity of the groups' offset fields "
        f"> {t['same_groups_cosine']} (only when G >= 2)"])
