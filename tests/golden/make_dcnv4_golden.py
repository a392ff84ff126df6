"""Write the DCNv4 golden vectors of tests/data/golden_dcnv4/ from the reference code itself.

Usage (checkouts of the two repositories at the commits named in tests/data/golden_dcnv4/README.md)::

    python tests/golden/make_dcnv4_golden.py --internimage /tmp/InternImage --dcnv4 /tmp/DCNv4 \
        --out tests/data/golden_dcnv4

DCNv4's extension is CUDA-only, and DCNv4's own tests check it against InternImage's pure-PyTorch
DCNv3 core on the per-group split of its ``offset_mask``, with the modulation scalars not
normalised. This script does the same, in float64:

* core cases ("c_*"): random input, offsets (several pixels, many samples off the image) and
  signed unnormalised scalars, packed into ``offset_mask`` exactly as DCNv4's test packs them
  (per group [2P offsets | P scalars], then channels up to a multiple of 8, filled here with
  noise that must be ignored); InternImage's ``dcnv3_core_pytorch`` (from
  ``classification/ops_dcnv3/functions/dcnv3_func.py`` of the checkout, the copy that has
  ``remove_center``) computes the output and, for a fixed random upstream gradient, the gradients
  of the input and of every offset and scalar, which are packed back into ``grad_offset_mask``
  (zeros in the padding). One case applies DCNv4's ``softmax`` flag first.
* module cases ("m_*", with ``--dcnv4``): DCNv4's own module (``DCNv4_op/DCNv4/modules/dcnv4.py``)
  with non-trivial random parameters, its compiled ``DCNv4Function`` replaced by the per-group
  split (read as DCNv4's CUDA kernel reads it: group g at ``g*3P``, offsets then scalars) fed to
  the same InternImage core; output, input gradient and parameter gradients.

InternImage builds its sampling grid in float32 even for float64 inputs; here its module's
``torch.linspace`` is made to return float64 when asked for float32 (the reference code is
otherwise unchanged), so that the vectors test the formula rather than float32 rounding (as
tests/data/golden_dcnv3 was made).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import torch


class Float64Grids:
    """Stands in for ``torch`` inside InternImage's module: float32 linspace grids become float64."""

    def __init__(self, real_torch):
        self._torch = real_torch

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def linspace(self, *args, dtype=None, **kwargs):
        if dtype == self._torch.float32:
            dtype = self._torch.float64
        return self._torch.linspace(*args, dtype=dtype, **kwargs)


def load_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def internimage_core(checkout: Path):
    """InternImage's ``dcnv3_core_pytorch`` from the checkout, its CUDA extension stubbed."""
    sys.modules.setdefault("DCNv3", types.ModuleType("DCNv3"))  # imported at the file's top
    if "pkg_resources" not in sys.modules:  # used only to read the extension's version
        stub = types.ModuleType("pkg_resources")
        stub.get_distribution = lambda name: types.SimpleNamespace(version="1.1")
        sys.modules["pkg_resources"] = stub
    module = load_module(
        "internimage_dcnv3_func", checkout / "classification" / "ops_dcnv3" / "functions" / "dcnv3_func.py"
    )
    module.torch = Float64Grids(torch)
    return module.dcnv3_core_pytorch


def padded_width(used: int) -> int:
    return int(math.ceil(used / 8) * 8)


def pack(offset, mask, group, points, padding):
    """DCNv4's test's packing: cat([offset (.., G, 2P), mask (.., G, P)], -1).flatten(-2), then
    the padding channels appended."""
    packed = torch.cat(
        [offset.unflatten(-1, (group, 2 * points)), mask.unflatten(-1, (group, points))], dim=-1
    ).flatten(-2)
    return torch.cat([packed, padding], dim=-1)


