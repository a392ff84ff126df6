"""dcnv3.ops.dcnv4: DCNv4's core and module against golden vectors of the reference, closed forms,
layouts, gradcheck, and that it runs on a CPU with nothing of DCNv4's (no CUDA, no extension)."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from repo_paths import DATA, ROOT

from dcnv3 import DCNv4, dcnv4_core, formulation
from dcnv3.ops.core import output_size
from dcnv3.ops.dcnv4 import offset_mask_channels, split_per_group_offset_mask

GOLDEN = DATA / "golden_dcnv4"
INDEX = json.loads((GOLDEN / "index.json").read_text())
CORE_CASES = [c for c in INDEX if c["kind"] == "core"]
MODULE_CASES = [c for c in INDEX if c["kind"] == "module"]
FORMULATIONS = ["native", "sparse", "gather", "grid_sample"]
# float32 against the float64 reference: max |error| / max |expected|, over the output and every
# gradient; measured at most 2.1e-6 over all cases and formulations (DCNv3's tests allow 1e-4).
FLOAT32_TOLERANCE = 2e-5


def max_relative_error(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


def run_core(case, dtype):
    inputs = case["input"].to(dtype).requires_grad_()
    offset_mask = case["offset_mask"].to(dtype).requires_grad_()
    out = dcnv4_core(inputs, offset_mask, **case["config"])
    out.backward(case["grad_output"].to(dtype))
    return out, inputs.grad, offset_mask.grad


def run_module(case, dtype):
    module = DCNv4(**case["config"]).to(dtype)
    module.load_state_dict(case["state_dict"], strict=True)
    inputs = case["input"].to(dtype).requires_grad_()
    out = module(inputs, tuple(case["hw"]) if case["pass_shape"] else None)
    out.backward(case["grad_output"].to(dtype))
    return out, inputs.grad, {name: p.grad for name, p in module.named_parameters()}


@pytest.mark.parametrize("name", FORMULATIONS)
@pytest.mark.parametrize("case", CORE_CASES, ids=[c["file"] for c in CORE_CASES])
def test_core_matches_golden_float64(case, name):
    data = torch.load(GOLDEN / case["file"], weights_only=True)
    with formulation(name):
        out, grad_input, grad_offset_mask = run_core(data, torch.float64)
    assert out.dtype == torch.float64
    assert (out - data["output"]).abs().max() < 1e-9
    assert (grad_input - data["grad_input"]).abs().max() < 1e-9
    assert (grad_offset_mask - data["grad_offset_mask"]).abs().max() < 1e-9


@pytest.mark.parametrize("name", ["native", "grid_sample"])  # the default and the reference's
@pytest.mark.parametrize("case", CORE_CASES, ids=[c["file"] for c in CORE_CASES])
def test_core_matches_golden_float32(case, name):
    data = torch.load(GOLDEN / case["file"], weights_only=True)
    with formulation(name):
        out, grad_input, grad_offset_mask = run_core(data, torch.float32)
    assert out.dtype == torch.float32
    assert max_relative_error(out, data["output"]) < FLOAT32_TOLERANCE
    assert max_relative_error(grad_input, data["grad_input"]) < FLOAT32_TOLERANCE
    assert max_relative_error(grad_offset_mask, data["grad_offset_mask"]) < FLOAT32_TOLERANCE


@pytest.mark.parametrize("name", FORMULATIONS)
@pytest.mark.parametrize("case", MODULE_CASES, ids=[c["file"] for c in MODULE_CASES])
def test_module_matches_dcnv4_module_float64(case, name):
    """DCNv4's own module (its kernel replaced by the reference core on the split): its
    state_dict loads strictly, and output, input and parameter gradients agree."""
    data = torch.load(GOLDEN / case["file"], weights_only=True)
    with formulation(name):
        out, grad_input, grad_params = run_module(data, torch.float64)
    assert out.shape == data["output"].shape
    assert (out - data["output"]).abs().max() < 1e-9
    assert (grad_input - data["grad_input"]).abs().max() < 1e-9
    assert grad_params.keys() == data["grad_params"].keys()
    for key, grad in grad_params.items():
        assert (grad - data["grad_params"][key]).abs().max() < 1e-9, key


@pytest.mark.parametrize("case", MODULE_CASES, ids=[c["file"] for c in MODULE_CASES])
def test_module_matches_dcnv4_module_float32(case):
    data = torch.load(GOLDEN / case["file"], weights_only=True)
    out, grad_input, grad_params = run_module(data, torch.float32)
    assert max_relative_error(out, data["output"]) < FLOAT32_TOLERANCE
    assert max_relative_error(grad_input, data["grad_input"]) < FLOAT32_TOLERANCE
    for key, grad in grad_params.items():
        assert max_relative_error(grad, data["grad_params"][key]) < FLOAT32_TOLERANCE, key


@pytest.mark.parametrize("case", MODULE_CASES, ids=[c["file"] for c in MODULE_CASES])
def test_state_dict_keys_and_shapes_are_dcnv4s(case):
    data = torch.load(GOLDEN / case["file"], weights_only=True)
    ours = DCNv4(**case["config"]).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in data["state_dict"].items()}


def test_offset_mask_width_is_padded_to_a_multiple_of_8():
    # G*3P: 4*27 = 108 -> 112, 2*27 = 54 -> 56, 2*24 = 48 stays, 1*3*25 = 75 -> 80.
    assert offset_mask_channels(4, 3) == 112
    assert offset_mask_channels(2, 3) == 56
    assert offset_mask_channels(2, 3, remove_center=True) == 48
    assert offset_mask_channels(1, 5) == 80
    assert DCNv4(64, group=4).offset_mask.out_features == 112


# ---------------------------------------------------------------------------------------------
# Closed forms and layouts
# ---------------------------------------------------------------------------------------------
def geometry(kernel=3, stride=1, pad=1, dilation=1, group=2, group_channels=3, offset_scale=1.0, remove_center=0):
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


def packed(n, out_h, out_w, group, points, offset=None, scalars=None, padding_fill=0.0):
    """An offset_mask of DCNv4's width from (N, Ho, Wo, G, P, 2) offsets and (N, Ho, Wo, G, P) scalars."""
    offset = torch.zeros(n, out_h, out_w, group, points, 2, dtype=torch.float64) if offset is None else offset
    blocks = torch.cat([offset.flatten(-2), scalars], dim=-1).flatten(-2)
    width = int(math.ceil(3 * group * points / 8) * 8)
    padding = torch.full((n, out_h, out_w, width - blocks.shape[-1]), padding_fill, dtype=torch.float64)
    return torch.cat([blocks, padding], dim=-1)


