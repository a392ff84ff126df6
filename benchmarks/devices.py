"""The device side of the benchmarks: ``--device``, a refusal where it is missing, timing that waits
for the device, and peak memory on the CPU (the profiler's allocations replayed) or on CUDA
(``torch.cuda.max_memory_allocated``).

    add_device_argument(parser)          # --device cpu|cuda|cuda:N, default cpu
    device = require_device(args.device) # exits 2 with one line where CUDA is not available
    elapsed = timed(fn, device)          # seconds, after the device has finished
    peak = peak_bytes(fn, device)        # bytes above what was allocated before fn
"""

from __future__ import annotations

import sys
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

__all__ = ["add_device_argument", "require_device", "synchronize", "timed", "peak_bytes", "describe"]


def add_device_argument(parser) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default) or cuda[:N]; on cuda every formulation is timed side by side with its peak memory",
    )


def require_device(name: str) -> torch.device:
    """``torch.device(name)``, or exit status 2 with one line saying why it cannot be used here."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        sys.exit(_refuse(f"--device {name}: not a device ({error})"))
    if device.type == "cuda" and not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        sys.exit(
            _refuse(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}, {built})")
        )
    if device.type not in ("cpu", "cuda"):
        sys.exit(_refuse(f"--device {name}: only cpu and cuda are benchmarked"))
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        sys.exit(_refuse(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"))
    return device


def _refuse(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def synchronize(device: torch.device) -> None:
    """Wait until the device has run everything queued (CUDA kernels are asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds ``fn()`` takes, up to the end of the work it queued on ``device``."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_bytes(fn, device: torch.device) -> int:
    """Peak of PyTorch's live allocations on ``device`` while ``fn`` runs, relative to its start.

    CPU: replays every allocation and free that the profiler recorded, in time order (the CPU
    allocator keeps no peak counter). CUDA: the caching allocator's own peak counter.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def describe(device: torch.device, threads: int) -> str:
    """The first words of a report line: what ran the benchmark."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU, {threads} threads"
