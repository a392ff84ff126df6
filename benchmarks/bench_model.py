"""DCNv3-YOLOv8n against the plain YOLOv8n, and the probe against a bare forward, side by side.

    python benchmarks/bench_model.py [--imgsz 640] [--repeats 15] [--threads N]

All on CPU, fp32, batch 1, on ultralytics' bus.jpg letterboxed to --imgsz (640x480 at 640).
Both models are built from their YAMLs (random weights do not change the cost) and fused for
inference as ultralytics' predictor does. Prints medians of interleaved runs and the ratios:

* DCNv3-YOLOv8n forward / YOLOv8n forward, on the contiguous NCHW input that ultralytics'
  predictor builds (target <= 1.2x);
* probe(model, image) / bare forward of the same model on the same input tensor the probe
  builds (channels-last memory, which CPU convolutions run faster on) (target <= 1.1x). The
  probe includes ultralytics' letterbox, NMS and box scaling, and copies every DCNv3 layer's
  offsets and weights to numpy; ``YOLO.predict`` on the same image is printed for reference.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dcnv3 import yolo  # noqa: E402
from dcnv3.probe import inference_model, probe  # noqa: E402
from results import emit  # noqa: E402


def letterboxed_input(image: np.ndarray, imgsz: int, channels_last: bool) -> torch.Tensor:
    """The network input ultralytics' predictor builds (contiguous NCHW), or the probe's
    (the same values, channels-last in memory)."""
    from ultralytics.data.augment import LetterBox

    boxed = LetterBox((imgsz, imgsz), auto=True, stride=32)(image=image)
    x = torch.from_numpy(boxed[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    return x if channels_last else x.contiguous()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=yolo.cpu_cores())
    args = parser.parse_args()
    yolo.prepare_runtime()  # as the app and the CLI run: offline, every core
    yolo.register()
    yolo.keep_freed_memory()  # as the app and the CLI run
    torch.set_num_threads(args.threads)
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    image = cv2.imread(str(ASSETS / "bus.jpg"))
    x = letterboxed_input(image, args.imgsz, channels_last=False)
    x_probe = letterboxed_input(image, args.imgsz, channels_last=True)
    torch.manual_seed(0)
    models = {"dcnv3-yolov8n": YOLO("dcnv3-yolov8n.yaml"), "yolov8n": YOLO("yolov8n.yaml")}
    runners = {name: inference_model(model) for name, model in models.items()}
    ours = models["dcnv3-yolov8n"]

    def forward(runner, tensor):
        with torch.inference_mode():
            runner(tensor)

    tasks = {
        "forward dcnv3-yolov8n": lambda: forward(runners["dcnv3-yolov8n"], x),
        "forward yolov8n": lambda: forward(runners["yolov8n"], x),
        "forward (probe's input)": lambda: forward(runners["dcnv3-yolov8n"], x_probe),
        "probe dcnv3-yolov8n": lambda: probe(ours, image, imgsz=args.imgsz),
        "predict dcnv3-yolov8n": lambda: ours.predict(image, imgsz=args.imgsz, verbose=False),
    }
    for task in tasks.values():  # warm-up: caches, predictor setup, first-call allocations
        task()
        task()
    times = {name: [] for name in tasks}
    for _ in range(args.repeats):
        for name, task in tasks.items():
            start = time.perf_counter()
            task()
            times[name].append(time.perf_counter() - start)
    ms = {name: median_ms(samples) for name, samples in times.items()}
    print(f"torch {torch.__version__}, {args.threads} threads, CPU fp32, input {tuple(x.shape)}, "
          f"median of {args.repeats} interleaved runs")
    for name, value in ms.items():
        print(f"  {name:<24} {value:8.1f} ms")
    model_ratio = ms["forward dcnv3-yolov8n"] / ms["forward yolov8n"]
    probe_ratio = ms["probe dcnv3-yolov8n"] / ms["forward (probe's input)"]
    print(f"DCNv3-YOLOv8n / YOLOv8n forward: {model_ratio:.2f}x (target <= 1.2x) "
          f"[{'OK' if model_ratio <= 1.2 else 'above target'}]")
    print(f"probe / bare forward:           {probe_ratio:.2f}x (target <= 1.1x) "
          f"[{'OK' if probe_ratio <= 1.1 else 'above target'}]")
    print(f"probe / predict:                {ms['probe dcnv3-yolov8n'] / ms['predict dcnv3-yolov8n']:.2f}x")
    emit("model", [("DCNv3-YOLOv8n / YOLOv8n forward", model_ratio, "<= 1.2"),
                   ("probe / bare forward", probe_ratio, "<= 1.1"),
                   ("probe / YOLO.predict", ms["probe dcnv3-yolov8n"] / ms["predict dcnv3-yolov8n"], None)])


if __name__ == "__main__":
    main()
