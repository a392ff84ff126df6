"""The Video tab: offsets over time on tracked objects (``dcnv3.video.pipeline``), and the ``/video`` API.

``build`` makes the tab's components and events inside the caller's ``gr.Tab``; ``build_api`` the
hidden components of the ``/video`` endpoint. Processing is a generator event: a progress bar on
the output video, a live preview of drawn frames, then the H.264 MP4, the time series, a per-track
table and the statistics CSV. The frame inspector writes a chosen source frame to a PNG and opens
it in the Image tab (its ``image_in``), where the whole toolset applies.

Files live in the app context's ``FileStore`` (one folder per run, the oldest removed beyond its
``keep_runs``; gradio serves its own cached copies). Frames are probed under the Analyser's
``model_lock``, as every forward of the app. Handlers return ``{component: value}`` dicts; the
last processed video is a ``view_state.VideoRun`` in a ``gr.State``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from dcnv3.bundled import bundled_path
from dcnv3.video import pipeline as dvideo
from dcnv3.yolo.checkpoints import CheckpointError
from viz_app.components.outputs import image_output
from viz_app.components.safety import local_files_only
from viz_app.state.context import AppContext
from viz_app.state.view_state import VideoRun
from viz_app.views import video_render
from viz_app.views.render import to_rgb

__all__ = ["build", "build_api", "DEMO_VIDEO", "LIMITS"]

DEMO_VIDEO = bundled_path("demo_shapes.mp4")
LIMITS = dvideo.VideoLimits(max_bytes=500 * 2**20)  # the package's frame, duration and size caps; uploads to 500 MB
AUTO_CHOICE = ("per object: the layer whose stride matches its size", dvideo.AUTO_LAYER)
MODE_CHOICES = [
    ("sampling points at each tracked object's centre", "samples"),
    ("a fixed grid of query points", "grid"),
    ("effective-dilation field map", "field"),
]


@dataclass
class _Components:
    """The Video tab's components that its handlers write, and the Image tab's that the frame
    inspector sets (``image_in``, ``image_model``, ``main_tabs``)."""

    preview: gr.Image
    video_out: gr.Video
    plot: gr.Plot
    table: gr.Dataframe
    csv_file: gr.File
    status: gr.Markdown
    state: gr.State
    frame: gr.Slider
    image_in: gr.Image | None = None
    image_model: gr.Dropdown | None = None
    main_tabs: gr.Tabs | None = None


class _VideoEvents:
    """Event handlers of the Video tab and the /video endpoint (``components`` None for the API)."""

    def __init__(self, ctx: AppContext, components: _Components | None = None):
        self.ctx, self.c = ctx, components
        self.registry = ctx.registry

    def _model(self, name):
        try:
            return self.registry.load(name or self.registry.default_name())
        except (ValueError, CheckpointError) as error:
            raise gr.Error(str(error)) from None

    def layer_choices(self, model_name):
        """The layer dropdown for a model: per object, then its DCNv3 layers."""
        try:
            names = self.registry.load(model_name).deformable_layers if model_name else []
        except (ValueError, CheckpointError):
            names = []
        return gr.update(choices=[AUTO_CHOICE] + [(n, n) for n in names], value=dvideo.AUTO_LAYER)

    def _steps(self, source, model_name, layer, mode, stride, max_seconds, max_frames=None):
        """``dcnv3.video.pipeline.process_video`` for the named model, each step (a batch of frames: probe,
        tracking, drawing) under the Analyser's ``model_lock``: concurrent forwards on one model
        would mix their captured layers."""
        loaded = self._model(model_name)
        limits = dvideo.VideoLimits(
            max_frames=int(max_frames or LIMITS.max_frames),
            max_seconds=min(float(max_seconds or LIMITS.max_seconds), LIMITS.max_seconds),
            max_side=LIMITS.max_side,
            max_bytes=LIMITS.max_bytes,
        )
        steps = dvideo.process_video(
            loaded.yolo,
            source,
            self.ctx.files.run_dir(),
            layer=layer or dvideo.AUTO_LAYER,
            mode=mode or "samples",
            stride=int(stride or 1),
            limits=limits,
        )
        while True:
            with self.ctx.analyser.model_lock:
                try:
                    step = next(steps)
                except StopIteration:
                    return
            yield step

    def process(self, source, model_name, layer, mode, stride, max_seconds, progress=gr.Progress()):
        """Generator event: a live preview and the status while it runs, then every output."""
        c = self.c
        if source is None:
            gr.Warning("Upload a video (or pick the demo video) first.")
            yield {c.status: "Upload a video (or pick the demo video) first."}
            return
        try:
            for step in self._steps(source, model_name, layer, mode, stride, max_seconds):
                progress((step.done, step.total), desc="frames", unit="frames")
                if step.result is None:
                    if step.preview is not None:
                        yield {
                            c.preview: to_rgb(step.preview),
                            c.status: f"Processing: frame {step.frame} ({step.done} of ~{step.total})…",
                        }
                    continue
                yield self._finished(step.result, source, model_name)
        except ValueError as error:  # VideoError and bad settings: one line for the user
            gr.Warning(str(error))
            yield {c.status: f"**Could not process the video:** {error}"}

    def _finished(self, result, source, model_name) -> dict:
        c = self.c
        rows = result.rows
        first, last = result.frame_indices[0], result.frame_indices[-1]
        status = [
            f"- {result.processed_frames} frames processed in {result.seconds:.1f} s "
            f"({result.processed_frames / max(result.seconds, 1e-9):.1f} fps) with **{model_name}** at "
            f"imgsz {result.imgsz}; output {result.output_size[0]} x {result.output_size[1]} at "
            f"{result.output_fps:g} fps ({result.output_duration:.1f} s)",
            f"- {len({r['track_id'] for r in rows})} tracks, {len(rows)} track-frames",
        ]
        status += [f"- **{note}**" for note in result.notes]
        run = VideoRun(
            str(source),
            tuple(int(f) for f in result.frame_indices),
            int(result.stride),
            LIMITS.max_side,
            model_name,
            Path(source).stem,
        )
        table = video_render.track_table(rows)
        return {
            c.video_out: str(result.video_path),
            c.plot: video_render.time_series_figure(rows),
            c.table: pd.DataFrame(table) if table else None,
            c.csv_file: gr.update(value=str(result.csv_path), visible=True),
            c.status: "\n".join(status),
            c.state: run,
            c.frame: gr.update(
                minimum=first, maximum=max(last, first + 1), step=result.stride, value=first, interactive=True
            ),
        }

    def inspect(self, run: VideoRun | None, frame):
        """The chosen frame as a PNG in the Image tab (its model too), and that tab selected."""
        c = self.c
        if run is None:
            gr.Warning("Process a video first.")
            return gr.skip()
        index = min(run.frames, key=lambda f: abs(f - int(frame or 0)))  # the nearest processed frame
        try:
            picture = dvideo.read_frame(run.source, index, run.max_side)
        except ValueError as error:
            gr.Warning(str(error))
            return gr.skip()
        path = self.ctx.files.frame(f"{run.name}_frame{index:06d}", picture)
        return {c.image_in: path, c.image_model: gr.update(value=run.model), c.main_tabs: gr.Tabs(selected="image")}

    def api_video(self, source, model_name, layer, max_frames):
        """/video: (video file, model, layer, max_frames) -> (H.264 MP4, statistics JSON)."""
        if source is None:
            raise gr.Error("no video given")
        if max_frames is not None and not 1 <= int(max_frames) <= LIMITS.max_frames:
            raise gr.Error(f"max_frames must lie in 1..{LIMITS.max_frames}, got {max_frames}")
        try:
            for step in self._steps(
                source, model_name, layer or dvideo.AUTO_LAYER, "samples", 1, LIMITS.max_seconds, max_frames
            ):
                if step.result is not None:
                    payload = step.result.stats_json()
                    payload["model"] = model_name or self.registry.default_name()
                    return str(step.result.video_path), payload
        except ValueError as error:
            raise gr.Error(str(error)) from None
        raise gr.Error("nothing was processed")


def build(ctx: AppContext, image_in, image_model, main_tabs, tab=None) -> None:
    """The Video tab's components and events, inside the caller's ``gr.Tab``.

    ``image_in``, ``image_model``: the Image tab's input image and model dropdown (the frame
    inspector sets them); ``main_tabs``: the top-level ``gr.Tabs`` (it selects "image");
    ``tab``: this tab, whose selection refreshes the layer list.
    """
    registry = ctx.registry
    state = gr.State(None)
    private = dict(api_visibility="private")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=330):
            video_in = gr.Video(label="Video", sources=["upload"], height=240, elem_id="video-in")
            if DEMO_VIDEO.is_file():
                gr.Examples([[str(DEMO_VIDEO)]], inputs=video_in, label="Demo video")
            model = gr.Dropdown(registry.names(), value=registry.default_name(), label="Model", elem_id="video-model")
            layer = gr.Dropdown([AUTO_CHOICE], value=dvideo.AUTO_LAYER, label="Deformable layer", elem_id="video-layer")
            mode = gr.Radio(MODE_CHOICES, value="samples", label="Overlay", elem_id="video-mode")
            with gr.Row():
                stride = gr.Slider(1, 10, 1, step=1, label="Frame stride (every n-th frame)", elem_id="video-stride")
                max_seconds = gr.Slider(
                    1, LIMITS.max_seconds, 12, step=1, label="Maximum duration (s)", elem_id="video-seconds"
                )
            run = gr.Button("Process video", variant="primary", elem_id="video-run")
            status = gr.Markdown(
                f"Limits: {LIMITS.max_frames} processed frames, {LIMITS.max_seconds:g} s, frames "
                f"over {LIMITS.max_side} px are downscaled, files up to "
                f"{LIMITS.max_bytes >> 20} MB.",
                elem_id="video-status",
            )
            preview = image_output(label="Live preview", interactive=False, height=220, elem_id="video-preview")
            with gr.Accordion("Frame inspector", open=True):
                frame = gr.Slider(0, 1, 0, step=1, label="Source frame", interactive=False, elem_id="video-frame")
                inspect = gr.Button("Open this frame in the image views", elem_id="video-inspect")
        with gr.Column(scale=2):
            video_out = gr.Video(
                label="Processed video (H.264 MP4)", interactive=False, height=420, elem_id="video-out", autoplay=False
            )
            plot = gr.Plot(
                label="Per track over time: size, effective dilation and mean |offset| of the layer at "
                "its centre, weight entropy",
                elem_id="video-plot",
            )
            table = gr.Dataframe(label="Tracks", interactive=False, wrap=True, elem_id="video-tracks")
            csv_file = gr.File(
                label="Statistics CSV (one row per track and frame)",
                interactive=False,
                visible=False,
                elem_id="video-csv",
            )
    c = _Components(preview, video_out, plot, table, csv_file, status, state, frame, image_in, image_model, main_tabs)
    events = _VideoEvents(ctx, c)
    model.change(events.layer_choices, model, layer, **private)
    if tab is not None:
        tab.select(events.layer_choices, model, layer, **private)
    run.click(
        events.process,
        [video_in, model, layer, mode, stride, max_seconds],
        [preview, video_out, plot, table, csv_file, status, state, frame],
        show_progress="full",
        show_progress_on=[video_out],
        **private,
    )
    inspect.click(events.inspect, [state, frame], [image_in, image_model, main_tabs], **private)


def build_api(ctx: AppContext) -> None:
    """The /video endpoint's own components (call inside a hidden column)."""
    events = _VideoEvents(ctx)
    source = local_files_only(gr.File(label="video", type="filepath"))  # any local file (dcnv3.video.pipeline says
    # what is wrong with it); a URL is refused, never fetched
    model = gr.Textbox(label="model", value=ctx.registry.default_name())
    layer = gr.Textbox(label="layer", value=dvideo.AUTO_LAYER)
    max_frames = gr.Number(60, label="max_frames", precision=0)
    video_file, stats = gr.File(label="video"), gr.JSON(label="stats")
    button = gr.Button("video")
    button.click(events.api_video, [source, model, layer, max_frames], [video_file, stats], api_name="video")