CORE_CASES = {
    # name: geometry and sizes (n, in_h, in_w, group, group_channels)
    "c_s1_g4": dict(kernel=3, stride=1, pad=1, dilation=1, group=4, d=4, n=1, hw=(6, 7)),
    "c_s2_g2": dict(kernel=3, stride=2, pad=1, dilation=1, group=2, d=3, n=2, hw=(9, 8)),
    "c_rmc_g2": dict(kernel=3, stride=1, pad=1, dilation=1, group=2, d=4, n=1, hw=(6, 7), remove_center=1),
    "c_rmc_s2_g3": dict(kernel=3, stride=2, pad=1, dilation=1, group=3, d=2, n=1, hw=(9, 10), remove_center=1),
    "c_dil2_g1": dict(kernel=3, stride=1, pad=2, dilation=2, group=1, d=5, n=1, hw=(8, 8)),
    "c_scale2_g4": dict(kernel=3, stride=1, pad=1, dilation=1, group=4, d=2, n=1, hw=(6, 6), offset_scale=2.0),
    "c_scale05_k5_g2": dict(kernel=5, stride=1, pad=2, dilation=1, group=2, d=3, n=1, hw=(6, 6), offset_scale=0.5),
    "c_k1_g3": dict(kernel=1, stride=1, pad=0, dilation=1, group=3, d=2, n=2, hw=(5, 6)),
    "c_softmax_g2": dict(kernel=3, stride=1, pad=1, dilation=1, group=2, d=4, n=1, hw=(6, 6), softmax=True),
}

MODULE_CASES = {
    # name: constructor kwargs, input (n, h, w), whether the (h, w) shape is passed
    "m_c32_g2": (dict(channels=32, group=2), (1, 5, 8), True),
    "m_c32_g2_dw_cfs": (
        dict(channels=32, group=2, dw_kernel_size=3, center_feature_scale=True, offset_scale=0.5),
        (1, 7, 7),
        False,
    ),
    "m_c32_g2_rmc_nobias": (dict(channels=32, group=2, remove_center=True, output_bias=False), (2, 5, 6), True),
    "m_c16_g1_dil2_nopw": (dict(channels=16, group=1, dilation=2, pad=2, without_pointwise=True), (1, 8, 6), True),
    "m_c16_g1_k5": (dict(channels=16, group=1, kernel_size=5, pad=2), (1, 6, 7), True),
}


