"""Build the DCNv4 fork-layout fixture in tests/data/forks/extra_v11_dcnv4/ from the fork's own code.

Usage (checkouts at the commits named in tests/data/forks/extra_v11_dcnv4/README.md)::

    python tests/forks/make_dcnv4_fixtures.py --fork /tmp/forks/ascom \
        --internimage /tmp/forks/internimage --out tests/data/forks/extra_v11_dcnv4

The layout is the YOLO11 extra_modules family's (Ascom-stack/yolo11): ``C3k2_DCNv4`` ->
``Bottleneck_DCNV4`` (or ``C3k_DCNv4`` of two) -> ``DCNV4_YOLO`` -> OpenGVLab's ``DCNv4``, the copy
the fork ships under ``ultralytics/nn/extra_modules/DCNv4_op/DCNv4`` and imports as the installed
package ``DCNv4`` (``from DCNv4.modules.dcnv4 import DCNv4``), so its checkpoints pickle
``DCNv4.modules.dcnv4.DCNv4``. This script

1. executes the fork's classes at the fork's module paths: its ``DCNv4.modules.dcnv4`` file as
   that module, and its block classes (DCNV4_YOLO, Bottleneck_DCNV4, C3k_DCNv4, C3k2_DCNv4)
   parsed out of its ``extra_modules/block.py`` into ``ultralytics.nn.extra_modules.block`` on the
   installed ultralytics (``make_fork_fixtures.exec_fork_classes``). DCNv4's CUDA-only
   ``DCNv4Function`` is substituted at ``DCNv4.functions`` by what DCNv4's own test compares it
   with: InternImage's pure-PyTorch ``dcnv3_core_pytorch`` on the per-group split of
   ``offset_mask`` (group g at channels g*3P: 2P offsets then P scalars), the scalars NOT
   normalised (``make_dcnv4_golden.dcnv4_module_class``), run unchanged in fp32;
2. builds yolo11 at depth n, width 0.125, 4 classes, with the fork's C3k2_DCNv4 at P3-P5 (layers
   4, 6, 8; c3k as stock at n: false at P3, true at P4 and P5), built with the arguments the
   stock C3k2 had, as the fork's parse_model does: 5 DCNv4 layers, group 1 as the fork builds them;
3. gives it non-trivial weights (``make_fork_fixtures.randomise`` for the Detect head and the
   BatchNorms, here the DCNv4 ``offset_mask`` heads: offsets of about a cell varying with the
   features, signed scalars of order 1, noise in the padding channels that must be ignored) and
   calibrates the BatchNorms on real images;
4. saves it as ultralytics does (best.pt, last.pt: ``make_fork_fixtures.save_layouts``);
5. records the fork's own forward in fp32 from the fp16 weights, eval mode, on
   assets/examples/bus.jpg through ``LetterBox((640, 640), auto=True, stride=32)``: the raw
   ``pred`` and, per DCNv4 module, its ``offset_mask`` Linear output as (N, H, W, C_om).
It prints how far the prediction moves when the offsets are zeroed or read as (dy, dx).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import types
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "golden")]

import make_dcnv4_golden as golden  # noqa: E402
import make_fork_fixtures as forks  # noqa: E402
from ultralytics.nn.modules import block as stock_block  # noqa: E402
from ultralytics.nn.modules import conv as stock_conv  # noqa: E402
from ultralytics.utils.torch_utils import initialize_weights  # noqa: E402

FORK_BLOCKS = ("DCNV4_YOLO", "Bottleneck_DCNV4", "C3k_DCNv4", "C3k2_DCNv4")
SOURCE = "Ascom-stack/yolo11"


# ---------------------------------------------------------------------------------------------
# 1. The fork's code at the fork's module paths
# ---------------------------------------------------------------------------------------------


def internimage_fp32_core(checkout: Path):
    """InternImage's ``dcnv3_core_pytorch`` as InternImage ships it. ``golden.internimage_core``
    makes its sampling grids float64 for the float64 golden vectors; the fork's forward runs in
    fp32 (grid_sample wants the grid in the input's dtype), so its module keeps the real torch."""
    core = golden.internimage_core(checkout)
    core.__globals__["torch"] = torch
    return core


def load_fork(checkout: Path, internimage: Path) -> dict:
    """The fork's DCNv4 module (``DCNv4.modules.dcnv4``, its DCNv4Function the InternImage split)
    and its block classes in ``ultralytics.nn.extra_modules.block``."""
    fork = checkout / "ultralytics" / "nn" / "extra_modules"
    dcnv4_class = golden.dcnv4_module_class(fork, internimage_fp32_core(internimage))
    forks.package_module("ultralytics.nn.extra_modules", fork)
    block = types.ModuleType("ultralytics.nn.extra_modules.block")
    sys.modules[block.__name__] = block
    sys.modules["ultralytics.nn.extra_modules"].block = block
    # What the fork's block.py gives these classes (its star imports of the stock modules).
    block.__dict__.update(
        {
            "torch": torch,
            "nn": nn,
            "Conv": stock_conv.Conv,
            "autopad": stock_conv.autopad,
            "Bottleneck": stock_block.Bottleneck,
            "C3k": stock_block.C3k,
            "C3k2": stock_block.C3k2,
            "DCNv4": dcnv4_class,
        }
    )
    forks.exec_fork_classes(fork / "block.py", list(FORK_BLOCKS), block)
    return {name: getattr(block, name) for name in FORK_BLOCKS}


# ---------------------------------------------------------------------------------------------
# 2. A small YOLO11 with the fork's C3k2_DCNv4
# ---------------------------------------------------------------------------------------------


def with_fork_blocks(c3k2_dcnv4: type):
    model = forks.small_model("yolo11")
    for index in (4, 6, 8):
        block = forks.block_like(model.model[index], c3k2_dcnv4)
        forks.install_layer(model, index, block, type(block).__name__)
    initialize_weights(model)  # as DetectionModel.__init__ does after parse_model: BN eps 1e-3
    return model


def dcnv4_operators(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The fork's DCNv4 modules: those holding offset_mask, value_proj and output_proj."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if all(hasattr(m, a) for a in ("offset_mask", "value_proj", "output_proj"))
    ]


# ---------------------------------------------------------------------------------------------
# 3. Non-trivial weights
# ---------------------------------------------------------------------------------------------

# std * sqrt(fan-in) of the offset_mask head's feature weights (offsets, scalars): offsets stay
# mostly their bias (about a cell) and vary moderately with the features, for the same reason as
# make_fork_fixtures.OFFSET_GAIN; the scalars are signed, of order 1 (DCNv4 has no softmax).
OFFSET_GAIN, SCALAR_GAIN = 0.1, 0.5


@torch.no_grad()
def randomise(model: nn.Module, seed: int) -> None:
    forks.randomise(model, seed)  # the Detect head and the BatchNorms (no DCNv3 here)
    generator = torch.Generator().manual_seed(10_000 + seed)
    for _, op in dcnv4_operators(model):
        points = op.kernel_size**2 - op.remove_center
        weight, bias = op.offset_mask.weight, op.offset_mask.bias
        weight.normal_(0, 1.0 / math.sqrt(op.channels), generator=generator)  # the padding: noise
        bias.normal_(0, 1.0, generator=generator)
        for g in range(op.group):
            start = g * 3 * points
            offsets, scalars = slice(start, start + 2 * points), slice(start + 2 * points, start + 3 * points)
            weight[offsets] *= OFFSET_GAIN
            weight[scalars] *= SCALAR_GAIN


# ---------------------------------------------------------------------------------------------
# 5. The fork's own forward
# ---------------------------------------------------------------------------------------------


def _hooks(model: nn.Module, edit=None, record: dict | None = None) -> list:
    """Forward hooks on every DCNv4's offset_mask Linear (output (N, L, C_om); the DCNv4's NCHW
    input gives H, W): record it as (N, H, W, C_om), or replace it by ``edit(output, op)``."""
    hooks = []
    for name, op in dcnv4_operators(model):
        shape = {}
        hooks.append(op.register_forward_pre_hook(lambda _m, args, s=shape: s.update(hw=args[0].shape[2:])))

        def on_output(_m, _i, out, name=name, op=op, shape=shape):
            if record is not None:
                record[name + ".offset_mask"] = out.detach().reshape(out.shape[0], *shape["hw"], -1).clone()
            return edit(out, op) if edit is not None else None

        hooks.append(op.offset_mask.register_forward_hook(on_output))
    return hooks


@torch.no_grad()
def record_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    layers = {}
    hooks = _hooks(model, record=layers)
    try:
        pred = model(x)[0]
    finally:
        for hook in hooks:
            hook.remove()
    return pred, layers


def _edited_offsets(out: torch.Tensor, op: nn.Module, label: str) -> torch.Tensor:
    points = op.kernel_size**2 - op.remove_center
    used = op.group * 3 * points
    blocks = out[..., :used].unflatten(-1, (op.group, 3 * points))
    offsets = blocks[..., : 2 * points]
    offsets = (
        torch.zeros_like(offsets)
        if label == "zero offsets"
        else offsets.unflatten(-1, (points, 2)).flip(-1).flatten(-2)
    )
    edited = torch.cat([offsets, blocks[..., 2 * points :]], dim=-1).flatten(-2)
    return torch.cat([edited, out[..., used:]], dim=-1)


@torch.no_grad()
def sensitivity(model: nn.Module, x: torch.Tensor, pred: torch.Tensor) -> dict:
    """Max box move (px) and score change when the offsets are zeroed or read as (dy, dx)."""
    moves = {}
    for label in ("zero offsets", "(dy, dx)"):
        hooks = _hooks(model, edit=lambda out, op, label=label: _edited_offsets(out, op, label))
        try:
            other = model(x)[0]
        finally:
            for hook in hooks:
                hook.remove()
        moves[label] = (
            round((other[:, :4] - pred[:, :4]).abs().max().item(), 2),
            round((other[:, 4:] - pred[:, 4:]).abs().max().item(), 4),
        )
    return moves


def build(classes: dict, out: Path, layout: str, seed: int) -> None:
    x = forks.letterboxed(forks.TEST_IMAGE)
    for attempt in range(seed, seed + 20):
        model = with_fork_blocks(classes["C3k2_DCNv4"])
        randomise(model, attempt)
        forks.calibrate_batchnorm(model)
        reference = copy.deepcopy(model).half().float().eval()  # fp32 from the fp16 weights
        rounding = forks.rounding_sensitivity(reference, x)
        if all(rounding[key] <= bound for key, bound in forks.ROUNDING_BOUNDS.items()):
            break
        print(f"{layout}: seed {attempt} too sensitive to rounding ({rounding}), next seed")
    else:
        raise SystemExit(f"{layout}: no seed within {forks.ROUNDING_BOUNDS}")
    forks.save_layouts(model, out, layout, f"{layout}.yaml")
    pred, layers = record_forward(reference, x)
    expected = {
        "input_shape": list(x.shape),
        "input_sum": x.double().sum().item(),
        "pred": pred,
        "layers": layers,
        "image": "assets/examples/bus.jpg",
        "source": SOURCE,
        "seed": attempt,
        "fp32_vs_fp64": rounding,
        "note": f"{layout}: raw DetectionModel output and every DCNv4's offset_mask Linear output "
        f"(N, H, W, C_om) on the letterboxed image (LetterBox((640, 640), auto=True, stride=32)), "
        f"eval mode, fp32 from the fp16 weights, computed by the fork's own code with "
        f"InternImage's dcnv3_core_pytorch on the per-group split (scalars not normalised)",
    }
    torch.save(expected, out / f"{layout}_expected.pt")
    ops = dcnv4_operators(model)
    print(
        f"{layout}: seed {attempt}, {sum(p.numel() for p in model.parameters())} parameters, "
        f"{len(ops)} DCNv4 layers ({', '.join(f'{n}: C {m.channels} G {m.group}' for n, m in ops)}), "
        f"pred {tuple(pred.shape)} boxes in [{pred[0, :4].min():.1f}, {pred[0, :4].max():.1f}] scores in "
        f"[{pred[0, 4:].min():.3f}, {pred[0, 4:].max():.3f}]; fp32 vs fp64 {rounding}; "
        f"moved by {sensitivity(reference, x, pred)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--fork",
        type=Path,
        required=True,
        help="Ascom-stack/yolo11 checkout (ultralytics/nn/extra_modules/{block.py,DCNv4_op})",
    )
    parser.add_argument("--internimage", type=Path, required=True, help="OpenGVLab/InternImage checkout")
    parser.add_argument("--out", type=Path, default=forks.ROOT / "tests" / "data" / "forks" / "extra_v11_dcnv4")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    build(load_fork(args.fork, args.internimage), args.out, "extra_v11_dcnv4", 4)


if __name__ == "__main__":
    main()
