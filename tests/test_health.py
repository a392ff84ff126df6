"""Health flags and the effective-dilation-by-size table, on hand-made layer records."""
import numpy as np
import pytest

from dcnv3.geometry import Letterbox, kernel_offsets
from dcnv3.probe import Detections, LayerRecord, Probe
from viz_app import health


def make_layer(name="model.4.m.0.cv2.dcnv3", grid=(8, 8), groups=2, stride=8, offsets=None, weights=None,
               stage="P3/8 backbone") -> LayerRecord:
    """A 3x3, dilation-1, stride-1 DCNv3 record: zero offsets and uniform weights unless given."""
    h, w = grid
    offsets = np.zeros((h, w, groups, 9, 2), np.float32) if offsets is None else np.asarray(offsets, np.float32)
    weights = np.full((h, w, groups, 9), 1 / 9, np.float32) if weights is None else np.asarray(weights, np.float32)
    return LayerRecord(name, stage, stride, 1, grid, 3, 1, 1, 1.0, groups, 9, False, offsets, weights)


def make_probe(layers, image_shape=(64, 64), boxes=()) -> Probe:
    """A probe of an image that needed no letterbox (ratio 1, no padding)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    detections = Detections(boxes, np.linspace(0.9, 0.5, len(boxes)).astype(np.float32),
                            np.zeros(len(boxes), np.int64), {0: "thing"})
    return Probe(tuple(image_shape), Letterbox.from_shapes(image_shape, image_shape), detections, list(layers))


def flags_of(layer, image_shape=(64, 64)):
    return health.layer_health(layer, make_probe([layer], image_shape).letterbox).flags


def test_untrained_layer_is_collapsed_and_nothing_else():
    flags = flags_of(make_layer())
    assert len(flags) == 1 and flags[0].startswith("collapsed to the grid")


@pytest.mark.parametrize("shift,collapsed", [(0.04, True), (0.06, False)])
def test_collapsed_threshold(shift, collapsed):
    offsets = np.zeros((8, 8, 2, 9, 2))
    offsets[..., 0] = shift  # every point moves `shift` cells right
    offsets[:, :, 1, :, 0] = -shift  # the other group left, so groups differ
    flags = flags_of(make_layer(offsets=offsets))
    assert any(f.startswith("collapsed") for f in flags) == collapsed


def test_large_offsets_explode():
    offsets = np.zeros((8, 8, 2, 9, 2))
    offsets[:, :, 0, :, 0] = 5.0  # group 0: 5 cells right, group 1: 5 cells down; mean |offset| 5 > 4
    offsets[:, :, 1, :, 1] = 5.0
    flags = flags_of(make_layer(offsets=offsets), image_shape=(2000, 2000))  # samples stay inside
    assert "exploding off the image (mean |offset| 5.00 > 4 cells)" in flags


def test_samples_off_the_image_explode():
    offsets = np.zeros((8, 8, 2, 9, 2))
    offsets[..., 0] = 3.0  # 3 cells right: the 3 right-most columns of cells sample off the image
    offsets[:, :, 1, :, 1] = 3.0
    layer = make_layer(offsets=offsets)
    report = health.layer_health(layer, make_probe([layer]).letterbox)
    assert report.outside_share > 0.3 and report.mean_offset < 4
    assert any(f.startswith("exploding off the image (") and "% of samples" in f for f in report.flags)


def test_one_hot_weights_are_saturated():
    weights = np.zeros((8, 8, 2, 9))
    weights[..., 4] = 1.0
    offsets = np.random.default_rng(0).normal(0, 0.5, (8, 8, 2, 9, 2))
    flags = flags_of(make_layer(offsets=offsets, weights=weights))
    assert flags == ["weights saturated on one point (entropy 0.00 < 0.2)"]


def test_identical_groups_learned_the_same_thing():
    rng = np.random.default_rng(1)
    field = rng.normal(0, 0.5, (8, 8, 1, 9, 2))
    same = make_layer(offsets=np.repeat(field, 2, axis=2), grid=(8, 8))
    assert health.group_similarity(same) == pytest.approx(1.0)
    assert any(f.startswith("groups learned the same thing") for f in flags_of(same))
    different = make_layer(offsets=rng.normal(0, 0.5, (8, 8, 2, 9, 2)))
    assert abs(health.group_similarity(different)) < 0.2
    assert flags_of(different) == []


def test_group_similarity_needs_two_moving_groups():
    assert health.group_similarity(make_layer(groups=1)) is None
    offsets = np.zeros((8, 8, 2, 9, 2))
    offsets[:, :, 0] = 1.0  # group 1 never moves: no direction to compare
    assert health.group_similarity(make_layer(offsets=offsets)) is None


def test_rows_say_ok_for_a_healthy_layer_and_list_flags_otherwise():
    rng = np.random.default_rng(2)
    healthy = make_layer("healthy", offsets=rng.normal(0, 0.5, (8, 8, 2, 9, 2)))
    rows = health.health_rows(make_probe([healthy, make_layer("untrained")]))
    assert [r["layer"] for r in rows] == ["healthy", "untrained"]
    assert rows[0]["flags"] == "OK" and rows[1]["flags"].startswith("collapsed to the grid")
    assert rows[1]["|offset| cells"] == 0 and rows[1]["entropy"] == pytest.approx(1.0)
    assert "0.05" in health.thresholds_markdown() and "0.95" in health.thresholds_markdown()


def test_dilation_by_size_follows_the_coco_classes_and_background():
    # Cells are 8 px; a stretched kernel (points at twice the grid) in the small box's centre cell.
    offsets = np.zeros((8, 8, 1, 9, 2))
    offsets[1, 1, 0] = kernel_offsets(3, 1)  # grid + offset = 2 * grid: effective dilation 2
    layer = make_layer(grid=(8, 8), groups=1, offsets=offsets)
    boxes = [(4, 4, 20, 20),  # side 16 < 32: small, centre (12, 12) in cell (1, 1)
             (0, 24, 40, 64),  # side 40: medium, centre (20, 44) in cell (5, 2)
             ]
    probe = make_probe([layer], (64, 64), boxes)
    table = health.dilation_by_size(probe)[layer.name]
    np.testing.assert_allclose(table["small"], [2.0])
    np.testing.assert_allclose(table["medium"], [1.0])
    assert table["large"].size == 0
    # Background: cell centres (8c + 4, 8r + 4) inside no box, counted independently.
    centres = [(8 * c + 4, 8 * r + 4) for r in range(8) for c in range(8)]
    outside = [(x, y) for x, y in centres
               if not any(x1 <= x < x2 and y1 <= y < y2 for x1, y1, x2, y2 in boxes)]
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
    from viz_app import exports

    layer = make_layer()
    probe = make_probe([layer], (64, 64), [(8, 8, 40, 40)])
    payload = exports.sampling_payload(probe, layer.name, (2, 3))
    assert payload["weight_kind"] == "softmax" and len(payload["points"]) == 2 * 9
    assert sum(p["weight"] for p in payload["points"] if p["group"] == 1) == pytest.approx(1.0)
    assert exports.detections_payload(probe)["dcnv3_layers"][0]["weight_kind"] == "softmax"
