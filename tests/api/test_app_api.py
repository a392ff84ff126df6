"""The app's HTTP API through gradio_client: /detect and /sampling, caching, bad models and images.

The app runs in this process on a free loopback port (``prevent_thread_lock``); one test starts
``python app.py`` itself. conftest.py sets HF_HUB_OFFLINE / GRADIO_ANALYTICS_ENABLED before gradio
is imported and fails any non-loopback connection.
"""

import json
import math
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from app_server import app_process, served_app
from fakes import RunsCommand
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from repo_paths import ROOT
from ultralytics import YOLO
from ultralytics.utils import ASSETS

from dcnv3.analysis.probe import probe
from dcnv3.yolo.checkpoints import CheckpointError
from dcnv3.yolo.loading import load_model
from viz_app.state.analyser import Analyser
from viz_app.state.images import load_image
from viz_app.state.models import UNTRAINED_NAME, ModelRegistry, untrained_models

FORK_A = ROOT / "tests" / "data" / "fork_fixture" / "fork_A.pt"
BUS = Path(ASSETS) / "bus.jpg"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """fork_A, a plain YOLOv8n (no DCNv3), a classifier, a hostile pickle and a non-checkpoint."""
    folder = tmp_path_factory.mktemp("models")
    shutil.copy(FORK_A, folder / "fork_A.pt")
    torch.manual_seed(0)
    YOLO("yolov8n.yaml").save(folder / "plain.pt")
    YOLO("yolov8n-cls.yaml").save(folder / "classifier.pt")
    torch.save({"model": RunsCommand(f"touch {folder / 'pwned'}")}, folder / "hostile.pt")
    (folder / "garbage.pt").write_bytes(os.urandom(2048))
    return folder


@pytest.fixture(scope="module")
def app(models_dir):
    registry = ModelRegistry(models_dir=models_dir)
    analyser = Analyser(registry)
    with served_app(registry, analyser) as url:
        yield url, analyser


@pytest.fixture(scope="module")
def client(app):
    return Client(app[0], verbose=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "one_pixel.png"), np.full((1, 1, 3), 200, np.uint8))
    cv2.imwrite(str(folder / "gray.png"), rng.integers(0, 255, (120, 160), dtype=np.uint8))
    cv2.imwrite(str(folder / "rgba.png"), rng.integers(0, 255, (90, 130, 4), dtype=np.uint8))
    cv2.imwrite(str(folder / "gray16.png"), rng.integers(0, 65535, (70, 50), dtype=np.uint16))
    (folder / "notes.txt").write_text("not an image")
    data = BUS.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return folder


def detect(client, image, model="fork_A.pt", conf=0.25, iou=0.7):
    picture, payload = client.predict(handle_file(str(image)), model, conf, iou, api_name="/detect")
    return picture, payload


def sampling(client, image, layer, x, y, model="fork_A.pt"):
    return client.predict(handle_file(str(image)), model, layer, x, y, api_name="/sampling")


def test_api_lists_both_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/detect", "/sampling", "/erf"} <= set(endpoints)  # /erf: tests/api/test_erf_api.py
    assert [p["parameter_name"] for p in endpoints["/sampling"]["parameters"]] == [
        "image_path",
        "model_name",
        "layer",
        "x",
        "y",
        "imgsz",
    ]
    # imgsz is optional (0: the model's training size), so clients written without it still work
    assert [p["parameter_has_default"] for p in endpoints["/detect"]["parameters"]][-1]
    assert [p["parameter_has_default"] for p in endpoints["/sampling"]["parameters"]][-1]


def test_network_input_defaults_to_the_checkpoint_training_size_and_can_be_set(client):
    """fork_A was trained at 640: by default bus.jpg (810 x 1080) goes in letterboxed to 480 x 640;
    imgsz=320 gives 256 x 320 (240 rounded up to the stride 32), and coarser DCNv3 grids."""
    _, default = detect(client, BUS)
    _, small = client.predict(handle_file(str(BUS)), "fork_A.pt", 0.25, 0.7, 320, api_name="/detect")
    assert default["network_input"] == [480, 640] and small["network_input"] == [256, 320]
    assert default["deformable_layers"][0]["grid"] == [80, 60] and small["deformable_layers"][0]["grid"] == [40, 32]
    with pytest.raises(Exception, match="network input size"):
        client.predict(handle_file(str(BUS)), "fork_A.pt", 0.25, 0.7, 5000, api_name="/detect")


