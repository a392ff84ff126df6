"""Registration of the DCNv3 blocks with stock ultralytics, without editing its files.

``register()`` (run by ``import dcnv3``):

* puts the block classes, under their names and the forks' aliases, into the namespace where
  ``parse_model`` resolves YAML module names, and runs parse_model with the blocks standing in
  for their stock twins in its scaling tables, so YAMLs (ours and the forks') build with
  ultralytics' width/depth scaling, also when it rebuilds a model to fine-tune a checkpoint;
* lets ``YOLO("dcnv3-yolov8n.yaml")`` find the YAMLs shipped in ``dcnv3/cfg``;
* routes every checkpoint ultralytics loads through ``dcnv3.checkpoints.torch_safe_load``
  (no code execution, no downloads, fork class paths mapped onto ours);
* restores all CPU cores for torch (ultralytics leaves one core idle on CPU);
* copies matplotlib's DejaVu Sans to where ultralytics looks for its plot fonts, and stops its
  Pillow wrapper from pip-installing a HEIF plugin on the first unreadable image.
"""
from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import torch

__all__ = ["register", "model_yaml", "MODEL_YAMLS", "TESTED_ULTRALYTICS", "cpu_cores", "keep_freed_memory"]

CFG_DIR = Path(__file__).parent / "cfg"
MODEL_YAMLS = {path.name: path for path in CFG_DIR.glob("*.yaml")}
# ultralytics' internals (parse_model's tables, checkpoint layout) move between minor releases.
TESTED_ULTRALYTICS = ((8, 4, 190), (8, 5, 0))  # [first tested, first untested)
_registered = False


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the system.

    A CPU forward allocates and frees its activations (tens of MB at 640 px) every call. By
    default glibc serves large blocks with fresh mmaps and trims the heap when its top is free,
    so each forward page-faults its activations in again; between a letterbox and a forward the
    pattern shifts and the faults grow. With blocks below ``mmap_threshold`` taken from the heap
    and the heap trimmed only beyond ``trim_threshold`` of free memory, a DCNv3-YOLOv8n forward
    at 640 took 41-42 ms instead of 44-47 ms here. The price: the process keeps its peak heap.

    Called by the app and the CLI (their own processes), not by ``import dcnv3``. Returns False
    where there is no glibc ``mallopt`` (macOS, Windows, musl), True when both settings took.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, int(mmap_threshold)) and mallopt(m_trim_threshold, int(trim_threshold)))


def model_yaml(scale: str = "n", neck: bool = False) -> str:
    """Path of a shipped model YAML for a scale (n, s, m, l, x), e.g. for ``YOLO(model_yaml("s"))``.

    The file name carries the scale (``dcnv3-yolov8s.yaml``), which is how ultralytics picks it.
    """
    if scale not in "nsmlx" or len(scale) != 1:
        raise ValueError(f"scale must be one of n, s, m, l, x; got {scale!r}")
    return f"dcnv3-{'neck-' if neck else ''}yolov8{scale}.yaml"


def _check_version(version: str) -> None:
    parts = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    low, high = TESTED_ULTRALYTICS
    if not (low <= parts < high) and not os.environ.get("DEFORMLENS_ALLOW_UNTESTED_ULTRALYTICS"):
        raise ImportError(
            f"dcnv3 is tested with ultralytics >={'.'.join(map(str, low))},<{'.'.join(map(str, high))} "
            f"but {version} is installed; its model parser and checkpoint layout may differ. Install a "
            f"tested version (pip install -r requirements.txt) or set "
            f"DEFORMLENS_ALLOW_UNTESTED_ULTRALYTICS=1 to try anyway.")


def install_fonts() -> None:
    """Give ultralytics its plotting fonts from matplotlib's bundled DejaVu Sans, so that its
    label and result plots never try to download Arial."""
    from ultralytics.utils import USER_CONFIG_DIR

    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = Path(USER_CONFIG_DIR) / name
        if not target.exists() and source.exists():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            except OSError:  # a read-only config dir: plots then fall back to ultralytics' search
                pass


def _keep_pillow_offline() -> None:
    """ultralytics wraps ``PIL.Image.open`` so that the first file Pillow cannot identify makes it
    pip-install a HEIF plugin. DeformLens installs nothing at run time, and an unreadable file
    must fail with Pillow's own error, so mark the plugin as handled: the wrapper then calls
    Pillow directly."""
    from ultralytics.utils import patches

    if hasattr(patches, "_pil_plugins_registered"):
        patches._pil_plugins_registered = True


def register() -> None:
    """Make stock ultralytics build, load and train DCNv3-YOLOv8 models (idempotent)."""
    global _registered
    if _registered:
        return
    import ultralytics
    from ultralytics.nn import tasks
    from ultralytics.utils import torch_utils

    _check_version(ultralytics.__version__)
    from . import checkpoints
    from .blocks import BLOCK_ALIASES, DCNV3_YoLo, parsed_as_stock_twins

    for name, cls in BLOCK_ALIASES.items():
        setattr(tasks, name, cls)  # parse_model looks YAML names up in its module's globals

    stock_parse_model = tasks.parse_model

    @functools.wraps(stock_parse_model)
    def parse_model(*args, **kwargs):
        with parsed_as_stock_twins():  # width/depth scaling and repeats as for C2f, Conv, ...
            return stock_parse_model(*args, **kwargs)

    tasks.parse_model = parse_model

    stock_check_yaml = tasks.check_yaml

    def check_yaml(file, *args, **kwargs):
        shipped = MODEL_YAMLS.get(Path(str(file)).name)
        return str(shipped) if shipped is not None else stock_check_yaml(file, *args, **kwargs)

    tasks.check_yaml = check_yaml
    stock_fuse = tasks.BaseModel.fuse

    @functools.wraps(stock_fuse)
    def fuse(self, *args, **kwargs):
        # ultralytics folds BatchNorms into convolutions; a DCNV3_YoLo's BN follows a Linear.
        fused = stock_fuse(self, *args, **kwargs)
        for module in self.modules():
            if isinstance(module, DCNV3_YoLo):
                module.fuse_batchnorm()
        return fused

    tasks.BaseModel.fuse = fuse
    tasks.torch_safe_load = checkpoints.torch_safe_load
    install_fonts()
    _keep_pillow_offline()
    # select_device() resets torch to NUM_THREADS (cores - 1) for CPU work; use every core.
    torch_utils.NUM_THREADS = cpu_cores()
    torch.set_num_threads(cpu_cores())
    _registered = True
