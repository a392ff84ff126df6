"""Every view draws and names the weights by their kind (softmax DCNv3, sigmoid DCNv2, free DCNv4):
hand-made layer records of each kind, the encodings checked against numbers worked out by hand or
by an independent reference (scipy's entropy), and the legends and payloads naming the kind."""

import dataclasses
import json

import numpy as np
import pytest
from fakes import make_layer, make_probe
from scipy.stats import entropy as scipy_entropy

from dcnv3.analysis.probe import WEIGHT_KINDS
from dcnv3.draw.overlay import group_colours, line_width
from dcnv3.draw.video_overlay import draw_frame
from dcnv3.record import fields, stats, trace, weight_encoding
from dcnv3.record.track_stats import AUTO_LAYER
from viz_app.views import exports, render, video_render

RNG = np.random.default_rng(14)


def record_of(kind: str, weights=None, grid=(8, 8), groups=2, **kw):
    """A 3x3 record of ``kind`` with zero offsets and the given (H, W, G, 9) weights (default: the
    kind's initial state: softmax 1/9, sigmoid 0.5, free 0)."""
    if weights is None:
        weights = np.full((*grid, groups, 9), {"softmax": 1 / 9, "sigmoid": 0.5, "free": 0.0}[kind], np.float32)
    return dataclasses.replace(make_layer(grid=grid, groups=groups, weights=weights, **kw), weight_kind=kind)


def signed_weights(grid=(8, 8), groups=2):
    """DCNv4-like free scalars: signed, a few large, so relative sizes and hollow marks both show."""
    return RNG.normal(0, 1, (*grid, groups, 9)).astype(np.float32)


# -- the encoding --------------------------------------------------------------------------------------
def test_softmax_encoding_is_relative_to_uniform():
    uniform = weight_encoding.encode_weights(np.full((1, 9), 1 / 9), "softmax")
    np.testing.assert_allclose(uniform.relative, 1.0)
    np.testing.assert_allclose(uniform.size, 1.0) and np.testing.assert_allclose(uniform.opacity, 1.0)
    one_hot = weight_encoding.encode_weights(np.eye(9)[:1], "softmax")
    assert one_hot.size[0, 0] == pytest.approx(2.5) and one_hot.opacity[0, 0] == 1.0  # 9x uniform: capped
    np.testing.assert_allclose(one_hot.size[0, 1:], 0.4)  # weight 0: the smallest, faintest mark
    np.testing.assert_allclose(one_hot.opacity[0, 1:], 0.25)
    assert not one_hot.negative.any()


def test_sigmoid_encoding_is_the_absolute_value():
    w = np.array([[0.0, 0.04, 0.25, 0.5, 0.81, 1.0, 0.5, 0.5, 0.5]])
    encoding = weight_encoding.encode_weights(w, "sigmoid")
    np.testing.assert_allclose(encoding.relative, w)
    np.testing.assert_allclose(encoding.size[0, :6], [0.4, 0.4, 0.5, np.sqrt(0.5), 0.9, 1.0])
    np.testing.assert_allclose(encoding.opacity[0, :6], [0.25, 0.28, 0.4375, 0.625, 0.8575, 1.0])
    # Independent per point: raising the other points leaves a point's mark as it is (a softmax
    # or a group-relative scale would shrink it).
    raised = w.copy()
    raised[0, 6:] = 1.0
    np.testing.assert_allclose(weight_encoding.encode_weights(raised, "sigmoid").size[0, :6], encoding.size[0, :6])