def test_detect_returns_annotated_image_and_detections(client):
    picture, payload = detect(client, BUS)
    annotated = cv2.imread(picture)
    assert annotated.shape == (1080, 810, 3)
    assert payload["model"] == "fork_A.pt" and payload["image_size"] == [810, 1080]
    assert len(payload["detections"]) == 300  # fork_A's random weights: 300 junk boxes
    boxes = np.array([d["box"] for d in payload["detections"]])
    assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= 810).all() and (boxes[:, 2] > boxes[:, 0]).all()
    assert all(0.25 <= d["score"] <= 1 for d in payload["detections"])
    assert [layer["name"] for layer in payload["deformable_layers"]] == [
        "model.4.m.0.cv2.dcnv3",
        "model.4.m.1.cv2.dcnv3",
        "model.6.m.0.cv2.dcnv3",
        "model.6.m.1.cv2.dcnv3",
        "model.8.m.0.cv2.dcnv3",
    ]
    assert payload["dcnv3_layers"] == payload["deformable_layers"]  # the key's old name, deprecated until 0.3


@pytest.fixture(scope="module")
def reference_probe():
    """The same model and image probed directly, for an independent check of /sampling."""
    return probe(load_model(FORK_A), str(BUS))


@pytest.mark.parametrize("layer_index,x,y", [(0, 400.5, 500.5), (2, 10.2, 1000.7), (4, 805.0, 3.0), (3, 250.0, 620.25)])
def test_sampling_agrees_with_the_raw_offsets(client, reference_probe, layer_index, x, y):
    record = reference_probe.layers[layer_index]
    picture, payload = sampling(client, BUS, record.name, x, y)
    assert cv2.imread(picture).shape == (1080, 810, 3)
    assert payload["layer"] == record.name and payload["stride"] == record.stride
    # Independent geometry: letterbox x_in = x * ratio + pad; feature index floor(x_in / stride)
    # (the layer has stride 1 and pad = K // 2, so that index is the cell).
    ratio, (pad_x, pad_y) = reference_probe.letterbox.ratio, reference_probe.letterbox.pad
    s, k, c = record.stride, record.kernel, (record.dilation * (record.kernel - 1)) // 2
    row, col = math.floor((y * ratio + pad_y) / s), math.floor((x * ratio + pad_x) / s)
    assert payload["cell"] == [row, col]
    points = payload["points"]
    assert len(points) == record.groups * record.points
    for point in points:
        g, p = point["group"], point["k"]
        i, j = divmod(p, k)  # DCNv3 order p = i*K + j: i walks x, j walks y
        dx, dy = record.offsets[row, col, g, p]
        assert (point["dx"], point["dy"]) == pytest.approx((float(dx), float(dy)), abs=1e-6)
        fx = col * record.layer_stride - record.pad + c + record.offset_scale * (i * record.dilation - c + dx)
        fy = row * record.layer_stride - record.pad + c + record.offset_scale * (j * record.dilation - c + dy)
        expected_x = ((fx + 0.5) * s - pad_x) / ratio
        expected_y = ((fy + 0.5) * s - pad_y) / ratio
        assert abs(point["x"] - expected_x) < 0.5 and abs(point["y"] - expected_y) < 0.5
    for g in range(record.groups):
        total = sum(p["weight"] for p in points if p["group"] == g)
        assert total == pytest.approx(1.0, abs=1e-4)


def test_repeated_calls_reuse_the_cached_probe(client, app):
    _, analyser = app
    image = Path(ASSETS) / "zidane.jpg"
    before = analyser.runs
    detect(client, image)
    assert analyser.runs == before + 1
    for _ in range(2):
        sampling(client, image, "model.6.m.0.cv2.dcnv3", 600.0, 300.0)
    detect(client, image)
    _, stricter = detect(client, image, conf=0.5, iou=0.5)  # detections: a query on the cached forward
    assert analyser.runs == before + 1  # the model ran once for this image
    assert all(d["score"] >= 0.5 for d in stricter["detections"])


