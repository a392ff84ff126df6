"""DeformLens' Gradio Blocks: components and the events that connect them to the pure modules.

Data flow: an image (or a model / conf / iou change) runs the model once through
``models.Analyser`` (cached); the resulting ``Analysis`` lives in a ``gr.State``. Every click,
detection pick, layer, group or field change re-renders from it with ``render`` functions and
never reruns the model. The view state (the queried point in image px, the layer, the highlighted
detection and the cached detections canvas) is a second ``gr.State``.

Two events form the HTTP API (``gradio_client``): ``/detect`` and ``/sampling``; they take the model
by name and share the Analyser's LRU, so repeated calls do not rerun the model.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import shutil
import tempfile
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pandas as pd

from dcnv3.checkpoints import CheckpointError

from . import compare_tab, exports, health, learn_tab, receptive_tab, render, video_tab
from .models import Analyser, ModelRegistry
from .render import to_rgb
from .safety import local_files_only

__all__ = ["build_app", "CSS", "THEME"]

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
MAX_DETECTION_CHOICES = 100
API_IMAGE_SIDE = 2048  # the API's pictures are at most this long (JSON coordinates are exact anyway)
CSS = """
#notices p { margin: 0.2em 0; }
#sampling-info { font-size: 0.95em; }
.gradio-container { max-width: 1600px !important; }
"""
THEME = gr.themes.Default(primary_hue="orange", secondary_hue="blue", neutral_hue="slate")
# Network input sizes offered; 0 = the size the model was trained at (its checkpoint's imgsz).
IMGSZ_CHOICES = [("the model's training size", 0), 320, 416, 480, 640, 800, 960, 1280]
USAGE = ("Upload an image (or pick an example). **Click** anywhere on the picture, or pick a detection, to "
         "see where every group of the chosen DCNv3 layer samples: grey rings are the regular KxK grid, "
         "arrows lead to the learned sampling points, a point's size and opacity grow with its weight "
         "(relative to the uniform 1/P).")



_KEEP_VIEWS = 300  # picture files kept in the views folder (gradio copies each into its cache at once)


@functools.lru_cache(maxsize=None)
def _work_dir() -> Path:
    """This process' folder for rendered views and exports (gradio serves copies from its own
    cache), removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="deformlens_"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _view_dir() -> Path:
    path = _work_dir() / "views"
    path.mkdir(exist_ok=True)
    return path


def _picture(image: np.ndarray | None) -> str | None:
    """A BGR canvas as a JPEG file for a gr.Image. Encoding it here (quality 92, no chroma
    subsampling, so thin coloured lines stay crisp) takes a few ms where gradio's PNG takes ~100 ms
    per click; the file is named by its content, so an unchanged view is not stored twice."""
    if image is None:
        return None
    _, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    path = _view_dir() / f"{hashlib.blake2b(data.tobytes(), digest_size=12).hexdigest()}.jpg"
    path.write_bytes(data.tobytes())
    files = sorted(_view_dir().glob("*.jpg"), key=lambda p: p.stat().st_mtime)
    for old in files[:-_KEEP_VIEWS]:
        old.unlink(missing_ok=True)
    return str(path)


def image_file_input(**kwargs) -> gr.Image:
    """A gr.Image input that hands the app the uploaded file's path without decoding it.

    ``models.load_image`` then reads the file and says what is wrong with a bad one ("not an
    image", "a corrupt or truncated image"); gr.Image's own check would fail first, with a generic
    "could not preprocess" error. (The instance's ``preprocess`` is replaced rather than the class
    subclassed, because gradio writes a .pyi stub next to the source of every component subclass.)
    """
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    decode = component.preprocess

    def preprocess(payload):
        if payload is not None and payload.path is not None:
            return str(payload.path)
        return decode(payload)  # e.g. a pasted image sent as a data URL

    component.preprocess = preprocess
    return local_files_only(component)  # a URL is refused, never fetched


