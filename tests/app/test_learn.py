"""The Learn tab's toy (viz_app.views.toy) and the receptive-field pictures (viz_app.views.receptive): pure
functions, no browser."""

import numpy as np
import pytest
from repo_paths import ROOT

from dcnv3.analysis import receptive_field as rf
from dcnv3.record.geometry import Letterbox
from dcnv3.yolo.loading import load_model
from viz_app.tabs import compare as compare_tab
from viz_app.tabs.learn import LATEX_DELIMITERS, LESSON
from viz_app.views import receptive, toy


@pytest.fixture(scope="module")
def bundled():
    return load_model(ROOT / "assets" / "models" / "dcnv3-yolov8n.pt")


def test_toy_scene_moves_scales_and_rotates_only_the_shape():
    base = toy.toy_scene(toy.ToyShape(class_id=0, size=100, angle=0, x=160, y=160), seed=8)
    assert base.shape == (320, 320, 3) and base.dtype == np.uint8
    assert np.array_equal(base, toy.toy_scene(toy.ToyShape(class_id=0, size=100, angle=0, x=160, y=160), seed=8))
    background = toy.background(8)
    changed = np.any(base != background, axis=-1)
    rows, cols = np.nonzero(changed)
    # A bar of length 100 lying along x: about 100 px wide, far thinner, centred on (160, 160).
    assert 95 <= cols.max() - cols.min() + 1 <= 104 and rows.max() - rows.min() + 1 < 40
    assert abs((cols.min() + cols.max() + 1) / 2 - 160) <= 1.5 and abs((rows.min() + rows.max() + 1) / 2 - 160) <= 1.5
    turned = np.any(toy.toy_scene(toy.ToyShape(0, 100, 90, 160, 160), seed=8) != background, axis=-1)
    rows, cols = np.nonzero(turned)
    assert 95 <= rows.max() - rows.min() + 1 <= 104 and cols.max() - cols.min() + 1 < 40  # now along y
    moved = np.any(toy.toy_scene(toy.ToyShape(0, 50, 0, 60, 250), seed=8) != background, axis=-1)
    rows, cols = np.nonzero(moved)
    assert abs((cols.min() + cols.max() + 1) / 2 - 60) <= 1.5 and abs((rows.min() + rows.max() + 1) / 2 - 250) <= 1.5
    with pytest.raises(ValueError):
        toy.toy_scene(toy.ToyShape(class_id=7))


def test_the_toy_caches_belong_to_their_owner_not_to_the_module():
    """The scene pieces and the dilation sweeps are kept by the object the app hands over
    (``AppContext.toy_scenes`` / ``.sweeps``), one per app; without one nothing is kept."""
    from dcnv3.lesson.network import LessonConfig, LessonNet
    from viz_app.state.context import AppContext
    from viz_app.state.models import ModelRegistry
    from viz_app.views import lesson_view

    shape = toy.ToyShape(class_id=0, size=100, angle=0, x=160, y=160)
    scenes = toy.ToyScenes()
    assert scenes.background(8) is scenes.background(8) and not scenes.background(8).flags.writeable
    assert np.array_equal(scenes.scene(shape, 8), toy.toy_scene(shape, seed=8))
    assert np.array_equal(toy.background(8), scenes.background(8))
    assert toy.background(8) is not toy.background(8)  # no module-level cache
    first, second = AppContext.create(ModelRegistry()), AppContext.create(ModelRegistry())
    assert first.toy_scenes is not second.toy_scenes and first.sweeps is not second.sweeps
    net = LessonNet(LessonConfig(channels=8, groups=2, depth=1)).eval()
    cache = lesson_view.sweep_cache()
    kept = lesson_view.dilation_sweep(net, shape, 8, cache=cache, scenes=scenes)
    assert lesson_view.dilation_sweep(net, shape, 8, cache=cache, scenes=scenes) is kept and len(cache) == 1
    fresh = lesson_view.dilation_sweep(net, shape, 8)
    assert fresh is not kept and np.array_equal(fresh[1], kept[1])


