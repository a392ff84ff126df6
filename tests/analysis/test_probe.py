"""The probe: geometry in original-image pixels, statistics, detections as ultralytics predicts."""

import copy

import cv2
import numpy as np
import pytest
import torch
from repo_paths import ROOT
from ultralytics import YOLO
from ultralytics.data.augment import LetterBox

from dcnv3.analysis.probe import inference_model, prepare_image, probe, probe_batch
from dcnv3.record.stats import adjacent_pairs
from dcnv3.yolo.loading import load_model

BUNDLED = ROOT / "assets" / "models" / "dcnv3-yolov8n.pt"
DEMO_VIDEO = ROOT / "assets" / "demo_shapes.mp4"


@pytest.fixture(scope="module")
def untrained():
    """A fresh DCNv3-YOLOv8n: zero offsets and uniform weights in every DCNv3 layer."""
    torch.manual_seed(0)
    return YOLO("dcnv3-yolov8n.yaml")


def letterbox_from_pixels(image: np.ndarray, imgsz: int):
    """Ratio and padding measured on ultralytics' LetterBox output (independent of dcnv3)."""
    boxed = LetterBox((imgsz, imgsz), auto=True, stride=32)(image=image)
    grey = (boxed == 114).all(axis=2)
    left = int(np.argmax(~grey.all(axis=0)))
    top = int(np.argmax(~grey.all(axis=1)))
    content_w = int((~grey.all(axis=0)).sum())
    return boxed.shape[:2], content_w / image.shape[1], left, top


@pytest.mark.parametrize("shape", [(300, 170), (120, 410), (64, 64)], ids=["portrait", "landscape", "square"])
def test_zero_offsets_sample_the_regular_grid_in_image_pixels(untrained, shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 100, (*shape, 3), dtype=np.uint8)  # no 114: padding is measurable
    result = probe(untrained, image, imgsz=320, conf=0.5)
    input_shape, ratio, left, top = letterbox_from_pixels(image, 320)
    assert result.letterbox.input_shape == input_shape
    assert (left, top) == result.letterbox.pad
    assert max(left, top) > 0 or shape[0] == shape[1]  # the non-square images are padded
    assert result.letterbox.ratio == pytest.approx(ratio, rel=2e-2)
    assert len(result.layers) == 5
    for layer in result.layers:
        np.testing.assert_array_equal(layer.offsets, 0)
        np.testing.assert_allclose(layer.weights, 1 / 9, rtol=1e-6)
        locations = result.sampling_locations(layer)  # (H, W, G, P, 2)
        np.testing.assert_array_equal(locations, result.regular_locations(layer))
        # Independently: cell (r, c) is centred on input pixel ((c + .5) s, (r + .5) s); the
        # 3x3 grid steps by one feature cell, s input pixels.
        rows, cols = np.meshgrid(np.arange(layer.grid[0]), np.arange(layer.grid[1]), indexing="ij")
        s = layer.stride
        for p, (i, j) in enumerate([(i, j) for i in range(3) for j in range(3)]):
            x = ((cols + 0.5 + (i - 1)) * s - left) / result.letterbox.ratio
            y = ((rows + 0.5 + (j - 1)) * s - top) / result.letterbox.ratio
            np.testing.assert_allclose(locations[:, :, 0, p, 0], x, atol=1e-9)
            np.testing.assert_allclose(locations[:, :, 0, p, 1], y, atol=1e-9)
        assert {8, 16, 32} >= {layer.stride}


def test_stages_strides_and_labels(untrained):
    result = probe(untrained, np.zeros((128, 96, 3), np.uint8), imgsz=128)
    assert [(layer.stage, layer.groups) for layer in result.layers] == [
        ("P3/8 backbone", 2),
        ("P3/8 backbone", 2),
        ("P4/16 backbone", 4),
        ("P4/16 backbone", 4),
        ("P5/32 backbone", 8),
    ]
    assert result.layers[0].name == "model.4.m.0.cv2.dcnv3"
    assert "G=2 K=3" in result.layers[0].label


