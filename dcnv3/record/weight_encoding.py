"""How every view draws a modulation weight, by the weight's kind: the one rule for sizes, opacities,
hollow (negative) marks, and the words that explain them.

A layer record's ``weight_kind`` (``dcnv3.ops.sampling_hooks.WEIGHT_KINDS``) says what its weights are,
and each kind has its own natural reference, the value that means "weighs this sample like a plain
convolution would":

* ``"softmax"`` (DCNv3): each group's P weights sum to 1, so the reference is the uniform 1/P:
  ``relative = w * P``.
* ``"sigmoid"`` (DCNv2): each weight is in [0, 1] on its own, with no constraint across points; 1
  lets the sample through unchanged (a plain convolution), so the weight is its own scale:
  ``relative = w``. A point is never drawn larger than the base size, and two groups (or two
  cells) compare directly.
* ``"free"`` (DCNv4): signed, unbounded scalars, all 0 at initialisation. There is no fixed scale,
  so the reference is the group's own mean |m| over its P points at that cell:
  ``relative = |m| / mean_p |m|`` (0 where the whole group is 0, as in an untrained DCNv4).
  A negative weight subtracts its sample: it is drawn as a hollow ring (``negative``) instead of
  a filled disc.

From ``relative`` (1 = the reference), every view takes the same marks: radius = base *
clip(sqrt(relative), 0.4, 2.5) (a mark's area grows with its weight), opacity = clip(0.25 + 0.75 *
relative, 0.25, 1) (points that barely count fade; the reference and heavier ones are opaque).

Pure numpy, layer 1 (no drawing here: ``dcnv3.draw.overlay``, ``viz_app.views.render`` and the figures use
these arrays).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcnv3.ops.sampling_hooks import WEIGHT_KINDS

__all__ = [
    "SIZE_RANGE",
    "OPACITY_FLOOR",
    "KIND_NAMES",
    "WeightEncoding",
    "encode_weights",
    "record_encoding",
    "relative_weights",
    "legend",
    "legend_lines",
    "short_legend",
    "weight_meaning",
    "reference_text",
    "entropy_text",
    "path_weight_text",
]

SIZE_RANGE = (0.4, 2.5)  # radius factor bounds: tiny points stay visible, heavy ones do not bury the rest
OPACITY_FLOOR = 0.25  # a point of weight 0 is still seen (faint), so the full kernel stays readable

# The kind with the operator it comes from, as the legends name it.
KIND_NAMES = {"softmax": "softmax (DCNv3)", "sigmoid": "sigmoid (DCNv2)", "free": "free (DCNv4)"}


@dataclass(frozen=True)
class WeightEncoding:
    """How the points of one cell (or of many) are drawn; every array has the weights' shape (..., P).

    ``relative``: each weight on its kind's scale (1 = the kind's reference, module docstring);
    ``size``: radius factor of a view's base radius; ``opacity`` in [0.25, 1]; ``negative``: bool,
    drawn hollow (only "free" weights can be negative). ``kind``: the record's ``weight_kind``.
    """

    kind: str
    relative: np.ndarray
    size: np.ndarray
    opacity: np.ndarray
    negative: np.ndarray


def _check_kind(kind: str) -> str:
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"unknown weight kind {kind!r}; one of {list(WEIGHT_KINDS)}")
    return kind


def relative_weights(weights, kind: str) -> np.ndarray:
    """(..., P) weights of ``kind`` -> (..., P) float64 on the kind's scale (1 = its reference)."""
    values = np.asarray(weights, dtype=np.float64)
    kind = _check_kind(kind)
    if kind == "softmax":
        return values * values.shape[-1]
    if kind == "sigmoid":
        return values
    magnitude = np.abs(values)
    mean = magnitude.mean(axis=-1, keepdims=True)
    # A group whose weights are all 0 (DCNv4 at initialisation) has no scale: every point is 0.
    return np.divide(magnitude, mean, out=np.zeros_like(magnitude), where=mean > 1e-12)


