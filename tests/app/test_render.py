"""Render functions: shapes and dtypes, and that every mark lands on the pixel it stands for."""

import numpy as np
import plotly.io as pio
import pytest
import torch
from fakes import make_layer, make_probe
from ultralytics import YOLO

from dcnv3.analysis.probe import probe
from dcnv3.draw import overlay
from dcnv3.draw.overlay import group_colours
from dcnv3.record import fields, trace
from dcnv3.record.geometry import box_centre, cell_step, kernel_offsets
from viz_app.views import render

VIRIDIS_LOW, VIRIDIS_HIGH = (84, 1, 68), (37, 231, 253)  # BGR ends of OpenCV's viridis


@pytest.fixture(scope="module")
def untrained_probe():
    """A fresh DCNv3-YOLOv8n on a 256x320 image (no letterbox padding at imgsz 320): zero offsets,
    uniform weights, G = 2/2/4/4/8."""
    torch.manual_seed(0)
    model = YOLO("dcnv3-yolov8n.yaml")
    image = np.random.default_rng(0).integers(0, 255, (256, 320, 3), dtype=np.uint8)
    return image, probe(model, image, imgsz=320)


def blank(h=100, w=120):
    return np.zeros((h, w, 3), np.uint8)


# -- canvas --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,expected",
    [((2000, 1500), (960, 1280)), ((1080, 810), (810, 1080)), ((1, 1), (640, 640)), ((100, 50), (350, 700))],
)
def test_canvas_size(shape, expected):
    canvas, scale = render.make_canvas(np.zeros((*shape, 3), np.uint8))
    assert canvas.dtype == np.uint8 and canvas.shape[2] == 3
    assert canvas.shape[1] == pytest.approx(expected[0], abs=1) and canvas.shape[0] == pytest.approx(expected[1], abs=1)
    assert scale == (canvas.shape[1] / shape[1], canvas.shape[0] / shape[0])


def test_small_images_are_enlarged_by_whole_pixels():
    image = np.zeros((2, 3, 3), np.uint8)
    image[1, 2] = 255
    canvas, scale = render.make_canvas(image)
    assert scale == (214.0, 214.0)  # ceil(640 / 3)
    assert (canvas[214:, 428:] == 255).all() and (canvas[:214] == 0).all()


def test_canvas_and_image_coordinates_round_trip():
    xy = np.array([[10.5, 3.25], [0.0, 99.0]])
    np.testing.assert_allclose(render.canvas_to_image(render.image_to_canvas(xy, (2.0, 0.5)), (2.0, 0.5)), xy)


# -- points --------------------------------------------------------------------------------------------
def test_point_style_follows_weight_relative_to_uniform():
    radius, opacity = render.point_style(np.array([[1 / 9] * 9, [0.0] * 8 + [1.0]]), 10.0)
    np.testing.assert_allclose(radius[0], 10.0)  # uniform: the base radius, opaque
    np.testing.assert_allclose(opacity[0], 1.0)
    assert radius[1, 0] == pytest.approx(4.0) and opacity[1, 0] == pytest.approx(0.25)  # no weight: faint
    assert radius[1, 8] == pytest.approx(25.0) and opacity[1, 8] == 1.0  # 9x uniform: capped at 2.5x


def test_samples_land_on_their_pixels():
    locations = np.array([[[30.5, 40.5], [80.5, 20.5]], [[60.5, 70.5], [10.5, 90.5]]])  # (G=2, P=2, 2)
    weights = np.array([[1.0, 0.0], [0.5, 0.5]])  # P=2: relative weights 2, 0, 1, 1
    out = render.draw_samples(blank(), locations, weights)
    colours = group_colours(2)
    assert out.dtype == np.uint8 and out.shape == (100, 120, 3)
    assert tuple(out[40, 30]) == colours[0]  # heavy point: opaque, the group's colour
    assert tuple(out[70, 60]) == colours[1] and tuple(out[90, 10]) == colours[1]
    faint = out[20, 80].astype(float)  # zero weight: 25 % opacity over black
    np.testing.assert_allclose(faint, np.array(colours[0]) * 0.25, atol=2)
    assert out[5:15, 100:115].max() == 0  # nothing drawn elsewhere


def test_group_toggles_and_canvas_scale():
    locations = np.array([[[30.25, 40.25]], [[10.25, 20.25]]])
    out = render.draw_samples(blank(), locations, np.ones((2, 1)), groups=[1], scale=(2.0, 2.0))
    assert tuple(out[40, 20]) == group_colours(2)[1]  # image (10.25, 20.25) -> canvas pixel (20, 40)
    assert out[80, 60].max() == 0  # group 0 is toggled off