def test_threshold_change_answers_from_the_cached_forward(app, tmp_path):
    """A slider release: NMS on the cached raw predictions, equal to a fresh run at those thresholds;
    the view keeps its point and layer, and its highlighted detection if that survives."""
    from viz_app.state.context import AppContext
    from viz_app.state.view_state import ImageView
    from viz_app.tabs.image import surviving_detection, threshold_change

    _, analyser = app
    context = AppContext.create(analyser.registry, analyser)
    analysis = analyser.analyse(str(BUS), "fork_A.pt", 0.25, 0.7)
    before = analyser.runs
    best = int(np.argmax(analysis.probe.detections.scores))
    view = ImageView((400.5, 500.5), "model.6.m.0.cv2.dcnv3", best, cell=(31, 25))
    change = threshold_change(context, analysis, view, 0.6, 0.5, groups=[0, 1])
    assert analyser.runs == before
    fresh = Analyser(analyser.registry, cache_size=0).analyse(str(BUS), "fork_A.pt", 0.6, 0.5).probe.detections
    detections = change.analysis.probe.detections
    np.testing.assert_array_equal(detections.boxes, fresh.boxes)
    np.testing.assert_array_equal(detections.scores, fresh.scores)
    assert (change.analysis.conf, change.analysis.iou) == (
        0.6,
        0.5,
    ) and change.analysis.probe.layers is analysis.probe.layers
    assert (change.view.xy, change.view.layer, change.view.cell) == (view.xy, view.layer, view.cell)
    expected = surviving_detection(analysis.probe.detections, detections, best)
    assert change.view.highlight == expected
    if expected is not None:
        np.testing.assert_array_equal(detections.boxes[expected], analysis.probe.detections.boxes[best])
    assert change.overlay.shape == analysis.image.bgr.shape  # bus.jpg is shown at its own size
    assert len(change.detection_choices) == min(len(detections), 100)
    assert f"{len(detections)} detections" in change.notices
    with pytest.raises(ValueError, match="conf and iou must lie in"):
        threshold_change(context, analysis, view, 1.5, 0.5)


def test_surviving_detection_matches_box_and_class():
    from dcnv3.analysis.probe import Detections

    before = Detections(
        np.array([[0, 0, 10, 10], [5, 5, 20, 20]], np.float32), np.array([0.9, 0.4], np.float32), np.array([1, 2]), {}
    )
    after = Detections(before.boxes[[1]], before.scores[[1]], before.classes[[1]], {})
    from viz_app.tabs.image import surviving_detection

    assert surviving_detection(before, after, 1) == 0
    assert surviving_detection(before, after, 0) is None and surviving_detection(before, after, None) is None


def test_untrained_model_samples_the_regular_grid(client):
    _, payload = detect(client, BUS, model=UNTRAINED_NAME)
    assert any("untrained model: offsets are zero" in note for note in payload["notices"])
    _, points = sampling(client, BUS, "model.8.m.0.cv2.dcnv3", 300.5, 700.5, model=UNTRAINED_NAME)
    row, col = points["cell"]
    assert {(p["dx"], p["dy"]) for p in points["points"]} == {(0.0, 0.0)}
    assert all(p["weight"] == pytest.approx(1 / 9, abs=1e-6) for p in points["points"])
    ratio = 480 / 810  # bus.jpg at imgsz 640: 480 x 640 input, no padding
    for p in points["points"]:
        i, j = divmod(p["k"], 3)
        assert p["x"] == pytest.approx((col + i - 1 + 0.5) * 32 / ratio, abs=1e-6)
        assert p["y"] == pytest.approx((row + j - 1 + 0.5) * 32 / ratio, abs=1e-6)


def test_plain_detector_still_shows_its_detections(client):
    picture, payload = detect(client, BUS, model="plain.pt")
    assert cv2.imread(picture) is not None and payload["deformable_layers"] == []
    assert any("no deformable layer" in note for note in payload["notices"])
    with pytest.raises(AppError, match="has no deformable layer"):
        sampling(client, BUS, "model.4.m.0.cv2.dcnv3", 10, 10, model="plain.pt")


