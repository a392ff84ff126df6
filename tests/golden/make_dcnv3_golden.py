"""Write the DCNv3 golden vectors of tests/data/golden_dcnv3/ from InternImage's own code, and check them.

Usage (a checkout of InternImage at the commit the vectors were checked against)::

    git clone https://github.com/OpenGVLab/InternImage /tmp/InternImage
    git -C /tmp/InternImage checkout 31c962dc6c1ceb23e580772f7daaa6944694fbe6
    python tests/golden/make_dcnv3_golden.py --internimage /tmp/InternImage

This writes every case to a new temporary folder (``--out DIR`` to choose one; a folder that
already holds files is refused unless ``--force``, so the committed copy is only rewritten when
asked: ``--out tests/data/golden_dcnv3 --force``) and then compares what it wrote with the
committed vectors (``--check DIR``, default tests/data/golden_dcnv3; ``--no-check`` skips it).

The reference is InternImage's pure-PyTorch DCNv3, imported from the checkout at its own module
paths (``<checkout>/classification`` is put on ``sys.path``; the ``classification`` copy is the one
with ``remove_center``): the module ``ops_dcnv3.modules.dcnv3.DCNv3_pytorch`` and the core
``ops_dcnv3.functions.dcnv3_func.dcnv3_core_pytorch``. Nothing is compiled: the CUDA extension
``DCNv3`` that ``dcnv3_func.py`` imports at its top is an empty stub (only ``DCNv3Function`` uses
it, and nothing here calls that), and so is ``pkg_resources`` (read only for the extension's
version). Everything runs in float64 on the CPU.

The one change to the reference: it builds its sampling grid (``_get_reference_points`` and
``_generate_dilation_grids``, both through ``torch.linspace(..., dtype=torch.float32)``) in
float32 even for float64 inputs. Here the name ``torch`` inside ``dcnv3_func`` is replaced, at run
time, by a stand-in that passes everything through to torch except that ``linspace`` asked for
float32 returns float64 (the same stand-in as tests/golden/make_dcnv4_golden.py); the reference
code is otherwise unchanged. So the vectors test the formula, not float32 rounding: with the
float32 grid the outputs move by 3e-7 to 1e-5 (see below), far above the 1e-12 at which a faithful
float64 implementation agrees.

The inputs are regenerated, not taken from the committed files: the seeds and the draws were
recovered (all from torch's global generator, float64, torch 2.14.1 CPU), and this script
reproduces every committed input, parameter and upstream gradient bit for bit:

* kind 'core' (seeds 1334-1337, in index order): ``input = randn``, ``offset = (rand * 2 - 1) * A``
  (A per case: 5, 1.5, 1.5, 1 pixels), ``mask = rand + 1e-5`` normalised over each group's points,
  then ``grad_output = randn``; InternImage's core computes the output and the gradients of
  input, offset and (normalised) mask.
* kind 'module' (seeds 1234-1241, in index order): ``DCNv3_pytorch(**config).double()``, then,
  after seeding, every parameter in ``named_parameters()`` order replaced by ``scale * randn``
  (LayerNorm weight ``1 + 0.2 * randn``; scales in PARAM_SCALE), then ``input = randn`` (N, H, W, C)
  and ``grad_output = randn``; output, input gradient and parameter gradients.

What ``--check`` verifies, per case: config and key set equal to the committed file's; input,
offset, mask, state_dict and grad_output bitwise equal; output and every gradient within
``--tol`` (default 1e-12) of the committed ones, in float64; and index.json equal. Measured here
(torch 2.14.1, CPU, InternImage 31c962dc6c1ceb23e580772f7daaa6944694fbe6): every input bitwise
equal and every output and gradient bitwise equal too (max |difference| 0.0 in all 12 cases,
m_c64_g4_k3, m_c48_g3_k3_rect, m_c32_g2_k5, m_c64_g4_dil2, m_c64_g8_scale2, m_c64_g4_cfs,
m_c64_g4_rmc, m_c24_g1_k3, c_like_upstream_test, c_stride2, c_dil2, c_rmc), the written .pt files
and index.json byte-identical to the committed ones. With InternImage's float32 grid left in place
(``--float32-grid``, for comparison only) the same check fails, inputs still bitwise equal: outputs
off by 3e-7 to 6e-7 (core) and 1e-6 to 1e-5 (module), gradients by up to 7e-6 (core) and 3e-4
(module parameters).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import types
import warnings
from pathlib import Path

import torch

# The same stand-in for torch inside InternImage's code as the DCNv4 vectors' (float32 linspace grids
# become float64); this script runs from tests/golden/, beside it.
from make_dcnv4_golden import Float64Grids

COMMITTED = Path(__file__).resolve().parents[1] / "data" / "golden_dcnv3"


def internimage_dcnv3(checkout: Path, float64_grid: bool = True):
    """InternImage's ``DCNv3_pytorch`` and ``dcnv3_core_pytorch``, imported from the checkout."""
    root = (checkout / "classification").resolve()
    if not (root / "ops_dcnv3" / "functions" / "dcnv3_func.py").is_file():
        raise SystemExit(f"{checkout} is not an InternImage checkout (no classification/ops_dcnv3)")
    sys.modules.setdefault("DCNv3", types.ModuleType("DCNv3"))  # the CUDA extension, imported at the top
    if "pkg_resources" not in sys.modules:  # used only to read the extension's version
        stub = types.ModuleType("pkg_resources")
        stub.get_distribution = lambda name: types.SimpleNamespace(version="1.1")
        sys.modules["pkg_resources"] = stub
    sys.path.insert(0, str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.cuda.amp.custom_fwd's deprecation
        # By name: InternImage's package comes from the checkout given, not from a dependency.
        dcnv3_func = importlib.import_module("ops_dcnv3.functions.dcnv3_func")
        dcnv3_modules = importlib.import_module("ops_dcnv3.modules.dcnv3")
    for module in (dcnv3_func, dcnv3_modules):
        if not Path(module.__file__).resolve().is_relative_to(root):
            raise SystemExit(f"imported {module.__name__} from {module.__file__}, not from {root}")
    if float64_grid:
        dcnv3_func.torch = Float64Grids(torch)  # DCNv3_pytorch calls this same function object
    return dcnv3_modules.DCNv3_pytorch, dcnv3_func.dcnv3_core_pytorch


# name: (seed, constructor kwargs, input shape (N, H, W, C))
MODULE_CASES = {
    "m_c64_g4_k3": (1234, dict(channels=64, group=4, kernel_size=3), (2, 8, 8, 64)),
    "m_c48_g3_k3_rect": (1235, dict(channels=48, group=3, kernel_size=3), (1, 11, 7, 48)),
    "m_c32_g2_k5": (1236, dict(channels=32, group=2, kernel_size=5, pad=2), (2, 9, 9, 32)),
    "m_c64_g4_dil2": (1237, dict(channels=64, group=4, kernel_size=3, dilation=2, pad=2), (1, 10, 10, 64)),
    "m_c64_g8_scale2": (1238, dict(channels=64, group=8, kernel_size=3, offset_scale=2.0), (1, 8, 8, 64)),
    "m_c64_g4_cfs": (1239, dict(channels=64, group=4, kernel_size=3, center_feature_scale=True), (2, 8, 8, 64)),
    "m_c64_g4_rmc": (1240, dict(channels=64, group=4, kernel_size=3, remove_center=True), (1, 8, 8, 64)),
    "m_c24_g1_k3": (1241, dict(channels=24, group=1, kernel_size=3), (1, 6, 13, 24)),
}

# parameter name: standard deviation of its random value (offsets of a few pixels, softmax far from uniform)
PARAM_SCALE = {
    "center_feature_scale_proj_weight": 0.5,
    "center_feature_scale_proj_bias": 0.5,
    "dw_conv.0.weight": 0.3,
    "dw_conv.0.bias": 0.1,
    "dw_conv.1.1.weight": 0.2,  # LayerNorm weight: 1 + 0.2 * randn
    "dw_conv.1.1.bias": 0.1,
    "offset.weight": 0.4,
    "offset.bias": 1.5,
    "mask.weight": 0.5,
    "mask.bias": 1.0,
    "input_proj.weight": 0.3,
    "input_proj.bias": 0.1,
    "output_proj.weight": 0.3,
    "output_proj.bias": 0.1,
}
PARAM_MEAN = {"dw_conv.1.1.weight": 1.0}


def core_config(kernel, stride, pad, dilation, group, group_channels, offset_scale=1.0, remove_center=0) -> dict:
    return dict(
        kernel_h=kernel,
        kernel_w=kernel,
        stride_h=stride,
        stride_w=stride,
        pad_h=pad,
        pad_w=pad,
        dilation_h=dilation,
        dilation_w=dilation,
        group=group,
        group_channels=group_channels,
        offset_scale=offset_scale,
        remove_center=remove_center,
    )


# name: (seed, core keyword arguments, input shape (N, H, W, G*D), offset amplitude in pixels)
CORE_CASES = {
    "c_like_upstream_test": (1334, core_config(3, 1, 1, 1, 4, 16, offset_scale=2.0), (2, 8, 8, 64), 5.0),
    "c_stride2": (1335, core_config(3, 2, 1, 1, 2, 8), (1, 9, 9, 16), 1.5),
    "c_dil2": (1336, core_config(3, 1, 2, 2, 2, 8), (1, 10, 12, 16), 1.5),
    "c_rmc": (1337, core_config(3, 1, 1, 1, 4, 4, remove_center=1), (1, 7, 7, 16), 1.0),
}


def module_case(module_class, seed: int, config: dict, input_shape: tuple) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "channels per group not a power of 2" (24, 48)
        module = module_class(**config).double()
    torch.manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(torch.randn(param.shape, **f64) * PARAM_SCALE[name] + PARAM_MEAN.get(name, 0.0))
    inputs = torch.randn(input_shape, **f64).requires_grad_()
    output = module(inputs)
    grad_output = torch.randn(output.shape, **f64)
    output.backward(grad_output)
    return dict(
        kind="module",
        config=config,
        input=inputs.detach(),
        output=output.detach(),
        grad_output=grad_output,
        grad_input=inputs.grad,
        state_dict={k: v.detach().clone() for k, v in module.state_dict().items()},
        grad_params={k: v.grad for k, v in module.named_parameters()},
    )


def core_case(core, seed: int, config: dict, input_shape: tuple, amplitude: float) -> dict:
    n, in_h, in_w, _ = input_shape
    k, s, p, dil = (config[key] for key in ("kernel_h", "stride_h", "pad_h", "dilation_h"))
    group, points = config["group"], k * k - config["remove_center"]
    out_h = (in_h + 2 * p - (dil * (k - 1) + 1)) // s + 1
    out_w = (in_w + 2 * p - (dil * (k - 1) + 1)) // s + 1
    torch.manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    inputs = torch.randn(input_shape, **f64)
    offset = (torch.rand(n, out_h, out_w, group * points * 2, **f64) * 2 - 1) * amplitude
    mask = torch.rand(n, out_h, out_w, group * points, **f64) + 1e-5
    mask = mask.unflatten(-1, (group, points))
    mask = (mask / mask.sum(-1, keepdim=True)).flatten(-2)  # normalised per group, as the module's softmax
    leaves = [t.clone().requires_grad_() for t in (inputs, offset, mask)]
    output = core(*leaves, **config)
    grad_output = torch.randn(output.shape, **f64)
    output.backward(grad_output)
    grad_input, grad_offset, grad_mask = (t.grad for t in leaves)
    return dict(
        kind="core",
        config=config,
        input=inputs,
        offset=offset,
        mask=mask,
        output=output.detach(),
        grad_output=grad_output,
        grad_input=grad_input,
        grad_offset=grad_offset,
        grad_mask=grad_mask,
    )


INPUT_KEYS = ("input", "offset", "mask", "grad_output", "state_dict")  # drawn here: must be bitwise equal


def tensors(case: dict) -> dict:
    """The case's tensors by name, nested dicts (state_dict, grad_params) flattened to 'outer.inner'."""
    flat = {}
    for key, value in case.items():
        if isinstance(value, torch.Tensor):
            flat[key] = value
        elif isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values()):
            flat.update({f"{key}.{name}": v for name, v in value.items()})
    return flat


