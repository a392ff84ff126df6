#!/usr/bin/env bash
# The bundled models' recipe, as run for assets/models (see MODEL_CARD.md): the dataset, a
# held-out set from a seed never used in training, the two trainings (one after the other, same
# data, schedule and augmentation), their validation on the held-out set, and the analysis.
set -euo pipefail
export YOLO_OFFLINE=true
python -m dcnv3 data --out shapes-s0 --n-train 1500 --n-val 300 --seed 0 --imgsz 320 --overwrite
python -m dcnv3 data --out shapes-heldout-s101 --n-train 0 --n-val 500 --seed 101 --imgsz 320 --overwrite
common="--data shapes-s0/data.yaml --epochs 30 --imgsz 320 --batch 16 --workers 2 --seed 0 --project runs --set plots=False"
python -m dcnv3 train --model dcnv3-yolov8n.yaml --name dcnv3-yolov8n --offset-lr-scale 10 --offset-no-decay $common
python -m dcnv3 train --model yolov8n.yaml --name yolov8n $common
for model in dcnv3-yolov8n yolov8n; do
  python -m dcnv3 val --model runs/$model/weights/best.pt --data shapes-heldout-s101/data.yaml --imgsz 320
done
python -m dcnv3 analyze --model runs/dcnv3-yolov8n/weights/best.pt --data shapes-heldout-s101/data.yaml --imgsz 320
