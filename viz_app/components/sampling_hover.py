"""The Sampling view's hover (gradio): ``sampling_hover`` makes the ``gr.HTML`` whose JavaScript
(``sampling_hover.js``, beside this file; no CDN, the app stays offline) draws a deformable layer's
sampling under the pointer in the browser.

The component's value is ``viz_app.views.hover.hover_state`` (set by the Image tab's handlers when
the run, the detections picture or the layer changes); the browser then calls the component's
server functions once per layer (``hover_arrays``: that layer's offsets and weights,
``viz_app.views.hover.arrays_request``) and once per detections picture (``hover_base``,
``viz_app.views.hover.base_picture``), and draws every pointer move from what it keeps, with no
request while the pointer moves.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from viz_app.state.cache import LRUCache
from viz_app.views.hover import arrays_request, base_picture

__all__ = ["sampling_hover", "HOVER_SCRIPT"]

HOVER_SCRIPT = Path(__file__).with_name("sampling_hover.js")


def sampling_hover(probes: LRUCache, canvases: LRUCache, target: str, groups_target: str, **kwargs) -> gr.HTML:
    """The hover's component, a status line under the picture. Its script finds the picture in
    the block ``#target`` (a gr.Image) and the *Groups shown* checkboxes in ``#groups_target``;
    ``probes``: the runs it may ask arrays of, by ``viz_app.views.hover.hover_token``;
    ``canvases``: the detections pictures (``AppContext.canvases``), by
    ``viz_app.views.hover.base_name``."""

    def hover_arrays(request):
        return arrays_request(probes, request)

    def hover_base(request):
        return base_picture(canvases, request)

    return gr.HTML(
        None,
        html_template='<div class="deformlens-hover-status"></div>',
        css_template=".deformlens-hover-status { font-size: 0.9em; color: var(--body-text-color-subdued); }",
        js_on_load=HOVER_SCRIPT.read_text(encoding="utf-8"),
        server_functions=[hover_arrays, hover_base],
        target=target,
        groups_target=groups_target,
        **kwargs,
    )
