"""DCNv4 core: the default (native kernel) formulation against a grid_sample formulation, side by side.

    python benchmarks/bench_dcnv4.py [--repeats 15] [--threads N] [--device cpu|cuda]

Shapes are where a C3k2_DCNv4 puts its DCNv4 layers in YOLO11n at 640 (the bottlenecks' cv2,
16 channels per group): P3 (layer 4, 80x80, C3k2 e=0.25: 32 channels, G=2), P4 (layer 6, 40x40,
inside C3k: 32 channels, G=2), P5 (layer 8, 20x20, inside C3k: 64 channels, G=4), at batch 1
(inference) and 16 (training). K=3, stride 1, pad 1, float32; offsets of a few pixels and signed
scalars packed in DCNv4's offset_mask (padded to a multiple of 8). For each shape it prints forward
and forward+backward times (median of interleaved repeats; the gradients of the value input and of
offset_mask), their ratio (grid_sample / default; > 1 means the default is faster) and the peak of
live memory PyTorch allocates during one forward+backward. Target: forward+backward >= 2x faster at
every shape. The sparse formulation (the default where the kernel cannot be built) is timed beside
them for reference. ``--device cuda`` times the default (sparse off the CPU), sparse, gather and
grid_sample side by side on the GPU with their peak memory (as ``bench_op.py --device cuda``).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from bench_op import formulation_rows, measure, print_header, print_table, start_run
from results import emit

from dcnv3 import dcnv4_core, formulation
from dcnv3.ops.dcnv4 import offset_mask_channels

# (level, N, H, W, C, G): YOLO11n at 640, DCNv4 in place of the C3k2 bottlenecks' 3x3 cv2.
SHAPES = [
    ("P3", 1, 80, 80, 32, 2),
    ("P4", 1, 40, 40, 32, 2),
    ("P5", 1, 20, 20, 64, 4),
    ("P3", 16, 80, 80, 32, 2),
    ("P4", 16, 40, 40, 32, 2),
    ("P5", 16, 20, 20, 64, 4),
]
FORMULATIONS = {"cpu": ["native", "grid_sample", "sparse"], "cuda": ["native", "sparse", "gather", "grid_sample"]}
# The default is the native kernel on the CPU; on a GPU it hands over to sparse.
LABELS = {
    "cpu": {"native": "default (native)", "grid_sample": "grid_sample", "sparse": "sparse"},
    "cuda": {"native": "default", "sparse": "sparse", "gather": "gather", "grid_sample": "grid_sample"},
}


def make_inputs(n, h, w, c, g, seed=0, device="cpu"):
    """Value input (N, H, W, C) and offset_mask (N, H, W, C_om) on ``device``, both leaves requiring
    gradients, drawn on the CPU so every device gets the same values."""
    gen = torch.Generator().manual_seed(seed)
    points = 9
    value = torch.randn(n, h, w, c, generator=gen)
    blocks = torch.cat(
        [2 * torch.randn(n, h, w, g, 2 * points, generator=gen), torch.randn(n, h, w, g, points, generator=gen)], dim=-1
    ).flatten(-2)
    padding = torch.zeros(n, h, w, offset_mask_channels(g, 3) - blocks.shape[-1])
    offset_mask = torch.cat([blocks, padding], dim=-1).to(device).requires_grad_()
    value = value.to(device).requires_grad_()
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
        group_channels=c // g,
        offset_scale=1.0,
        remove_center=0,
    )
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
    device = args.device
    labels = LABELS[device.type]
    print_header("level (N, H, W, C, G)", 26)
    rows = []
    for level, *shape in SHAPES:
        tensors, config = make_inputs(*shape, device=device)
        grad = torch.randn_like(tensors[0])
        runs = {
            labels[name]: (
                lambda name=name, tensors=tensors, config=config: forward_only(name, tensors, config),
                lambda name=name, tensors=tensors, config=config, grad=grad: forward_backward(
                    name, tensors, config, grad
                ),
            )
            for name in FORMULATIONS[device.type]
        }
        label = f"{level} {tuple(shape)}"
        summary = measure(runs, args.repeats, device)
        speed_up, memory = print_table(label, summary, 26, labels["native"], "grid_sample")
        if device.type == "cpu":
            rows += [
                (f"DCNv4 fwd+bwd speed-up, native vs grid_sample, YOLO11n {label}", speed_up, ">= 2"),
                (f"DCNv4 peak memory, native / grid_sample, YOLO11n {label}", memory, None),
            ]
        else:
            rows += formulation_rows(f"{device.type}, YOLO11n {label}", summary, "grid_sample", prefix="DCNv4 ")
    emit("dcnv4" if device.type == "cpu" else f"dcnv4_{device.type}", rows)


if __name__ == "__main__":
    main()