def test_free_encoding_is_relative_to_the_group_mean_magnitude_with_negatives_hollow():
    m = np.array([[-2.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.3, -0.3, 0.3, -0.3, 0.3, -0.3, 0.3, -0.3, 0.3]])
    encoding = weight_encoding.encode_weights(m, "free")
    mean = 4.0 / 9  # group 0's mean |m|
    np.testing.assert_allclose(encoding.relative[0, :3], [2 / mean, 1 / mean, 1 / mean])
    np.testing.assert_allclose(encoding.size[0, :3], [np.sqrt(4.5), 1.5, 1.5])  # area ~ |m| / mean |m|
    np.testing.assert_allclose(encoding.relative[1], 1.0)  # equal magnitudes: all at the group mean
    np.testing.assert_array_equal(encoding.negative, m < 0)
    # Scale-free: the same shape at a 1000th of the size is drawn the same (no absolute scale).
    np.testing.assert_allclose(weight_encoding.encode_weights(m / 1000, "free").size, encoding.size)
    # The untrained DCNv4 (all 0): every point the smallest and faintest, none negative.
    zero = weight_encoding.encode_weights(np.zeros((2, 9)), "free")
    np.testing.assert_allclose(zero.size, 0.4) and np.testing.assert_allclose(zero.opacity, 0.25)
    assert not zero.negative.any()


def test_unknown_kind_is_refused_and_point_style_follows_the_encoding():
    with pytest.raises(ValueError, match="unknown weight kind"):
        weight_encoding.encode_weights(np.ones((1, 9)), "tanh")
    m = signed_weights()[0, 0]
    radius, opacity = render.point_style(m, 10.0, "free")
    encoding = weight_encoding.encode_weights(m, "free")
    np.testing.assert_allclose(radius, 10.0 * encoding.size) and np.testing.assert_allclose(opacity, encoding.opacity)


# -- entropy ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(WEIGHT_KINDS))
def test_entropy_of_magnitudes_normalised_per_group_matches_scipy(kind):
    weights = {
        "softmax": RNG.dirichlet(np.ones(9), (8, 8, 2)),
        "sigmoid": RNG.uniform(0, 1, (8, 8, 2, 9)),
        "free": signed_weights(),
    }[kind].astype(np.float32)
    record = record_of(kind, weights)
    got = stats.weight_entropy(record)
    # scipy normalises its input to sum 1: the entropy of |m| / sum |m|, in base P for [0, 1].
    expected = scipy_entropy(np.abs(weights.astype(np.float64)), base=9, axis=-1)
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_entropy_by_hand_for_each_kind():
    two = np.zeros((1, 1, 1, 9), np.float32)
    two[..., :2] = [-1.0, 1.0]  # free: two points of equal magnitude, opposite signs
    assert stats.weight_entropy(record_of("free", two, grid=(1, 1), groups=1))[0, 0, 0] == pytest.approx(
        np.log(2) / np.log(9)
    )
    one = np.zeros((1, 1, 1, 9), np.float32)
    one[..., 4] = 1.0  # sigmoid: one point fully on, the rest off
    assert stats.weight_entropy(record_of("sigmoid", one, grid=(1, 1), groups=1))[0, 0, 0] == pytest.approx(0.0)
    # Initial states: softmax 1/9, sigmoid 0.5 everywhere, free 0 everywhere: no point preferred.
    for kind in WEIGHT_KINDS:
        np.testing.assert_allclose(stats.weight_entropy(record_of(kind)), 1.0, atol=1e-6)


def test_entropy_field_and_its_colour_bar_say_what_the_entropy_is_of():
    for kind, words in (
        ("softmax", "of the softmax weights (DCNv3)"),
        ("sigmoid", "of |m| normalised per group (sigmoid weights, DCNv2)"),
        ("free", "of |m| normalised per group (free weights, DCNv4)"),
    ):
        record = record_of(kind, None if kind != "free" else signed_weights())
        probe = make_probe([record])
        assert fields.field_title("weight entropy", record) == "weight entropy " + words
        np.testing.assert_allclose(
            fields.field_values(probe, record, "weight entropy"), stats.weight_entropy(record).mean(axis=-1)
        )
        picture, _ = render.field_overlay(np.zeros((64, 64, 3), np.uint8), probe, record, "weight entropy")
        assert picture.shape[0] > 640  # the canvas (64 px enlarged 10x) plus the colour bar strip


# -- drawing ----------------------------------------------------------------------------------------------
def colour_at(canvas, xy):
    return tuple(int(v) for v in canvas[int(xy[1]), int(xy[0])])


