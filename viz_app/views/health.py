"""The Health view's side of layer health: the table rows and the DCNv1 Table 2 layout (pure numpy).

The numbers and the calibrated flags themselves are computed in the package, ``dcnv3.analysis.health``
(the same ones ``dcnv3.health(...)`` and ``python -m dcnv3 health`` report): each flag is measured
against the same layer with zero offsets and uniform weights on the same image. This module turns
them into the table the app shows (``health_rows``) and the flags' legend (``thresholds_markdown``),
and re-exports what the views read.

``dilation_by_size`` gives the DCNv1 paper's Table 2 for one image: rows = layers, columns =
small / medium / large detections (sqrt(box area) < 32, < 96, >= 96 original-image px, the COCO
convention) and background (cells whose centre lies inside the image but in no detection box);
each entry is the mean +- std of the effective dilation (feature cells, mean over groups) at the
cells under the detections' centres, or over the background cells.
"""

from __future__ import annotations

import numpy as np

from dcnv3.analysis.dataset import dilation_at_objects
from dcnv3.analysis.health import NEAR_BOUND, THRESHOLDS, LayerHealth, layer_health, probe_health
from dcnv3.record.stats import group_similarity  # re-exported: the health table's group cosine

__all__ = [
    "THRESHOLDS",
    "LayerHealth",
    "group_similarity",
    "layer_health",
    "health_report",
    "health_rows",
    "dilation_by_size",
    "dilation_by_size_rows",
    "SIZE_CLASSES",
    "thresholds_markdown",
]

SIZE_CLASSES = ("small", "medium", "large")  # sqrt(area) < 32, < 96, >= 96 px (COCO)


def health_report(probe) -> list[LayerHealth]:
    """Every layer's ``dcnv3.analysis.health.LayerHealth`` on the probed image, in forward order."""
    return probe_health(probe)


def thresholds_markdown() -> str:
    """The flags and their thresholds (``dcnv3.analysis.health.THRESHOLDS``) in a few lines of
    markdown: the legend of the Health view."""
    t = THRESHOLDS
    return "\n".join(
        [
            "**Flags**: each number is an image-wide mean over cells and groups, measured against the same "
            "layer with zero offsets and uniform weights on the same image (*the grid*):",
            f"- *collapsed to the grid*: mean |offset| < {t['collapsed_offset']:g} of the grid's point spacing",
            f"- *exploding off the image*: more than {t['exploding_excess']:.0%} of the samples the grid keeps inside "
            f"the image pushed off it, or mean |offset| > {t['exploding_offset']:g} point spacings",
            f"- *weights saturated*: fewer than {t['saturated_points']:g} of the P points effectively carry the "
            f"weight (P ** normalised entropy); for a sigmoid (DCNv2) also more than {t['binary_share']:.0%} of "
            f"the weights within {NEAR_BOUND} of 0 or 1",
            f"- *weights vanished* (DCNv2, DCNv4): mean |m| < {t['vanished_sigmoid']:g} (sigmoid) or "
            f"{t['vanished_free']:g} (free) while the offsets move",
            "- *untrained* (DCNv4): offsets and scalars all about 0, its initial state",
            f"- *groups learned the same thing*: mean pairwise cosine of the groups' offset fields > "
            f"{t['same_groups_cosine']:g} (G >= 2)",
        ]
    )


def health_rows(probe) -> list[dict]:
    """The health table: one row (column name -> value) per layer, for a dataframe. "grid off image"
    is the regular grid's share on the same image, the reference the exploding flag is measured
    against; "points" is how many of the P points effectively carry the weight."""
    rows = []
    for h in health_report(probe):
        rows.append(
            {
                "layer": h.name,
                "stage": h.stage,
                "kind": h.weight_kind,
                "G": h.groups,
                "K": h.kernel,
                "grid": f"{h.grid[0]}x{h.grid[1]}",
                "|offset| cells": round(h.mean_offset, 3),
                "off image": round(h.outside_share, 3),
                "grid off image": round(h.outside_share_reference, 3),
                "entropy": round(h.entropy, 3),
                "points": f"{h.effective_points:.1f}/{h.points}",
                "dilation cells": round(h.effective_dilation, 3),
                "group cos": "n/a" if h.group_similarity is None else round(h.group_similarity, 3),
                "flags": "; ".join(h.flags.values()) if h.flags else "OK",
            }
        )
    return rows


def dilation_by_size(probe, pixel_scale: float = 1.0) -> dict[str, dict[str, np.ndarray]]:
    """Effective dilation samples per layer and size class (Table 2 of DCNv1, for one image).

    Returns {layer name: {"small" | "medium" | "large" | "background": 1-D array of values}}, each
    value the group-mean effective dilation (feature cells) at one detection's centre cell, or at
    one background cell (see ``dcnv3.analysis.dataset.dilation_at_objects``). ``pixel_scale``: probe px
    per original-image px (for size classes in original pixels when the image was downscaled).
    """
    return {
        layer.name: dilation_at_objects(layer, probe.letterbox, probe.detections.boxes, pixel_scale)
        for layer in probe.layers
    }


def dilation_by_size_rows(probe, pixel_scale: float = 1.0) -> list[dict]:
    """``dilation_by_size`` as table rows: "mean ± std (n=...)" per size class and background."""
    headers = {
        "small": "small (<32 px)",
        "medium": "medium (32-96 px)",
        "large": "large (>=96 px)",
        "background": "background",
    }
    table = dilation_by_size(probe, pixel_scale)
    rows = []
    for layer in probe.layers:
        row = {"layer": f"{layer.stage} {layer.name}"}
        for key, header in headers.items():
            v = table[layer.name][key]
            row[header] = f"{v.mean():.2f} ± {v.std():.2f} (n={v.size})" if v.size else "no cells"
        rows.append(row)
    return rows