def test_regular_grid_is_ghosted_with_an_arrow_to_the_sample():
    regular = np.array([[[20.5, 50.5]]])
    locations = np.array([[[90.5, 50.5]]])
    out = render.draw_samples(blank(), locations, np.ones((1, 1)), regular=regular)
    ring = out[46:56, 16:26].reshape(-1, 3)
    grey = ring[(ring.max(axis=1) > 150) & (np.ptp(ring.astype(int), axis=1) < 10)]
    assert len(grey) > 0  # a light-grey ring around the grid position
    colour = np.array(group_colours(1)[0])
    assert np.abs(out[50, 50].astype(int) - colour).max() < 40  # the arrow runs along y = 50
    assert tuple(out[50, 90]) == tuple(colour)


def test_detections_and_marker():
    detections = make_probe([], (100, 120), [(10, 20, 50, 60), (70, 10, 110, 40)]).detections
    out = render.draw_detections(blank(), detections, highlight=1)
    assert out[40, 10, 1] > 150 and out[40, 30].max() == 0  # left edge drawn, inside untouched
    assert tuple(out[25, 109]) == (0, 230, 255)  # the highlighted box's right edge (last pixel 109)
    marker = render.draw_marker(blank(), (60.5, 50.5))
    assert marker[50, 60].min() > 240 and marker[10, 10].max() == 0  # white (anti-aliased) cross


def test_sampling_overlay_of_an_untrained_model_sits_on_the_regular_grid(untrained_probe):
    image, probe = untrained_probe
    layer = probe.layers[2]
    cell = (5, 7)
    overlay, scale = render.sampling_overlay(np.zeros_like(image), probe, layer, cell, scale=1.0)
    assert overlay.shape == image.shape and scale == (1.0, 1.0)
    colours = set(group_colours(layer.groups))
    # Independently: cell (r, c) of a stride-16, 3x3 layer on a 320x256 image (ratio 1, no padding)
    # has its grid points at ((c + i - 1 + .5) * 16, (r + j - 1 + .5) * 16).
    for i in range(3):
        for j in range(3):
            x, y = (cell[1] + i - 1 + 0.5) * 16, (cell[0] + j - 1 + 0.5) * 16
            if (i, j) == (1, 1):
                assert overlay[int(y), int(x)].min() > 200  # the centre point lies under the white cross
            else:
                assert tuple(overlay[int(y), int(x)]) in colours


# -- plotly figures ----------------------------------------------------------------------------------------
def test_sampling_figure_points_and_hover(untrained_probe):
    image, probe = untrained_probe
    layer = probe.layers[4]  # P5, G = 8
    cell = (3, 4)
    spec = render.sampling_figure(image, probe, layer, cell, groups=[0, 5])
    fig = spec.to_figure()  # validates every property
    markers = [t for t in fig.data if t.type == "scatter" and (t.name or "").startswith("group")]
    assert [t.name for t in markers] == ["group 0", "group 5"]
    expected = probe.sampling_locations(layer, cell)
    np.testing.assert_allclose(markers[1].x, expected[5, :, 0])
    np.testing.assert_allclose(markers[1].y, expected[5, :, 1])
    custom = np.asarray(markers[1].customdata)
    np.testing.assert_allclose(custom[:, 4:6], layer.offsets[cell][5])  # dx, dy
    np.testing.assert_allclose(custom[:, 6], layer.weights[cell][5], rtol=1e-6)
    assert "dx=" in markers[1].hovertemplate and "weight=" in markers[1].hovertemplate
    assert any(t.type == "image" for t in fig.data)  # the image crop as background
    assert fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1]  # y points down, as in the image
    sent = pio.from_json(spec.to_json())  # what gr.Plot sends the browser: a valid figure, same points
    np.testing.assert_allclose(next(t for t in sent.data if t.name == "group 5").x, expected[5, :, 0])


def test_weight_matrix_layout_follows_dcnv3_point_order():
    matrix = render.weight_matrix(np.arange(9.0), 3)
    # p = i*K + j with i walking x (columns), j walking y (rows): row j, column i holds p.
    assert matrix[0, 1] == 3 and matrix[1, 0] == 1 and matrix[2, 2] == 8
    with_hole = render.weight_matrix(np.arange(8.0), 3, remove_center=True)
    assert np.isnan(with_hole[1, 1]) and with_hole[0, 2] == 6 - 1 and with_hole[2, 0] == 2


