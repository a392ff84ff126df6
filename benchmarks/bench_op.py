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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    keep_freed_memory()  # as the app and the CLI run (dcnv3.yolo.keep_freed_memory)
    torch.set_num_threads(args.threads)
    if native.library() is None:  # the default would silently be the sparse formulation
        sys.exit(f"the native DCNv3 kernel is unavailable here: {native.failure()}")
    print(f"torch {torch.__version__}, {args.threads} threads, float32, K=3, median of "
          f"{args.repeats} interleaved runs")
    header = (f"{'(N, H, W, G, D)':<20} {'formulation':<17} {'fwd ms':>8} {'fwd+bwd ms':>11} "
              f"{'peak MiB':>9}")
    print(header)
    print("-" * len(header))
    rows = []
    for shape in SHAPES:
        inputs = make_inputs(*shape)
        tensors, config = inputs[:3], inputs[3]
        grad = torch.randn_like(inputs[0])
        times = {name: {"fwd": [], "fb": []} for name in FORMULATIONS}
        for core in FORMULATIONS.values():  # warm-up (caches, allocator)
            forward_only(core, tensors, config)
            forward_backward(core, tensors, config, grad)
        for _ in range(args.repeats):
            for name, core in FORMULATIONS.items():
                start = time.perf_counter()
                forward_only(core, tensors, config)
                times[name]["fwd"].append(time.perf_counter() - start)
                start = time.perf_counter()
                forward_backward(core, tensors, config, grad)
                times[name]["fb"].append(time.perf_counter() - start)
        summary = {}
        for name, core in FORMULATIONS.items():
            fwd = statistics.median(times[name]["fwd"]) * 1e3
            fb = statistics.median(times[name]["fb"]) * 1e3
            peak = peak_bytes(lambda: forward_backward(core, tensors, config, grad)) / 2**20
            summary[name] = (fwd, fb, peak)
            print(f"{str(shape):<20} {name:<17} {fwd:8.2f} {fb:11.2f} {peak:9.1f}")
        (f_d, fb_d, m_d), (f_g, fb_g, m_g), _ = summary.values()
        verdict = "OK" if fb_g / fb_d >= 2 and m_d <= m_g else "below target"
        print(f"{'':<20} {'speed-up':<17} {f_g / f_d:7.2f}x {fb_g / fb_d:10.2f}x "
              f"{m_d / m_g:8.2f}x mem  [{verdict}]")
        rows += [(f"fwd+bwd speed-up, native vs grid_sample, {shape}", fb_g / fb_d, ">= 2"),
                 (f"peak memory, native / grid_sample, {shape}", m_d / m_g, "<= 1")]
    emit("op", rows)


if __name__ == "__main__":
    main()
