"""viz_app.components.outputs: pictures returned to gradio are stored whole, even when two sessions get the
same picture at once (the race that cut a download short in the eight-user test)."""

import inspect
import os
import threading

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from viz_app.components.outputs import image_output, save_picture_to_cache


@pytest.fixture
def picture():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)  # noise: a PNG of ~57 KB, slow to write


def test_png_round_trip_is_exact(tmp_path, picture):
    path = save_picture_to_cache(picture, tmp_path, "png")
    assert path.endswith("image.png")
    assert np.array_equal(np.asarray(Image.open(path)), picture)


def test_same_picture_is_stored_once_and_never_rewritten(tmp_path, picture):
    first = save_picture_to_cache(picture, tmp_path, "png")
    inode, size = os.stat(first).st_ino, os.stat(first).st_size
    with open(first, "rb") as reader:  # a download in progress
        second = save_picture_to_cache(picture, tmp_path, "png")
        assert second == first
        assert os.stat(second).st_ino == inode  # the file being read was left alone
        assert len(reader.read()) == size
    other = save_picture_to_cache(255 - picture, tmp_path, "png")
    assert other != first
    assert not [name for name in os.listdir(os.path.dirname(first)) if name.startswith(".")]  # no staging left


def test_component_stores_arrays_atomically_and_passes_paths_through(tmp_path, picture):
    component = image_output(format="png")
    component.GRADIO_CACHE = str(tmp_path)
    stored = component.postprocess(picture)
    assert str(stored.path).startswith(str(tmp_path))
    assert np.array_equal(np.asarray(Image.open(stored.path)), picture)
    assert component.postprocess(Image.fromarray(picture)).path == stored.path
    assert component.postprocess(None) is None
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(picture).save(outside)
    assert str(component.postprocess(str(outside)).path) == str(outside)  # gradio copies it later


def _short_reads(component: gr.Image, picture: np.ndarray, seconds: float = 1.0) -> tuple[int, int]:
    """Two threads store the same picture over and over while two read the stored file whole;
    returns (reads that found the file shorter than the picture, reads in all)."""
    path = component.postprocess(picture).path
    size = os.path.getsize(path)
    stop, short, total = threading.Event(), [0], [0]

    def write():
        while not stop.is_set():
            component.postprocess(picture)

    def read():
        while not stop.is_set():
            with open(path, "rb") as file:
                got = len(file.read())
            total[0] += 1
            short[0] += got != size

    threads = [threading.Thread(target=target) for target in (write, write, read, read)]
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return short[0], total[0]


def test_concurrent_stores_of_one_picture_never_cut_a_reader_short(tmp_path, picture, report):
    ours = image_output(format="png")
    ours.GRADIO_CACHE = str(tmp_path / "ours")
    short, total = _short_reads(ours, picture)
    assert total > 0
    assert short == 0, f"{short} of {total} reads found a partly written picture"
    # The same load on gradio's own gr.Image (writes in place): how often a reader is cut short.
    stock = gr.Image(format="png")
    stock.GRADIO_CACHE = str(tmp_path / "stock")
    stock_short, stock_total = _short_reads(stock, picture)
    report(
        f"stored pictures under concurrent stores: image_output {short}/{total} short reads; "
        f"gr.Image {stock_short}/{stock_total}"
    )


def test_every_picture_the_app_returns_is_stored_atomically():
    """Each gr.Image that any event of the app writes to comes from image_output (or
    image_file_input, built on it): none keeps gr.Image's in-place store."""
    from viz_app.state.context import AppContext
    from viz_app.state.models import ModelRegistry
    from viz_app.ui import build_app

    demo = build_app(AppContext.create(ModelRegistry()))
    written = {block for function in demo.fns.values() for block in function.outputs if isinstance(block, gr.Image)}
    assert len(written) >= 10
    stock = [block.elem_id or block.label for block in written if inspect.ismethod(block.postprocess)]
    assert not stock, f"gr.Image outputs that still store pictures in place: {stock}"
