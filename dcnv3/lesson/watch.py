""" "Watch it learn": one DCNv3 layer of the lesson network learns its sampling from the regular
grid, in under a minute on 2 CPU cores, with snapshots of where it samples at a fixed pixel.

The deepest DCNv3 layer of the bundled lesson network gets its ``offset`` and ``mask``
projections set to zero (it samples the regular 3x3 grid with uniform weights 1/P, as an
untrained DCNv3 does) and only those two projections are trained again, on scenes generated
for the seed, with the rest of the network kept as trained. The head still expects what the
deformed layer delivered, so the loss pulls the offsets out of the grid towards the shapes'
extent, and the snapshots show it.

What keeps it fast and bounded: the frozen stem and first layers run once per scene of a
fixed pool (``POOL_SCENES`` inputs of the deepest layer, 64 x 64 x C float32 each, ~0.5 MB);
each iteration runs the deepest layer and the head on a batch from the pool. A snapshot is
a few hundred numbers; at most ``MAX_SNAPSHOTS`` are kept. Deterministic for a seed (the pool,
the batch order and the probe scene follow from it) at a given thread count.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dcnv3.data.backgrounds import make_background
from dcnv3.data.generator import Appearance, paint_object
from dcnv3.data.shapes import place, rasterise, sample_geometry
from dcnv3.lesson.data import LESSON_SIDE, LESSON_STRIDE, LessonObject, LessonScene, cell_of, lesson_batch
from dcnv3.lesson.network import LessonNet, lesson_letterbox, one_cell, record_from_capture, to_input
from dcnv3.lesson.train import lesson_loss, target_tensors
from dcnv3.ops.capture import capture, dcnv3_modules
from dcnv3.record.geometry import sampling_locations
from dcnv3.record.stats import effective_dilation, offset_magnitude

__all__ = [
    "WatchSnapshot",
    "watch_learn",
    "probe_scene",
    "reset_sampling",
    "POOL_SCENES",
    "ITERATIONS",
    "MAX_SNAPSHOTS",
    "WATCH_LR",
]

POOL_SCENES = 48
ITERATIONS = 150
BATCH = 8
WATCH_LR = 0.02
MAX_SNAPSHOTS = 40


@dataclass(frozen=True)
class WatchSnapshot:
    """The layer after ``iteration`` updates: the batch ``loss``, the mean |offset| (feature
    cells, over the probe scene's whole grid and at the watched cell), the effective dilation at
    the watched cell, and its sampling points ``points`` (G, P, 2) and ``weights`` (G, P) in
    probe-scene pixels; ``seconds`` since the start."""

    iteration: int
    loss: float
    mean_offset: float
    cell_offset: float
    cell_dilation: float
    points: np.ndarray
    weights: np.ndarray
    seconds: float


def probe_scene(seed: int = 0, side: int = LESSON_SIDE) -> LessonScene:
    """The scene whose centre pixel the lesson watches: a 150 px bar at 30 degrees through the
    middle of a background of ``seed``, flat-filled in a colour far from the background's."""
    rng = np.random.default_rng([seed, 17])
    canvas = make_background(rng, side, side).astype(np.float32)
    size, angle, centre = 150.0, math.radians(30.0), (side / 2, side / 2)
    geometry = sample_geometry(rng, 0, size)
    placed = place(geometry, *centre, size, angle)
    colour = np.where(canvas.mean(axis=(0, 1)) > 127.5, 20.0, 235.0).astype(np.float32)
    paint_object(
        rng, canvas, rasterise(placed), Appearance(colour, np.zeros(2, np.float32), 0.0, None, 0), centre, size
    )
    xs = np.concatenate([p[:, 0] for p, _ in placed])
    ys = np.concatenate([p[:, 1] for p, _ in placed])
    box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return LessonScene(image, (LessonObject(0, *centre, size, angle, box),))


def reset_sampling(layer) -> None:
    """Zero a DCNv3 layer's offset and mask projections: the regular grid, uniform weights."""
    with torch.no_grad():
        for head in (layer.offset, layer.mask):
            head.weight.zero_()
            head.bias.zero_()


def _deepest_input(model: LessonNet, images: list[np.ndarray]) -> torch.Tensor:
    """What the deepest block receives, (N, H/4, W/4, C), from the frozen stem and blocks."""
    with torch.inference_mode():
        x = model.stem(to_input(images)).permute(0, 2, 3, 1)
        for block in model.blocks[:-1]:
            x = block(x)
    return x.clone()


def watch_learn(
    model: LessonNet,
    seed: int = 0,
    iterations: int = ITERATIONS,
    every: int = 5,
    stop: threading.Event | Callable[[], bool] | None = None,
) -> Iterator[WatchSnapshot]:
    """Retrain the deepest DCNv3 layer's sampling of (a copy of) ``model`` from zero; yields a
    ``WatchSnapshot`` before the first update and after every ``every`` updates (and the last).

    ``stop``: an Event (or a callable) checked before each update; once set, the run ends after
    one last snapshot. Closing the generator also ends it. ``model`` itself is never changed.
    """
    if not dcnv3_modules(model):
        raise ValueError("watch_learn needs the DCNv3 lesson network, not its plain twin")
    iterations = int(max(1, iterations))
    every = max(int(every), math.ceil(iterations / (MAX_SNAPSHOTS - 1)))
    stopped = (stop.is_set if isinstance(stop, threading.Event) else stop) or (lambda: False)
    start = time.perf_counter()
    model = copy.deepcopy(model).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    deepest = model.blocks[-1].mixer
    reset_sampling(deepest)
    trained = [deepest.offset.weight, deepest.offset.bias, deepest.mask.weight, deepest.mask.bias]
    for parameter in trained:
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(trained, lr=WATCH_LR)

    pool = lesson_batch(seed, "watch", 0, POOL_SCENES)
    pool_inputs = _deepest_input(model, [s.image for s in pool])
    pool_targets = target_tensors(pool)
    watched = probe_scene(seed)
    watched_input = _deepest_input(model, [watched.image])
    cell = cell_of(watched.objects[0].x, watched.objects[0].y)
    letterbox = lesson_letterbox(watched.image.shape[0])
    order = torch.Generator().manual_seed(seed)

    def snapshot(iteration: int, loss: float) -> WatchSnapshot:
        with capture(model, [(n, deepest) for n, _ in dcnv3_modules(model)[-1:]]) as captured, torch.inference_mode():
            model.head(model.blocks[-1](watched_input).permute(0, 3, 1, 2))
        name, layer = next(iter(captured.items()))
        record = record_from_capture(name, layer, 0, LESSON_STRIDE, len(model.blocks))
        one = one_cell(record, cell)
        return WatchSnapshot(
            iteration,
            loss,
            float(offset_magnitude(record).mean()),
            float(offset_magnitude(one).mean()),
            float(effective_dilation(one).mean()),
            sampling_locations(record, letterbox, cell).astype(np.float32),
            record.weights[cell].copy(),
            time.perf_counter() - start,
        )

    with torch.inference_mode():
        first = lesson_loss(
            model.head(model.blocks[-1](pool_inputs[:BATCH]).permute(0, 3, 1, 2)),
            {k: v[:BATCH] for k, v in pool_targets.items()},
        )[0].item()
    yield snapshot(0, first)
    for iteration in range(1, iterations + 1):
        if stopped():
            return
        chosen = torch.randperm(len(pool), generator=order)[:BATCH]
        output = model.head(model.blocks[-1](pool_inputs[chosen]).permute(0, 3, 1, 2))
        loss, _ = lesson_loss(output, {k: v[chosen] for k, v in pool_targets.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if iteration % every == 0 or iteration == iterations or stopped():
            yield snapshot(iteration, loss.item())
