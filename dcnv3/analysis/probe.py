"""The probe: one forward of a YOLO detector, its raw predictions, and what every DCNv3 layer computed.

Why one module (over 400 lines): the probe's result types (Detections, RawPredictions, Probe) and
the one forward that fills them change together; the record type itself lives in dcnv3.record.

Like segment-anything's predictor caches the image embedding, a ``Probe`` caches the expensive
step (the model run) and answers cheap queries from it: detections at any confidence and IoU
(``Probe.detect``: ultralytics' NMS on the cached raw predictions), sampling locations of any
cell in original-image pixels, the cell under a pixel, and per-cell statistics. Clicking
around in the app, or moving a threshold slider, never runs the model again.

Data flow: image -> ultralytics' LetterBox -> the model forward, every DCNv3 module handing what
it predicted to ``dcnv3.ops.capture`` -> ``Probe`` (raw predictions + one ``LayerRecord`` per layer)
-> ultralytics' ``non_max_suppression`` and ``scale_boxes`` per query -> ``Detections``.
"""

from __future__ import annotations

import copy
import math
import platform
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision  # noqa: F401 - ultralytics' NMS uses torchvision's kernel only once it is

from dcnv3.ops.capture import capture, deformable_modules

# What a record's modulation weights are, by ``LayerRecord.weight_kind`` ("softmax" DCNv3,
# "sigmoid" DCNv2, "free" DCNv4): re-exported here, beside the record.
from dcnv3.ops.sampling_hooks import WEIGHT_KINDS

# imported and otherwise a pure-torch fallback that keeps different boxes; predict imports it.
from dcnv3.record import geometry, stats
from dcnv3.record.geometry import Letterbox
from dcnv3.record.layer_record import LayerRecord

__all__ = [
    "Probe",
    "LayerRecord",
    "Detections",
    "RawPredictions",
    "WEIGHT_KINDS",
    "default_layer",
    "probe",
    "probe_batch",
    "prepare_image",
    "network_input",
    "inference_model",
    "INFERENCE_ROLES",
]


@dataclass
class Detections:
    """Detections in original-image pixels: boxes (K, 4) xyxy, scores (K,), classes (K,) int."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    names: dict

    def __len__(self) -> int:
        return len(self.boxes)

    def label(self, index: int) -> str:
        return f"{self.names.get(int(self.classes[index]), self.classes[index])} {self.scores[index]:.2f}"


@dataclass
class RawPredictions:
    """The detection head's output for one image, as the forward left it (before NMS).

    ``values`` float32 on the CPU: (4 + nc, A) for an NMS head (per anchor the box cx, cy, w, h
    in network-input px, then nc class scores), or (N, 6) rows (x1, y1, x2, y2, score, class)
    for an end-to-end head (``end2end``). ``input_shape``: (H, W) of the network input.
    """

    values: np.ndarray
    end2end: bool
    input_shape: tuple[int, int]
    names: dict

    def detections(self, image_shape: tuple[int, int], conf: float, iou: float, max_det: int = 300) -> Detections:
        """Ultralytics' ``non_max_suppression`` and ``scale_boxes``, with the arguments of
        ``YOLO.predict``'s own path, -> detections in pixels of an image of ``image_shape``."""
        from ultralytics.utils import nms, ops

        # A copy: NMS must not be able to change the cached predictions in place.
        prediction = torch.tensor(self.values).unsqueeze(0)
        with torch.inference_mode():
            boxes = nms.non_max_suppression(prediction, conf, iou, max_det=max_det, nc=0, end2end=self.end2end)[0]
            boxes[:, :4] = ops.scale_boxes(self.input_shape, boxes[:, :4], tuple(image_shape))
        boxes = boxes.numpy()
        return Detections(
            boxes[:, :4].astype(np.float32), boxes[:, 4].astype(np.float32), boxes[:, 5].astype(np.int64), self.names
        )


