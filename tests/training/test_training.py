"""Training through ultralytics: save, reload in a fresh process, predict, fine-tune; DDP script."""

import re
from pathlib import Path

from child_process import run_python


def test_train_reload_predict_and_finetune(tiny_shapes_data, tmp_path, report):
    runs = tmp_path / "runs"
    log = run_python(
        "-m",
        "dcnv3",
        "train",
        "--model",
        "dcnv3-yolov8n.yaml",
        "--data",
        str(tiny_shapes_data),
        "--epochs",
        "2",
        "--imgsz",
        "64",
        "--batch",
        "8",
        "--workers",
        "0",
        "--project",
        str(runs),
        "--name",
        "scratch",
        "--set",
        "plots=False",
    )
    best = runs / "scratch" / "weights" / "best.pt"
    assert best.is_file(), log[-2000:]
    report(f"2-epoch DCNv3-YOLOv8n training on 16 images at 64 px saved {best.name}")
    out = run_python(
        "-c",
        f"""
import numpy as np
from dcnv3.yolo.loading import load_model
from dcnv3.analysis.probe import probe
model = load_model({str(best)!r})
result = model.predict(np.zeros((64, 80, 3), np.uint8), imgsz=64, verbose=False)[0]
probed = probe(model, np.zeros((64, 80, 3), np.uint8), imgsz=64)
print("layers", len(model.deformable_layers), len(probed.layers), "boxes", len(result.boxes))
""",
    )
    assert "layers 5 5" in out
    # Fine-tuning from the checkpoint: ultralytics rebuilds the model from its stored YAML.
    log = run_python(
        "-m",
        "dcnv3",
        "train",
        "--model",
        str(best),
        "--data",
        str(tiny_shapes_data),
        "--epochs",
        "1",
        "--imgsz",
        "64",
        "--batch",
        "8",
        "--workers",
        "0",
        "--project",
        str(runs),
        "--name",
        "finetune",
        "--set",
        "plots=False",
    )
    transferred = re.search(r"Transferred (\d+)/(\d+) items", log)
    assert transferred and transferred.group(1) == transferred.group(2), log[-3000:]
    assert (runs / "finetune" / "weights" / "best.pt").is_file()


def test_ddp_worker_script_registers_the_blocks(tiny_shapes_data, tmp_path):
    """Multi-GPU training runs a generated script in each worker; it unpickles the trainer class
    from dcnv3.training, whose constructor must register the blocks before the model is rebuilt. Without GPUs
    we run that script with the final `trainer.train()` swapped for a model rebuild."""
    out = run_python(
        "-c",
        f"""
from dcnv3.training.trainer import DeformableDetectionTrainer
from ultralytics.utils.dist import generate_ddp_file
trainer = DeformableDetectionTrainer(overrides=dict(model="dcnv3-yolov8n.yaml", data={str(tiny_shapes_data)!r},
                                               imgsz=64, epochs=1, device="cpu", project={str(tmp_path)!r}))
trainer.model = trainer.get_model(cfg="dcnv3-yolov8n.yaml", verbose=False)
print("SCRIPT", generate_ddp_file(trainer))
""",
    )
    script = Path(re.search(r"SCRIPT (\S+)", out).group(1))
    try:
        text = script.read_text()
        assert "trainer.train()" in text
        check = (
            "import dcnv3\n"
            "    assert 'dcnv3.training' in sys.modules\n"
            "    from ultralytics.nn.tasks import DetectionModel\n"
            "    rebuilt = DetectionModel(trainer.args.model, verbose=False)\n"
            "    print('workers', len(dcnv3.dcnv3_modules(trainer.model)), len(dcnv3.dcnv3_modules(rebuilt)))"
        )
        # Check that the blocks are registered by the unpickling alone, before our import.
        text = text.replace("trainer.train()", check)
        text = text.replace("state = torch_load(", "assert 'dcnv3' not in sys.modules\n    state = torch_load(")
        worker = tmp_path / "worker.py"
        worker.write_text(text)
        assert "workers 5 5" in run_python(str(worker))
    finally:
        script.unlink(missing_ok=True)
        script.with_suffix(".pt").unlink(missing_ok=True)
