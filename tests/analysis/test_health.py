"""Health flags (``dcnv3.analysis.health``) for the three weight kinds and the effective-dilation-by-size
table, on hand-made layer records."""

import dataclasses

import numpy as np
import pytest
from fakes import make_layer, make_probe

from dcnv3.analysis import health as layer_health
from dcnv3.record.geometry import kernel_offsets
from viz_app.views import health


def flags_of(layer, image_shape=(64, 64)):
    return health.layer_health(layer, make_probe([layer], image_shape).letterbox).flags


def moving_offsets(seed=0, groups=2, grid=(8, 8), scale=0.5):
    """Offsets of a healthy-looking layer: about half a cell, different in every group and cell."""
    return np.random.default_rng(seed).normal(0, scale, (*grid, groups, 9, 2))


def test_untrained_layer_is_collapsed_and_nothing_else():
    flags = flags_of(make_layer())
    assert list(flags) == ["collapsed"] and flags["collapsed"].startswith("collapsed to the grid")


@pytest.mark.parametrize("shift,collapsed", [(0.09, True), (0.11, False)])
def test_collapsed_is_measured_in_point_spacings(shift, collapsed):
    offsets = np.zeros((8, 8, 2, 9, 2))
    offsets[..., 0] = shift  # every point moves `shift` cells right
    offsets[:, :, 1, :, 0] = -shift  # the other group left, so groups differ
    assert ("collapsed" in flags_of(make_layer(offsets=offsets))) == collapsed
    # With dilation 2 the grid's points are 2 cells apart: the same shift is half as much of a spacing.
    dilated = dataclasses.replace(make_layer(offsets=offsets * 2), dilation=2, pad=2)
    assert ("collapsed" in flags_of(dilated)) == collapsed


def test_large_offsets_explode_against_the_spacing():
    offsets = np.zeros((8, 8, 2, 9, 2))
    offsets[:, :, 0, :, 0] = 6.0  # group 0: 6 cells right, group 1: 6 cells down; 6 spacings > 5
    offsets[:, :, 1, :, 1] = 6.0
    report = health.layer_health(make_layer(offsets=offsets), make_probe([make_layer()], (2000, 2000)).letterbox)
    assert report.outside_excess <= 0 and list(report.flags) == ["exploding"]  # samples stay inside
    assert "mean |offset| 6.0 point spacings > 5" in report.flags["exploding"]


def test_exploding_counts_only_samples_the_grid_keeps_inside():
    # 8x8 cells of 8 px covering a 64 px image, pad 1: along each axis the grid's 8 cells x 3 points
    # read indices col - 1 .. col + 1, and 2 of those 24 (index -1 and 8) fall off the image. So the
    # regular grid itself has 1 - (22/24)^2 = 16 % of its samples off the image, on the border cells.
    letterbox = make_probe([make_layer()], (64, 64)).letterbox
    calm = health.layer_health(make_layer(offsets=moving_offsets(3, scale=0.2)), letterbox)
    assert calm.outside_share_reference == pytest.approx(1 - (22 / 24) ** 2)
    assert "exploding" not in calm.flags and abs(calm.outside_excess) < 0.1
    offsets = np.zeros((8, 8, 2, 9, 2))
    offsets[:, :, 0, :, 0] = 4.9  # group 0 4.9 cells right, group 1 down: < 5 spacings
    offsets[:, :, 1, :, 1] = 4.9
    pushed = health.layer_health(make_layer(offsets=offsets), letterbox)
    # Along the pushed axis index v + 4.9 stays inside while (v + 5.4) * 8 <= 64, i.e. v <= 2: 9 of 24.
    assert pushed.outside_share == pytest.approx(1 - (9 / 24) * (22 / 24))
    excess = (pushed.outside_share - (1 - (22 / 24) ** 2)) / (22 / 24) ** 2
    assert pushed.outside_excess == pytest.approx(excess) and excess > 0.5 and pushed.offset_ratio < 5
    assert list(pushed.flags) == ["exploding"] and "pushed off the image" in pushed.flags["exploding"]


def test_one_hot_weights_are_saturated():
    weights = np.zeros((8, 8, 2, 9))
    weights[..., 4] = 1.0
    flags = flags_of(make_layer(offsets=moving_offsets(), weights=weights))
    assert list(flags) == ["saturated"] and "1.00 of 9 points" in flags["saturated"]


