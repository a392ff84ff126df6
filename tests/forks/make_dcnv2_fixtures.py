"""Build the DCNv2 fork-layout fixtures in tests/data/forks/ from the extra_modules family's own code.

Usage (the checkouts are xiaosanmeng/Lightweight-Vehicle-Detection-Network-Based-on-Improved-YOLOv8
for the YOLOv8 layouts and Ascom-stack/yolo11 for the YOLO11 ones, at the commits named in
tests/data/forks/dcnv2/README.md; either or both)::

    python tests/forks/make_dcnv2_fixtures.py --extra-v8 /tmp/forks/xiaosanmeng --extra-v11 /tmp/forks/ascom \
        --out tests/data/forks/dcnv2

For each layout this script

1. executes the family's own class definitions at their own module paths on the installed
   ultralytics: ``DCNv2``, ``Bottleneck_DCNV2``, ``C2f_DCNv2`` (YOLOv8) or ``C3k_DCNv2`` and
   ``C3k2_DCNv2`` (YOLO11), and the ``_Dynamic`` ones (``DCNv2_Offset_Attention``,
   ``DCNv2_Dynamic``, ``Bottleneck_DCNV2_Dynamic``, ``C2f_DCNv2_Dynamic`` or ``C3k_DCNv2_Dynamic``
   and ``C3k2_DCNv2_Dynamic``) from ``ultralytics/nn/extra_modules/block.py``, and ``MPCA`` from
   ``ultralytics/nn/extra_modules/attention.py`` (the rest of those files imports einops, timm,
   efficientnet_pytorch and dozens of unrelated modules); their forward calls
   ``torch.ops.torchvision.deform_conv2d`` itself, so nothing of theirs is replaced;
2. builds yolov8 at depth n, width 0.125 with the family's C2f_DCNv2 (or C2f_DCNv2_Dynamic) at
   P3-P5 (layers 4, 6, 8), as the family's parse_model passes the stock C2f's arguments; or
   yolo11 at depth 0.5, width 0.125 with its C3k2_DCNv2 (or C3k2_DCNv2_Dynamic) there, with the
   stock C3k2's arguments (c3k at layers 6 and 8, as yolo11n has);
3. gives it non-trivial weights: offsets of about a cell that vary with the image, masks spread
   over (0, 1), the Detect head and BatchNorm as ``make_fork_fixtures`` makes them;
4. saves best.pt / last.pt as ultralytics does (``make_fork_fixtures.save_layouts``) and the
   family's own forward in fp32 from the fp16 weights on assets/examples/bus.jpg: the raw
   ``pred`` and, per DCNv2, its offset head's output split as the family splits it (``.offset``
   (N, 2*G*K*K, H, W) in torchvision's layout, ``.mask_logits`` (N, G*K*K, H, W)).
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import math
import sys
import types
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision  # noqa: F401 - registers torch.ops.torchvision, as the family's attention.py import does
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fork_fixtures as common
from ultralytics.utils.torch_utils import initialize_weights


class Family(NamedTuple):
    """One published checkout of the family: the classes its block.py gives, the layouts built."""

    source: str
    model: str  # "yolov8" or "yolo11"
    classes: tuple[str, ...]
    layouts: dict[str, str]  # layout name -> container class


FAMILIES = {
    "v8": Family(
        "xiaosanmeng/Lightweight-Vehicle-Detection-Network-Based-on-Improved-YOLOv8",
        "yolov8",
        (
            "DCNv2",
            "Bottleneck_DCNV2",
            "C2f_DCNv2",
            "DCNv2_Offset_Attention",
            "DCNv2_Dynamic",
            "Bottleneck_DCNV2_Dynamic",
            "C2f_DCNv2_Dynamic",
        ),
        {"extra_dcnv2_v8": "C2f_DCNv2", "extra_dcnv2_dynamic_v8": "C2f_DCNv2_Dynamic"},
    ),
    "v11": Family(
        "Ascom-stack/yolo11",
        "yolo11",
        (
            "DCNv2",
            "Bottleneck_DCNV2",
            "C3k_DCNv2",
            "C3k2_DCNv2",
            "DCNv2_Offset_Attention",
            "DCNv2_Dynamic",
            "Bottleneck_DCNV2_Dynamic",
            "C3k_DCNv2_Dynamic",
            "C3k2_DCNv2_Dynamic",
        ),
        {"extra_dcnv2_v11": "C3k2_DCNv2", "extra_dcnv2_dynamic_v11": "C3k2_DCNv2_Dynamic"},
    ),
}


def fork_module(name: str, namespace: dict) -> types.ModuleType:
    """An empty module registered as ``name`` (its package made if missing), holding ``namespace``:
    what the fork's file imports for the classes executed in it."""
    parent = importlib.import_module("ultralytics.nn")
    package = sys.modules.setdefault("ultralytics.nn.extra_modules", types.ModuleType("ultralytics.nn.extra_modules"))
    parent.extra_modules = package
    module = types.ModuleType(name)
    module.__dict__.update(namespace)
    sys.modules[name] = module
    setattr(package, name.rsplit(".", 1)[-1], module)
    return module


