"""Video throughput, side by side in one run on the same frames and model:

* bare: ultralytics ``YOLO.predict`` on every frame, one frame per call, as
  ``YOLO.predict("video.mp4")`` runs a video (decode with OpenCV + predict, nothing drawn);
* ours: ``dcnv3.video.pipeline.run_video`` (decode, probes of 4 frames per forward, tracking, per-track
  statistics, overlays, H.264 encoding), as the Video tab and ``inspect --source`` run it.

Prints both rates in frames per second and their ratio (target: ours >= 0.8 x bare). Printed for
reference beside them: ours without the encoder, ours probing one frame per forward, and bare
``YOLO.predict`` given the same 4 frames per call (the like-for-like forward). The runs are
interleaved over several rounds and the best round of each is kept, so a busy machine hurts all
alike. Usage: ``python benchmarks/bench_video.py [--frames 90] [--rounds 3] [--mode samples]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from results import emit

from dcnv3 import yolo
from dcnv3.video import pipeline as video
from dcnv3.yolo.loading import load_model, train_imgsz

ROOT = Path(__file__).resolve().parent.parent


def bare_fps(model, source: Path, frames: int, imgsz: int, batch: int = 1) -> float:
    start = time.perf_counter()
    count = 0
    pending = []
    for _, frame in video.iter_frames(source, max_frames=frames):
        pending.append(frame)
        if len(pending) == batch:
            model.predict(pending if batch > 1 else frame, imgsz=imgsz, conf=0.25, iou=0.7, verbose=False)
            count, pending = count + len(pending), []
    if pending:
        model.predict(pending, imgsz=imgsz, conf=0.25, iou=0.7, verbose=False)
        count += len(pending)
    return count / (time.perf_counter() - start)


def our_fps(model, source: Path, frames: int, imgsz: int, mode: str, layer: str, batch: int = 4) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = video.run_video(
            model,
            source,
            out,
            imgsz=imgsz,
            mode=mode,
            layer=layer,
            batch=batch,
            limits=video.VideoLimits(max_frames=frames),
        )
        return result.processed_frames / (time.perf_counter() - start)


class _NoEncoder(video.H264Writer):
    """Takes the drawn frames and drops them: the pipeline's cost without H.264 encoding."""

    def write(self, frame) -> None:
        self.size, self.frames = (frame.shape[1], frame.shape[0]), self.frames + 1

    def close(self):
        return self.path


def our_fps_without_encoding(model, source: Path, frames: int, imgsz: int, mode: str, layer: str) -> float:
    """The same run with the encoder replaced (for the report: what encoding on the same cores costs)."""
    encoder, video.H264Writer = video.H264Writer, _NoEncoder
    try:
        return our_fps(model, source, frames, imgsz, mode, layer)
    finally:
        video.H264Writer = encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "models" / "dcnv3-yolov8n.pt"))
    parser.add_argument("--source", default=str(ROOT / "assets" / "demo_shapes.mp4"))
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", default="samples", choices=list(video.MODES))
    parser.add_argument("--layer", default=video.AUTO_LAYER)
    args = parser.parse_args()
    yolo.prepare_runtime()  # as the app and the CLI run: offline, every core
    yolo.register()
    yolo.keep_freed_memory()  # as the app and the CLI run
    model = load_model(args.model)
    imgsz = train_imgsz(model)
    source = Path(args.source)
    bare_fps(model, source, 3, imgsz)  # warm-up: predictor setup, first-call allocations
    bare_fps(model, source, 4, imgsz, batch=4)
    our_fps(model, source, 4, imgsz, args.mode, args.layer)
    runs = {
        "bare": lambda: bare_fps(model, source, args.frames, imgsz),
        "ours": lambda: our_fps(model, source, args.frames, imgsz, args.mode, args.layer),
        "unencoded": lambda: our_fps_without_encoding(model, source, args.frames, imgsz, args.mode, args.layer),
        "ours_batch1": lambda: our_fps(model, source, args.frames, imgsz, args.mode, args.layer, batch=1),
        "bare_batch4": lambda: bare_fps(model, source, args.frames, imgsz, batch=4),
    }
    fps = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            fps[name].append(run())
    best = {name: max(values) for name, values in fps.items()}
    print(
        f"{source.name}, {args.frames} frames, {Path(args.model).name} at imgsz {imgsz}, mode {args.mode}, "
        f"layer {args.layer}, {args.rounds} interleaved rounds"
    )
    labels = {
        "bare": "bare YOLO.predict, 1 frame/call",
        "ours": "ours (4 frames/forward)",
        "unencoded": "ours without H.264 encoding",
        "ours_batch1": "ours, 1 frame/forward",
        "bare_batch4": "bare YOLO.predict, 4 frames/call",
    }
    for name, label in labels.items():
        print(f"  {label:<34} {', '.join(f'{f:.2f}' for f in fps[name])} fps (best {best[name]:.2f})")
    ratio = best["ours"] / best["bare"]
    print(
        f"  ratio ours / bare: {ratio:.2f} (target >= 0.8); for reference: without encoding "
        f"{best['unencoded'] / best['bare']:.2f}, ours at 1 frame/forward {best['ours_batch1'] / best['bare']:.2f}, "
        f"ours / bare at 4 frames per call {best['ours'] / best['bare_batch4']:.2f}"
    )
    emit(
        "video",
        [
            ("video fps, ours / bare YOLO.predict", ratio, ">= 0.8"),
            ("video fps, ours / bare YOLO.predict at 4 frames per call", best["ours"] / best["bare_batch4"], None),
            ("video fps, ours at 1 frame per forward / bare YOLO.predict", best["ours_batch1"] / best["bare"], None),
        ],
    )


if __name__ == "__main__":
    main()
