"""Build the fork-layout fixtures in tests/data/forks/ from the forks' own published code.

Usage (the checkouts are the forks' repositories at the commits named in tests/data/forks/README.md)::

    python tests/forks/make_fork_fixtures.py --jiangjh /tmp/forks/jiangjh_full \
        --extra-v8 /tmp/forks/xiaosanmeng --extra-v11 /tmp/forks/ascom --out tests/data/forks

For each layout this script

1. runs the forks' own code at the forks' own module paths:
   - jiangjh0908 ships a whole ultralytics (8.0.227) with its blocks and its parse_model: a child
     process imports that package instead of the installed one and builds the fork's own
     yolov8.yaml (C2f_DCNV3 at P3-P5), so every class in the file is the fork's;
   - the extra_modules family's ``ops_dcnv3`` package is imported from the checkout's files,
     and its block classes (DCNV3_YOLO, Bottleneck_DCNV3, C2f_DCNv3, C3k_DCNv3, C3k2_DCNv3) are
     parsed out of its ``extra_modules/block.py`` and executed in a module of that name, on the
     installed ultralytics (the rest of that file, and that package's __init__, import einops,
     timm and dozens of unrelated modules);
   the CUDA-only extension (``import DCNv3``) is a stub and the compiled ``DCNv3Function.apply``
   is replaced by the fork's own ``dcnv3_core_pytorch`` (InternImage's pure-PyTorch reference,
   which InternImage tests its CUDA op against), with the same arguments less ``im2col_step``;
2. builds a small detector of the family (yolov8 / yolo11 at depth n, width 0.125, 4 classes: the
   fixtures stay ~2 MB each) whose backbone blocks at P3-P5 are the fork's DCNv3 blocks (for the
   extra_modules family built with the arguments the stock block had, as its parse_model does);
3. gives it non-trivial weights: offset and mask heads far from their zero init, a Detect head
   whose class scores depend on the features, and BatchNorm statistics calibrated on real images
   (train-mode passes with cumulative averages), so activations keep about unit scale;
4. saves it as ultralytics does: ``best.pt`` (``model`` = the fp16 network, ``ema`` None, as
   ``strip_optimizer`` leaves it) and ``last.pt`` (``model`` None, the fp16 network under ``ema``,
   with ``updates``, ``optimizer`` (param groups; per-parameter state left out to keep the file
   small), ``train_args`` and the other keys of ``BaseTrainer.save_model``);
5. records the fork's own forward in fp32 from the fp16 weights, eval mode, on
   assets/examples/bus.jpg through ``LetterBox((640, 640), auto=True, stride=32)``: the raw
   ``pred`` and, per DCNv3 module, the outputs of its ``offset`` and ``mask`` Linears.

It also prints how far the prediction moves when the offsets are zeroed or read as (dy, dx),
which shows the fixtures are sensitive to a wrong reading.
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime
import importlib
import os
import subprocess
import sys
import types
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "true")


def stub_cuda_extension() -> None:
    """The forks' dcnv3_func.py imports the compiled CUDA extension and pkg_resources at import."""
    sys.modules.setdefault("DCNv3", types.ModuleType("DCNv3"))
    if "pkg_resources" not in sys.modules:
        stub = types.ModuleType("pkg_resources")
        stub.get_distribution = lambda name: types.SimpleNamespace(version="1.1")
        sys.modules["pkg_resources"] = stub


if "--inside-fork" in sys.argv:  # the fork's ultralytics imports its CUDA op at import time
    stub_cuda_extension()

import cv2  # noqa: E402
import torch  # noqa: E402
import ultralytics  # noqa: E402
from torch import nn  # noqa: E402
from ultralytics.data.augment import LetterBox  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, yaml_model_load  # noqa: E402
from ultralytics.utils.torch_utils import initialize_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
IMAGES = sorted((ROOT / "assets" / "examples").glob("*.jpg"))
TEST_IMAGE = ROOT / "assets" / "examples" / "bus.jpg"
CFG = Path(ultralytics.__file__).parent / "cfg" / "models"


# ---------------------------------------------------------------------------------------------
# 1. The forks' code at the forks' module paths
# ---------------------------------------------------------------------------------------------


def package_module(name: str, directory: Path) -> types.ModuleType:
    """A package module ``name`` whose submodules are imported from ``directory``, without
    running its ``__init__.py`` (the forks' extra_modules/__init__ imports every module)."""
    package = types.ModuleType(name)
    package.__path__ = [str(directory)]
    package.__package__ = name
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    setattr(sys.modules[parent], child, package)
    return package


