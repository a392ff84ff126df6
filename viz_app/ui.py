"""DeformLens' Blocks: the page, its tabs and the HTTP API, built from one ``AppContext``.

``build_app(ctx)`` lays out the header and the top-level tabs (Image, Video, Compare, Training, Learn); each
tab module's ``build`` makes its own components and events from the context, and the API
endpoints (``/detect``, ``/sampling``, ``/erf``, ``/ablate``, ``/video``) get hidden components of their own,
so they need no browser session. ``app.py`` makes the context and launches the Blocks.
"""

from __future__ import annotations

import gradio as gr

from viz_app.state.context import AppContext
from viz_app.tabs import ablation as ablation_tab
from viz_app.tabs import compare as compare_tab
from viz_app.tabs import image as image_tab
from viz_app.tabs import learn as learn_tab
from viz_app.tabs import receptive as receptive_tab
from viz_app.tabs import training as training_tab
from viz_app.tabs import video as video_tab

__all__ = ["build_app", "CSS", "THEME", "USAGE"]

CSS = """
#notices p { margin: 0.2em 0; }
#sampling-info { font-size: 0.95em; }
.gradio-container { max-width: 1600px !important; }
"""
THEME = gr.themes.Default(primary_hue="orange", secondary_hue="blue", neutral_hue="slate")
USAGE = (
    "Upload an image (or pick an example). **Click** anywhere on the picture, or pick a detection, to "
    "see where every group of the chosen deformable layer samples: grey rings are the regular KxK grid, "
    "arrows lead to the learned sampling points, a point's size and opacity grow with its weight, read "
    "by the layer's weight kind (DCNv3 softmax: relative to the uniform 1/P; DCNv2 sigmoid: the value in "
    "[0, 1]; DCNv4 free: |m| relative to the group's mean, hollow = negative), as the text under the "
    "picture says."
)


def build_app(ctx: AppContext) -> gr.Blocks:
    """The DeformLens Blocks (not launched). Controls left, views right."""
    # delete_cache: every hour, drop cached files (uploads, views, exports) older than a day
    # (app.py sets it from --keep-files-minutes).
    with gr.Blocks(title="DeformLens", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(
            "## DeformLens: what the deformable layers (DCNv2, DCNv3, DCNv4) of a YOLO detector learned\n" + USAGE
        )
        with gr.Tabs(elem_id="main-tabs") as main_tabs:
            with gr.Tab("Image", id="image", elem_id="tab-image"):
                image = image_tab.build(ctx)
            with gr.Tab("Video", id="video", elem_id="tab-video") as video_tab_item:
                video_tab.build(ctx, image.image_in, image.model, main_tabs, video_tab_item)
            compare_tab.build(ctx, image.image_in)
            training_tab.build(ctx)
            learn_tab.build(ctx)
        with gr.Column(visible=False):  # the HTTP API's own components
            image_tab.build_api(ctx)
            receptive_tab.build_api(ctx)
            ablation_tab.build_api(ctx)
            video_tab.build_api(ctx)
    return demo