def test_weight_matrices_figure_has_one_heatmap_per_shown_group():
    weights = np.random.default_rng(0).dirichlet(np.ones(9), size=(2, 2, 4))
    layer = make_layer(grid=(2, 2), groups=4, weights=weights)
    fig = render.weight_matrices_figure(layer, (1, 0), groups=[1, 3]).to_figure()
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 2
    np.testing.assert_allclose(np.asarray(heatmaps[1].z, float), render.weight_matrix(weights[1, 0, 3], 3), rtol=1e-6)
    assert [a.text for a in fig.layout.annotations] == ["group 1", "group 3"]


# -- trace -------------------------------------------------------------------------------------------------
def test_trace_multiplies_weights_down_the_stacked_layers(untrained_probe):
    image, probe = untrained_probe
    layer = probe.layers[3]  # model.6.m.1 (P4, G=4): below it model.6.m.0, model.4.m.1, model.4.m.0
    cell = (6, 8)
    levels = trace.trace_through_layers(probe, layer, cell, top=60)
    assert [level.layer for level in levels] == [r.name for r in reversed(probe.layers[:4])]
    # Untrained: the 4 groups' 3x3 grids coincide, so 9 positions of weight 4 x (1/9) / 4 = 1/9.
    assert len(levels[0].xy) == 9
    np.testing.assert_allclose(levels[0].weight, 1 / 9, rtol=1e-6)
    # One layer down (same stride): 3x3 grids around each of the 3x3 points make a 5x5 grid whose
    # centre is reached by 9 paths (9 x 1/81) and each corner by one (1/81).
    assert len(levels[1].xy) == 25
    np.testing.assert_allclose(levels[1].weight.sum(), 1.0, rtol=1e-6)
    centre = probe.cell_centre(layer, cell)
    weights = {tuple(np.round(xy, 3)): w for xy, w in zip(levels[1].xy, levels[1].weight)}
    assert weights[tuple(np.round(centre, 3))] == pytest.approx(1 / 9, rel=1e-5)
    assert weights[tuple(np.round(centre + [-32, -32], 3))] == pytest.approx(1 / 81, rel=1e-5)
    assert all(len(level.xy) <= 60 for level in levels)
    # Every point of a level is a sample of the lower layer at the cell under a parent point.
    lower = probe.layers[2]
    children = np.concatenate(
        [probe.sampling_locations(lower, probe.cell_at(lower, *parent)).reshape(-1, 2) for parent in levels[0].xy]
    )
    for point in levels[1].xy:
        assert np.isclose(children, point, atol=1e-3).all(axis=1).any()
    canvas, origin, _scale = render.trace_overlay(image, levels, centre)
    assert canvas.dtype == np.uint8 and max(canvas.shape[:2]) == pytest.approx(720, abs=1)
    assert 0 <= origin[0] < image.shape[1] and 0 <= origin[1] < image.shape[0]


def test_trace_reads_the_lower_layer_bilinearly(untrained_probe):
    _, probe = untrained_probe
    layer, cell = probe.layers[4], (4, 5)  # P5: its samples fall between two P4 cells (32c + 16 vs 16k + 8)
    levels = trace.trace_through_layers(probe, layer, cell, top=1000)
    centre = probe.cell_centre(layer, cell)
    assert len(levels[1].xy) == 64  # 2x2 P4 cells per sample, each a 3x3 grid: an 8x8 block
    np.testing.assert_allclose(levels[1].weight.sum(), 1.0, rtol=1e-6)
    # Split half and half, the paths stay centred on the clicked cell (a nearest-cell read would
    # drift half a P4 cell right and down).
    np.testing.assert_allclose(np.average(levels[1].xy, weights=levels[1].weight, axis=0), centre, atol=1e-6)
    for level in levels[2:]:
        np.testing.assert_allclose(np.average(level.xy, weights=level.weight, axis=0), centre, atol=1e-6)


def test_trace_of_groups_subset_and_first_layer(untrained_probe):
    _, probe = untrained_probe
    levels = trace.trace_through_layers(probe, probe.layers[0], (2, 3), groups=[1])
    assert len(levels) == 1 and len(levels[0].xy) == 9  # nothing below the first DCNv3 layer
    np.testing.assert_allclose(levels[0].weight.sum(), 1.0, rtol=1e-6)


# -- fields -------------------------------------------------------------------------------------------------
def moved_cell_probe():
    """8x8 cells of 8 px on a 64x64 image; only cell (2, 5), group 0, moves (3 cells right)."""
    offsets = np.zeros((8, 8, 2, 9, 2))
    offsets[2, 5, 0, :, 0] = 3.0
    layer = make_layer(offsets=offsets)
    return layer, make_probe([layer])