def test_cell_at_inverts_cell_centre(untrained):
    result = probe(untrained, np.zeros((200, 300, 3), np.uint8), imgsz=160)
    for layer in result.layers:
        for cell in [(0, 0), (layer.grid[0] - 1, layer.grid[1] - 1), (layer.grid[0] // 2, 1)]:
            centre = result.cell_centre(layer, cell)
            if 0 <= centre[0] < 300 and 0 <= centre[1] < 200:
                assert result.cell_at(layer, *centre) == cell
    assert result.cell_at(result.layers[0], -50, 10) is None
    assert result.cell_at(result.layers[0], 10, 5000) is None


def test_statistics_of_the_regular_grid(untrained):
    result = probe(untrained, np.zeros((96, 96, 3), np.uint8), imgsz=96)
    layer = result.layers[2]
    np.testing.assert_allclose(result.offset_magnitude(layer), 0)
    np.testing.assert_allclose(result.weight_entropy(layer), 1, rtol=1e-6)
    np.testing.assert_allclose(result.effective_dilation(layer), 1)
    share = result.outside_share(layer)
    assert share.shape == (*layer.grid, layer.groups)
    assert share[0, 0, 0] == pytest.approx(5 / 9) and share[1, 1, 0] == 0  # corner cell


def test_statistics_follow_their_definitions():
    """Hand-made record: known offsets and weights give known numbers."""
    from dcnv3.analysis.probe import LayerRecord
    from dcnv3.record import stats

    offsets = np.zeros((1, 1, 2, 9, 2), np.float32)
    offsets[0, 0, 1] = np.array([[i - 1, j - 1] for i in range(3) for j in range(3)])  # doubles the grid
    weights = np.full((1, 1, 2, 9), 1 / 9, np.float32)
    weights[0, 0, 1] = np.eye(9)[4]
    record = LayerRecord("l", "P3/8 backbone", 8, 1, (1, 1), 3, 1, 1, 1.0, 2, 9, False, offsets, weights)
    np.testing.assert_allclose(stats.effective_dilation(record)[0, 0], [1, 2])
    np.testing.assert_allclose(stats.weight_entropy(record)[0, 0], [1, 0], atol=1e-6)
    expected = np.mean([np.hypot(i - 1, j - 1) for i in range(3) for j in range(3)])
    np.testing.assert_allclose(stats.offset_magnitude(record)[0, 0], [0, expected], rtol=1e-6)
    assert len(adjacent_pairs(3)) == 12 and len(adjacent_pairs(3, remove_center=True)) == 8
    assert stats.cell_summary(record, (0, 0)) == pytest.approx((1.5, expected / 2, 0.5), abs=1e-6)  # group means


def test_detections_match_ultralytics_predict():
    torch.manual_seed(1)
    model = YOLO("yolov8n.yaml")
    with torch.no_grad():  # spread class logits: distinct scores (no ties), a few dozen boxes
        for branch in model.model.model[-1].cv3:
            branch[-1].bias.normal_(-3, 1.5)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    result = probe(model, image, imgsz=320, conf=0.5, iou=0.7)
    reference = model.predict(image, imgsz=320, conf=0.5, iou=0.7, verbose=False)[0]
    assert len(result.detections) == len(reference.boxes) > 0
    order = np.argsort(-result.detections.scores)
    ref_order = np.argsort(-reference.boxes.conf.numpy())
    np.testing.assert_allclose(result.detections.boxes[order], reference.boxes.xyxy.numpy()[ref_order], atol=1e-3)
    np.testing.assert_array_equal(result.detections.classes[order], reference.boxes.cls.numpy()[ref_order])
    assert result.layers == []  # a detector without DCNv3


def test_dual_head_model_is_probed_with_the_head_predict_uses():
    """A YOLO26 checkpoint can leave its head at end-to-end (one-to-one); YOLO.predict still runs
    the one-to-many head with NMS unless nms=False, and so must the probe."""
    import copy

    torch.manual_seed(2)
    model = YOLO("dcnv3-yolo26n.yaml")
    head = model.model.model[-1]
    with torch.no_grad():  # the one-to-one branch scores everything high, the one-to-many not
        for branch in head.one2one_cv3:
            branch[-1].bias.fill_(4.0)
        for branch in head.cv3:
            branch[-1].bias.normal_(-3, 1.5)
    model.model.end2end = True
    one_to_one = copy.deepcopy(model)  # its own predictor: predict arguments persist per predictor
    image = np.random.default_rng(2).integers(0, 255, (256, 320, 3), dtype=np.uint8)
    result = probe(model, image, imgsz=320, conf=0.85, iou=0.7)
    reference = model.predict(image, imgsz=320, conf=0.85, iou=0.7, verbose=False)[0]
    other_head = one_to_one.predict(image, imgsz=320, conf=0.85, iou=0.7, nms=False, verbose=False)[0]
    assert model.model.end2end  # the user's model is left as it was
    assert len(result.detections) == len(reference.boxes) != len(other_head.boxes)
    order, ref_order = np.argsort(-result.detections.scores), np.argsort(-reference.boxes.conf.numpy())
    np.testing.assert_allclose(result.detections.boxes[order], reference.boxes.xyxy.numpy()[ref_order], atol=1e-3)
    # nms=False asks for the one-to-one head, as predict(nms=False) does.
    end_to_end = probe(model, image, imgsz=320, conf=0.85, iou=0.7, nms=False)
    assert len(end_to_end.detections) == len(other_head.boxes)
    np.testing.assert_allclose(np.sort(end_to_end.detections.scores), np.sort(other_head.boxes.conf.numpy()), atol=1e-4)


def same_detections(a, b) -> bool:
    return all(np.array_equal(getattr(a, key), getattr(b, key)) for key in ("boxes", "scores", "classes"))


def test_detections_are_a_query_on_the_cached_forward(bundled_dcnv3):
    """``detections`` is ``detect`` at the probe's own thresholds, and ``detect`` at other
    thresholds gives exactly what a fresh probe (a new forward) at those thresholds gives."""
    image = cv2.imread(str(ROOT / "assets" / "examples" / "shapes_1.jpg"))
    result = probe(bundled_dcnv3, image, imgsz=320, conf=0.25, iou=0.7)
    assert result.thresholds == (0.25, 0.7, 300) and len(result.detections) > 0
    assert same_detections(result.detect(0.25, 0.7), result.detections)
    counts = set()
    for conf, iou, max_det in [(0.05, 0.7, 300), (0.6, 0.7, 300), (0.1, 0.3, 300), (0.05, 0.9, 2)]:
        fresh = probe(bundled_dcnv3, image, imgsz=320, conf=conf, iou=iou, max_det=max_det)
        assert same_detections(result.detect(conf, iou, max_det), fresh.detections)
        counts.add(len(fresh.detections))
    assert len(counts) >= 3  # the thresholds really changed what was detected
    # The cache is one image's head output, float32 on the CPU: (4 + classes, anchors at 320).
    raw = result.raw.values
    assert raw.dtype == np.float32 and raw.shape == (4 + len(bundled_dcnv3.names), 40 * 40 + 20 * 20 + 10 * 10)
    assert not any("raw" in key for key in result.as_arrays())


def test_end_to_end_predictions_are_filtered_by_score_and_scaled():
    """An end-to-end head's rows (x1, y1, x2, y2, score, class) are only thresholded and capped,
    then mapped back through the letterbox as ultralytics' scale_boxes does."""
    from dcnv3.analysis.probe import RawPredictions

    rows = np.array([[10, 20, 50, 60, 0.9, 1], [0, 0, 8, 8, 0.2, 0], [30, 40, 70, 90, 0.6, 2]], np.float32)
    raw = RawPredictions(rows, True, (96, 128), {0: "a", 1: "b", 2: "c"})  # a 48 x 64 image at ratio 2
    found = raw.detections((48, 64), conf=0.5, iou=0.7)
    np.testing.assert_array_equal(found.scores, np.float32([0.9, 0.6]))
    np.testing.assert_array_equal(found.classes, [1, 2])
    np.testing.assert_allclose(found.boxes, [[5, 10, 25, 30], [15, 20, 35, 45]])
    assert len(raw.detections((48, 64), conf=0.1, iou=0.7, max_det=1)) == 1
    np.testing.assert_array_equal(raw.values, rows)  # the cache is left as it was


def test_a_hand_made_probe_cannot_detect_again():
    from fakes import make_probe

    with pytest.raises(ValueError, match="no raw predictions"):
        make_probe([]).detect(0.25, 0.7)


def test_probe_runs_the_model_once(untrained):
    runner = inference_model(untrained)
    calls = []
    handle = runner.register_forward_hook(lambda *_: calls.append(1))
    try:
        probe(untrained, np.zeros((64, 64, 3), np.uint8), imgsz=64)
    finally:
        handle.remove()
    assert calls == [1]


def test_one_cache_holds_every_inference_copy(untrained):
    """The probe's and the receptive field's fused copies come from the one cache: one copy per
    (head, role), each made once, the gradient one apart from the probe's (its hooks stay off it),
    both made again when the YOLO's network is replaced."""
    from dcnv3.analysis import receptive_field as rf

    runner = inference_model(untrained)
    gradient = rf.gradient_network(untrained)
    assert gradient is inference_model(untrained, role="gradient") is rf.gradient_network(untrained)
    assert gradient is not runner and runner is inference_model(untrained)
    for a, b in zip(runner.state_dict().values(), gradient.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown inference copy role"):
        inference_model(untrained, role="training")
    original = untrained.model
    try:
        untrained.model = copy.deepcopy(original)
        assert inference_model(untrained) is not runner and rf.gradient_network(untrained) is not gradient
    finally:
        untrained.model = original


def test_batched_probe_equals_one_image_at_a_time():
    """Video frames go through probe_batch: one forward, each frame's probe as if alone."""
    model = load_model(BUNDLED)
    capture = cv2.VideoCapture(str(DEMO_VIDEO))
    frames = [capture.read()[1] for _ in range(3)]
    runner = inference_model(model)
    calls = []
    handle = runner.register_forward_hook(lambda *_: calls.append(1))
    try:
        batched = probe_batch(model, frames, imgsz=320)
    finally:
        handle.remove()
    assert calls == [1] and len(batched) == 3
    for frame, result in zip(frames, batched):
        alone = probe(model, frame, imgsz=320)
        assert len(result.detections) == len(alone.detections) > 0
        assert same_detections(result.detect(*alone.thresholds), result.detections)
        np.testing.assert_allclose(result.detections.boxes, alone.detections.boxes, atol=1e-2)
        np.testing.assert_array_equal(result.detections.classes, alone.detections.classes)
        assert [r.name for r in result.layers] == [r.name for r in alone.layers]
        for record, reference in zip(result.layers, alone.layers):
            np.testing.assert_allclose(record.offsets, reference.offsets, atol=1e-3)
            np.testing.assert_allclose(record.weights, reference.weights, atol=1e-4)


def test_batched_probe_of_differently_sized_images(untrained):
    images = [np.zeros((64, 64, 3), np.uint8), np.zeros((40, 64, 3), np.uint8)]
    results = probe_batch(untrained, images, imgsz=64)
    assert [r.image_shape for r in results] == [(64, 64), (40, 64)]
    assert [r.layers[0].grid for r in results] == [probe(untrained, image, imgsz=64).layers[0].grid for image in images]


@pytest.mark.parametrize(
    "image,shape",
    [
        (np.zeros((10, 12), np.uint8), (10, 12, 3)),
        (np.zeros((10, 12, 4), np.uint8), (10, 12, 3)),
        (np.zeros((1, 1, 3), np.uint8), (1, 1, 3)),
        (np.zeros((5, 6, 3), np.float32), (5, 6, 3)),
    ],
)
def test_prepare_image_converts(image, shape):
    assert prepare_image(image).shape == shape


@pytest.mark.parametrize("bad", [np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4, 2), np.uint8), "missing.png"])
def test_prepare_image_rejects(bad):
    with pytest.raises(ValueError):
        prepare_image(bad)


def test_npz_export_holds_every_array(untrained, tmp_path):
    result = probe(untrained, np.zeros((64, 80, 3), np.uint8), imgsz=64)
    np.savez(tmp_path / "probe.npz", **result.as_arrays())
    loaded = np.load(tmp_path / "probe.npz")
    assert loaded["model.6.m.0.cv2.dcnv3/offsets"].shape[-3:] == (4, 9, 2)
    assert "detections/boxes_xyxy" in loaded


def test_sampling_locations_follow_the_records_documented_geometry():
    """LayerRecord's docstring formula, written out independently, on a record with every knob
    turned: layer stride 2, dilation 2, pad 1, offset_scale 0.5, remove_center, random offsets."""
    from dcnv3.analysis.probe import LayerRecord
    from dcnv3.record.geometry import Letterbox, sampling_locations

    rng = np.random.default_rng(3)
    h, w, g, k = 4, 5, 2, 3
    offsets = rng.normal(0, 1.5, (h, w, g, k * k - 1, 2)).astype(np.float32)
    weights = np.full((h, w, g, k * k - 1), 1 / 8, np.float32)
    record = LayerRecord("l", "P4/16 backbone", 16, 2, (h, w), k, 2, 1, 0.5, g, k * k - 1, True, offsets, weights)
    letterbox = Letterbox.from_shapes((100, 160), (128, 160))  # ratio 1, 14 px padding on top
    locations = sampling_locations(record, letterbox)
    c = 2 * (k - 1) // 2
    points = [(i, j) for i in range(k) for j in range(k) if (i, j) != (1, 1)]  # p = i*K + j, centre left out
    for row, col, group in [(0, 0, 0), (3, 4, 1), (2, 1, 1)]:
        for p, (i, j) in enumerate(points):
            dx, dy = offsets[row, col, group, p]
            x = col * 2 - 1 + c + 0.5 * (i * 2 - c + dx)
            y = row * 2 - 1 + c + 0.5 * (j * 2 - c + dy)
            expected = ((x + 0.5) * 16, (y + 0.5) * 16 - 14.0)
            np.testing.assert_allclose(locations[row, col, group, p], expected, rtol=1e-6)
    assert record.weight_kind == "softmax"
