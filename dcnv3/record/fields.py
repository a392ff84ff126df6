"""Whole-image field maps of a deformable layer: one value per output cell, and each map's colour range.

Pure numpy on a ``LayerRecord`` and the letterbox (through ``dcnv3.record.stats``); drawing them is
``dcnv3.draw.overlay.field_colours`` / ``FieldAnnotator``. Every map is (H, W) over the layer's output
grid, for one group or the mean over groups; "offset direction" is (H, W, 2).
"""

from __future__ import annotations

import numpy as np

from dcnv3.record import stats
from dcnv3.record.weight_encoding import entropy_text

__all__ = ["FIELDS", "BOUNDED_FIELDS", "field_values", "field_range", "field_title"]

FIELDS = {
    "offset magnitude": "mean |offset_scale x offset| over the P points, in feature cells",
    "offset direction": "direction of the mean displacement (hue) and its length (brightness)",
    "weight entropy": (
        "normalised entropy of each group's weights (softmax: the weights; sigmoid and free: "
        "|m| normalised per group): 0 = one point, 1 = all equal"
    ),
    "effective dilation": "mean distance between neighbouring sampling points, in feature cells",
    "share off the image": "share of the P samples that fall outside the image",
}
BOUNDED_FIELDS = ("weight entropy", "share off the image")  # in [0, 1] by definition


def field_values(probe, layer, field: str, group: int | None = None) -> np.ndarray:
    """Per-cell values of a field: (H, W), or (H, W, 2) mean displacement (dx, dy) in cells for
    "offset direction". ``probe``: a ``Probe`` (its records and letterbox); ``layer``: a record or
    its name; ``group`` None averages over groups."""
    record = probe.record(layer)
    if field == "offset direction":
        displacement = record.offset_scale * record.offsets.astype(np.float64).mean(axis=3)  # (H, W, G, 2)
        return displacement.mean(axis=2) if group is None else displacement[:, :, group]
    per_group = {
        "offset magnitude": stats.offset_magnitude,
        "weight entropy": stats.weight_entropy,
        "effective dilation": stats.effective_dilation,
        "share off the image": lambda r: stats.outside_share(r, probe.letterbox),
    }
    if field not in per_group:
        raise ValueError(f"unknown field {field!r}; one of {list(FIELDS)}")
    values = per_group[field](record)  # (H, W, G)
    return values.mean(axis=-1) if group is None else values[..., group]


def field_title(field: str, record) -> str:
    """A field's name as its colour bar states it for ``record``: the unit, and for "weight
    entropy" what the entropy is of for the record's weight kind (``weight_encoding.entropy_text``)."""
    if field == "weight entropy":
        return "weight " + entropy_text(record.weight_kind)
    return field + {"offset magnitude": " (cells)", "effective dilation": " (cells)"}.get(field, "")


def field_range(field: str, values: np.ndarray) -> tuple[float, float]:
    """The colour scale of a map: (0, 1) for the bounded fields (a fixed scale keeps layers
    comparable), else (0, the map's maximum), or (0, 1) for a map that is all zero.
    ``values``: (H, W) scalars (for "offset direction": the displacement lengths)."""
    if field in BOUNDED_FIELDS:
        return 0.0, 1.0
    top = float(np.nanmax(values)) if values.size else 0.0
    return 0.0, top if top > 1e-9 else 1.0
