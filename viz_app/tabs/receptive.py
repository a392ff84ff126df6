"""The Image tab's "Receptive field" view and the ``/erf`` API (gradio wiring; the computation is
``dcnv3.analysis.receptive_field``, the pictures ``viz_app.views.receptive``).

The view reads the Image tab's cached Analysis and view state (``view_state.ImageView``: the
clicked point, the layer, the highlighted detection) and computes, on demand, the effective
receptive field of that cell (or of the detection's score) in the current model and in a
comparison model: by default the plain twin (``dcnv3-yolov8n.pt`` -> ``yolov8n.pt``). Fields are
kept in the app context's ``FieldCache`` (``ctx.fields``), shared with the Compare tab and /erf.
"""

from __future__ import annotations

import gradio as gr

from dcnv3.analysis import receptive_field as rf
from dcnv3.analysis.probe import default_layer
from dcnv3.yolo.checkpoints import CheckpointError
from viz_app.components.inputs import image_file_input
from viz_app.components.outputs import image_output
from viz_app.state.context import AppContext
from viz_app.state.view_state import ImageView
from viz_app.views import receptive
from viz_app.views.render import to_rgb

__all__ = ["build", "build_api", "resolve_comparison", "compute_view", "api_erf", "TARGETS", "EXPLANATION"]

TARGETS = ("cell at the clicked point", "score of the highlighted detection")
EXPLANATION = (
    "**Effective receptive field**: how strongly each input pixel moves the chosen output "
    "(|gradient| of the output w.r.t. the input image, summed over RGB), after the DCNv2 paper's figure 1: "
    "where the samples land is not all an output depends on. **Cell**: the sum over channels of the clicked "
    "cell at the chosen layer's block (the DCNv3 wrapper `…cv2`; in the plain twin the 3x3 convolution it "
    "replaced, same name, same stride). **Detection**: the class score (before NMS) at the anchor that "
    "produced the highlighted detection; the comparison model is read at the same anchor and class. "
    "Contours: the smallest regions holding **50 %** (white) and **90 %** (cyan) of the mass; areas in "
    "original-image px². The map is smoothed by a Gaussian of 2 network-input px (strided layers make it "
    "a checkerboard)."
)


def resolve_comparison(registry, model_name: str, choice: str | None) -> tuple[str | None, str | None]:
    """(comparison model name or None, a note for the user or None) for a dropdown choice."""
    if choice in (None, "", receptive.NO_COMPARISON):
        return None, None
    if choice == receptive.AUTO_TWIN or choice == "auto":
        twin = receptive.twin_name(model_name, registry.names())
        if twin is None:
            return None, (
                f"no plain twin known for {model_name} (the twin of `dcnv3-X.pt` is `X.pt`): "
                f"pick a model under *Compare with*"
            )
        return twin, None
    if choice == model_name:
        return None, "the comparison model is the model itself"
    return choice, None


def compute_view(ctx: AppContext, analysis, view: ImageView | None, target: str, compare: str | None):
    """(side-by-side picture BGR or None, Markdown message, payload dict or None) for the view state."""
    if analysis is None or view is None:
        return None, "Upload an image in the Image tab first.", None
    registry = ctx.registry
    other, note = resolve_comparison(registry, analysis.model_name, compare)
    try:
        primary = (analysis.model_name, registry.load(analysis.model_name))
        secondary = (other, registry.load(other)) if other else None
        probe = analysis.probe
        detection = None
        layer = view.layer
        if target == TARGETS[1]:
            index = view.highlight
            if index is None or index >= len(probe.detections):
                return None, "No detection is highlighted: pick one in the Detection dropdown.", None
            detection = (probe.detections.boxes[index], int(probe.detections.classes[index]))
        elif not layer:
            fallback = receptive.fallback_layers(rf.gradient_network(primary[1].yolo))
            if not fallback:
                return None, "This model has no layer to read: pick a detection target.", None
            layer = default_layer(fallback)
            note = (note + "; " if note else "") + f"no deformable layer: reading the backbone block `{layer}`"
        fields = receptive.compute_pair(
            ctx.fields, analysis.image, analysis.imgsz, primary, secondary, layer, view.xy, detection
        )
    except (ValueError, CheckpointError) as error:
        return None, f"**Could not compute:** {error}", None
    names = [primary[0]] + ([secondary[0]] if secondary else [])
    payload = receptive.pair_payload(names, fields, analysis.image.scale)
    return receptive.pair_picture(analysis.image.bgr, names, fields), _message(payload, note), payload