def test_negative_free_weights_are_drawn_as_hollow_rings():
    locations = np.array([[[20.0, 30.0], [70.0, 30.0]]])  # one group, two points
    m = np.array([[-1.0, 1.0]])  # equal magnitude, opposite signs: the same radius
    canvas = render.draw_samples(np.zeros((60, 100, 3), np.uint8), locations, m, weight_kind="free")
    colour = group_colours(1)[0]
    radius, _ = render.point_style(m, 4.5, "free")  # line width 1 on a 100 px canvas
    assert radius[0, 0] == radius[0, 1] == pytest.approx(4.5)
    assert colour_at(canvas, (70, 30)) == colour  # positive: a filled disc
    assert max(colour_at(canvas, (20, 30))) < 16  # negative: a hollow centre (anti-aliasing aside)
    ring = render.hollow_ring_width(4.5)
    assert colour_at(canvas, (20 + 4.5 - ring / 2, 30)) == colour  # ... and a ring in the group's colour
    # The same weights as a softmax: both filled.
    filled = render.draw_samples(np.zeros((60, 100, 3), np.uint8), locations, np.array([[0.5, 0.5]]))
    assert colour_at(filled, (20, 30)) == colour_at(filled, (70, 30)) == colour


def test_sigmoid_points_are_sized_by_their_value():
    locations = np.array([[[25.0, 30.0], [75.0, 30.0]]])
    canvas = render.draw_samples(
        np.zeros((60, 100, 3), np.uint8), locations, np.array([[1.0, 0.25]]), weight_kind="sigmoid"
    )
    widths = [(canvas[30, x - 12 : x + 12].max(axis=-1) > 0).sum() for x in (25, 75)]
    # radius 4.5 (w = 1) and 2.25 (w = 0.25, sqrt): disc widths ~9 and ~4.5 px, anti-aliased + outline
    assert 10 <= widths[0] <= 13 and 5 <= widths[1] <= 9 and widths[0] >= widths[1] + 3


def test_cell_annotator_reads_the_record_kind():
    m = np.zeros((8, 8, 1, 9), np.float32)
    m[..., 4] = -3.0  # the centre point negative and large, the rest 0
    record = record_of("free", m, groups=1)
    probe = make_probe([record], (64, 64))
    overlay, scale = render.sampling_overlay(np.zeros((64, 64, 3), np.uint8), probe, record, (4, 4))
    centre = probe.sampling_locations(record, (4, 4))[0, 4] * scale  # under the cell's cross
    unit = line_width(overlay)
    radius = 4.5 * unit * weight_encoding.encode_weights(m[4, 4], "free").size[0, 4]  # |m| 9x the mean: 2.5x
    ring = render.hollow_ring_width(radius)
    diagonal = np.array([1.0, 1.0]) / np.sqrt(2)  # off the cross' arms
    assert colour_at(overlay, centre + (radius - ring / 2) * diagonal) == group_colours(1)[0]  # the ring
    assert max(colour_at(overlay, centre + (radius - ring - 2) * diagonal)) < 16  # hollow inside


# -- figures ----------------------------------------------------------------------------------------------
def test_zoom_figure_encodes_and_names_each_kind():
    m = signed_weights()
    for kind, weights in (
        ("softmax", RNG.dirichlet(np.ones(9), (8, 8, 2))),
        ("sigmoid", RNG.uniform(0, 1, (8, 8, 2, 9))),
        ("free", m),
    ):
        record = record_of(kind, weights.astype(np.float32))
        probe = make_probe([record])
        figure = render.sampling_figure(np.zeros((64, 64, 3), np.uint8), probe, record, (3, 4)).to_figure()
        markers = [t for t in figure.data if (t.name or "").startswith("group")]
        encoding = weight_encoding.record_encoding(record, (3, 4))
        for g, trace_ in enumerate(markers):
            np.testing.assert_allclose(trace_.marker.size, 16.0 * encoding.size[g])
            np.testing.assert_allclose(trace_.marker.opacity, encoding.opacity[g])
            symbols = ["circle-open" if n else "circle" for n in encoding.negative[g]]
            assert list(trace_.marker.symbol) == symbols
            assert all(("negative: subtracts" in text) == bool(n) for text, n in zip(trace_.text, encoding.negative[g]))
        title = figure.layout.title.text
        assert weight_encoding.KIND_NAMES[kind] in title
        hollow = [t for t in figure.data if t.name == "hollow: negative weight"]
        assert ("hollow rings: negative weights" in title) == (kind == "free") == bool(hollow)
    assert any("circle-open" in t.marker.symbol for t in markers)  # the free record has negatives here


