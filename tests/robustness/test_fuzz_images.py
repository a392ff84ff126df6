"""Fuzzed images: every broken or unusual file gets a clear message or is converted, in the package
and through the running server, and the server keeps answering afterwards.

Random bytes, truncated JPEG / PNG / GIF, wrong extensions, an empty file, 1 x 4000 and 4000 x 1,
16-bit RGB PNG, CMYK JPEG, animated GIF, bilevel / palette / float TIFF images.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest
from app_server import served_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from serving import EXAMPLES

from viz_app.state.analyser import Analyser
from viz_app.state.images import load_image
from viz_app.state.models import ModelRegistry

BUS = EXAMPLES / "bus.jpg"

# name -> None (the image is used; the value of "size" is its width, height) or the refusal's message.
REFUSED = {
    "random_bytes.jpg": "random_bytes.jpg: not an image",
    "random_bytes.png": "random_bytes.png: not an image",
    "empty.jpg": "empty.jpg: the file is empty",
    "truncated_half.jpg": "truncated_half.jpg: a corrupt or truncated image",
    "truncated_header.jpg": "truncated_header.jpg: a corrupt or truncated image",
    "truncated_half.png": "truncated_half.png: a corrupt or truncated image",
    "truncated_signature.png": "truncated_signature.png: not an image",
}
USED = {  # name -> (width, height) of the original file, and a note the app must add (or None)
    "png_named.jpg": ((81, 108), None),
    "jpeg_named.png": ((81, 108), None),
    "jpeg_named.txt": ((81, 108), None),
    "tall_1x4000.png": ((1, 4000), "tiny image"),
    "wide_4000x1.png": ((4000, 1), "tiny image"),
    "rgb16.png": ((80, 60), None),
    "cmyk.jpg": ((64, 48), None),
    "animated.gif": ((40, 30), "an animated image (3 frames): its first frame is analysed"),
    "animated_truncated.gif": ((40, 30), None),
    "bilevel.png": ((30, 20), None),
    "palette.gif": ((30, 20), None),
    "float.tiff": ((30, 20), None),
}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzzed_images")
    rng = np.random.default_rng(0)
    small = cv2.resize(cv2.imread(str(BUS)), (81, 108))
    jpeg = cv2.imencode(".jpg", small)[1].tobytes()
    png = cv2.imencode(".png", small)[1].tobytes()
    (folder / "random_bytes.jpg").write_bytes(rng.bytes(5000))
    (folder / "random_bytes.png").write_bytes(rng.bytes(100))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated_half.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "truncated_header.jpg").write_bytes(jpeg[:200])
    (folder / "truncated_half.png").write_bytes(png[: len(png) // 2])
    (folder / "truncated_signature.png").write_bytes(png[:6])
    (folder / "png_named.jpg").write_bytes(png)
    (folder / "jpeg_named.png").write_bytes(jpeg)
    (folder / "jpeg_named.txt").write_bytes(jpeg)
    cv2.imwrite(str(folder / "tall_1x4000.png"), np.full((4000, 1, 3), 128, np.uint8))
    cv2.imwrite(str(folder / "wide_4000x1.png"), np.full((1, 4000, 3), 128, np.uint8))
    rgb16 = rng.integers(0, 65535, (60, 80, 3), dtype=np.uint16)
    cv2.imwrite(str(folder / "rgb16.png"), rgb16)
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(folder / "cmyk.jpg")  # pure red in CMYK
    frames = [Image.new("RGB", (40, 30), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gif = (folder / "animated.gif").read_bytes()
    (folder / "animated_truncated.gif").write_bytes(gif[: len(gif) // 2])  # the first frame survives
    Image.new("1", (30, 20), 1).save(folder / "bilevel.png")
    Image.new("P", (30, 20), 3).save(folder / "palette.gif")
    Image.new("F", (30, 20), 0.5).save(folder / "float.tiff")
    np.save(folder / "rgb16_expected.npy", (rgb16 >> 8).astype(np.uint8))
    return folder


@pytest.mark.parametrize("name,message", sorted(REFUSED.items()))
def test_broken_files_are_refused_with_a_one_line_reason(fuzzed, name, message):
    with pytest.raises(ValueError, match=message) as error:
        load_image(fuzzed / name)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", sorted(USED))
def test_unusual_files_become_bgr_uint8(fuzzed, name):
    (width, height), note = USED[name]
    loaded = load_image(fuzzed / name)
    assert loaded.original_shape == (height, width)
    assert loaded.bgr.dtype == np.uint8 and loaded.bgr.shape == (height, width, 3)
    if note:
        assert any(note in n for n in loaded.notes), loaded.notes


def test_converted_pixels_are_right(fuzzed):
    assert load_image(fuzzed / "cmyk.jpg").bgr[10, 10].tolist() == pytest.approx([0, 0, 255], abs=3)
    assert load_image(fuzzed / "animated.gif").bgr[5, 5].tolist() == [0, 0, 255]  # frame 1: red
    np.testing.assert_array_equal(load_image(fuzzed / "rgb16.png").bgr, np.load(fuzzed / "rgb16_expected.npy"))
    assert load_image(fuzzed / "bilevel.png").bgr.max() == 255


@pytest.fixture(scope="module")
def server():
    """One in-process server for the module (the bundled model, else the untrained one)."""
    registry = ModelRegistry()
    with served_app(registry, Analyser(registry)) as url:
        yield Client(url, verbose=False)


@pytest.fixture(scope="module")
def reference(server, fuzzed):
    """A good image's answer, before any fuzzing: later answers must equal it."""
    small = fuzzed / "good.png"
    cv2.imwrite(str(small), cv2.resize(cv2.imread(str(BUS)), (162, 216)))
    return small, server.predict(handle_file(str(small)), "", 0.25, 0.7, api_name="/detect")[1]


def _still_serving(server, reference):
    good, expected = reference
    assert server.predict(handle_file(str(good)), "", 0.25, 0.7, api_name="/detect")[1] == expected


@pytest.mark.parametrize("name,message", sorted(REFUSED.items()))
def test_server_refuses_broken_files_and_keeps_serving(server, reference, fuzzed, name, message):
    with pytest.raises(AppError, match=message):
        server.predict(handle_file(str(fuzzed / name)), "", 0.25, 0.7, api_name="/detect")
    _still_serving(server, reference)


@pytest.mark.parametrize("name", sorted(USED))
def test_server_probes_unusual_files_everywhere(server, reference, fuzzed, name):
    (width, height), note = USED[name]
    _, payload = server.predict(handle_file(str(fuzzed / name)), "", 0.25, 0.7, api_name="/detect")
    assert payload["image_size"] == [width, height]
    if note:
        assert any(note in n for n in payload["notices"]), payload["notices"]
    # The far corner of even a 1-pixel-wide image is answered with a cell of the deepest layer.
    layers = [layer["name"] for layer in payload["deformable_layers"]]
    if layers:
        _, points = server.predict(
            handle_file(str(fuzzed / name)), "", layers[-1], width - 0.5, height - 0.5, api_name="/sampling"
        )
        assert len(points["points"]) > 0
    _still_serving(server, reference)
