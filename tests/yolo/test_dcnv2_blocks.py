"""dcnv3.yolo.blocks.dcnv2 and the dcnv2 YAMLs: ultralytics builds them at every scale with the blocks
where the DCNv3 YAMLs have theirs, and the probe reads their layers as sigmoid-weighted."""

import numpy as np
import pytest
import torch

from dcnv3 import capture, yolo
from dcnv3.ops.capture import deformable_modules
from dcnv3.yolo.blocks.dcnv2 import (
    MPCA,
    C2f_DCNv2_Dynamic,
    C3k2_DCNv2,
    C3k2_DCNv2_Dynamic,
    DCNv2,
    DCNv2_Dynamic,
    DCNv2OffsetAttention,
)


@pytest.fixture(scope="module")
def registered():
    with yolo.registered():
        yield


# yolov8n: C2f_DCNv2 at P3 (2 bottlenecks, 32 ch), P4 (2, 64), P5 (1, 128); yolo11n: C3k2_DCNv2 at
# P3 (a bottleneck, DCNv2 16 -> 32) and C3k inner blocks of two at P4 (32) and P5 (64).
EXPECTED_N = {
    "yolov8": [(32, 32)] * 2 + [(64, 64)] * 2 + [(128, 128)],
    "yolo11": [(16, 32), (32, 32), (32, 32), (64, 64), (64, 64)],
}


@pytest.mark.parametrize("family", ["yolov8", "yolo11"])
def test_yaml_builds_its_dcnv2_layers_where_dcnv3_has_its_own(registered, family):
    from ultralytics import YOLO

    model = YOLO(yolo.model_yaml("n", family=family, operator="dcnv2")).model
    layers = deformable_modules(model)
    assert [(m.in_channels, m.out_channels) for _, m in layers] == EXPECTED_N[family]
    assert {name.split(".")[1] for name, _ in layers} == {"4", "6", "8"}
    assert all(isinstance(m, DCNv2) and m.group == 1 and m.kernel_size == 3 for _, m in layers)
    dcnv3_model = YOLO(yolo.model_yaml("n", family=family)).model
    assert [type(m).__name__.replace("DCNv3", "DCNv2") for m in dcnv3_model.model] == [
        type(m).__name__ for m in model.model
    ]
    if family == "yolo11":  # scale m: ultralytics' c3k=True for the twins too
        big = YOLO(yolo.model_yaml("m", family=family, operator="dcnv2")).model
        assert isinstance(big.model[4], C3k2_DCNv2) and type(big.model[4].m[0]).__name__ == "C3k_DCNv2"


def test_probe_lists_every_dcnv2_layer_as_sigmoid(registered):
    from ultralytics import YOLO

    from dcnv3.analysis.probe import probe

    model = YOLO(yolo.model_yaml("n", operator="dcnv2"))
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    result = probe(model, image, imgsz=128)
    assert [layer.name for layer in result.layers] == [name for name, _ in deformable_modules(model.model)]
    assert {layer.weight_kind for layer in result.layers} == {"sigmoid"}
    first = result.layers[0]
    assert (first.kernel, first.groups, first.points, first.stride) == (3, 1, 9, 8)
    # Untrained: zero offsets, every mask sigmoid(0).
    assert np.abs(first.offsets).max() == 0 and np.allclose(first.weights, 0.5)


def test_dynamic_blocks_hold_the_attention_head_and_train():
    block = C2f_DCNv2_Dynamic(16, 16, 1, True)
    dcn = block.m[0].cv2
    assert isinstance(dcn, DCNv2_Dynamic) and isinstance(dcn.conv_offset_mask, DCNv2OffsetAttention)
    assert isinstance(dcn.conv_offset_mask.attention, MPCA) and dcn.conv_offset_mask.out_channel == 27
    assert {k.split(".")[1] for k in dcn.state_dict() if k.startswith("conv_offset_mask.")} == {
        "conv_offset_mask",
        "attention",
    }
    x = torch.randn(2, 16, 12, 10)
    with capture(block) as layers:
        out = block(x)
    assert out.shape == x.shape and layers["m.0.cv2"].weight_kind == "sigmoid"
    out.square().mean().backward()
    assert all(p.grad is not None for p in dcn.sampling_head_parameters())
    assert isinstance(C3k2_DCNv2_Dynamic(16, 32, 1, True).m[0].m[0].cv2, DCNv2_Dynamic)
