"""Where a DCNv3 layer samples, in original-image pixels: pure numpy on a probe's layer record.

Coordinates are continuous: pixel i spans [i, i+1), so its centre is i + 0.5. A feature-map
index x of a layer whose input has stride s (feature index centres at integers, as in
docs/spec.md) lies at network-input coordinate (x + 0.5) * s, and in the original image at
((x + 0.5) * s - pad_left) / ratio, with the letterbox ``ratio`` and ``pad`` that ultralytics
used (the same convention as its ``scale_boxes``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Letterbox",
    "kernel_offsets",
    "sampling_locations",
    "regular_locations",
    "cell_at",
    "cell_centre",
    "cell_centres",
    "cell_step",
    "box_centre",
]


@dataclass(frozen=True)
class Letterbox:
    """How an original image (height, width) became the network input (height, width)."""

    image_shape: tuple[int, int]
    input_shape: tuple[int, int]
    ratio: float
    pad: tuple[float, float]  # (left, top) in network-input pixels

    @classmethod
    def from_shapes(cls, image_shape, input_shape) -> Letterbox:
        """The geometry ultralytics' LetterBox produced and its ``scale_boxes`` undoes."""
        gain = min(input_shape[0] / image_shape[0], input_shape[1] / image_shape[1])
        pad_left = round((input_shape[1] - image_shape[1] * gain) / 2 - 0.1)
        pad_top = round((input_shape[0] - image_shape[0] * gain) / 2 - 0.1)
        return cls(
            tuple(map(int, image_shape)), tuple(map(int, input_shape)), float(gain), (float(pad_left), float(pad_top))
        )

    def to_image(self, xy_input: np.ndarray) -> np.ndarray:
        """(..., 2) network-input coordinates (x, y) -> original-image coordinates."""
        return (xy_input - np.asarray(self.pad)) / self.ratio

    def to_input(self, xy_image: np.ndarray) -> np.ndarray:
        """(..., 2) original-image coordinates (x, y) -> network-input coordinates."""
        return np.asarray(xy_image, dtype=np.float64) * self.ratio + np.asarray(self.pad)


