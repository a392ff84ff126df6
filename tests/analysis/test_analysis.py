"""python -m dcnv3 analyze: effective dilation by object size over a labelled split."""

import pytest
from ultralytics import YOLO

from dcnv3.analysis.dataset import analyze_dataset, format_table, size_bucket
from dcnv3.data import write_dataset


def test_size_buckets_follow_coco():
    assert size_bucket([0, 0, 20, 20]) == "small"
    assert size_bucket([0, 0, 40, 40]) == "medium"
    assert size_bucket([0, 0, 100, 100]) == "large"


def test_untrained_model_has_the_regular_grid_everywhere(tmp_path):
    data = write_dataset(tmp_path / "d", n_train=1, n_val=4, seed=5, imgsz=160)
    model = YOLO("dcnv3-yolov8n.yaml")
    rows = analyze_dataset(model, data, split="val", imgsz=160)
    assert len(rows) == 5
    for row in rows:
        assert row["background_n"] > 0
        assert sum(row[f"{b}_n"] for b in ("small", "medium", "large")) > 0
        for bucket in ("small", "medium", "large", "background"):
            if row[f"{bucket}_n"]:
                assert row[f"{bucket}_mean"] == pytest.approx(1.0) and row[f"{bucket}_std"] == pytest.approx(0.0)
        assert row["mean_abs_offset"] == 0 and row["mean_entropy"] == pytest.approx(1.0)
    table = format_table(rows)
    assert table.count("\n") == 6 and "P5/32 backbone" in table
