"""The Image tab's "Ablation" view and the ``/ablate`` API (gradio wiring; the computation is
``dcnv3.analysis.ablation``, the cache, table and picture ``viz_app.views.ablation_view``).

The view reads the Image tab's cached Analysis (image, model, input size, current confidence and
IoU) and, when the tab is opened or its button pressed, reruns the model once per variant (each
deformable layer's offsets on the grid, its weights uniform, then all layers), cached in the app
context's ``AblationCache`` per image / model / input size, shared with ``/ablate``. Picking a
variant only redraws its overlay.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from dcnv3.yolo.checkpoints import CheckpointError
from viz_app.components.inputs import image_file_input
from viz_app.components.outputs import image_output
from viz_app.state.analyser import DEFAULT_CONF, DEFAULT_IOU
from viz_app.state.context import AppContext
from viz_app.views import ablation_view
from viz_app.views.render import to_rgb

__all__ = ["build", "build_api", "api_ablate", "compute"]


def compute(ctx: AppContext, analysis):
    """The ablation of the analysis' image at its thresholds (``ImageAblation``), or a message
    saying why there is none."""
    if analysis is None:
        return None, "Upload an image first."
    if not analysis.probe.layers:
        return None, f"**{analysis.model_name}** has no deformable layer to ablate."
    try:
        return ctx.ablations.ablation(ctx.analyser, ctx.registry, analysis), None
    except (ValueError, CheckpointError) as error:
        return None, f"**Could not run:** {error}"


def build(ctx: AppContext, analysis_state: gr.State) -> gr.Tab:
    """The "Ablation" tab, inside the Image tab's inner Tabs, and its events; returns the tab."""
    with gr.Tab("Ablation", elem_id="tab-ablation") as tab:
        gr.Markdown(ablation_view.EXPLANATION)
        with gr.Row(equal_height=True):
            variant = gr.Dropdown([], label="Rerun shown in the picture", scale=3, elem_id="ablation-variant")
            button = gr.Button("Run the ablations for this image", variant="primary", scale=1, elem_id="ablation-run")
        table = gr.Dataframe(
            label="Reruns against the model's own detections", interactive=False, wrap=True, elem_id="ablation-table"
        )
        info = gr.Markdown(elem_id="ablation-info")
        # No label over the picture: it would hide the legend drawn at its top.
        picture = image_output(
            label="Boxes that moved, vanished or appeared",
            show_label=False,
            interactive=False,
            type="filepath",
            height=660,
            elem_id="ablation-image",
            buttons=["download", "fullscreen"],
        )

    def draw(analysis, ablation, name):
        return ctx.files.picture(ablation_view.overlay(analysis.image.bgr, ablation, name))

    def run(analysis, shown):
        ablation, message = compute(ctx, analysis)
        if ablation is None:
            return {table: None, variant: gr.update(choices=[], value=None), picture: None, info: message}
        choices = ablation_view.variant_choices(ablation)
        name = shown if shown in choices else ablation_view.default_variant(ablation)
        return {
            table: pd.DataFrame(ablation_view.table_rows(ablation)),
            variant: gr.update(choices=choices, value=name),
            picture: draw(analysis, ablation, name),
            info: ablation_view.summary_markdown(ablation, name),
        }

    def pick(analysis, name):
        ablation, message = compute(ctx, analysis)  # cached: NMS and matching only
        if ablation is None or name not in ablation_view.variant_choices(ablation):
            return {info: message or "Run the ablations first."}
        return {picture: draw(analysis, ablation, name), info: ablation_view.summary_markdown(ablation, name)}

    gr.on(
        [button.click, tab.select],
        run,
        [analysis_state, variant],
        [table, variant, picture, info],
        api_visibility="private",
    )
    variant.input(pick, [analysis_state, variant], [picture, info], api_visibility="private")
    return tab


def api_ablate(ctx: AppContext, image_path, model_name, imgsz=0, conf=DEFAULT_CONF, iou=DEFAULT_IOU, variant=""):
    """/ablate: (image, model, imgsz, conf, iou, variant) -> (overlay of one rerun RGB, JSON).

    ``imgsz`` 0: the model's training size; ``variant``: the rerun drawn (a ``Variant.name`` such as
    "all layers · grid"; empty: the one that changes the detections most). The JSON is
    ``dcnv3.analysis.ablation.ImageAblation.as_dict`` (boxes in original-image pixels) with the model's name
    and the variant drawn.
    """
    if image_path is None:
        raise gr.Error("no image given")
    model_name = model_name or ctx.registry.default_name()
    try:
        analysis = ctx.analyser.analyse(
            image_path,
            model_name,
            DEFAULT_CONF if conf is None else float(conf),
            DEFAULT_IOU if iou is None else float(iou),
            imgsz=int(imgsz) if imgsz else None,
        )
    except (ValueError, CheckpointError) as error:
        raise gr.Error(str(error)) from None
    ablation, message = compute(ctx, analysis)
    if ablation is None:
        raise gr.Error(message.replace("**", ""))
    choices = ablation_view.variant_choices(ablation)
    name = variant or ablation_view.default_variant(ablation)
    if name not in choices:
        raise gr.Error(f"unknown variant {name!r}; variants: {', '.join(choices)}")
    payload = {"model": analysis.model_name, "shown_variant": name, **ablation.as_dict(analysis.image.scale)}
    return to_rgb(ablation_view.overlay(analysis.image.bgr, ablation, name)), payload


def build_api(ctx: AppContext) -> None:
    """The /ablate endpoint's own components (call inside a hidden column)."""
    image = image_file_input(label="image")
    model = gr.Textbox(label="model", value=ctx.registry.default_name())
    imgsz = gr.Number(0, label="imgsz (0: the model's training size)", precision=0)
    conf, iou = gr.Number(DEFAULT_CONF, label="conf"), gr.Number(DEFAULT_IOU, label="iou")
    variant = gr.Textbox(label="variant")
    picture, payload = image_output(format="png", label="image"), gr.JSON(label="json")

    def ablate(image_path, model_name, imgsz, conf, iou, variant):
        return api_ablate(ctx, image_path, model_name, imgsz, conf, iou, variant)

    gr.Button("ablate").click(ablate, [image, model, imgsz, conf, iou, variant], [picture, payload], api_name="ablate")
