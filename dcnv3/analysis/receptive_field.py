"""Effective receptive fields: which input pixels an output actually depends on, and how much.

Where a DCNv3 layer's samples land (the probe) is not the whole story: what a cell's output
depends on is the gradient of that output with respect to the input image (Luo et al., "Understanding
the effective receptive field", 2016; figure 1 of the DCNv2 paper). This module computes it for
an ultralytics YOLO and summarises it by the smallest pixel sets that hold 50 % and 90 % of its mass.

Targets (the scalar whose gradient is taken):

* **cell**: the sum over channels of one cell of a module's output, ``out[0, :, row, col].sum()``.
  For a DCNv3 layer name (``model.6.m.0.cv2.dcnv3``) the module is its wrapper block
  (``model.6.m.0.cv2``, a ``DCNV3_YoLo``: 1x1 conv -> DCNv3 -> BN -> SiLU): the DCNv3 module itself
  returns channels-last tensors without the normalisation and activation that follow it.
* **detection**: the class score (after the sigmoid, before NMS) of one class at one anchor of the
  Detect head: the anchor whose decoded box NMS kept as the detection.

The gradient is taken on the letterboxed network input (ultralytics' ``LetterBox``, as
``dcnv3.analysis.probe.probe`` does), |d target / d input| is summed over RGB, and the part that lies on the image
(not the letterbox padding) is mapped back to original-image pixels with ``geometry.Letterbox``.
Strided convolutions make the raw map a checkerboard (a stride-2 layer reaches neighbouring
pixels through different weights), so its mass regions would be scattered pixels; the heat map
and the mass regions are therefore taken on the map smoothed by a Gaussian of ``smooth``
network-input pixels (default 2; 0 keeps the raw map).

The plain twin. To compare a DCNv3 model with its plain twin, the twin is probed at the module of
the *same qualified name* (``model.6.m.0.cv2``: there the plain 3x3 Conv + BN + SiLU that the DCNv3
block replaced) and the same cell; if the twin has no module of that name (a different depth),
both models are probed at the output of the same top-level layer (``model.6``, the whole C2f
block). Detection targets compare the same class at the same anchor: both models share strides
and input size, so anchors coincide.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from dcnv3.analysis.probe import inference_model, network_input
from dcnv3.record.geometry import Letterbox

__all__ = [
    "ReceptiveField",
    "receptive_field",
    "input_gradient",
    "mass_regions",
    "target_module",
    "twin_modules",
    "gradient_network",
    "detection_anchor",
    "FRACTIONS",
]

FRACTIONS = (0.5, 0.9)


@dataclass
class ReceptiveField:
    """The effective receptive field of one target on one image.

    Attributes:
        input_map: (H_in, W_in) float64, |d target / d input| summed over RGB on the letterboxed
            network input (padding included), raw (not smoothed).
        heatmap: (H, W) float32 over original-image pixels: the part of the (smoothed) input map
            on the image, resampled to the image and normalised to sum 1 (a share per pixel).
        masks: (F, H, W) bool over original-image pixels: the smallest sets of network-input pixels
            holding ``fractions[f]`` of the mass on the image, resampled (nearest) to the image.
        areas: (F,) areas of those sets in original-image px^2: network-input pixel count / ratio^2.
        fractions: the F mass fractions (default 0.5, 0.9).
        outside_share: share of the total |gradient| on the letterbox padding (not in ``heatmap``).
        letterbox: the geometry between the image and the network input.
        target: what was differentiated: {"kind": "cell" | "detection", "module", "cell" [row, col],
            "stride", "centre" [x, y] original px, "value"; for detections also "anchor", "class",
            "box" [x1, y1, x2, y2] original px of that anchor's decoded box}.
    """

    input_map: np.ndarray
    heatmap: np.ndarray
    masks: np.ndarray
    areas: np.ndarray
    fractions: tuple
    outside_share: float
    letterbox: Letterbox
    target: dict = field(default_factory=dict)

    def area(self, fraction: float) -> float:
        """Area (original px^2) of the smallest region holding ``fraction`` of the mass."""
        return float(self.areas[list(self.fractions).index(fraction)])

    def summary(self) -> dict:
        """JSON-ready numbers: the target and the area per mass fraction."""
        return {
            **self.target,
            "areas_px2": {f"{int(round(f * 100))}%": round(float(a), 2) for f, a in zip(self.fractions, self.areas)},
            "outside_share": round(self.outside_share, 4),
        }


# -- the generic pieces ---------------------------------------------------------------------------
def input_gradient(objective, x: torch.Tensor) -> np.ndarray:
    """|d objective(x) / d x| summed over channels: (H, W) float64 for x of shape (1, C, H, W).

    ``objective``: callable taking the input tensor and returning a scalar tensor. Parameters need
    no gradient (only the input's is used).
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        value = objective(x)
        if value.dim() != 0:
            raise ValueError(f"the objective must be a scalar, got shape {tuple(value.shape)}")
        (grad,) = torch.autograd.grad(value, x)
    return grad[0].abs().sum(0).double().numpy()


def mass_regions(weights: np.ndarray, fractions=FRACTIONS) -> tuple[np.ndarray, np.ndarray]:
    """The smallest sets of elements holding each fraction of the total mass of ``weights``.

    Sort descending and take elements until the cumulative sum reaches ``fraction * total``
    (ties at the cut are broken by position, which leaves the count unchanged).

    Args:
        weights: (...) non-negative array.
        fractions: F fractions in (0, 1].
    Returns:
        counts (F,) int64 element counts, masks (F, ...) bool.
    """
    flat = np.asarray(weights, dtype=np.float64).ravel()
    order = np.argsort(-flat, kind="stable")
    cumulative = np.cumsum(flat[order])
    total = cumulative[-1] if cumulative.size else 0.0
    counts, masks = [], []
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"fractions must lie in (0, 1], got {fraction}")
        if total <= 0:
            count = 0
        else:
            # A relative tolerance keeps float rounding of the cumulative sum from adding a pixel.
            count = int(np.searchsorted(cumulative, fraction * total * (1 - 1e-12), side="left")) + 1
            count = min(count, flat.size)
        mask = np.zeros(flat.size, bool)
        mask[order[:count]] = True
        counts.append(count)
        masks.append(mask.reshape(np.shape(weights)))
    return np.asarray(counts, np.int64), np.asarray(masks, bool).reshape(len(fractions), *np.shape(weights))


# -- YOLO plumbing --------------------------------------------------------------------------------
_lock = threading.Lock()  # one gradient forward at a time: the hooks live on a shared copy


def gradient_network(model) -> nn.Module:
    """The probe's fused fp32 eval network in its own copy (``inference_model``'s ``"gradient"``
    role, from the one cache of inference copies): the probe's copy stays hook-free, so a probe in
    another thread never sees this module's hooks."""
    return inference_model(model, role="gradient")


def target_module(runner: nn.Module, layer: str) -> str:
    """The module whose output a cell target reads: a DCNv3 layer's wrapper block, else ``layer``.

    Raises ValueError for a name the network does not have.
    """
    from dcnv3.ops.dcnv3 import DCNv3

    modules = dict(runner.named_modules())
    if layer not in modules:
        raise ValueError(f"the model has no layer {layer!r}")
    if isinstance(modules[layer], DCNv3) and "." in layer:
        return layer.rsplit(".", 1)[0]  # the DCNv3 output is channels-last and not yet normalised
    return layer


def twin_modules(runner: nn.Module, twin_runner: nn.Module, layer: str) -> tuple[str, str]:
    """(module in ``runner``, module in ``twin_runner``) to compare for ``layer`` (see the module
    docstring): the same qualified name in both when the twin has it, else the same top-level
    layer ``model.<i>`` in both."""
    name = target_module(runner, layer)
    if name in dict(twin_runner.named_modules()):
        return name, name
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "model" and parts[1].isdigit():
        top = ".".join(parts[:2])
        if top in dict(twin_runner.named_modules()):
            return top, top
    raise ValueError(f"the second model has no layer matching {layer!r}")


class _Stop(Exception):
    """Raised by a forward hook once the target module has run: the rest of the network is not
    needed for a cell target, and skipping it saves most of the backward too."""


def _module_output(runner: nn.Module, module_name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of ``module_name`` for input x, (1, C, h, w), stopping the forward there."""
    module = dict(runner.named_modules())[module_name]
    captured = {}

    def hook(_module, _inputs, output):
        captured["out"] = output
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        runner(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "out" not in captured:
        raise ValueError(f"layer {module_name!r} did not run in the forward pass")
    out = captured["out"]
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise ValueError(f"layer {module_name!r} does not output a feature map (N, C, H, W)")
    return out


def _cell_under(letterbox: Letterbox, grid_hw, x: float, y: float) -> tuple[tuple[int, int], int]:
    """((row, col), stride) of the output cell of an (h, w) map covering image pixel (x, y):
    cell (r, c) of stride s spans network-input pixels [c*s, (c+1)*s) x [r*s, (r+1)*s)."""
    stride = int(round(letterbox.input_shape[0] / grid_hw[0]))
    u, v = letterbox.to_input(np.array([x, y], dtype=np.float64))
    row, col = int(np.floor(v / stride)), int(np.floor(u / stride))
    if not (0 <= row < grid_hw[0] and 0 <= col < grid_hw[1]):
        raise ValueError(f"({x:.1f}, {y:.1f}) lies outside the network input")
    return (row, col), stride


def detection_anchor(predictions: torch.Tensor, box_input, class_id: int) -> int:
    """The anchor whose decoded box is ``box_input`` (xyxy, network-input px) with the best score
    for ``class_id``: the one NMS kept. ``predictions``: (1, 4 + nc, A), boxes as xywh."""
    xywh = predictions[0, :4].detach().double()
    xyxy = torch.cat([xywh[:2] - xywh[2:] / 2, xywh[:2] + xywh[2:] / 2]).T  # (A, 4)
    distance = (xyxy - torch.as_tensor(box_input, dtype=torch.float64)).abs().sum(1)
    # Ties (several anchors decoding to nearly the same box) go to the best score, as in NMS.
    closest = distance <= distance.min() + 1e-3
    scores = predictions[0, 4 + class_id].detach().double().masked_fill(~closest, -1.0)
    return int(torch.argmax(scores))


def _finish(
    input_map: np.ndarray, letterbox: Letterbox, fractions, target: dict, smooth: float = 2.0
) -> ReceptiveField:
    """Smooth, crop the image part of the input map, find the mass regions, map both to the image."""
    import cv2

    height, width = letterbox.image_shape
    left, top = int(letterbox.pad[0]), int(letterbox.pad[1])
    # The resized image occupies round(side * ratio) input pixels from the padding on (LetterBox).
    inner_w, inner_h = int(round(width * letterbox.ratio)), int(round(height * letterbox.ratio))
    on_image = (slice(top, top + inner_h), slice(left, left + inner_w))
    total = float(input_map.sum())
    outside_share = 0.0 if total <= 0 else float(1 - input_map[on_image].sum() / total)
    raw = input_map
    if smooth > 0:
        input_map = cv2.GaussianBlur(input_map, (0, 0), smooth, borderType=cv2.BORDER_CONSTANT)
    inside = input_map[on_image]
    counts, masks = mass_regions(inside, fractions)
    interpolation = cv2.INTER_AREA if letterbox.ratio > 1 else cv2.INTER_LINEAR
    heatmap = cv2.resize(inside.astype(np.float32), (width, height), interpolation=interpolation)
    heatmap = np.maximum(heatmap, 0)
    heatmap /= max(float(heatmap.sum()), 1e-30)
    image_masks = (
        np.stack(
            [
                cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
                for m in masks
            ]
        )
        if len(masks)
        else np.zeros((0, height, width), bool)
    )
    areas = counts.astype(np.float64) / letterbox.ratio**2
    return ReceptiveField(raw, heatmap, image_masks, areas, tuple(fractions), outside_share, letterbox, target)


def receptive_field(
    model,
    image,
    layer: str | None = None,
    xy=None,
    *,
    detection=None,
    anchor=None,
    imgsz: int = 640,
    fractions=FRACTIONS,
    module: str | None = None,
    smooth: float = 2.0,
) -> ReceptiveField:
    """The effective receptive field of a cell or a detection of an ultralytics YOLO on an image.

    Args:
        model: ultralytics ``YOLO`` detector (e.g. ``dcnv3.yolo.loading.load_model``).
        image: path or BGR uint8 array (H, W, 3).
        layer, xy: a cell target: a layer name (a DCNv3 layer or any module with an (N, C, H, W)
            output) and the original-image point (x, y) whose cell is taken (continuous px).
        module: the exact module to read (skips the DCNv3 -> wrapper mapping; ``twin_modules``).
        detection: a detection target instead: ((x1, y1, x2, y2) original px, class id), a box the
            model itself detected (``Probe.detections``).
        anchor: a detection target given as (anchor index, class id): the twin comparison.
        imgsz: network input size, as ``dcnv3.analysis.probe.probe``.
        fractions: mass fractions of the reported regions.
        smooth: Gaussian sigma (network-input px) applied before the heat map and mass regions.
    Returns:
        A ``ReceptiveField``.
    """
    runner = gradient_network(model)
    x, letterbox, _ = network_input(runner, image, imgsz)  # exactly what the probe feeds the network
    with _lock:
        if detection is not None or anchor is not None:
            target: dict = {"kind": "detection"}

            def objective(inp):
                predictions = runner(inp)[0]  # (1, 4 + nc, A): xywh in input px, class scores
                if anchor is not None:
                    index, class_id = int(anchor[0]), int(anchor[1])
                else:
                    box, class_id = detection
                    box_input = np.concatenate(
                        [letterbox.to_input(np.asarray(box[:2])), letterbox.to_input(np.asarray(box[2:4]))]
                    )
                    class_id = int(class_id)
                    index = detection_anchor(predictions, box_input, class_id)
                xywh = predictions[0, :4, index].detach().double().numpy()
                corners = np.array([xywh[:2] - xywh[2:] / 2, xywh[:2] + xywh[2:] / 2])
                score = predictions[0, 4 + class_id, index]
                target.update(
                    anchor=index,
                    **{"class": int(class_id)},
                    value=float(score.detach()),
                    box=letterbox.to_image(corners).ravel().tolist(),
                    centre=letterbox.to_image(np.asarray(xywh[:2])).tolist(),
                    module=f"{type(runner.model[-1]).__name__} score",
                )
                return score

            input_map = input_gradient(objective, x)
        else:
            if (layer is None and module is None) or xy is None:
                raise ValueError("give a layer and a point (x, y), or a detection")
            name = module or target_module(runner, layer)
            target = {"kind": "cell", "module": name}

            def objective(inp):
                out = _module_output(runner, name, inp)
                cell, stride = _cell_under(letterbox, out.shape[2:], float(xy[0]), float(xy[1]))
                centre = letterbox.to_image(np.array([(cell[1] + 0.5) * stride, (cell[0] + 0.5) * stride]))
                value = out[0, :, cell[0], cell[1]].sum()
                target.update(cell=list(cell), stride=stride, centre=centre.tolist(), value=float(value.detach()))
                return value

            input_map = input_gradient(objective, x)
    return _finish(input_map, letterbox, fractions, target, smooth)
