"""DCNv3 core: the default (native kernel) formulation against a grid_sample formulation, side by side.

    python benchmarks/bench_op.py [--repeats 15] [--threads N] [--device cpu|cuda]

For each (N, H, W, G, D) with K=3, stride 1, pad 1, float32, random offsets of a few pixels and
softmax weights, prints forward and forward+backward times (median of interleaved repeats), their
ratio (grid_sample / default; > 1 means the default is faster) and the peak of live memory
that PyTorch allocates during one forward+backward (the profiler's allocation events replayed). Target: the
default is >= 2x faster in forward+backward at every shape with no higher peak memory. The sparse
formulation (the default where the native kernel cannot be built) is timed beside them for reference.

``--device cuda`` times the four formulations side by side on the GPU (the default, which hands
over to sparse off the CPU, sparse, gather and grid_sample), each with its peak of allocated GPU
memory, and reports each one's speed-up and memory against grid_sample; without CUDA it says so in
one line and exits 2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from devices import add_device_argument, describe, peak_bytes, require_device, timed
from results import emit

from dcnv3.ops import native
from dcnv3.ops.core import dcnv3_core_gather, dcnv3_core_grid_sample, dcnv3_core_native, dcnv3_core_sparse
from dcnv3.yolo import keep_freed_memory

SHAPES = [(1, 80, 80, 2, 16), (1, 40, 40, 4, 16), (1, 20, 20, 8, 16), (16, 20, 20, 4, 16)]
FORMULATIONS = {
    "default (native)": dcnv3_core_native,
    "grid_sample": dcnv3_core_grid_sample,
    "sparse": dcnv3_core_sparse,
}
# On a GPU the default hands over to sparse (the native kernel is the CPU's); all four side by side.
GPU_FORMULATIONS = {
    "default": dcnv3_core_native,
    "sparse": dcnv3_core_sparse,
    "gather": dcnv3_core_gather,
    "grid_sample": dcnv3_core_grid_sample,
}
DEFAULT_LABEL = {"cpu": "default (native)", "cuda": "default"}


def make_inputs(n, h, w, g, d, seed=0, device="cpu"):
    """Input (N, H, W, G*D), offset (N, H, W, G*P*2), mask (N, H, W, G*P) on ``device``, each a
    leaf requiring gradients, drawn on the CPU so every device gets the same values."""
    gen = torch.Generator().manual_seed(seed)
    p = 9
    inputs = torch.randn(n, h, w, g * d, generator=gen)
    offset = 2 * torch.randn(n, h, w, g * p * 2, generator=gen)
    mask = torch.softmax(torch.randn(n, h, w, g, p, generator=gen), -1).reshape(n, h, w, g * p)
    inputs, offset, mask = (tensor.to(device).requires_grad_() for tensor in (inputs, offset, mask))
    config = dict(
        kernel_h=3,
        kernel_w=3,
        stride_h=1,
        stride_w=1,
        pad_h=1,
        pad_w=1,
        dilation_h=1,
        dilation_w=1,
        group=g,
        group_channels=d,
        offset_scale=1.0,
        remove_center=0,
    )
    return inputs, offset, mask, config


def forward_only(core, args, config):
    with torch.no_grad():
        core(*args, **config)


def forward_backward(core, args, config, grad):
    core(*args, **config).backward(grad)
    for tensor in args:
        tensor.grad = None


def start_run(description: str, repeats_default: int = 15):
    """The operator benchmarks' common start: arguments, the app's allocator setting, all the
    threads asked for, and a refusal where the native kernel cannot be built (the default would
    silently be the sparse formulation, timed under its name)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=repeats_default)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    add_device_argument(parser)
    args = parser.parse_args()
    args.device = require_device(args.device)
    keep_freed_memory()  # as the app and the CLI run (dcnv3.yolo.keep_freed_memory)
    torch.set_num_threads(args.threads)
    if args.device.type == "cpu" and native.library() is None:
        sys.exit(f"the native DCNv3 kernel is unavailable here: {native.failure()}")
    print(
        f"torch {torch.__version__}, {describe(args.device, args.threads)}, float32, K=3, "
        f"median of {args.repeats} interleaved runs"
    )
    return args