@pytest.mark.parametrize("name", FORMULATIONS)
@pytest.mark.parametrize("stride", [1, 2])
def test_zero_offsets_and_scalars_at_one_over_p_average_the_window(stride, name):
    """Zero offsets and every scalar 1/P: the mean of the zero-padded KxK window (average
    pooling with the padding counted). Scalars -1 give -K*K times it: signed, not normalised."""
    gen = torch.Generator().manual_seed(stride)
    n, h, w, g, d = 2, 7, 8, 2, 3
    inputs = torch.randn(n, h, w, g * d, generator=gen, dtype=torch.float64)
    out_h, out_w = output_size(h, w, 3, 3, stride, stride, 1, 1, 1, 1)
    window_mean = F.avg_pool2d(inputs.permute(0, 3, 1, 2), 3, stride, 1, count_include_pad=True)
    window_mean = window_mean.permute(0, 2, 3, 1)
    with formulation(name):
        for scalar, expected in ((1 / 9, window_mean), (-1.0, -9 * window_mean)):
            scalars = torch.full((n, out_h, out_w, g, 9), scalar, dtype=torch.float64)
            out = dcnv4_core(inputs, packed(n, out_h, out_w, g, 9, scalars=scalars), **geometry(stride=stride))
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_remove_center_leaves_out_the_centre_tap():
    """remove_center with zero offsets and scalars 1: the window sum less its centre pixel."""
    gen = torch.Generator().manual_seed(5)
    inputs = torch.randn(1, 9, 7, 4, generator=gen, dtype=torch.float64)
    for stride in (1, 2):
        out_h, out_w = output_size(9, 7, 3, 3, stride, stride, 1, 1, 1, 1)
        window_sum = 9 * F.avg_pool2d(inputs.permute(0, 3, 1, 2), 3, stride, 1).permute(0, 2, 3, 1)
        centre = inputs[:, ::stride, ::stride]
        scalars = torch.ones(1, out_h, out_w, 2, 8, dtype=torch.float64)
        out = dcnv4_core(
            inputs,
            packed(1, out_h, out_w, 2, 8, scalars=scalars),
            **geometry(stride=stride, group_channels=2, remove_center=1),
        )
        torch.testing.assert_close(out, window_sum - centre, rtol=0, atol=1e-12)


