"""``LayerRecord``: what one deformable layer (DCNv2, DCNv3 or DCNv4) computed for one image, in the
one layout every view, statistic and export reads. The type the record functions of this folder
(``geometry``, ``stats``, ``fields``, ``trace``) take; the probe (``dcnv3.analysis.probe``) and the
lesson network make them (``LayerRecord.from_capture``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LayerRecord"]


@dataclass
class LayerRecord:
    """What one deformable layer computed for one probed image: the one record every view reads.

    Arrays, over the layer's (H, W) output grid ``grid``, G groups of P points:

    * ``offsets`` (H, W, G, P, 2) float32: the learned (dx, dy) of each point, in feature cells of
      the layer's input, before ``offset_scale``.
    * ``weights`` (H, W, G, P) float32: the modulation weight of each point; ``weight_kind`` (a
      key of ``WEIGHT_KINDS``) says what they are: "softmax" for DCNv3.

    Point order: p = i*K + j over the K x K kernel, i walking x (columns) and j walking y (rows);
    with ``remove_center`` the centre point is left out and the later points move down by one.

    Geometry, from which every location follows (``dcnv3.record.geometry``): point p of group g at output
    cell (row, col) samples the input feature map at index (x, y) =
    (col * layer_stride - pad + c, row * layer_stride - pad + c) + offset_scale * (kernel_p + offset),
    where c = dilation * (kernel - 1) // 2 and kernel_p is the point's (x, y) in the dilated grid
    centred on 0 (``geometry.kernel_offsets``); input index x lies at network-input pixel
    (x + 0.5) * stride.
    ``stride``: of the layer's input map in network-input pixels; ``layer_stride``: the layer's own.
    """

    name: str
    stage: str
    stride: int
    layer_stride: int
    grid: tuple[int, int]
    kernel: int
    dilation: int
    pad: int
    offset_scale: float
    groups: int
    points: int
    remove_center: bool
    offsets: np.ndarray
    weights: np.ndarray
    weight_kind: str = "softmax"

    @property
    def label(self) -> str:
        """E.g. "P4/16 backbone · model.6.m.0.cv2.dcnv3 · G=4 K=3"."""
        return f"{self.stage} · {self.name} · G={self.groups} K={self.kernel}"

    @classmethod
    def from_capture(
        cls, name: str, captured, offsets: np.ndarray, weights: np.ndarray, stride: int, stage: str
    ) -> LayerRecord:
        """The one place where what a deformable module captured (a ``dcnv3.ops.capture.CapturedLayer``)
        becomes a ``LayerRecord``: one image's ``offsets`` (H, W, G, P, 2) and ``weights``
        (H, W, G, P), already in the record's layout (every deformable module hands them over in
        it: ``dcnv3.ops.sampling_hooks``), kept as given; the module's geometry and weight kind;
        ``stride`` of the layer's input map in input pixels and the ``stage`` label, which the
        caller knows (the probe from the YOLO's layout, the lesson network from its own)."""
        module = captured.module
        return cls(
            name=name,
            stage=stage,
            stride=stride,
            layer_stride=int(module.stride),
            grid=tuple(offsets.shape[:2]),
            kernel=int(module.kernel_size),
            dilation=int(module.dilation),
            pad=int(module.pad),
            offset_scale=float(module.offset_scale),
            groups=int(module.group),
            points=int(module.points),
            remove_center=bool(getattr(module, "remove_center", 0)),
            offsets=offsets,
            weights=weights,
            weight_kind=captured.weight_kind,
        )
