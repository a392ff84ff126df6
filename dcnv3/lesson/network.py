"""The lesson network: a few residual DCNv3 layers on one output stride, whose sampling has to
follow the size and orientation of the object, and its plain twin (3x3 convolutions instead).

Why this shape of network: inside an FPN detector each level sees a narrow range of object
sizes, so its DCNv3 layers have little reason to adapt (the bundled DCNv3-YOLOv8n's dilation
barely moves with size). Here one stride-4 grid sees shapes of 8-150 px, and the head predicts
at each shape's centre cell its objectness, class and extent (log size, log box width and
height): to measure a 150 px shape from its centre the deepest layer must reach its edges, to
measure an 8 px one it must not be distracted by what lies around it.

Layout: input (N, 3, H, W) RGB float in [0, 1], H and W multiples of 4; stem (three 3x3 convs,
BatchNorm, SiLU: stride 4, C channels) -> ``depth`` blocks ``x + GELU(DCNv3(LayerNorm(x)))``
on channels-last (N, H/4, W/4, C) -> a 1x1 head -> (N, 1 + 7 + 3 (+ 2), H/4, W/4): objectness
logit, class logits, log size / width / height in pixels (and, with ``axis_head``, a bar's axis as
(cos 2a, sin 2a)); ``OBJECTNESS``, ``CLASSES``, ``EXTENT``, ``AXIS`` index the channels.

Probing: ``lesson_records`` runs the network inside ``dcnv3.ops.capture`` and returns one
``dcnv3.analysis.probe.LayerRecord`` per DCNv3 layer with the same geometry semantics as the probe's
(layer input stride 4, no letterbox), so ``dcnv3.record.geometry`` and ``dcnv3.record.stats`` read them as
they read a YOLO's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dcnv3.bundled import bundled_path
from dcnv3.data.shapes import CLASS_NAMES
from dcnv3.lesson.data import LESSON_SIDE, LESSON_STRIDE
from dcnv3.ops.capture import capture, dcnv3_modules
from dcnv3.ops.dcnv3 import DCNv3
from dcnv3.record.geometry import Letterbox
from dcnv3.record.layer_record import LayerRecord

__all__ = [
    "BUNDLED_LESSON",
    "BUNDLED_LESSON_PLAIN",
    "BUNDLED_LESSON_DIR",
    "LessonConfig",
    "LessonNet",
    "OBJECTNESS",
    "CLASSES",
    "EXTENT",
    "AXIS",
    "to_input",
    "lesson_records",
    "lesson_letterbox",
    "save_lesson",
    "load_lesson",
    "record_from_capture",
    "one_cell",
    "offset_parameters",
    "EXTENT_NAMES",
]

# The bundled weights (``python -m dcnv3.lesson.train`` writes them), in a folder of their own:
# they are not YOLO checkpoints, and the app's model list reads assets/models/*.pt.
BUNDLED_LESSON_DIR = bundled_path("models", "lesson")
BUNDLED_LESSON = BUNDLED_LESSON_DIR / "lesson-dcnv3.pt"
BUNDLED_LESSON_PLAIN = BUNDLED_LESSON_DIR / "lesson-plain.pt"
EXTENT_NAMES = ("log_size", "log_width", "log_height")
# The head's output channels: objectness logit, class logits, log extent, and (``axis_head``) the
# bar's doubled-angle axis (cos 2a, sin 2a).
OBJECTNESS = 0
CLASSES = slice(1, 1 + len(CLASS_NAMES))
EXTENT = slice(CLASSES.stop, CLASSES.stop + len(EXTENT_NAMES))
AXIS = slice(EXTENT.stop, EXTENT.stop + 2)


@dataclass(frozen=True)
class LessonConfig:
    """``channels`` C and ``groups`` G of every DCNv3 layer, ``depth`` residual layers, and
    ``deformable``: False builds the plain twin (a 3x3 convolution where each DCNv3 was);
    ``axis_head``: the head also predicts a bar's axis (two more output channels)."""

    channels: int = 32
    groups: int = 2
    depth: int = 3
    deformable: bool = True
    axis_head: bool = False

    @property
    def head_channels(self) -> int:
        return AXIS.stop if self.axis_head else EXTENT.stop


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class _PlainMixer(nn.Module):
    """The plain twin's stand-in for DCNv3: a 3x3 convolution on channels-last maps."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, H, W, C) -> (N, H, W, C)
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class LessonBlock(nn.Module):
    """x + GELU(mixer(LayerNorm(x))) on channels-last (N, H, W, C); mixer: DCNv3 (kernel 3,
    dilation 1, offset_scale 1) or the plain twin's 3x3 convolution."""

    def __init__(self, channels: int, groups: int, deformable: bool):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mixer = DCNv3(channels, 3, stride=1, pad=1, group=groups) if deformable else _PlainMixer(channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.mixer(self.norm(x)))


