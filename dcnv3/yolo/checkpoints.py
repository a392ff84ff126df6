"""Loading ultralytics checkpoints without executing code from them, community forks' included.

Why one module (over 400 lines): the allowlist, its bounds on what a file may build and the refusal
messages are one security boundary, easier to review in one place.

A ``.pt`` checkpoint is a pickle, and unpickling can call any importable function. Here the
unpickler resolves only:

* module classes (subclasses of ``torch.nn.Module`` from torch.nn, ultralytics and this
  package), which pickle may only rebuild from saved state (``__new__`` + ``__setstate__``),
  never call: their constructors run arbitrary logic (ultralytics' model classes even ``eval``
  parts of their YAML);
* classes that a fork pickled under its own copy of ultralytics and stock ultralytics lacks
  (``ultralytics.nn.extra_modules.block.C2f_DCNv3``, ``ultralytics.ops_dcnv3.modules.dcnv3.DCNv3_pytorch``,
  ...): each becomes a ``dcnv3.yolo.fork_layouts.ForkModule`` placeholder holding the saved state, and
  after unpickling ``dcnv3.yolo.fork_layouts.adopt_fork_modules`` gives it the class of ours that
  computes what the fork's did, decided by what it holds (never by its name, which means
  different things in different forks), or refuses the file saying what it holds;
* a short list of plain functions and value types that rebuild tensors and containers.

Anything else is refused with an ``UnsafeCheckpointError`` that names the global, before it is
used. TorchScript archives are refused too (loading one runs its code). Module classes are looked
up among the modules already imported, never imported on the file's behalf (importing a module
runs it: ``dcnv3.__main__`` would start the CLI). The allowed callables that could materialise
more than the file holds (``range`` fed to ``list``, ``bytes(10**12)``, a tensor view claiming
10**12 elements of a one-element storage) are bounded, so a small file cannot exhaust memory.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import importlib
import pickle
import sys
import threading
import zipfile
from pathlib import Path

import torch
from torch import nn

from dcnv3.yolo.fork_layouts import UnknownLayoutError, adopt_fork_modules, fork_placeholder

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "safe_load",
    "torch_safe_load",
    "add_safe_globals",
    "get_safe_globals",
    "clear_safe_globals",
    "preloaded",
    "is_preloaded",
]


class CheckpointError(ValueError):
    """The file is not a checkpoint DeformLens can use; the message says why."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle references a global that a detection checkpoint never needs."""


# Callables a checkpoint may invoke (pickle REDUCE): tensor and container rebuilders only.
_CALLABLES = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "Tensor"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("collections", "Counter"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "slice"),
    ("builtins", "range"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "bool"),
    ("builtins", "bytes"),
    ("builtins", "str"),
    ("_codecs", "encode"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "Path"),
    ("types", "SimpleNamespace"),
    ("ultralytics.utils", "IterableSimpleNamespace"),
    ("datetime", "datetime"),
    ("datetime", "date"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}
# Paths that name the same thing on another platform or in an older package layout.
_RENAMED = {
    ("pathlib", "WindowsPath"): ("pathlib", "PosixPath"),
    ("pathlib", "PureWindowsPath"): ("pathlib", "PurePosixPath"),
}
# Where this package's modules lived before 0.2 moved them into subpackages. Checkpoints pickle the
# class paths of the day they were saved (``dcnv3.blocks.C2f_DCNv3``, ``dcnv3.module.DCNv3``, ...):
# each old module name is read as the module that holds those classes now, so every checkpoint an
# earlier version saved keeps loading (tests/yolo/test_legacy_checkpoints.py). Nothing is imported for
# the file: the new modules are the ones ``dcnv3.yolo.register()`` has imported.
MOVED_MODULES = {
    "dcnv3.blocks": "dcnv3.yolo.blocks.dcnv3",
    "dcnv3.blocks_dcnv4": "dcnv3.yolo.blocks.dcnv4",
    "dcnv3.blocks_dcnv2": "dcnv3.yolo.blocks.dcnv2",
    "dcnv3.module": "dcnv3.ops.dcnv3",
    "dcnv3.dcnv4": "dcnv3.ops.dcnv4",
    "dcnv3.dcnv2": "dcnv3.ops.dcnv2",
    "dcnv3.ops": "dcnv3.ops.core",
    "dcnv3.sampling_hooks": "dcnv3.ops.sampling_hooks",
    "dcnv3.capture": "dcnv3.ops.capture",
}
_MODULE_PACKAGES = ("torch.nn.modules", "ultralytics.", "dcnv3.")
# Packages outside ultralytics whose module classes forks pickle (DCNv4's, installed from its
# DCNv4_op folder: ``DCNv4.modules.dcnv4.DCNv4``): always placeholders, recognised by structure
# like a fork's ultralytics classes; their code (a CUDA-only extension) is never looked up.
_FORK_ONLY_PACKAGES = ("DCNv4.",)

