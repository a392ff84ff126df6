"""The top-level Compare tab: any two models side by side on one image (gradio wiring).

Both models run once through the app's ``Analyser`` (cached like the Image tab's runs); the tab
shows their detections side by side, each model's layer health table (``viz_app.views.health``) and the
receptive fields of one cell (or of model A's best detection) in both (``viz_app.views.receptive``).
Clicking either detections panel moves the receptive-field point there. The tab's view state is a
``view_state.CompareView`` in a ``gr.State``; handlers return ``{component: value}`` dicts.
"""

from __future__ import annotations

from dataclasses import replace

import gradio as gr
import numpy as np
import pandas as pd

from dcnv3.analysis import receptive_field as rf
from dcnv3.analysis.probe import default_layer
from dcnv3.ops.sampling_hooks import describe_layers
from dcnv3.record.geometry import box_centre
from dcnv3.yolo.checkpoints import CheckpointError
from viz_app.components.inputs import image_file_input
from viz_app.components.outputs import image_output
from viz_app.state.context import AppContext
from viz_app.state.view_state import CompareView
from viz_app.views import health, receptive
from viz_app.views.render import draw_detections, make_canvas, to_rgb

__all__ = ["build", "detections_panels", "layer_choices", "compare_fields", "PANEL_SIDE", "GAP"]

PANEL_SIDE = 640  # each detections panel's long side
GAP = 12  # px between the panels


def detections_panels(analyses: list, names: list[str]) -> tuple[np.ndarray, float]:
    """Both models' detections side by side: (BGR picture, panel scale = canvas px per image px).

    Each panel is the image at ``PANEL_SIDE`` on its long side under a title strip of height
    ``receptive.title_height(1)``; panels are ``GAP`` px apart.
    """
    image = analyses[0].image.bgr
    scale = PANEL_SIDE / max(image.shape[:2])
    panels = []
    for analysis, name in zip(analyses, names):
        canvas, pair = make_canvas(image, (scale, scale))
        canvas = draw_detections(canvas, analysis.probe.detections, pair)
        kinds = describe_layers(layer.weight_kind for layer in analysis.probe.layers)
        title = f"{name}: {len(analysis.probe.detections)} detections, {kinds}"
        panels.append(np.vstack([receptive.title_strip(canvas.shape[1], [title]), canvas]))
    return receptive.side_by_side(panels, GAP), scale


