"""Output components shared by the tabs (gradio): ``image_output``.

Why not plain ``gr.Image``: gradio (6.31) stores a returned picture at
``<cache>/<hash of its bytes>/image.<format>`` by rewriting that file in place (truncate, then
write). Two sessions that get the same picture at the same time (the same call on the same image,
a shared example) rewrite one file while a client is downloading it, and that download ends short
("peer closed connection without sending complete message body (received 0 bytes, expected
85039)", seen in the eight-user test). ``image_output`` writes each picture under a temporary
name and renames it into place, as ``FileStore`` does and gradio does for files it copies
(``save_file_to_cache``): a reader sees the whole old file or the whole new one, never a cut one.

Encoding is chosen for speed at the same quality (``ENCODINGS``, measured on bus.jpg, 1 MP, on a 2-core
machine): PNG at zlib level 1 (lossless: the same pixels; 55 ms where PIL's default level takes
185 ms, for a file <1 % larger: a photograph's PNG hardly compresses further); WebP at PIL's default
quality 80 with its fastest method (25 ms instead of 85 ms, the same PSNR, a file ~10 % larger);
JPEG at quality 92 without chroma subsampling (as ``FileStore.picture``). A read-only array (one
a caller caches and returns again, as the API does for a repeated request) is encoded once: its
file is remembered by identity while it is cached here.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from viz_app.state.files import store_once

__all__ = ["image_output", "save_picture_to_cache", "ENCODINGS"]

# Pillow's save options per format (see the module's docstring for why these).
ENCODINGS = {
    "png": {"compress_level": 1},
    "webp": {"quality": 80, "method": 0},
    "jpeg": {"quality": 92, "subsampling": 0},
}
ENCODINGS["jpg"] = ENCODINGS["jpeg"]
_REMEMBERED = 32  # read-only arrays whose stored file each image_output remembers (weakly)


def save_picture_to_cache(picture: np.ndarray | Image.Image, cache_dir: str | Path, format: str = "webp") -> str:
    """Encode ``picture`` (an (H, W, 3) or (H, W) uint8 array, or a PIL image) as ``format`` (with
    ``ENCODINGS``' options) and store it content-addressed under ``cache_dir``; returns the file's path.

    Stored by ``files.store_once``: a picture already there is never rewritten (same bytes, same
    path), a new one is written to a temporary file and renamed over the final name.
    """
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    buffer = io.BytesIO()
    picture.save(buffer, format=format, **ENCODINGS.get(format.lower(), {}))
    data = buffer.getvalue()
    folder = Path(cache_dir) / hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"image.{format}"
    store_once(final, data)
    return str(final.resolve())


def image_output(**kwargs) -> gr.Image:
    """A gr.Image for pictures the app returns (uint8 arrays or PIL images), stored atomically by
    ``save_picture_to_cache``; any other value (a file path, None) goes through gr.Image as usual.

    A read-only array returned again (the same object: a caller's cached picture) is not encoded
    again while its file is still there; the component remembers the last few such arrays by weak
    reference (it keeps none alive, and a freed array's id, reused, is not mistaken for it).

    (The instance's ``postprocess`` is replaced rather than the class subclassed, because gradio
    writes a .pyi stub next to the source of every component subclass.)
    """
    component = gr.Image(**kwargs)
    store = component.postprocess
    remembered: OrderedDict[int, tuple] = OrderedDict()  # id -> (weakref to array, (format, cache dir), path)
    lock = threading.Lock()

    def stored(value, format: str) -> str:
        frozen = isinstance(value, np.ndarray) and not value.flags.writeable
        how = (format, str(component.GRADIO_CACHE))
        if frozen:
            with lock:
                entry = remembered.get(id(value))
            if entry is not None and entry[0]() is value and entry[1] == how:
                try:
                    os.utime(entry[2])  # as files.store_once: age-based cleanups count from this use
                    return entry[2]
                except FileNotFoundError:  # a cleanup removed it: encode it again
                    pass
        path = save_picture_to_cache(value, component.GRADIO_CACHE, format)
        if frozen:
            with lock:
                remembered[id(value)] = (weakref.ref(value), how, path)
                remembered.move_to_end(id(value))
                while len(remembered) > _REMEMBERED:
                    remembered.popitem(last=False)
        return path

    def postprocess(value):
        storable = (isinstance(value, np.ndarray) and value.dtype == np.uint8) or isinstance(value, Image.Image)
        watermarked = component.watermark is not None and component.watermark.watermark is not None
        if storable and not watermarked:  # a watermark is gradio's to draw: leave that case to it
            value = stored(value, component.format if component.format else "webp")
        return store(value)

    component.postprocess = postprocess
    return component
