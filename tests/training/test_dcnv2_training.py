"""One epoch of training for dcnv2-yolov8n and dcnv2-yolo11n on the tiny shapes data, through the
CLI's trainer in a child process, then the checkpoint loads and probes with its DCNv2 layers."""

import cv2
import numpy as np
import pytest
from child_process import run_python

from dcnv3.analysis.probe import probe
from dcnv3.yolo import model_yaml
from dcnv3.yolo.loading import load_model

IMGSZ = 64


@pytest.mark.training
@pytest.mark.parametrize("family", ["yolov8", "yolo11"])
def test_one_epoch_trains_and_the_checkpoint_probes(family, tiny_shapes_data, tmp_path, report):
    # No warm-up and nominal batch = batch: each of the 2 iterations is a step at the full learning
    # rate (ultralytics' defaults would make one step at lr 0 and leave the offsets at zero).
    log = run_python(
        "-m",
        "dcnv3",
        "train",
        "--model",
        model_yaml("n", family=family, operator="dcnv2"),
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
    best = tmp_path / family / "weights" / "best.pt"
    assert best.is_file(), log[-2000:]
    model = load_model(best)
    image = cv2.imread(str(sorted((tiny_shapes_data.parent / "images" / "val").glob("*.jpg"))[0]))
    probed = probe(model, image, imgsz=IMGSZ, conf=0.001)
    assert len(probed.layers) == 5 and {layer.weight_kind for layer in probed.layers} == {"sigmoid"}
    assert all(((layer.weights > 0) & (layer.weights < 1)).all() for layer in probed.layers)
    # The offset heads start at zero; one epoch of gradient at the full learning rate moves them.
    moved = max(float(np.abs(layer.offsets).max()) for layer in probed.layers)
    assert moved > 1e-5
    report(
        f"dcnv2-{family}n: trained 1 epoch on 16 shapes images at {IMGSZ} px; best.pt probes 5 DCNv2 "
        f"layers (sigmoid); max |offset| {moved:.3g} cells"
    )