def execute_fork_classes(source_file: Path, names: tuple[str, ...], module: types.ModuleType) -> None:
    """Run the fork's own ``class`` statements ``names`` from ``source_file`` inside ``module``."""
    source = source_file.read_text(encoding="utf-8")
    classes = {node.name: node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}
    missing = [name for name in names if name not in classes]
    if missing:
        raise SystemExit(f"{source_file}: no class {missing}; is this the fork's checkout?")
    for name in names:
        node = classes[name]
        exec(compile(ast.get_source_segment(source, node), f"{source_file}:{node.lineno}", "exec"), module.__dict__)
        getattr(module, name).__module__ = module.__name__


def load_family(checkout: Path, family: Family) -> dict:
    """The family's classes, executed from ``checkout`` at its module paths (fresh modules each
    call: build a family's layouts before loading the next, since pickle finds the classes there)."""
    stock_block = importlib.import_module("ultralytics.nn.modules.block")
    stock_conv = importlib.import_module("ultralytics.nn.modules.conv")
    folder = checkout / "ultralytics" / "nn" / "extra_modules"
    base = {"torch": torch, "nn": nn, "math": math, "Conv": stock_conv.Conv, "autopad": stock_conv.autopad}
    attention = fork_module("ultralytics.nn.extra_modules.attention", base)
    execute_fork_classes(folder / "attention.py", ("MPCA",), attention)
    # What the family's block.py has from its star import of the stock blocks.
    stock = {name: getattr(stock_block, name) for name in ("Bottleneck", "C2f", "C3k", "C3k2")}
    block = fork_module("ultralytics.nn.extra_modules.block", {**base, **stock, "MPCA": attention.MPCA})
    execute_fork_classes(folder / "block.py", family.classes, block)
    return {name: getattr(block, name) for name in family.classes}


def dcnv2_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The family's DCNv2 blocks: those holding ``weight``, ``conv_offset_mask`` and ``deformable_groups``."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if "conv_offset_mask" in m._modules and "weight" in m._parameters and hasattr(m, "deformable_groups")
    ]


def offset_conv(layer: nn.Module) -> nn.Conv2d:
    head = layer.conv_offset_mask
    return head if isinstance(head, nn.Conv2d) else head.conv_offset_mask


def with_family_blocks(container, model_family: str) -> nn.Module:
    """The small ``model_family`` model with the stock P3-P5 blocks (layers 4, 6, 8) replaced by
    ``container``, built with the stock block's arguments as the family's parse_model passes them:
    C2f (c1, c2, n, shortcut, g, e), C3k2 (c1, c2, n, c3k, e, g, shortcut)."""
    model = common.small_model(model_family)
    for index in (4, 6, 8):
        block = common.block_like(model.model[index], container)
        common.install_layer(model, index, block, type(block).__name__)
    initialize_weights(model)  # as DetectionModel.__init__ does after parse_model
    return model


# Offset head feature weights (std * sqrt(fan-in)): moderate, as make_fork_fixtures keeps DCNv3's,
# so that fp32 rounding is not amplified from layer to layer; the biases carry most of the offsets.
OFFSET_GAIN, MASK_GAIN = 0.1, 0.5


@torch.no_grad()
def randomise(model: nn.Module, seed: int) -> None:
    common.randomise(model, seed)  # Detect head and BatchNorm affine (no DCNv3 in this model)
    generator = torch.Generator().manual_seed(seed + 1000)
    for _, layer in dcnv2_layers(model):
        conv = offset_conv(layer)
        points = layer.deformable_groups * layer.kernel_size[0] * layer.kernel_size[1]
        fan_in = conv.weight[0].numel()
        conv.weight[: 2 * points].normal_(0, OFFSET_GAIN / fan_in**0.5, generator=generator)
        conv.weight[2 * points :].normal_(0, MASK_GAIN / fan_in**0.5, generator=generator)
        conv.bias.normal_(0, 1.0, generator=generator)
        layer.bias.normal_(0, 0.1, generator=generator)
        if not isinstance(layer.conv_offset_mask, nn.Conv2d):
            # MPCA gates the prediction by sigmoids of its own convs' outputs (BN calibrated below);
            # a wider head keeps its gates away from a constant 0.5.
            for m in layer.conv_offset_mask.attention.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.normal_(0, 1.0 / m.weight[0].numel() ** 0.5, generator=generator)


@torch.no_grad()
def record_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    layers, hooks = {}, []
    for name, layer in dcnv2_layers(model):
        points = layer.deformable_groups * layer.kernel_size[0] * layer.kernel_size[1]

        def keep(_m, _i, out, name=name, points=points):
            o1, o2, mask = torch.chunk(out, 3, dim=1)  # the family's own split
            layers[name + ".offset"] = torch.cat((o1, o2), dim=1).clone()
            layers[name + ".mask_logits"] = mask.clone()

        hooks.append(layer.conv_offset_mask.register_forward_hook(keep))
    try:
        pred = model(x)[0]
    finally:
        for hook in hooks:
            hook.remove()
    return pred, layers


