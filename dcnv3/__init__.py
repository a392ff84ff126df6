"""DeformLens' DCNv3 package: InternImage's DCNv3 for YOLOv8 on stock ultralytics, on any device
(PyTorch, with a small C++ kernel compiled on first use for the CPU: ``dcnv3.native``).

Importable without gradio. ``import dcnv3`` registers the DCNv3 blocks with ultralytics (see
``dcnv3.integration``), so ``YOLO("dcnv3-yolov8n.yaml")`` builds and fork checkpoints load.
"""
import os

# DeformLens never goes online: ultralytics' connectivity checks (DNS look-ups) and downloads
# stay off unless the user asked otherwise before importing dcnv3.
os.environ.setdefault("YOLO_OFFLINE", "true")

from .capture import CapturedLayer, capture, dcnv3_modules  # noqa: E402
from .module import DCNv3, DCNv3_pytorch  # noqa: E402
from .ops import dcnv3_core, set_default_formulation  # noqa: E402
from .integration import model_yaml, register  # noqa: E402

register()

from .blocks import Bottleneck_DCNv3, C2f_DCNv3, DCNV3_YoLo  # noqa: E402
from .checkpoints import CheckpointError, UnsafeCheckpointError  # noqa: E402
from .loading import load_model  # noqa: E402
from .probe import LayerRecord, Probe, probe, probe_batch  # noqa: E402
from . import training  # noqa: E402  (dcnv3.training.DCNv3DetectionTrainer)

__all__ = ["DCNv3", "DCNv3_pytorch", "dcnv3_core", "set_default_formulation", "capture",
           "CapturedLayer", "dcnv3_modules", "DCNV3_YoLo", "Bottleneck_DCNv3", "C2f_DCNv3",
           "model_yaml", "register", "CheckpointError", "UnsafeCheckpointError", "load_model",
           "probe", "probe_batch", "Probe", "LayerRecord"]
__version__ = "0.1.0"
