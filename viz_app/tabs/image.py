"""The Image tab (gradio wiring): controls left; the Sampling, Fields, Health, Receptive field
and Ablation views right; and the ``/detect`` and ``/sampling`` API endpoints.

Why one module (over 400 lines): gradio wires a tab's components and events inside one Blocks
context; the logic it calls lives in viz_app.views and viz_app.state.

Data flow: an image, model or input size change runs the model once through the context's
``Analyser`` (cached); the ``Analysis`` lives in a ``gr.State``. Moving the pointer over the
Sampling picture is the browser's alone (``viz_app.components.sampling_hover``: the hover gets the
run's geometry as its value and fetches each layer's arrays once). Every click, detection pick,
layer, group or field change re-renders from the Analysis with ``render`` functions and never
reruns the model (a click returns its picture first, then the zoom, trace and weights); a
confidence or IoU change takes the detections from the cached forward (``threshold_change``: NMS,
the detections canvas and the dilation table, nothing else). What the user looks at (point,
layer, highlighted detection, cell) is an ``view_state.ImageView`` in a second ``gr.State``,
returned as an output by every handler that changes it. Handlers return ``{component: value}``
dicts: components left out keep their value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from dcnv3.bundled import bundled_path
from dcnv3.draw.overlay import draw_cell
from dcnv3.ops.sampling_hooks import describe_layers
from dcnv3.yolo.checkpoints import CheckpointError
from viz_app.components.inputs import image_file_input
from viz_app.components.outputs import image_output
from viz_app.components.sampling_hover import sampling_hover
from viz_app.state.analyser import DEFAULT_CONF, DEFAULT_IOU, Analysis
from viz_app.state.cache import LRUCache
from viz_app.state.context import AppContext
from viz_app.state.view_state import ImageView
from viz_app.tabs import ablation as ablation_tab
from viz_app.tabs import receptive as receptive_tab
from viz_app.views import exports, health, render
from viz_app.views.hover import base_name, hover_state, hover_token
from viz_app.views.render import to_rgb

__all__ = [
    "build",
    "build_api",
    "threshold_change",
    "ThresholdChange",
    "ImageTab",
    "EXAMPLES_DIR",
    "IMGSZ_CHOICES",
    "MAX_DETECTION_CHOICES",
    "API_IMAGE_SIDE",
    "API_PICTURE_FORMAT",
    "ImageApi",
    "api_scale",
]

EXAMPLES_DIR = bundled_path("examples")
MAX_DETECTION_CHOICES = 100
API_IMAGE_SIDE = 2048  # the API's pictures are at most this long (JSON coordinates are exact anyway)
# Network input sizes offered; 0 = the size the model was trained at (its checkpoint's imgsz).
IMGSZ_CHOICES = [("the model's training size", 0), 320, 416, 480, 640, 800, 960, 1280]
PRIVATE = dict(api_visibility="private")
HEALTH_TAB = "Health"  # the views tab that shows the dilation-by-size table


@dataclass
class ImageTab:
    """The Image tab's components that other tabs use: the image input and model dropdown (the
    video frame inspector sets them) and the states (the receptive-field view reads them)."""

    image_in: gr.Image
    model: gr.Dropdown
    analysis: gr.State
    view: gr.State


@dataclass
class _Components:
    """Every component the Image tab's handlers read or write."""

    image_in: gr.Image
    model: gr.Dropdown
    checkpoint: gr.UploadButton
    notices: gr.Markdown
    conf: gr.Slider
    iou: gr.Slider
    imgsz: gr.Dropdown
    detection: gr.Dropdown
    layer: gr.Dropdown
    groups: gr.CheckboxGroup
    export_button: gr.Button
    export_files: gr.File
    overlay: gr.Image
    hover: gr.HTML  # draws the layer's sampling under the pointer, in the browser
    info: gr.Markdown
    figure: gr.Plot
    trace: gr.Image
    weights: gr.Plot
    field: gr.Radio
    field_group: gr.Dropdown
    opacity: gr.Slider
    smooth: gr.Checkbox
    field_image: gr.Image
    health_table: gr.Dataframe
    histograms: gr.Plot
    dilation_table: gr.Dataframe
    analysis: gr.State
    view: gr.State
    views_tabs: list[gr.Tab]  # Sampling, Fields, Health, Receptive field, Ablation
    shown: gr.State  # the label of the views tab on display

    @property
    def sampling(self) -> list:
        """The outputs of a sampling re-render (``_Events.render_sampling``)."""
        return [self.overlay, self.figure, self.weights, self.trace, self.info, self.view]