@torch.no_grad()
def sensitivity(model: nn.Module, x: torch.Tensor, pred: torch.Tensor) -> dict:
    """Max box move (px) and score change when the offsets are zeroed or their (dy, dx) swapped."""
    moves = {}
    for label in ("zero offsets", "(dx, dy) swapped"):
        hooks = []
        for _, layer in dcnv2_layers(model):
            points = layer.deformable_groups * layer.kernel_size[0] * layer.kernel_size[1]

            def edit(_m, _i, out, label=label, points=points):
                offset, mask = out[:, : 2 * points], out[:, 2 * points :]
                offset = (
                    torch.zeros_like(offset)
                    if label == "zero offsets"
                    else offset.unflatten(1, (-1, 2)).flip(2).flatten(1, 2)
                )
                return torch.cat([offset, mask], 1)

            hooks.append(layer.conv_offset_mask.register_forward_hook(edit))
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


def calibrate_batchnorm(model: nn.Module) -> None:
    """``make_fork_fixtures.calibrate_batchnorm`` (train-mode passes over the example images at
    three sizes, cumulative averages), each image batched with its mirror image: MPCA's ``gap``
    runs a BatchNorm on one value per channel, which train mode refuses for a batch of one."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for path in common.IMAGES:
            for size in (640, 480, 320):
                image = common.letterboxed(path, size)
                model(torch.cat([image, image.flip(-1)]))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.03  # ultralytics' value (initialize_weights)
    model.eval()


def build(layout: str, container, family: Family, out: Path, seed: int) -> None:
    x = common.letterboxed(common.TEST_IMAGE)
    for attempt in range(seed, seed + 20):
        model = with_family_blocks(container, family.model)
        randomise(model, attempt)
        calibrate_batchnorm(model)
        reference = copy.deepcopy(model).half().float().eval()  # fp32 from the fp16 weights
        rounding = common.rounding_sensitivity(reference, x)
        if all(rounding[key] <= bound for key, bound in common.ROUNDING_BOUNDS.items()):
            break
        print(f"{layout}: seed {attempt} too sensitive to rounding ({rounding}), next seed")
    else:
        raise SystemExit(f"{layout}: no seed within {common.ROUNDING_BOUNDS}")
    common.save_layouts(model, out, layout, f"{layout}.yaml")
    pred, layers = record_forward(reference, x)
    expected = {
        "input_shape": list(x.shape),
        "input_sum": x.double().sum().item(),
        "pred": pred,
        "layers": layers,
        "image": "assets/examples/bus.jpg",
        "source": family.source,
        "seed": attempt,
        "fp32_vs_fp64": rounding,
        "note": f"{layout}: raw DetectionModel output and every DCNv2's offset head output (split "
        f"as the family splits it: offset = cat(o1, o2), mask logits) on the letterboxed "
        f"image (LetterBox((640, 640), auto=True, stride=32)), eval mode, fp32 from the "
        f"fp16 weights, computed by the family's own code",
    }
    torch.save(expected, out / f"{layout}_expected.pt")
    offsets = torch.cat([v.flatten() for k, v in layers.items() if k.endswith(".offset")])
    print(
        f"{layout}: seed {attempt}, {sum(p.numel() for p in model.parameters())} parameters, "
        f"{len(dcnv2_layers(model))} DCNv2 layers, mean |offset| {offsets.abs().mean():.2f} cells, pred "
        f"{tuple(pred.shape)}; fp32 vs fp64 {rounding}; moved by {sensitivity(reference, x, pred)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--extra-v8",
        type=Path,
        default=None,
        help="the extra_modules family's YOLOv8 checkout (xiaosanmeng/Lightweight-Vehicle-...)",
    )
    parser.add_argument(
        "--extra-v11", type=Path, default=None, help="the extra_modules family's YOLO11 checkout (Ascom-stack/yolo11)"
    )
    parser.add_argument("--out", type=Path, default=common.ROOT / "tests" / "data" / "forks" / "dcnv2")
    args = parser.parse_args()
    checkouts = {"v8": args.extra_v8, "v11": args.extra_v11}
    if not any(checkouts.values()):
        parser.error("give --extra-v8 and/or --extra-v11")
    args.out.mkdir(parents=True, exist_ok=True)
    first_seed = {"v8": 11, "v11": 21}  # v8's were the first made (seeds 11, 12): unchanged
    for key, checkout in checkouts.items():
        if checkout is None:
            continue
        # The fork's reset_parameters draws DCNv2's weight from the global generator: reseed per
        # family, so a family's fixtures are the same whether it is built alone or after another.
        torch.manual_seed(0)
        family = FAMILIES[key]
        classes = load_family(checkout, family)
        for seed, (layout, container) in enumerate(family.layouts.items(), start=first_seed[key]):
            build(layout, classes[container], family, args.out, seed)


if __name__ == "__main__":
    main()