# Bounds on what an allowed callable may build. A real checkpoint never calls range, bytes or
# bytearray with more than a handful of items (its data sits in tensor storages, bounded by the
# file); a tensor is a view of a storage, and only a stride-0 view can claim more elements than
# its storage holds (one element claiming 10**12 is 4 TB the moment anything copies it).
MAX_BUILT_ITEMS = 1 << 24
MAX_BROADCAST_ELEMENTS = 1 << 24


def _too_many(what: str, count: int) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refused: the checkpoint builds {what} of {count} items (limit "
        f"{MAX_BUILT_ITEMS}); a detection checkpoint stores its data in tensors"
    )


def _bounded_range(*args):
    built = range(*args)
    if len(built) > MAX_BUILT_ITEMS:
        raise _too_many("a range", len(built))
    return built


def _bounded_sized(cls):
    """``bytes`` / ``bytearray``, refusing an integer argument (a size) over the bound."""

    def build(*args):
        if args and isinstance(args[0], int) and args[0] > MAX_BUILT_ITEMS:
            raise _too_many(f"a {cls.__name__}", args[0])
        return cls(*args)

    return build


def _bounded_tensor(rebuild):
    """A torch tensor rebuilder that refuses a view claiming far more elements than its storage."""

    def build(storage, storage_offset, size, *args, **kwargs):
        claimed = 1
        for extent in size:
            claimed *= int(extent)
        try:  # a TypedStorage (zip checkpoints) wraps an untyped one; v3 passes the untyped one
            untyped = getattr(storage, "_untyped_storage", storage)
            itemsize = storage.dtype.itemsize if hasattr(storage, "dtype") else 1
            stored = untyped.nbytes() // max(1, itemsize)
        except (AttributeError, RuntimeError, TypeError):
            stored = 0
        if claimed > max(stored, MAX_BROADCAST_ELEMENTS):
            raise UnsafeCheckpointError(
                f"refused: a tensor of shape {tuple(size)} claims {claimed} elements but "
                f"its storage holds {stored}; the checkpoint is malformed or hostile"
            )
        return rebuild(storage, storage_offset, size, *args, **kwargs)

    return build


_GUARDED = {
    ("builtins", "range"): lambda _: _bounded_range,
    ("builtins", "bytes"): lambda real: _bounded_sized(real),
    ("builtins", "bytearray"): lambda real: _bounded_sized(real),
    ("torch._utils", "_rebuild_tensor"): _bounded_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _bounded_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _bounded_tensor,
}


def _state_only(cls: type) -> type:
    """A stand-in for ``cls`` that pickle can instantiate (NEWOBJ: ``cls.__new__``, then the
    saved state) but cannot call: its constructor never runs with arguments from the file."""
    qualified = f"{cls.__module__}.{cls.__qualname__}"

    class _NoCall(type):
        def __call__(self, *args, **kwargs):
            raise UnsafeCheckpointError(
                f"refused: the checkpoint calls {qualified}(...); a checkpoint may only restore "
                f"saved modules, not construct them with arguments"
            )

    def __new__(proxy, *args, **kwargs):
        return cls.__new__(cls)

    return _NoCall(cls.__name__, (), {"__new__": __new__, "__qualname__": cls.__qualname__})


# Globals the user allows on top of the built-in ones (``add_safe_globals``), by (module, name).
_USER_GLOBALS: dict[tuple[str, str], object] = {}


def _global_key(obj) -> tuple[str, str]:
    return obj.__module__, obj.__qualname__


def add_safe_globals(objects) -> None:
    """Allow these classes or functions in checkpoints, like ``torch.serialization.add_safe_globals``.

    For your own ``nn.Module`` classes (a custom block in your YAML): they are restored from
    their saved state only (``__new__`` + state), as the built-in module classes are; their
    constructors never run. Any other object is allowed as it is: pickle may call it with
    arguments from the file, so allow only what is harmless to call.
    """
    with _CACHE_LOCK:
        for obj in objects:
            _USER_GLOBALS[_global_key(obj)] = obj


def get_safe_globals() -> list:
    """The objects allowed with ``add_safe_globals``."""
    with _CACHE_LOCK:
        return list(_USER_GLOBALS.values())


def clear_safe_globals() -> None:
    with _CACHE_LOCK:
        _USER_GLOBALS.clear()


_STATE_ONLY_CACHE: dict[int, type] = {}  # by id: classes may share hashes (dcnv3.yolo.blocks.dcnv3)
_CACHE_LOCK = threading.Lock()


