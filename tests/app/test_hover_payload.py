"""viz_app.views.hover: what the Sampling view's hover is sent is the record itself and its geometry.

Decoding the arrays gives the record's float32 offsets and weights bit for bit; the geometry,
put through the arithmetic ``sampling_hover.js`` does (written out here in numpy, in the same
order), gives ``exports.sampling_payload``'s points exactly; the requests the browser makes are
answered, and bad ones get a reason instead of an exception. (The browser itself is checked
against ``/sampling`` in tests/browser/test_sampling_hover.py.)
"""

import base64
import json

import numpy as np
import pytest
from repo_paths import BUNDLED_DCNV3, EXAMPLES, FORKS

from viz_app.state.cache import LRUCache
from viz_app.views import exports
from viz_app.views.hover import (
    array_bytes,
    arrays_request,
    base_name,
    base_picture,
    hover_state,
    hover_token,
    layer_arrays,
)
from viz_app.views.render import make_canvas


@pytest.fixture(scope="module", params=["softmax", "free"])
def analysis(request):
    from viz_app.state.analyser import Analyser
    from viz_app.state.models import ModelRegistry

    model = {"softmax": BUNDLED_DCNV3, "free": FORKS / "extra_v11_dcnv4" / "extra_v11_dcnv4_best.pt"}[request.param]
    registry = ModelRegistry(models_dir=model.parent, model=model)
    return Analyser(registry).analyse(str(EXAMPLES / "bus.jpg"), model.name)


def _decode(text: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape)


def _points_as_the_browser_computes_them(state, arrays, geometry, x, y):
    """sampling_hover.js's cellAt and cellPoints, step by step in float64."""
    px, py = x * state["image_scale"][0], y * state["image_scale"][1]
    box = state["letterbox"]
    u, v = px * box["ratio"] + box["pad"][0], py * box["ratio"] + box["pad"][1]
    fx, fy = np.floor(u / geometry["stride"]), np.floor(v / geometry["stride"])
    col = int(np.floor((fx + geometry["pad"] - geometry["centre"]) / geometry["layer_stride"]))
    row = int(np.floor((fy + geometry["pad"] - geometry["centre"]) / geometry["layer_stride"]))
    height, width = geometry["grid"]
    offsets = _decode(arrays["offsets"], (height, width, geometry["groups"], geometry["points"], 2))
    weights = _decode(arrays["weights"], (height, width, geometry["groups"], geometry["points"]))
    base_x = col * geometry["layer_stride"] - geometry["pad"] + geometry["centre"]
    base_y = row * geometry["layer_stride"] - geometry["pad"] + geometry["centre"]
    points = []
    for g in range(geometry["groups"]):
        for k, (gx, gy) in enumerate(geometry["kernel_points"]):
            ox, oy = float(offsets[row, col, g, k, 0]), float(offsets[row, col, g, k, 1])
            fx_, fy_ = base_x + geometry["offset_scale"] * (gx + ox), base_y + geometry["offset_scale"] * (gy + oy)
            sx = ((fx_ + 0.5) * geometry["stride"] - box["pad"][0]) / box["ratio"]
            sy = ((fy_ + 0.5) * geometry["stride"] - box["pad"][1]) / box["ratio"]
            points.append(
                {
                    "group": g,
                    "k": k,
                    "x": sx / state["image_scale"][0],
                    "y": sy / state["image_scale"][1],
                    "weight": float(weights[row, col, g, k]),
                }
            )
    return [row, col], points


def _state(analysis):
    canvas, scale = make_canvas(analysis.image.bgr)
    probe = analysis.probe
    token = hover_token(analysis.image.key, analysis.model_name, analysis.imgsz)
    return hover_state(
        token,
        probe,
        probe.layers[0].name,
        analysis.image.scale,
        analysis.image.original_shape,
        base_name(analysis.key, None),
        canvas,
        scale,
    )


def test_arrays_are_the_records_float32_bit_for_bit(analysis):
    for record in analysis.probe.layers:
        arrays = layer_arrays(record)
        np.testing.assert_array_equal(_decode(arrays["offsets"], record.offsets.shape), record.offsets)
        np.testing.assert_array_equal(_decode(arrays["weights"], record.weights.shape), record.weights)
        assert arrays["bytes"] == array_bytes(record) == record.offsets.nbytes + record.weights.nbytes


def test_the_browsers_arithmetic_on_the_payload_gives_the_sampling_payload_exactly(analysis):
    state = json.loads(json.dumps(_state(analysis)))  # as the browser receives it
    probe = analysis.probe
    rng = np.random.default_rng(0)
    height, width = analysis.image.original_shape
    for record in probe.layers:
        geometry, arrays = state["layers"][record.name], layer_arrays(record)
        for x, y in rng.uniform(0, 1, (20, 2)) * [width, height]:
            cell = probe.cell_at(record, *analysis.image.to_processed(x, y))
            expected = exports.sampling_payload(probe, record, cell, analysis.image.scale, (x, y))
            got_cell, points = _points_as_the_browser_computes_them(state, arrays, geometry, float(x), float(y))
            assert got_cell == expected["cell"]
            want = [{key: p[key] for key in ("group", "k", "x", "y", "weight")} for p in expected["points"]]
            assert points == want  # exact: the same float64 operations in the same order


def test_state_is_small_and_names_every_layer(analysis):
    state = _state(analysis)
    assert set(state["layers"]) == {record.name for record in analysis.probe.layers}
    assert len(json.dumps(state)) < 16_000  # the arrays and the picture come separately, once each
    for record in analysis.probe.layers:
        geometry = state["layers"][record.name]
        assert len(geometry["kernel_points"]) == record.points
        assert len(geometry["colours"]) == record.groups
        assert geometry["weight_kind"] == record.weight_kind


def test_requests_are_answered_and_bad_ones_get_a_reason(analysis):
    probes, canvases = LRUCache(4), LRUCache(4)
    token = hover_token(analysis.image.key, analysis.model_name, analysis.imgsz)
    probes.put(token, analysis.probe)
    layer = analysis.probe.layers[-1].name
    assert arrays_request(probes, {"token": token, "layer": layer})["layer"] == layer
    assert "no longer cached" in arrays_request(probes, {"token": "gone", "layer": layer})["error"]
    assert "unknown layer" in arrays_request(probes, {"token": token, "layer": "model.0"})["error"]
    assert "expected" in arrays_request(probes, ["not", "a", "mapping"])["error"]
    canvas, scale = make_canvas(analysis.image.bgr)
    name = json.loads(json.dumps(base_name(analysis.key, None)))  # as the browser sends it back
    assert name != base_name(analysis.key, 0)  # another highlighted detection: another picture
    canvases.put((analysis.key, None), (canvas, scale))  # as the Image tab's detections_canvas keeps it
    answer = base_picture(canvases, {"base": name})
    assert answer["picture"].startswith("data:image/jpeg;base64,")
    assert "no longer cached" in base_picture(canvases, {"base": [*analysis.key, 3]})["error"]
    assert "expected" in base_picture(canvases, {"base": "gone"})["error"]
    assert "no longer cached" in base_picture(canvases, {"base": [[1], None]})["error"]  # unhashable: no picture