def core_case(core, spec: dict, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    k, s, p, dil, g, d, n = (spec[key] for key in ("kernel", "stride", "pad", "dilation", "group", "d", "n"))
    in_h, in_w = spec["hw"]
    remove_center = spec.get("remove_center", 0)
    points = k * k - remove_center
    out_h = (in_h + 2 * p - (dil * (k - 1) + 1)) // s + 1
    out_w = (in_w + 2 * p - (dil * (k - 1) + 1)) // s + 1
    f64 = dict(generator=gen, dtype=torch.float64)
    inputs = torch.randn(n, in_h, in_w, g * d, **f64)
    offset = 3.0 * torch.randn(n, out_h, out_w, g * points * 2, **f64)
    scalars = 0.7 * torch.randn(n, out_h, out_w, g * points, **f64)  # signed, unbounded
    used = 3 * g * points
    padding = torch.randn(n, out_h, out_w, padded_width(used) - used, **f64)  # must be ignored
    config = dict(
        kernel_h=k,
        kernel_w=k,
        stride_h=s,
        stride_w=s,
        pad_h=p,
        pad_w=p,
        dilation_h=dil,
        dilation_w=dil,
        group=g,
        group_channels=d,
        offset_scale=spec.get("offset_scale", 1.0),
        remove_center=remove_center,
        softmax=bool(spec.get("softmax", False)),
    )

    leaves = [t.clone().requires_grad_() for t in (inputs, offset, scalars)]
    mask = leaves[2]
    if config["softmax"]:
        mask = torch.softmax(mask.unflatten(-1, (g, points)), -1).flatten(-2)
    reference_args = {key: value for key, value in config.items() if key != "softmax"}
    output = core(leaves[0], leaves[1], mask, **reference_args)
    grad_output = torch.randn(output.shape, **f64)
    output.backward(grad_output)
    grad_input, grad_offset, grad_scalars = (t.grad for t in leaves)
    return dict(
        kind="core",
        config=config,
        input=inputs,
        offset_mask=pack(offset, scalars, g, points, padding),
        output=output.detach(),
        grad_output=grad_output,
        grad_input=grad_input,
        grad_offset_mask=pack(grad_offset, grad_scalars, g, points, torch.zeros_like(padding)),
    )


def dcnv4_module_class(checkout: Path, core):
    """DCNv4's module class from the checkout, its ``DCNv4Function`` the split fed to ``core``."""
    root = checkout / "DCNv4_op" / "DCNv4"

    class SplitDCNv4Function:
        """DCNv4Function.apply's arguments; the per-group split as DCNv4's kernel reads it."""

        @staticmethod
        def apply(
            input,
            offset_mask,
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
            remove_center,
        ):
            points = kernel_h * kernel_w - remove_center
            blocks = offset_mask[..., : group * 3 * points].unflatten(-1, (group, 3 * points))
            offset = blocks[..., : 2 * points].flatten(-2)
            mask = blocks[..., 2 * points :].flatten(-2)
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

    for name, path in (("DCNv4", root), ("DCNv4.modules", root / "modules")):
        package = types.ModuleType(name)  # packages without their __init__ (which loads the extension)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    functions = types.ModuleType("DCNv4.functions")
    functions.DCNv4Function = SplitDCNv4Function
    sys.modules["DCNv4.functions"] = functions
    return load_module("DCNv4.modules.dcnv4", root / "modules" / "dcnv4.py").DCNv4


def module_case(module_class, kwargs: dict, size: tuple, pass_shape: bool, seed: int) -> dict:
    torch.manual_seed(seed)
    module = module_class(**kwargs).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float64)
            if name == "offset_mask.weight":  # offsets of a few pixels, scalars of order 1
                param.copy_(noise * 1.5 / math.sqrt(param.shape[1]))
            elif name == "offset_mask.bias":
                param.copy_(noise)
            elif name.startswith("offset_mask_dw"):
                param.copy_(0.4 * noise)
            elif name.endswith("bias") or name.startswith("center_feature_scale"):
                param.copy_(0.5 * noise)
            # value_proj / output_proj weights keep their xavier init
    n, h, w = size
    channels = kwargs["channels"]
    inputs = torch.randn(n, h * w, channels, generator=gen, dtype=torch.float64).requires_grad_()
    output = module(inputs, (h, w) if pass_shape else None)
    grad_output = torch.randn(output.shape, generator=gen, dtype=torch.float64)
    output.backward(grad_output)
    return dict(
        kind="module",
        config=kwargs,
        hw=[h, w],
        pass_shape=pass_shape,
        input=inputs.detach(),
        output=output.detach(),
        grad_output=grad_output,
        grad_input=inputs.grad,
        state_dict={k: v.detach().clone() for k, v in module.state_dict().items()},
        grad_params={k: v.grad for k, v in module.named_parameters()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--internimage", type=Path, required=True, help="checkout of OpenGVLab/InternImage")
    parser.add_argument("--dcnv4", type=Path, help="checkout of OpenGVLab/DCNv4 (module cases)")
    parser.add_argument("--out", type=Path, default=Path("tests/data/golden_dcnv4"))
    args = parser.parse_args()
    core = internimage_core(args.internimage)
    args.out.mkdir(parents=True, exist_ok=True)
    index = []
    for seed, (name, spec) in enumerate(CORE_CASES.items()):
        case = core_case(core, spec, seed)
        torch.save(case, args.out / f"{name}.pt")
        index.append(
            dict(
                file=f"{name}.pt",
                kind="core",
                config=case["config"],
                input_shape=list(case["input"].shape),
                offset_mask_shape=list(case["offset_mask"].shape),
            )
        )
    if args.dcnv4 is not None:
        module_class = dcnv4_module_class(args.dcnv4, core)
        for seed, (name, (kwargs, size, pass_shape)) in enumerate(MODULE_CASES.items(), start=100):
            case = module_case(module_class, kwargs, size, pass_shape, seed)
            torch.save(case, args.out / f"{name}.pt")
            index.append(
                dict(
                    file=f"{name}.pt",
                    kind="module",
                    config=kwargs,
                    hw=case["hw"],
                    pass_shape=pass_shape,
                    input_shape=list(case["input"].shape),
                )
            )
    (args.out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    for entry in index:
        print(entry["file"], entry["config"])


if __name__ == "__main__":
    main()
