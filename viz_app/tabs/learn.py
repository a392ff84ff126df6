"""The top-level Learn tab (gradio wiring): DCNv3 in a few paragraphs; the lesson network's toy,
whose samples follow the shape's size and orientation, with a live plot of effective dilation
against size (``viz_app.views.lesson_view``); "watch it learn", where one DCNv3 layer of the lesson
network learns its sampling from the regular grid (``dcnv3.lesson.watch``), also served as the
``/watch_learn`` endpoint; and the bundled DCNv3-YOLOv8n's toy beside them (``viz_app.views.toy``),
whose forward runs under the Analyser's ``model_lock`` as every forward of a registry model.

One watch-it-learn run at a time in the whole app: the button's and the endpoint's events share
one gradio concurrency slot (``WATCH_CONCURRENCY_ID``), so a second session waits in the queue.
"""

from __future__ import annotations

import json
import time

import gradio as gr

from dcnv3.analysis.probe import default_layer
from dcnv3.data import CLASS_NAMES
from dcnv3.lesson.network import BUNDLED_LESSON, load_lesson
from dcnv3.lesson.watch import ITERATIONS, probe_scene, watch_learn
from viz_app.components.outputs import image_output
from viz_app.state.context import AppContext
from viz_app.state.models import DEFAULT_BUNDLED
from viz_app.views import lesson_view, toy
from viz_app.views.render import to_rgb

__all__ = [
    "build",
    "LESSON",
    "LESSON_MODEL_TEXT",
    "WATCH_TEXT",
    "OPERATORS_TEXT",
    "YOLO_TEXT",
    "LATEX_DELIMITERS",
    "toy_model_name",
    "snapshot_payload",
    "WATCH_CONCURRENCY_ID",
]

WATCH_CONCURRENCY_ID = "watch_learn"

LATEX_DELIMITERS = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]

LESSON = r"""
### Deformable convolution v3 in a few paragraphs

A plain 3x3 convolution reads its input on a fixed grid: for the output at position $p_0$ it takes the
nine pixels $p_0 + p_k$, $p_k \in \{-1, 0, 1\}^2$, and weighs them with learned weights that are the same
everywhere in the image. Whatever the object, the grid stays square.

A **deformable** convolution lets every output position move its samples. DCNv3 (InternImage, CVPR 2023)
splits the $C$ channels into $G$ **groups** of $C/G$ channels; each group $g$ predicts, from the input
itself, an **offset** $\Delta p_{gk}$ for each of its $K$ points and a **modulation weight** $m_{gk}$:

$$y(p_0) = \sum_{g=1}^{G} \sum_{k=1}^{K} w_g \, m_{gk} \, x_g\!\left(p_0 + p_k + \Delta p_{gk}\right)$$

where $x_g$ is group $g$'s slice of the (projected) input, read with bilinear interpolation because the
shifted points fall between pixels, and $w_g$ is a projection shared by all points of the group (DCNv3
moves the per-point weights of DCNv2 into $m_{gk}$, which keeps it light).

The modulation weights are a **softmax over the $K$ points of a group**: $\sum_k m_{gk} = 1$, so a group
spreads a fixed budget over its points (uniform is $1/K$; DCNv2 used an unbounded sigmoid instead). An
untrained layer predicts $\Delta p = 0$ and $m = 1/K$: exactly an averaging 3x3 grid.

`offset_scale` $s$ scales the whole sampling pattern, grid and offsets together:
$p_0 + s\,(p_k + \Delta p_{gk})$; with the default $s = 1$ the offsets are in input pixels of the
layer's feature map (feature cells, one cell = the layer's stride in image pixels).

**What you see below.** Grey rings: the regular 3x3 grid of the cell under the shape's centre, what a
plain convolution reads. Coloured dots: where DCNv3 reads instead, one colour per **group** (each group
moves its own $K$ points, so different groups can look at different things), joined to the grid point
they moved from: that arrow is the learned **offset** $\Delta p_{gk}$. A dot's size grows with its
**softmax weight** $m_{gk}$ (uniform $1/K$ is the middle size). The **effective dilation** is the mean
distance between kernel-neighbour samples, in cells (DCNv1's Table 2): 1 for the regular grid.
"""

LESSON_MODEL_TEXT = r"""
### 1. A lesson network whose sampling follows the object

Three residual DCNv3 layers ($C = 32$, $G = 2$) on one stride-4 grid, no feature pyramid, trained to
predict at each shape's centre cell its objectness, class and extent, on generated shapes of 8-150 px
at every orientation (`python -m dcnv3.lesson.train`, about 13 minutes; its card:
`assets/models/lesson/LESSON_CARD.md`). To
measure a large shape from its centre the deepest layer must reach its edges, so its samples spread
as the shape grows. **Scale the shape**: the dots spread and the red diamond climbs the curve.
"""