def test_whole_pixel_offset_shifts_the_sample():
    """One point (K=1), offset (dx, dy) = (2, -1), scalar m: m * input[h - 1, w + 2] (0 outside)."""
    gen = torch.Generator().manual_seed(6)
    inputs = torch.randn(1, 5, 6, 3, generator=gen, dtype=torch.float64)
    offset = torch.tensor([2.0, -1.0], dtype=torch.float64).expand(1, 5, 6, 3, 1, 2)
    scalars = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64).view(1, 1, 1, 3, 1).expand(1, 5, 6, 3, 1)
    out = dcnv4_core(
        inputs,
        packed(1, 5, 6, 3, 1, offset=offset, scalars=scalars),
        **geometry(kernel=1, pad=0, group=3, group_channels=1),
    )
    shifted = torch.zeros_like(inputs)
    shifted[:, 1:, :-2] = inputs[:, :-1, 2:]
    torch.testing.assert_close(out, shifted * torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64))


def test_padding_channels_are_ignored_and_get_no_gradient():
    data = torch.load(GOLDEN / "c_s1_g4.pt", weights_only=True)
    used = 3 * data["config"]["group"] * 9
    noisy = data["offset_mask"].clone()
    noisy[..., used:] = 1e6
    offset_mask = noisy.requires_grad_()
    out = dcnv4_core(data["input"], offset_mask, **data["config"])
    torch.testing.assert_close(out, data["output"], rtol=0, atol=1e-9)
    out.backward(data["grad_output"])
    assert offset_mask.shape[-1] > used
    assert offset_mask.grad[..., used:].abs().max() == 0


def test_split_is_dcnv3s_layout():
    """Group g's block [2P offsets | P scalars] becomes DCNv3's offset[g*2P:(g+1)*2P] and mask[g*P:(g+1)*P]."""
    group, points = 3, 4
    offset_mask = torch.arange(2 * 40, dtype=torch.float64).view(2, 1, 1, 40)  # 36 used + 4 padding
    offset, mask = split_per_group_offset_mask(offset_mask, group, points)
    assert offset.shape == (2, 1, 1, 24) and mask.shape == (2, 1, 1, 12)
    for g in range(group):
        start = g * 12  # group g's block of 3P = 12 channels
        torch.testing.assert_close(offset[0, 0, 0, g * 8 : (g + 1) * 8], torch.arange(start, start + 8.0).double())
        torch.testing.assert_close(mask[0, 0, 0, g * 4 : (g + 1) * 4], torch.arange(start + 8.0, start + 12).double())


def random_module(seed, **kwargs):
    torch.manual_seed(seed)
    module = DCNv4(**kwargs).double()
    with torch.no_grad():
        module.offset_mask.weight.normal_(0, 0.3)
        module.offset_mask.bias.normal_(0, 1)
    return module


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(stride=2),
        dict(dw_kernel_size=3, center_feature_scale=True),
        dict(without_pointwise=True, remove_center=True),
    ],
    ids=["default", "stride2", "dw_cfs", "nopw_rmc"],
)
def test_nchw_and_nlc_inputs_give_the_same_result(kwargs):
    """DCNv4's own (N, L, C) + shape, and the YOLO extra_modules copy's (N, C, H, W)."""
    module = random_module(0, channels=32, group=2, **kwargs)
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(2, 32, 7, 9, generator=gen, dtype=torch.float64)
    out_nchw = module(image)
    out_nlc = module(image.flatten(2).transpose(1, 2), (7, 9))
    out_h, out_w = module.output_hw(7, 9)
    assert out_nchw.shape == (2, 32, out_h, out_w)
    assert out_nlc.shape == (2, out_h * out_w, 32)
    torch.testing.assert_close(out_nlc, out_nchw.flatten(2).transpose(1, 2), rtol=0, atol=1e-12)
    assert module(image, (7, 9)).equal(out_nchw)