def _notice_markdown(analysis: Analysis) -> str:
    """The model's and the image's notices (bold), then what ran."""
    probe = analysis.probe
    lines = [f"- **{note}**" for note in analysis.notices]
    kinds = describe_layers(layer.weight_kind for layer in probe.layers)
    lines.append(
        f"- {len(probe.detections)} detections, {kinds}; model ran in "
        f"{analysis.seconds:.2f} s on a {probe.image_shape[1]} x {probe.image_shape[0]} px image "
        f"(network input {probe.letterbox.input_shape[1]} x {probe.letterbox.input_shape[0]})"
    )
    return "\n".join(lines)


def _detection_choices(analysis: Analysis) -> list[tuple[str, int]]:
    """The detection dropdown's (label, index) pairs, best first."""
    detections = analysis.probe.detections
    order = np.argsort(-detections.scores, kind="stable")[:MAX_DETECTION_CHOICES].tolist()
    return [(f"#{i + 1} {detections.label(i)}", i) for i in order]


def _group_choices(analysis: Analysis, layer: str | None):
    groups = analysis.probe.layer(layer).groups if layer else 0
    return gr.update(choices=[(f"group {g}", g) for g in range(groups)], value=list(range(groups)))


def _field_group_choices(analysis: Analysis, layer: str | None):
    groups = analysis.probe.layer(layer).groups if layer else 0
    return gr.update(choices=[("mean over groups", -1)] + [(f"group {g}", g) for g in range(groups)], value=-1)


def detections_canvas(ctx: AppContext, analysis: Analysis, highlight: int | None):
    """(detections canvas BGR (H, W, 3), (sx, sy) canvas px per image px): the image at its display
    scale with the detections drawn, cached in ``ctx.canvases`` per (analysis, highlight)."""

    def draw():
        canvas, scale = render.make_canvas(analysis.image.bgr)
        return render.draw_detections(canvas, analysis.probe.detections, scale, highlight), scale

    return ctx.canvases.get_or_compute((analysis.key, highlight), draw)


def dilation_table(analysis: Analysis) -> pd.DataFrame | None:
    """The Health view's effective dilation by detection size (None without a DCNv3 layer)."""
    if not analysis.probe.layers:
        return None
    return pd.DataFrame(health.dilation_by_size_rows(analysis.probe, analysis.image.scale[0]))


def surviving_detection(before, after, index: int | None) -> int | None:
    """The index in ``after`` of detection ``index`` of ``before`` (same box and class: both sets
    come from one forward's raw predictions, so a detection that survives NMS keeps its exact
    box), or None if it is gone."""
    if index is None or index >= len(before):
        return None
    same = np.flatnonzero((after.boxes == before.boxes[index]).all(axis=1) & (after.classes == before.classes[index]))
    return int(same[0]) if len(same) else None


@dataclass
class ThresholdChange:
    """What a confidence / IoU change shows: the analysis at the new thresholds, the view (same
    point and layer; the highlighted detection if it survived), the notices, the detection
    dropdown's choices and the sampling overlay (BGR canvas (H, W, 3) uint8)."""

    analysis: Analysis
    view: ImageView
    notices: str
    detection_choices: list[tuple[str, int]]
    overlay: np.ndarray


def threshold_change(
    ctx: AppContext, analysis: Analysis, view: ImageView, conf: float, iou: float, groups=None
) -> ThresholdChange:
    """The Sampling view after a threshold change, from the cached forward: no model run, and the
    zoom, weights, trace and fields (which do not show detections) stay as they are; the Health
    tab's dilation-by-size table (``dilation_table``) follows when that tab is shown. Raises
    ValueError for thresholds outside [0, 1]."""
    changed = analysis.at_thresholds(conf, iou)
    view = replace(
        view, highlight=surviving_detection(analysis.probe.detections, changed.probe.detections, view.highlight)
    )
    base, scale = detections_canvas(ctx, changed, view.highlight)
    overlay = base
    if view.layer and view.cell is not None:
        overlay = draw_cell(base, changed.probe, changed.probe.record(view.layer), view.cell, groups, scale)
    return ThresholdChange(changed, view, _notice_markdown(changed), _detection_choices(changed), overlay)


