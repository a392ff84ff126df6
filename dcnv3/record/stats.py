"""Per-cell, per-group statistics of a DCNv3 layer record: pure numpy, each (H, W, G) float64.

* ``offset_magnitude``: mean over the P points of the learned displacement |offset_scale *
  offset| in feature cells (0 = the regular grid).
* ``weight_entropy``: normalised entropy of each group's weights, -sum q log q / log P over
  q = |m| / sum |m| (0 = one point takes all the weight, 1 = all points equal). For softmax
  weights (DCNv3) q is the weights themselves; for DCNv2's sigmoid and DCNv4's free, signed
  weights, which are no distribution, it is their magnitudes normalised per group
  (``dcnv3.record.weight_encoding.entropy_text`` says which in the views).
* ``effective_dilation``: mean distance, in feature cells, between sampling points that are
  neighbours in the KxK kernel (horizontal and vertical pairs), as in Table 2 of the DCNv1
  paper; the regular grid gives dilation * offset_scale.
* ``outside_share``: share of the P samples that fall outside the original image.

Over a whole layer: ``layer_summary`` (image-wide means and spreads of the four),
``group_similarity`` (do the groups move alike?); at one cell: ``cell_summary``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dcnv3.record.geometry import Letterbox, kernel_offsets, sampling_locations

__all__ = [
    "offset_magnitude",
    "weight_entropy",
    "effective_dilation",
    "outside_share",
    "adjacent_pairs",
    "layer_summary",
    "group_similarity",
    "cell_summary",
]


def offset_magnitude(layer) -> np.ndarray:
    displacement = layer.offset_scale * layer.offsets.astype(np.float64)
    return np.linalg.norm(displacement, axis=-1).mean(axis=-1)


def weight_entropy(layer) -> np.ndarray:
    """(H, W, G) normalised entropy of each group's |m| / sum |m| (module docstring).

    A group whose |m| are all 0 (DCNv4 at initialisation) prefers no point: it counts as 1.
    """
    magnitude = np.abs(layer.weights.astype(np.float64))
    points = magnitude.shape[-1]
    if points < 2:
        return np.zeros(magnitude.shape[:-1])
    total = magnitude.sum(axis=-1, keepdims=True)
    share = np.divide(magnitude, total, out=np.full_like(magnitude, 1.0 / points), where=total > 1e-12)
    safe = np.clip(share, 1e-12, 1.0)
    return -(share * np.log(safe)).sum(axis=-1) / np.log(points)


def adjacent_pairs(kernel: int, remove_center: bool = False) -> np.ndarray:
    """(pairs, 2) point indices of horizontal and vertical kernel neighbours, in DCNv3's order
    p = i*K + j (after dropping the centre when ``remove_center``)."""
    index = np.arange(kernel * kernel).reshape(kernel, kernel)  # [i (x), j (y)]
    pairs = [(index[i, j], index[i + 1, j]) for i in range(kernel - 1) for j in range(kernel)]
    pairs += [(index[i, j], index[i, j + 1]) for i in range(kernel) for j in range(kernel - 1)]
    pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    if remove_center:
        centre = (kernel * kernel - 1) // 2
        pairs = pairs[(pairs != centre).all(axis=1)]
        pairs = pairs - (pairs > centre)
    return pairs


def effective_dilation(layer) -> np.ndarray:
    pairs = adjacent_pairs(layer.kernel, layer.remove_center)
    if len(pairs) == 0:
        return np.zeros(layer.offsets.shape[:3])
    grid = kernel_offsets(layer.kernel, layer.dilation, layer.remove_center)
    points = layer.offset_scale * (grid + layer.offsets.astype(np.float64))  # (H, W, G, P, 2)
    distances = np.linalg.norm(points[..., pairs[:, 0], :] - points[..., pairs[:, 1], :], axis=-1)
    return distances.mean(axis=-1)


def outside_share(layer, letterbox: Letterbox) -> np.ndarray:
    locations = sampling_locations(layer, letterbox)  # (H, W, G, P, 2) image pixels
    height, width = letterbox.image_shape
    outside = (
        (locations[..., 0] < 0) | (locations[..., 0] > width) | (locations[..., 1] < 0) | (locations[..., 1] > height)
    )
    return outside.mean(axis=-1)


def layer_summary(layer, letterbox: Letterbox) -> dict:
    """Image-wide means (over cells and groups) of the four statistics, plus their spread."""
    summary = {}
    for name, values in (
        ("offset_magnitude", offset_magnitude(layer)),
        ("weight_entropy", weight_entropy(layer)),
        ("effective_dilation", effective_dilation(layer)),
        ("outside_share", outside_share(layer, letterbox)),
    ):
        summary[f"{name}_mean"] = float(values.mean())
        summary[f"{name}_std"] = float(values.std())
    return summary


def group_similarity(layer) -> float | None:
    """Mean pairwise cosine similarity of the groups' offset fields, (H, W, P, 2) flattened per group.

    None for a single group, or when fewer than two groups have any non-zero offset (a zero field
    has no direction).
    """
    if layer.groups < 2:
        return None
    fields = np.moveaxis(layer.offsets.astype(np.float64), 2, 0).reshape(layer.groups, -1)
    norms = np.linalg.norm(fields, axis=1)
    moving = norms > 1e-9
    if moving.sum() < 2:
        return None
    unit = fields[moving] / norms[moving, None]
    cosine = unit @ unit.T
    upper = np.triu_indices(len(unit), k=1)
    return float(cosine[upper].mean())


def cell_summary(layer, cell) -> tuple[float, float, float]:
    """(effective dilation, mean |offset|, weight entropy) at one (row, col) cell, means over
    groups: the functions above on a one-cell slice of the record."""
    row, col = cell
    one = dataclasses.replace(
        layer, offsets=layer.offsets[row : row + 1, col : col + 1], weights=layer.weights[row : row + 1, col : col + 1]
    )
    return (
        float(effective_dilation(one).mean()),
        float(offset_magnitude(one).mean()),
        float(weight_entropy(one).mean()),
    )