@dataclass
class Probe:
    """A probed image: detections, letterbox geometry and one ``LayerRecord`` per DCNv3 layer.

    ``detections`` are those at the thresholds the probe was made with (``thresholds``: conf,
    iou, max_det); ``detect`` answers any other thresholds from ``raw`` without a forward.
    A probe made by hand may have neither.
    """

    image_shape: tuple[int, int]
    letterbox: Letterbox
    detections: Detections
    layers: list[LayerRecord] = field(default_factory=list)
    raw: RawPredictions | None = field(default=None, repr=False)
    thresholds: tuple[float, float, int] | None = None

    def detect(self, conf: float, iou: float, max_det: int = 300) -> Detections:
        """The detections at other thresholds, from the cached raw predictions (ultralytics'
        NMS and ``scale_boxes``: about a millisecond, no forward). ``detect(*thresholds)``
        equals ``detections``."""
        if self.raw is None:
            raise ValueError("this probe holds no raw predictions (it was not made by dcnv3.analysis.probe.probe)")
        return self.raw.detections(self.image_shape, conf, iou, max_det)

    def layer(self, name: str) -> LayerRecord:
        for record in self.layers:
            if record.name == name:
                return record
        raise KeyError(f"no deformable layer named {name!r}; layers: {[r.name for r in self.layers]}")

    def record(self, layer) -> LayerRecord:
        """A layer given as a ``LayerRecord`` or by its qualified name -> the record."""
        return layer if isinstance(layer, LayerRecord) else self.layer(layer)

    def sampling_locations(self, layer, cell=None) -> np.ndarray:
        """(G, P, 2) for one (row, col) cell or (H, W, G, P, 2) for all: (x, y) image pixels."""
        return geometry.sampling_locations(self.record(layer), self.letterbox, cell)

    def regular_locations(self, layer, cell=None) -> np.ndarray:
        """The zero-offset KxK grid, same shapes as ``sampling_locations``."""
        return geometry.regular_locations(self.record(layer), self.letterbox, cell)

    def cell_at(self, layer, x: float, y: float):
        """(row, col) of the layer cell under original-image pixel (x, y), or None outside."""
        return geometry.cell_at(self.record(layer), self.letterbox, x, y)

    def cell_centre(self, layer, cell) -> np.ndarray:
        """(2,) image position of a cell's kernel centre."""
        return geometry.cell_centre(self.record(layer), self.letterbox, cell)

    def cell_centres(self, layer) -> np.ndarray:
        """(H, W, 2) image positions of every cell's kernel centre."""
        return geometry.cell_centres(self.record(layer), self.letterbox)

    def offset_magnitude(self, layer) -> np.ndarray:
        return stats.offset_magnitude(self.record(layer))

    def weight_entropy(self, layer) -> np.ndarray:
        return stats.weight_entropy(self.record(layer))

    def effective_dilation(self, layer) -> np.ndarray:
        return stats.effective_dilation(self.record(layer))

    def outside_share(self, layer) -> np.ndarray:
        return stats.outside_share(self.record(layer), self.letterbox)

    def default_layer(self) -> LayerRecord | None:
        """The layer a view shows when none was chosen (``default_layer``), None without layers."""
        return default_layer(self.layers)

    def layer_for_box(self, box) -> LayerRecord | None:
        """The DCNv3 layer whose stride best matches a box's scale (P3 for small, P5 for large),
        following YOLOv8's assignment of objects to strides (sqrt(area) / 8 in input pixels)."""
        if not self.layers:
            return None
        x1, y1, x2, y2 = box
        side = math.sqrt(max((x2 - x1) * (y2 - y1), 1e-6)) * self.letterbox.ratio
        target = side / 8  # objects of side ~8 strides are each level's typical size
        return min(self.layers, key=lambda r: (abs(math.log2(r.stride) - math.log2(max(target, 1))), r.name))

    def as_arrays(self) -> dict[str, np.ndarray]:
        """Every array of the probe, keyed for ``np.savez`` (the app's NPZ export)."""
        arrays = {
            "detections/boxes_xyxy": self.detections.boxes,
            "detections/scores": self.detections.scores,
            "detections/classes": self.detections.classes,
            "letterbox/ratio": np.array(self.letterbox.ratio),
            "letterbox/pad_left_top": np.array(self.letterbox.pad),
            "image_shape": np.array(self.image_shape),
        }
        for record in self.layers:
            arrays[f"{record.name}/offsets"] = record.offsets
            arrays[f"{record.name}/weights"] = record.weights
            arrays[f"{record.name}/sampling_locations"] = self.sampling_locations(record).astype(np.float32)
        return arrays