WATCH_TEXT = r"""
### 2. Watch it learn

The button sets the lesson network's deepest DCNv3 layer back to an untrained one's sampling (offset
and mask projections zero: the regular grid, weights $1/K$) and trains just those two projections
again on generated scenes, in under a minute. Every few iterations the picture shows where the layer
samples at the centre of the bar (grey rings: where it started), and the plot the loss and the mean
$|\Delta p|$. The same seed gives the same run. One run at a time in the app: a second one waits.
"""

OPERATORS_TEXT = r"""
### DCNv2, DCNv3, DCNv4: what changes

**DCNv2** (torchvision's `deform_conv2d`, mmcv) gives every point its own full set of weights over the
channels, and its modulation mask is a per-point **sigmoid** in $(0, 1)$: each point is switched on or
off on its own, nothing ties them together; offsets come as $(\Delta y, \Delta x)$ pairs. **DCNv3**, shown
here, shares one projection per group and makes the modulation a **softmax over each group's $K$
points**, so the points of a group compete for a budget of 1. **DCNv4** keeps DCNv3's sampling but
drops the softmax: the modulation scalars are signed and unbounded, predicted together with the
offsets by one `offset_mask` Linear layer, which trains faster and runs faster.
"""

YOLO_TEXT = r"""
### 3. The bundled DCNv3-YOLOv8n, for comparison

In YOLOv8 the DCNv3 layers replace the 3x3 convolution inside the backbone's bottlenecks at strides 8,
16 and 32 (P3, P4, P5). Its layers adapt much less with size than the lesson network's: a feature
pyramid gives each level a narrow range of object sizes (YOLOv8 assigns objects to P3, P4 or P5 by
size), so measured in its own cells every object a level sees is about the same size, and there is
little for the sampling to follow. Same controls as above, on this model.
"""


def toy_model_name(registry) -> str:
    """The bundled trained DCNv3 model if the registry has it, else the registry's default."""
    return DEFAULT_BUNDLED if DEFAULT_BUNDLED in registry.names() else registry.default_name()


def snapshot_payload(snapshot) -> dict:
    """One ``WatchSnapshot`` as JSON-able numbers (the /watch_learn endpoint's rows)."""
    return {
        "iteration": snapshot.iteration,
        "loss": round(snapshot.loss, 5),
        "mean_offset": round(snapshot.mean_offset, 5),
        "cell_offset": round(snapshot.cell_offset, 5),
        "cell_dilation": round(snapshot.cell_dilation, 5),
        "seconds": round(snapshot.seconds, 3),
        "points_xy": snapshot.points.round(3).tolist(),
        "weights": snapshot.weights.round(5).tolist(),
    }


def _watch_message(snapshot, iterations: int, first) -> str:
    return (
        f"Iteration **{snapshot.iteration}/{iterations}** ({snapshot.seconds:.0f} s): loss {snapshot.loss:.3f} "
        f"(at the start {first.loss:.3f}); mean |offset| at the watched pixel **{snapshot.cell_offset:.2f} cells**, "
        f"over the scene {snapshot.mean_offset:.2f}; effective dilation there {snapshot.cell_dilation:.2f} "
        f"(the regular grid: {first.cell_dilation:.2f})."
    )


def _lesson_controls(prefix: str, scale_range: tuple[int, int, int], side: int):
    """Shape, scale, rotation, x, y and background controls by name, elem ids ``{prefix}-<name>``."""
    shape_class = gr.Dropdown(
        [(name, n) for n, name in enumerate(CLASS_NAMES)], value=0, label="Shape", elem_id=f"{prefix}-class"
    )
    size = gr.Slider(*scale_range[:2], scale_range[2], step=2, label="Scale (px)", elem_id=f"{prefix}-scale")
    angle = gr.Slider(0, 180, 30, step=5, label="Rotation (degrees)", elem_id=f"{prefix}-rotate")
    x = gr.Slider(0, side, side / 2, step=4, label="x (px)", elem_id=f"{prefix}-x")
    y = gr.Slider(0, side, side / 2, step=4, label="y (px)", elem_id=f"{prefix}-y")
    seed = gr.Slider(0, 29, 8, step=1, label="Background (generator seed)", elem_id=f"{prefix}-seed")
    # In the lesson handler's argument order (a list of components, not a handler's answer).
    return {"class": shape_class, "scale": size, "rotate": angle, "x": x, "y": y, "seed": seed}


