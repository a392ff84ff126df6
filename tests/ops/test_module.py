"""dcnv3.DCNv3: InternImage's module (state_dict, init, forward), strided grids, dtypes, capture."""

import copy
import json

import pytest
import torch
from repo_paths import DATA

import dcnv3
from dcnv3 import DCNv3, DCNv3_pytorch, capture
from dcnv3.ops.sampling_hooks import CAPTURE_SLOT

GOLDEN = DATA / "golden_dcnv3"
MODULE_CASES = [c for c in json.loads((GOLDEN / "index.json").read_text()) if c["kind"] == "module"]


def run_module(case, dtype):
    data = torch.load(GOLDEN / case["file"], weights_only=True)
    module = DCNv3(**data["config"]).to(dtype)
    module.load_state_dict(data["state_dict"], strict=True)
    inputs = data["input"].to(dtype).requires_grad_()
    out = module(inputs)
    out.backward(data["grad_output"].to(dtype))
    return data, module, inputs, out


@pytest.mark.parametrize("case", MODULE_CASES, ids=[c["file"] for c in MODULE_CASES])
def test_module_matches_golden_float64(case):
    data, module, inputs, out = run_module(case, torch.float64)
    assert (out - data["output"]).abs().max() < 1e-9
    assert (inputs.grad - data["grad_input"]).abs().max() < 1e-9
    names = dict(module.named_parameters())
    assert set(names) == set(data["grad_params"])
    for name, grad in data["grad_params"].items():
        assert (names[name].grad - grad).abs().max() < 1e-9, name


