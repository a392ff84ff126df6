"""Parameters and CPU forward time of the deformable YOLO variants against plain, side by side.

    python benchmarks/bench_operators_models.py [--imgsz 320] [--repeats 15] [--threads N]

For each family (yolov8, yolo11) at scale n: the plain model and every deformable operator with a
shipped YAML (``dcnv3/yolo/cfg/{operator}-{family}.yaml``: dcnv2, dcnv3, dcnv4, whichever exist; the
script says which it found), built from the YAML with seed 0 (random weights do not change the
cost), fused for inference as the probe and ultralytics' predictor run them (``inference_model``).
CPU, fp32, batch 1, ultralytics' bus.jpg letterboxed to --imgsz (256 x 320 at 320), contiguous
NCHW as the predictor builds it. Every model runs once per round, interleaved, so machine noise
hits all alike; the table gives each model's fastest and median time and its ratios against the
plain model of its family (parameters, fastest forward), as markdown for docs/models.md. The fastest
of the interleaved runs is the ratio's basis: on a shared machine (other processes taking the
cores now and then) it is the least disturbed estimate of a forward's cost, while medians move
with the load; compare --threads 1 runs there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2
import torch
from bench_model import letterboxed_input
from results import emit

from dcnv3 import yolo
from dcnv3.analysis.probe import inference_model
from dcnv3.ops.capture import deformable_modules

FAMILIES = ("yolov8", "yolo11")
OPERATORS = ("dcnv2", "dcnv3", "dcnv4")


def variants() -> tuple[dict[str, str], list[str]]:
    """{model name: YAML name} (plain first in each family) and the operators whose YAMLs exist."""
    found = [op for op in OPERATORS if all(f"{op}-{family}.yaml" in yolo.MODEL_YAMLS for family in FAMILIES)]
    models = {}
    for family in FAMILIES:
        models[f"{family}n"] = f"{family}n.yaml"
        for op in found:
            models[f"{op}-{family}n"] = yolo.model_yaml("n", family=family, operator=op)
    return models, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=yolo.cpu_cores())
    args = parser.parse_args()
    yolo.prepare_runtime()  # as the app and the CLI run: offline, every core
    yolo.register()
    yolo.keep_freed_memory()
    torch.set_num_threads(args.threads)
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    models, found = variants()
    missing = [op for op in OPERATORS if op not in found]
    print(
        f"operators with shipped YAMLs: {', '.join(found)}"
        + (f" (no YAMLs for {', '.join(missing)}: left out)" if missing else "")
    )
    x = letterboxed_input(cv2.imread(str(ASSETS / "bus.jpg")), args.imgsz, channels_last=False)
    built, runners, layers = {}, {}, {}
    for name, yaml_name in models.items():
        torch.manual_seed(0)
        built[name] = YOLO(yaml_name)
        runners[name] = inference_model(built[name])
        layers[name] = len(deformable_modules(runners[name]))

    def forward(runner):
        with torch.inference_mode():
            runner(x)

    for runner in runners.values():  # warm-up: caches, first-call allocations, kernel builds
        forward(runner)
        forward(runner)
    times = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            forward(runner)
            times[name].append(time.perf_counter() - start)
    ms = {name: min(samples) * 1e3 for name, samples in times.items()}
    median = {name: statistics.median(samples) * 1e3 for name, samples in times.items()}
    params = {name: sum(p.numel() for p in model.model.parameters()) for name, model in built.items()}

    print(
        f"torch {torch.__version__}, {args.threads} threads, CPU fp32, input {tuple(x.shape)}, "
        f"fastest and median of {args.repeats} interleaved runs"
    )
    header = "| model | deformable layers | parameters | vs plain | forward, fastest (ms) | median (ms) | vs plain |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    rows = []
    for name in models:
        plain = f"{name.rsplit('-', 1)[-1]}"
        p_ratio, t_ratio = params[name] / params[plain], ms[name] / ms[plain]
        lines.append(
            f"| {name} | {layers[name]} | {params[name] / 1e6:.3f} M | {p_ratio:.3f}x | "
            f"{ms[name]:.1f} | {median[name]:.1f} | {t_ratio:.2f}x |"
        )
        if name != plain:
            rows.append((f"{name} / {plain} forward at {args.imgsz}", t_ratio, None))
            rows.append((f"{name} / {plain} parameters", p_ratio, None))
    print("\n".join(lines))
    emit("operators_models", rows)


if __name__ == "__main__":
    main()
