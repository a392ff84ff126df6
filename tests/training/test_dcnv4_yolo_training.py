"""dcnv4-yolov8n and dcnv4-yolo11n train with ultralytics' own trainer (``python -m dcnv3 train``,
a child process) for one epoch on the shapes data, and what they save loads back with its DCNv4
layers, weight kind "free", their offset_mask heads moved off DCNv4's zero init.

One epoch of 16 images at batch 8 is 2 optimizer steps (no warm-up, nominal batch = batch, as in
tests/yolo/test_yolo11_26.py: with ultralytics' defaults so short a run makes one step at lr 0). A
DCNv4 starts with all scalars 0, so its output is 0 and its offsets get no gradient until the
scalars have moved: after the first step the scalars are nonzero, after the second the offsets.
"""

import pytest
import torch
from child_process import run_python

from dcnv3.analysis.probe import probe
from dcnv3.ops.capture import deformable_modules
from dcnv3.ops.dcnv4 import DCNv4
from dcnv3.yolo import model_yaml
from dcnv3.yolo.loading import load_model

IMGSZ = 64


@pytest.mark.parametrize("family", ["yolov8", "yolo11"])
def test_dcnv4_yaml_trains_one_epoch_and_loads_back(family, tiny_shapes_data, tmp_path, report):
    yaml_name = model_yaml("n", family=family, operator="dcnv4")
    log = run_python(
        "-m",
        "dcnv3",
        "train",
        "--model",
        yaml_name,
        "--data",
        tiny_shapes_data,
        "--epochs",
        "1",
        "--imgsz",
        IMGSZ,
        "--batch",
        "8",
        "--workers",
        "0",
        "--project",
        tmp_path,
        "--name",
        family,
        "--set",
        "plots=False",
        "--set",
        "warmup_epochs=0",
        "--set",
        "nbs=8",
    )
    weights = tmp_path / family / "weights"
    assert (weights / "best.pt").is_file() and (weights / "last.pt").is_file(), log[-2000:]

    model = load_model(weights / "best.pt")
    layers = deformable_modules(model.model)
    assert len(layers) == 5 and all(type(m) is DCNv4 for _, m in layers)
    moved = []
    for name, op in layers:
        om = op.offset_mask.weight.detach()
        p, used = op.points, op.group * 3 * op.points
        blocks = om[:used].unflatten(0, (op.group, 3 * p))
        offsets, scalars = blocks[:, : 2 * p], blocks[:, 2 * p :]
        assert scalars.abs().max() > 0 and torch.isfinite(om).all(), name
        moved.append((scalars.abs().max().item(), offsets.abs().max().item()))
    assert any(offset > 0 for _, offset in moved)  # the second step moved the offsets

    image = sorted((tiny_shapes_data.parent / "images" / "val").glob("*.jpg"))[0]
    result = probe(model, str(image), imgsz=IMGSZ, conf=0.001)
    assert [layer.name for layer in result.layers] == model.deformable_layers
    assert {layer.weight_kind for layer in result.layers} == {"free"}
    report(
        f"{yaml_name}: 1 epoch at {IMGSZ} px trained and loaded; max |scalar| / |offset| weight per layer "
        f"{[(round(s, 4), round(o, 4)) for s, o in moved]}"
    )
