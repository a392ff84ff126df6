"""The app's costs side by side: an image's first run, a click and a slider move that re-render from the cache.

    python benchmarks/bench_app.py [--repeats 10] [--model PATH] [--threads N]

Model: assets/models/dcnv3-yolov8n.pt if present, else the fork fixture (tests/data/fork_fixture/
fork_A.pt); image: ultralytics' bus.jpg; CPU, fp32. Runs are interleaved; medians are printed.

* first run: what the app does when an image arrives, ``Analyser.analyse`` with an empty probe
  cache (read and decode the file, ``dcnv3.analysis.probe``: letterbox, forward with capture hooks, NMS);
* bare predict: ``YOLO.predict`` of the same model on the same file (read, letterbox, forward, NMS);
* click: what the app does on a click, ``render.sampling_view`` from the cached probe and the cached
  detections canvas (overlay, interactive plotly figure, KxK weight heatmaps, the trace through
  the stacked DCNv3 layers), each click at a different pixel; "click + encode" adds what the server
  then does before sending: the two pictures to JPEG and the two figures to JSON;
* slider change: what the app does when the confidence or IoU slider is released on a cached
  image, ``image_tab.threshold_change`` (NMS on the probe's cached raw predictions, the new
  detections canvas with the current cell drawn, the notices and the detection dropdown's
  labels; the zoom, weights, trace and fields do not show detections and stay), each at other
  thresholds, so no cached canvas is reused; "slider + encode" adds the overlay's JPEG, as the
  click row does. The Health tab's dilation table follows only when that tab is shown (not timed).

Targets: click <= 0.1x first run; slider change <= 0.1x first run; first run <= 1.3x bare predict.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "true")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from results import emit  # noqa: E402

from dcnv3 import yolo  # noqa: E402
from viz_app.state.analyser import Analyser  # noqa: E402
from viz_app.state.context import AppContext  # noqa: E402
from viz_app.state.models import ModelRegistry  # noqa: E402
from viz_app.state.view_state import ImageView  # noqa: E402
from viz_app.tabs.image import threshold_change  # noqa: E402
from viz_app.views import render  # noqa: E402

IMGSZ = 640  # the app's inference size; predict gets the same (a checkpoint may carry another)


def default_model() -> Path:
    bundled = ROOT / "assets" / "models" / "dcnv3-yolov8n.pt"
    return bundled if bundled.is_file() else ROOT / "tests" / "data" / "fork_fixture" / "fork_A.pt"


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--model", type=Path, default=default_model())
    parser.add_argument("--threads", type=int, default=yolo.cpu_cores())
    args = parser.parse_args()
    yolo.prepare_runtime()  # as the app and the CLI run: offline, every core
    yolo.register()
    yolo.keep_freed_memory()  # as the app and the CLI run
    from ultralytics.utils import ASSETS

    torch.set_num_threads(args.threads)
    image_path = str(Path(ASSETS) / "bus.jpg")
    registry = ModelRegistry(model=args.model)
    name = registry.default_name()
    model = registry.load(name).yolo  # loading the model is per model, not per image: not timed
    analyser = Analyser(registry, cache_size=0)  # every analyse() is a first run
    analysis = analyser.analyse(image_path, name, imgsz=IMGSZ)  # warm-up: builds the fused inference copy
    model.predict(image_path, imgsz=IMGSZ, verbose=False)
    probe, image = analysis.probe, analysis.image.bgr
    if not probe.layers:
        sys.exit(f"{name} has no DCNv3 layer: nothing to click")
    base, scale = render.make_canvas(image)
    base = render.draw_detections(base, probe.detections, scale)
    rng = np.random.default_rng(0)
    height, width = probe.image_shape

    def click():
        layer = probe.layers[int(rng.integers(len(probe.layers)))]
        xy = (rng.uniform(0, width), rng.uniform(0, height))
        return render.sampling_view(image, probe, layer.name, xy, scale=scale, base=base)

    def click_and_encode():
        view = click()
        for picture in (view.overlay, view.trace):
            if picture is not None:
                cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 92])
        for figure in (view.figure, view.weights):
            if figure is not None:
                figure.to_json()

    context = AppContext.create(registry, analyser)
    x, y, layer, highlight = render.initial_query(probe)
    view = ImageView((x, y), layer, highlight).rendered(probe.cell_at(layer, x, y))
    # Slider positions as the app's sliders give them (steps 0.01 / 0.05), a different pair every
    # time, so each change draws a new canvas.
    thresholds = iter([(round(0.05 + 0.01 * (n % 90), 2), (0.45, 0.5, 0.6, 0.7)[n // 90 % 4]) for n in range(10**4)])

    def slider():
        conf, iou = next(thresholds)
        return threshold_change(context, analysis, view, conf, iou)

    click_and_encode()  # warm-up
    slider()

    def slider_and_encode():
        context.files.picture(slider().overlay)

    first, predict, clicks, encoded, sliders, sliders_encoded = [], [], [], [], [], []
    for _ in range(args.repeats):
        first.append(timed(lambda: analyser.analyse(image_path, name, imgsz=IMGSZ)))
        predict.append(timed(lambda: model.predict(image_path, imgsz=IMGSZ, verbose=False)))
        clicks += [timed(click) for _ in range(3)]
        encoded += [timed(click_and_encode) for _ in range(3)]
        sliders += [timed(slider) for _ in range(3)]
        sliders_encoded += [timed(slider_and_encode) for _ in range(3)]
    first_ms, predict_ms, click_ms, encoded_ms, slider_ms, slider_encoded_ms = (
        statistics.median(v) * 1e3 for v in (first, predict, clicks, encoded, sliders, sliders_encoded)
    )
    print(
        f"model {name} ({len(probe.layers)} DCNv3 layers), image bus.jpg {width}x{height}, "
        f"{args.repeats} repeats, {args.threads} threads, torch {torch.__version__}"
    )
    print(f"  first run (read image + probe):      {first_ms:8.1f} ms")
    print(f"  bare YOLO.predict (same model/image): {predict_ms:8.1f} ms")
    print(f"  click re-render (cached probe):       {click_ms:8.1f} ms")
    print(f"  click + encode (JPEG, JSON):          {encoded_ms:8.1f} ms")
    print(f"  slider change (cached forward, NMS):  {slider_ms:8.1f} ms")
    print(f"  slider change + encode (JPEG):        {slider_encoded_ms:8.1f} ms")
    print(f"  click / first run:   {click_ms / first_ms:5.3f}x  (target <= 0.1x)")
    print(f"  slider change / first run: {slider_ms / first_ms:5.3f}x  (target <= 0.1x)")
    print(f"  slider change + encode / first run: {slider_encoded_ms / first_ms:5.3f}x")
    print(f"  click + encode / first run: {encoded_ms / first_ms:5.3f}x")
    print(f"  first run / predict: {first_ms / predict_ms:5.3f}x  (target <= 1.3x)")
    emit(
        "app",
        [
            ("click re-render / first run", click_ms / first_ms, "<= 0.1"),
            ("slider change / first run", slider_ms / first_ms, "<= 0.1"),
            ("first run / YOLO.predict", first_ms / predict_ms, "<= 1.3"),
        ],
    )


if __name__ == "__main__":
    main()
