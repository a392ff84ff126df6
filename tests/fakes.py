"""Made-up inputs that several test folders share: layer records and probes with chosen arrays,
a checkpoint of a fork layout nobody knows, a pickle that would run a command, and random inputs
of the DCNv3 core."""

import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dcnv3.analysis.probe import Detections, Probe
from dcnv3.ops.core import output_size
from dcnv3.record.geometry import Letterbox
from dcnv3.record.layer_record import LayerRecord

# The module path a fork's classes are pickled under (the extra_modules family's).
FOO_MODULE = "ultralytics.nn.extra_modules.block"


def make_layer(
    name="model.4.m.0.cv2.dcnv3", grid=(8, 8), groups=2, stride=8, offsets=None, weights=None, stage="P3/8 backbone"
) -> LayerRecord:
    """A 3x3, dilation-1, stride-1 DCNv3 record: zero offsets and uniform weights unless given."""
    h, w = grid
    offsets = np.zeros((h, w, groups, 9, 2), np.float32) if offsets is None else np.asarray(offsets, np.float32)
    weights = np.full((h, w, groups, 9), 1 / 9, np.float32) if weights is None else np.asarray(weights, np.float32)
    return LayerRecord(name, stage, stride, 1, grid, 3, 1, 1, 1.0, groups, 9, False, offsets, weights)


def make_probe(layers, image_shape=(64, 64), boxes=()) -> Probe:
    """A probe of an image that needed no letterbox (ratio 1, no padding)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    detections = Detections(
        boxes, np.linspace(0.9, 0.5, len(boxes)).astype(np.float32), np.zeros(len(boxes), np.int64), {0: "thing"}
    )
    return Probe(tuple(image_shape), Letterbox.from_shapes(image_shape, image_shape), detections, list(layers))


def unknown_fork_checkpoint(path: Path) -> int:
    """A detector whose layer 4 is a fork's C3k2_Foo(Bottleneck_Foo(FooConv)), pickled under the
    fork's module path; the classes exist only while saving. Returns FooConv's channels."""
    from ultralytics.nn.modules.conv import Conv
    from ultralytics.nn.tasks import DetectionModel

    fork = types.ModuleType(FOO_MODULE)

    class FooConv(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.offset_conv = nn.Conv2d(c, 18, 3, padding=1)
            self.weight = nn.Parameter(torch.zeros(c, c, 3, 3))

    class Bottleneck_Foo(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.cv1, self.cv2, self.add = Conv(c, c, 3), FooConv(c), True

    class C3k2_Foo(nn.Module):
        def __init__(self, stock):
            super().__init__()
            self.c, self.cv1, self.cv2 = stock.c, stock.cv1, stock.cv2
            self.m = nn.ModuleList([Bottleneck_Foo(stock.c)])

    for cls in (FooConv, Bottleneck_Foo, C3k2_Foo):
        cls.__module__, cls.__qualname__ = FOO_MODULE, cls.__name__
        setattr(fork, cls.__name__, cls)
    model = DetectionModel("yolo11n.yaml", nc=2, verbose=False)
    model.model[4] = C3k2_Foo(model.model[4])
    sys.modules[FOO_MODULE] = fork
    try:
        torch.save({"model": model.half(), "ema": None}, path)
    finally:
        del sys.modules[FOO_MODULE]
    return model.model[4].c


class RunsCommand:
    """Pickles to a call of os.system: a hostile checkpoint."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def random_case(
    seed,
    n=2,
    in_h=7,
    in_w=9,
    group=2,
    channels_per_group=3,
    kernel=3,
    stride=1,
    pad=1,
    dilation=1,
    offset_scale=1.0,
    remove_center=0,
    spread=3.0,
):
    gen = torch.Generator().manual_seed(seed)
    points = kernel * kernel - remove_center
    out_h, out_w = output_size(in_h, in_w, kernel, kernel, stride, stride, pad, pad, dilation, dilation)
    inputs = torch.randn(n, in_h, in_w, group * channels_per_group, generator=gen, dtype=torch.float64)
    offset = spread * torch.randn(n, out_h, out_w, group * points * 2, generator=gen, dtype=torch.float64)
    logits = torch.randn(n, out_h, out_w, group, points, generator=gen, dtype=torch.float64)
    mask = torch.softmax(logits, -1).reshape(n, out_h, out_w, -1)
    config = dict(
        kernel_h=kernel,
        kernel_w=kernel,
        stride_h=stride,
        stride_w=stride,
        pad_h=pad,
        pad_w=pad,
        dilation_h=dilation,
        dilation_w=dilation,
        group=group,
        group_channels=channels_per_group,
        offset_scale=offset_scale,
        remove_center=remove_center,
    )
    return inputs, offset, mask, config
