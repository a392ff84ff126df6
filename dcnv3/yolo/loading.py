"""``load_model``: any YOLOv8 detector checkpoint (ours, a community fork's, a plain one) as a
ready-to-predict ultralytics ``YOLO`` on CPU in fp32, loaded without running code from the file.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from torch import nn

from dcnv3.bundled import resolve_bundled_model
from dcnv3.ops.capture import deformable_modules
from dcnv3.yolo.checkpoints import CheckpointError, preloaded, safe_load

__all__ = ["load_model", "deformable_layer_names", "train_imgsz", "DEFAULT_IMGSZ", "MAX_CHECKPOINT_BYTES"]

MAX_CHECKPOINT_BYTES = 1 << 30  # 1 GiB: far above any YOLOv8-x checkpoint

_OTHER_TASKS = {
    "ClassificationModel": "an image classifier",
    "SegmentationModel": "an instance segmentation model",
    "PoseModel": "a pose estimation model",
    "OBBModel": "an oriented-box detector",
    "WorldModel": "an open-vocabulary (YOLO-World) model",
    "RTDETRDetectionModel": "an RT-DETR transformer detector",
}


def _detector_from(checkpoint, path: Path) -> nn.Module:
    """The checkpoint's detection model, or a CheckpointError that says what the file holds."""
    if isinstance(checkpoint, nn.Module):
        model = checkpoint
    elif isinstance(checkpoint, dict):
        # best.pt holds the network under "model" ("ema" None); last.pt, written while training
        # runs, under "ema" ("model" None). ultralytics' own loader takes "ema" first too.
        model = checkpoint.get("ema") or checkpoint.get("model")
        if not isinstance(model, nn.Module):
            keys = ", ".join(sorted(map(str, checkpoint))[:8])
            raise CheckpointError(
                f"{path.name}: a dictionary without a model (keys: {keys}); "
                f"a YOLO checkpoint stores it under 'model' or 'ema'"
            )
    else:
        raise CheckpointError(f"{path.name}: holds a {type(checkpoint).__name__}, not a model checkpoint")
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import DetectionModel

    for cls in type(model).__mro__:
        if cls.__name__ in _OTHER_TASKS:
            raise CheckpointError(
                f"{path.name}: {_OTHER_TASKS[cls.__name__]} ({cls.__name__}), not an "
                f"object detector; DeformLens needs a YOLO detection checkpoint"
            )
    head = getattr(model, "model", [None])[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
    if not isinstance(model, DetectionModel) or type(head) is not Detect:
        raise CheckpointError(
            f"{path.name}: a {type(model).__name__}, not a YOLO detection model (DetectionModel with a Detect head)"
        )
    return model


def load_model(path: str | Path, max_bytes: int = MAX_CHECKPOINT_BYTES):
    """Load a YOLO detection checkpoint (YOLOv8, YOLO11, YOLO26) as an ultralytics ``YOLO`` (CPU, fp32, eval).

    ``path`` is a file, or the bare name of a bundled checkpoint (``"dcnv3-yolov8n.pt"``,
    ``"yolov8n.pt"``) when no such file exists here. Loads DeformLens checkpoints, community-fork
    checkpoints (their modules recognised by what they hold, ``dcnv3.yolo.fork_layouts``; no fork code
    needed) and plain detectors, as best.pt or last.pt. Nothing in the file is
    executed (see ``dcnv3.yolo.checkpoints``). Registers the ultralytics integration
    (``dcnv3.yolo.register()``, idempotent) if it is not yet. ``model.deformable_layers`` lists the
    qualified names of its deformable modules (DCNv2, DCNv3, DCNv4); it is empty for a plain detector.
    ``model.dcnv3_layers`` is the same list under its old name, deprecated (kept until 0.3).

    Raises:
        CheckpointError: the file is missing, too large, not a checkpoint, not a detector, or
            references code (UnsafeCheckpointError, naming the global).
    """
    from ultralytics import YOLO

    from dcnv3 import yolo

    yolo.register()  # the blocks, and ultralytics' loader taking the checkpoint read here
    path = resolve_bundled_model(path)  # "dcnv3-yolov8n.pt" is the bundled file wherever installed
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointError(f"{path.name}: {size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
    checkpoint = safe_load(path)
    _detector_from(checkpoint, path)
    # ultralytics only treats names ending in .pt as checkpoints; it never reads the file here
    # (the checked object is handed over), so another name needs no copy, only a .pt alias.
    pt_path = path if path.suffix == ".pt" else Path(tempfile.gettempdir()) / f"{path.stem}.deformlens.pt"
    with preloaded(pt_path, checkpoint):
        model = YOLO(str(pt_path), task="detect")
    model.model.float().eval()
    model.deformable_layers = deformable_layer_names(model)
    model.dcnv3_layers = model.deformable_layers  # deprecated alias (until 0.3): it lists every operator
    return model


def deformable_layer_names(model) -> list[str]:
    """Qualified names (in the DetectionModel) of the deformable modules (DCNv3, DCNv4, DCNv2) of a
    YOLO or DetectionModel, in forward order; [] for a plain detector."""
    detection_model = getattr(model, "model", model)
    if not isinstance(detection_model, nn.Module):
        return []
    return [name for name, _ in deformable_modules(detection_model)]


# Names that said DCNv3 for things that hold any operator: kept for one version, with a warning.
_DEPRECATED = {"dcnv3_layer_names": ("deformable_layer_names", deformable_layer_names)}


def __getattr__(name: str):
    if name in _DEPRECATED:
        new_name, value = _DEPRECATED[name]
        warnings.warn(
            f"dcnv3.yolo.loading.{name} is deprecated (it covers DCNv2, DCNv3 and DCNv4); use {new_name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEFAULT_IMGSZ = 640  # ultralytics' default inference size, for a checkpoint that records none


def train_imgsz(model, fallback: int = DEFAULT_IMGSZ) -> int:
    """The image size a YOLO was trained at (its checkpoint's ``imgsz`` training argument, which
    ultralytics keeps in ``model.overrides``), else ``fallback``: the size at which its offsets
    mean what they learned (the bundled models: 320)."""
    size = getattr(model, "overrides", {}).get("imgsz")
    if isinstance(size, (list, tuple)) and size:
        size = max(size)
    return int(size) if isinstance(size, (int, float)) and size > 0 else int(fallback)