def _resolve(module_name: str, name: str):
    """The object a pickle global may refer to, or raise UnsafeCheckpointError naming it."""
    # Protocol-2 pickles (torch.save's default) use Python 2 names such as __builtin__.set.
    if (module_name, name) in _compat_pickle.NAME_MAPPING:
        module_name, name = _compat_pickle.NAME_MAPPING[(module_name, name)]
    module_name = _compat_pickle.IMPORT_MAPPING.get(module_name, module_name)
    module_name, name = _RENAMED.get((module_name, name), (module_name, name))
    module_name = MOVED_MODULES.get(module_name, module_name)
    qualified = f"{module_name}.{name}"
    if (module_name, name) in _CALLABLES:
        real = getattr(importlib.import_module(module_name), name)
        guard = _GUARDED.get((module_name, name))
        return guard(real) if guard else real
    if module_name == "torch" and isinstance(
        getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)
    ):
        return getattr(torch, name)  # constants such as torch.float16
    cls = _USER_GLOBALS.get((module_name, name))
    if cls is not None and not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return cls  # the user allowed this callable as it is
    if cls is None and module_name.startswith(_FORK_ONLY_PACKAGES):
        try:
            cls = fork_placeholder(module_name, name)
        except UnknownLayoutError as error:
            raise UnsafeCheckpointError(str(error)) from None
    if cls is None and module_name.startswith(_MODULE_PACKAGES):
        # Only modules already imported (ultralytics' by the loader): a module is never imported
        # for the file. What stock ultralytics lacks under its name is a fork's class: a
        # placeholder holding its state, recognised by structure after unpickling.
        cls = getattr(sys.modules.get(module_name), name, None)
        if cls is None and module_name.startswith("ultralytics."):
            try:
                cls = fork_placeholder(module_name, name)
            except UnknownLayoutError as error:
                raise UnsafeCheckpointError(str(error)) from None
        if cls is not None and not (
            isinstance(cls, type) and (issubclass(cls, nn.Module) or module_name.startswith("ultralytics.utils.loss"))
        ):
            cls = None  # functions and other objects in those packages are not needed
    if cls is None:
        raise UnsafeCheckpointError(
            f"refused: the checkpoint references the global '{qualified}', which a detection "
            f"checkpoint does not need; loading it could run code from the file"
        )
    with _CACHE_LOCK:
        if id(cls) not in _STATE_ONLY_CACHE:
            _STATE_ONLY_CACHE[id(cls)] = _state_only(cls)
        return _STATE_ONLY_CACHE[id(cls)]


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module_name, name):
        return _resolve(module_name, name)


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: an Unpickler class and ``load``."""

    Unpickler = _RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, **kwargs):
        return _RestrictedUnpickler(file, **kwargs).load()


def _check_container(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            raise CheckpointError(
                f"{path}: a TorchScript archive, not a checkpoint (loading it would "
                f"run its code); load the original .pt weights"
            )
        if not any(n.endswith("data.pkl") for n in names):
            raise CheckpointError(f"{path}: a zip archive but not a PyTorch checkpoint")


def safe_load(path: str | Path, map_location: str | torch.device = "cpu"):
    """``torch.load`` through the restricted unpickler: the checkpoint object, or CheckpointError."""
    path = Path(path)
    _check_container(path)
    try:
        checkpoint = torch.load(
            path, map_location=map_location, weights_only=False, pickle_module=_RestrictedPickleModule
        )
    except UnsafeCheckpointError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        RuntimeError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        zipfile.BadZipFile,
        UnicodeDecodeError,
        OverflowError,
    ) as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from error
    except (MemoryError, RecursionError) as error:  # e.g. a tensor storage claiming terabytes
        raise CheckpointError(
            f"{path}: not a loadable checkpoint (it asks for more "
            f"{'memory' if isinstance(error, MemoryError) else 'nesting'} than a "
            f"checkpoint needs)"
        ) from None
    # A best.pt holds the network under "model", a last.pt (while training runs) under "ema".
    values = checkpoint.values() if isinstance(checkpoint, dict) else (checkpoint,)
    try:
        adopt_fork_modules([value for value in values if isinstance(value, nn.Module)])
    except UnknownLayoutError as error:
        raise CheckpointError(f"{path.name}: {error}") from None
    except (AttributeError, TypeError, ValueError, KeyError, IndexError) as error:  # malformed saved state
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None
    return checkpoint


_preloaded = threading.local()


@contextlib.contextmanager
def preloaded(path: str | Path, checkpoint):
    """Within the block, ``torch_safe_load(path)`` returns ``checkpoint`` instead of reading again."""
    _preloaded.entry = (Path(path).resolve(), checkpoint)
    try:
        yield
    finally:
        _preloaded.entry = None


def is_preloaded(path) -> bool:
    """Whether ``path`` is the file of an active ``preloaded`` block in this thread."""
    entry = getattr(_preloaded, "entry", None)
    try:
        return entry is not None and entry[0] == Path(path).resolve()
    except (TypeError, OSError):
        return False


def torch_safe_load(weight, safe_only=None):
    """Drop-in for ``ultralytics.nn.tasks.torch_safe_load`` that never runs code from the file,
    never downloads and never installs packages. Returns ``(checkpoint dict, file)``."""
    entry = getattr(_preloaded, "entry", None)
    if entry is not None and entry[0] == Path(weight).resolve():
        checkpoint = entry[1]
    else:
        checkpoint = safe_load(weight)
    if isinstance(checkpoint, nn.Module):  # torch.save(model) rather than a checkpoint dict
        from ultralytics.engine.model import Model

        checkpoint = {"model": checkpoint.model if isinstance(checkpoint, Model) else checkpoint}
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{weight}: holds a {type(checkpoint).__name__}, not a model checkpoint")
    return checkpoint, str(weight)