@pytest.mark.parametrize("stride", [1, 2])
def test_module_with_identity_projections_averages_the_window(stride):
    """offset_mask predicting zero offsets and scalars 1/P (bias only), identity projections:
    the module is average pooling, at stride 1 and (predicting on the strided grid) at stride 2."""
    module = DCNv4(32, group=2, stride=stride).double()
    with torch.no_grad():
        module.offset_mask.bias.view(-1)[: 2 * 27].view(2, 27)[:, 18:] = 1 / 9
        for proj in (module.value_proj, module.output_proj):
            proj.weight.copy_(torch.eye(32))
    image = torch.randn(1, 32, 8, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(module(image), F.avg_pool2d(image, 3, stride, 1), rtol=0, atol=1e-12)


def test_untrained_module_outputs_zero():
    """DCNv4's init: all scalars 0 (no softmax to make them 1/P), so the core gives 0 and the
    output is output_proj's zero bias: the untrained state, not a collapse."""
    out = DCNv4(32, group=2)(torch.randn(1, 32, 5, 5))
    assert out.abs().max() == 0


def test_module_keeps_low_precision_dtypes():
    module = random_module(3, channels=32, group=2).to(torch.bfloat16)
    out = module(torch.randn(1, 32, 5, 6, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", ["native", "gather"])  # the kernel's backward; autograd's
def test_gradcheck(name):
    gen = torch.Generator().manual_seed(7)
    inputs = torch.randn(1, 3, 4, 4, generator=gen, dtype=torch.float64).requires_grad_()
    offset_mask = torch.randn(1, 3, 4, 56, generator=gen, dtype=torch.float64).mul(1.3).requires_grad_()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny calls: thread start-up would dominate on a busy CPU
    try:
        with formulation(name):
            assert torch.autograd.gradcheck(
                lambda x, om: dcnv4_core(x, om, **geometry(group_channels=2)),
                (inputs, offset_mask),
                eps=1e-6,
                atol=1e-7,
            )
    finally:
        torch.set_num_threads(threads)


def test_bad_shapes_are_refused_with_the_reason():
    inputs = torch.randn(1, 5, 5, 6)
    with pytest.raises(ValueError, match="54 are needed"):
        dcnv4_core(inputs, torch.randn(1, 5, 5, 48), **geometry())
    with pytest.raises(ValueError, match="expected"):
        dcnv4_core(inputs, torch.randn(1, 4, 5, 56), **geometry())
    module = DCNv4(32, group=2)
    with pytest.raises(ValueError, match="shape=\\(H, W\\)"):
        module(torch.randn(1, 30, 32))  # 30 tokens, not a square
    with pytest.raises(ValueError, match="takes"):
        module(torch.randn(1, 5, 5, 32))  # channels-last NHWC is neither layout


def test_runs_on_a_cpu_without_cuda_or_any_dcnv4_extension():
    """In a fresh process that sees no GPU and cannot import DCNv4's or InternImage's compiled
    packages, the module trains a step on the CPU through the default formulation (the native
    kernel where a compiler exists), equal to the pure-PyTorch gather formulation."""
    script = textwrap.dedent("""
        import importlib.abc, sys

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("DCNv4", "DCNv3", "MultiScaleDeformableAttention"):
                    raise ImportError(f"{name} is not available here")

        sys.meta_path.insert(0, Refuse())
        import torch
        assert not torch.cuda.is_available()
        from dcnv3 import DCNv4, formulation
        torch.manual_seed(0)
        module = DCNv4(32, group=2).double()
        torch.nn.init.normal_(module.offset_mask.weight, 0, 0.2)
        image = torch.randn(2, 32, 9, 9, dtype=torch.float64, requires_grad=True)
        out = module(image)
        out.square().mean().backward()
        assert module.offset_mask.weight.grad.abs().sum() > 0 and image.grad.abs().sum() > 0
        with formulation("gather"):
            assert (module(image) - out).abs().max() < 1e-12
        print("ok")
    """)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok"]


@pytest.mark.parametrize(
    "config",
    [
        dict(channels=32, group=2),
        dict(channels=32, group=2, stride=2, dw_kernel_size=3, center_feature_scale=True, remove_center=True),
    ],
    ids=["default", "stride2_dw_cfs_rmc"],
)
def test_onnx_export_matches_pytorch(tmp_path, config):
    """The module exports with the TorchScript exporter (the core's gather path) and
    onnxruntime reproduces PyTorch on an (N, C, H, W) input."""
    ort = pytest.importorskip("onnxruntime")
    module = random_module(0, **config).float().eval()
    image = torch.randn(2, 32, 13, 11, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = module(image).numpy()
    path = tmp_path / "dcnv4.onnx"
    torch.onnx.export(
        module, (image,), str(path), opset_version=17, dynamo=False, input_names=["x"], output_names=["y"]
    )
    (actual,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": image.numpy()})
    assert actual.shape == expected.shape
    assert abs(actual - expected).max() < 1e-4