class _Events:
    """The Image tab's event handlers: each turns the cached Analysis and the view state into
    ``{component: value}``."""

    def __init__(self, ctx: AppContext, components: _Components):
        self.ctx, self.c = ctx, components

    # -- rendering --------------------------------------------------------------------------------
    def render_sampling(self, analysis: Analysis | None, view: ImageView | None, groups) -> dict:
        """The sampling outputs (overlay, zoom figure, weights, trace, message) and the view state
        with the cell found under its point."""
        c = self.c
        if analysis is None or view is None:
            return {
                c.overlay: None,
                c.figure: None,
                c.weights: None,
                c.trace: None,
                c.info: "Upload an image to start.",
                c.view: None,
            }
        result = self.sampling_view(analysis, view, groups)
        files = self.ctx.files
        return {
            c.overlay: files.picture(result.overlay),
            c.figure: result.figure,
            c.weights: result.weights,
            c.trace: files.picture(result.trace),
            c.info: result.message,
            c.view: view.rendered(result.cell),
        }

    def sampling_view(self, analysis: Analysis, view: ImageView, groups, with_overlay: bool = True):
        """``render.sampling_view`` of the view, on the cached detections canvas."""
        base, scale = detections_canvas(self.ctx, analysis, view.highlight)
        bgr, probe = analysis.image.bgr, analysis.probe
        return render.sampling_view(
            bgr, probe, view.layer, view.xy, groups, view.highlight, scale=scale, base=base, with_overlay=with_overlay
        )

    def picture_with_cell(self, analysis: Analysis, view: ImageView, groups) -> tuple[np.ndarray, tuple | None]:
        """(the Sampling picture: the cached detections canvas with the cell under the view's point
        drawn on a copy, BGR; that cell or None), without the zoom, trace and weights."""
        base, scale = detections_canvas(self.ctx, analysis, view.highlight)
        cell = render.cell_under(analysis.probe, view.layer, view.xy)
        if cell is None:
            return base, None
        return draw_cell(base, analysis.probe, analysis.probe.record(view.layer), cell, groups, scale), cell

    def field_picture(self, analysis: Analysis | None, view: ImageView | None, field, group, opacity, smooth):
        """The Fields view's picture file (None before an image or without a DCNv3 layer)."""
        if analysis is None or view is None or not view.layer:
            return None
        picture, _ = render.field_overlay(
            analysis.image.bgr,
            analysis.probe,
            view.layer,
            field,
            None if group in (None, -1) else int(group),
            opacity,
            render.display_scale(analysis.image.bgr.shape),
            smooth,
        )
        return self.ctx.files.picture(picture)

    def hover_value(self, analysis: Analysis | None, view: ImageView | None) -> dict | None:
        """The hover's value (``viz_app.views.hover.hover_state``) for the view's layer and the
        detections picture it draws over; the run's probe is offered for the browser's requests
        for layer arrays."""
        if analysis is None or view is None or not view.layer:
            return None
        token = hover_token(analysis.image.key, analysis.model_name, analysis.imgsz)
        self.ctx.hover_probes.put(token, analysis.probe)
        canvas, scale = detections_canvas(self.ctx, analysis, view.highlight)  # cached: the browser fetches it
        image, base = analysis.image, base_name(analysis.key, view.highlight)
        return hover_state(token, analysis.probe, view.layer, image.scale, image.original_shape, base, canvas, scale)

    # -- events -----------------------------------------------------------------------------------
    def run(self, image_path, model_name, conf, iou, imgsz, field, opacity, smooth) -> dict:
        """A new image / model / input size: run (or fetch) the probe and fill every view.
        ``imgsz`` 0: the model's training size."""
        c = self.c
        if image_path is None:
            return {
                c.analysis: None,
                c.notices: f"Model **{model_name}** selected: upload an image to start.",
                c.detection: gr.update(choices=[], value=None),
                c.layer: gr.update(choices=[], value=None),
                c.groups: gr.update(choices=[], value=[]),
                c.field_group: gr.update(choices=[], value=None),
                **self.render_sampling(None, None, None),
                c.hover: None,
                c.field_image: None,
                c.health_table: None,
                c.histograms: None,
                c.dilation_table: None,
            }
        try:
            analysis = self.ctx.analyser.analyse(image_path, model_name, conf, iou, imgsz=imgsz or None)
        except (ValueError, CheckpointError) as error:
            gr.Warning(str(error))
            return {c.notices: f"**Could not run:** {error}"}
        probe = analysis.probe
        x, y, layer, highlight = render.initial_query(probe)
        view = ImageView((x, y), layer, highlight)
        health_rows = health.health_rows(probe)
        return {
            c.analysis: analysis,
            c.notices: _notice_markdown(analysis),
            c.detection: gr.update(choices=_detection_choices(analysis), value=highlight),
            c.layer: gr.update(choices=[(render.layer_choice_label(r), r.name) for r in probe.layers], value=layer),
            c.groups: _group_choices(analysis, layer),
            c.field_group: _field_group_choices(analysis, layer),
            **self.render_sampling(analysis, view, None),
            c.hover: self.hover_value(analysis, view),
            c.field_image: self.field_picture(analysis, view, field, -1, opacity, smooth),
            c.health_table: pd.DataFrame(health_rows) if health_rows else None,
            c.histograms: render.health_histograms(probe) if probe.layers else None,
            c.dilation_table: dilation_table(analysis),
        }

    def change_thresholds(self, analysis, view, conf, iou, groups, shown):
        """A confidence / IoU slider release: detections from the cached forward (no model run);
        the view keeps its point and layer. ``shown``: the views tab on display (the dilation
        table, costly and only in the Health tab, is brought up to date when that tab shows)."""
        if analysis is None or view is None:
            return gr.skip()
        c = self.c
        try:
            change = threshold_change(self.ctx, analysis, view, conf, iou, groups)
        except ValueError as error:
            gr.Warning(str(error))
            return {c.notices: f"**Could not run:** {error}"}
        outputs = {
            c.analysis: change.analysis,
            c.view: change.view,
            c.notices: change.notices,
            c.detection: gr.update(choices=change.detection_choices, value=change.view.highlight),
            c.overlay: self.ctx.files.picture(change.overlay),
            c.hover: self.hover_value(change.analysis, change.view),
        }
        if shown == HEALTH_TAB:
            outputs[c.dilation_table] = dilation_table(change.analysis)
        return outputs

    def show_tab(self, analysis, evt: gr.SelectData):
        """A views tab was selected: remember which; the Health tab brings its dilation table up
        to date with the analysis' detections."""
        c = self.c
        outputs = {c.shown: evt.value}
        if evt.value == HEALTH_TAB and analysis is not None:
            outputs[c.dilation_table] = dilation_table(analysis)
        return outputs

    def render_details(self, analysis: Analysis | None, view: ImageView | None, groups) -> dict:
        """The sampling view's zoom figure, weights, trace and message (a click's second step)."""
        c = self.c
        if analysis is None or view is None:
            return {c.figure: None, c.weights: None, c.trace: None, c.info: "Upload an image to start."}
        result = self.sampling_view(analysis, view, groups, with_overlay=False)  # the click drew the picture
        return {
            c.figure: result.figure,
            c.weights: result.weights,
            c.trace: self.ctx.files.picture(result.trace),
            c.info: result.message,
        }

    def click(self, analysis, view, groups, evt: gr.SelectData):
        """A click on the picture: gradio gives the canvas pixel (x, y); its centre is x + 0.5.

        The first step of two: the picture with the clicked cell and the view state, at once; the
        zoom, trace, weights and text follow (``render_details``, chained), so the picture does not
        wait for the figures to be built, sent and drawn."""
        if analysis is None or view is None:
            gr.Warning("Upload an image first.")
            return gr.skip()
        if evt.index is None:
            gr.Warning("That click was outside the image.")
            return gr.skip()
        scale = render.display_scale(analysis.image.bgr.shape)
        x, y = render.canvas_to_image((evt.index[0] + 0.5, evt.index[1] + 0.5), scale)
        height, width = analysis.probe.image_shape
        if not (0 <= x < width and 0 <= y < height):
            gr.Warning("That click was outside the image (below it is the colour bar).")
            return gr.skip()
        view = replace(view, xy=(float(x), float(y)))
        overlay, cell = self.picture_with_cell(analysis, view, groups)
        return {self.c.overlay: self.ctx.files.picture(overlay), self.c.view: view.rendered(cell)}

    def pick_detection(self, analysis, view, index, groups, field, field_group, opacity, smooth):
        """A detection from the dropdown: its centre, in the layer that matches its size."""
        if analysis is None or view is None or index is None:
            return gr.skip()
        c = self.c
        x, y, layer = render.query_for_detection(analysis.probe, int(index))
        changed = layer != view.layer
        view = replace(view, xy=(x, y), layer=layer, highlight=int(index))
        if changed:
            groups = list(range(analysis.probe.layer(layer).groups)) if layer else []
        outputs = {
            c.layer: gr.update(value=layer),
            **self.render_sampling(analysis, view, groups),
            c.hover: self.hover_value(analysis, view),
            c.field_image: self.field_picture(analysis, view, field, -1 if changed else field_group, opacity, smooth),
        }
        if changed:
            outputs.update(
                {c.groups: _group_choices(analysis, layer), c.field_group: _field_group_choices(analysis, layer)}
            )
        return outputs

    def pick_layer(self, analysis, view, layer, field, opacity, smooth):
        if analysis is None or view is None or not layer:
            return gr.skip()
        c = self.c
        view = replace(view, layer=layer)
        groups = list(range(analysis.probe.layer(layer).groups))
        return {
            c.groups: _group_choices(analysis, layer),
            c.field_group: _field_group_choices(analysis, layer),
            **self.render_sampling(analysis, view, groups),
            c.hover: self.hover_value(analysis, view),
            c.field_image: self.field_picture(analysis, view, field, -1, opacity, smooth),
        }

    def export(self, analysis, view, groups):
        if analysis is None or view is None:
            gr.Warning("Nothing to export yet: upload an image first.")
            return None
        overlay, _ = self.picture_with_cell(analysis, view, groups)
        selection = None
        if view.cell is not None and view.layer:
            selection = exports.sampling_payload(
                analysis.probe, view.layer, view.cell, analysis.image.scale, analysis.image.to_original(view.xy)
            )
            selection["groups_shown"] = list(groups or [])
        stem = f"{analysis.image.name}_{Path(analysis.model_name).stem}".replace(" ", "_").replace(":", "")
        files = exports.export_all(self.ctx.files.export_dir(), stem, overlay, analysis.probe, selection)
        return gr.update(value=[str(p) for p in files], visible=True)

    def upload_checkpoint(self, path):
        """Load an uploaded checkpoint safely; select it, or say why it was refused."""
        c = self.c
        if path is None:
            return gr.skip()
        registry = self.ctx.registry
        try:
            name = registry.add_upload(path)
        except CheckpointError as error:
            gr.Warning(f"Checkpoint refused: {error}")
            return {c.notices: f"**Checkpoint refused:** {error}"}
        return {c.model: gr.update(choices=registry.names(), value=name), c.notices: f"Loaded **{name}**."}


