"""The deformable-module protocol (dcnv3.ops.sampling_hooks): capture and override on DCNv3 and DCNv4."""

import pytest
import torch

import dcnv3
from dcnv3 import DCNv3, DCNv4, capture, deformable_modules, override_sampling
from dcnv3.ops.dcnv4 import split_per_group_offset_mask
from dcnv3.ops.sampling_hooks import SamplingOverride, is_deformable


def trained_like(module):
    """Non-zero offset/mask heads, so the layer's offsets and weights are not the init's."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.3)
    return module.double().eval()


def dcnv3_layer():
    return trained_like(DCNv3(16, group=2))


def dcnv4_layer():
    return trained_like(DCNv4(16, group=2))


def run(layer, x):
    """x (N, H, W, C): DCNv3 takes it channels-last, DCNv4 (as the YOLO blocks call it) NCHW."""
    return layer(x) if isinstance(layer, DCNv3) else layer(x.permute(0, 3, 1, 2))


@pytest.mark.parametrize("make", [dcnv3_layer, dcnv4_layer], ids=["dcnv3", "dcnv4"])
def test_capture_gives_the_record_layout_and_kind(make):
    layer = make()
    x = torch.randn(1, 6, 7, 16, dtype=torch.float64)
    with capture(torch.nn.Sequential(layer)) as records:
        out = run(layer, x)
    (record,) = records.values()
    assert record.offsets.shape == (1, 6, 7, 2, 9, 2) and record.weights.shape == (1, 6, 7, 2, 9)
    assert record.input_hw == (6, 7)
    if isinstance(layer, DCNv3):
        assert record.weight_kind == "softmax"
        assert torch.allclose(record.weights.sum(-1), torch.ones(1, 6, 7, 2, dtype=torch.float64))
        assert torch.equal(record.offsets.flatten(-3), record.offset_raw)
    else:
        assert record.weight_kind == "free"
        offset, mask = split_per_group_offset_mask(layer.predict_offset_mask(x), 2, 9)
        assert torch.equal(record.offsets.flatten(-3), offset) and torch.equal(record.weights.flatten(-2), mask)
        assert (record.weights < 0).any()  # signed: no softmax
    # The hooked path computes exactly what the plain path does.
    assert torch.equal(out, run(layer, x))


@pytest.mark.parametrize("make", [dcnv3_layer, dcnv4_layer], ids=["dcnv3", "dcnv4"])
def test_override_to_grid_equals_zeroed_offset_weights(make):
    layer = make()
    x = torch.randn(2, 5, 6, 16, dtype=torch.float64)
    with override_sampling([layer]):
        overridden = run(layer, x)
    reference = make()
    with torch.no_grad():  # zero the offset rows of the prediction head: the regular grid
        if isinstance(reference, DCNv3):
            reference.offset.weight.zero_(), reference.offset.bias.zero_()
        else:
            rows = torch.arange(reference.offset_mask.out_features)
            offset_rows = (rows < 2 * 27) & ((rows % 27) < 18)
            reference.offset_mask.weight[offset_rows] = 0
            reference.offset_mask.bias[offset_rows] = 0
    assert torch.allclose(overridden, run(reference, x), atol=1e-12)
    assert not torch.allclose(overridden, run(layer, x))  # left as it was after the block
    assert "_dcnv3_sampling_override" not in layer.__dict__


def test_uniform_weights_keep_each_groups_total():
    offsets, weights = torch.randn(1, 2, 2, 3, 9, 2), torch.rand(1, 2, 2, 3, 9)
    new_offsets, new_weights = SamplingOverride(False, True).apply(offsets, weights)
    assert torch.equal(new_offsets, offsets)
    assert torch.allclose(new_weights.sum(-1), weights.sum(-1))
    assert torch.allclose(new_weights, new_weights[..., :1].expand_as(new_weights))


def test_uniform_softmax_weights_are_the_plain_average():
    layer = dcnv3_layer()
    x = torch.randn(1, 4, 4, 16, dtype=torch.float64)
    with (
        override_sampling([layer], offsets_to_grid=False, uniform_weights=True),
        capture(torch.nn.Sequential(layer)) as records,
    ):
        layer(x)
    assert torch.allclose(next(iter(records.values())).weights, torch.full((1, 4, 4, 2, 9), 1 / 9, dtype=torch.float64))


def test_deformable_modules_finds_every_operator_and_nothing_else():
    model = torch.nn.Sequential(DCNv3(16, group=2), torch.nn.Conv2d(3, 3, 3), DCNv4(16, group=2))
    assert [name for name, _ in deformable_modules(model)] == ["0", "2"]
    assert [name for name, _ in dcnv3.dcnv3_modules(model)] == ["0"]
    assert not is_deformable(torch.nn.Conv2d(3, 3, 3))
    with pytest.raises(TypeError, match="not a deformable module"):
        with override_sampling([torch.nn.Conv2d(3, 3, 3)]):
            pass


def test_pickling_inside_hooks_drops_them():
    import copy

    layer = dcnv4_layer()
    with override_sampling([layer]), capture(torch.nn.Sequential(layer)):
        clone = copy.deepcopy(layer)
    assert "_dcnv3_sampling_override" not in clone.__dict__ and "_dcnv3_capture_records" not in clone.__dict__


def test_texts_name_the_operator_of_each_weight_kind():
    from dcnv3.ops.sampling_hooks import OPERATOR_OF_KIND, WEIGHT_KINDS, describe_layers

    assert set(OPERATOR_OF_KIND) == set(WEIGHT_KINDS)
    assert describe_layers([]) == "no deformable layer"
    assert describe_layers(["sigmoid"]) == "1 DCNv2 layer"
    assert describe_layers(["softmax"] * 5) == "5 DCNv3 layers"
    assert describe_layers(["free", "softmax", "free"]) == "3 deformable layers (DCNv3, DCNv4)"