def panel_point(click_xy, scale: float, image_shape) -> tuple[float, float] | None:
    """A click on the side-by-side detections picture (canvas px, pixel centres) -> the image
    point (x, y) under it in whichever panel was clicked, or None off the panels."""
    x, y = float(click_xy[0]), float(click_xy[1]) - receptive.title_height(1)
    width = image_shape[1] * scale
    panel = int(x // (width + GAP))
    local = x - panel * (width + GAP)
    if panel > 1 or local >= width or y < 0 or y >= image_shape[0] * scale:
        return None
    return local / scale, y / scale


def layer_choices(model_a, model_b) -> list[str]:
    """Layers the receptive fields can read: model A's DCNv3 layers, else model B's (then B is the
    primary of the comparison), else the backbone blocks at P3-P5 (``model.4/6/8``)."""
    if model_a.deformable_layers:
        return list(model_a.deformable_layers)
    if model_b.deformable_layers:
        return list(model_b.deformable_layers)
    return receptive.fallback_layers(rf.gradient_network(model_a.yolo))


def compare_fields(ctx: AppContext, analyses, names, layer, xy, detection=None):
    """(side-by-side receptive fields BGR, payload): the model that owns ``layer`` is the primary."""
    first, second = 0, 1
    loaded = [ctx.registry.load(n) for n in names]
    if layer and layer not in dict(rf.gradient_network(loaded[0].yolo).named_modules()):
        first, second = 1, 0  # the layer is model B's (A has no DCNv3)
    fields = receptive.compute_pair(
        ctx.fields,
        analyses[first].image,
        analyses[first].imgsz,
        (names[first], loaded[first]),
        (names[second], loaded[second]),
        layer,
        xy,
        detection,
    )
    order = [names[first], names[second]]
    if first == 1:  # show A on the left whatever the primary was
        fields, order = fields[::-1], order[::-1]
    return (
        receptive.pair_picture(analyses[0].image.bgr, order, fields, GAP),
        receptive.pair_payload(order, fields, analyses[0].image.scale),
    )


def _health_frame(analysis):
    rows = health.health_rows(analysis.probe)
    if not rows:
        return pd.DataFrame([{"layer": "(no deformable layer)", "flags": "a plain detector: nothing to check"}])
    return pd.DataFrame(rows)[["layer", "stage", "|offset| cells", "entropy", "dilation cells", "flags"]]


def build(ctx: AppContext, image_tab_input) -> None:
    """The Compare tab (a top-level tab) and its events; ``image_tab_input``: the Image tab's image."""
    registry, analyser = ctx.registry, ctx.analyser
    names = registry.names()
    default_b = receptive.twin_name(registry.default_name(), names) or (names[1] if len(names) > 1 else names[0])
    with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
        state = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                image = image_file_input(
                    label="Image", height=220, sources=["upload", "clipboard"], elem_id="compare-image"
                )
                from_image_tab = gr.Button("Use the Image tab's image", size="md", elem_id="compare-from-image")
                model_a = gr.Dropdown(names, value=registry.default_name(), label="Model A", elem_id="compare-model-a")
                model_b = gr.Dropdown(names, value=default_b, label="Model B", elem_id="compare-model-b")
                layer = gr.Dropdown([], label="Layer for the receptive fields", elem_id="compare-layer")
                target = gr.Radio(
                    ["cell at the point", "model A's best detection"],
                    value="cell at the point",
                    label="Receptive-field target",
                    elem_id="compare-target",
                )
                run_button = gr.Button("Compare", variant="primary", elem_id="compare-run")
                status = gr.Markdown(elem_id="compare-status")
            with gr.Column(scale=3):
                # Labels off: gradio's label badge would cover the panel titles drawn into the pictures.
                gr.Markdown(
                    "**Detections**: model A left, model B right; click either to move the receptive-field point."
                )
                detections = image_output(
                    show_label=False, type="numpy", interactive=False, height=440, elem_id="compare-detections"
                )
                with gr.Row(equal_height=False):
                    health_a = gr.Dataframe(
                        label="Model A: layer health", interactive=False, wrap=True, elem_id="compare-health-a"
                    )
                    health_b = gr.Dataframe(
                        label="Model B: layer health", interactive=False, wrap=True, elem_id="compare-health-b"
                    )
                gr.Markdown(
                    "**Receptive fields** (|gradient| of the cell's output w.r.t. the input; contours hold "
                    "50 % (white) and 90 % (cyan) of the mass; see the Image tab's *Receptive field* view)."
                )
                fields_picture = image_output(
                    show_label=False, type="numpy", interactive=False, height=440, elem_id="compare-erf"
                )
                fields_info = gr.Markdown(elem_id="compare-erf-info")

    def fields_for(view: CompareView, layer_name, target_value) -> dict:
        """The receptive-fields picture and text for the view's point (or model A's best detection)."""
        analyses, pair = view.analyses, view.names
        detection = None
        if target_value == "model A's best detection":
            probe = analyses[0].probe
            if not len(probe.detections):
                return {fields_picture: None, fields_info: "Model A detected nothing: use a cell target."}
            best = int(np.argmax(probe.detections.scores))
            detection = (probe.detections.boxes[best], int(probe.detections.classes[best]))
            if layer_name and layer_name not in dict(rf.gradient_network(registry.load(pair[0]).yolo).named_modules()):
                return {
                    fields_picture: None,
                    fields_info: "Detection targets read model A's score: pick a model A with a Detect head.",
                }
        try:
            picture, payload = compare_fields(ctx, analyses, pair, layer_name, view.xy, detection)
        except (ValueError, CheckpointError) as error:
            return {fields_picture: None, fields_info: f"**Could not compute the receptive fields:** {error}"}
        lines = [
            f"- **{m['model']}**: 50 % of the mass in **{m['areas_px2']['50%']:,.0f} px²**, "
            f"90 % in **{m['areas_px2']['90%']:,.0f} px²**"
            for m in payload["models"]
        ]
        if payload.get("area_ratio_50") is not None:
            lines.append(f"- 50 % area ratio A / B: **{payload['area_ratio_50']:.2f}**")
        return {fields_picture: to_rgb(picture), fields_info: "\n".join(lines)}

    def run(image_path, name_a, name_b, layer_name, target_value):
        cleared = {detections: None, health_a: None, health_b: None, fields_picture: None, fields_info: ""}
        if image_path is None:
            return {**cleared, status: "Upload an image (or use the Image tab's)."}
        try:
            analyses = (analyser.analyse(image_path, name_a), analyser.analyse(image_path, name_b))
            loaded = [registry.load(name_a), registry.load(name_b)]
        except (ValueError, CheckpointError) as error:
            return {**cleared, status: f"**Could not run:** {error}"}
        choices = layer_choices(*loaded)
        layer_name = layer_name if layer_name in choices else default_layer(choices)
        picture, scale = detections_panels(list(analyses), [name_a, name_b])
        probe = analyses[0].probe
        if len(probe.detections):
            xy = box_centre(probe.detections.boxes[int(np.argmax(probe.detections.scores))])
        else:
            xy = (probe.image_shape[1] / 2, probe.image_shape[0] / 2)
        view = CompareView(analyses, (name_a, name_b), scale, (float(xy[0]), float(xy[1])))
        status_text = " · ".join(
            f"**{n}**: {len(a.probe.detections)} detections in {a.seconds:.2f} s" for n, a in zip(view.names, analyses)
        )
        return {
            state: view,
            detections: to_rgb(picture),
            status: status_text,
            layer: gr.update(choices=choices, value=layer_name),
            health_a: _health_frame(analyses[0]),
            health_b: _health_frame(analyses[1]),
            **fields_for(view, layer_name, target_value),
        }

    def click(view: CompareView | None, layer_name, target_value, evt: gr.SelectData):
        if view is None or evt.index is None:
            return gr.skip()
        point = panel_point((evt.index[0] + 0.5, evt.index[1] + 0.5), view.scale, view.analyses[0].image.bgr.shape)
        if point is None:
            gr.Warning("That click was outside the pictures.")
            return gr.skip()
        view = replace(view, xy=point)
        return {state: view, **fields_for(view, layer_name, target_value)}

    def refresh(view: CompareView | None, layer_name, target_value):
        if view is None:
            return gr.skip()
        return fields_for(view, layer_name, target_value)

    private = dict(api_visibility="private")
    from_image_tab.click(lambda path: path, image_tab_input, image, **private)
    run_outputs = [state, detections, status, layer, health_a, health_b, fields_picture, fields_info]
    gr.on([run_button.click, image.change], run, [image, model_a, model_b, layer, target], run_outputs, **private)
    detections.select(click, [state, layer, target], [state, fields_picture, fields_info], **private)
    gr.on([layer.input, target.input], refresh, [state, layer, target], [fields_picture, fields_info], **private)
