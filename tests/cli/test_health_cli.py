"""``python -m dcnv3 health``: exit 0 on the healthy bundled model, 1 on a checkpoint broken on
purpose (its JSON names the broken layer and only it), 2 on bad input; ``dcnv3.health`` in Python
gives the same report."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from health_breakage import broken_copy
from repo_paths import BUNDLED_DCNV3, BUNDLED_PLAIN, EXAMPLES

import dcnv3
from dcnv3.yolo.loading import load_model

pytestmark = pytest.mark.slow

ENV = {**os.environ, "YOLO_OFFLINE": "true"}
BROKEN_LAYER = "model.6.m.0.cv2.dcnv3"


def health_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "dcnv3", "health", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=900
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("health_images")
    for name in ("bus.jpg", "shapes_0.jpg"):
        shutil.copy(EXAMPLES / name, folder / name)
    (folder / "notes.txt").write_text("not an image, not looked at")
    return folder


@pytest.fixture(scope="module")
def blown_up_checkpoint(bundled_dcnv3, tmp_path_factory):
    """The bundled model with one layer's offsets blown up x10, saved as a checkpoint and loaded
    back through dcnv3.yolo.loading as any user's would be."""
    path = tmp_path_factory.mktemp("broken") / "blown_up.pt"
    broken_copy(bundled_dcnv3, "blown_up", [BROKEN_LAYER]).save(path)
    assert load_model(path).deformable_layers == bundled_dcnv3.deformable_layers
    return path


def test_healthy_model_exits_0_and_writes_the_schema(images, tmp_path):
    out = tmp_path / "health.json"
    result = health_cli("--model", BUNDLED_DCNV3, "--source", images, "--json", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("healthy")
    report = json.loads(out.read_text())
    assert report["schema"] == "deformlens.health/1" and report["healthy"] is True and report["imgsz"] == 320
    assert report["images"] == ["bus.jpg", "shapes_0.jpg"] and report["skipped"] == []
    assert [layer["name"] for layer in report["layers"]] == load_model(BUNDLED_DCNV3).deformable_layers
    layer = report["layers"][0]
    assert layer["flags"] == {} and layer["images"] == 2 and layer["weight_kind"] == "softmax"
    assert set(report["thresholds"]) >= {"collapsed_offset", "exploding_excess", "saturated_points"}
    # The layer means are the means of the per-image numbers.
    per_image = [entry["layers"][0]["mean_offset"] for entry in report["per_image"]]
    assert layer["mean_offset"] == pytest.approx(sum(per_image) / 2)
    assert layer["offset_ratio"] == pytest.approx(layer["mean_offset"] / layer["spacing"])


def test_broken_checkpoint_exits_1_and_names_its_layer(images, blown_up_checkpoint, tmp_path):
    out = tmp_path / "health.json"
    result = health_cli("--model", blown_up_checkpoint, "--source", images, "--json", out)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"flagged: {BROKEN_LAYER}" in result.stdout and "exploding off the image" in result.stdout
    report = json.loads(out.read_text())
    flagged = {layer["name"]: sorted(layer["flags"]) for layer in report["layers"] if layer["flags"]}
    assert report["healthy"] is False and flagged == {BROKEN_LAYER: ["exploding"]}
    assert next(layer for layer in report["layers"] if layer["name"] == BROKEN_LAYER)["flagged_images"] == 2


def test_bad_input_exits_2(images, tmp_path):
    missing = health_cli("--model", BUNDLED_DCNV3, "--source", tmp_path / "nothing_here")
    assert missing.returncode == 2 and "error:" in missing.stderr and "no such file" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert health_cli("--model", BUNDLED_DCNV3, "--source", empty).returncode == 2
    plain = health_cli("--model", BUNDLED_PLAIN, "--source", images)
    assert plain.returncode == 2 and "no deformable layer" in plain.stderr
    (tmp_path / "fake.pt").write_bytes(b"not a checkpoint")
    assert health_cli("--model", tmp_path / "fake.pt", "--source", images).returncode == 2


def test_python_api_gives_the_same_report(bundled_dcnv3, blown_up_checkpoint, images):
    healthy = dcnv3.health(bundled_dcnv3, images)
    assert not healthy.flagged and healthy.imgsz == 320 and len(healthy.per_image) == 2
    broken = dcnv3.health(str(blown_up_checkpoint), [EXAMPLES / "bus.jpg"], imgsz=640)
    assert broken.flagged and broken.imgsz == 640
    assert [layer.name for layer in broken.layers if layer.flags] == [BROKEN_LAYER]
