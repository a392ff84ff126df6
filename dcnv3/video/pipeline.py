"""Offsets over time: a video streamed through the probe and ultralytics' tracker, drawn, encoded.

Per processed frame, in one straight line (nothing but the probe runs the model):

    OpenCV decode (``dcnv3.video.io``) -> (downscale to ``VideoLimits.max_side``) ->
    ``dcnv3.analysis.probe.probe_batch`` (one forward for every ``batch`` frames, a ``Probe`` each) -> its
    detections into ultralytics' own ``BYTETracker`` / ``BOTSORT`` (``dcnv3.video.tracking``) ->
    per-track statistics at the track's centre cell (``dcnv3.record.track_stats``) -> the drawn frame
    (``dcnv3.draw.video_overlay``) -> ``H264Writer`` (``dcnv3.video.io``: ffmpeg from imageio-ffmpeg).

This module is the pipeline; the names of the modules above that callers use are re-exported.

Frames are streamed: at most ``batch`` decoded frames are alive, the encoder receives each drawn
frame at once, and only the small per-track rows are kept. ``process_video`` is a generator of
``VideoProgress`` (for a progress bar and a live preview); its last item carries the
``VideoResult``. ``run_video`` runs it to the end.

Coordinates: boxes and positions in the statistics (CSV, JSON) are continuous pixels of the
*source* video (pixel i spans [i, i+1)); frames larger than ``max_side`` are probed and drawn
downscaled, and the output video has the processed size.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcnv3.analysis.probe import probe_batch
from dcnv3.draw.video_overlay import MODES, draw_frame
from dcnv3.record.track_stats import (
    AUTO_LAYER,
    CSV_COLUMNS,
    size_dilation_correlation,
    track_row,
    track_summary,
    write_csv,
)
from dcnv3.video.io import (
    H264Writer,
    VideoError,
    VideoInfo,
    VideoLimits,
    fit_frame,
    iter_frames,
    open_video,
    read_frame,
)
from dcnv3.video.tracking import TRACKERS, make_tracker, update_tracks
from dcnv3.yolo.loading import deformable_layer_names, train_imgsz

__all__ = [
    "AUTO_LAYER",
    "MODES",
    "TRACKERS",
    "CSV_COLUMNS",
    "VideoLimits",
    "VideoInfo",
    "VideoError",
    "VideoProgress",
    "VideoResult",
    "open_video",
    "iter_frames",
    "make_tracker",
    "process_video",
    "run_video",
    "read_frame",
    "track_summary",
    "size_dilation_correlation",
    "draw_frame",
]


@dataclass
class VideoProgress:
    """One step of ``process_video``: ``done`` of ``total`` frames processed (``total`` is the
    expected count); ``preview``: the latest drawn frame (BGR) on some steps, else None;
    ``result``: set on the last step only."""

    done: int
    total: int
    frame: int
    preview: np.ndarray | None = None
    result: VideoResult | None = None


@dataclass
class VideoResult:
    """A processed video: the output MP4, the statistics CSV, one row per track and frame
    (``CSV_COLUMNS``), and what was processed."""

    video_path: Path
    csv_path: Path
    info: VideoInfo
    rows: list[dict]
    processed_frames: int
    frame_indices: list[int]  # source frame index of each output frame
    output_fps: float
    output_size: tuple[int, int]  # (width, height)
    layer: str
    layers: list[str]
    mode: str
    stride: int
    imgsz: int
    seconds: float  # wall time of the processing
    notes: list[str] = field(default_factory=list)

    @property
    def output_duration(self) -> float:
        return self.processed_frames / self.output_fps

    def stats_json(self, include_rows: bool = True) -> dict:
        """The API's statistics: the run's settings, a summary per track and (optionally) every row."""
        payload = {
            "source": {
                "width": self.info.width,
                "height": self.info.height,
                "fps": self.info.fps,
                "frames": self.info.frame_count,
                "codec": self.info.codec,
            },
            "output": {
                "frames": self.processed_frames,
                "fps": self.output_fps,
                "duration_s": self.output_duration,
                "width": self.output_size[0],
                "height": self.output_size[1],
            },
            "frame_indices": self.frame_indices,
            "layer": self.layer,
            "deformable_layers": self.layers,
            "dcnv3_layers": self.layers,  # deprecated alias of deformable_layers (until 0.3)
            "mode": self.mode,
            "frame_stride": self.stride,
            "imgsz": self.imgsz,
            "seconds": self.seconds,
            "processed_fps": self.processed_frames / max(self.seconds, 1e-9),
            "notes": self.notes,
            "tracks": track_summary(self.rows),
        }
        if include_rows:
            payload["rows"] = self.rows
        return payload


# -- the pipeline ----------------------------------------------------------------------------------------
def process_video(
    model,
    source: str | Path,
    out_dir: str | Path,
    *,
    layer: str = AUTO_LAYER,
    mode: str = "samples",
    stride: int = 1,
    imgsz: int | None = None,
    conf: float = 0.25,
    iou: float = 0.7,
    tracker: str = "bytetrack",
    limits: VideoLimits | None = None,
    preview_seconds: float = 1.0,
    preset: str = "superfast",
    crf: int = 26,
    batch: int = 4,
    stem: str | None = None,
) -> Iterator[VideoProgress]:
    """Process a video; yields ``VideoProgress`` after every frame, the last one with the result.

    Args:
        model: ultralytics YOLO detection model (``dcnv3.yolo.loading.load_model``); one forward per ``batch``
            processed frames.
        source: video file. out_dir: where ``<stem>_deformable.mp4`` and ``<stem>_stats.csv`` go.
        layer: a DCNv3 layer name, or ``AUTO_LAYER`` (per object: the layer of its scale; the
            middle layer for the grid and field modes).
        mode: one of ``MODES``. stride: process every ``stride``-th frame (the output runs at
            fps / stride, so it lasts as long as the processed span).
        imgsz: inference size (default: the checkpoint's training size, else 640, as the app's);
            conf, iou: NMS.
        tracker: "bytetrack" or "botsort" (ultralytics' trackers). limits: ``VideoLimits``.
        preview_seconds: a drawn frame rides on a progress item at most this often (wall time).
        preset, crf: x264 settings of the output ("superfast": on 2 cores the encoder shares the
            CPU with the model, and it costs 30 % less CPU than "veryfast" for a larger file of
            the same quality).
        batch: frames probed per forward (all frames of a video share a size). On a CPU a batch
            of 4 at 320 px takes about 2.2 times one frame's forward; tracking, statistics and
            drawing still go frame by frame, in order, and at most ``batch`` frames are held.

    Raises ``VideoError`` (unreadable input, see ``open_video``) or ValueError (bad arguments).
    On any error or if the caller stops early, the partial output files are removed.
    """
    limits = limits or VideoLimits()
    if mode not in MODES:
        raise ValueError(f"unknown overlay mode {mode!r}; one of {', '.join(MODES)}")
    stride, batch = int(stride), int(batch)
    if stride < 1:
        raise ValueError(f"frame stride must be >= 1, got {stride}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    names = deformable_layer_names(model)
    if layer != AUTO_LAYER and layer not in names:
        raise ValueError(f"unknown layer {layer!r}; layers: {', '.join(names) or 'none (no deformable layer)'}")
    info = open_video(source, limits)
    imgsz = int(imgsz or train_imgsz(model))
    tracker_state = make_tracker(tracker)
    notes = []
    if not names:
        notes.append("this detector has no deformable layer: only its tracked detections are drawn")
    if info.duration > limits.max_seconds:
        notes.append(f"only the first {limits.max_seconds:g} s of {info.duration:.1f} s are processed")
    total = info.frame_count or int(limits.max_seconds * info.fps)
    total = min(total, int(math.ceil(limits.max_seconds * info.fps)))
    expected = min(limits.max_frames, (total + stride - 1) // stride)
    if (total + stride - 1) // stride > limits.max_frames:
        notes.append(f"only the first {limits.max_frames} processed frames are kept (frame limit)")
    if max(info.width, info.height) > limits.max_side:
        notes.append(
            f"frames of {info.width} x {info.height} px are downscaled to {limits.max_side} px on their "
            f"long side before probing"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or Path(source).stem
    video_path, csv_path = out_dir / f"{stem}_deformable.mp4", out_dir / f"{stem}_stats.csv"
    output_fps = info.fps / stride
    rows: list[dict] = []
    frame_indices: list[int] = []
    start = last_preview = time.perf_counter()
    finished = False
    writer = H264Writer(video_path, output_fps, crf=crf, preset=preset)
    try:
        with writer:
            frames = iter_frames(source, stride, limits.max_frames, limits.max_seconds, info.fps)
            for index, frame, scale, result in _probed(
                model, frames, batch, limits.max_side, imgsz=imgsz, conf=conf, iou=iou
            ):
                tracks = update_tracks(tracker_state, result.detections, frame)
                seconds = index / info.fps
                for t in tracks:
                    rows.append(track_row(result, t, layer, index, seconds, scale))
                caption = f"frame {index} · {seconds:.2f} s · " + (
                    "per object: layer of its scale"
                    if layer == AUTO_LAYER and mode == "samples"
                    else (
                        layer
                        if layer != AUTO_LAYER
                        else (result.default_layer().name if result.layers else "no deformable layer")
                    )
                )
                drawn = draw_frame(frame, result, tracks, layer, mode, caption)
                writer.write(drawn)
                frame_indices.append(index)
                now = time.perf_counter()
                preview = None
                if len(frame_indices) == 1 or now - last_preview >= preview_seconds:
                    preview, last_preview = drawn, now
                yield VideoProgress(len(frame_indices), max(expected, len(frame_indices)), index, preview)
            if not frame_indices:  # open_video read a frame, but the stream gave none after all
                raise VideoError(f"{Path(source).name}: the video has zero frames")
        if info.frame_count and len(frame_indices) < limits.max_frames and frame_indices[-1] + stride < total:
            notes.append(
                f"the file ends after frame {frame_indices[-1]} although it claims {info.frame_count} "
                f"frames (truncated?)"
            )
        write_csv(csv_path, rows)
        output = VideoResult(
            video_path,
            csv_path,
            info,
            rows,
            len(frame_indices),
            frame_indices,
            output_fps,
            writer.size,
            layer,
            names,
            mode,
            stride,
            imgsz,
            time.perf_counter() - start,
            notes,
        )
        finished = True
        yield VideoProgress(len(frame_indices), len(frame_indices), frame_indices[-1], None, output)
    finally:
        if not finished:  # an error, or the consumer stopped: no half-written files stay behind
            video_path.unlink(missing_ok=True)
            csv_path.unlink(missing_ok=True)


def _probed(
    model, frames: Iterable[tuple[int, np.ndarray]], batch: int, max_side: int, **probe_args
) -> Iterator[tuple[int, np.ndarray, float, object]]:
    """(index, frame fitted to ``max_side``, its scale, its Probe) for each frame, in order,
    probing ``batch`` frames per forward (``probe_batch``)."""
    frames = iter(frames)
    while chunk := list(itertools.islice(frames, batch)):
        fitted = [(index, *fit_frame(frame, max_side)) for index, frame in chunk]
        results = probe_batch(model, [frame for _, frame, _ in fitted], **probe_args)
        for (index, frame, scale), result in zip(fitted, results):
            yield index, frame, scale, result


def run_video(
    model, source, out_dir, on_progress: Callable[[VideoProgress], None] | None = None, **kwargs
) -> VideoResult:
    """``process_video`` to the end (``on_progress`` sees every step); returns the result."""
    for step in process_video(model, source, out_dir, **kwargs):
        if on_progress is not None:
            on_progress(step)
        if step.result is not None:
            return step.result
    raise VideoError(f"{Path(source).name}: nothing was processed")