@pytest.mark.parametrize("case", MODULE_CASES, ids=[c["file"] for c in MODULE_CASES])
def test_module_matches_golden_float32(case):
    data, module, inputs, out = run_module(case, torch.float32)

    def rel(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()

    assert rel(out, data["output"]) < 1e-4
    assert rel(inputs.grad, data["grad_input"]) < 1e-4
    for name, param in module.named_parameters():
        assert rel(param.grad, data["grad_params"][name]) < 1e-4, name


def test_alias_and_init():
    assert DCNv3_pytorch is DCNv3
    module = DCNv3(32, group=4)
    for head in (module.offset, module.mask):
        assert head.weight.abs().sum() == 0 and head.bias.abs().sum() == 0
    assert module.offset.out_features == 4 * 9 * 2 and module.mask.out_features == 4 * 9
    assert module.input_proj.bias.abs().sum() == 0
    keys = set(module.state_dict())
    assert {
        "dw_conv.0.weight",
        "dw_conv.1.1.weight",
        "offset.weight",
        "mask.weight",
        "input_proj.weight",
        "output_proj.weight",
    } <= keys


def test_untrained_layer_samples_regular_grid_with_uniform_weights():
    module = DCNv3(16, group=2).double()
    x = torch.randn(1, 6, 5, 16, dtype=torch.float64)
    with capture(module) as layers:
        module(x)
    record = layers[""]
    assert record.offsets.shape == (1, 6, 5, 2, 9, 2) and record.offsets.abs().max() == 0
    torch.testing.assert_close(record.weights, torch.full((1, 6, 5, 2, 9), 1 / 9, dtype=torch.float64))


@pytest.mark.parametrize("stride", [2, 3])
def test_strided_module_predicts_offsets_on_output_grid(stride):
    torch.manual_seed(0)
    module = DCNv3(16, group=2, stride=stride).double()
    with torch.no_grad():
        module.offset.weight.normal_(0, 0.5)
        module.mask.weight.normal_(0, 0.5)
    x = torch.randn(2, 13, 10, 16, dtype=torch.float64, requires_grad=True)
    with capture(module) as layers:
        out = module(x)
    expected_hw = ((13 + 2 - 3) // stride + 1, (10 + 2 - 3) // stride + 1)
    assert out.shape == (2, *expected_hw, 16)
    assert layers[""].offsets.shape[1:3] == expected_hw
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    # Stride 1 with the same weights, subsampled, is what the strided layer computes.
    dense = DCNv3(16, group=2, stride=1).double()
    dense.load_state_dict(module.state_dict())
    torch.testing.assert_close(out, dense(x)[:, ::stride, ::stride], rtol=0, atol=1e-10)


def test_strided_center_feature_scale_runs():
    module = DCNv3(16, group=2, stride=2, center_feature_scale=True)
    assert module(torch.randn(1, 9, 9, 16)).shape == (1, 5, 5, 16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_module_dtypes(dtype):
    module = DCNv3(16, group=2).to(dtype)
    out = module(torch.randn(1, 5, 5, 16).to(dtype))
    assert out.dtype == dtype and torch.isfinite(out.float()).all()


def test_capture_attaches_only_inside_the_block_and_nests():
    module = DCNv3(16, group=2)
    model = torch.nn.Sequential(module, torch.nn.Identity())
    with capture(model) as outer:
        model(torch.randn(1, 4, 4, 16))
        with capture(model) as inner:
            model(torch.randn(1, 3, 3, 16))
        assert CAPTURE_SLOT in module.__dict__
        assert copy.deepcopy(module).__dict__.get(CAPTURE_SLOT) is None  # records never travel
    assert CAPTURE_SLOT not in module.__dict__
    assert list(outer) == ["0"] and outer["0"].calls == 2 and inner["0"].calls == 1
    assert outer["0"].input_hw == inner["0"].input_hw == (3, 3)
    assert dcnv3.dcnv3_modules(model)[0][1] is module


def test_capture_reports_softmax_of_mask_logits():
    torch.manual_seed(1)
    module = DCNv3(16, group=2)
    with torch.no_grad():
        module.mask.weight.normal_()
    x = torch.randn(1, 4, 4, 16)
    with capture(module) as layers:
        module(x)
    weights = layers[""].weights
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 4, 2))
    x1 = module.dw_conv(x.permute(0, 3, 1, 2))
    expected = torch.softmax(module.mask(x1).reshape(1, 4, 4, 2, 9), -1)
    torch.testing.assert_close(weights, expected)


class TestErrors:
    def test_channels_not_divisible_by_group(self):
        with pytest.raises(ValueError, match="divisible by group"):
            DCNv3(30, group=4)

    def test_remove_center_even_kernel(self):
        with pytest.raises(ValueError, match="odd kernel"):
            DCNv3(16, kernel_size=4, group=2, remove_center=True)

    def test_nchw_input(self):
        module = DCNv3(16, group=2)
        with pytest.raises(ValueError, match="NCHW"):
            module(torch.randn(1, 16, 8, 8))

    def test_wrong_channel_count(self):
        with pytest.raises(ValueError, match="channels-last"):
            DCNv3(16, group=2)(torch.randn(1, 8, 8, 12))


def test_softmax_over_points_equals_softmax_on_every_path():
    """The CPU form (softmax over the transposed (P, rows) view), with and without autograd, gives
    torch.softmax's values and gradients, also for logits large enough to overflow exp()."""
    from dcnv3.ops.dcnv3 import softmax_over_points

    logits = torch.randn(2, 5, 7, 4 * 9, dtype=torch.float64) * 40  # exp(±160) overflows float32 unguarded
    logits[0, 0, 0, :9] = 1000.0
    expected = torch.softmax(logits.view(2, 5, 7, 4, 9), -1).reshape(logits.shape)
    with torch.no_grad():
        torch.testing.assert_close(softmax_over_points(logits, 9), expected, rtol=0, atol=1e-15)
        assert torch.isfinite(softmax_over_points(logits.float(), 9)).all()
    leaf = logits.clone().requires_grad_()
    upstream = torch.randn_like(logits)
    (softmax_over_points(leaf, 9) * upstream).sum().backward()
    reference = logits.clone().requires_grad_()
    (torch.softmax(reference.view(2, 5, 7, 4, 9), -1).reshape(logits.shape) * upstream).sum().backward()
    torch.testing.assert_close(leaf.grad, reference.grad, rtol=0, atol=1e-12)