def test_weight_matrices_colour_scale_and_title_per_kind():
    m = signed_weights()
    sigmoid = record_of("sigmoid", RNG.uniform(0.2, 0.7, (8, 8, 2, 9)).astype(np.float32))
    free = record_of("free", m)
    softmax = record_of("softmax")
    figure = render.weight_matrices_figure(sigmoid, (1, 1)).to_figure()
    assert (figure.layout.coloraxis.cmin, figure.layout.coloraxis.cmax) == (0, 1)  # absolute [0, 1]
    assert "sigmoid (DCNv2)" in figure.layout.title.text
    figure = render.weight_matrices_figure(free, (1, 1)).to_figure()
    top = float(np.abs(m[1, 1]).max())
    assert figure.layout.coloraxis.cmin == pytest.approx(-top) and figure.layout.coloraxis.cmax == pytest.approx(top)
    assert "free (DCNv4)" in figure.layout.title.text and "blue < 0 < red" in figure.layout.title.text
    np.testing.assert_allclose(figure.data[0].z, m[1, 1, 0].reshape(3, 3).T, rtol=1e-6)  # signed values shown
    figure = render.weight_matrices_figure(softmax, (1, 1)).to_figure()
    assert "uniform = 1/9" in figure.layout.title.text and "softmax (DCNv3)" in figure.layout.title.text


def test_sampling_view_message_states_the_kind_and_layer_labels_name_it():
    for kind in WEIGHT_KINDS:
        record = record_of(kind, signed_weights() if kind == "free" else None)
        view = render.sampling_view(np.zeros((64, 64, 3), np.uint8), make_probe([record]), record.name, (20, 30))
        assert weight_encoding.legend(kind) in view.message
        assert f"· {kind} weights ·" in render.layer_choice_label(record)
    assert "hollow rings: negative weights" in view.message and "multiply with their sign" in view.message


# -- trace ------------------------------------------------------------------------------------------------
def test_trace_multiplies_signed_weights_along_the_path():
    """Two stacked free layers on one stride-8 grid, zero offsets: every sample sits on a cell
    centre of the lower layer, so each path is parent m / G x child m / G exactly; positions reached
    by several paths add up (reference: a plain dictionary over all 9 x 9 paths)."""
    lower_m, upper_m = signed_weights(groups=1), signed_weights(groups=1)
    lower = record_of("free", lower_m, groups=1, name="model.2.dcnv4")
    upper = record_of("free", upper_m, groups=1, name="model.4.dcnv4")
    probe = make_probe([lower, upper], (64, 64))
    cell = (4, 4)
    levels = trace.trace_through_layers(probe, upper, cell, top=1000)
    assert [level.weight_kind for level in levels] == ["free", "free"]
    expected = {}
    for p, xy in enumerate(probe.sampling_locations(upper, cell)[0]):
        child = probe.cell_at(lower, *xy)
        for q, xy2 in enumerate(probe.sampling_locations(lower, child)[0]):
            key = (round(float(xy2[0]), 3), round(float(xy2[1]), 3))
            expected[key] = expected.get(key, 0.0) + float(upper_m[cell][0, p]) * float(lower_m[child][0, q])
    got = {(round(float(x), 3), round(float(y), 3)): w for (x, y), w in zip(levels[1].xy, levels[1].weight)}
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-5)
    assert (levels[1].weight < 0).any() and (levels[1].weight > 0).any()  # signs kept, not magnitudes
    # The beam keeps the largest |path weight|, whatever their sign, strongest first.
    beam = trace.trace_through_layers(probe, upper, cell, top=5)
    strongest = upper_m[cell][0][np.argsort(-np.abs(upper_m[cell][0]))[:5]]
    np.testing.assert_allclose(beam[0].weight, strongest, rtol=1e-6)
    picture, _, _ = render.trace_overlay(np.zeros((64, 64, 3), np.uint8), beam, probe.cell_centre(upper, cell))
    assert render.trace_caption(beam) == "path weight = product of free (DCNv4) weights\nsigned: hollow = negative path"
    assert picture.shape[1] == 720