def default_layer(layers: list):
    """The layer every view starts on when nobody chose one: the middle of the stack in forward
    order (the P4 layer of the bundled model's five); None for an empty list. ``layers``:
    ``LayerRecord``s or layer names, in forward order."""
    return layers[len(layers) // 2] if layers else None


def prepare_image(image) -> np.ndarray:
    """A path or an array -> a BGR uint8 (H, W, 3) array, as ultralytics expects for arrays.

    Arrays are taken as BGR (OpenCV's order, ultralytics' convention); (H, W) grayscale and
    (H, W, 4) BGRA are converted. Raises ValueError for anything that is not an image.
    """
    if isinstance(image, (str, Path)):
        array = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise ValueError(f"{Path(image).name}: not a readable image")
        image = array
    array = np.asarray(image)
    if array.dtype != np.uint8:
        if array.dtype == np.uint16:
            array = (array / 257).astype(np.uint8)
        elif np.issubdtype(array.dtype, np.floating):
            array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
        else:
            raise ValueError(f"unsupported image dtype {array.dtype}")
    if array.ndim == 2:
        array = cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    elif array.ndim == 3 and array.shape[2] == 1:
        array = cv2.cvtColor(array[..., 0], cv2.COLOR_GRAY2BGR)
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise ValueError(f"not an image: array of shape {array.shape}")
    return np.ascontiguousarray(array)


def _stage(name: str, stride: int, backbone_layers: int) -> str:
    level = int(round(math.log2(stride)))
    part = "backbone"
    parts = name.split(".")
    if len(parts) > 1 and parts[0] == "model" and parts[1].isdigit():
        part = "backbone" if int(parts[1]) < backbone_layers else "neck"
    return f"P{level}/{stride} {part}"


# The one cache of fused inference copies: per YOLO object, {(one_to_one, role): (the model.model it
# was made from, the copy, its deformable_modules)}; a copy is made again when model.model changes.
_runners: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Who runs a copy: "probe" (the probe, ablations, benchmarks) or "gradient" (dcnv3.analysis.receptive_field,
# whose forward hooks and gradient passes must not meet a probe running in another thread).
INFERENCE_ROLES = ("probe", "gradient")


def inference_model(model, one_to_one: bool = False, role: str = "probe") -> torch.nn.Module:
    """A fused (Conv+BN), eval, fp32 copy of a YOLO's DetectionModel, cached per YOLO object.

    The probe hooks this copy rather than the predictor's: ultralytics' predictor deep-copies
    the model when it is set up, so hooks on ``model.model`` would never see its forward.
    ``role``: one of ``INFERENCE_ROLES``; each role has its own copy of the same network, so that
    the receptive field's hooked forwards (``"gradient"``) never run on the probe's copy.
    """
    return _inference_copy(model, one_to_one, role)[0]


def _inference_copy(model, one_to_one: bool = False, role: str = "probe") -> tuple[torch.nn.Module, list]:
    """(``inference_model(model, one_to_one, role)``, its ``deformable_modules``), cached per YOLO
    object, head choice and role."""
    if role not in INFERENCE_ROLES:
        raise ValueError(f"unknown inference copy role {role!r}; choose from {INFERENCE_ROLES}")
    key = (one_to_one, role)
    cached = _runners.setdefault(model, {}).get(key)
    if cached is not None and cached[0] is model.model:
        return cached[1], cached[2]
    runner = copy.deepcopy(model.model).float().eval()
    if one_to_one or getattr(runner, "end2end", False):
        # A dual-head model (YOLO26) runs, as YOLO.predict runs it, its one-to-many head with
        # NMS unless asked for nms=False (its one-to-one head), whatever the checkpoint's head
        # was left at; chosen before fusing, which drops the other branch, as AutoBackend does.
        runner.end2end = one_to_one
    if hasattr(runner, "fuse"):
        runner = runner.fuse(verbose=False)
    parameter = next(runner.parameters(), None)
    if _channels_last_pays(parameter.device if parameter is not None else torch.device("cpu")):
        runner = runner.to(memory_format=torch.channels_last)
    for parameter in runner.parameters():
        parameter.requires_grad_(False)
    modules = deformable_modules(runner)
    _runners[model][key] = (model.model, runner, modules)
    return runner, modules


def _channels_last_pays(device: torch.device) -> bool:
    """Whether convolution weights should be channels-last, by ``YOLO.predict``'s own rule.

    Ultralytics' AutoBackend converts the model by default on x86 CPUs with oneDNN (Linux and
    Windows): oneDNN's convolutions then skip a weight reorder on every call (about 1 ms of a
    15 ms YOLOv8n forward at 320 here).
    """
    return (
        device.type == "cpu"
        and platform.machine() in {"AMD64", "x86_64"}
        and platform.system() in {"Linux", "Windows"}
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def network_input(runner: torch.nn.Module, image, imgsz: int) -> tuple[torch.Tensor, Letterbox, np.ndarray]:
    """What the network sees, as ``YOLO.predict`` prepares it: ultralytics' ``LetterBox`` (rect,
    stride 32) of the image at ``imgsz``.

    Returns (x (1, 3, H_in, W_in) RGB float32 in [0, 1], kept channels-last in memory: CPU
    convolutions run faster on it and DCNv3 layers work channels-last anyway; the ``Letterbox``
    geometry between the image and x; the image as a BGR uint8 (H, W, 3) array).
    """
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils.checks import check_imgsz

    array = prepare_image(image)
    stride = max(int(runner.stride.max()), 32)
    size = check_imgsz(imgsz, stride=stride, min_dim=2)
    letterboxed = LetterBox(size, auto=True, stride=stride)(image=array)
    rgb = cv2.cvtColor(letterboxed, cv2.COLOR_BGR2RGB)  # one SIMD pass; a reversed-axis copy is ~4x slower
    x = torch.from_numpy(rgb).unsqueeze(0).permute(0, 3, 1, 2).float().div_(255)
    return x, Letterbox.from_shapes(array.shape[:2], tuple(x.shape[2:])), array


def probe(
    model, image, imgsz: int = 640, conf: float = 0.25, iou: float = 0.7, max_det: int = 300, nms: bool | None = None
) -> Probe:
    """Run ``model`` (an ultralytics YOLO) once on ``image`` and record every DCNv3 layer.

    The steps are ultralytics' own, as in ``YOLO.predict``: ``LetterBox`` (rect, stride 32),
    the forward, ``non_max_suppression`` and ``scale_boxes``; every DCNv3 module hands what it
    predicted to ``dcnv3.ops.capture`` during that one forward.

    Args:
        model: ultralytics ``YOLO`` detection model (e.g. from ``dcnv3.yolo.loading.load_model``).
        image: path, or BGR uint8 array (H, W, 3); grayscale and BGRA are converted.
        imgsz, conf, iou, max_det: as ``YOLO.predict``.
        nms: as ``YOLO.predict``: False runs a dual-head model's (YOLO26's) one-to-one,
            NMS-free head; otherwise its one-to-many head with NMS.

    Returns:
        A ``Probe`` with detections in original-image pixels and one ``LayerRecord`` per DCNv3
        layer (empty for a detector without DCNv3).
    """
    return probe_batch(model, [image], imgsz, conf, iou, max_det, nms)[0]


def probe_batch(
    model,
    images: list,
    imgsz: int = 640,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    nms: bool | None = None,
) -> list[Probe]:
    """``probe`` of several images of one size in one batched forward (one ``Probe`` each).

    Video frames share a size, so their letterboxed inputs stack into one (B, 3, H, W) batch;
    on a CPU one forward of 4 frames at 320 px takes about 2.2 times one frame's, not 4 times.
    Images whose letterboxed inputs differ in size are probed one by one.
    """
    runner, modules = _inference_copy(model, one_to_one=nms is False)
    prepared = [network_input(runner, image, imgsz) for image in images]
    if len({tuple(x.shape) for x, _, _ in prepared}) > 1:
        return [_probe_prepared(model, runner, modules, [item], conf, iou, max_det)[0] for item in prepared]
    return _probe_prepared(model, runner, modules, prepared, conf, iou, max_det)


def _layer_record(
    name: str, captured, offsets: np.ndarray, weights: np.ndarray, input_shape: tuple[int, int], backbone_layers: int
) -> LayerRecord:
    """A probed YOLO's ``LayerRecord``: its input stride from the network input's ``input_shape``
    and its stage (P level, backbone or neck) from its name."""
    stride = int(round(input_shape[0] / captured.input_hw[0]))  # of the layer's input map
    return LayerRecord.from_capture(name, captured, offsets, weights, stride, _stage(name, stride, backbone_layers))


def _probe_prepared(model, runner, modules, prepared: list, conf: float, iou: float, max_det: int) -> list[Probe]:
    """The probes of ``network_input`` results of one input size: one forward of their batch."""
    x = (
        prepared[0][0]
        if len(prepared) == 1
        else torch.cat([x for x, _, _ in prepared]).contiguous(memory_format=torch.channels_last)
    )
    with capture(runner, modules) as captured, torch.inference_mode():
        predictions = runner(x)
    predictions = predictions[0] if isinstance(predictions, (list, tuple)) else predictions  # eval: (y, features)
    predictions = predictions.float().cpu()
    input_shape = tuple(x.shape[2:])
    end2end = bool(getattr(runner, "end2end", False))
    names = dict(getattr(model, "names", None) or getattr(runner, "names", {}))
    backbone_layers = len(getattr(runner, "yaml", {}).get("backbone", [])) or 10
    captured = [
        (name, record) for name, record in captured.items() if record.ran
    ]  # a module that did not run (an unused branch)
    offsets = [record.offsets.float().numpy() for _, record in captured]  # (B, H, W, G, P, 2)
    weights = [record.weights.float().numpy() for _, record in captured]  # (B, H, W, G, P)
    results = []
    for index, (_, letterbox, array) in enumerate(prepared):
        # One image's rows only, copied out of a batch so a probe does not keep the whole batch alive.
        values = predictions[index].numpy()
        raw = RawPredictions(values if len(prepared) == 1 else values.copy(), end2end, input_shape, names)
        thresholds = (float(conf), float(iou), int(max_det))
        owned = (lambda array: array) if len(prepared) == 1 else np.copy  # a batch: copies, as the raw predictions
        layers = [
            _layer_record(
                name, record, owned(layer_offsets[index]), owned(layer_weights[index]), input_shape, backbone_layers
            )
            for (name, record), layer_offsets, layer_weights in zip(captured, offsets, weights)
        ]
        image_shape = tuple(array.shape[:2])
        results.append(Probe(image_shape, letterbox, raw.detections(image_shape, *thresholds), layers, raw, thresholds))
    return results