@pytest.mark.parametrize(
    "model,message",
    [
        ("hostile.pt", "refused: the checkpoint references the global 'posix.system'"),
        ("classifier.pt", "an image classifier"),
        ("garbage.pt", "not a readable PyTorch checkpoint"),
        ("absent.pt", "unknown model 'absent.pt'"),
        ("../../../etc/passwd", "unknown model"),
    ],
)
def test_unusable_models_are_refused_with_a_clear_message(client, models_dir, model, message):
    with pytest.raises(AppError, match=message):
        detect(client, BUS, model=model)
    assert not (models_dir / "pwned").exists()


def test_bad_queries_are_refused_with_a_clear_message(client):
    with pytest.raises(AppError, match="outside the 810 x 1080 image"):
        sampling(client, BUS, "model.4.m.0.cv2.dcnv3", 900.0, 10.0)
    with pytest.raises(AppError, match=r"unknown layer 'model\.99'; layers: model\.4\.m\.0\.cv2\.dcnv3"):
        sampling(client, BUS, "model.99", 10.0, 10.0)
    with pytest.raises(AppError, match="conf and iou must lie in"):
        detect(client, BUS, conf=3.0)


@pytest.mark.parametrize(
    "name,size",
    [("one_pixel.png", [1, 1]), ("gray.png", [160, 120]), ("rgba.png", [130, 90]), ("gray16.png", [50, 70])],
)
def test_unusual_images_are_probed(client, images, name, size):
    picture, payload = detect(client, images / name)
    assert payload["image_size"] == size and cv2.imread(picture) is not None
    if name == "one_pixel.png":
        assert any("tiny image" in note for note in payload["notices"])
        _, points = sampling(client, images / name, "model.8.m.0.cv2.dcnv3", 0.5, 0.5)
        assert points["cell"] == [10, 10]  # the pixel fills the 640 x 640 input: its centre, P5 cell (10, 10)


@pytest.mark.parametrize(
    "name,message", [("notes.txt", "notes.txt: not an image"), ("truncated.jpg", "corrupt or truncated image")]
)
def test_broken_images_are_refused_with_a_clear_message(client, images, name, message):
    with pytest.raises(AppError, match=message):
        detect(client, images / name)