# -- exports and video ------------------------------------------------------------------------------------
def test_exports_carry_the_kind(tmp_path):
    m = signed_weights()
    free = record_of("free", m, name="model.4.dcnv4")
    sigmoid = record_of("sigmoid", RNG.uniform(0, 1, (8, 8, 2, 9)).astype(np.float32), name="model.6.dcnv2")
    probe = make_probe([free, sigmoid], (64, 64), [(8, 8, 40, 40)])
    payload = exports.sampling_payload(probe, free.name, (2, 3))
    assert payload["weight_kind"] == "free" and payload["weight_meaning"] == WEIGHT_KINDS["free"]
    assert payload["weight_encoding"] == weight_encoding.legend("free")
    encoding = weight_encoding.record_encoding(free, (2, 3))
    for point in payload["points"]:
        g, k = point["group"], point["k"]
        assert point["weight"] == pytest.approx(float(m[2, 3, g, k]))
        assert point["negative"] == (m[2, 3, g, k] < 0)
        assert point["relative_weight"] == pytest.approx(float(encoding.relative[g, k]))
    json.dumps(payload)  # JSON-ready
    layers = exports.detections_payload(probe)["deformable_layers"]
    assert [(r["weight_kind"], r["weight_meaning"]) for r in layers] == [
        ("free", WEIGHT_KINDS["free"]),
        ("sigmoid", WEIGHT_KINDS["sigmoid"]),
    ]
    rows = exports.stats_rows(probe)
    assert [r["weight_kind"] for r in rows] == ["free", "sigmoid"]
    assert rows[0]["weight_entropy_of"] == weight_encoding.entropy_text("free")
    assert rows[0]["weight_entropy_mean"] == pytest.approx(float(stats.weight_entropy(free).mean()))
    overlay = np.zeros((64, 64, 3), np.uint8)
    files = exports.export_all(tmp_path, "x", overlay, probe, payload)
    arrays = np.load(files[1])
    assert str(arrays["model.4.dcnv4/weight_kind"]) == "free" and str(arrays["model.6.dcnv2/weight_kind"]) == "sigmoid"
    import cv2

    png = cv2.imread(str(files[0]))
    assert png.shape[0] > 64 and (png[64:] < 128).any()  # the legend strip below the overlay, with text
    with_csv = files[-1].read_text()
    assert "weight_kind" in with_csv.splitlines()[0] and "entropy of |m| normalised per group" in with_csv


def test_video_frames_state_the_kind_at_the_bottom():
    record = record_of("free", signed_weights())
    probe = make_probe([record], (64, 64), [(8, 8, 40, 40)])
    frame = np.full((64, 64, 3), 200, np.uint8)
    tracks = np.array([[8, 8, 40, 40, 1, 0.9, 0, 0]], np.float32)
    drawn = draw_frame(frame, probe, tracks, AUTO_LAYER, "samples", "frame 0")
    assert (drawn[-3:, :20] == 30).all()  # the legend's dark band at the bottom left
    plain = draw_frame(frame, probe, tracks, AUTO_LAYER, "field", "frame 0")  # no points: no legend
    assert not (plain[-3:, :20] == 30).all()
    assert "|m|" in dict(video_render.SERIES)["weight_entropy"]
