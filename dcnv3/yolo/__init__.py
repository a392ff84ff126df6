"""The ultralytics integration: one explicit, idempotent and reversible step.

``register()`` changes stock ultralytics in place (its files are never edited), and
``unregister()`` puts back exactly what it changed; ``with registered(): ...`` does both:

* the block classes, under their names and the forks' aliases, go into the namespace where
  ``parse_model`` resolves YAML module names, and parse_model runs with the blocks standing in
  for their stock twins in its scaling tables, so YAMLs (ours and the forks') build with
  ultralytics' width/depth scaling, also when it rebuilds a model to fine-tune a checkpoint;
* ``YOLO("dcnv3-yolov8n.yaml")`` finds the YAMLs shipped in ``dcnv3/yolo/cfg``;
* ``BaseModel.fuse`` also folds each DCNv3 block's BatchNorm into its output projection;
* ``torch_safe_load`` hands the checkpoint that ``dcnv3.yolo.loading.load_model`` already read
  safely to ultralytics. Every other checkpoint ultralytics loads goes through its own loader,
  unless ``register(safe_loading=True)`` routes them all through ``dcnv3.yolo.checkpoints`` (no code
  execution, fork class paths mapped onto ours; your own module classes are allowed with
  ``dcnv3.yolo.checkpoints.add_safe_globals``).

Importing this module changes nothing and does not import ultralytics. ``prepare_runtime()``
is the process-wide setup the app, the CLI and the trainer make for themselves (offline
ultralytics, plot fonts, all CPU cores); a library import never does it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import threading
from pathlib import Path

import torch

__all__ = [
    "register",
    "unregister",
    "registered",
    "is_registered",
    "prepare_runtime",
    "model_yaml",
    "MODEL_YAMLS",
    "MODEL_FAMILIES",
    "OPERATOR_FAMILIES",
    "BLOCK_MODULES",
    "block_aliases",
    "TESTED_ULTRALYTICS",
    "cpu_cores",
    "keep_freed_memory",
]

CFG_DIR = Path(__file__).parent / "cfg"
MODEL_YAMLS = {path.name: path for path in CFG_DIR.glob("*.yaml")}
# The ultralytics families with a shipped DCNv3 YAML (``dcnv3-{family}.yaml``), oldest first.
MODEL_FAMILIES = ("yolov8", "yolo11", "yolo26")
# The deformable operators with shipped YAMLs (``{operator}-{family}.yaml``) and their families:
# DCNv2 and DCNv4 at the same places as DCNv3, for YOLOv8 and YOLO11.
OPERATOR_FAMILIES = {"dcnv3": MODEL_FAMILIES, "dcnv2": ("yolov8", "yolo11"), "dcnv4": ("yolov8", "yolo11")}
# The modules whose ``BLOCK_ALIASES`` (YAML / fork name -> block class) register() installs.
BLOCK_MODULES = ("dcnv3.yolo.blocks.dcnv3", "dcnv3.yolo.blocks.dcnv4", "dcnv3.yolo.blocks.dcnv2")
# ultralytics' internals (parse_model's tables, checkpoint layout) move between minor releases.
TESTED_ULTRALYTICS = ((8, 4, 190), (8, 5, 0))  # [first tested, first untested)


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


def model_yaml(scale: str = "n", neck: bool = False, family: str = "yolov8", operator: str = "dcnv3") -> str:
    """Name of a shipped model YAML for a scale (n, s, m, l, x) of a family, with a deformable
    ``operator`` (a key of ``OPERATOR_FAMILIES``: "dcnv3", "dcnv2", "dcnv4"), e.g. for
    ``YOLO(model_yaml("s", family="yolo11"))``. ``neck`` (DCNv3 in the neck's C2f layers too)
    exists for DCNv3 on yolov8 only.

    The file name carries the scale (``dcnv3-yolo11s.yaml``), which is how ultralytics picks it.
    """
    if scale not in "nsmlx" or len(scale) != 1:
        raise ValueError(f"scale must be one of n, s, m, l, x; got {scale!r}")
    if operator not in OPERATOR_FAMILIES:
        raise ValueError(f"operator must be one of {', '.join(OPERATOR_FAMILIES)}; got {operator!r}")
    families = OPERATOR_FAMILIES[operator]
    if family not in families:
        raise ValueError(f"family must be one of {', '.join(families)} for {operator}; got {family!r}")
    if neck and (family, operator) != ("yolov8", "dcnv3"):
        raise ValueError(f"the in-the-neck variant is shipped for dcnv3 on yolov8 only, not {operator} on {family}")
    return f"{operator}-{'neck-' if neck else ''}{family}{scale}.yaml"


def _check_version(version: str) -> None:
    parts = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    low, high = TESTED_ULTRALYTICS
    if not (low <= parts < high) and not os.environ.get("DEFORMLENS_ALLOW_UNTESTED_ULTRALYTICS"):
        raise ImportError(
            f"dcnv3 is tested with ultralytics >={'.'.join(map(str, low))},<{'.'.join(map(str, high))} "
            f"but {version} is installed; its model parser and checkpoint layout may differ. Install a "
            f"tested version (pip install -r requirements.txt) or set "
            f"DEFORMLENS_ALLOW_UNTESTED_ULTRALYTICS=1 to try anyway."
        )


def install_fonts() -> None:
    """Give ultralytics its plotting fonts from matplotlib's bundled DejaVu Sans, so that its
    label and result plots never try to download Arial."""
    import matplotlib
    from ultralytics.utils import USER_CONFIG_DIR

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


class _Patches:
    """What ``register()`` changed, so that ``unregister()`` can put each thing back.

    ``saved`` maps (object, attribute name) to the original value, or to ``_ABSENT`` for a name
    that did not exist before (then it is deleted again).
    """

    def __init__(self):
        self.saved: dict[tuple[object, str], object] = {}
        self.safe_loading = False

    def set(self, owner, name: str, value) -> None:
        if (owner, name) not in self.saved:
            self.saved[(owner, name)] = (
                owner.__dict__.get(name, _ABSENT) if isinstance(owner, type) else getattr(owner, name, _ABSENT)
            )
        setattr(owner, name, value)

    def restore(self) -> None:
        for (owner, name), value in reversed(list(self.saved.items())):
            if value is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
        self.saved.clear()
        self.safe_loading = False


_ABSENT = object()
_patches: _Patches | None = None
_lock = threading.RLock()


def is_registered() -> bool:
    return _patches is not None


def register(safe_loading: bool | None = None) -> None:
    """Make stock ultralytics build, load, fuse and train DCNv3 models (idempotent).

    Args:
        safe_loading: True routes every checkpoint ultralytics loads (``YOLO("x.pt")``, a
            trainer's ``model=...``) through ``dcnv3.yolo.checkpoints``' restricted unpickler, which
            refuses code and classes it does not know; False leaves them to ultralytics' own
            loader; None keeps the current choice (off at first). ``dcnv3.yolo.loading.load_model``
            is safe either way.
    """
    global _patches
    with _lock:
        if _patches is None:
            _patches = _install()
        if safe_loading is not None:
            _patches.safe_loading = bool(safe_loading)


def unregister() -> None:
    """Undo ``register()``: ultralytics' functions and namespaces are as they were before it."""
    global _patches
    with _lock:
        if _patches is not None:
            _patches.restore()
            _patches = None


@contextlib.contextmanager
def registered(safe_loading: bool | None = None):
    """``register()`` for the block; unregisters after it unless it was registered before."""
    with _lock:
        was_registered = is_registered()
        previous = _patches.safe_loading if was_registered else False
        register(safe_loading)
    try:
        yield
    finally:
        with _lock:
            if not was_registered:
                unregister()
            elif _patches is not None:
                _patches.safe_loading = previous


def block_aliases() -> dict:
    """YAML / fork name -> block class, over every module in ``BLOCK_MODULES`` (imports them)."""
    import importlib

    aliases = {}
    for module_name in BLOCK_MODULES:
        aliases.update(importlib.import_module(module_name).BLOCK_ALIASES)
    return aliases


def _install() -> _Patches:
    import ultralytics
    from ultralytics.nn import tasks

    _check_version(ultralytics.__version__)
    from dcnv3.yolo import checkpoints
    from dcnv3.yolo.blocks.dcnv3 import parsed_as_stock_twins, with_stock_scale_rules

    patches = _Patches()
    aliases = block_aliases()
    for name, cls in aliases.items():
        patches.set(tasks, name, cls)  # parse_model looks YAML names up in its module's globals

    stock_parse_model = tasks.parse_model

    @functools.wraps(stock_parse_model)
    def parse_model(model_dict, *args, **kwargs):
        with parsed_as_stock_twins():  # width/depth scaling and repeats as for C3k2, C2f, Conv, ...
            return stock_parse_model(with_stock_scale_rules(model_dict, aliases), *args, **kwargs)

    stock_check_yaml = tasks.check_yaml

    @functools.wraps(stock_check_yaml)
    def check_yaml(file, *args, **kwargs):
        shipped = MODEL_YAMLS.get(Path(str(file)).name)
        return str(shipped) if shipped is not None else stock_check_yaml(file, *args, **kwargs)

    stock_fuse = tasks.BaseModel.fuse

    @functools.wraps(stock_fuse)
    def fuse(self, *args, **kwargs):
        # ultralytics folds BatchNorms into its own convolutions only; the deformable blocks
        # (DCNV3_YoLo, DCNv2, DCNV4_YOLO) fold theirs with their ``fuse_batchnorm``.
        fused = stock_fuse(self, *args, **kwargs)
        for module in list(self.modules()):
            fold = getattr(module, "fuse_batchnorm", None)
            if callable(fold):
                fold()
        return fused

    stock_torch_safe_load = tasks.torch_safe_load

    @functools.wraps(stock_torch_safe_load)
    def torch_safe_load(weight, *args, **kwargs):
        # load_model hands over what it read safely; other files go to the loader the user chose.
        if checkpoints.is_preloaded(weight) or patches.safe_loading:
            return checkpoints.torch_safe_load(weight)
        return stock_torch_safe_load(weight, *args, **kwargs)

    patches.set(tasks, "parse_model", parse_model)
    patches.set(tasks, "check_yaml", check_yaml)
    patches.set(tasks.BaseModel, "fuse", fuse)
    patches.set(tasks, "torch_safe_load", torch_safe_load)
    return patches


def prepare_runtime() -> None:
    """The process-wide setup of DeformLens' own programs (the app, the CLI, the trainer).

    * ultralytics stays offline (no connectivity checks, no downloads) unless the environment
      says otherwise; effective when called before ultralytics is first imported;
    * its plot fonts come from matplotlib's DejaVu Sans, so plots never try to download Arial;
    * its Pillow wrapper never pip-installs a HEIF plugin on the first unreadable image;
    * torch uses every CPU core (ultralytics' ``select_device`` leaves one idle for CPU work).
    """
    os.environ.setdefault("YOLO_OFFLINE", "true")
    from ultralytics.utils import torch_utils

    install_fonts()
    _keep_pillow_offline()
    torch_utils.NUM_THREADS = cpu_cores()
    torch.set_num_threads(cpu_cores())