@functools.lru_cache(maxsize=32)
def kernel_offsets(kernel: int, dilation: int, remove_center: bool = False) -> np.ndarray:
    """(P, 2) fixed kernel offsets (x, y) in feature cells, in DCNv3's point order p = i*K + j
    (i walks x, j walks y). Cached and read-only (every drawn cell asks for it twice)."""
    c = (dilation * (kernel - 1)) // 2
    steps = np.arange(kernel) * dilation - c
    grid = np.stack(np.meshgrid(steps, steps, indexing="ij"), axis=-1).reshape(-1, 2).astype(np.float64)
    if remove_center:
        grid = np.delete(grid, (kernel * kernel - 1) // 2, axis=0)
    grid.flags.writeable = False
    return grid


def _feature_locations(layer, offsets: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sampling locations (..., G, P, 2) as feature indices (x, y) for cells (rows, cols)."""
    centre = (layer.dilation * (layer.kernel - 1)) // 2
    grid = kernel_offsets(layer.kernel, layer.dilation, layer.remove_center)  # (P, 2)
    base = np.stack(
        [cols * layer.layer_stride - layer.pad + centre, rows * layer.layer_stride - layer.pad + centre], axis=-1
    ).astype(np.float64)
    return base[..., None, None, :] + layer.offset_scale * (grid + offsets)


def _to_image(layer, letterbox: Letterbox, feature_xy: np.ndarray) -> np.ndarray:
    return letterbox.to_image((feature_xy + 0.5) * layer.stride)


def _cells(layer, cell):
    if cell is None:
        rows, cols = np.meshgrid(np.arange(layer.grid[0]), np.arange(layer.grid[1]), indexing="ij")
        return rows, cols, layer.offsets.astype(np.float64)
    row, col = cell
    if np.ndim(row):  # index arrays: many cells at once
        rows, cols = np.asarray(row, dtype=np.int64), np.asarray(col, dtype=np.int64)
        if rows.size and not (
            (rows >= 0).all() and (rows < layer.grid[0]).all() and (cols >= 0).all() and (cols < layer.grid[1]).all()
        ):
            raise IndexError(f"cells outside the {layer.grid[0]}x{layer.grid[1]} grid of {layer.name}")
        return rows, cols, layer.offsets[rows, cols].astype(np.float64)
    if not (0 <= row < layer.grid[0] and 0 <= col < layer.grid[1]):
        raise IndexError(f"cell {cell} is outside the {layer.grid[0]}x{layer.grid[1]} grid of {layer.name}")
    return np.asarray(row), np.asarray(col), layer.offsets[row, col].astype(np.float64)


def sampling_locations(layer, letterbox: Letterbox, cell: tuple[int, int] | None = None) -> np.ndarray:
    """Where each group's P points sample, (x, y) in original-image pixels.

    ``cell`` = (row, col) gives (G, P, 2); (rows (N,), cols (N,)) index arrays give (N, G, P, 2);
    None gives every cell, (H, W, G, P, 2).
    """
    rows, cols, offsets = _cells(layer, cell)
    return _to_image(layer, letterbox, _feature_locations(layer, offsets, rows, cols))


def regular_locations(layer, letterbox: Letterbox, cell: tuple[int, int] | None = None) -> np.ndarray:
    """The same points with zero learned offsets: the regular (dilated) KxK grid of the cell."""
    rows, cols, offsets = _cells(layer, cell)
    return _to_image(layer, letterbox, _feature_locations(layer, np.zeros_like(offsets), rows, cols))


def cell_centre(layer, letterbox: Letterbox, cell: tuple[int, int]) -> np.ndarray:
    """(2,) original-image position of the cell's kernel centre (its zero-offset centre point)."""
    centre = (layer.dilation * (layer.kernel - 1)) // 2
    feature = np.array(
        [cell[1] * layer.layer_stride - layer.pad + centre, cell[0] * layer.layer_stride - layer.pad + centre],
        dtype=np.float64,
    )
    return _to_image(layer, letterbox, feature)


def cell_at(layer, letterbox: Letterbox, x: float, y: float) -> tuple[int, int] | None:
    """The (row, col) of the layer's output cell whose kernel centre covers image pixel (x, y),
    or None when (x, y) falls outside the network input."""
    u, v = letterbox.to_input(np.array([x, y]))
    centre = (layer.dilation * (layer.kernel - 1)) // 2
    # Feature index f spans [f - 0.5, f + 0.5) around its centre, i.e. input [f*s, (f+1)*s).
    fx, fy = np.floor(u / layer.stride), np.floor(v / layer.stride)
    col = (fx + layer.pad - centre) / layer.layer_stride
    row = (fy + layer.pad - centre) / layer.layer_stride
    col, row = int(np.floor(col)), int(np.floor(row))
    if (
        0 <= u < letterbox.input_shape[1]
        and 0 <= v < letterbox.input_shape[0]
        and 0 <= row < layer.grid[0]
        and 0 <= col < layer.grid[1]
    ):
        return row, col
    return None


def cell_centres(layer, letterbox: Letterbox) -> np.ndarray:
    """(H, W, 2) original-image positions of every cell's kernel centre."""
    centre = (layer.dilation * (layer.kernel - 1)) // 2
    rows, cols = np.meshgrid(np.arange(layer.grid[0]), np.arange(layer.grid[1]), indexing="ij")
    feature = np.stack(
        [cols * layer.layer_stride - layer.pad + centre, rows * layer.layer_stride - layer.pad + centre], axis=-1
    ).astype(np.float64)
    return _to_image(layer, letterbox, feature)


def cell_step(layer, letterbox: Letterbox) -> float:
    """Original-image px between the centres of neighbouring output cells of ``layer`` (cell
    centres step linearly from ``cell_centre(layer, letterbox, (0, 0))``)."""
    return layer.stride * layer.layer_stride / letterbox.ratio


def box_centre(box) -> tuple[float, float]:
    """(x, y) centre of an xyxy box: a sequence whose first 4 numbers are x1, y1, x2, y2 (a
    tracker row's first 4, too). The sums are taken in the numbers' own precision (a float32
    box row gives float32 sums, as its arithmetic always did), then returned as Python floats."""
    x1, y1, x2, y2 = box[:4]
    return float((x1 + x2) / 2), float((y1 + y2) / 2)