def _pure_pytorch_core(functions_module) -> None:
    """Route the fork's ``DCNv3Function.apply`` (CUDA only) to its own dcnv3_core_pytorch."""
    core = functions_module.dcnv3_core_pytorch

    class ReferenceFunction:
        @staticmethod
        def apply(
            input,
            offset,
            mask,
            kernel_h,
            kernel_w,
            stride_h,
            stride_w,
            pad_h,
            pad_w,
            dilation_h,
            dilation_w,
            group,
            group_channels,
            offset_scale,
            im2col_step,
            remove_center=0,
        ):
            return core(
                input,
                offset,
                mask,
                kernel_h,
                kernel_w,
                stride_h,
                stride_w,
                pad_h,
                pad_w,
                dilation_h,
                dilation_w,
                group,
                group_channels,
                offset_scale,
                remove_center,
            )

    return ReferenceFunction


def exec_fork_classes(source_file: Path, class_names: list[str], module: types.ModuleType) -> None:
    """Execute the fork's definitions of ``class_names`` from ``source_file`` in ``module``."""
    source = source_file.read_text(encoding="utf-8")
    tree = ast.parse(source)
    found = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    missing = [name for name in class_names if name not in found]
    if missing:
        raise SystemExit(f"{source_file}: no class {missing}; is this the fork's checkout?")
    for name in class_names:
        code = ast.get_source_segment(source, found[name])
        exec(compile(code, f"{source_file}:{found[name].lineno}", "exec"), module.__dict__)
        getattr(module, name).__module__ = module.__name__


def jiangjh_inside_fork() -> None:
    """Runs with the fork's whole ultralytics (8.0.227) first on sys.path: its own parse_model
    builds its own yolov8.yaml, whose backbone has C2f_DCNV3 at P3-P5 (the only DCNv3 edit it
    ships). That parse_model scales C2f_DCNV3's channels but does not insert its repeats, so the
    YAML's ``True`` becomes n (one bottleneck, shortcut False), and a layer with
    round(depth * repeats) > 1 is an nn.Sequential of that many C2f_DCNV3: model.4.0.m.0.cv2.dcnv3,
    model.4.1.m.0.cv2.dcnv3, ..., model.8.m.0.cv2.dcnv3.
    The fork's DCNv3_PyTorch calls DCNv3_pytorch, InternImage's pure-PyTorch module, already."""
    assert ultralytics.__version__ == "8.0.227", f"not the fork's ultralytics: {ultralytics.__file__}"
    assert hasattr(importlib.import_module("ultralytics.nn.modules.block"), "C2f_DCNV3")


def load_extra_modules(checkout: Path) -> dict:
    """The ultralytics/nn/extra_modules family: ops_dcnv3 with the Conv-dw DCNv3, and
    DCNV3_YOLO / Bottleneck_DCNV3 / C2f_DCNv3 (YOLOv8 copies) or C3k_DCNv3 / C3k2_DCNv3 (YOLO11)
    in extra_modules/block.py."""
    stub_cuda_extension()
    fork = checkout / "ultralytics" / "nn" / "extra_modules"
    package_module("ultralytics.nn.extra_modules", fork)
    functions = importlib.import_module("ultralytics.nn.extra_modules.ops_dcnv3.functions")
    dcnv3_module = importlib.import_module("ultralytics.nn.extra_modules.ops_dcnv3.modules.dcnv3")
    dcnv3_module.DCNv3Function = _pure_pytorch_core(functions)
    block = types.ModuleType("ultralytics.nn.extra_modules.block")
    sys.modules[block.__name__] = block
    sys.modules["ultralytics.nn.extra_modules"].block = block
    # What the fork's block.py imports for these classes (``from ..modules.block import *`` etc.).
    stock_block = importlib.import_module("ultralytics.nn.modules.block")
    stock_conv = importlib.import_module("ultralytics.nn.modules.conv")
    block.__dict__.update(
        {
            "torch": torch,
            "nn": nn,
            "Conv": stock_conv.Conv,
            "autopad": stock_conv.autopad,
            "Bottleneck": stock_block.Bottleneck,
            "C2f": stock_block.C2f,
            "C3": stock_block.C3,
            "C3k": stock_block.C3k,
            "C3k2": stock_block.C3k2,
            "DCNv3": dcnv3_module.DCNv3,
        }
    )
    source = (fork / "block.py").read_text(encoding="utf-8")
    names = [
        n for n in ("DCNV3_YOLO", "Bottleneck_DCNV3", "C2f_DCNv3", "C3k_DCNv3", "C3k2_DCNv3") if f"class {n}(" in source
    ]
    exec_fork_classes(fork / "block.py", names, block)
    return {name: getattr(block, name) for name in names}