def _message(payload: dict, note: str | None) -> str:
    lines = []
    for entry in payload["models"]:
        where = (
            f"cell ({entry['cell'][0]}, {entry['cell'][1]}) of `{entry['module']}`"
            if entry["kind"] == "cell"
            else f"class {entry['class']} score {entry['value']:.2f} at anchor {entry['anchor']}"
        )
        areas = entry["areas_px2"]
        lines.append(
            f"- **{entry['model']}**, {where}: 50 % of the mass in **{areas['50%']:,.0f} px²**, "
            f"90 % in **{areas['90%']:,.0f} px²**"
        )
    if payload.get("area_ratio_50") is not None:
        lines.append(f"- 50 % area ratio (first / second): **{payload['area_ratio_50']:.2f}**")
    if note:
        lines.append(f"- *{note}*")
    return "\n".join(lines)


def build(ctx: AppContext, analysis_state: gr.State, view_state: gr.State) -> gr.Tab:
    """The "Receptive field" tab, inside the Image tab's inner Tabs, and its events; returns the tab."""
    registry = ctx.registry
    with gr.Tab("Receptive field", elem_id="tab-erf") as tab:
        gr.Markdown(EXPLANATION)
        with gr.Row(equal_height=True):
            target = gr.Radio(list(TARGETS), value=TARGETS[0], label="Target", scale=3, elem_id="erf-target")
            compare = gr.Dropdown(
                [receptive.AUTO_TWIN, receptive.NO_COMPARISON, *registry.names()],
                value=receptive.AUTO_TWIN,
                label="Compare with",
                scale=2,
                elem_id="erf-compare",
            )
            button = gr.Button("Compute for the current point", variant="primary", scale=1, elem_id="erf-compute")
        picture = image_output(
            label="Receptive field: this model (left) and the comparison (right)",
            interactive=False,
            type="numpy",
            height=620,
            elem_id="erf-image",
            buttons=["download", "fullscreen"],
        )
        info = gr.Markdown(elem_id="erf-info")

    def run(analysis, view, target_value, compare_value):
        canvas, message, _ = compute_view(ctx, analysis, view, target_value, compare_value)
        return to_rgb(canvas), message

    inputs = [analysis_state, view_state, target, compare]
    gr.on(
        [button.click, tab.select, target.input, compare.input], run, inputs, [picture, info], api_visibility="private"
    )
    return tab


def api_erf(ctx: AppContext, image_path, model_name, layer, x, y, compare_model):
    """/erf: (image, model, layer, x, y, compare_model) -> (side-by-side heat map RGB, JSON).

    ``compare_model``: a model name, "auto" (the plain twin) or empty for none. ``layer``: a DCNv3
    layer (or any module) of the model; x, y: original-image px. The JSON: per model its target
    (module, cell, stride, centre) and the 50 % / 90 % areas in original px², and their 50 % ratio.
    """
    registry = ctx.registry
    if image_path is None:
        raise gr.Error("no image given")
    model_name = model_name or registry.default_name()
    if not layer:
        raise gr.Error("layer is required (e.g. model.6.m.0.cv2.dcnv3)")
    if x is None or y is None:
        raise gr.Error("x and y are required (original-image pixels)")
    try:
        analysis = ctx.analyser.analyse(image_path, model_name)
    except (ValueError, CheckpointError) as error:
        raise gr.Error(str(error)) from None
    height, width = analysis.image.original_shape
    if not (0 <= x < width and 0 <= y < height):
        raise gr.Error(f"({x}, {y}) is outside the {width} x {height} image")
    other, note = resolve_comparison(registry, model_name, compare_model or None)
    if note and compare_model:
        raise gr.Error(note)
    try:
        primary = (model_name, registry.load(model_name))
        secondary = (other, registry.load(other)) if other else None
        fields = receptive.compute_pair(
            ctx.fields,
            analysis.image,
            analysis.imgsz,
            primary,
            secondary,
            layer,
            analysis.image.to_processed(float(x), float(y)),
        )
    except (ValueError, CheckpointError) as error:
        raise gr.Error(str(error)) from None
    names = [primary[0]] + ([other] if other else [])
    return (
        to_rgb(receptive.pair_picture(analysis.image.bgr, names, fields)),
        receptive.pair_payload(names, fields, analysis.image.scale),
    )


def build_api(ctx: AppContext) -> None:
    """The /erf endpoint's own components (call inside a hidden column)."""
    image = image_file_input(label="image")
    model = gr.Textbox(label="model", value=ctx.registry.default_name())
    layer = gr.Textbox(label="layer")
    x, y = gr.Number(label="x"), gr.Number(label="y")
    compare = gr.Textbox(label="compare_model")
    picture, payload = image_output(format="png", label="image"), gr.JSON(label="json")

    def erf(image_path, model_name, layer, x, y, compare_model):
        return api_erf(ctx, image_path, model_name, layer, x, y, compare_model)

    gr.Button("erf").click(erf, [image, model, layer, x, y, compare], [picture, payload], api_name="erf")