def _notice_markdown(analysis) -> str:
    """The model's and the image's notices (bold), then what ran."""
    probe = analysis.probe
    lines = [f"- **{note}**" for note in analysis.notices]
    lines.append(f"- {len(probe.detections)} detections, {len(probe.layers)} DCNv3 layers; model ran in "
                 f"{analysis.seconds:.2f} s on a {probe.image_shape[1]} x {probe.image_shape[0]} px image "
                 f"(network input {probe.letterbox.input_shape[1]} x {probe.letterbox.input_shape[0]})")
    return "\n".join(lines)


class _Views:
    """The event handlers: each turns the cached Analysis + the view state into component values."""

    def __init__(self, registry: ModelRegistry, analyser: Analyser):
        self.registry, self.analyser = registry, analyser

    # -- sampling -------------------------------------------------------------------------------
    @staticmethod
    def _base(analysis, view):
        """The detections canvas, cached in the view state per (analysis, highlight)."""
        key = (id(analysis), view.get("highlight"))
        if view.get("base_key") != key:
            canvas, scale = render.make_canvas(analysis.image.bgr)
            view["base"] = render.draw_detections(canvas, analysis.probe.detections, scale, view.get("highlight"))
            view["scale"], view["base_key"] = scale, key
        return view["base"], view["scale"]

    def render_sampling(self, analysis, view, groups):
        """(overlay, figure, weights, trace, message) for the view state's point and layer."""
        if analysis is None:
            return None, None, None, None, "Upload an image to start."
        base, scale = self._base(analysis, view)
        result = render.sampling_view(analysis.image.bgr, analysis.probe, view.get("layer"), view["xy"], groups,
                                      view.get("highlight"), scale=scale, base=base)
        view["cell"] = result.cell
        return _picture(result.overlay), result.figure, result.weights, _picture(result.trace), result.message

    def fields(self, analysis, view, field, group, opacity, smooth):
        if analysis is None or not view.get("layer"):
            return None
        picture, _ = render.field_overlay(analysis.image.bgr, analysis.probe, view["layer"], field,
                                          None if group in (None, -1) else int(group), opacity,
                                          view.get("scale"), smooth)
        return _picture(picture)

    # -- events ---------------------------------------------------------------------------------
    def run(self, image_path, model_name, conf, iou, imgsz, field, opacity, smooth):
        """A new image / model / threshold / input size: run (or fetch) the probe and fill every
        view. ``imgsz`` 0: the model's training size."""
        if image_path is None:
            note = f"Model **{model_name}** selected: upload an image to start."
            return [None, {}, note, gr.update(choices=[], value=None), gr.update(choices=[], value=None),
                    gr.update(choices=[], value=[]), gr.update(choices=[], value=None),
                    None, None, None, None, "Upload an image to start.", None, None, None, None]
        try:
            analysis = self.analyser.analyse(image_path, model_name, conf, iou, imgsz=imgsz or None)
        except (ValueError, CheckpointError) as error:
            gr.Warning(str(error))
            return [gr.skip(), gr.skip(), f"**Could not run:** {error}"] + [gr.skip()] * 13
        probe = analysis.probe
        x, y, layer, highlight = render.initial_query(probe)
        view = {"xy": (x, y), "layer": layer, "highlight": highlight}
        detections = [(f"#{i + 1} {probe.detections.label(i)}", i)
                      for i in np.argsort(-probe.detections.scores, kind="stable")[:MAX_DETECTION_CHOICES].tolist()]
        layers = [(render.layer_choice_label(r), r.name) for r in probe.layers]
        sampling = self.render_sampling(analysis, view, None)
        health_rows = health.health_rows(probe)
        scale = analysis.image.scale[0]
        return [analysis, view, _notice_markdown(analysis), gr.update(choices=detections, value=highlight),
                gr.update(choices=layers, value=layer), self._group_choices(analysis, layer),
                self._field_group_choices(analysis, layer), *sampling,
                self.fields(analysis, view, field, -1, opacity, smooth),
                pd.DataFrame(health_rows) if health_rows else None,
                render.health_histograms(probe) if probe.layers else None,
                pd.DataFrame(health.dilation_by_size_rows(probe, scale)) if probe.layers else None]

    @staticmethod
    def _group_choices(analysis, layer):
        groups = analysis.probe.layer(layer).groups if layer else 0
        return gr.update(choices=[(f"group {g}", g) for g in range(groups)], value=list(range(groups)))

    @staticmethod
    def _field_group_choices(analysis, layer):
        groups = analysis.probe.layer(layer).groups if layer else 0
        return gr.update(choices=[("mean over groups", -1)] + [(f"group {g}", g) for g in range(groups)], value=-1)

    def click(self, analysis, view, groups, evt: gr.SelectData):
        """A click on the picture: gradio gives the canvas pixel (x, y); its centre is x + 0.5."""
        if analysis is None:
            gr.Warning("Upload an image first.")
            return [gr.skip()] * 5
        if evt.index is None or view.get("scale") is None:
            gr.Warning("That click was outside the image.")
            return [gr.skip()] * 5
        x, y = render.canvas_to_image((evt.index[0] + 0.5, evt.index[1] + 0.5), view["scale"])
        height, width = analysis.probe.image_shape
        if not (0 <= x < width and 0 <= y < height):
            gr.Warning("That click was outside the image (below it is the colour bar).")
            return [gr.skip()] * 5
        view["xy"] = (float(x), float(y))
        return self.render_sampling(analysis, view, groups)

    def pick_detection(self, analysis, view, index, groups, field, field_group, opacity, smooth):
        """A detection from the dropdown: its centre, in the layer that matches its size."""
        if analysis is None or index is None:
            return [gr.skip()] * 9
        x, y, layer = render.query_for_detection(analysis.probe, int(index))
        changed = layer != view.get("layer")
        view.update(xy=(x, y), layer=layer, highlight=int(index))
        if changed:
            groups = list(range(analysis.probe.layer(layer).groups)) if layer else []
        return [gr.update(value=layer), self._group_choices(analysis, layer) if changed else gr.skip(),
                self._field_group_choices(analysis, layer) if changed else gr.skip(),
                *self.render_sampling(analysis, view, groups),
                self.fields(analysis, view, field, -1 if changed else field_group, opacity, smooth)]

    def pick_layer(self, analysis, view, layer, field, opacity, smooth):
        if analysis is None or not layer:
            return [gr.skip()] * 9
        view["layer"] = layer
        groups = list(range(analysis.probe.layer(layer).groups))
        return [self._group_choices(analysis, layer), self._field_group_choices(analysis, layer),
                *self.render_sampling(analysis, view, groups), self.fields(analysis, view, field, -1, opacity, smooth)]

    def export(self, analysis, view, groups):
        if analysis is None:
            gr.Warning("Nothing to export yet: upload an image first.")
            return None
        base, scale = self._base(analysis, view)
        overlay = render.sampling_view(analysis.image.bgr, analysis.probe, view.get("layer"), view["xy"], groups,
                                       view.get("highlight"), scale=scale, base=base).overlay
        cell, layer = view.get("cell"), view.get("layer")
        selection = None
        if cell is not None and layer:
            selection = exports.sampling_payload(analysis.probe, layer, cell, analysis.image.scale,
                                                 analysis.image.to_original(view["xy"]))
            selection["groups_shown"] = list(groups or [])
        stem = f"{analysis.image.name}_{Path(analysis.model_name).stem}".replace(" ", "_").replace(":", "")
        files = exports.export_all(tempfile.mkdtemp(prefix="export_", dir=_work_dir()), stem, overlay,
                                   analysis.probe, selection)
        return gr.update(value=[str(p) for p in files], visible=True)

    def upload_checkpoint(self, path):
        """Load an uploaded checkpoint safely; select it, or say why it was refused."""
        if path is None:
            return gr.skip(), gr.skip()
        try:
            name = self.registry.add_upload(path)
        except CheckpointError as error:
            gr.Warning(f"Checkpoint refused: {error}")
            return gr.skip(), f"**Checkpoint refused:** {error}"
        return gr.update(choices=self.registry.names(), value=name), f"Loaded **{name}**."

    # -- HTTP API ---------------------------------------------------------------------------------
    def _analyse_for_api(self, image_path, model_name, conf=None, iou=None, imgsz=None):
        if image_path is None:
            raise gr.Error("no image given")
        model_name = model_name or self.registry.default_name()
        imgsz = int(imgsz) if imgsz else None  # 0 / None: the model's training size
        try:
            if conf is None:
                return self.analyser.analyse_any_threshold(image_path, model_name, imgsz)
            return self.analyser.analyse(image_path, model_name, float(conf), float(iou), imgsz=imgsz)
        except (ValueError, CheckpointError) as error:
            raise gr.Error(str(error)) from None

    def api_detect(self, image_path, model_name, conf, iou, imgsz=0):
        """/detect: (image, model, conf, iou[, imgsz]) -> (annotated image, detections JSON)."""
        analysis = self._analyse_for_api(image_path, model_name, 0.25 if conf is None else conf,
                                         0.7 if iou is None else iou, imgsz)
        canvas, scale = render.make_canvas(analysis.image.bgr, _api_scale(analysis))
        annotated = render.draw_detections(canvas, analysis.probe.detections, scale, max_boxes=10**6)
        return to_rgb(annotated), exports.detections_payload(analysis.probe, analysis.image.scale,
                                                           analysis.model_name, analysis.notices)

    def api_sampling(self, image_path, model_name, layer, x, y, imgsz=0):
        """/sampling: (image, model, layer, x, y[, imgsz]) -> (overlay image, sampling points JSON)."""
        analysis = self._analyse_for_api(image_path, model_name, imgsz=imgsz)
        probe = analysis.probe
        names = [r.name for r in probe.layers]
        if not names:
            raise gr.Error(f"{analysis.model_name} has no DCNv3 layer")
        if layer not in names:
            raise gr.Error(f"unknown layer {layer!r}; layers: {', '.join(names)}")
        if x is None or y is None:
            raise gr.Error("x and y are required (original-image pixels)")
        original_h, original_w = analysis.image.original_shape
        if not (0 <= x < original_w and 0 <= y < original_h):
            raise gr.Error(f"({x}, {y}) is outside the {original_w} x {original_h} image")
        px, py = analysis.image.to_processed(x, y)
        view = render.sampling_view(analysis.image.bgr, probe, layer, (px, py), scale=_api_scale(analysis))
        if view.cell is None:
            raise gr.Error(view.message)
        return to_rgb(view.overlay), exports.sampling_payload(probe, layer, view.cell, analysis.image.scale, (x, y))