# ---------------------------------------------------------------------------------------------
# 2. A small model with the fork's blocks
# ---------------------------------------------------------------------------------------------

SCALE = [0.33, 0.125, 1024]  # depth as n, half of n's width: ~1M parameters
NUM_CLASSES = 4


def small_model(family: str) -> DetectionModel:
    config = yaml_model_load(CFG / ("v8/yolov8.yaml" if family == "yolov8" else "11/yolo11.yaml"))
    config.update(nc=NUM_CLASSES, scale="n", scales={"n": SCALE if family == "yolov8" else [0.50, 0.125, 1024]})
    config.pop("yaml_file", None)
    return DetectionModel(config, verbose=False)


def install_layer(model: DetectionModel, index: int, block: nn.Module, yaml_name: str) -> None:
    """Put ``block`` at ``model.model[index]`` with the bookkeeping parse_model gives a layer."""
    old = model.model[index]
    block.i, block.f = old.i, old.f
    block.type = f"{type(block).__module__}.{type(block).__name__}"
    block.np = sum(p.numel() for p in block.parameters())
    model.model[index] = block
    model.yaml["backbone"][index][2] = yaml_name


def block_like(stock: nn.Module, container: type) -> nn.Module:
    """A fork's ``container`` built with the stock block's arguments, as the forks' parse_model
    passes them: a C2f's (c1, c2, n, shortcut, g=1, e), a C3k2's (c1, c2, n, c3k, e, g=1, shortcut)."""
    from ultralytics.nn.modules.block import C3k, C3k2

    c1, c2 = stock.cv1.conv.in_channels, stock.cv2.conv.out_channels
    n, e = len(stock.m), stock.c / c2
    if isinstance(stock, C3k2):  # a C2f subclass: ask first
        c3k = isinstance(stock.m[0], C3k)
        return container(c1, c2, n, c3k, e, 1, bool(stock.m[0].m[0].add if c3k else stock.m[0].add))
    return container(c1, c2, n, bool(stock.m[0].add), 1, e)


def with_fork_blocks(family: str, classes: dict, container: str) -> DetectionModel:
    """The family's model with its P3-P5 backbone C2f / C3k2 (layers 4, 6, 8) made the fork's
    (no ``classes``: the model as the running ultralytics' parse_model built it)."""
    model = small_model(family)
    if not classes:
        return model
    for index in (4, 6, 8):
        block = block_like(model.model[index], classes["C3k2_DCNv3" if container == "C3k2" else "C2f"])
        install_layer(model, index, block, type(block).__name__)
    initialize_weights(model)  # as DetectionModel.__init__ does after parse_model: BN eps 1e-3
    return model


# ---------------------------------------------------------------------------------------------
# 3. Non-trivial weights
# ---------------------------------------------------------------------------------------------