class LessonNet(nn.Module):
    """(N, 3, H, W) -> (N, config.head_channels, H/4, W/4); see the module docstring."""

    def __init__(self, config: LessonConfig = LessonConfig()):
        super().__init__()
        self.config = config
        c = config.channels
        self.stem = nn.Sequential(_conv(3, 16, 2), _conv(16, c, 2), _conv(c, c, 1))
        self.blocks = nn.ModuleList(LessonBlock(c, config.groups, config.deformable) for _ in range(config.depth))
        self.head = nn.Sequential(nn.Conv2d(c, 64, 1), nn.GELU(), nn.Conv2d(64, config.head_channels, 1))
        # Objectness starts at the rare-positive prior (CenterNet's -2.19 = logit of 0.1).
        # The log extents start at the log of a mid-range size (~35 px) rather than at 1 px.
        with torch.no_grad():
            self.head[-1].bias[OBJECTNESS] = -2.19
            self.head[-1].bias[EXTENT] = 3.5

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> the deepest block's output (N, H/4, W/4, C), channels-last."""
        x = self.stem(image).permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).permute(0, 3, 1, 2))


def offset_parameters(model: LessonNet) -> list[nn.Parameter]:
    """The parameters of every DCNv3 layer's ``offset`` and ``mask`` projections (trained at a
    higher learning rate: they start at zero and must travel far)."""
    return [p for _, module in dcnv3_modules(model) for head in (module.offset, module.mask) for p in head.parameters()]


def to_input(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """BGR uint8 images (N, H, W, 3) or a list of (H, W, 3) -> (N, 3, H, W) RGB float32 in [0, 1]."""
    array = np.ascontiguousarray(np.stack(list(images))[..., ::-1])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255)


def lesson_letterbox(side: int = LESSON_SIDE) -> Letterbox:
    """The identity letterbox of a lesson scene: the network sees the image unscaled."""
    return Letterbox.from_shapes((side, side), (side, side))


def lesson_records(model: LessonNet, images: list[np.ndarray]) -> tuple[np.ndarray, list[list[LayerRecord]]]:
    """One no-grad forward of ``images`` (BGR uint8, equal sizes) inside ``dcnv3.ops.capture``.

    Returns (head output (N, config.head_channels, H/4, W/4) float32 numpy, for each image its
    ``LayerRecord``s in forward order: offsets (H/4, W/4, G, P, 2), weights (H/4, W/4, G, P),
    stride 4 of the layer's input in image pixels, layer stride 1). Empty lists for the twin.
    """
    x = to_input(images)
    modules = dcnv3_modules(model)
    was_training = model.training
    model.eval()
    try:
        with capture(model, modules) as captured, torch.inference_mode():
            output = model(x)
    finally:
        model.train(was_training)
    per_image: list[list[LayerRecord]] = [[] for _ in images]
    for name, captured_layer in captured.items():
        stride = int(round(x.shape[2] / captured_layer.input_hw[0]))
        for index in range(len(images)):
            per_image[index].append(record_from_capture(name, captured_layer, index, stride, len(modules)))
    return output.numpy(), per_image


def record_from_capture(name: str, captured, index: int, stride: int = LESSON_STRIDE, depth: int = 3) -> LayerRecord:
    """Image ``index`` of a ``dcnv3.ops.capture`` record of a lesson DCNv3 layer as a ``LayerRecord``:
    ``stride`` of the layer's input in image pixels, no letterbox (own copies of the arrays)."""
    offsets = captured.offsets[index].float().numpy().copy()
    weights = captured.weights[index].float().numpy().copy()
    stage = f"lesson layer {name.split('.')[1] if '.' in name else name}/{depth} (stride {stride})"
    return LayerRecord.from_capture(name, captured, offsets, weights, stride, stage)


def one_cell(record: LayerRecord, cell: tuple[int, int]) -> LayerRecord:
    """The record cut down to one (row, col) cell: a (1, 1) grid that ``dcnv3.record.stats`` reads."""
    row, col = cell
    return dataclasses.replace(
        record,
        offsets=record.offsets[row : row + 1, col : col + 1],
        weights=record.weights[row : row + 1, col : col + 1],
    )


def save_lesson(model: LessonNet, path, recipe: dict) -> Path:
    """A plain tensors-and-numbers checkpoint (loads with ``torch.load(weights_only=True)``):
    {"config": dict, "state_dict": ..., "recipe": dict of JSON-able training facts}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": dataclasses.asdict(model.config), "state_dict": model.state_dict(), "recipe": recipe}, path)
    return path


def load_lesson(path) -> tuple[LessonNet, dict]:
    """(the network in eval mode, its recipe) from a ``save_lesson`` file; never unpickles code."""
    saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = LessonNet(LessonConfig(**saved["config"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval(), dict(saved.get("recipe", {}))
