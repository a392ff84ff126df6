"""Output components shared by the tabs (gradio): ``image_output``.

Why not plain ``gr.Image``: gradio (6.31) stores a returned picture at
``<cache>/<hash of its bytes>/image.<format>`` by rewriting that file in place (truncate, then
write). Two sessions that get the same picture at the same time (the same call on the same image,
a shared example) rewrite one file while a client is downloading it, and that download ends short
("peer closed connection without sending complete message body (received 0 bytes, expected
85039)", seen in the eight-user test). ``image_output`` writes each picture under a temporary
name and renames it into place, as ``FileStore`` does and gradio does for files it copies
(``save_file_to_cache``): a reader sees the whole old file or the whole new one, never a cut one.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from viz_app.state.files import store_once

__all__ = ["image_output", "save_picture_to_cache"]


def save_picture_to_cache(picture: np.ndarray | Image.Image, cache_dir: str | Path, format: str = "webp") -> str:
    """Encode ``picture`` (an (H, W, 3) or (H, W) uint8 array, or a PIL image) as ``format`` and
    store it content-addressed under ``cache_dir``; returns the file's path.

    Stored by ``files.store_once``: a picture already there is never rewritten (same bytes, same
    path), a new one is written to a temporary file and renamed over the final name.
    """
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    buffer = io.BytesIO()
    picture.save(buffer, format=format)
    data = buffer.getvalue()
    folder = Path(cache_dir) / hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"image.{format}"
    store_once(final, data)
    return str(final.resolve())


def image_output(**kwargs) -> gr.Image:
    """A gr.Image for pictures the app returns (uint8 arrays or PIL images), stored atomically by
    ``save_picture_to_cache``; any other value (a file path, None) goes through gr.Image as usual.

    (The instance's ``postprocess`` is replaced rather than the class subclassed, because gradio
    writes a .pyi stub next to the source of every component subclass.)
    """
    component = gr.Image(**kwargs)
    store = component.postprocess

    def postprocess(value):
        storable = (isinstance(value, np.ndarray) and value.dtype == np.uint8) or isinstance(value, Image.Image)
        watermarked = component.watermark is not None and component.watermark.watermark is not None
        if storable and not watermarked:  # a watermark is gradio's to draw: leave that case to it
            format = component.format if component.format else "webp"
            value = save_picture_to_cache(value, component.GRADIO_CACHE, format)
        return store(value)

    component.postprocess = postprocess
    return component