def _layout(ctx: AppContext, analysis: gr.State, view: gr.State) -> _Components:
    """The Image tab's components (inside the caller's ``gr.Tab``). Controls left, views right."""
    registry = ctx.registry
    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*.jpg")) if EXAMPLES_DIR.is_dir() else []
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=330):
            image_in = image_file_input(label="Image", height=240, sources=["upload", "clipboard"], elem_id="image-in")
            if examples:
                gr.Examples(examples, inputs=image_in, label="Examples", examples_per_page=6)
            model = gr.Dropdown(registry.names(), value=registry.default_name(), label="Model", elem_id="model")
            checkpoint = gr.UploadButton(
                f"Load a checkpoint (.pt, up to {registry.max_upload_bytes >> 20} MB)",
                file_types=[".pt"],
                type="filepath",
                size="md",
                elem_id="checkpoint",
            )
            notices = gr.Markdown(elem_id="notices")
            with gr.Row():
                conf = gr.Slider(0.01, 1.0, DEFAULT_CONF, step=0.01, label="Confidence", elem_id="conf")
                iou = gr.Slider(0.05, 1.0, DEFAULT_IOU, step=0.05, label="NMS IoU", elem_id="iou")
            imgsz = gr.Dropdown(IMGSZ_CHOICES, value=0, label="Network input size (longest side, px)", elem_id="imgsz")
            detection = gr.Dropdown([], label="Detection (jumps to the layer of its scale)", elem_id="detection")
            layer = gr.Dropdown([], label="Deformable layer (stage · stride · groups G · kernel K)", elem_id="layer")
            groups = gr.CheckboxGroup([], label="Groups shown", type="value", elem_id="groups")
            with gr.Accordion("Export", open=True):
                export_button = gr.Button("Export PNG · NPZ · JSON · CSV", size="md", elem_id="export")
                gr.Markdown(
                    "Overlay PNG, the probe's raw arrays (NPZ), the sampling points of the current "
                    "selection (JSON) and per-layer statistics (CSV)."
                )
                export_files = gr.File(
                    label="Files", file_count="multiple", interactive=False, visible=False, elem_id="export-files"
                )
        with gr.Column(scale=2):
            shown = gr.State("Sampling")
            with gr.Tabs():
                with gr.Tab("Sampling", elem_id="tab-sampling") as sampling_tab:
                    overlay = image_output(
                        label="Move the pointer over the picture to see a cell's sampling; click to pin it",
                        interactive=False,
                        type="filepath",
                        height=660,
                        elem_id="overlay",
                        buttons=["download", "fullscreen"],
                    )
                    hover = sampling_hover(
                        ctx.hover_probes, ctx.canvases, "overlay", "groups", elem_id="sampling-hover"
                    )
                    info = gr.Markdown(elem_id="sampling-info")
                    with gr.Row(equal_height=False):
                        figure = gr.Plot(
                            label="Zoom: hover a point for group, point, dx, dy, weight", elem_id="sampling-plot"
                        )
                        trace = image_output(
                            label="Trace through the stacked deformable layers (DCNv1 fig. 6): the 60 "
                            "strongest paths, weights multiplied along the path (yellow = "
                            "strongest; signed DCNv4 weights keep their sign, hollow = "
                            "negative); white rings: intermediate layers",
                            interactive=False,
                            type="filepath",
                            height=520,
                            elem_id="trace",
                        )
                    weights = gr.Plot(
                        label="Weights per group: column i walks x, row j walks y", elem_id="weights-plot"
                    )
                with gr.Tab("Fields", elem_id="tab-fields") as fields_tab:
                    with gr.Row():
                        field = gr.Radio(
                            list(render.FIELDS), value="offset magnitude", label="Field", scale=3, elem_id="field"
                        )
                        field_group = gr.Dropdown([], label="Group", scale=1, elem_id="field-group")
                    with gr.Row():
                        opacity = gr.Slider(0.0, 1.0, 0.6, step=0.05, label="Opacity", scale=3)
                        smooth = gr.Checkbox(False, label="Smooth between cell centres", scale=1)
                    gr.Markdown(" · ".join(f"**{k}**: {v}" for k, v in render.FIELDS.items()))
                    field_image = image_output(
                        label="Field over the image (click to query a pixel)",
                        interactive=False,
                        type="filepath",
                        height=640,
                        elem_id="field-image",
                    )
                with gr.Tab(HEALTH_TAB, elem_id="tab-health") as health_tab:
                    gr.Markdown(health.thresholds_markdown())
                    health_table = gr.Dataframe(
                        label="Per-layer health",
                        interactive=False,
                        wrap=True,
                        column_widths=["17%", "10%", "4%", "4%", "6%", "7%", "6%", "6%", "7%", "6%", "27%"],
                        elem_id="health-table",
                    )
                    histograms = gr.Plot(label="Distributions per layer", elem_id="histograms")
                    gr.Markdown(
                        "**Effective dilation by detection size** (DCNv1 Table 2 layout, this image): "
                        "mean ± std in feature cells at the cells under detection centres; "
                        "small / medium / large by sqrt(box area) < 32, < 96, >= 96 px (COCO); "
                        "background = cells in no box."
                    )
                    dilation_table = gr.Dataframe(interactive=False, wrap=True, elem_id="dilation-table")
                erf_tab = receptive_tab.build(ctx, analysis, view)
                ablation = ablation_tab.build(ctx, analysis)
    return _Components(
        image_in,
        model,
        checkpoint,
        notices,
        conf,
        iou,
        imgsz,
        detection,
        layer,
        groups,
        export_button,
        export_files,
        overlay,
        hover,
        info,
        figure,
        trace,
        weights,
        field,
        field_group,
        opacity,
        smooth,
        field_image,
        health_table,
        histograms,
        dilation_table,
        analysis,
        view,
        [sampling_tab, fields_tab, health_tab, erf_tab, ablation],
        shown,
    )


