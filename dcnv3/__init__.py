"""DeformLens' DCNv3 package: InternImage's DCNv3 in pure PyTorch, for YOLOv8 on stock ultralytics.

Importable without gradio. The operator lives in ``ops``, the module in ``module``, the opt-in
capture of offsets and weights in ``capture``.
"""
from .capture import CapturedLayer, capture, dcnv3_modules
from .module import DCNv3, DCNv3_pytorch
from .ops import dcnv3_core, set_default_formulation

__all__ = ["DCNv3", "DCNv3_pytorch", "dcnv3_core", "set_default_formulation", "capture",
           "CapturedLayer", "dcnv3_modules"]
__version__ = "0.1.0"