def test_field_values_shapes_and_groups():
    layer, probe = moved_cell_probe()
    magnitude = fields.field_values(probe, layer, "offset magnitude")
    assert magnitude.shape == (8, 8) and magnitude[2, 5] == pytest.approx(1.5)  # mean over 2 groups
    assert fields.field_values(probe, layer, "offset magnitude", group=0)[2, 5] == pytest.approx(3.0)
    direction = fields.field_values(probe, layer, "offset direction", group=0)
    assert direction.shape == (8, 8, 2) and tuple(direction[2, 5]) == (3.0, 0.0)
    for field in fields.FIELDS:
        assert np.isfinite(fields.field_values(probe, layer, field)).all()
    with pytest.raises(ValueError, match="unknown field"):
        fields.field_values(probe, layer, "nonsense")


def test_field_overlay_colours_each_cell_around_its_centre():
    layer, probe = moved_cell_probe()
    picture, _scale = render.field_overlay(
        blank(64, 64), probe, layer, "offset magnitude", group=0, opacity=1.0, scale=1.0
    )
    assert picture.shape[1] == 64 and picture.shape[0] > 64 and picture.dtype == np.uint8  # + colour bar
    # Cell (2, 5) spans x in [40, 48), y in [16, 24): the maximum colour exactly there.
    assert tuple(picture[20, 44]) == VIRIDIS_HIGH and tuple(picture[16, 40]) == VIRIDIS_HIGH
    assert tuple(picture[23, 47]) == VIRIDIS_HIGH
    assert tuple(picture[20, 39]) == VIRIDIS_LOW and tuple(picture[24, 44]) == VIRIDIS_LOW
    faint, _ = render.field_overlay(blank(64, 64), probe, layer, "offset magnitude", group=0, opacity=0.5, scale=1.0)
    np.testing.assert_allclose(faint[20, 44], np.array(VIRIDIS_HIGH) * 0.5, atol=1)


def test_direction_hue_and_colour_bars():
    layer, probe = moved_cell_probe()
    picture, _ = render.field_overlay(blank(64, 64), probe, layer, "offset direction", group=0, opacity=1.0, scale=1.0)
    assert tuple(picture[20, 44]) == (0, 0, 255)  # pointing right (0 degrees): pure red, full length
    assert tuple(picture[4, 4]) == (0, 0, 0)  # no displacement: black
    for field in render.FIELDS:
        strip = render.colour_bar(300, field, (0.0, 2.0))
        assert strip.shape == (46, 300, 3) and strip.dtype == np.uint8


def test_health_histograms_have_two_panels_per_layer(untrained_probe):
    _, probe = untrained_probe
    fig = render.health_histograms(probe)
    assert len(fig.data) == 2 * len(probe.layers)
    entropy = [t for t in fig.data if t.xaxis == "x2"]
    assert all(np.asarray(t.y)[-1] == pytest.approx(1.0) for t in entropy)  # uniform weights: entropy 1


# -- the composed sampling view -------------------------------------------------------------------------------
def test_sampling_view_and_its_messages(untrained_probe):
    image, probe = untrained_probe
    layer = probe.layers[1].name
    view = render.sampling_view(image, probe, layer, (100.5, 60.5))
    assert view.cell == probe.cell_at(layer, 100.5, 60.5) and view.figure is not None
    assert view.overlay.shape == (512, 640, 3) and view.scale == (2.0, 2.0)  # 320x256 enlarged x2
    assert "cell (row" in view.message
    outside = render.sampling_view(image, probe, layer, (-3, 10))
    assert outside.cell is None and "outside the image" in outside.message
    nothing = render.sampling_view(image, make_probe([], (256, 320)), None, (10, 10))
    assert "no deformable layer" in nothing.message and nothing.figure is None


def test_initial_query_and_detection_query():
    layers = [make_layer("p3", stride=8), make_layer("p5", grid=(2, 2), stride=32, stage="P5/32 backbone")]
    probe = make_probe(layers, (64, 64), [(0, 0, 60, 60), (2, 2, 10, 10)])
    x, y, layer, best = render.initial_query(probe)
    assert (x, y, best) == (30.0, 30.0, 0) and layer == probe.layer_for_box((0, 0, 60, 60)).name
    assert render.query_for_detection(probe, 1) == (6.0, 6.0, "p3")
    assert render.initial_query(make_probe([], (40, 20)))[:3] == (10.0, 20.0, None)
    assert "G=2 K=3" in render.layer_choice_label(layers[0]) and "stride 8" in render.layer_choice_label(layers[0])


