"""Training DCNv3-YOLOv8 with ultralytics' own trainer.

``DCNv3DetectionTrainer`` is ultralytics' ``DetectionTrainer`` living in this package: for
multi-GPU training ultralytics pickles the trainer class into a generated script that each DDP
worker runs, and unpickling it imports ``dcnv3.training``, hence ``dcnv3``, which registers the
DCNv3 blocks in the worker before the model is rebuilt.
"""
from __future__ import annotations

from ultralytics.models.yolo.detect import DetectionTrainer

from . import integration

__all__ = ["DCNv3DetectionTrainer", "train"]

integration.register()


class DCNv3DetectionTrainer(DetectionTrainer):
    """ultralytics' DetectionTrainer, importable from ``dcnv3`` (see the module docstring)."""


def train(model: str, data: str, **overrides):
    """Train ``model`` (a YAML such as ``dcnv3-yolov8n.yaml`` or a ``.pt`` to fine-tune) on ``data``
    with ultralytics' trainer; returns the ``YOLO`` whose ``trainer.best`` is the best checkpoint."""
    from ultralytics import YOLO

    yolo = YOLO(model)
    yolo.train(data=data, trainer=DCNv3DetectionTrainer, **overrides)
    return yolo
