"""The trace through the stacked deformable layers: where a cell's samples themselves sampled.

Pure numpy on a probe's ``LayerRecord``s and its letterbox (``Probe.layers``,
``Probe.letterbox``): no drawing here (``dcnv3.draw.overlay.TraceAnnotator`` draws a trace, and
``viz_app.views.render.trace_overlay`` zooms on it).

Path weights are the modulation weights multiplied along the path as the records hold them, for
every kind (``dcnv3.record.weight_encoding``): DCNv3's softmax and DCNv2's sigmoid weights are >= 0, so
path weights are too; DCNv4's free weights are signed, and their products keep the sign (a path
through one negative weight subtracts, through two adds), paths reaching one position add up
with their signs (they can cancel), and the beam keeps the largest |path weight|. Drawings show
|path weight| with negative paths hollow (``weight_encoding.path_weight_text`` says so in words).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcnv3.record.geometry import cell_step

__all__ = ["TraceLevel", "trace_through_layers"]


@dataclass
class TraceLevel:
    """One deformable layer on the path: sample positions (N, 2) in image px and their path weights
    (N,), signed where a layer on the path has signed weights; ``weight_kind``: that layer's."""

    layer: str
    xy: np.ndarray
    weight: np.ndarray
    weight_kind: str = "softmax"


def trace_through_layers(probe, layer, cell, groups=None, top: int = 60) -> list[TraceLevel]:
    """Where the chosen layer's samples at ``cell`` themselves sampled, down the stacked DCNv3 layers.

    As in figure 6 of the DCNv1 paper: level 0 is the chosen layer's samples (the chosen groups, each
    group's weights divided by the number of groups, so a level's softmax weights sum to at most 1).
    Each sample then reads the next lower DCNv3 layer (the previous one in forward order) at its
    position: bilinearly, like the deformable sampling itself, so it follows the up to 4 cells around
    the position with the bilinear coefficients (a sample exactly on a cell centre follows that one
    cell). Each of those cells contributes its own samples, with path weight = parent weight x bilinear
    coefficient x the child's weight / its group count (signed weights multiply with their sign: module
    docstring). Paths that reach the same position are merged (their weights add up) and only the
    ``top`` positions of largest |weight| are kept per level (a beam); cells beyond the grid read zeros,
    as DCNv3's padding does, so their paths end. Ordinary convolutions between the DCNv3 layers are not
    part of the trace.
    """
    names = [record.name for record in probe.layers]
    record = probe.record(layer)
    index = names.index(record.name)
    locations = probe.sampling_locations(record, cell)
    weights = record.weights[tuple(cell)].astype(np.float64)
    chosen = list(range(record.groups)) if groups is None else [g for g in groups if 0 <= g < record.groups]
    chosen = chosen or list(range(record.groups))
    xy = locations[chosen].reshape(-1, 2)
    path = (weights[chosen] / len(chosen)).reshape(-1)
    levels = [_keep_top(_merged(TraceLevel(record.name, xy, path, record.weight_kind)), top)]
    for lower in reversed(probe.layers[:index]):
        rows, cols, coefficients = _bilinear_cells(probe, lower, levels[-1].xy)
        if len(rows) == 0:
            break
        parent_weight = levels[-1].weight[coefficients[0]] * coefficients[1]  # (M,)
        children_xy = probe.sampling_locations(lower, (rows, cols)).reshape(-1, 2)  # (M*G*P, 2)
        children_w = parent_weight[:, None] * lower.weights[rows, cols].reshape(len(rows), -1) / lower.groups
        levels.append(
            _keep_top(_merged(TraceLevel(lower.name, children_xy, children_w.reshape(-1), lower.weight_kind)), top)
        )
    return levels


def _bilinear_cells(probe, layer, xy: np.ndarray):
    """The cells a bilinear read of ``layer``'s output at image points ``xy`` (N, 2) touches.

    Returns (rows (M,), cols (M,), (parent index (M,), coefficient (M,))), only in-grid cells with
    a non-zero coefficient. Cell centres step linearly: ``cell_centre((0, 0))`` + index * step.
    """
    origin = probe.cell_centre(layer, (0, 0))
    step = cell_step(layer, probe.letterbox)  # image px between cell centres
    u = (np.asarray(xy, dtype=np.float64) - origin) / step  # continuous (col, row), centres at integers
    base = np.floor(u)
    frac = u - base
    rows, cols, parents, coefficients = [], [], [], []
    for dc, dr in ((0, 0), (1, 0), (0, 1), (1, 1)):
        coefficient = (frac[:, 0] if dc else 1 - frac[:, 0]) * (frac[:, 1] if dr else 1 - frac[:, 1])
        col, row = base[:, 0] + dc, base[:, 1] + dr
        keep = (coefficient > 1e-9) & (row >= 0) & (row < layer.grid[0]) & (col >= 0) & (col < layer.grid[1])
        rows.append(row[keep].astype(np.int64))
        cols.append(col[keep].astype(np.int64))
        parents.append(np.nonzero(keep)[0])
        coefficients.append(coefficient[keep])
    return (np.concatenate(rows), np.concatenate(cols), (np.concatenate(parents), np.concatenate(coefficients)))


def _merged(level: TraceLevel) -> TraceLevel:
    """One point per distinct position (to 1e-3 px), weights of coinciding paths added.

    Positions are keyed by one int64 (x and y in thousandths of a pixel, each offset by 2^30 into
    31 bits), because a 1-D unique is a plain sort where ``np.unique(axis=0)`` sorts rows
    lexicographically, ~10x slower.
    """
    milli = np.round(level.xy * 1000).astype(np.int64) + (1 << 30)  # (N, 2), positive below 2^31
    keys, inverse = np.unique((milli[:, 0] << 31) | milli[:, 1], return_inverse=True)
    weights = np.bincount(inverse.ravel(), weights=level.weight, minlength=len(keys))
    positions = np.stack([(keys >> 31) - (1 << 30), (keys & ((1 << 31) - 1)) - (1 << 30)], axis=1) / 1000
    return TraceLevel(level.layer, positions, weights, level.weight_kind)


def _keep_top(level: TraceLevel, top: int) -> TraceLevel:
    """The ``top`` points of largest |weight|, strongest first (equal ones at the cut: either may stay)."""
    strength = np.abs(level.weight)
    order = np.arange(len(level.weight))
    if len(order) > top:  # partition first: a full sort of thousands of paths is most of a trace's time
        order = np.argpartition(-strength, top - 1)[:top]
    order = order[np.lexsort((order, -strength[order]))]
    return TraceLevel(level.layer, level.xy[order], level.weight[order], level.weight_kind)
