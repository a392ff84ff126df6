"""The top-level Learn tab: DCNv3 in a few paragraphs, and the live toy (gradio wiring; the toy
itself is ``viz_app.toy``). The toy's forward runs under the Analyser's ``model_lock``, as every
forward of the app on a registry model."""
from __future__ import annotations

import gradio as gr

from dcnv3.data import CLASS_NAMES
from dcnv3.probe import default_layer

from . import toy
from .context import AppContext
from .models import DEFAULT_BUNDLED
from .render import to_rgb

__all__ = ["build", "LESSON", "LATEX_DELIMITERS", "toy_model_name"]

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

In YOLOv8 the DCNv3 layers replace the 3x3 convolution inside the backbone's bottlenecks at strides 8,
16 and 32 (P3, P4, P5). **Try it below**: the bundled DCNv3-YOLOv8n sees a generated scene; scale,
rotate or move the shape and watch where the chosen layer's groups sample around its centre (each
group has its colour; grey rings: the plain grid; a point's size grows with its weight $m_{gk}$).
"""


def toy_model_name(registry) -> str:
    """The bundled trained DCNv3 model if the registry has it, else the registry's default."""
    return DEFAULT_BUNDLED if DEFAULT_BUNDLED in registry.names() else registry.default_name()


def build(ctx: AppContext) -> None:
    """The Learn tab (a top-level tab) and the toy's events."""
    registry = ctx.registry
    model_name = toy_model_name(registry)
    with gr.Tab("Learn", id="learn", elem_id="tab-learn") as tab:
        gr.Markdown(LESSON, latex_delimiters=LATEX_DELIMITERS, elem_id="learn-text")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                shape_class = gr.Dropdown([(name, n) for n, name in enumerate(CLASS_NAMES)], value=3,
                                          label="Shape", elem_id="learn-class")
                size = gr.Slider(24, 280, 120, step=4, label="Scale (px)", elem_id="learn-scale")
                angle = gr.Slider(0, 360, 0, step=5, label="Rotation (degrees)", elem_id="learn-rotate")
                x = gr.Slider(0, toy.TOY_SIDE, toy.TOY_SIDE / 2, step=4, label="x (px)", elem_id="learn-x")
                y = gr.Slider(0, toy.TOY_SIDE, toy.TOY_SIDE / 2, step=4, label="y (px)", elem_id="learn-y")
                layer = gr.Dropdown([], label="DCNv3 layer", elem_id="learn-layer")
                seed = gr.Slider(0, 29, 8, step=1, label="Background (generator seed)", elem_id="learn-seed")
                gr.Markdown(f"Model: **{model_name}**, at the {toy.TOY_SIDE} px it was trained on.")
            with gr.Column(scale=2):
                picture = gr.Image(label="Sampling points at the shape's centre", type="numpy", interactive=False,
                                   height=640, elem_id="learn-toy")
                info = gr.Markdown(elem_id="learn-info")

    def update(class_id, size_value, angle_value, x_value, y_value, layer_name, seed_value):
        loaded = registry.load(model_name)
        layers = list(loaded.dcnv3_layers)
        if not layers:
            return {picture: None, info: f"**{model_name}** has no DCNv3 layer: the toy needs one."}
        if layer_name not in layers:
            preferred = [n for n in layers if n.startswith(toy.DEFAULT_LAYER_PREFIX)]
            layer_name = preferred[-1] if preferred else default_layer(layers)
        shape = toy.ToyShape(int(class_id), float(size_value), float(angle_value), float(x_value), float(y_value))
        with ctx.analyser.model_lock:
            view = toy.toy_view(loaded.yolo, layer_name, shape, int(seed_value))
        notes = loaded.notices
        message = view.message + (f" ({view.seconds * 1000:.0f} ms)" if view.seconds else "")
        if notes:
            message += "\n\n" + "; ".join(f"**{n}**" for n in notes)
        return {picture: to_rgb(view.picture), info: message, layer: gr.update(choices=layers, value=layer_name)}

    controls = [shape_class, size, angle, x, y, layer, seed]
    private = dict(api_visibility="private", show_progress="hidden", trigger_mode="always_last")
    gr.on([tab.select, shape_class.input, layer.input, *(s.input for s in (size, angle, x, y, seed))], update,
          controls, [picture, info, layer], **private)
