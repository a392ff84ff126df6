"""DCNv3 core: the default (native kernel) formulation against a grid_sample formulation, side by side.

    python benchmarks/bench_op.py [--repeats 15] [--threads N]

For each (N, H, W, G, D) with K=3, stride 1, pad 1, float32, random offsets of a few pixels and
softmax weights, prints forward and forward+backward times (median of interleaved repeats), their
ratio (grid_sample / default; > 1 means the default is faster) and the peak of live memory
that PyTorch allocates during one forward+backward (the profiler's allocation events replayed). Target: the
default is >= 2x faster in forward+backward at every shape with no higher peak memory. The sparse
formulation (the default where the native kernel cannot be built) is timed beside them for reference.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from dcnv3 import native  # noqa: E402
from dcnv3.yolo import keep_freed_memory  # noqa: E402 - only this: the op needs no ultralytics
from dcnv3.ops import dcnv3_core_grid_sample, dcnv3_core_native, dcnv3_core_sparse  # noqa: E402
from results import emit  # noqa: E402

SHAPES = [(1, 80, 80, 2, 16), (1, 40, 40, 4, 16), (1, 20, 20, 8, 16), (16, 20, 20, 4, 16)]
FORMULATIONS = {"default (native)": dcnv3_core_native, "grid_sample": dcnv3_core_grid_sample,
                "sparse": dcnv3_core_sparse}


def make_inputs(n, h, w, g, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = 9
    inputs = torch.randn(n, h, w, g * d, generator=gen).requires_grad_()
    offset = (2 * torch.randn(n, h, w, g * p * 2, generator=gen)).requires_grad_()
    mask = torch.softmax(torch.randn(n, h, w, g, p, generator=gen), -1).reshape(n, h, w, g * p)
    mask.requires_grad_()
    config = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1,
                  dilation_w=1, group=g, group_channels=d, offset_scale=1.0, remove_center=0)
    return inputs, offset, mask, config


def forward_only(core, args, config):
    with torch.no_grad():
        core(*args, **config)


def forward_backward(core, args, config, grad):
    core(*args, **config).backward(grad)
    for tensor in args:
        tensor.grad = None


def peak_bytes(fn) -> int:
    """Peak of PyTorch's live CPU allocations while ``fn`` runs, relative to its start.

    Replays every allocation and free that the profiler recorded, in time order.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == DeviceType.CPU))
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def start_run(description: str, repeats_default: int = 15):
    """The operator benchmarks' common start: arguments, the app's allocator setting, all the
    threads asked for, and a refusal where the native kernel cannot be built (the default would
    silently be the sparse formulation, timed under its name)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=repeats_default)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    keep_freed_memory()  # as the app and the CLI run (dcnv3.yolo.keep_freed_memory)
    torch.set_num_threads(args.threads)
    if native.library() is None:
        sys.exit(f"the native DCNv3 kernel is unavailable here: {native.failure()}")
    print(f"torch {torch.__version__}, {args.threads} threads, float32, K=3, median of "
          f"{args.repeats} interleaved runs")
    return args


def measure(runs: dict, repeats: int) -> dict:
    """Time each formulation's ``(forward, forward_backward)`` pair of callables, interleaved
    (every repeat runs each once, so machine noise hits all alike) after one warm-up each.

    Returns {name: (forward ms, forward+backward ms, peak MiB of one forward+backward)}.
    """
    times = {name: {"fwd": [], "fb": []} for name in runs}
    for forward, forward_and_backward in runs.values():  # warm-up (caches, allocator)
        forward()
        forward_and_backward()
    for _ in range(repeats):
        for name, (forward, forward_and_backward) in runs.items():
            for key, fn in (("fwd", forward), ("fb", forward_and_backward)):
                start = time.perf_counter()
                fn()
                times[name][key].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]["fwd"]) * 1e3, statistics.median(times[name]["fb"]) * 1e3,
                   peak_bytes(runs[name][1]) / 2**20) for name in runs}


def print_table(label: str, summary: dict, width: int, default: str, reference: str) -> tuple[float, float]:
    """One line per formulation and a speed-up line; returns (fwd+bwd speed-up, memory ratio) of
    ``default`` against ``reference``."""
    for name, (fwd, fb, peak) in summary.items():
        print(f"{label:<{width}} {name:<17} {fwd:8.2f} {fb:11.2f} {peak:9.1f}")
    (f_d, fb_d, m_d), (f_g, fb_g, m_g) = summary[default], summary[reference]
    verdict = "OK" if fb_g / fb_d >= 2 else "below target"
    print(f"{'':<{width}} {'speed-up':<17} {f_g / f_d:7.2f}x {fb_g / fb_d:10.2f}x "
          f"{m_d / m_g:8.2f}x mem  [{verdict}]")
    return fb_g / fb_d, m_d / m_g


def print_header(first_column: str, width: int) -> None:
    header = f"{first_column:<{width}} {'formulation':<17} {'fwd ms':>8} {'fwd+bwd ms':>11} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))


def main() -> None:
    args = start_run(__doc__.splitlines()[0])
    print_header("(N, H, W, G, D)", 20)
    rows = []
    for shape in SHAPES:
        inputs = make_inputs(*shape)
        tensors, config = inputs[:3], inputs[3]
        grad = torch.randn_like(inputs[0])
        runs = {name: (lambda core=core: forward_only(core, tensors, config),
                       lambda core=core: forward_backward(core, tensors, config, grad))
                for name, core in FORMULATIONS.items()}
        speed_up, memory = print_table(str(shape), measure(runs, args.repeats), 20, "default (native)", "grid_sample")
        rows += [(f"fwd+bwd speed-up, native vs grid_sample, {shape}", speed_up, ">= 2"),
                 (f"peak memory, native / grid_sample, {shape}", memory, "<= 1")]
    emit("op", rows)


if __name__ == "__main__":
    main()
