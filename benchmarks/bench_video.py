"""Video throughput, side by side in one run on the same frames and model:

* bare: ultralytics ``YOLO.predict`` on every frame (decode with OpenCV + predict, nothing drawn);
* ours: ``dcnv3.video.run_video`` (decode, one probe per frame, tracking, per-track statistics,
  overlays, H.264 encoding).

Prints both rates in frames per second and their ratio (target: ours >= 0.8 x bare). The two are
interleaved over several rounds and the best round of each is kept, so a busy machine hurts both
alike. Usage: ``python benchmarks/bench_video.py [--frames 90] [--rounds 3] [--mode samples]``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dcnv3  # noqa: F401 - registers the DCNv3 blocks, restores all CPU threads
from dcnv3 import video
from results import emit

ROOT = Path(__file__).resolve().parent.parent


def bare_fps(model, source: Path, frames: int, imgsz: int) -> float:
    start = time.perf_counter()
    count = 0
    for _, frame in video.iter_frames(source, max_frames=frames):
        model.predict(frame, imgsz=imgsz, conf=0.25, iou=0.7, verbose=False)
        count += 1
    return count / (time.perf_counter() - start)


def our_fps(model, source: Path, frames: int, imgsz: int, mode: str, layer: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = video.run_video(model, source, out, imgsz=imgsz, mode=mode, layer=layer,
                                 limits=video.VideoLimits(max_frames=frames))
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
    model = dcnv3.load_model(args.model)
    imgsz = dcnv3.loading.train_imgsz(model)
    source = Path(args.source)
    bare_fps(model, source, 3, imgsz)  # warm-up: predictor setup, first-call allocations
    our_fps(model, source, 3, imgsz, args.mode, args.layer)
    bare, ours, unencoded = [], [], []
    for _ in range(args.rounds):
        bare.append(bare_fps(model, source, args.frames, imgsz))
        ours.append(our_fps(model, source, args.frames, imgsz, args.mode, args.layer))
        unencoded.append(our_fps_without_encoding(model, source, args.frames, imgsz, args.mode, args.layer))
    print(f"{source.name}, {args.frames} frames, {Path(args.model).name} at imgsz {imgsz}, mode {args.mode}, "
          f"layer {args.layer}, {args.rounds} interleaved rounds")
    print(f"  bare YOLO.predict:              {', '.join(f'{f:.2f}' for f in bare)} fps (best {max(bare):.2f})")
    print(f"  ours (probe+track+draw+encode): {', '.join(f'{f:.2f}' for f in ours)} fps (best {max(ours):.2f})")
    print(f"  ours without H.264 encoding:    {', '.join(f'{f:.2f}' for f in unencoded)} fps "
          f"(best {max(unencoded):.2f}; for reference: the encoder shares the cores)")
    print(f"  ratio ours / bare: {max(ours) / max(bare):.2f} (target >= 0.8); without encoding "
          f"{max(unencoded) / max(bare):.2f}")
    emit("video", [("video fps, ours / bare YOLO.predict", max(ours) / max(bare), ">= 0.8")])


if __name__ == "__main__":
    main()
