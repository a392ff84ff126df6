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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench_op import measure, print_header, print_table, start_run  # noqa: E402 - as the DCNv3 op's
from dcnv3 import dcnv4_core, formulation  # noqa: E402
from dcnv3.dcnv4 import offset_mask_channels  # noqa: E402
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
    args = start_run(__doc__.splitlines()[0])
    print_header("level (N, H, W, C, G)", 26)
    rows = []
    for level, *shape in SHAPES:
        tensors, config = make_inputs(*shape)
        grad = torch.randn_like(tensors[0])
        runs = {LABELS[name]: (lambda name=name: forward_only(name, tensors, config),
                               lambda name=name: forward_backward(name, tensors, config, grad))
                for name in FORMULATIONS}
        label = f"{level} {tuple(shape)}"
        speed_up, memory = print_table(label, measure(runs, args.repeats), 26, LABELS["native"],
                                       LABELS["grid_sample"])
        rows += [(f"DCNv4 fwd+bwd speed-up, native vs grid_sample, YOLO11n {label}", speed_up, ">= 2"),
                 (f"DCNv4 peak memory, native / grid_sample, YOLO11n {label}", memory, None)]
    emit("dcnv4", rows)


if __name__ == "__main__":
    main()
