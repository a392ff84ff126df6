"""The bundled models load safely in a fresh process and detect shapes on a generated scene."""

import os
import subprocess
import sys

import pytest
from repo_paths import ROOT

MODELS = ROOT / "assets" / "models"
pytestmark = pytest.mark.slow  # a fresh interpreter per bundled model


@pytest.mark.parametrize("name,layers", [("dcnv3-yolov8n.pt", 5), ("yolov8n.pt", 0)])
def test_bundled_model_loads_in_a_fresh_process_and_detects(name, layers):
    code = f"""
from dcnv3.yolo.loading import load_model
from dcnv3.analysis.probe import probe
from dcnv3.data import render_scene, CLASS_NAMES
from dcnv3.data.generator import image_rng
model = load_model({str(MODELS / name)!r})
assert len(model.deformable_layers) == {layers}, model.deformable_layers
assert [model.names[i] for i in range(len(model.names))] == list(CLASS_NAMES)
hits = 0
for index in range(6):
    image, boxes, classes = render_scene(image_rng(999, "bundled-test", index), size=320)
    result = probe(model, image, imgsz=320, conf=0.25)
    assert len(result.layers) == {layers}
    hits += len(result.detections) > 0
print("hits", hits)
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "YOLO_OFFLINE": "true"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split("hits")[-1]) >= 5  # trained: shapes are found in nearly every scene


def test_train_imgsz_reads_the_checkpoint_training_size():
    """The app, the video pipeline and the toy run a model at the size it was trained at."""
    from types import SimpleNamespace

    from dcnv3.yolo.loading import load_model, train_imgsz

    assert train_imgsz(load_model(MODELS / "dcnv3-yolov8n.pt")) == 320
    assert train_imgsz(SimpleNamespace(overrides={"imgsz": [480, 640]})) == 640
    assert train_imgsz(SimpleNamespace(overrides={})) == 640
    assert train_imgsz(SimpleNamespace(overrides={"imgsz": None}), fallback=320) == 320