def check_case(name: str, made: dict, committed: dict, tol: float) -> tuple[bool, str]:
    problems = []
    if made.keys() != committed.keys():
        problems.append(f"keys {sorted(made)} != {sorted(committed)}")
    if made["kind"] != committed["kind"] or made["config"] != committed["config"]:
        problems.append(f"config {made['config']} != {committed['config']}")
    ours, theirs = tensors(made), tensors(committed)
    if ours.keys() != theirs.keys():
        problems.append(f"tensors {sorted(ours.keys() ^ theirs.keys())} differ")
    inputs_equal, worst, worst_key = True, 0.0, ""
    for key in sorted(ours.keys() & theirs.keys()):
        a, b = ours[key], theirs[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{key}: {tuple(a.shape)} {a.dtype} != {tuple(b.shape)} {b.dtype}")
            continue
        if key.split(".")[0] in INPUT_KEYS:
            if not torch.equal(a, b):
                inputs_equal = False
                problems.append(f"{key} not bitwise equal (max diff {(a - b).abs().max().item():.3g})")
        else:
            diff = (a - b).abs().max().item() if a.numel() else 0.0
            if diff > worst or not worst_key:
                worst, worst_key = diff, key
            if not diff <= tol:
                problems.append(f"{key}: max |diff| {diff:.3g} > {tol:g}")
    verdict = "bitwise equal" if inputs_equal else "DIFFER"
    line = f"{name:22s} inputs {verdict}, outputs/gradients max |diff| {worst:.3g}"
    line += f" ({worst_key})" if worst else ""
    return not problems, "\n".join([line, *(f"    {p}" for p in problems)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--internimage", type=Path, required=True, help="checkout of OpenGVLab/InternImage")
    parser.add_argument("--out", type=Path, help="folder to write to (default: a new temporary folder)")
    parser.add_argument("--force", action="store_true", help="write into --out even if it already holds files")
    parser.add_argument("--check", type=Path, default=COMMITTED, help=f"vectors to compare with (default {COMMITTED})")
    parser.add_argument("--no-check", action="store_true", help="only write, compare nothing")
    parser.add_argument("--tol", type=float, default=1e-12, help="max |difference| allowed on outputs and gradients")
    parser.add_argument(
        "--float32-grid", action="store_true", help="leave InternImage's float32 grid (for comparison; never commit)"
    )
    args = parser.parse_args()

    out = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="golden_dcnv3_"))
    if out.exists() and any(out.iterdir()) and not args.force:
        raise SystemExit(f"{out} already holds files; pass --force to overwrite them")
    module_class, core = internimage_dcnv3(args.internimage, float64_grid=not args.float32_grid)
    warnings.filterwarnings("ignore", "torch.meshgrid: in an upcoming release", UserWarning)  # InternImage's call
    out.mkdir(parents=True, exist_ok=True)

    index, made = [], {}
    for name, (seed, config, input_shape) in MODULE_CASES.items():
        made[name] = case = module_case(module_class, seed, config, input_shape)
        index.append(dict(file=f"{name}.pt", kind="module", config=config, input_shape=list(case["input"].shape)))
    for name, (seed, config, input_shape, amplitude) in CORE_CASES.items():
        made[name] = case = core_case(core, seed, config, input_shape, amplitude)
        index.append(
            dict(
                file=f"{name}.pt",
                kind="core",
                config=config,
                input_shape=list(case["input"].shape),
                output_shape=list(case["output"].shape),
            )
        )
    for name, case in made.items():
        torch.save(case, out / f"{name}.pt")
    (out / "index.json").write_text(json.dumps(index, indent=1))  # no final newline, as committed
    print(f"wrote {len(made)} cases and index.json to {out}")
    if args.no_check:
        return

    print(f"checking against {args.check} (outputs and gradients to {args.tol:g}, inputs bitwise)")
    ok = True
    committed_index = json.loads((args.check / "index.json").read_text())
    if committed_index != index:
        ok = False
        print("index.json differs from the committed one")
    for entry in committed_index:
        name = entry["file"].removesuffix(".pt")
        if name not in made:
            ok = False
            print(f"{name}: in the committed index, not made here")
            continue
        good, report = check_case(name, made[name], torch.load(args.check / entry["file"], weights_only=True), args.tol)
        ok &= good
        same_bytes = (out / entry["file"]).read_bytes() == (args.check / entry["file"]).read_bytes()
        print(report + ("; file byte-identical" if same_bytes else ""))
    same_index = (out / "index.json").read_bytes() == (args.check / "index.json").read_bytes()
    print(f"index.json {'byte-identical' if same_index else 'not byte-identical'}")
    print("OK: all cases agree" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
