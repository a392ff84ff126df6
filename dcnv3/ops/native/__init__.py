"""The compiled CPU kernel of the DCNv3 core: built on first use, cached, loaded through ctypes.

``dcnv3_cpu.cpp`` holds a forward and a backward that each walk the samples once, in parallel
with OpenMP, and the inference-time softmax over each group's P points. It includes no PyTorch header,
so g++ builds it in about a second; the library goes
to ``$DEFORMLENS_CACHE_DIR`` (default ``$XDG_CACHE_HOME/deformlens``, i.e. ``~/.cache/deformlens``)
under a name that hashes the source, the flags, the compiler and this CPU's instruction sets, so
an edited source, another compiler or another machine sharing the home directory gets its own
build. Where there is no C++ compiler, or ``DEFORMLENS_NATIVE=0`` is set, ``library()`` returns
None and the operator keeps its pure-PyTorch formulations.

The OpenMP runtime is the one PyTorch already loaded (libgomp.so.1 is resolved by soname), so the
kernel runs on ``torch.get_num_threads()`` threads and shares PyTorch's thread pool.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch  # also loads PyTorch's libgomp before the kernel asks for it

SOURCE = Path(__file__).with_name("dcnv3_cpu.cpp")
# The forward keeps one group's channel sums on the stack: dcnv3_cpu.cpp refuses wider groups.
MAX_GROUP_CHANNELS = 1024
# -ffp-contract=off: no FMA contraction, so locations round exactly as PyTorch's separate ops do.
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c++17", "-ffp-contract=off", "-fno-math-errno"]


class Dcnv3Shape(ctypes.Structure):
    """The ``Dcnv3Shape`` struct of ``dcnv3_cpu.cpp``."""

    _fields_ = [
        (name, ctypes.c_int64) for name in ("n", "in_h", "in_w", "out_h", "out_w", "group", "group_channels", "points")
    ] + [(name, ctypes.c_double) for name in ("offset_scale", "size_w", "size_h", "pad_w", "pad_h")]


class NativeBuildError(RuntimeError):
    """The kernel could not be compiled or loaded; the message carries the compiler's output."""


_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failure: str | None = None


def cache_dir() -> Path:
    """Where built kernels are kept."""
    explicit = os.environ.get("DEFORMLENS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deformlens"


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags: -march=native code is only valid on these."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({line for line in lines if line.startswith(("flags", "model name"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _library_path(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_signature()]).encode()
    ).hexdigest()[:16]
    return cache_dir() / f"dcnv3_cpu-{key}.so"


def build() -> Path:
    """Compile the kernel into the cache (if not there yet) and return the library's path."""
    compiler = _compiler()
    if compiler is None:
        raise NativeBuildError("no C++ compiler (g++ or $CXX) found")
    target = _library_path(compiler)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build under a temporary name and rename: concurrent processes never load a half-written file.
    handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", partial], capture_output=True, text=True)
        if result.returncode != 0:
            raise NativeBuildError(f"{compiler} failed:\n{result.stderr.strip()}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _declare(lib: ctypes.CDLL) -> None:
    pointer, shape = ctypes.c_void_p, ctypes.POINTER(Dcnv3Shape)
    for suffix in ("f32", "f64"):
        forward = getattr(lib, f"dcnv3_forward_{suffix}")
        forward.argtypes = [pointer] * 6 + [shape]
        forward.restype = ctypes.c_int
        backward = getattr(lib, f"dcnv3_backward_{suffix}")
        backward.argtypes = [pointer] * 9 + [shape]
        backward.restype = ctypes.c_int
        softmax = getattr(lib, f"dcnv3_softmax_{suffix}")
        softmax.argtypes = [pointer, pointer, ctypes.c_int64, ctypes.c_int64]
        softmax.restype = ctypes.c_int


def library() -> ctypes.CDLL | None:
    """The loaded kernel, building it on the first call; None where it cannot be had.

    The reason it cannot is kept in ``failure()``; it is looked for once per process.
    """
    global _library, _failure
    if _library is not None or _failure is not None:
        return _library
    with _lock:
        if _library is None and _failure is None:
            if os.environ.get("DEFORMLENS_NATIVE", "1") == "0":
                _failure = "disabled by DEFORMLENS_NATIVE=0"
                return None
            try:
                lib = ctypes.CDLL(str(build()))
                _declare(lib)
                _library = lib
            except (OSError, NativeBuildError, subprocess.SubprocessError) as error:
                _failure = str(error)
    return _library


def failure() -> str | None:
    """Why ``library()`` returned None (None while it has not been asked or when it loaded)."""
    return _failure


def softmax_rows(logits, points: int):
    """Softmax over each group's ``points`` logits of a contiguous CPU float32/float64 tensor
    (..., G*P) -> same shape, through the kernel library (no autograd: inference only).

    PyTorch's softmax over a last dimension of 9 walks one short row at a time, and its
    transposed-view alternative pays two transposing copies; this is one pass. Returns None
    where the library is unavailable.
    """
    lib = library()
    if lib is None:
        return None
    out = torch.empty_like(logits)
    function = lib.dcnv3_softmax_f64 if logits.dtype == torch.float64 else lib.dcnv3_softmax_f32
    function(logits.data_ptr(), out.data_ptr(), logits.numel() // points, points)
    return out