def measure(runs: dict, repeats: int, device: torch.device) -> dict:
    """Time each formulation's ``(forward, forward_backward)`` pair of callables on ``device``,
    interleaved (every repeat runs each once, so machine noise hits all alike) after one warm-up each.

    Returns {name: (forward ms, forward+backward ms, peak MiB of one forward+backward)}.
    """
    times = {name: {"fwd": [], "fb": []} for name in runs}
    for forward, forward_and_backward in runs.values():  # warm-up (caches, allocator, CUDA kernels)
        timed(forward, device)
        timed(forward_and_backward, device)
    for _ in range(repeats):
        for name, (forward, forward_and_backward) in runs.items():
            times[name]["fwd"].append(timed(forward, device))
            times[name]["fb"].append(timed(forward_and_backward, device))
    return {
        name: (
            statistics.median(times[name]["fwd"]) * 1e3,
            statistics.median(times[name]["fb"]) * 1e3,
            peak_bytes(runs[name][1], device) / 2**20,
        )
        for name in runs
    }


def print_table(label: str, summary: dict, width: int, default: str, reference: str) -> tuple[float, float]:
    """One line per formulation and a speed-up line; returns (fwd+bwd speed-up, memory ratio) of
    ``default`` against ``reference``."""
    for name, (fwd, fb, peak) in summary.items():
        print(f"{label:<{width}} {name:<17} {fwd:8.2f} {fb:11.2f} {peak:9.1f}")
    if len(summary) > 3:  # every formulation against the reference (the GPU table)
        _, fb_r, m_r = summary[reference]
        ratios = ", ".join(f"{name} {fb_r / fb:.2f}x / {m / m_r:.2f}x mem" for name, (_, fb, m) in summary.items())
        print(f"{'':<{width}} fwd+bwd speed-up and peak memory vs {reference}: {ratios}")
    (f_d, fb_d, m_d), (f_g, fb_g, m_g) = summary[default], summary[reference]
    verdict = "OK" if fb_g / fb_d >= 2 else "below target"
    print(f"{'':<{width}} {'speed-up':<17} {f_g / f_d:7.2f}x {fb_g / fb_d:10.2f}x {m_d / m_g:8.2f}x mem  [{verdict}]")
    return fb_g / fb_d, m_d / m_g


def print_header(first_column: str, width: int) -> None:
    header = f"{first_column:<{width}} {'formulation':<17} {'fwd ms':>8} {'fwd+bwd ms':>11} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))


def formulation_rows(label: str, summary: dict, reference: str, prefix: str = "") -> list:
    """BENCH_RESULT rows of every formulation against ``reference`` (the GPU report): fwd+bwd
    speed-up and peak memory ratio, without targets (none is set for the GPU yet)."""
    _, fb_r, m_r = summary[reference]
    rows = []
    for name, (_, fb, m) in summary.items():
        if name != reference:
            rows.append((f"{prefix}fwd+bwd speed-up, {name} vs {reference}, {label}", fb_r / fb, None))
            rows.append((f"{prefix}peak memory, {name} / {reference}, {label}", m / m_r, None))
    return rows


def main() -> None:
    args = start_run(__doc__.splitlines()[0])
    device = args.device
    formulations = FORMULATIONS if device.type == "cpu" else GPU_FORMULATIONS
    default = DEFAULT_LABEL[device.type]
    print_header("(N, H, W, G, D)", 20)
    rows = []
    for shape in SHAPES:
        inputs = make_inputs(*shape, device=device)
        tensors, config = inputs[:3], inputs[3]
        grad = torch.randn_like(inputs[0])
        runs = {
            name: (
                lambda core=core, tensors=tensors, config=config: forward_only(core, tensors, config),
                lambda core=core, tensors=tensors, config=config, grad=grad: forward_backward(
                    core, tensors, config, grad
                ),
            )
            for name, core in formulations.items()
        }
        summary = measure(runs, args.repeats, device)
        speed_up, memory = print_table(str(shape), summary, 20, default, "grid_sample")
        if device.type == "cpu":
            rows += [
                (f"fwd+bwd speed-up, native vs grid_sample, {shape}", speed_up, ">= 2"),
                (f"peak memory, native / grid_sample, {shape}", memory, "<= 1"),
            ]
        else:
            rows += formulation_rows(f"{device.type}, {shape}", summary, "grid_sample")
    emit("op" if device.type == "cpu" else f"op_{device.type}", rows)


if __name__ == "__main__":
    main()