def _api_scale(analysis) -> float:
    return min(1.0, API_IMAGE_SIDE / max(analysis.image.bgr.shape[:2]))


def build_app(registry: ModelRegistry, analyser: Analyser | None = None) -> gr.Blocks:
    """The DeformLens Blocks (not launched). Controls left, views right."""
    views = _Views(registry, analyser or Analyser(registry))
    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*.jpg")) if EXAMPLES_DIR.is_dir() else []
    # delete_cache: every hour, drop cached files (uploads, views, exports) older than a day.
    with gr.Blocks(title="DeformLens", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        analysis, view = gr.State(None), gr.State({})
        gr.Markdown("## DeformLens: what the DCNv3 layers of a YOLOv8 detector learned\n" + USAGE)
        with gr.Tabs(elem_id="main-tabs") as main_tabs:
            with gr.Tab("Image", id="image", elem_id="tab-image"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=330):
                        image_in = image_file_input(label="Image", height=240, sources=["upload", "clipboard"],
                                                    elem_id="image-in")
                        if examples:
                            gr.Examples(examples, inputs=image_in, label="Examples", examples_per_page=6)
                        model = gr.Dropdown(registry.names(), value=registry.default_name(), label="Model",
                                            elem_id="model")
                        checkpoint = gr.UploadButton(f"Load a checkpoint (.pt, up to {registry.max_upload_bytes >> 20} MB)",
                                                     file_types=[".pt"], type="filepath", size="md", elem_id="checkpoint")
                        notices = gr.Markdown(elem_id="notices")
                        with gr.Row():
                            conf = gr.Slider(0.01, 1.0, 0.25, step=0.01, label="Confidence")
                            iou = gr.Slider(0.05, 1.0, 0.7, step=0.05, label="NMS IoU")
                        imgsz = gr.Dropdown(IMGSZ_CHOICES, value=0, label="Network input size (longest side, px)",
                                            elem_id="imgsz")
                        detection = gr.Dropdown([], label="Detection (jumps to the layer of its scale)",
                                                elem_id="detection")
                        layer = gr.Dropdown([], label="DCNv3 layer (stage · stride · groups G · kernel K)", elem_id="layer")
                        groups = gr.CheckboxGroup([], label="Groups shown", type="value", elem_id="groups")
                        with gr.Accordion("Export", open=True):
                            export_button = gr.Button("Export PNG · NPZ · JSON · CSV", size="md", elem_id="export")
                            gr.Markdown("Overlay PNG, the probe's raw arrays (NPZ), the sampling points of the current "
                                        "selection (JSON) and per-layer statistics (CSV).")
                            export_files = gr.File(label="Files", file_count="multiple", interactive=False,
                                                   visible=False, elem_id="export-files")
                    with gr.Column(scale=2):
                        with gr.Tabs():
                            with gr.Tab("Sampling", elem_id="tab-sampling"):
                                overlay = gr.Image(label="Click a pixel", interactive=False, type="filepath",
                                                   height=660, elem_id="overlay", buttons=["download", "fullscreen"])
                                info = gr.Markdown(elem_id="sampling-info")
                                with gr.Row(equal_height=False):
                                    figure = gr.Plot(label="Zoom: hover a point for group, point, dx, dy, weight",
                                                     elem_id="sampling-plot")
                                    trace = gr.Image(label="Trace through the stacked DCNv3 layers (DCNv1 fig. 6): the 60 "
                                                           "strongest paths, weights multiplied along the path (yellow = "
                                                           "strongest); white rings: intermediate layers",
                                                     interactive=False, type="filepath", height=520, elem_id="trace")
                                weights = gr.Plot(label="Weights per group: column i walks x, row j walks y",
                                                  elem_id="weights-plot")
                            with gr.Tab("Fields", elem_id="tab-fields"):
                                with gr.Row():
                                    field = gr.Radio(list(render.FIELDS), value="offset magnitude", label="Field",
                                                     scale=3, elem_id="field")
                                    field_group = gr.Dropdown([], label="Group", scale=1, elem_id="field-group")
                                with gr.Row():
                                    opacity = gr.Slider(0.0, 1.0, 0.6, step=0.05, label="Opacity", scale=3)
                                    smooth = gr.Checkbox(False, label="Smooth between cell centres", scale=1)
                                gr.Markdown(" · ".join(f"**{k}**: {v}" for k, v in render.FIELDS.items()))
                                field_image = gr.Image(label="Field over the image (click to query a pixel)",
                                                       interactive=False, type="filepath", height=640,
                                                       elem_id="field-image")
                            with gr.Tab("Health", elem_id="tab-health"):
                                gr.Markdown(health.thresholds_markdown())
                                health_table = gr.Dataframe(label="Per-layer health", interactive=False, wrap=True,
                                                            column_widths=["17%", "10%", "4%", "4%", "6%", "7%", "6%", "6%",
                                                                           "7%", "6%", "27%"], elem_id="health-table")
                                histograms = gr.Plot(label="Distributions per layer", elem_id="histograms")
                                gr.Markdown("**Effective dilation by detection size** (DCNv1 Table 2 layout, this image): "
                                            "mean ± std in feature cells at the cells under detection centres; "
                                            "small / medium / large by sqrt(box area) < 32, < 96, >= 96 px (COCO); "
                                            "background = cells in no box.")
                                dilation_table = gr.Dataframe(interactive=False, wrap=True, elem_id="dilation-table")
                            receptive_tab.build(registry, views.analyser, analysis, view)
            with gr.Tab("Video", id="video", elem_id="tab-video") as video_tab_item:
                video_tab.build(registry, views.analyser, image_in, model, main_tabs, video_tab_item)
            compare_tab.build(registry, views.analyser, image_in)
            learn_tab.build(registry)

        sampling_out = [overlay, figure, weights, trace, info]
        field_params = [field, opacity, smooth]
        run_out = [analysis, view, notices, detection, layer, groups, field_group, *sampling_out, field_image,
                   health_table, histograms, dilation_table]
        private = dict(api_visibility="private")
        run_in = [image_in, model, conf, iou, imgsz, *field_params]
        image_in.change(views.run, run_in, run_out, **private)
        model.change(views.run, run_in, run_out, **private)
        gr.on([conf.release, iou.release, imgsz.input], views.run, run_in, run_out, **private)
        checkpoint.upload(views.upload_checkpoint, checkpoint, [model, notices], **private)
        click = dict(inputs=[analysis, view, groups], outputs=sampling_out, show_progress="minimal", **private)
        overlay.select(views.click, **click)
        field_image.select(views.click, **click)
        detection.input(views.pick_detection, [analysis, view, detection, groups, field, field_group, opacity, smooth],
                        [layer, groups, field_group, *sampling_out, field_image], **private)
        layer.input(views.pick_layer, [analysis, view, layer, *field_params],
                    [groups, field_group, *sampling_out, field_image], **private)
        groups.input(views.render_sampling, [analysis, view, groups], sampling_out, show_progress="hidden", **private)
        gr.on([field.change, field_group.input, opacity.release, smooth.input], views.fields,
              [analysis, view, field, field_group, opacity, smooth], field_image, show_progress="hidden", **private)
        export_button.click(views.export, [analysis, view, groups], export_files, **private)

        # The HTTP API: its own (hidden) components, so it needs no browser session.
        with gr.Column(visible=False):
            api_image = image_file_input(label="image")
            api_model = gr.Textbox(label="model", value=registry.default_name())
            api_conf, api_iou = gr.Number(0.25, label="conf"), gr.Number(0.7, label="iou")
            api_imgsz = gr.Number(0, label="imgsz (0: the model's training size)", precision=0)
            api_layer = gr.Textbox(label="layer")
            api_x, api_y = gr.Number(label="x"), gr.Number(label="y")
            api_picture, api_json = gr.Image(format="png", label="image"), gr.JSON(label="json")
            detect_button, sampling_button = gr.Button("detect"), gr.Button("sampling")
            video_tab.build_api(registry, views.analyser)
        detect_button.click(views.api_detect, [api_image, api_model, api_conf, api_iou, api_imgsz],
                            [api_picture, api_json], api_name="detect")
        sampling_button.click(views.api_sampling, [api_image, api_model, api_layer, api_x, api_y, api_imgsz],
                              [api_picture, api_json], api_name="sampling")
        with gr.Column(visible=False):
            api_compare, erf_button = gr.Textbox(label="compare_model"), gr.Button("erf")
        erf_button.click(functools.partial(receptive_tab.api_erf, registry, views.analyser),
                         [api_image, api_model, api_layer, api_x, api_y, api_compare], [api_picture, api_json],
                         api_name="erf")
    return demo