def test_huge_image_is_downscaled_and_coordinates_stay_in_its_pixels(client, tmp_path):
    size = 12000
    image = np.zeros((size, size, 3), np.uint8)
    image[:, : size // 2] = (40, 90, 200)
    cv2.circle(image, (8000, 4000), 1500, (250, 250, 250), -1)
    path = tmp_path / "huge.jpg"
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    del image
    _, payload = detect(client, path)
    assert payload["image_size"] == [size, size]
    assert any("downscaled to 4096 x 4096" in note for note in payload["notices"])
    picture, points = sampling(client, path, "model.6.m.0.cv2.dcnv3", 6000.5, 3000.5)
    assert max(cv2.imread(picture).shape[:2]) == 2048  # the API's pictures are capped
    centre = np.array(points["cell_centre"])
    cell_px = 16 / (640 / 4096) * (size / 4096)  # one P4 cell of the 640 px input, in original px
    assert np.abs(centre - [6000.5, 3000.5]).max() <= cell_px / 2 + 1e-6
    xy = np.array([[p["x"], p["y"]] for p in points["points"]])
    assert np.abs(xy - centre).max() < 4 * cell_px  # near the query, in the original image's pixels


def test_app_py_starts_offline_on_loopback_and_prints_its_url(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(FORK_A, models / "fork_A.pt")
    with app_process("--models-dir", str(models), "--model", str(models / "fork_A.pt"), cwd=tmp_path, timeout=120) as (
        _,
        url,
        lines,
    ):
        assert f"DeformLens is running at {url}" in "".join(lines), "".join(lines)
        assert url.startswith("http://127.0.0.1:")
        client = Client(url, verbose=False)
        small = tmp_path / "small.png"
        cv2.imwrite(str(small), cv2.resize(cv2.imread(str(BUS)), (162, 216)))
        _, payload = client.predict(handle_file(str(small)), "", 0.25, 0.7, api_name="/detect")
        assert payload["model"] == "fork_A.pt"  # an empty model name means the default: --model
        assert json.dumps(payload)


# -- the model registry and image loading behind both the API and the UI ----------------------------------
def test_default_model_follows_bundled_then_folder_then_untrained(tmp_path):
    bundled, folder = tmp_path / "bundled", tmp_path / "folder"
    bundled.mkdir()
    folder.mkdir()
    assert ModelRegistry(bundled_dir=bundled).default_name() == UNTRAINED_NAME
    shutil.copy(FORK_A, folder / "b.pt")
    shutil.copy(FORK_A, folder / "a.pt")
    registry = ModelRegistry(models_dir=folder, bundled_dir=bundled)
    assert registry.default_name() == "a.pt" and registry.names() == ["a.pt", "b.pt", *untrained_models()]
    shutil.copy(FORK_A, bundled / "dcnv3-yolov8n.pt")  # a bundled model landing later is picked up
    assert registry.default_name() == "dcnv3-yolov8n.pt"
    assert ModelRegistry(models_dir=folder, model=folder / "b.pt", bundled_dir=bundled).default_name() == "b.pt"
    assert registry.resolve(str(folder / "a.pt")) == (folder / "a.pt").resolve()
    with pytest.raises(ValueError, match="unknown model"):
        registry.resolve(str(FORK_A))  # outside the models folder


def test_uploads_are_size_limited_and_named_uniquely(tmp_path):
    registry = ModelRegistry(bundled_dir=tmp_path, max_upload_bytes=1000)
    with pytest.raises(CheckpointError, match="over the 0 MiB limit"):
        registry.add_upload(FORK_A)
    registry = ModelRegistry(bundled_dir=tmp_path)
    copy = tmp_path / "up" / "fork_A.pt"
    copy.parent.mkdir()
    shutil.copy(FORK_A, copy)
    assert registry.add_upload(FORK_A) == "upload: fork_A.pt"
    assert registry.add_upload(copy) == "upload: fork_A.pt (2)"
    assert registry.load("upload: fork_A.pt (2)").deformable_layers[0] == "model.4.m.0.cv2.dcnv3"


def test_untrained_choices_follow_the_shipped_yamls():
    """One untrained model per YAML that dcnv3.yolo ships, so a new family appears without an app change;
    each builds (scale n) with its DCNv3 layers at zero offsets."""
    from dcnv3.yolo import MODEL_YAMLS

    choices = untrained_models()
    assert next(iter(choices)) == UNTRAINED_NAME
    assert sorted(choices.values()) == sorted(f"{Path(name).stem}n.yaml" for name in MODEL_YAMLS)
    registry = ModelRegistry(bundled_dir=Path("/nonexistent"))
    assert registry.names()[-len(choices) :] == list(choices)
    for name in choices:
        loaded = registry.load(name)
        assert loaded.untrained and loaded.deformable_layers, name
        assert any("offsets are zero" in note for note in loaded.notices)
        assert registry.resolve(name) is None


def test_large_png_is_downscaled_with_exact_per_axis_scale(tmp_path):
    image = np.zeros((300, 5000, 3), np.uint8)
    image[:, 2500:] = 255
    cv2.imwrite(str(tmp_path / "wide.png"), image)
    loaded = load_image(tmp_path / "wide.png")
    assert loaded.bgr.shape == (246, 4096, 3) and loaded.original_shape == (300, 5000)
    assert loaded.scale == (4096 / 5000, 246 / 300) and loaded.downscaled
    np.testing.assert_allclose(loaded.to_original(loaded.to_processed(2500.0, 150.0)), (2500.0, 150.0))
    assert loaded.bgr[100, 2048 - 3 : 2048 + 3].tolist() != [[255] * 3] * 6  # the edge stays at x = 2500 * s


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated by 90 degrees
    Image.new("RGB", (80, 40), (200, 10, 10)).save(tmp_path / "turned.jpg", exif=exif.tobytes())
    loaded = load_image(tmp_path / "turned.jpg")
    assert loaded.bgr.shape == (80, 40, 3) and loaded.original_shape == (80, 40)
