"""Input components shared by the tabs (gradio): ``image_file_input``.

Each refuses URLs (``safety.local_files_only``): the server reads only files a client uploaded.
"""

from __future__ import annotations

import gradio as gr

from viz_app.components.outputs import image_output
from viz_app.components.safety import local_files_only

__all__ = ["image_file_input"]


def image_file_input(**kwargs) -> gr.Image:
    """A gr.Image input that hands the app the uploaded file's path without decoding it.

    ``images.load_image`` then reads the file and says what is wrong with a bad one ("not an
    image", "a corrupt or truncated image"); gr.Image's own check would fail first, with a generic
    "could not preprocess" error. (The instance's ``preprocess`` is replaced rather than the class
    subclassed, because gradio writes a .pyi stub next to the source of every component subclass.)
    """
    # It is also an output (examples, a tab handing its image over): stored as image_output does.
    component = image_output(type="filepath", image_mode=None, **kwargs)
    decode = component.preprocess

    def preprocess(payload):
        if payload is not None and payload.path is not None:
            return str(payload.path)
        return decode(payload)  # e.g. a pasted image sent as a data URL

    component.preprocess = preprocess
    return local_files_only(component)  # a URL is refused, never fetched
