"""The Training tab: open a run folder, see per-layer health over the epochs, and one pixel's
sampling points at each saved epoch side by side (``viz_app.views.training_view`` draws both).

The run folder is one written by a DeformLens trainer (``health.csv`` from the health monitor,
``weights/epoch{k}.pt`` with ``save_period``) or a folder of epoch checkpoints alone; the bundled
demo run (``assets/training_demo/run``) opens by default. Checkpoints load through
``dcnv3.yolo.loading.load_model`` (nothing in them runs) and each forward takes the analyser's model lock.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from dcnv3.analysis.probe import prepare_image, probe
from dcnv3.bundled import bundled_path
from dcnv3.yolo.loading import load_model, train_imgsz
from viz_app.components.outputs import image_output
from viz_app.state.cache import LRUCache
from viz_app.state.context import AppContext
from viz_app.views import training_view

__all__ = ["build", "DEMO_RUN", "DEMO_IMAGE", "INTRO"]

DEMO_RUN = bundled_path("training_demo", "run")
DEMO_IMAGE = bundled_path("training_demo", "scene.jpg")
INTRO = (
    "**Offsets over training.** Open a run folder: the health the trainer's monitor wrote after every "
    "epoch (`health.csv`, see `dcnv3.training.monitor`) is plotted per layer, flagged epochs as red crosses. "
    "With epoch checkpoints (`save_period=1`), click the image to see where the chosen layer samples at "
    "that pixel after each saved epoch, side by side: the points grow out of the regular grid as the "
    "offsets learn. A folder of `epoch*.pt` alone works too (its health is then computed on the image)."
)
CHECKPOINT_CACHE = 6  # loaded epoch checkpoints kept (a few MB each)


def build(ctx: AppContext) -> None:
    """The Training tab (a top-level tab) and its events."""
    models = LRUCache(CHECKPOINT_CACHE)  # path -> loaded YOLO, for this app

    def model_at(path: Path):
        key = (str(path), path.stat().st_mtime_ns)
        return models.get(key) or models.put(key, load_model(path))

    with gr.Tab("Training", id="training", elem_id="tab-training"):
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                folder = gr.Textbox(
                    str(DEMO_RUN) if DEMO_RUN.is_dir() else "", label="Run folder", elem_id="training-folder"
                )
                open_button = gr.Button("Open run", variant="primary", elem_id="training-open")
                info = gr.Markdown(elem_id="training-info")
                layer = gr.Dropdown([], label="Layer (sampling strip)", elem_id="training-layer")
                image = gr.Image(
                    str(DEMO_IMAGE) if DEMO_IMAGE.is_file() else None,
                    type="numpy",
                    label="Image: click a pixel",
                    elem_id="training-image",
                    sources=["upload"],
                )
            with gr.Column(scale=2):
                plot = gr.Plot(label="Per-layer health over the epochs", elem_id="training-plot")
                strip = image_output(
                    label="Sampling points at the clicked pixel, one panel per saved epoch",
                    type="numpy",
                    interactive=False,
                    elem_id="training-strip",
                )
                strip_info = gr.Markdown(elem_id="training-strip-info")
        state = gr.State(None)  # the open TrainingRun

        def opened(path: str, picture):
            try:
                run = training_view.open_run(path)
                rows = run.rows
                if not rows and picture is not None:  # checkpoints only: health on the image
                    bgr = prepare_image(picture[..., ::-1].copy())
                    loaded = [(epoch, model_at(p)) for epoch, p in run.checkpoints]
                    with ctx.analyser.model_lock:
                        rows = training_view.checkpoint_health_rows(loaded, bgr, train_imgsz(loaded[-1][1]))
                    run.rows = rows
            except (ValueError, OSError) as error:
                return {
                    info: f"**Cannot open the run:** {error}",
                    state: None,
                    plot: None,
                    layer: gr.update(choices=[], value=None),
                }
            layers = run.layers
            default = layers[len(layers) // 2] if layers else None
            return {
                info: run.describe(),
                state: run,
                plot: training_view.health_figure(run.rows) if run.rows else None,
                layer: gr.update(choices=layers, value=default),
            }

        open_outputs = [info, state, plot, layer]
        open_button.click(opened, [folder, image], open_outputs, api_visibility="private")
        folder.submit(opened, [folder, image], open_outputs, api_visibility="private")

        def clicked(run, layer_name, picture, evt: gr.SelectData):
            if run is None or picture is None or not layer_name:
                return {strip: None, strip_info: "Open a run and pick a layer first."}
            if not run.checkpoints:
                return {strip: None, strip_info: "This run has no epoch checkpoints: train with `save_period=1`."}
            x, y = float(evt.index[0]) + 0.5, float(evt.index[1]) + 0.5  # the clicked pixel's centre
            bgr = prepare_image(picture[..., ::-1].copy())
            try:
                loaded = [(epoch, model_at(path)) for epoch, path in run.checkpoints]
                with ctx.analyser.model_lock:
                    probes = [(epoch, probe(model, bgr, imgsz=train_imgsz(model))) for epoch, model in loaded]
                picture_out, lines = training_view.sampling_strip(probes, bgr, layer_name, (x, y))
            except (ValueError, KeyError, OSError) as error:
                return {strip: None, strip_info: f"**No strip:** {error}"}
            return {strip: picture_out[..., ::-1], strip_info: f"Pixel ({x:.0f}, {y:.0f}), {layer_name}:\n" + lines}

        image.select(clicked, [state, layer, image], [strip, strip_info], api_visibility="private")