def test_toy_view_draws_the_layer_at_the_shape_centre(bundled):
    shape = toy.ToyShape(class_id=3, size=120, angle=0, x=100, y=180)
    view = toy.toy_view(bundled, "model.6.m.1.cv2.dcnv3", shape, seed=8)
    assert view.picture.shape == (640, 640, 3)
    # P4 (stride 16) at imgsz 320 on a 320 px scene: cell = floor(centre / 16).
    assert view.cell == (180 // 16, 100 // 16)
    assert "triangle" in view.message and "P4/16" in view.message
    scene = np.repeat(np.repeat(toy.toy_scene(shape, 8), 2, axis=0), 2, axis=1)
    assert np.any(view.picture != scene)  # something was drawn
    other = toy.toy_view(bundled, "model.6.m.1.cv2.dcnv3", toy.ToyShape(3, 200, 40, 160, 160), seed=8)
    assert not np.array_equal(other.picture, view.picture)
    off = toy.toy_view(bundled, "model.6.m.1.cv2.dcnv3", toy.ToyShape(3, 60, 0, 320, 320), seed=8)
    assert off.cell is not None  # the very edge still maps to the last cell


def test_lesson_has_the_formula_and_delimiters():
    assert "$$y(p_0) = \\sum_{g=1}^{G} \\sum_{k=1}^{K}" in LESSON and "softmax" in LESSON
    assert {d["left"] for d in LATEX_DELIMITERS} == {"$$", "$"}


def test_twin_names():
    names = ["dcnv3-yolov8n.pt", "yolov8n.pt", "mine.pt"]
    assert receptive.twin_name("dcnv3-yolov8n.pt", names) == "yolov8n.pt"
    assert receptive.twin_name("mine.pt", names) is None
    assert receptive.twin_name("DCNv3_yolov8n.pt", ["yolov8n.pt"]) == "yolov8n.pt"


def _field():
    """A hand-made ReceptiveField on a 100 x 80 image: a block of mass in the middle."""
    heat = np.zeros((80, 100), np.float32)
    heat[30:50, 40:60] = 1.0 / 400
    masks = np.zeros((2, 80, 100), bool)
    masks[0, 35:45, 45:55] = True
    masks[1, 30:50, 40:60] = True
    letterbox = Letterbox.from_shapes((80, 100), (96, 128))
    return rf.ReceptiveField(
        np.zeros((96, 128)),
        heat,
        masks,
        np.array([100.0, 400.0]),
        (0.5, 0.9),
        0.0,
        letterbox,
        {"kind": "cell", "module": "m", "cell": [2, 3], "stride": 16, "centre": [50.0, 40.0], "value": 1.0},
    )


def test_field_panel_and_side_by_side():
    image = np.full((80, 100, 3), 128, np.uint8)
    panel = receptive.field_panel(image, _field(), "title", side=400)
    assert panel.shape == (receptive.title_height(2) + 320, 400, 3)
    body = panel[receptive.title_height(2) :]
    # The 50 % contour (white) runs around the central block; the corners stay dimmed grey.
    assert (body[(35 * 4) - 1 : (35 * 4) + 2, 200] >= 250).all(axis=-1).any()
    assert (body[5, 5] < 128).all()
    pair = receptive.side_by_side([panel, panel[:100]], gap=10)
    assert pair.shape == (panel.shape[0], 810, 3) and (pair[:, 400:410] == 255).all()


def test_pair_payload_converts_to_original_pixels():
    field = _field()
    payload = receptive.pair_payload(["a", "b"], [field, field], (0.5, 0.5))
    assert [m["model"] for m in payload["models"]] == ["a", "b"]
    assert payload["models"][0]["areas_px2"] == {"50%": 400.0, "90%": 1600.0}
    assert payload["models"][0]["centre"] == [100.0, 80.0] and payload["area_ratio_50"] == 1.0
    assert receptive.pair_payload(["a"], [field, None])["models"][0]["areas_px2"]["50%"] == 100.0


def test_compare_panel_click_mapping():
    shape = (300, 400, 3)
    scale = 640 / 400
    top = receptive.title_height(1)
    assert compare_tab.panel_point((100.5, top + 50.5), scale, shape) == pytest.approx((100.5 / scale, 50.5 / scale))
    right = 640 + compare_tab.GAP + 320
    assert compare_tab.panel_point((right, top + 160), scale, shape) == pytest.approx((200.0, 100.0))
    assert compare_tab.panel_point((645, top + 10), scale, shape) is None  # in the gap
    assert compare_tab.panel_point((10, 2), scale, shape) is None  # on the title
