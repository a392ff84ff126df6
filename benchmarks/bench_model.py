"""DCNv3-YOLOv8n against the plain YOLOv8n, and the probe against a bare forward, side by side.

    python benchmarks/bench_model.py [--imgsz 640] [--repeats 15] [--threads N] [--device cpu|cuda]

All on CPU, fp32, batch 1, on ultralytics' bus.jpg letterboxed to --imgsz (640x480 at 640).
Both models are built from their YAMLs (random weights do not change the cost) and fused for
inference as ultralytics' predictor does. Prints medians of interleaved runs and the ratios:

* DCNv3-YOLOv8n forward / YOLOv8n forward, on the contiguous NCHW input that ultralytics'
  predictor builds (target <= 1.2x);
* probe(model, image) / bare forward of the same model on the same input tensor the probe
  builds (channels-last memory, which CPU convolutions run faster on) (target <= 1.1x). The
  probe includes ultralytics' letterbox, NMS and box scaling, and copies every DCNv3 layer's
  offsets and weights to numpy; ``YOLO.predict`` on the same image is printed for reference.

``--device cuda`` times the fused models' forwards on the GPU instead: DCNv3-YOLOv8n with each
DCNv3 formulation (the default, which hands over to sparse off the CPU, sparse, gather and
grid_sample) against YOLOv8n, each with its peak of allocated GPU memory. The probe runs on the CPU
(it hands numpy to the app), so its rows are CPU-only. Without CUDA it says so in one line and
exits 2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2
import numpy as np
import torch
from devices import add_device_argument, describe, peak_bytes, require_device, timed
from results import emit

from dcnv3 import formulation, yolo
from dcnv3.analysis.probe import inference_model, probe


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
    add_device_argument(parser)
    args = parser.parse_args()
    device = require_device(args.device)
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
    if device.type != "cpu":
        return gpu_forwards(runners, x, device, args)

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
    print(
        f"torch {torch.__version__}, {args.threads} threads, CPU fp32, input {tuple(x.shape)}, "
        f"median of {args.repeats} interleaved runs"
    )
    for name, value in ms.items():
        print(f"  {name:<24} {value:8.1f} ms")
    model_ratio = ms["forward dcnv3-yolov8n"] / ms["forward yolov8n"]
    probe_ratio = ms["probe dcnv3-yolov8n"] / ms["forward (probe's input)"]
    print(
        f"DCNv3-YOLOv8n / YOLOv8n forward: {model_ratio:.2f}x (target <= 1.2x) "
        f"[{'OK' if model_ratio <= 1.2 else 'above target'}]"
    )
    print(
        f"probe / bare forward:           {probe_ratio:.2f}x (target <= 1.1x) "
        f"[{'OK' if probe_ratio <= 1.1 else 'above target'}]"
    )
    print(f"probe / predict:                {ms['probe dcnv3-yolov8n'] / ms['predict dcnv3-yolov8n']:.2f}x")
    emit(
        "model",
        [
            ("DCNv3-YOLOv8n / YOLOv8n forward", model_ratio, "<= 1.2"),
            ("probe / bare forward", probe_ratio, "<= 1.1"),
            ("probe / YOLO.predict", ms["probe dcnv3-yolov8n"] / ms["predict dcnv3-yolov8n"], None),
        ],
    )


GPU_FORMULATIONS = {"default": None, "sparse": "sparse", "gather": "gather", "grid_sample": "grid_sample"}


def gpu_forwards(runners: dict, x: torch.Tensor, device: torch.device, args) -> None:
    """The fused models' forwards on ``device``: DCNv3-YOLOv8n under each DCNv3 formulation and
    YOLOv8n, medians of interleaved runs and peak allocated memory, ratios against YOLOv8n."""
    import contextlib

    runners = {name: runner.to(device) for name, runner in runners.items()}
    x = x.to(device)

    def forward(runner, chosen):
        with torch.inference_mode(), formulation(chosen) if chosen else contextlib.nullcontext():
            runner(x)

    tasks = {f"dcnv3-yolov8n, {name}": (runners["dcnv3-yolov8n"], chosen) for name, chosen in GPU_FORMULATIONS.items()}
    tasks["yolov8n"] = (runners["yolov8n"], None)
    calls = {
        name: (lambda runner=runner, chosen=chosen: forward(runner, chosen)) for name, (runner, chosen) in tasks.items()
    }
    for call in calls.values():  # warm-up: CUDA kernels, the caching allocator
        timed(call, device)
        timed(call, device)
    times = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            times[name].append(timed(call, device))
    ms = {name: median_ms(samples) for name, samples in times.items()}
    peaks = {name: peak_bytes(call, device) / 2**20 for name, call in calls.items()}
    print(
        f"torch {torch.__version__}, {describe(device, args.threads)}, fp32, input {tuple(x.shape)}, "
        f"median of {args.repeats} interleaved runs"
    )
    for name in calls:
        print(f"  forward {name:<28} {ms[name]:8.2f} ms  peak {peaks[name]:8.1f} MiB")
    rows = []
    for name in GPU_FORMULATIONS:
        key = f"dcnv3-yolov8n, {name}"
        ratio, memory = ms[key] / ms["yolov8n"], peaks[key] / max(peaks["yolov8n"], 1e-9)
        print(f"DCNv3-YOLOv8n ({name}) / YOLOv8n forward: {ratio:.2f}x, peak memory {memory:.2f}x")
        rows += [
            (f"DCNv3-YOLOv8n ({name}) / YOLOv8n forward, {device.type}", ratio, None),
            (f"DCNv3-YOLOv8n ({name}) / YOLOv8n peak memory, {device.type}", memory, None),
        ]
    emit(f"model_{device.type}", rows)


if __name__ == "__main__":
    main()
