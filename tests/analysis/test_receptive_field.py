"""Effective receptive fields (dcnv3.analysis.receptive_field): closed forms, mass regions, letterbox mapping,
the plain-twin mapping and the bundled models.

Closed form: n stacked 3x3 convolutions with unit weights (stride 1, zero padding, no bias, one
channel) make the centre output the sum of the input weighted by the n-fold convolution of a 3x3
box, i.e. the outer product of t_n = [1, 1, 1] convolved with itself n times (trinomial
coefficients), so d centre / d input is exactly that outer product. A DCNv3 layer with zero offsets
and uniform softmax weights is a 3x3 average: the same picture times (1/9)^n.
"""

import cv2
import numpy as np
import pytest
import torch
from repo_paths import ROOT
from torch import nn

import dcnv3
from dcnv3.analysis import receptive_field as rf
from dcnv3.analysis.probe import probe
from dcnv3.ops.dcnv3 import DCNv3
from dcnv3.yolo.loading import load_model

SHAPES = ROOT / "assets" / "examples" / "shapes_0.jpg"


def trinomial_field(n: int, side: int) -> np.ndarray:
    """(side, side) outer(t_n, t_n) centred on the middle pixel, t_n = [1, 1, 1] convolved n times."""
    t = np.ones(1)
    for _ in range(n):
        t = np.convolve(t, np.ones(3))
    field = np.zeros((side, side))
    start = side // 2 - n
    field[start : start + 2 * n + 1, start : start + 2 * n + 1] = np.outer(t, t)
    return field


def unit_conv_stack(n: int) -> nn.Sequential:
    convs = [nn.Conv2d(1, 1, 3, padding=1, bias=False) for _ in range(n)]
    for conv in convs:
        nn.init.ones_(conv.weight)
        conv.weight.requires_grad_(False)
    return nn.Sequential(*convs).double()