def build(ctx: AppContext) -> None:
    """The Learn tab (a top-level tab), the toys' events and the /watch_learn endpoint."""
    registry = ctx.registry
    model_name = toy_model_name(registry)
    lesson_model = load_lesson(BUNDLED_LESSON)[0] if BUNDLED_LESSON.exists() else None
    private = dict(api_visibility="private", show_progress="hidden", trigger_mode="always_last")
    with gr.Tab("Learn", id="learn", elem_id="tab-learn") as tab:
        gr.Markdown(LESSON, latex_delimiters=LATEX_DELIMITERS, elem_id="learn-text")
        gr.Markdown(LESSON_MODEL_TEXT, latex_delimiters=LATEX_DELIMITERS, elem_id="lesson-text")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                lesson_inputs = _lesson_controls(
                    "lesson", (lesson_view.LESSON_MIN_SCALE, lesson_view.LESSON_MAX_SCALE, 40), toy.TOY_SIDE
                )
            with gr.Column(scale=2):
                lesson_picture = image_output(
                    label="Lesson network: samples of the deepest DCNv3 layer at the centre",
                    type="numpy",
                    interactive=False,
                    height=640,
                    elem_id="lesson-toy",
                )
            with gr.Column(scale=1, min_width=300):
                lesson_plot = gr.Plot(label="Effective dilation against size", elem_id="lesson-plot")
                lesson_info = gr.Markdown(elem_id="lesson-info")
        gr.Markdown(WATCH_TEXT, latex_delimiters=LATEX_DELIMITERS, elem_id="watch-text")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                watch_seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="watch-seed")
                watch_iterations = gr.Slider(
                    10, ITERATIONS, ITERATIONS, step=10, label="Iterations", elem_id="watch-iterations"
                )
                start = gr.Button("Watch it learn", variant="primary", elem_id="watch-start")
                stop = gr.Button("Stop", elem_id="watch-stop")
            with gr.Column(scale=2):
                watch_picture = image_output(
                    label="Where the layer samples at the bar's centre",
                    type="numpy",
                    interactive=False,
                    height=512,
                    elem_id="watch-picture",
                )
            with gr.Column(scale=1, min_width=300):
                watch_plot = gr.Plot(label="Loss and mean |offset|", elem_id="watch-plot")
                watch_info = gr.Markdown(elem_id="watch-info")
        gr.Markdown(OPERATORS_TEXT, latex_delimiters=LATEX_DELIMITERS, elem_id="operators-text")
        gr.Markdown(YOLO_TEXT, latex_delimiters=LATEX_DELIMITERS, elem_id="yolo-text")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                shape_class = gr.Dropdown(
                    [(name, n) for n, name in enumerate(CLASS_NAMES)], value=3, label="Shape", elem_id="learn-class"
                )
                size = gr.Slider(24, 280, 120, step=4, label="Scale (px)", elem_id="learn-scale")
                angle = gr.Slider(0, 360, 0, step=5, label="Rotation (degrees)", elem_id="learn-rotate")
                x = gr.Slider(0, toy.TOY_SIDE, toy.TOY_SIDE / 2, step=4, label="x (px)", elem_id="learn-x")
                y = gr.Slider(0, toy.TOY_SIDE, toy.TOY_SIDE / 2, step=4, label="y (px)", elem_id="learn-y")
                layer = gr.Dropdown([], label="DCNv3 layer", elem_id="learn-layer")
                seed = gr.Slider(0, 29, 8, step=1, label="Background (generator seed)", elem_id="learn-seed")
                gr.Markdown(f"Model: **{model_name}**, at the {toy.TOY_SIDE} px it was trained on.")
            with gr.Column(scale=2):
                picture = image_output(
                    label="Sampling points at the shape's centre",
                    type="numpy",
                    interactive=False,
                    height=640,
                    elem_id="learn-toy",
                )
                info = gr.Markdown(elem_id="learn-info")
        with gr.Column(visible=False):  # the /watch_learn endpoint's own components
            api_seed = gr.Number(0, precision=0, label="seed")
            api_iterations = gr.Number(ITERATIONS, precision=0, label=f"iterations (1-{ITERATIONS})")
            api_payload = gr.JSON(label="snapshots")
            api_button = gr.Button("watch_learn")

    def update(class_id, size_value, angle_value, x_value, y_value, layer_name, seed_value):
        loaded = registry.load(model_name)
        layers = list(loaded.deformable_layers)
        if not layers:
            return {picture: None, info: f"**{model_name}** has no DCNv3 layer: the toy needs one."}
        if layer_name not in layers:
            preferred = [n for n in layers if n.startswith(toy.DEFAULT_LAYER_PREFIX)]
            layer_name = preferred[-1] if preferred else default_layer(layers)
        shape = toy.ToyShape(int(class_id), float(size_value), float(angle_value), float(x_value), float(y_value))
        with ctx.analyser.model_lock:
            view = toy.toy_view(loaded.yolo, layer_name, shape, int(seed_value), scenes=ctx.toy_scenes)
        notes = loaded.notices
        message = view.message + (f" ({view.seconds * 1000:.0f} ms)" if view.seconds else "")
        if notes:
            message += "\n\n" + "; ".join(f"**{n}**" for n in notes)
        return {picture: to_rgb(view.picture), info: message, layer: gr.update(choices=layers, value=layer_name)}

    def lesson_update(class_id, size_value, angle_value, x_value, y_value, seed_value):
        if lesson_model is None:
            return {
                lesson_picture: None,
                lesson_plot: None,
                lesson_info: f"The lesson network ({BUNDLED_LESSON.name}) is missing: run "
                "`python -m dcnv3.lesson.train`.",
            }
        shape = toy.ToyShape(int(class_id), float(size_value), float(angle_value), float(x_value), float(y_value))
        view = lesson_view.lesson_view(lesson_model, shape, int(seed_value), scenes=ctx.toy_scenes)
        sizes, dilations = lesson_view.dilation_sweep(
            lesson_model, shape, int(seed_value), cache=ctx.sweeps, scenes=ctx.toy_scenes
        )
        figure = lesson_view.sweep_figure(sizes, dilations, (shape.size, view.dilation))
        return {
            lesson_picture: to_rgb(view.picture),
            lesson_plot: figure,
            lesson_info: view.message + f" ({view.seconds * 1000:.0f} ms)",
        }

    def watch(seed_value, iterations_value, progress=gr.Progress()):
        if lesson_model is None:
            raise gr.Error(f"the lesson network ({BUNDLED_LESSON.name}) is missing: run python -m dcnv3.lesson.train")
        iterations = int(min(max(int(iterations_value or ITERATIONS), 1), ITERATIONS))
        seed_value = max(int(seed_value or 0), 0)
        image = probe_scene(seed_value).image
        snapshots = []
        progress(0, desc="setting up: the frozen layers run once over the scene pool")
        for snapshot in watch_learn(lesson_model, seed_value, iterations, every=5):
            snapshots.append(snapshot)
            progress(snapshot.iteration / iterations, desc=f"iteration {snapshot.iteration}/{iterations}")
            yield {
                watch_picture: to_rgb(lesson_view.watch_picture(image, snapshot, snapshots[0].points)),
                watch_plot: lesson_view.watch_figure(snapshots),
                watch_info: _watch_message(snapshot, iterations, snapshots[0]),
            }

    def api_watch(seed_value, iterations_value):
        """The whole run's snapshots as JSON (``snapshot_payload`` rows) with its wall-clock start
        and end (unix seconds): a second caller's run starts after the first's ends."""
        if lesson_model is None:
            raise gr.Error(f"the lesson network ({BUNDLED_LESSON.name}) is missing")
        iterations = int(min(max(int(iterations_value or ITERATIONS), 1), ITERATIONS))
        seed_value = max(int(seed_value or 0), 0)
        started = time.time()
        rows = [snapshot_payload(s) for s in watch_learn(lesson_model, seed_value, iterations, every=5)]
        return json.loads(
            json.dumps(
                {
                    "seed": seed_value,
                    "iterations": iterations,
                    "started": started,
                    "finished": time.time(),
                    "snapshots": rows,
                }
            )
        )

    lesson_controls = list(lesson_inputs.values())
    gr.on(
        [tab.select, *(c.input for c in lesson_controls)],
        lesson_update,
        lesson_controls,
        [lesson_picture, lesson_plot, lesson_info],
        **private,
    )
    controls = [shape_class, size, angle, x, y, layer, seed]
    gr.on(
        [tab.select, shape_class.input, layer.input, *(s.input for s in (size, angle, x, y, seed))],
        update,
        controls,
        [picture, info, layer],
        **private,
    )
    one_run = dict(concurrency_limit=1, concurrency_id=WATCH_CONCURRENCY_ID)
    run = start.click(
        watch,
        [watch_seed, watch_iterations],
        [watch_picture, watch_plot, watch_info],
        api_visibility="private",
        **one_run,
    )
    stop.click(None, None, None, cancels=[run])
    api_button.click(api_watch, [api_seed, api_iterations], [api_payload], api_name="watch_learn", **one_run)
