"""The server path once an image's run is cached (issue #23): a file the app has seen is not decoded
(or, unchanged, hashed) again; the API's pictures are the drawn arrays, encoded as high-quality
JPEGs, and a repeated request is neither drawn nor encoded again; exported pictures are unchanged
(lossless PNG)."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from repo_paths import FORK_A

import viz_app.state.images as images_module
from viz_app.components.outputs import image_output, save_picture_to_cache
from viz_app.state.context import AppContext
from viz_app.state.images import ImageCache, load_image
from viz_app.state.models import ModelRegistry
from viz_app.tabs.image import API_PICTURE_FORMAT, ImageApi, api_scale
from viz_app.views import exports, render
from viz_app.views.render import to_rgb

BUS = Path(__file__).resolve().parents[2] / "assets" / "examples" / "bus.jpg"


@pytest.fixture
def decodes(monkeypatch):
    """Counts the files actually decoded (Pillow)."""
    calls = []
    real = images_module._decode_file
    monkeypatch.setattr(images_module, "_decode_file", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


def test_a_file_seen_before_is_neither_decoded_nor_hashed_again(tmp_path, decodes, monkeypatch):
    path = tmp_path / "bus.jpg"
    path.write_bytes(BUS.read_bytes())
    reference = load_image(path)
    decodes.clear()
    cache = ImageCache()
    first = cache.load(path)
    hashed = []
    real_digest = images_module._file_digest
    monkeypatch.setattr(images_module, "_file_digest", lambda data: hashed.append(1) or real_digest(data))
    again = cache.load(str(path))
    assert len(decodes) == 1 and not hashed  # same file, unchanged: answered from its identity
    assert again.key == first.key and again.bgr is first.bgr
    np.testing.assert_array_equal(first.bgr, reference.bgr)
    assert first.key == reference.key
    # A new file with known content (gradio saves every upload anew): read and hashed, not decoded.
    copy = tmp_path / "upload" / "photo.jpg"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    same = cache.load(copy)
    assert len(decodes) == 1
    assert same.key == first.key and same.name == "photo" and first.name == "bus"
    # The file changed: decoded again, with its new content.
    image = cv2.imread(str(path))
    image[:8, :8] = 0
    cv2.imwrite(str(path), image)
    os.utime(path, ns=(1, 1))  # even with an old mtime: size and ctime changed too
    changed = cache.load(path)
    assert len(decodes) == 2 and changed.key != first.key
    assert cache.decodes == 2


def test_cache_says_what_is_wrong_with_a_bad_file(tmp_path):
    cache = ImageCache()
    with pytest.raises(ValueError, match="no such file"):
        cache.load(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="the file is empty"):
        cache.load(tmp_path / "empty.jpg")
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        cache.load(tmp_path / "notes.jpg")


@pytest.fixture(scope="module")
def api():
    return ImageApi(AppContext.create(ModelRegistry(model=FORK_A)))


def test_api_calls_on_a_known_image_decode_once_and_draw_what_they_did(api, decodes):
    name = api.ctx.registry.default_name()
    picture, payload = api.detect(str(BUS), name, 0.3, 0.7, 320)
    again, payload_again = api.detect(str(BUS), name, 0.3, 0.7, 320)
    other, _ = api.detect(str(BUS), name, 0.5, 0.7, 320)
    assert len(decodes) <= 1  # (0 when an earlier test of this module already loaded it)
    assert again is picture and payload_again == payload and other is not picture
    assert not picture.flags.writeable  # cached: image_output may reuse its encoding
    analysis = api.ctx.analyser.analyse(str(BUS), name, 0.3, 0.7, imgsz=320)
    canvas, scale = render.make_canvas(analysis.image.bgr, api_scale(analysis))
    drawn = to_rgb(render.draw_detections(canvas, analysis.probe.detections, scale, max_boxes=10**6))
    np.testing.assert_array_equal(picture, drawn)  # what /detect returned before this change
    assert payload == exports.detections_payload(
        analysis.probe, analysis.image.scale, analysis.model_name, analysis.notices
    )
    analysis = api.ctx.analyser.analyse(str(BUS), name, imgsz=320)
    for layer in [record.name for record in analysis.probe.layers]:
        for x, y in [(0, 0), (300.5, 611.2), (809.9, 1079.9)]:
            picture, payload = api.sampling(str(BUS), name, layer, x, y, 320)
            view = render.sampling_view(
                analysis.image.bgr, analysis.probe, layer, analysis.image.to_processed(x, y), scale=api_scale(analysis)
            )
            np.testing.assert_array_equal(picture, to_rgb(view.overlay))  # render.sampling_view's overlay
            assert payload == exports.sampling_payload(analysis.probe, layer, view.cell, analysis.image.scale, (x, y))
    assert len(decodes) <= 1


def test_api_picture_is_a_high_quality_jpeg_encoded_once(tmp_path, api):
    name = api.ctx.registry.default_name()
    picture, _ = api.detect(str(BUS), name, 0.25, 0.7, 320)
    component = image_output(format=API_PICTURE_FORMAT)
    component.GRADIO_CACHE = str(tmp_path)
    stored = component.postprocess(picture)
    assert str(stored.path).endswith(".jpeg")
    decoded = np.asarray(Image.open(stored.path).convert("RGB")).astype(float)
    psnr = 10 * np.log10(255**2 / np.mean((decoded - picture) ** 2))
    # Quality 92 without chroma subsampling measures 35.7 dB on bus.jpg (a detailed photograph,
    # where JPEG's loss concentrates in fine texture); 34 leaves room for another libjpeg.
    assert psnr > 34, psnr
    written = os.stat(stored.path).st_mtime_ns
    os.utime(stored.path, ns=(written - 10**9, written - 10**9))
    assert component.postprocess(picture).path == stored.path  # the same array: not encoded again, only touched
    assert os.stat(stored.path).st_mtime_ns >= written
    Path(stored.path).unlink()  # a cleanup removed it: stored again
    assert Path(component.postprocess(picture).path).is_file()
    writable = np.array(picture)  # a writable array may change between calls: encoded each time
    assert component.postprocess(writable).path == stored.path


def test_lossy_formats_keep_their_quality(tmp_path):
    rng = np.random.default_rng(0)
    picture = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (9, 9), 3)
    for format, floor in (("webp", 30), ("jpeg", 38)):
        decoded = np.asarray(Image.open(save_picture_to_cache(picture, tmp_path, format)).convert("RGB"))
        error = np.mean((decoded.astype(float) - picture) ** 2)
        assert 10 * np.log10(255**2 / max(error, 1e-9)) > floor, format


def test_exported_png_is_lossless(tmp_path):
    overlay = cv2.imread(str(BUS))
    registry = ModelRegistry(model=FORK_A)
    context = AppContext.create(registry)
    analysis = context.analyser.analyse(str(BUS), registry.default_name(), imgsz=320)
    written = exports.export_all(tmp_path, "bus", overlay, analysis.probe, None)
    pngs = [Path(p) for p in written if str(p).endswith(".png")]
    assert len(pngs) == 1
    np.testing.assert_array_equal(cv2.imread(str(pngs[0])), overlay)  # the export's PNG is the overlay, exactly