def test_kernel_offsets_convention_used_by_the_tests():
    # The hand-made records above rely on DCNv3's point order; pin it here.
    assert kernel_offsets(3, 1)[1].tolist() == [-1.0, 0.0]  # p = 1: i = 0 (x = -1), j = 1 (y = 0)


# -- annotators and the one-place rules ----------------------------------------------------------------------
def test_annotators_draw_in_place_and_the_draw_functions_on_a_copy(untrained_probe):
    image, probe = untrained_probe
    layer, cell = probe.layers[2], (5, 7)
    canvas = np.zeros_like(image)
    scene = canvas.copy()
    assert overlay.CellAnnotator().annotate(scene, probe, layer, cell) is scene and scene.any()
    drawn = overlay.draw_cell(canvas, probe, layer, cell)
    assert not canvas.any() and np.array_equal(drawn, scene)  # the same pixels, the canvas untouched
    # The cell is the grid, arrows, points and the cross drawn in that order.
    steps = np.zeros_like(image)
    locations, regular, weights = (
        probe.sampling_locations(layer, cell),
        probe.regular_locations(layer, cell),
        layer.weights[cell],
    )
    overlay.RegularGridAnnotator().annotate(steps, regular)
    overlay.OffsetArrowAnnotator().annotate(steps, regular, locations, weights)
    overlay.SamplingPointAnnotator().annotate(steps, locations, weights)
    overlay.MarkerAnnotator().annotate(steps, probe.cell_centre(layer, cell))
    assert np.array_equal(steps, scene)
    boxes = make_probe([], (100, 120), [(10, 20, 50, 60)]).detections
    scene = blank()
    assert overlay.DetectionAnnotator().annotate(scene, boxes) is scene
    assert np.array_equal(scene, render.draw_detections(blank(), boxes))


def test_field_annotator_blends_each_cell_over_the_scene():
    layer, probe = moved_cell_probe()
    values = fields.field_values(probe, layer, "offset magnitude", group=0)
    colours = overlay.field_colours("offset magnitude", values, fields.field_range("offset magnitude", values))
    scene = np.full((64, 64, 3), 200, np.uint8)
    assert overlay.FieldAnnotator(opacity=0.5).annotate(scene, probe, layer, colours) is scene
    np.testing.assert_allclose(scene[20, 44], (np.array(VIRIDIS_HIGH) + 200) / 2, atol=1)
    np.testing.assert_allclose(scene[4, 4], (np.array(VIRIDIS_LOW) + 200) / 2, atol=1)
    assert fields.field_range("weight entropy", values) == (0.0, 1.0)
    assert fields.field_range("offset magnitude", np.zeros((2, 2))) == (0.0, 1.0)  # nothing moved


def test_caption_and_trace_annotators(untrained_probe):
    scene = blank(60, 200)
    overlay.CaptionAnnotator().annotate(scene, "frame 3")
    assert tuple(scene[1, 1]) == (30, 30, 30) and scene[:20, :80].max() == 255  # dark band, white text
    _, probe = untrained_probe
    levels = trace.trace_through_layers(probe, probe.layers[1], (4, 4))
    scene = blank(400, 400)
    overlay.TraceAnnotator().annotate(scene, levels, (0.0, 0.0), (1.0, 1.0))
    x, y = levels[-1].xy[0]  # the heaviest deepest point: a bright inferno disc
    assert scene[int(y), int(x)].astype(int).sum() > 300


def test_box_centre_cell_step_and_the_default_layer():
    from dcnv3.analysis.probe import default_layer

    assert box_centre((0, 0, 60, 40)) == (30.0, 20.0)
    assert box_centre(np.float32([1, 2, 4, 8, 0.9, 7])) == (2.5, 5.0)  # a tracker row: its first four
    layers = [make_layer(f"l{n}") for n in range(5)]
    assert default_layer(layers) is layers[2] and default_layer([]) is None
    assert default_layer(["a", "b"]) == "b" and make_probe(layers).default_layer() is layers[2]
    assert cell_step(make_layer(stride=16), make_probe([]).letterbox) == 16.0


def test_render_re_exports_the_pure_modules():
    assert render.trace_through_layers is trace.trace_through_layers and render.FIELDS is fields.FIELDS
    assert render.field_values is fields.field_values and render.TraceLevel is trace.TraceLevel
