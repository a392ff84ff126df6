"""dcnv3.ops: every formulation against InternImage's golden vectors, the oracle and properties."""

import json

import pytest
import torch
import torch.nn.functional as F
from fakes import random_case
from oracle import dcnv3_core_oracle
from repo_paths import DATA

from dcnv3 import dcnv3_core
from dcnv3.ops.core import dcnv3_core_gather, dcnv3_core_grid_sample, dcnv3_core_native, dcnv3_core_sparse
from dcnv3.record.geometry import kernel_offsets

GOLDEN = DATA / "golden_dcnv3"
CORE_CASES = [c for c in json.loads((GOLDEN / "index.json").read_text()) if c["kind"] == "core"]
FORMULATIONS = {
    "native": dcnv3_core_native,
    "sparse": dcnv3_core_sparse,
    "gather": dcnv3_core_gather,
    "grid_sample": dcnv3_core_grid_sample,
    "default": dcnv3_core,
}


def max_relative_error(actual, expected):
    """max |actual - expected| / max |expected|: the float32 criterion (1e-4)."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def run_core(core, case, dtype):
    tensors = [case[k].to(dtype).clone().requires_grad_() for k in ("input", "offset", "mask")]
    out = core(*tensors, **case["config"])
    out.backward(case["grad_output"].to(dtype))
    return out, [t.grad for t in tensors]


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("case", CORE_CASES, ids=[c["file"] for c in CORE_CASES])
def test_core_matches_golden_float64(case, formulation):
    data = torch.load(GOLDEN / case["file"], weights_only=True)
    out, grads = run_core(FORMULATIONS[formulation], data, torch.float64)
    expected = [data["grad_input"], data["grad_offset"], data["grad_mask"]]
    assert out.dtype == torch.float64
    assert (out - data["output"]).abs().max() < 1e-9
    for name, grad, ref in zip(("input", "offset", "mask"), grads, expected):
        assert (grad - ref).abs().max() < 1e-9, name


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("case", CORE_CASES, ids=[c["file"] for c in CORE_CASES])
def test_core_matches_golden_float32(case, formulation):
    data = torch.load(GOLDEN / case["file"], weights_only=True)
    out, grads = run_core(FORMULATIONS[formulation], data, torch.float32)
    assert out.dtype == torch.float32
    assert max_relative_error(out.double(), data["output"]) < 1e-4
    for grad, key in zip(grads, ("grad_input", "grad_offset", "grad_mask")):
        assert max_relative_error(grad.double(), data[key]) < 1e-4, key


ORACLE_CONFIGS = [
    dict(),
    dict(kernel=5, pad=2, group=3),
    dict(stride=2, in_h=9, in_w=8),
    dict(stride=3, pad=0, in_h=11, in_w=10, group=1),
    dict(dilation=2, pad=2, offset_scale=0.5),
    dict(remove_center=1, kernel=3, group=4, channels_per_group=2),
    dict(kernel=1, pad=0),
    dict(spread=40.0),  # almost every sample far outside the image
    dict(n=1, in_h=1, in_w=1),
]


@pytest.mark.parametrize("formulation", ["native", "sparse", "gather", "grid_sample"])
@pytest.mark.parametrize("config", ORACLE_CONFIGS, ids=[str(c) for c in ORACLE_CONFIGS])
def test_formulations_match_oracle_with_gradients(config, formulation):
    inputs, offset, mask, core_config = random_case(seed=len(str(config)), **config)
    tensors = [t.clone().requires_grad_() for t in (inputs, offset, mask)]
    oracle_tensors = [t.clone().requires_grad_() for t in (inputs, offset, mask)]
    out = FORMULATIONS[formulation](*tensors, **core_config)
    expected = dcnv3_core_oracle(*oracle_tensors, **core_config)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for mine, theirs in zip(tensors, oracle_tensors):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=0, atol=1e-10)


def test_integer_and_boundary_locations_match_oracle():
    """Samples on pixel centres and around the image border (the -1 / W clamp limits).

    Values are compared at exact integer locations. Gradients are compared a quarter pixel
    away: at an exact pixel centre bilinear sampling has a kink, and which one-sided slope an
    implementation reports depends on last-bit rounding of the location (InternImage's
    normalised coordinates land a hair either side).
    """
    inputs, offset, mask, config = random_case(seed=3, in_h=5, in_w=6)
    integer = torch.randint(-7, 8, offset.shape).double()
    for shift, check_grad in ((0.0, False), (0.25, True), (-0.25, True)):
        tensors = [t.clone().requires_grad_() for t in (inputs, integer + shift, mask)]
        oracle_tensors = [t.clone().requires_grad_() for t in (inputs, integer + shift, mask)]
        out = dcnv3_core(*tensors, **config)
        expected = dcnv3_core_oracle(*oracle_tensors, **config)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
        if check_grad:
            out.sum().backward()
            expected.sum().backward()
            for mine, theirs in zip(tensors, oracle_tensors):
                torch.testing.assert_close(mine.grad, theirs.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (5, 1), (3, 2)])
def test_zero_offsets_uniform_weights_is_zero_padded_average(kernel, dilation):
    inputs, offset, mask, config = random_case(
        seed=1, kernel=kernel, dilation=dilation, pad=dilation * (kernel - 1) // 2
    )
    offset.zero_()
    mask.fill_(1.0 / (kernel * kernel))
    out = dcnv3_core(inputs, offset, mask, **config)
    # Every group's channels see the same zero-padded KxK average.
    nchw = inputs.permute(0, 3, 1, 2)
    weight = torch.full((nchw.shape[1], 1, kernel, kernel), 1.0 / kernel**2, dtype=torch.float64)
    expected = F.conv2d(nchw, weight, padding=config["pad_h"], dilation=dilation, groups=nchw.shape[1]).permute(
        0, 2, 3, 1
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_integer_offset_equals_shifted_result():
    inputs, offset, mask, config = random_case(seed=2, in_h=12, in_w=12)
    offset.zero_()
    base = dcnv3_core(inputs, offset, mask, **config)
    shift_x, shift_y = 2, -1
    offset.view(*offset.shape[:3], -1, 2)[..., 0] = shift_x
    offset.view(*offset.shape[:3], -1, 2)[..., 1] = shift_y
    shifted = dcnv3_core(inputs, offset, mask, **config)
    # Output at (h, w) with offset (dx, dy) equals the zero-offset output at (h+dy, w+dx) when
    # the weights are the same there; use position-independent weights to make that hold.
    mask[:] = mask[:, :1, :1]
    base = dcnv3_core(inputs, offset * 0, mask, **config)
    shifted = dcnv3_core(inputs, offset, mask, **config)
    inner = shifted[:, 1:-1, 0:-2]  # rows h with h-1 valid, columns w with w+2 valid
    torch.testing.assert_close(inner, base[:, 0:-2, 2:], rtol=0, atol=1e-12)


def test_stride_two_equals_subsampled_stride_one():
    inputs, offset, mask, config = random_case(seed=4, in_h=11, in_w=9)
    full = dcnv3_core(inputs, offset, mask, **config)
    strided_config = dict(config, stride_h=2, stride_w=2)
    strided = dcnv3_core(inputs, offset[:, ::2, ::2].contiguous(), mask[:, ::2, ::2].contiguous(), **strided_config)
    torch.testing.assert_close(strided, full[:, ::2, ::2], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("formulation", ["native", "sparse", "gather", "grid_sample"])
def test_dtypes_round_trip(dtype, formulation):
    inputs, offset, mask, config = random_case(seed=5)
    tensors = [t.to(dtype).requires_grad_() for t in (inputs, offset, mask)]
    out = FORMULATIONS[formulation](*tensors, **config)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert all(t.grad.dtype == dtype for t in tensors)
    reference = dcnv3_core_oracle(*(t.detach().double() for t in tensors), **config)
    tolerance = {torch.float16: 2e-2, torch.bfloat16: 1e-1}.get(dtype, 1e-5)
    torch.testing.assert_close(out.double(), reference, rtol=tolerance, atol=tolerance)


def test_kernel_point_order_is_column_major():
    grid = kernel_offsets(3, 1)
    # p = i*K + j with i walking x: the first three points share x = -1.
    assert grid[:3, 0].tolist() == [-1, -1, -1] and grid[:3, 1].tolist() == [-1, 0, 1]
    assert kernel_offsets(3, 1, remove_center=True).shape == (8, 2)


class TestErrors:
    def test_channels_not_matching_groups(self):
        inputs, offset, mask, config = random_case(seed=6)
        with pytest.raises(ValueError, match="group\\*group_channels"):
            dcnv3_core(inputs[..., :-1], offset, mask, **config)

    def test_nchw_tensor_is_named(self):
        inputs, offset, mask, config = random_case(seed=6)
        with pytest.raises(ValueError, match="NCHW"):
            dcnv3_core(inputs.permute(0, 3, 1, 2), offset, mask, **config)

    def test_offset_shape_mismatch(self):
        inputs, offset, mask, config = random_case(seed=6)
        with pytest.raises(ValueError, match="offset has shape"):
            dcnv3_core(inputs, offset[..., :-2], mask, **config)
        with pytest.raises(ValueError, match="offset has shape"):
            dcnv3_core(inputs, offset[:, :-1], mask, **config)

    def test_mask_shape_mismatch(self):
        inputs, offset, mask, config = random_case(seed=6)
        with pytest.raises(ValueError, match="mask has shape"):
            dcnv3_core(inputs, offset, mask[..., :-1], **config)

    def test_remove_center_with_even_kernel(self):
        inputs, offset, mask, config = random_case(seed=6, kernel=2, pad=0)
        with pytest.raises(ValueError, match="odd kernel"):
            dcnv3_core(inputs, offset, mask, **dict(config, remove_center=1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    inputs, offset, mask, config = random_case(seed=7)
    cpu = dcnv3_core(inputs, offset, mask, **config)
    gpu = dcnv3_core(inputs.cuda(), offset.cuda(), mask.cuda(), **config)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-10)


@pytest.mark.parametrize("formulation", ["sparse", "gather"])
@pytest.mark.parametrize(
    "kernel,stride,pad,dilation,offset_scale,remove_center",
    [(3, 1, 1, 1, 1.0, 0), (3, 2, 1, 1, 1.0, 0), (3, 1, 2, 2, 0.5, 0), (5, 1, 2, 1, 2.0, 1)],
)
def test_inference_taps_equal_the_autograd_taps(
    formulation, kernel, stride, pad, dilation, offset_scale, remove_center
):
    """Without autograd the taps are computed in place on a planar buffer; with autograd out of
    place. Both follow InternImage's normalised arithmetic and must give the same output, samples
    far off the image and on the clamp limits included."""
    torch.manual_seed(kernel + stride + pad)
    n, h, w, g, d = 2, 9, 11, 2, 3
    points = kernel * kernel - remove_center
    out_h = (h + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1
    out_w = (w + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        inputs = torch.randn(n, h, w, g * d, dtype=dtype)
        offset = torch.randn(n, out_h, out_w, g * points * 2, dtype=dtype) * 4
        offset[0, 0, 0, :4] = torch.tensor([-30.0, 25.0, 0.0, 0.0])  # far outside, and exactly on the grid
        mask = torch.rand(n, out_h, out_w, g * points, dtype=dtype)
        args = (kernel, kernel, stride, stride, pad, pad, dilation, dilation, g, d, offset_scale, remove_center)
        core = {"sparse": dcnv3_core_sparse, "gather": dcnv3_core_gather}[formulation]
        with torch.no_grad():
            fast = core(inputs, offset, mask, *args)
        reference = core(inputs, offset.clone().requires_grad_(), mask, *args).detach()
        torch.testing.assert_close(fast, reference, rtol=tol, atol=tol)


def test_formulation_context_manager_restores_the_previous_choice():
    """``with formulation(name):`` as timm's ``set_layer_config``: restored after the block,
    also when it raises; the setter returns the previous choice."""
    from dcnv3 import default_formulation, formulation, set_default_formulation

    start = default_formulation()
    with formulation("gather"):
        assert default_formulation() == "gather"
        seen_inside = []

        def fail_inside():
            with formulation("grid_sample"):
                seen_inside.append(default_formulation())
                raise RuntimeError("inside")

        with pytest.raises(RuntimeError, match="inside"):
            fail_inside()
        assert seen_inside == ["grid_sample"]
        assert default_formulation() == "gather"
    assert default_formulation() == start
    previous = set_default_formulation("sparse")
    try:
        assert previous == start and default_formulation() == "sparse"
    finally:
        set_default_formulation(previous)
    with pytest.raises(ValueError, match="unknown DCNv3 formulation"):
        with formulation("cuda"):
            pass
    assert default_formulation() == start


def test_a_formulation_block_stays_in_its_own_thread(monkeypatch):
    """``with formulation(name):`` in one thread (a gradio worker) does not leak: while that thread
    waits inside its block, another thread sees the process default and ``dcnv3_core`` runs it
    there; the block's own thread runs the block's choice, and the default after the block."""
    import threading

    from dcnv3 import default_formulation, formulation
    from dcnv3.ops import core as ops

    ran = []  # (thread name, formulation) of every dcnv3_core call

    def spy(name, runner):
        def run(*args):
            ran.append((threading.current_thread().name, name))
            return runner(*args)

        return run

    for name, runner in list(ops._RUNNERS.items()):
        monkeypatch.setitem(ops._RUNNERS, name, spy(name, runner))
    start = default_formulation()
    assert start != "grid_sample"
    *tensors, config = random_case(5)
    expected = FORMULATIONS[start](*tensors, **config)
    entered, release = threading.Event(), threading.Event()
    seen, outputs, errors = {}, {}, []

    def inside():
        try:
            with formulation("grid_sample"):
                seen["inside"] = default_formulation()
                outputs["inside"] = dcnv3_core(*tensors, **config)
                entered.set()
                assert release.wait(30), "the other thread never finished"
                seen["inside, after the other thread"] = default_formulation()
            seen["inside, after the block"] = default_formulation()
        except BaseException as error:  # reported by the main thread
            errors.append(error)
            entered.set()

    def outside():
        try:
            assert entered.wait(30), "the block never opened"
            seen["outside"] = default_formulation()
            outputs["outside"] = dcnv3_core(*tensors, **config)
        except BaseException as error:
            errors.append(error)
        finally:
            release.set()

    threads = [threading.Thread(target=inside, name="inside"), threading.Thread(target=outside, name="outside")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert seen == {
        "inside": "grid_sample",
        "outside": start,
        "inside, after the other thread": "grid_sample",
        "inside, after the block": start,
    }
    assert ran == [("inside", "grid_sample"), ("outside", start)]
    torch.testing.assert_close(outputs["outside"], expected, rtol=0, atol=0)
    torch.testing.assert_close(outputs["inside"], expected, rtol=1e-10, atol=1e-10)
    assert default_formulation() == start


@pytest.mark.parametrize("core", [dcnv3_core_native, dcnv3_core_sparse, dcnv3_core_gather, dcnv3_core_grid_sample])
def test_a_retained_graph_gives_the_same_gradients_twice(core):
    """backward(retain_graph=True) and a second backward, as gradcheck and double passes do."""
    torch.manual_seed(0)
    x = torch.randn(1, 6, 7, 8, dtype=torch.float64, requires_grad=True)
    offset = torch.randn(1, 6, 7, 2 * 9 * 2, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(1, 6, 7, 2 * 9, dtype=torch.float64, requires_grad=True)
    out = core(x, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1, 2, 4, 1.0, 0)
    first = torch.autograd.grad(out.sum(), (x, offset, mask), retain_graph=True)
    second = torch.autograd.grad(out.sum(), (x, offset, mask))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
