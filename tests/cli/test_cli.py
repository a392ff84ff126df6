"""python -m dcnv3: every command's --help, inspect, export, predict, and clean errors."""

import csv
import os

import numpy as np
import pytest
from child_process import cli
from repo_paths import FORK_A

ENV = {**os.environ, "YOLO_OFFLINE": "true"}
COMMANDS = ["train", "val", "predict", "inspect", "ablate", "health", "analyze", "export", "assets", "data"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command):
    out = cli(*([command] if command else []), "--help").stdout
    assert "usage: python -m dcnv3" in out
    if command is None:
        assert all(name in out for name in COMMANDS)


def test_inspect_writes_overlays_npz_and_statistics(tmp_path):
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 255, (90, 140, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "b.jpg"), rng.integers(0, 255, (120, 60, 3), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"not an image")
    result = cli("inspect", "--model", FORK_A, "--source", images, "--out", tmp_path / "out", "--imgsz", 128)
    assert "broken.png: skipped" in result.stderr
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {
        "a_overlay.png",
        "a_probe.npz",
        "b_overlay.png",
        "b_probe.npz",
        "layer_stats.csv",
    }
    rows = list(csv.DictReader(open(out / "layer_stats.csv")))
    assert len(rows) == 2 * 5 and rows[0]["stage"] == "P3/8 backbone"
    assert 0 <= float(rows[0]["weight_entropy_mean"]) <= 1
    assert cv2.imread(str(out / "a_overlay.png")).shape == (90, 140, 3)
    arrays = np.load(out / "b_probe.npz")
    assert arrays["model.8.m.0.cv2.dcnv3/weights"].shape[-1] == 9


def test_export_onnx_runs_in_onnxruntime_and_matches(tmp_path):
    import shutil

    model = tmp_path / "fork.pt"
    shutil.copyfile(FORK_A, model)
    out = cli("export", "--model", model, "--imgsz", 160, cwd=tmp_path).stdout
    assert (tmp_path / "fork.onnx").is_file()
    assert "onnxruntime vs PyTorch: max |diff|" in out


def test_predict_saves_annotated_images(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((64, 64, 3), np.uint8))
    out = cli(
        "predict", "--model", FORK_A, "--source", tmp_path / "img.png", "--imgsz", 64, "--out", tmp_path / "pred"
    ).stdout
    assert "img.png:" in out and any((tmp_path / "pred").iterdir())


@pytest.mark.parametrize("command", ["inspect", "predict", "val"])
def test_bad_checkpoint_is_a_one_line_error(tmp_path, command):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk" * 100)
    extra = {
        "inspect": ["--source", tmp_path],
        "predict": ["--source", tmp_path],
        "val": ["--data", tmp_path / "x.yaml"],
    }[command]
    result = cli(command, "--model", bad, *extra, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "Traceback" not in result.stderr
