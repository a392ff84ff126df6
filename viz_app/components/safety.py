"""What a client may make the server read: files it uploaded, never URLs or other paths.

gradio already refuses an API input whose ``path`` lies outside its upload folder ("File ... is not
in the cache folder", checked before any handler runs). It does, however, fetch an ``http(s)://``
"path" from the web on the client's behalf. DeformLens works offline and never fetches anything
for a client, so its file inputs refuse URLs outright.
"""

from __future__ import annotations

import gradio as gr
from gradio_client import utils as client_utils

__all__ = ["local_files_only", "URL_REFUSED"]

URL_REFUSED = "URLs are not fetched (DeformLens works offline): upload the file itself"


def local_files_only(component: gr.components.Component) -> gr.components.Component:
    """Make ``component`` refuse URL inputs instead of downloading them; returns it.

    The instance's cache movers are wrapped (not the class subclassed: gradio writes a .pyi stub
    next to the source of every component subclass). Local files pass through unchanged.
    """
    move, async_move = component.move_resource_to_block_cache, component.async_move_resource_to_block_cache

    def refuse_urls(path):
        if path is not None and client_utils.is_http_url_like(str(path)):
            raise gr.Error(URL_REFUSED)

    def guarded(path):
        refuse_urls(path)
        return move(path)

    async def async_guarded(path):
        refuse_urls(path)
        return await async_move(path)

    component.move_resource_to_block_cache = guarded
    component.async_move_resource_to_block_cache = async_guarded
    return component