def build(ctx: AppContext) -> ImageTab:
    """The Image tab's components and events, inside the caller's ``gr.Tab``."""
    analysis, view = gr.State(None), gr.State(None)
    c = _layout(ctx, analysis, view)
    events = _Events(ctx, c)
    field_params = [c.field, c.opacity, c.smooth]
    run_in = [c.image_in, c.model, c.conf, c.iou, c.imgsz, *field_params]
    run_out = [
        c.analysis,
        c.notices,
        c.detection,
        c.layer,
        c.groups,
        c.field_group,
        *c.sampling,
        c.hover,
        c.field_image,
        c.health_table,
        c.histograms,
        c.dilation_table,
    ]
    c.image_in.change(events.run, run_in, run_out, **PRIVATE)
    c.model.change(events.run, run_in, run_out, **PRIVATE)
    c.imgsz.input(events.run, run_in, run_out, **PRIVATE)
    gr.on(
        [c.conf.release, c.iou.release],
        events.change_thresholds,
        [c.analysis, c.view, c.conf, c.iou, c.groups, c.shown],
        [c.analysis, c.view, c.notices, c.detection, c.overlay, c.hover, c.dilation_table],
        **PRIVATE,
    )
    gr.on(
        [tab.select for tab in c.views_tabs],
        events.show_tab,
        c.analysis,
        [c.shown, c.dilation_table],
        show_progress="hidden",
        **PRIVATE,
    )
    c.checkpoint.upload(events.upload_checkpoint, c.checkpoint, [c.model, c.notices], **PRIVATE)
    click = dict(inputs=[c.analysis, c.view, c.groups], outputs=[c.overlay, c.view], show_progress="minimal", **PRIVATE)
    details = dict(outputs=[c.figure, c.weights, c.trace, c.info], show_progress="hidden", **PRIVATE)
    for picture in (c.overlay, c.field_image):  # the picture first, then what is built from its cell
        picture.select(events.click, **click).then(events.render_details, [c.analysis, c.view, c.groups], **details)
    c.detection.input(
        events.pick_detection,
        [c.analysis, c.view, c.detection, c.groups, c.field, c.field_group, c.opacity, c.smooth],
        [c.layer, c.groups, c.field_group, *c.sampling, c.hover, c.field_image],
        **PRIVATE,
    )
    c.layer.input(
        events.pick_layer,
        [c.analysis, c.view, c.layer, *field_params],
        [c.groups, c.field_group, *c.sampling, c.hover, c.field_image],
        **PRIVATE,
    )
    c.groups.input(
        events.render_sampling, [c.analysis, c.view, c.groups], c.sampling, show_progress="hidden", **PRIVATE
    )
    gr.on(
        [c.field.change, c.field_group.input, c.opacity.release, c.smooth.input],
        events.field_picture,
        [c.analysis, c.view, c.field, c.field_group, c.opacity, c.smooth],
        c.field_image,
        show_progress="hidden",
        **PRIVATE,
    )
    c.export_button.click(events.export, [c.analysis, c.view, c.groups], c.export_files, **PRIVATE)
    return ImageTab(c.image_in, c.model, c.analysis, c.view)