def centre_objective(network, side):
    return lambda x: network(x)[0, 0, side // 2, side // 2]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_stacked_unit_convolutions_give_the_trinomial_field(n):
    side = 2 * n + 7  # room around the field: zero padding never cuts it
    x = torch.rand(1, 1, side, side, dtype=torch.float64)
    gradient = rf.input_gradient(centre_objective(unit_conv_stack(n), side), x)
    np.testing.assert_array_equal(gradient, trinomial_field(n, side))


def test_mass_regions_of_the_closed_form_fields():
    # n = 1: nine equal pixels; 50 % of 9 needs 5 of them, 90 % (8.1) all 9.
    counts, masks = rf.mass_regions(trinomial_field(1, 9))
    assert counts.tolist() == [5, 9] and masks.sum(axis=(1, 2)).tolist() == [5, 9]
    # n = 2: outer([1,2,3,2,1]) sums to 81: values 9, 6 (x4), 4 (x4), 3 (x4), 2 (x8), 1 (x4).
    # 50 % = 40.5: 9 + 6*4 + 4 + 4 = 41 -> 7 pixels; 90 % = 72.9: 9 + 24 + 16 + 12 + 2*6 = 73 -> 19.
    counts, masks = rf.mass_regions(trinomial_field(2, 11))
    assert counts.tolist() == [7, 19]
    field = trinomial_field(2, 11)
    assert field[masks[0]].sum() == 41 and field[masks[1]].sum() == 73
    # The 50 % set is nested in the 90 % set and holds the centre.
    assert (masks[0] <= masks[1]).all() and masks[0][5, 5]


@pytest.mark.parametrize("n", [3, 6])
def test_mass_regions_are_the_smallest_sets(n):
    field = trinomial_field(n, 2 * n + 5)
    values = np.sort(field.ravel())[::-1]
    for fraction, count, mask in zip((0.5, 0.9), *rf.mass_regions(field, (0.5, 0.9))):
        assert field[mask].sum() >= fraction * field.sum()  # holds the fraction...
        assert values[: count - 1].sum() < fraction * field.sum()  # ...and one pixel fewer cannot


def test_mass_regions_of_nothing():
    counts, masks = rf.mass_regions(np.zeros((4, 4)))
    assert counts.tolist() == [0, 0] and not masks.any()
    with pytest.raises(ValueError):
        rf.mass_regions(np.ones(3), (0.0,))


class _ChannelsLast(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def averaging_dcnv3() -> nn.Module:
    """A one-channel DCNv3 that is a 3x3 average: zero offsets and mask logits (the reference's
    init: uniform 1/9 weights on the regular grid), identity input and output projections."""
    layer = DCNv3(channels=1, kernel_size=3, group=1)
    with torch.no_grad():
        for projection in (layer.input_proj, layer.output_proj):
            projection.weight.fill_(1.0)
            projection.bias.zero_()
    assert not layer.offset.weight.any() and not layer.mask.weight.any()
    return _ChannelsLast(layer).double()


@pytest.mark.parametrize("formulation", ["sparse", "gather"])
def test_uniform_dcnv3_stack_is_a_box_filter_field(formulation):
    n, side = 3, 13
    network = nn.Sequential(*[averaging_dcnv3() for _ in range(n)])
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    x = torch.rand(1, 1, side, side, dtype=torch.float64)
    dcnv3.set_default_formulation(formulation)
    try:
        gradient = rf.input_gradient(centre_objective(network, side), x)
    finally:
        dcnv3.set_default_formulation("sparse")
    np.testing.assert_allclose(gradient, trinomial_field(n, side) / 9.0**n, rtol=1e-12, atol=1e-15)


# -- the letterbox mapping, on a network whose receptive field is one known block ------------------
class _Pool8(nn.Module):
    """Output cell (r, c) is the mean of input pixels [8r, 8r+8) x [8c, 8c+8), per channel."""

    def __init__(self):
        super().__init__()
        self.register_buffer("stride", torch.tensor([8.0]))
        self.pool = nn.AvgPool2d(8)

    def forward(self, x):
        return self.pool(x)


class _FakeYOLO:
    def __init__(self, network):
        self.model = network


def test_cell_field_maps_back_through_the_letterbox():
    # 100 x 60 image at imgsz 64: ratio 0.64, resized to 64 x 38, padded 13 px top and bottom.
    image = np.random.default_rng(0).integers(0, 255, (60, 100, 3), dtype=np.uint8)
    field = rf.receptive_field(_FakeYOLO(_Pool8()), image, xy=(50.0, 30.0), module="pool", imgsz=64, smooth=0)
    box = field.letterbox
    assert box.input_shape == (64, 64) and box.ratio == pytest.approx(0.64) and box.pad == (0.0, 13.0)
    # (50, 30) -> input (32, 32.2): cell (4, 4), input pixels [32, 40) on both axes.
    assert field.target["cell"] == [4, 4] and field.target["stride"] == 8
    expected = np.zeros((64, 64))
    expected[32:40, 32:40] = 3 / 64  # each RGB channel's pixel weighs 1/64 in its output channel
    np.testing.assert_allclose(field.input_map, expected, rtol=1e-6)
    assert field.target["centre"] == pytest.approx([36 / 0.64, (36 - 13) / 0.64])
    # 50 % of 64 equal pixels is 32 of them, 90 % is 58; in original px^2: / ratio^2.
    np.testing.assert_allclose(field.areas, [32 / 0.64**2, 58 / 0.64**2])
    assert field.outside_share == 0.0
    # The heat map lies over the block's image position [50, 62.5) x [29.7, 42.2).
    heat = field.heatmap
    assert heat.shape == (60, 100) and heat.sum() == pytest.approx(1.0, abs=1e-5)
    ys, xs = np.mgrid[0:60, 0:100] + 0.5
    assert (heat * xs).sum() == pytest.approx(56.25, abs=0.6)
    assert (heat * ys).sum() == pytest.approx((36 - 13) / 0.64, abs=0.6)
    rows, cols = np.nonzero(field.masks[1])
    assert 49 <= cols.min() and cols.max() <= 62 and 29 <= rows.min() and rows.max() <= 42


def test_points_outside_the_input_and_unknown_layers_are_refused():
    image = np.zeros((60, 100, 3), np.uint8)
    with pytest.raises(ValueError, match="outside"):
        rf.receptive_field(_FakeYOLO(_Pool8()), image, xy=(500.0, 30.0), module="pool", imgsz=64)
    with pytest.raises(ValueError, match="no layer"):
        rf.receptive_field(_FakeYOLO(_Pool8()), image, "nonexistent", (5.0, 5.0), imgsz=64)


# -- the bundled DCNv3 model and its plain twin ---------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    return (
        load_model(ROOT / "assets" / "models" / "dcnv3-yolov8n.pt"),
        load_model(ROOT / "assets" / "models" / "yolov8n.pt"),
    )


def test_twin_mapping(models):
    runner, twin = rf.gradient_network(models[0]), rf.gradient_network(models[1])
    assert rf.target_module(runner, "model.6.m.0.cv2.dcnv3") == "model.6.m.0.cv2"
    assert rf.twin_modules(runner, twin, "model.6.m.0.cv2.dcnv3") == ("model.6.m.0.cv2", "model.6.m.0.cv2")
    assert type(dict(twin.named_modules())["model.6.m.0.cv2"]).__name__ == "Conv"  # the plain 3x3 conv
    shallow = nn.Module()
    shallow.model = nn.Sequential(*[nn.Identity() for _ in range(10)])
    assert rf.twin_modules(runner, shallow, "model.6.m.0.cv2.dcnv3") == ("model.6", "model.6")


def test_bundled_models_cell_and_detection_fields(models):
    dcn, plain = models
    image = cv2.imread(str(SHAPES))
    x, y = 91.4, 35.1  # the triangle near the top left
    runner, twin = rf.gradient_network(dcn), rf.gradient_network(plain)
    _name, twin_name = rf.twin_modules(runner, twin, "model.6.m.0.cv2.dcnv3")
    a = rf.receptive_field(dcn, image, "model.6.m.0.cv2.dcnv3", (x, y), imgsz=320)
    b = rf.receptive_field(plain, image, xy=(x, y), module=twin_name, imgsz=320)
    for field in (a, b):
        assert field.target["module"] == "model.6.m.0.cv2" and field.target["stride"] == 16
        assert field.target["cell"] == a.target["cell"]
        assert 0 < field.areas[0] < field.areas[1] < image.shape[0] * image.shape[1]
        # The field's strongest pixel lies within a few cells of the target cell.
        peak = np.unravel_index(np.argmax(field.heatmap), field.heatmap.shape)
        assert abs(peak[1] + 0.5 - field.target["centre"][0]) < 3 * 16 / field.letterbox.ratio
        assert abs(peak[0] + 0.5 - field.target["centre"][1]) < 3 * 16 / field.letterbox.ratio
        assert field.masks[0].sum() <= field.masks[1].sum()

    probed = probe(dcn, image, imgsz=320)
    best = int(np.argmax(probed.detections.scores))
    det = rf.receptive_field(
        dcn, image, detection=(probed.detections.boxes[best], probed.detections.classes[best]), imgsz=320
    )
    assert det.target["kind"] == "detection"
    assert det.target["box"] == pytest.approx(probed.detections.boxes[best].tolist(), abs=0.02)
    assert det.target["value"] == pytest.approx(float(probed.detections.scores[best]), abs=1e-4)
    twin_det = rf.receptive_field(plain, image, anchor=(det.target["anchor"], det.target["class"]), imgsz=320)
    assert twin_det.target["anchor"] == det.target["anchor"] and twin_det.areas[0] > 0
