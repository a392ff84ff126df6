"""The Learn tab's toy: time of one slider move, against the 0.5 s target.

    python benchmarks/bench_toy.py [--moves 20] [--layer model.6.m.1.cv2.dcnv3] [--threads N]

A move is what the app's handler does: ``viz_app.views.toy.toy_view`` (paint the scene, run the bundled
DCNv3-YOLOv8n once at imgsz 320 through ``dcnv3.analysis.probe``, draw the layer's sampling points at the
shape's centre and the detections on the 640 px picture) plus the JPEG encoding gradio's transfer
needs, each move with a different scale / rotation / position, as a user dragging the sliders
would. After two warm-up moves, the median and the slowest of ``--moves`` moves are printed with
the ratio of the median to the target. Also printed: the same for the receptive field of one cell
(DCNv3 model and its plain twin at imgsz 640, the Image tab's view), which has no target.
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

TARGET_S = 0.5


def moves(count: int):
    """A deterministic walk of the sliders: scale, rotation and position all change every move."""
    from viz_app.views.toy import ToyShape

    for n in range(count):
        yield ToyShape(
            class_id=3, size=60 + (n * 37) % 200, angle=(n * 23) % 360, x=80 + (n * 29) % 160, y=80 + (n * 41) % 160
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--layer", default="model.6.m.1.cv2.dcnv3")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--fields", type=int, default=3, help="receptive-field pairs to time (0: none)")
    args = parser.parse_args()
    from dcnv3 import yolo

    yolo.prepare_runtime()  # as the app and the CLI run: offline, every core
    yolo.register()
    yolo.keep_freed_memory()  # as the app and the CLI run

    import cv2
    import torch

    from dcnv3.yolo.loading import load_model
    from viz_app.views import toy

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(ROOT / "assets" / "models" / "dcnv3-yolov8n.pt")
    shapes = list(moves(args.moves + 2))
    scenes = toy.ToyScenes()  # the app's AppContext.toy_scenes: the background is drawn once
    times = []
    for n, shape in enumerate(shapes):
        start = time.perf_counter()
        view = toy.toy_view(model, args.layer, shape, seed=8, scenes=scenes)
        cv2.imencode(".jpg", view.picture)
        if n >= 2:  # the first moves pay for one-off allocations and the background
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(
        f"toy slider move ({args.moves} moves, torch threads {torch.get_num_threads()}): "
        f"median {median:.3f} s, slowest {max(times):.3f} s; median / {TARGET_S} s target = {median / TARGET_S:.2f}"
    )
    from results import emit

    emit("toy", [(f"toy slider move / {TARGET_S} s", median / TARGET_S, "<= 1")])

    if args.fields:
        from dcnv3.analysis import receptive_field as rf

        plain = load_model(ROOT / "assets" / "models" / "yolov8n.pt")
        image = cv2.imread(str(ROOT / "assets" / "examples" / "shapes_0.jpg"))
        module = rf.target_module(rf.gradient_network(model), args.layer)
        field_times, areas = [], []
        for n in range(args.fields + 1):
            xy = (60.0 + 90 * n, 300.0 - 60 * n)
            start = time.perf_counter()
            pair = [rf.receptive_field(m, image, xy=xy, module=module, imgsz=640) for m in (model, plain)]
            if n:
                field_times.append(time.perf_counter() - start)
                areas.append((pair[0].areas[0], pair[1].areas[0]))
        print(
            f"receptive field of one cell, DCNv3 model + plain twin, imgsz 640 ({args.fields} points): "
            f"median {statistics.median(field_times):.2f} s per pair"
        )
        for (a, b), n in zip(areas, range(1, args.fields + 1)):
            print(f"  point {n}: 50 % area DCNv3 {a:,.0f} px^2, plain {b:,.0f} px^2, ratio {a / b:.2f}")


if __name__ == "__main__":
    main()
