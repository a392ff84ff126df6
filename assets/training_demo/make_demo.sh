#!/usr/bin/env bash
# The Training tab's demo run (assets/training_demo), made on a CPU in a few minutes: a half-width
# DCNv3-YOLOv8n trained from scratch for 6 epochs on 240 generated shapes images at 160 px, with the
# bundled model's offset settings (offset learning rate x10, no decay), a step every batch (nbs 16),
# no warmup and save_period=1. DeformableDetectionTrainer's health monitor writes health.csv / health.json
# after each epoch; three epoch checkpoints (after epochs 1, 3 and 6) are kept, optimizer stripped.
# Run from the repository root: bash assets/training_demo/make_demo.sh
set -euo pipefail
export YOLO_OFFLINE=true
work=${WORK:-/tmp/deformlens_training_demo}
out=assets/training_demo/run
python -m dcnv3 data --out "$work/shapes" --n-train 240 --n-val 40 --seed 3 --imgsz 160 --overwrite
python -m dcnv3 train --model assets/training_demo/dcnv3-yolov8n-half.yaml --data "$work/shapes/data.yaml" \
  --epochs 6 --imgsz 160 --batch 16 --workers 0 --seed 0 --project "$work/runs" --name demo \
  --offset-lr-scale 10 --offset-no-decay \
  --set plots=False save_period=1 warmup_epochs=0 nbs=16 val=True
mkdir -p "$out/weights"
cp "$work/runs/demo/health.csv" "$work/runs/demo/health.json" "$work/runs/demo/results.csv" "$out/"
python - "$work/runs/demo/weights" "$out/weights" <<'PY'
import shutil, sys
from pathlib import Path
from ultralytics.utils.torch_utils import strip_optimizer
source, target = Path(sys.argv[1]), Path(sys.argv[2])
for epoch in (0, 2, 5):  # epoch{k}.pt holds the model after epoch k + 1
    path = target / f"epoch{epoch}.pt"
    shutil.copy(source / f"epoch{epoch}.pt", path)
    strip_optimizer(path)  # fp16 EMA, no optimizer: ~2 MB
PY
python - <<'PY'  # the tab's default image: a scene of the demo's own validation seed
import cv2
from dcnv3.data import render_scene
from dcnv3.data.generator import image_rng
image, _, _ = render_scene(image_rng(3, "val", 1), size=320)
cv2.imwrite("assets/training_demo/scene.jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
PY
ls -la "$out" "$out/weights"