# -- the HTTP API -----------------------------------------------------------------------------------
API_PICTURES = 8  # the API's drawn pictures kept (a repeated request is neither drawn nor encoded again)
# The API's pictures are photographs with marks: JPEG at quality 92 without chroma subsampling
# (viz_app.components.outputs.ENCODINGS, as the UI's views) encodes a 1 MP picture in ~5 ms where
# a PNG takes ~55 ms even at zlib level 1, and keeps thin coloured lines crisp. The exact numbers
# are in the JSON; the exported overlay (viz_app.views.exports) stays a lossless PNG.
API_PICTURE_FORMAT = "jpeg"


class ImageApi:
    """/detect and /sampling: the model by name, the Analyser's cache shared with the UI (which also
    keeps the decoded image: a request for a known image decodes nothing).

    Pictures are drawn at the API's scale (``api_scale``) and no more: /sampling draws the cell on
    the detections canvas, not the UI's figures and trace. Each drawn picture is kept read-only in
    ``pictures`` (by analysis, scale and, for /sampling, layer and cell: what it shows), so a repeated
    request returns the same array, which ``image_output`` then does not encode again either.
    """

    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self.pictures: LRUCache[tuple, np.ndarray] = LRUCache(API_PICTURES)

    def analyse(self, image_path, model_name, conf=DEFAULT_CONF, iou=DEFAULT_IOU, imgsz=None) -> Analysis:
        if image_path is None:
            raise gr.Error("no image given")
        model_name = model_name or self.ctx.registry.default_name()
        imgsz = int(imgsz) if imgsz else None  # 0 / None: the model's training size
        try:
            return self.ctx.analyser.analyse(image_path, model_name, float(conf), float(iou), imgsz=imgsz)
        except (ValueError, CheckpointError) as error:
            raise gr.Error(str(error)) from None

    def picture(self, key: tuple, draw) -> np.ndarray:
        """The RGB picture ``draw()`` makes (BGR), cached under ``key`` and read-only: one array
        per picture, never changed, so ``image_output`` may reuse its encoding."""

        def rgb():
            picture = to_rgb(draw())
            picture.flags.writeable = False
            return picture

        return self.pictures.get_or_compute(key, rgb)

    def detect(self, image_path, model_name, conf, iou, imgsz=0):
        """/detect: (image, model, conf, iou[, imgsz]) -> (annotated image, detections JSON)."""
        analysis = self.analyse(
            image_path, model_name, DEFAULT_CONF if conf is None else conf, DEFAULT_IOU if iou is None else iou, imgsz
        )
        scale = api_scale(analysis)

        def draw():
            canvas, canvas_scale = render.make_canvas(analysis.image.bgr, scale)
            return render.draw_detections(canvas, analysis.probe.detections, canvas_scale, max_boxes=10**6)

        return self.picture(("detect", analysis.key, scale), draw), exports.detections_payload(
            analysis.probe, analysis.image.scale, analysis.model_name, analysis.notices
        )

    def sampling(self, image_path, model_name, layer, x, y, imgsz=0):
        """/sampling: (image, model, layer, x, y[, imgsz]) -> (overlay image, sampling points JSON).
        The picture is ``render.sampling_view``'s overlay (the detections at the default thresholds,
        at most 50 boxes, and the cell), drawn without the views the API does not return."""
        analysis = self.analyse(image_path, model_name, imgsz=imgsz)
        probe = analysis.probe
        names = [r.name for r in probe.layers]
        if not names:
            raise gr.Error(f"{analysis.model_name} has no deformable layer (DCNv2, DCNv3 or DCNv4)")
        if layer not in names:
            raise gr.Error(f"unknown layer {layer!r}; layers: {', '.join(names)}")
        if x is None or y is None:
            raise gr.Error("x and y are required (original-image pixels)")
        original_h, original_w = analysis.image.original_shape
        if not (0 <= x < original_w and 0 <= y < original_h):
            raise gr.Error(f"({x}, {y}) is outside the {original_w} x {original_h} image")
        xy = analysis.image.to_processed(x, y)
        cell = render.cell_under(probe, layer, xy)
        if cell is None:
            raise gr.Error(render.outside_message(xy))
        scale = api_scale(analysis)

        def draw():
            return render.sampling_overlay(analysis.image.bgr, probe, layer, cell, scale=scale)[0]

        picture = self.picture(("sampling", analysis.key, scale, layer, tuple(map(int, cell))), draw)
        return picture, exports.sampling_payload(probe, layer, cell, analysis.image.scale, (x, y))


def api_scale(analysis: Analysis) -> float:
    """The API pictures' scale: at most ``API_IMAGE_SIDE`` on the long side."""
    return min(1.0, API_IMAGE_SIDE / max(analysis.image.bgr.shape[:2]))


def build_api(ctx: AppContext) -> None:
    """The /detect and /sampling endpoints' own components (call inside a hidden column)."""
    api = ImageApi(ctx)
    image = image_file_input(label="image")
    model = gr.Textbox(label="model", value=ctx.registry.default_name())
    conf, iou = gr.Number(DEFAULT_CONF, label="conf"), gr.Number(DEFAULT_IOU, label="iou")
    imgsz = gr.Number(0, label="imgsz (0: the model's training size)", precision=0)
    layer = gr.Textbox(label="layer")
    x, y = gr.Number(label="x"), gr.Number(label="y")
    picture, payload = image_output(format=API_PICTURE_FORMAT, label="image"), gr.JSON(label="json")
    detect_button, sampling_button = gr.Button("detect"), gr.Button("sampling")
    detect_button.click(api.detect, [image, model, conf, iou, imgsz], [picture, payload], api_name="detect")
    sampling_button.click(api.sampling, [image, model, layer, x, y, imgsz], [picture, payload], api_name="sampling")
