"""DCNv4 core: the default (native kernel) formulation against a grid_sample formulation, side by side.

    python benchmarks/bench_dcnv4.py [--repeats 15] [--threads N]

Shapes are where a C3k2_DCNv4 puts its DCNv4 layers in YOLO11n at 640 (the bottlenecks' cv2,
16 channels per group): P3 (layer 4, 80x80, C3k2 e=0.25: 32 channels, G=2), P4 (layer 6, 40x40,
inside C3k: 32 channels, G=2), P5 (layer 8, 20x20, inside C3k: 64 channels, G=4), at batch 1
(inference) and 16 (training). K=3, stride 1, pad 1, float32; offsets of a few pixels and signed
scalars packed in DCNv4's offset_mask (padded to a multiple of 8). For each shape it prints forward
and forward+backward times (median of interleaved repeats; the gradients of the value input and of
offset_mask), their ratio (grid_sample / default; > 1 means the default is faster) and the peak of
live memory PyTorch allocates during one forward+backward. Target: forward+backward >= 2x faster at
every shape. The sparse formulation (the default where the kernel cannot be built) is timed beside
them for reference.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench_op import peak_bytes  # noqa: E402 - the same memory measurement as the DCNv3 op's
from dcnv3 import dcnv4_core, formulation, native  # noqa: E402
from dcnv3.dcnv4 import offset_mask_channels  # noqa: E402
from dcnv3.yolo import keep_freed_memory  # noqa: E402 - only this: the op needs no ultralytics
from results import emit  # noqa: E402

# (level, N, H, W, C, G): YOLO11n at 640, DCNv4 in place of the C3k2 bottlenecks' 3x3 cv2.
SHAPES = [("P3", 1, 80, 80, 32, 2), ("P4", 1, 40, 40, 32, 2), ("P5", 1, 20, 20, 64, 4),
          ("P3", 16, 80, 80, 32, 2), ("P4", 16, 40, 40, 32, 2), ("P5", 16, 20, 20, 64, 4)]
FORMULATIONS = ["native", "grid_sample", "sparse"]
LABELS = {"native": "default (native)", "grid_sample": "grid_sample", "sparse": "sparse"}


def make_inputs(n, h, w, c, g, seed=0):
    """Value input (N, H, W, C) and offset_mask (N, H, W, C_om), both requiring gradients."""
    gen = torch.Generator().manual_seed(seed)
    points = 9
    value = torch.randn(n, h, w, c, generator=gen).requires_grad_()
    blocks = torch.cat([2 * torch.randn(n, h, w, g, 2 * points, generator=gen),
                        torch.randn(n, h, w, g, points, generator=gen)], dim=-1).flatten(-2)
    padding = torch.zeros(n, h, w, offset_mask_channels(g, 3) - blocks.shape[-1])
    offset_mask = torch.cat([blocks, padding], dim=-1).requires_grad_()
    config = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1,
                  dilation_w=1, group=g, group_channels=c // g, offset_scale=1.0, remove_center=0)
    return (value, offset_mask), config


def forward_only(name, tensors, config):
    with torch.no_grad(), formulation(name):
        dcnv4_core(*tensors, **config)


def forward_backward(name, tensors, config, grad):
    with formulation(name):
        dcnv4_core(*tensors, **config).backward(grad)
    for tensor in tensors:
        tensor.grad = None


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
    header = (f"{'level (N, H, W, C, G)':<26} {'formulation':<17} {'fwd ms':>8} {'fwd+bwd ms':>11} "
              f"{'peak MiB':>9}")
    print(header)
    print("-" * len(header))
    rows = []
    for level, *shape in SHAPES:
        tensors, config = make_inputs(*shape)
        grad = torch.randn_like(tensors[0])
        times = {name: {"fwd": [], "fb": []} for name in FORMULATIONS}
        for name in FORMULATIONS:  # warm-up (caches, allocator)
            forward_only(name, tensors, config)
            forward_backward(name, tensors, config, grad)
        for _ in range(args.repeats):
            for name in FORMULATIONS:
                start = time.perf_counter()
                forward_only(name, tensors, config)
                times[name]["fwd"].append(time.perf_counter() - start)
                start = time.perf_counter()
                forward_backward(name, tensors, config, grad)
                times[name]["fb"].append(time.perf_counter() - start)
        summary = {}
        label = f"{level} {tuple(shape)}"
        for name in FORMULATIONS:
            fwd = statistics.median(times[name]["fwd"]) * 1e3
            fb = statistics.median(times[name]["fb"]) * 1e3
            peak = peak_bytes(lambda: forward_backward(name, tensors, config, grad)) / 2**20
            summary[name] = (fwd, fb, peak)
            print(f"{label:<26} {LABELS[name]:<17} {fwd:8.2f} {fb:11.2f} {peak:9.1f}")
        (f_d, fb_d, m_d), (f_g, fb_g, m_g) = summary["native"], summary["grid_sample"]
        verdict = "OK" if fb_g / fb_d >= 2 else "below target"
        print(f"{'':<26} {'speed-up':<17} {f_g / f_d:7.2f}x {fb_g / fb_d:10.2f}x "
              f"{m_d / m_g:8.2f}x mem  [{verdict}]")
        rows += [(f"DCNv4 fwd+bwd speed-up, native vs grid_sample, YOLO11n {label}", fb_g / fb_d, ">= 2"),
                 (f"DCNv4 peak memory, native / grid_sample, YOLO11n {label}", m_d / m_g, None)]
    emit("dcnv4", rows)


if __name__ == "__main__":
    main()
