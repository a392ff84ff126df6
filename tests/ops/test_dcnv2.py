"""dcnv3.ops.dcnv2: the layout conversion against torchvision's deform_conv2d itself, the hooked
forward, overrides and the closed form of an untrained layer.

Where deform_conv2d samples is measured, not assumed: on an input whose channels are the x and y
index ramps, bilinear interpolation returns the sampling location itself (exactly, inside the
map), so a one-hot weight per (point, channel) makes each output channel one coordinate of one
point times its mask. Those must equal ``dcnv3.record.geometry``'s locations for the captured record.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

import dcnv3
from dcnv3.analysis.probe import LayerRecord
from dcnv3.ops.dcnv2 import DCNv2, record_to_torchvision, same_padding, split_chunked_offset_mask, torchvision_to_record
from dcnv3.ops.sampling_hooks import is_deformable, override_sampling
from dcnv3.record import geometry

# Locations measured through float64 ramps: rounding only (~1e-13 cells); the brief's bound.
LOCATION_CELLS = 1e-4


def trained_like(module: DCNv2, seed: int, offset_std: float = 1.0) -> DCNv2:
    """Offsets of about ``offset_std`` cells that vary with the input, masks spread over (0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    head = module.conv_offset_mask
    with torch.no_grad():
        head.weight.normal_(0, 0.3 / head.weight[0].numel() ** 0.5, generator=generator)
        head.bias.normal_(0, offset_std, generator=generator)
    return module.double().eval()


def record_of(module: DCNv2, x: torch.Tensor) -> tuple[LayerRecord, dict]:
    """The LayerRecord of image 0, as the probe builds it from the capture (input stride 1)."""
    with dcnv3.capture(module) as layers:
        module(x)
    captured = layers[""]
    offsets, weights = captured.offsets[0].numpy(), captured.weights[0].numpy()
    record = LayerRecord(
        name="dcnv2",
        stage="test",
        stride=1,
        layer_stride=module.stride,
        grid=offsets.shape[:2],
        kernel=module.kernel_size,
        dilation=module.dilation,
        pad=module.pad,
        offset_scale=1.0,
        groups=module.group,
        points=module.points,
        remove_center=False,
        offsets=offsets,
        weights=weights,
        weight_kind=captured.weight_kind,
    )
    return record, captured


def feature_locations(record: LayerRecord, in_hw) -> np.ndarray:
    """(H, W, G, P, 2) sampling locations as input feature indices (x, y), through dcnv3.record.geometry
    (image pixel = (index + 0.5) * stride with an identity letterbox)."""
    letterbox = geometry.Letterbox.from_shapes(in_hw, in_hw)
    return geometry.sampling_locations(record, letterbox) / record.stride - 0.5


def test_round_trip_between_the_layouts_is_exact():
    torch.manual_seed(0)
    for group, k in ((1, 3), (2, 3), (3, 2), (2, 5)):
        offsets, weights = torch.randn(2, 4, 5, group, k * k, 2), torch.rand(2, 4, 5, group, k * k)
        offset, mask = record_to_torchvision(offsets, weights, k)
        assert offset.shape == (2, 2 * group * k * k, 4, 5) and mask.shape == (2, group * k * k, 4, 5)
        back = torchvision_to_record(offset, mask, group, k)
        assert torch.equal(back[0], offsets) and torch.equal(back[1], weights)
        again = record_to_torchvision(*back, k)
        assert torch.equal(again[0], offset) and torch.equal(again[1], mask)


def test_layouts_name_the_same_point():
    """Record point p = kx*K + ky with (dx, dy) is torchvision's q = ky*K + kx with (dy, dx)."""
    k, group = 3, 2
    offset = torch.zeros(1, 2 * group * k * k, 1, 1)
    g, kx, ky = 1, 2, 0
    q = ky * k + kx
    offset[0, g * 2 * k * k + 2 * q] = 7.0  # dy
    offset[0, g * 2 * k * k + 2 * q + 1] = -3.0  # dx
    offsets, _ = torchvision_to_record(offset, torch.ones(1, group * k * k, 1, 1), group, k)
    assert offsets[0, 0, 0, g, kx * k + ky].tolist() == [-3.0, 7.0]
    assert offsets.abs().sum() == 10.0


@pytest.mark.parametrize(
    "k, stride, dilation, padding, group",
    [(3, 1, 1, None, 1), (3, 2, 1, None, 2), (3, 1, 2, None, 2), (5, 2, 1, 1, 1), (2, 1, 1, 0, 2)],
)
def test_record_locations_are_where_deform_conv2d_samples(k, stride, dilation, padding, group):
    h, w = 13, 15
    module = trained_like(
        DCNv2(2 * group, 2 * group, k, stride, padding, dilation=dilation, act=False, deformable_groups=group),
        seed=k + stride + group,
    )
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    # Each offset group reads its own two input channels: the x and the y ramp.
    ramp = torch.stack([xs, ys] * group)[None]
    # A random input drives the offsets (the ramp would make them smooth); sample the ramp with them.
    drive = torch.randn(1, 2 * group, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    record, captured = record_of(module, drive)
    offset, mask = record_to_torchvision(captured.offsets, captured.weights, k)
    # One output channel per (group, point, coordinate): weight 1 at (that coordinate's channel, ky, kx).
    points = k * k
    weight = torch.zeros(group * points * 2, 2, k, k, dtype=torch.float64)
    for g in range(group):
        for p in range(points):
            kx, ky = divmod(p, k)  # record order p = kx*K + ky
            for c in range(2):
                weight[(g * points + p) * 2 + c, c, ky, kx] = 1.0
    # The weight has 2 input channels for 2*G input channels, so deform_conv2d runs G weight
    # groups: the outputs of group g read input channels 2g, 2g+1, sampled with offset group g.
    out = deform_conv2d(ramp, offset, weight, stride=stride, padding=module.pad, dilation=dilation, mask=mask)
    measured = out[0].permute(1, 2, 0).reshape(*record.grid, group, points, 2).numpy()
    weights = record.weights[..., None]
    expected = feature_locations(record, (h, w))
    inside = (
        (expected[..., 0] >= 0) & (expected[..., 0] <= w - 1) & (expected[..., 1] >= 0) & (expected[..., 1] <= h - 1)
    )
    assert inside.mean() > 0.6, "too few points inside the map to measure"
    error = np.abs(measured / weights - expected)[inside]
    assert error.max() < LOCATION_CELLS, error.max()
    # Outside, bilinear sampling with zeros reads less than the coordinate: the points really moved.
    assert np.abs(record.offsets).mean() > 0.3


def independent_output(module: DCNv2, x: torch.Tensor, record: LayerRecord) -> torch.Tensor:
    """The DCNv2 sum recomputed from the record alone with grid_sample (zeros outside, as
    torchvision's bilinear): out[o] = bias[o] + sum_{g,p,c in g} w[o, c, ky, kx] * m * x_c(loc)."""
    _n, c_in, h, w = x.shape
    loc = torch.from_numpy(feature_locations(record, (h, w)))  # (H_o, W_o, G, P, 2)
    weights = torch.from_numpy(record.weights.astype(np.float64))
    per_group = c_in // record.groups
    out = module.bias.detach().double()[:, None, None].repeat(1, *record.grid)
    for g in range(record.groups):
        for p in range(record.points):
            kx, ky = divmod(p, record.kernel)
            grid = torch.stack([2 * loc[..., g, p, 0] / (w - 1) - 1, 2 * loc[..., g, p, 1] / (h - 1) - 1], -1)
            sampled = F.grid_sample(
                x[:1, g * per_group : (g + 1) * per_group],
                grid[None],
                mode="bilinear",
                padding_mode="zeros",
                align_corners=True,
            )[0]  # (C_g, H_o, W_o)
            taps = module.weight.detach()[:, g * per_group : (g + 1) * per_group, ky, kx]  # (C_out, C_g)
            out = out + torch.einsum("oc,chw->ohw", taps, sampled * weights[..., g, p])
    return out


def test_output_equals_an_independent_sampler_at_the_record_locations():
    """Including points that leave the map (offsets of ~2 cells on a small map)."""
    module = trained_like(DCNv2(6, 5, 3, 2, deformable_groups=3, act=False), seed=4, offset_std=2.0)
    module.bn = nn.Identity()
    x = torch.randn(1, 6, 11, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        record, _ = record_of(module, x)
        out = module(x)[0]
    locations = feature_locations(record, (11, 12))
    assert ((locations < 0) | (locations[..., :1] > 11) | (locations[..., 1:] > 10)).any()
    assert torch.allclose(out, independent_output(module, x, record), atol=1e-10)


def test_hooked_forward_equals_the_plain_one_and_keeps_the_raw_tensors():
    module = trained_like(DCNv2(4, 8, 3, deformable_groups=2), seed=5).train(False)
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64)
    with torch.no_grad():
        plain = module(x)
        with dcnv3.capture(module) as layers:
            hooked = module(x)
        head = module.conv_offset_mask(x)
    assert torch.equal(plain, hooked)
    captured = layers[""]
    assert captured.weight_kind == "sigmoid" and captured.input_hw == (9, 10)
    assert captured.offsets.shape == (2, 9, 10, 2, 9, 2) and captured.weights.shape == (2, 9, 10, 2, 9)
    offset, logits = split_chunked_offset_mask(head, 18)
    assert torch.equal(captured.raw["offset"], offset) and torch.equal(captured.raw["mask_logits"], logits)
    assert torch.equal(captured.weights, torchvision_to_record(offset, logits.sigmoid(), 2, 3)[1])


def test_untrained_layer_is_half_a_convolution():
    """Zero-init head: regular grid, every mask sigmoid(0) = 1/2, so before BN the layer is
    0.5 * conv2d + bias (the fork's init)."""
    module = DCNv2(3, 4, 3, 2, act=False).double()
    with torch.no_grad():
        module.bias.normal_()
    module.bn = nn.Identity()
    x = torch.randn(1, 3, 10, 9, dtype=torch.float64)
    expected = 0.5 * F.conv2d(x, module.weight, None, 2, 1) + module.bias[:, None, None]
    assert torch.allclose(module(x), expected, atol=1e-12)


def test_overrides_sample_the_grid_and_spread_the_masks():
    module = trained_like(DCNv2(4, 4, 3, deformable_groups=2, act=False), seed=6)
    module.bn = nn.Identity()
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        offset, mask, _ = module.offset_and_mask(x)
        with override_sampling([module]):
            grid = module(x)
        with override_sampling([module], offsets_to_grid=False, uniform_weights=True):
            uniform = module(x)
        ref_grid = deform_conv2d(x, torch.zeros_like(offset), module.weight, module.bias, padding=1, mask=mask)
        spread = mask.unflatten(1, (2, 9)).mean(2, keepdim=True).expand(-1, -1, 9, -1, -1).flatten(1, 2)
        ref_uniform = deform_conv2d(x, offset, module.weight, module.bias, padding=1, mask=spread)
        assert not torch.allclose(grid, module(x))
    assert torch.allclose(grid, ref_grid, atol=1e-12) and torch.allclose(uniform, ref_uniform, atol=1e-12)


def test_protocol_attributes_and_gradients_to_the_offset_head():
    module = DCNv2(4, 6, 3, 2, dilation=2, deformable_groups=2)
    assert is_deformable(module) and DCNv2.weight_kind in dcnv3.WEIGHT_KINDS
    assert (module.kernel_size, module.stride, module.pad, module.dilation, module.group, module.points) == (
        3,
        2,
        2,
        2,
        2,
        9,
    )
    assert same_padding(3, 1) == 1 and same_padding(2, 1) == 1 and same_padding(3, 3) == 3
    assert list(module.sampling_head_parameters()) == list(module.conv_offset_mask.parameters())
    assert sorted(k for k in module.state_dict() if not k.startswith("bn.")) == [
        "bias",
        "conv_offset_mask.bias",
        "conv_offset_mask.weight",
        "weight",
    ]
    x = torch.randn(2, 4, 12, 12)
    module(x).square().mean().backward()
    assert module.conv_offset_mask.weight.grad.abs().sum() > 0 and module.weight.grad.abs().sum() > 0
    assert module(x).shape == (2, 6, 6, 6)


def test_non_finite_and_huge_offsets_sample_zeros_instead_of_crashing():
    """torchvision's CPU kernel casts locations to int unchecked: NaN / inf / 1e30 offsets read
    outside memory (a segfault seen under ultralytics' FLOPs count on torch.empty input). Bounded,
    they sample only zeros, as any offset that leaves the map does."""
    module = DCNv2(2, 3, 3, act=False).double().eval()
    module.bn = nn.Identity()
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64)
    far = torch.zeros(1, 18, 6, 7, dtype=torch.float64)
    far[:, 0::2] = 1e4  # every point 1e4 rows away: outside, zeros
    mask = torch.ones(1, 9, 6, 7, dtype=torch.float64)
    reference = deform_conv2d(x, far, module.weight, module.bias, padding=1, mask=mask)
    assert torch.allclose(reference, module.bias.detach()[:, None, None].expand_as(reference[0]))
    for value in (float("nan"), float("inf"), -float("inf"), 1e30, -1e30):
        offset = torch.full((1, 18, 6, 7), value, dtype=torch.float64)
        out = deform_conv2d(x, module.bounded(offset, (6, 7)), module.weight, module.bias, padding=1, mask=mask)
        assert torch.equal(out, reference)
    moderate = torch.randn(1, 18, 6, 7, dtype=torch.float64) * 3
    assert torch.equal(module.bounded(moderate, (6, 7)), moderate)