def letterboxed(path: Path, size: int = 640) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1], RGB: ultralytics' LetterBox(auto=True, stride=32)."""
    image = cv2.imread(str(path))
    boxed = LetterBox((size, size), auto=True, stride=32)(image=image)
    return torch.from_numpy(boxed[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255


def dcnv3_operators(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The fork's DCNv3 operator modules: those holding offset, mask, input_proj and output_proj."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if all(hasattr(m, a) for a in ("offset", "mask", "input_proj", "output_proj"))
    ]


# Weight scales (std * sqrt(fan-in)) of the heads made non-trivial. Random convolutions give
# spatially rough features, and a DCNv3 turns input noise into offset noise times that roughness,
# so feature-driven offsets amplify fp32 rounding from layer to layer: the offset heads' feature
# weights stay moderate (most of each offset comes from its bias, still far from the zero init)
# and the box branch's logits soft. ``build`` then takes the first seed whose fp32 forward is
# within ROUNDING_BOUNDS of its fp64 forward (the YOLO11 trunk, with its attention block, is the
# most sensitive), so other CPUs' summation orders stay far inside the tests' bounds.
OFFSET_GAIN, MASK_GAIN, CLASS_GAIN, BOX_GAIN = 0.1, 0.5, 1.0, 0.25
ROUNDING_BOUNDS = {"boxes_px": 0.02, "scores": 2e-4}


@torch.no_grad()
def randomise(model: DetectionModel, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _, op in dcnv3_operators(model):
        # Offsets of about a cell (bias) varying with the features, peaked softmax weights.
        op.offset.weight.normal_(0, OFFSET_GAIN / op.channels**0.5, generator=generator)
        op.offset.bias.normal_(0, 1.0, generator=generator)
        op.mask.weight.normal_(0, MASK_GAIN / op.channels**0.5, generator=generator)
        op.mask.bias.normal_(0, 1.0, generator=generator)
    head = model.model[-1]
    for branch in head.cv3:  # class logits of a few units: scores depend on the features
        last = branch[-1]
        last.weight.normal_(0, CLASS_GAIN / last.in_channels**0.5, generator=generator)
        last.bias.fill_(-1.0)
    for branch in head.cv2:  # box distributions that depend on the features
        last = branch[-1]
        last.weight.normal_(0, BOX_GAIN / last.in_channels**0.5, generator=generator)
    for module in model.modules():  # BN affine away from (1, 0)
        if isinstance(module, nn.BatchNorm2d):
            module.weight.uniform_(0.7, 1.3, generator=generator)
            module.bias.normal_(0, 0.1, generator=generator)


def calibrate_batchnorm(model: DetectionModel) -> None:
    """Running statistics = the statistics of real images at train mode, so eval activations keep
    about unit scale (as in a trained network, unlike default stats on random weights)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for path in IMAGES:
            for size in (640, 480, 320):
                model(letterboxed(path, size))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.03  # ultralytics' value (initialize_weights)
    model.eval()


# ---------------------------------------------------------------------------------------------
# 4. Saving as ultralytics does
# ---------------------------------------------------------------------------------------------


def train_args(yaml_name: str) -> dict:
    from ultralytics.cfg import get_cfg

    args = vars(get_cfg())
    args.update(model=yaml_name, data="shapes/data.yaml", epochs=100, imgsz=640, batch=16)
    return args


def save_layouts(model: DetectionModel, out: Path, stem: str, yaml_name: str) -> None:
    network = copy.deepcopy(model).half()
    for p in network.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.SGD(copy.deepcopy(model).parameters(), lr=0.01, momentum=0.937)
    groups = optimizer.state_dict()["param_groups"]
    common = {
        "best_fitness": 0.512,
        "train_args": train_args(yaml_name),
        "train_metrics": {"metrics/mAP50(B)": 0.61, "metrics/mAP50-95(B)": 0.41},
        "train_results": {},
        "date": datetime.datetime(2026, 11, 30, 12, 0).isoformat(),
        "version": ultralytics.__version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "git": {},
    }
    # last.pt while training runs: BaseTrainer.save_model's dict.
    last = {
        "epoch": 41,
        "model": None,
        "ema": network,
        "updates": 1234,
        "optimizer": {"state": {}, "param_groups": groups},
        **common,
    }
    torch.save(last, out / f"{stem}_last.pt")
    # best.pt after training: strip_optimizer puts the EMA network under "model".
    best = {**last, "epoch": -1, "model": network, "ema": None, "updates": None, "optimizer": None}
    torch.save(best, out / f"{stem}_best.pt")


# ---------------------------------------------------------------------------------------------
# 5. The fork's own forward
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def record_forward(model: DetectionModel, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    layers, hooks = {}, []
    for name, op in dcnv3_operators(model):
        for head, key in ((op.offset, ".offset"), (op.mask, ".mask_logits")):
            hooks.append(
                head.register_forward_hook(
                    lambda _m, _i, out, k=name + key: layers.__setitem__(k, out.detach().clone())
                )
            )
    try:
        pred = model(x)[0]
    finally:
        for hook in hooks:
            hook.remove()
    return pred, layers


@torch.no_grad()
def sensitivity(model: DetectionModel, x: torch.Tensor, pred: torch.Tensor) -> dict:
    """Max box move (px) and score change when the offsets are zeroed or read as (dy, dx)."""
    moves = {}
    for label in ("zero offsets", "(dy, dx)"):
        hooks = []
        for _, op in dcnv3_operators(model):

            def edit(_m, _i, out, label=label):
                if label == "zero offsets":
                    return torch.zeros_like(out)
                return out.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)

            hooks.append(op.offset.register_forward_hook(edit))
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


@torch.no_grad()
def rounding_sensitivity(reference: DetectionModel, x: torch.Tensor) -> dict:
    """How far fp32 rounding alone moves the prediction: fp32 against fp64 of the same weights."""
    pred32 = reference(x)[0]
    pred64 = copy.deepcopy(reference).double()(x.double())[0]
    diff = (pred32.double() - pred64).abs()
    return {"boxes_px": diff[:, :4].max().item(), "scores": diff[:, 4:].max().item()}


def build(layout: str, family: str, classes: dict, container: str, out: Path, seed: int, source: str) -> None:
    x = letterboxed(TEST_IMAGE)
    for attempt in range(seed, seed + 20):
        model = with_fork_blocks(family, classes, container)
        randomise(model, attempt)
        calibrate_batchnorm(model)
        reference = copy.deepcopy(model).half().float().eval()  # fp32 from the fp16 weights
        rounding = rounding_sensitivity(reference, x)
        if all(rounding[key] <= bound for key, bound in ROUNDING_BOUNDS.items()):
            break
        print(f"{layout}: seed {attempt} too sensitive to rounding ({rounding}), next seed")
    else:
        raise SystemExit(f"{layout}: no seed within {ROUNDING_BOUNDS}")
    yaml_name = f"{layout}.yaml"
    save_layouts(model, out, layout, yaml_name)
    pred, layers = record_forward(reference, x)
    expected = {
        "input_shape": list(x.shape),
        "input_sum": x.double().sum().item(),
        "pred": pred,
        "layers": layers,
        "image": "assets/examples/bus.jpg",
        "source": source,
        "seed": attempt,
        "fp32_vs_fp64": rounding,
        "note": f"{layout}: raw DetectionModel output and every DCNv3's offset / mask Linear "
        f"outputs on the letterboxed image (LetterBox((640, 640), auto=True, stride=32)), "
        f"eval mode, fp32 from the fp16 weights, computed by the fork's own code",
    }
    torch.save(expected, out / f"{layout}_expected.pt")
    print(
        f"{layout}: seed {attempt}, {sum(p.numel() for p in model.parameters())} parameters, "
        f"{len(dcnv3_operators(model))} DCNv3 layers, pred {tuple(pred.shape)} boxes in "
        f"[{pred[0, :4].min():.1f}, {pred[0, :4].max():.1f}] scores in [{pred[0, 4:].min():.3f}, "
        f"{pred[0, 4:].max():.3f}]; fp32 vs fp64 {rounding}; moved by {sensitivity(reference, x, pred)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--jiangjh",
        type=Path,
        required=True,
        help="jiangjh0908/Yolov8_with_DCNv3 checkout (its whole ultralytics/ folder)",
    )
    parser.add_argument(
        "--extra-v8",
        type=Path,
        required=True,
        help="a YOLOv8 extra_modules checkout (xiaosanmeng/Lightweight-Vehicle-Detection-...)",
    )
    parser.add_argument(
        "--extra-v11",
        type=Path,
        required=True,
        help="a YOLO11 extra_modules checkout with C3k2_DCNv3 (Ascom-stack/yolo11)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "forks")
    parser.add_argument("--inside-fork", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    if args.inside_fork:  # the child process below, on the fork's own ultralytics
        jiangjh_inside_fork()
        build("jiangjh_v8", "yolov8", {}, "", args.out, 1, "jiangjh0908/Yolov8_with_DCNv3")
        return
    # jiangjh0908 ships a whole ultralytics of its own: build that layout in a child process
    # that imports it instead of the installed one.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(args.jiangjh), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, __file__, *sys.argv[1:], "--inside-fork"], env=env, check=True)

    # The extra_modules family: its DCNv3 classes on the installed ultralytics (its own
    # extra_modules package imports einops, timm and dozens of unrelated modules). Both checkouts
    # define classes at the same module paths: build one, then the other.
    extra_v8 = load_extra_modules(args.extra_v8)
    build(
        "extra_v8",
        "yolov8",
        {"C2f": extra_v8["C2f_DCNv3"]},
        "C2f",
        args.out,
        2,
        "xiaosanmeng/Lightweight-Vehicle-Detection-Network-Based-on-Improved-YOLOv8",
    )
    for name in [n for n in sys.modules if n.startswith("ultralytics.nn.extra_modules")]:
        del sys.modules[name]
    build("extra_v11", "yolo11", load_extra_modules(args.extra_v11), "C3k2", args.out, 3, "Ascom-stack/yolo11")


if __name__ == "__main__":
    main()