def encode_weights(weights, kind: str = "softmax") -> WeightEncoding:
    """(..., P) modulation weights of ``kind`` -> their ``WeightEncoding`` (module docstring's rule)."""
    relative = relative_weights(weights, kind)
    size = np.clip(np.sqrt(relative), *SIZE_RANGE)
    opacity = np.clip(OPACITY_FLOOR + (1 - OPACITY_FLOOR) * relative, OPACITY_FLOOR, 1.0)
    negative = np.asarray(weights) < 0
    return WeightEncoding(kind, relative, size, opacity, negative)


def record_encoding(record, cell=None) -> WeightEncoding:
    """A ``LayerRecord``'s encoding: at one (row, col) cell (arrays (G, P)) or everywhere (H, W, G, P)."""
    weights = record.weights if cell is None else record.weights[tuple(cell)]
    return encode_weights(weights, record.weight_kind)


def reference_text(kind: str) -> str:
    """What ``relative`` is measured against, for hover texts: "x uniform 1/P", ..."""
    return {"softmax": "x uniform 1/P", "sigmoid": "of 1 = fully on", "free": "x the group's mean |m|"}[
        _check_kind(kind)
    ]


def legend_lines(kind: str) -> list[str]:
    """A view's legend, line by line: what the weights are, how their marks read, and (free
    weights) what a hollow ring means. ``legend`` joins them."""
    kind = _check_kind(kind)
    what = {
        "softmax": "each group's P weights sum to 1",
        "sigmoid": "each weight in [0, 1] on its own, no sum across points",
        "free": "signed and unbounded, 0 at initialisation",
    }[kind]
    marks = {
        "softmax": "point size and opacity: the weight relative to the uniform 1/P",
        "sigmoid": "point size and opacity: the weight itself (1 = fully on, the largest)",
        "free": "point size and opacity: |m| relative to the group's mean |m|",
    }[kind]
    lines = [f"weights {KIND_NAMES[kind]}: {what}", marks]
    if kind == "free":
        lines.append("hollow rings: negative weights (the sample is subtracted)")
    return lines


def legend(kind: str) -> str:
    """One sentence for a view's legend (``legend_lines`` joined by "; ")."""
    return "; ".join(legend_lines(kind))


def weight_meaning(weight: float, relative: float, kind: str) -> str:
    """What one point's weight means for its kind, for a hover text after "weight=<value>": e.g.
    "(2.25x uniform 1/P)", "(sigmoid, 1 = fully on)",
    "(|m| 1.30x the group's mean |m|; negative: subtracts its sample)"."""
    kind = _check_kind(kind)
    if kind == "softmax":
        return f"({relative:.2f}x uniform 1/P)"
    if kind == "sigmoid":
        return "(sigmoid, 1 = fully on)"
    sign = "; negative: subtracts its sample" if weight < 0 else ""
    return f"(|m| {relative:.2f}x the group's mean |m|{sign})"


def short_legend(kind: str) -> str:
    """A few words for a caption on a picture (a video frame, an exported PNG)."""
    return {
        "softmax": "weights softmax (DCNv3): size = w x P",
        "sigmoid": "weights sigmoid (DCNv2): size = w in [0, 1]",
        "free": "weights free (DCNv4): size = |m| / group mean, hollow = negative",
    }[_check_kind(kind)]


def entropy_text(kind: str) -> str:
    """What ``dcnv3.record.stats.weight_entropy`` takes the entropy of, for this kind (short enough for a
    colour bar or a column header): softmax weights are a distribution, the others are not, so
    their |m| are normalised per group first."""
    if _check_kind(kind) == "softmax":
        return "entropy of the softmax weights (DCNv3)"
    operator = {"sigmoid": "sigmoid weights, DCNv2", "free": "free weights, DCNv4"}[kind]
    return f"entropy of |m| normalised per group ({operator})"


def path_weight_text(kinds) -> str:
    """How the trace (``dcnv3.record.trace``) combines the weights along a path, for the kinds it crosses."""
    kinds = {_check_kind(k) for k in kinds}
    text = "path weight = product of the weights along the path, each divided by its layer's group count"
    if "free" in kinds:
        text += (
            "; signed DCNv4 weights multiply with their sign (two negatives make a positive), paths to "
            "one position add up, the strongest |path weight| are kept; hollow rings: negative paths"
        )
    return text