def test_two_points_of_nine_are_not_saturated():
    weights = np.zeros((8, 8, 2, 9))
    weights[..., 3:5] = 0.5  # two points share the weight: 9 ** (log 2 / log 9) = 2 effective points
    report = health.layer_health(
        make_layer(offsets=moving_offsets(), weights=weights), make_probe([make_layer()]).letterbox
    )
    assert report.effective_points == pytest.approx(2.0) and report.flags == {}


def test_identical_groups_learned_the_same_thing():
    rng = np.random.default_rng(1)
    field = rng.normal(0, 0.5, (8, 8, 1, 9, 2))
    same = make_layer(offsets=np.repeat(field, 2, axis=2), grid=(8, 8))
    assert health.group_similarity(same) == pytest.approx(1.0)
    assert list(flags_of(same)) == ["same_groups"]
    different = make_layer(offsets=rng.normal(0, 0.5, (8, 8, 2, 9, 2)))
    assert abs(health.group_similarity(different)) < 0.2
    assert flags_of(different) == {}


def test_group_similarity_needs_two_moving_groups():
    assert health.group_similarity(make_layer(groups=1)) is None
    offsets = np.zeros((8, 8, 2, 9, 2))
    offsets[:, :, 0] = 1.0  # group 1 never moves: no direction to compare
    assert health.group_similarity(make_layer(offsets=offsets)) is None


# -- the sigmoid (DCNv2) and free (DCNv4) kinds -------------------------------------------------------


def kind_layer(kind, offsets=None, weights=None):
    return dataclasses.replace(
        make_layer(offsets=moving_offsets() if offsets is None else offsets, weights=weights), weight_kind=kind
    )


def test_sigmoid_layer_healthy_saturated_per_point_and_vanished():
    rng = np.random.default_rng(4)
    spread = 1 / (1 + np.exp(-rng.normal(0, 1.5, (8, 8, 2, 9))))  # sigmoids spread over (0, 1)
    assert flags_of(kind_layer("sigmoid", weights=spread)) == {}
    assert flags_of(kind_layer("sigmoid", weights=np.full((8, 8, 2, 9), 0.5))) == {}  # DCNv2 at init
    on_off = (rng.random((8, 8, 2, 9)) < 0.5).astype(float)  # every point at 0 or 1, several on: binary
    on_off[..., 0] = 1.0
    flags = flags_of(kind_layer("sigmoid", weights=np.clip(on_off, 0.001, 0.999)))
    assert list(flags) == ["saturated"] and "at 0 or 1" in flags["saturated"] and "one point" not in flags["saturated"]
    one = np.full((8, 8, 2, 9), 1e-4)
    one[..., 4] = 0.99  # one point on, the others off: both reasons
    flags = flags_of(kind_layer("sigmoid", weights=one))
    assert list(flags) == ["saturated"] and "one point" in flags["saturated"] and "at 0 or 1" in flags["saturated"]
    off = np.full((8, 8, 2, 9), 0.002)  # every point switched off: vanished, not also "binary"
    assert list(flags_of(kind_layer("sigmoid", weights=off))) == ["vanished"]
    assert list(flags_of(kind_layer("sigmoid", offsets=np.zeros((8, 8, 2, 9, 2)), weights=spread))) == ["collapsed"]


def test_free_layer_untrained_is_not_a_collapse():
    zero = np.zeros((8, 8, 2, 9))
    flags = flags_of(kind_layer("free", offsets=np.zeros((8, 8, 2, 9, 2)), weights=zero))
    assert list(flags) == ["untrained"] and "initial state" in flags["untrained"]
    signed = np.random.default_rng(5).normal(0, 0.3, (8, 8, 2, 9))  # a trained DCNv4: signed scalars
    assert flags_of(kind_layer("free", weights=signed)) == {}
    assert list(flags_of(kind_layer("free", offsets=np.zeros((8, 8, 2, 9, 2)), weights=signed))) == ["collapsed"]
    assert list(flags_of(kind_layer("free", weights=zero))) == ["vanished"]  # offsets moved, scalars all 0
    one = np.zeros((8, 8, 2, 9))
    one[..., 2] = -0.8  # all |m| on one (negative) point
    assert list(flags_of(kind_layer("free", weights=one))) == ["saturated"]
    blown = moving_offsets() * 20  # about 10 cells: 10 spacings
    assert list(flags_of(kind_layer("free", offsets=blown, weights=signed))) == ["exploding"]


