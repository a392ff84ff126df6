"""The health monitor over a short training run: DeformableDetectionTrainer writes health.csv / health.json
for every epoch; a stock trainer takes it through model.add_callback and stops on a flag."""

import json

from child_process import run_python

from dcnv3.training.monitor import CSV_FIELDS, read_health


def test_trainer_writes_health_for_every_epoch(tiny_shapes_data, tmp_path, report):
    runs = tmp_path / "runs"
    log = run_python(
        "-c",
        f"""
from dcnv3.training.trainer import train
train("dcnv3-yolov8n.yaml", {str(tiny_shapes_data)!r}, epochs=2, imgsz=64, batch=8, workers=0, device="cpu",
      project={str(runs)!r}, name="run", exist_ok=True, plots=False, warmup_epochs=0, save_period=1, seed=0)
""",
    )
    run = runs / "run"
    rows = read_health(run)
    layers = sorted({row["layer"] for row in rows})
    assert len(layers) == 5, log[-3000:]
    assert [row["epoch"] for row in rows] == [1] * 5 + [2] * 5  # each epoch once, not again at the final val
    assert (run / "health.csv").read_text().splitlines()[0].split(",") == list(CSV_FIELDS)
    document = json.loads((run / "health.json").read_text())
    assert [entry["epoch"] for entry in document["epochs"]] == [1, 2]
    assert len(document["epochs"][0]["images"]) == 4 and document["epochs"][0]["imgsz"] == 64
    first, second = ({row["layer"]: row for row in rows if row["epoch"] == epoch} for epoch in (1, 2))
    # The JSON and the CSV hold the same numbers; the offsets start at zero and grow with training.
    layer = layers[0]
    assert (
        document["epochs"][1]["layers"][0]["mean_offset"]
        == second[document["epochs"][1]["layers"][0]["name"]]["mean_offset"]
    )
    assert all(second[name]["mean_offset"] > first[name]["mean_offset"] for name in layers), rows
    assert all(0 < row["entropy"] <= 1 for row in rows) and first[layer]["weight_kind"] == "softmax"
    assert sorted(p.name for p in (run / "weights").glob("epoch*.pt")) == ["epoch0.pt", "epoch1.pt"]
    report(
        "training health: 2-epoch DCNv3-YOLOv8n run on 16 images at 64 px, mean |offset| per layer "
        + ", ".join(f"{first[n]['mean_offset']:.4f} -> {second[n]['mean_offset']:.4f}" for n in layers)
        + " cells"
    )


def test_stock_trainer_takes_the_callback_and_stops_on_a_flag(tiny_shapes_data, tmp_path):
    # The offsets start at zero, and with batch 8 ultralytics accumulates gradients over 64 images
    # (nbs) before its first optimizer step: after epoch 1 (2 batches) every layer is still on its
    # grid, "collapsed", and the monitor stops the 3-epoch run there.
    out = run_python(
        "-c",
        f"""
from ultralytics import YOLO
from dcnv3 import yolo
from dcnv3.training.monitor import HealthMonitor, read_health
yolo.register()
model = YOLO("dcnv3-yolov8n.yaml")
monitor = HealthMonitor(count=2, stop_on_flag={{"collapsed"}})
model.add_callback("on_fit_epoch_end", monitor)
model.train(data={str(tiny_shapes_data)!r}, epochs=3, imgsz=64, batch=8, workers=0, device="cpu",
            project={str(tmp_path)!r}, name="stock", exist_ok=True, plots=False, warmup_epochs=0, seed=0)
rows = read_health(model.trainer.save_dir)
print("TRAINER", type(model.trainer).__name__, "STOPPED", monitor.stopped_at,
      "EPOCHS", sorted({{r["epoch"] for r in rows}}), "FLAGS", sorted({{f for r in rows for f in r["flags"]}}))
""",
    )
    assert "TRAINER DetectionTrainer STOPPED 1 EPOCHS [1] FLAGS ['collapsed']" in out, out[-3000:]
    assert "health monitor: stopping after epoch 1 on collapsed" in out


def test_train_cli_stops_on_a_chosen_flag(tiny_shapes_data, tmp_path):
    """``python -m dcnv3 train --health-stop collapsed``: the same stop from the command line (the
    offsets are still on the grid after epoch 1, as above); an unknown flag is refused up front."""
    from child_process import cli

    result = cli(
        "train",
        "--data",
        tiny_shapes_data,
        "--epochs",
        3,
        "--imgsz",
        64,
        "--batch",
        8,
        "--workers",
        0,
        "--device",
        "cpu",
        "--project",
        tmp_path,
        "--name",
        "cli",
        "--health-stop",
        "collapsed",
        "--set",
        "plots=False",
        "warmup_epochs=0",
    )
    assert "stopped by the health monitor after epoch 1" in result.stdout, result.stdout[-3000:]
    rows = read_health(tmp_path / "cli")
    assert sorted({row["epoch"] for row in rows}) == [1] and all("collapsed" in row["flags"] for row in rows)
    assert (tmp_path / "cli" / "weights" / "best.pt").is_file()

    refused = cli("train", "--data", tiny_shapes_data, "--project", tmp_path, "--health-stop", "wobbly", check=False)
    assert refused.returncode == 2 and "unknown flag(s) wobbly" in refused.stderr
    assert not (tmp_path / "train").exists()


def test_stop_rule_checks_the_flag_names_for_every_caller():
    """The monitor itself refuses an unknown flag (the CLI and train() go through it too)."""
    import pytest

    from dcnv3.training.monitor import HealthMonitor, stop_rule

    assert stop_rule(False) is False and stop_rule(True) is True
    assert stop_rule(["exploding", "vanished"]) == frozenset({"exploding", "vanished"})
    assert stop_rule("collapsed") == frozenset({"collapsed"}) and stop_rule([]) is False
    with pytest.raises(ValueError, match="unknown flag"):
        HealthMonitor(stop_on_flag={"wobbly"})
