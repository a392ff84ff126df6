"""DeformLens' DCNv3 package: InternImage's DCNv3 operator and module for PyTorch, on any device
(with a small C++ kernel compiled on first use for the CPU: ``dcnv3.ops.native``).

``import dcnv3`` imports torch only and changes nothing in the process. It gives the operator
side, in the style of ``torchvision.ops``:

* ``dcnv3_core(input, offset, mask, ...)``: the functional op (shapes in its docstring);
* ``DCNv3``: the thin module (InternImage's constructor and parameter names);
* ``dcnv4_core(input, offset_mask, ...)`` / ``DCNv4``: DCNv4 (OpenGVLab) on the same core, any device;
* ``DCNv2``: modulated deformable convolution on ``torchvision.ops.deform_conv2d`` (``dcnv3.ops.dcnv2``;
  imported on first access, so that ``import dcnv3`` does not import torchvision);
* ``set_default_formulation(name)`` / ``with formulation(name):``: which formulation the op runs
  (process-wide / inside the block, in its own thread only);
* ``health(model, source)``: every deformable layer's numbers and calibrated flags over images
  (``dcnv3.analysis.health``; imported on first access, as it runs ultralytics);
* ``capture(model)``: what every deformable module (DCNv3, DCNv4, DCNv2) of a model sampled with in
  a forward, in one layout (``dcnv3.ops.sampling_hooks``); ``override_sampling(modules)``: make them
  sample the regular grid or with uniform weights instead (ablations).

The ultralytics side is one explicit step, in ``dcnv3.yolo``::

    from dcnv3 import yolo
    yolo.register()                      # DCNv3 blocks and YAMLs for stock ultralytics
    model = YOLO("dcnv3-yolov8n.yaml")   # build, train, validate, predict, export

and its modules are imported by name: ``dcnv3.yolo.loading.load_model`` (safe checkpoint loading,
community forks included), ``dcnv3.analysis.probe.probe`` (one forward, every layer's offsets and weights),
``dcnv3.yolo.blocks.dcnv3``, ``dcnv3.training``, ``dcnv3.video.pipeline``; ``python -m dcnv3`` is the CLI.
"""

from dcnv3.ops.capture import CapturedLayer, capture, dcnv3_modules, deformable_modules
from dcnv3.ops.core import dcnv3_core, default_formulation, formulation, set_default_formulation
from dcnv3.ops.dcnv3 import DCNv3, DCNv3_pytorch
from dcnv3.ops.dcnv4 import DCNv4, dcnv4_core
from dcnv3.ops.sampling_hooks import WEIGHT_KINDS, override_sampling

__all__ = [
    "DCNv3",
    "DCNv3_pytorch",
    "dcnv3_core",
    "DCNv4",
    "dcnv4_core",
    "DCNv2",
    "set_default_formulation",
    "default_formulation",
    "formulation",
    "capture",
    "CapturedLayer",
    "dcnv3_modules",
    "deformable_modules",
    "override_sampling",
    "WEIGHT_KINDS",
    "health",
]
__version__ = "0.2.0"  # the same as pyproject.toml (tests/yolo/test_integration.py)


def __getattr__(name: str):
    # DCNv2 runs on torchvision: import it (and torchvision) only when it is asked for.
    if name == "DCNv2":
        from dcnv3.ops.dcnv2 import DCNv2

        return DCNv2
    # dcnv3.health(model, source): the layer-health report (dcnv3.analysis.health), which probes with
    # ultralytics: imported on first use so that ``import dcnv3`` stays torch-only.
    if name == "health":
        from dcnv3.analysis.health import health

        return health
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