def test_means_over_images_raise_the_flags_of_the_means():
    letterbox = make_probe([make_layer()]).letterbox
    calm = health.layer_health(make_layer(offsets=moving_offsets(scale=0.5)), letterbox)
    still = health.layer_health(make_layer(offsets=moving_offsets(scale=0.01)), letterbox)
    assert calm.flags == {} and list(still.flags) == ["collapsed"]
    mean = layer_health.aggregate([calm, still])
    assert mean.images == 2 and mean.mean_offset == pytest.approx((calm.mean_offset + still.mean_offset) / 2)
    assert mean.flags == {}
    assert list(layer_health.aggregate([still, still]).flags) == ["collapsed"]


def test_rows_say_ok_for_a_healthy_layer_and_list_flags_otherwise():
    rng = np.random.default_rng(2)
    healthy = make_layer("healthy", offsets=rng.normal(0, 0.5, (8, 8, 2, 9, 2)))
    rows = health.health_rows(make_probe([healthy, make_layer("untrained")]))
    assert [r["layer"] for r in rows] == ["healthy", "untrained"]
    assert rows[0]["flags"] == "OK" and rows[1]["flags"].startswith("collapsed to the grid")
    assert rows[1]["|offset| cells"] == 0 and rows[1]["entropy"] == pytest.approx(1.0)
    assert rows[1]["points"] == "9.0/9" and rows[0]["kind"] == "softmax"
    assert "0.1" in health.thresholds_markdown() and "0.95" in health.thresholds_markdown()


def test_dilation_by_size_follows_the_coco_classes_and_background():
    # Cells are 8 px; a stretched kernel (points at twice the grid) in the small box's centre cell.
    offsets = np.zeros((8, 8, 1, 9, 2))
    offsets[1, 1, 0] = kernel_offsets(3, 1)  # grid + offset = 2 * grid: effective dilation 2
    layer = make_layer(grid=(8, 8), groups=1, offsets=offsets)
    boxes = [
        (4, 4, 20, 20),  # side 16 < 32: small, centre (12, 12) in cell (1, 1)
        (0, 24, 40, 64),  # side 40: medium, centre (20, 44) in cell (5, 2)
    ]
    probe = make_probe([layer], (64, 64), boxes)
    table = health.dilation_by_size(probe)[layer.name]
    np.testing.assert_allclose(table["small"], [2.0])
    np.testing.assert_allclose(table["medium"], [1.0])
    assert table["large"].size == 0
    # Background: cell centres (8c + 4, 8r + 4) inside no box, counted independently.
    centres = [(8 * c + 4, 8 * r + 4) for r in range(8) for c in range(8)]
    outside = [(x, y) for x, y in centres if not any(x1 <= x < x2 and y1 <= y < y2 for x1, y1, x2, y2 in boxes)]
    assert table["background"].size == len(outside)
    np.testing.assert_allclose(table["background"], 1.0)
    rows = health.dilation_by_size_rows(probe)
    assert rows[0]["small (<32 px)"] == "2.00 ± 0.00 (n=1)" and rows[0]["large (>=96 px)"] == "no cells"


def test_size_classes_use_original_pixels_when_downscaled():
    layer = make_layer(grid=(8, 8), groups=1)
    probe = make_probe([layer], (64, 64), [(0, 0, 40, 40)])  # 40 px here, 80 px in a 2x larger original
    assert health.dilation_by_size(probe)[layer.name]["medium"].size == 1
    assert health.dilation_by_size(probe, pixel_scale=0.3)[layer.name]["large"].size == 1


def test_exported_payloads_carry_the_weight_kind():
    from viz_app.views import exports

    layer = make_layer()
    probe = make_probe([layer], (64, 64), [(8, 8, 40, 40)])
    payload = exports.sampling_payload(probe, layer.name, (2, 3))
    assert payload["weight_kind"] == "softmax" and len(payload["points"]) == 2 * 9
    assert sum(p["weight"] for p in payload["points"] if p["group"] == 1) == pytest.approx(1.0)
    assert exports.detections_payload(probe)["deformable_layers"][0]["weight_kind"] == "softmax"
