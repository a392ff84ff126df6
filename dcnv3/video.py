"""Offsets over time: a video streamed through the probe and ultralytics' tracker, drawn, encoded.

Per processed frame, in one straight line (nothing but the probe runs the model):

    OpenCV decode -> (downscale to ``VideoLimits.max_side``) -> ``dcnv3.probe.probe_batch`` (one forward
    for every ``batch`` frames, a ``Probe`` each) -> its detections into ultralytics' own
    ``BYTETracker`` / ``BOTSORT`` -> per-track statistics at the track's centre cell
    (``Probe.layer_for_box``, ``Probe.cell_at``, ``stats``) -> overlay (``dcnv3.overlay``) ->
    ``H264Writer`` (ffmpeg from imageio-ffmpeg).

Frames are streamed: at most ``batch`` decoded frames are alive, the encoder receives each drawn
frame at once, and only the small per-track rows are kept. ``process_video`` is a generator of
``VideoProgress`` (for a progress bar and a live preview); its last item carries the
``VideoResult``. ``run_video`` runs it to the end.

Coordinates: boxes and positions in the statistics (CSV, JSON) are continuous pixels of the
*source* video (pixel i spans [i, i+1)); frames larger than ``max_side`` are probed and drawn
downscaled, and the output video has the processed size.
"""
from __future__ import annotations

import csv
import itertools
import math
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from . import stats
from .geometry import box_centre
from .overlay import CaptionAnnotator, CellAnnotator, DetectionAnnotator, FieldAnnotator, field_colours
from .probe import probe_batch
from .loading import train_imgsz
from .video_io import H264Writer

__all__ = ["AUTO_LAYER", "MODES", "TRACKERS", "CSV_COLUMNS", "VideoLimits", "VideoInfo", "VideoError",
           "VideoProgress", "VideoResult", "open_video", "iter_frames", "make_tracker", "process_video",
           "run_video", "read_frame", "track_summary", "size_dilation_correlation"]

AUTO_LAYER = "auto"  # per object: the DCNv3 layer whose stride matches its size
MODES = {
    "samples": "sampling points at each tracked object's centre (its scale-matched layer unless a layer is chosen)",
    "grid": "sampling points at a fixed grid of query points",
    "field": "effective-dilation field map of the layer",
}
TRACKERS = ("bytetrack", "botsort")
CSV_COLUMNS = ["frame", "time_s", "track_id", "class", "name", "score", "x1", "y1", "x2", "y2", "size_px",
               "layer", "stride", "effective_dilation", "offset_magnitude", "weight_entropy"]
MAX_DRAWN_TRACKS = 8  # sampling points of more objects than this stop being legible
GRID_QUERIES = (3, 4)  # rows, columns of the "grid" mode's query points
FIELD_RANGE = (0.0, 3.0)  # effective dilation colour scale (cells; the regular grid is 1), fixed over frames


class VideoError(ValueError):
    """A video that cannot be processed, with a one-line reason meant for the user."""


@dataclass
class VideoLimits:
    """Caps that keep memory and time bounded (all configurable).

    ``max_frames``: processed frames (after the frame stride); ``max_seconds``: of the source,
    from its start; ``max_side``: longer frames are downscaled to this long side before probing;
    ``max_bytes``: input file size.
    """
    max_frames: int = 600
    max_seconds: float = 60.0
    max_side: int = 1280
    max_bytes: int = 1 << 30


@dataclass
class VideoInfo:
    """What OpenCV reports about a readable video. ``frame_count`` is the container's claim
    (0 when unknown); ``codec`` its FourCC."""
    path: Path
    width: int
    height: int
    fps: float
    frame_count: int
    codec: str

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps if self.frame_count and self.fps else float("nan")


@dataclass
class VideoProgress:
    """One step of ``process_video``: ``done`` of ``total`` frames processed (``total`` is the
    expected count); ``preview``: the latest drawn frame (BGR) on some steps, else None;
    ``result``: set on the last step only."""
    done: int
    total: int
    frame: int
    preview: np.ndarray | None = None
    result: "VideoResult | None" = None


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
            "source": {"width": self.info.width, "height": self.info.height, "fps": self.info.fps,
                       "frames": self.info.frame_count, "codec": self.info.codec},
            "output": {"frames": self.processed_frames, "fps": self.output_fps, "duration_s": self.output_duration,
                       "width": self.output_size[0], "height": self.output_size[1]},
            "frame_indices": self.frame_indices,
            "layer": self.layer, "dcnv3_layers": self.layers, "mode": self.mode, "frame_stride": self.stride,
            "imgsz": self.imgsz, "seconds": self.seconds, "processed_fps": self.processed_frames / max(self.seconds, 1e-9),
            "notes": self.notes, "tracks": track_summary(self.rows)}
        if include_rows:
            payload["rows"] = self.rows
        return payload


# -- reading ------------------------------------------------------------------------------------------
def _ffmpeg_report(path: Path) -> str:
    """ffmpeg's own description of a file (``ffmpeg -i``; stderr), used only to explain why
    OpenCV could not read it. imageio-ffmpeg ships ffmpeg but not ffprobe."""
    import imageio_ffmpeg

    try:
        result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                                capture_output=True, text=True, errors="replace", timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stderr


def _diagnose(path: Path, opened: bool) -> str:
    """A one-line reason why a file gave OpenCV no frame: corrupt, audio only, no video stream,
    an unsupported codec, or zero frames."""
    name = path.name
    report = _ffmpeg_report(path)
    streams = re.findall(r"Stream #\d+:\d+.*?: (Video|Audio|Subtitle|Data): (.*)", report)
    video = [details for kind, details in streams if kind == "Video"]
    if "Input #0" not in report:
        return f"{name}: not a video, or a corrupt file (no readable container)"
    if not video:
        if any(kind == "Audio" for kind, _ in streams):
            return f"{name}: an audio-only file (no video stream)"
        return f"{name}: the file holds no video stream (zero frames)"
    codec = video[0].split(",")[0].strip()
    if codec.startswith("none") or "unknown codec" in report:
        fourcc = re.search(r"\((\w{4}) /", codec)
        return (f"{name}: unsupported video codec {fourcc.group(1) if fourcc else codec}; convert it to "
                f"H.264 MP4 (e.g. ffmpeg -i in -c:v libx264 out.mp4)")
    if opened:
        return f"{name}: the video has zero frames"
    return f"{name}: OpenCV cannot decode this video ({codec}); convert it to H.264 MP4"


def _fourcc(capture) -> str:
    code = int(capture.get(cv2.CAP_PROP_FOURCC))
    text = "".join(chr((code >> 8 * i) & 0xFF) for i in range(4))
    return text if text.isprintable() and text.strip() else "?"


def open_video(path: str | Path, limits: VideoLimits | None = None) -> VideoInfo:
    """Check that ``path`` is a video OpenCV can decode (its first frame is read) and describe it.

    Raises ``VideoError`` with a one-line reason: no such file, empty or too large a file, not a
    video / corrupt, audio only, no video stream, an unsupported codec, zero frames.
    """
    limits = limits or VideoLimits()
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path.name}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise VideoError(f"{path.name}: an empty file")
    if size > limits.max_bytes:
        raise VideoError(f"{path.name}: {size / 2**20:.0f} MiB, over the {limits.max_bytes / 2**20:.0f} MiB limit")
    capture = cv2.VideoCapture(str(path))
    try:
        opened = capture.isOpened()
        ok, frame = capture.read() if opened else (False, None)
        if not ok or frame is None:
            raise VideoError(_diagnose(path, opened))
        height, width = frame.shape[:2]
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0)
        count = int(max(capture.get(cv2.CAP_PROP_FRAME_COUNT), 0))
        info = VideoInfo(path, width, height, fps if 0 < fps < 1000 else 25.0, count, _fourcc(capture))
    finally:
        capture.release()
    return info


def iter_frames(path: str | Path, stride: int = 1, max_frames: int | None = None,
                max_seconds: float | None = None, fps: float | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Stream (source frame index, BGR uint8 (H, W, 3) frame) for every ``stride``-th frame.

    Skipped frames are only grabbed (decoded, not converted). Stops at the end of the file (a
    truncated file simply ends early), after ``max_frames`` yielded frames, or at the first frame
    at or past ``max_seconds`` (``fps`` gives frame times; default: the file's).
    """
    stride = max(1, int(stride))
    capture = cv2.VideoCapture(str(path))
    try:
        rate = fps or float(capture.get(cv2.CAP_PROP_FPS) or 25.0)
        index, yielded = 0, 0
        while max_frames is None or yielded < max_frames:
            if max_seconds is not None and index / rate >= max_seconds:
                break
            if index % stride:
                if not capture.grab():
                    break
            else:
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                yield index, frame
                yielded += 1
            index += 1
    finally:
        capture.release()


def read_frame(path: str | Path, index: int, max_side: int | None = None) -> np.ndarray:
    """One frame (BGR) of a video by source index, for the frame inspector (seek, else read on);
    downscaled to ``max_side`` like the processed frames if given. Raises VideoError."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoError(f"{Path(path).name}: cannot open the video")
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = capture.read()
        if not ok or frame is None:
            raise VideoError(f"{Path(path).name}: no frame {index}")
    finally:
        capture.release()
    return _fit(frame, max_side)[0] if max_side else frame


def _fit(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """(frame downscaled so its long side is at most ``max_side``, processed px per source px)."""
    longest = max(frame.shape[:2])
    if longest <= max_side:
        return frame, 1.0
    factor = max_side / longest
    size = (max(2, round(frame.shape[1] * factor)), max(2, round(frame.shape[0] * factor)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), size[0] / frame.shape[1]


# -- tracking -------------------------------------------------------------------------------------------
def make_tracker(name: str = "bytetrack"):
    """ultralytics' own tracker with its default configuration (``cfg/trackers/<name>.yaml``).

    ``name``: "bytetrack" or "botsort" (BoT-SORT without ReID: ReID would need another model).
    The tracker is fed the probe's detections, so tracking adds no model forward.
    """
    from ultralytics.trackers.track import TRACKER_MAP
    from ultralytics.utils import ROOT, YAML, IterableSimpleNamespace

    name = name.removesuffix(".yaml")
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {name!r}; one of {', '.join(TRACKERS)}")
    config = IterableSimpleNamespace(**YAML.load(ROOT / "cfg" / "trackers" / f"{name}.yaml"))
    if getattr(config, "with_reid", False):
        config.with_reid = False
    return TRACKER_MAP[config.tracker_type](args=config)


def _track(tracker, detections, frame: np.ndarray) -> np.ndarray:
    """Tracker update on a probe's detections -> (N, 8) rows [x1, y1, x2, y2, id, score, class,
    detection index] of the confirmed tracks (ultralytics' output layout)."""
    from ultralytics.engine.results import Boxes

    data = np.column_stack([detections.boxes, detections.scores, detections.classes]).astype(np.float32)
    tracks = tracker.update(Boxes(data.reshape(-1, 6), frame.shape[:2]), frame)
    return np.asarray(tracks, dtype=np.float32).reshape(-1, 8)


# -- statistics --------------------------------------------------------------------------------------
def track_summary(rows: list[dict]) -> list[dict]:
    """One dict per track: id, class name, frames seen, first / last time, size range (px),
    mean effective dilation, |offset| and entropy, and the size-dilation correlation (Pearson r,
    None below 3 frames or for a constant series)."""
    tracks: dict[int, list[dict]] = {}
    for row in rows:
        tracks.setdefault(int(row["track_id"]), []).append(row)
    summary = []
    for track_id, own in sorted(tracks.items()):
        sizes = np.array([r["size_px"] for r in own], np.float64)

        def mean(key):
            values = np.array([r[key] for r in own if r[key] is not None], np.float64)
            return round(float(values.mean()), 4) if values.size else None

        classes = [r["name"] for r in own]
        summary.append({"track_id": track_id, "name": max(set(classes), key=classes.count), "frames": len(own),
                        "first_s": own[0]["time_s"], "last_s": own[-1]["time_s"],
                        "size_min_px": round(float(sizes.min()), 1), "size_max_px": round(float(sizes.max()), 1),
                        "effective_dilation": mean("effective_dilation"), "offset_magnitude": mean("offset_magnitude"),
                        "weight_entropy": mean("weight_entropy"),
                        "size_dilation_r": size_dilation_correlation(own)})
    return summary


def size_dilation_correlation(rows: list[dict], track_id: int | None = None) -> float | None:
    """Pearson correlation of object size and effective dilation over a track's rows (all rows
    given if ``track_id`` is None); None below 3 rows or if either series is constant."""
    own = [r for r in rows if (track_id is None or int(r["track_id"]) == track_id)
           and r["effective_dilation"] is not None]
    if len(own) < 3:
        return None
    sizes = np.array([r["size_px"] for r in own], np.float64)
    dilations = np.array([r["effective_dilation"] for r in own], np.float64)
    if sizes.std() < 1e-9 or dilations.std() < 1e-9:
        return None
    return round(float(np.corrcoef(sizes, dilations)[0, 1]), 4)


# -- drawing ------------------------------------------------------------------------------------------------
@dataclass
class _TrackBoxes:
    """Tracked boxes in the shape ``overlay.draw_detections`` draws: boxes (N, 4), scores (N,), labels."""
    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]

    def label(self, index: int) -> str:
        return self.labels[index]


def _grid_points(shape) -> list[tuple[float, float]]:
    """The "grid" mode's query points: GRID_QUERIES rows x columns, evenly inside the frame (x, y)."""
    rows, cols = GRID_QUERIES
    height, width = shape[:2]
    return [((c + 0.5) * width / cols, (r + 0.5) * height / rows) for r in range(rows) for c in range(cols)]


def draw_frame(frame: np.ndarray, result, tracks: np.ndarray, layer: str, mode: str, caption: str) -> np.ndarray:
    """A processed frame: in "field" mode the effective-dilation map blended under everything;
    the tracked boxes (label "#id class score"); sampling points at each track's centre
    ("samples") or at fixed query points ("grid"); a caption. ``tracks``: (N, 8) tracker rows."""
    canvas = frame.copy()  # the frame itself stays as decoded (the tracker may keep it)
    fixed = None if layer == AUTO_LAYER or not result.layers else result.layer(layer)
    middle = result.default_layer()
    if mode == "field" and result.layers:
        record = fixed or middle
        values = result.effective_dilation(record).mean(axis=-1)  # (H, W) mean over groups
        colours = field_colours("effective dilation", values, FIELD_RANGE)
        FieldAnnotator(opacity=0.5, smooth=True).annotate(canvas, result, record, colours)
    names = result.detections.names
    labels = [f"#{int(t[4])} {names.get(int(t[6]), int(t[6]))} {t[5]:.2f}" for t in tracks]
    DetectionAnnotator(max_labels=MAX_DRAWN_TRACKS).annotate(canvas, _TrackBoxes(tracks[:, :4], tracks[:, 5], labels))
    queries = []
    if mode == "samples":
        for t in tracks[np.argsort(-tracks[:, 5], kind="stable")][:MAX_DRAWN_TRACKS]:
            record = fixed or result.layer_for_box(t[:4])
            if record is not None:
                queries.append((record, box_centre(t), True))
    elif mode == "grid" and result.layers:
        queries = [(fixed or middle, xy, False) for xy in _grid_points(canvas.shape)]
    for record, (x, y), ghost in queries:
        cell = result.cell_at(record, x, y)
        if cell is None:
            continue
        CellAnnotator(grid=ghost).annotate(canvas, result, record, cell)
    return CaptionAnnotator().annotate(canvas, caption)


# -- the pipeline ----------------------------------------------------------------------------------------
def _layer_names(model) -> list[str]:
    from .loading import dcnv3_layer_names

    return list(getattr(model, "dcnv3_layers", None) or dcnv3_layer_names(model))


def process_video(model, source: str | Path, out_dir: str | Path, *, layer: str = AUTO_LAYER,
                  mode: str = "samples", stride: int = 1, imgsz: int | None = None, conf: float = 0.25,
                  iou: float = 0.7, tracker: str = "bytetrack", limits: VideoLimits | None = None,
                  preview_seconds: float = 1.0, preset: str = "superfast", crf: int = 26,
                  batch: int = 4, stem: str | None = None) -> Iterator[VideoProgress]:
    """Process a video; yields ``VideoProgress`` after every frame, the last one with the result.

    Args:
        model: ultralytics YOLO detection model (``dcnv3.loading.load_model``); one forward per ``batch``
            processed frames.
        source: video file. out_dir: where ``<stem>_dcnv3.mp4`` and ``<stem>_stats.csv`` go.
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
    names = _layer_names(model)
    if layer != AUTO_LAYER and layer not in names:
        raise ValueError(f"unknown layer {layer!r}; layers: {', '.join(names) or 'none (no DCNv3 layer)'}")
    info = open_video(source, limits)
    imgsz = int(imgsz or train_imgsz(model))
    tracker_state = make_tracker(tracker)
    notes = []
    if not names:
        notes.append("this detector has no DCNv3 layer: only its tracked detections are drawn")
    if info.duration > limits.max_seconds:
        notes.append(f"only the first {limits.max_seconds:g} s of {info.duration:.1f} s are processed")
    total = info.frame_count or int(limits.max_seconds * info.fps)
    total = min(total, int(math.ceil(limits.max_seconds * info.fps)))
    expected = min(limits.max_frames, (total + stride - 1) // stride)
    if (total + stride - 1) // stride > limits.max_frames:
        notes.append(f"only the first {limits.max_frames} processed frames are kept (frame limit)")
    if max(info.width, info.height) > limits.max_side:
        notes.append(f"frames of {info.width} x {info.height} px are downscaled to {limits.max_side} px on their "
                     f"long side before probing")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or Path(source).stem
    video_path, csv_path = out_dir / f"{stem}_dcnv3.mp4", out_dir / f"{stem}_stats.csv"
    output_fps = info.fps / stride
    rows: list[dict] = []
    frame_indices: list[int] = []
    start = last_preview = time.perf_counter()
    finished = False
    writer = H264Writer(video_path, output_fps, crf=crf, preset=preset)
    try:
        with writer:
            frames = iter_frames(source, stride, limits.max_frames, limits.max_seconds, info.fps)
            for index, frame, scale, result in _probed(model, frames, batch, limits.max_side,
                                                       imgsz=imgsz, conf=conf, iou=iou):
                tracks = _track(tracker_state, result.detections, frame)
                seconds = index / info.fps
                for t in tracks:
                    rows.append(_row(result, t, layer, index, seconds, scale))
                caption = f"frame {index} · {seconds:.2f} s · " + (
                    "per object: layer of its scale" if layer == AUTO_LAYER and mode == "samples" else
                    (layer if layer != AUTO_LAYER else (result.default_layer().name
                                                        if result.layers else "no DCNv3 layer")))
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
            notes.append(f"the file ends after frame {frame_indices[-1]} although it claims {info.frame_count} "
                         f"frames (truncated?)")
        _write_csv(csv_path, rows)
        output = VideoResult(video_path, csv_path, info, rows, len(frame_indices), frame_indices, output_fps,
                             writer.size, layer, names, mode, stride, imgsz, time.perf_counter() - start, notes)
        finished = True
        yield VideoProgress(len(frame_indices), len(frame_indices), frame_indices[-1], None, output)
    finally:
        if not finished:  # an error, or the consumer stopped: no half-written files stay behind
            video_path.unlink(missing_ok=True)
            csv_path.unlink(missing_ok=True)


def _probed(model, frames: Iterable[tuple[int, np.ndarray]], batch: int, max_side: int,
            **probe_args) -> Iterator[tuple[int, np.ndarray, float, object]]:
    """(index, frame fitted to ``max_side``, its scale, its Probe) for each frame, in order,
    probing ``batch`` frames per forward (``probe_batch``)."""
    frames = iter(frames)
    while chunk := list(itertools.islice(frames, batch)):
        fitted = [(index, *_fit(frame, max_side)) for index, frame in chunk]
        results = probe_batch(model, [frame for _, frame, _ in fitted], **probe_args)
        for (index, frame, scale), result in zip(fitted, results):
            yield index, frame, scale, result


def _row(result, track: np.ndarray, layer: str, index: int, seconds: float, scale: float) -> dict:
    """One CSV row of a track in a frame; box and size in source-video pixels, statistics at the
    track's centre cell of ``layer`` (or of its scale-matched layer), means over groups."""
    box = track[:4].astype(np.float64)
    record = None
    if result.layers:
        record = result.layer_for_box(box) if layer == AUTO_LAYER else result.layer(layer)
    cell = result.cell_at(record, *box_centre(box)) if record is not None else None
    dilation = magnitude = entropy = None
    if cell is not None:
        dilation, magnitude, entropy = (round(v, 5) for v in stats.cell_summary(record, cell))
    source_box = box / scale
    size = math.sqrt(max(source_box[2] - source_box[0], 0) * max(source_box[3] - source_box[1], 0))
    class_id = int(track[6])
    return {"frame": int(index), "time_s": round(seconds, 4), "track_id": int(track[4]), "class": class_id,
            "name": str(result.detections.names.get(class_id, class_id)), "score": round(float(track[5]), 4),
            "x1": round(float(source_box[0]), 2), "y1": round(float(source_box[1]), 2),
            "x2": round(float(source_box[2]), 2), "y2": round(float(source_box[3]), 2), "size_px": round(size, 2),
            "layer": record.name if record is not None else "", "stride": record.stride if record is not None else None,
            "effective_dilation": dilation, "offset_magnitude": magnitude, "weight_entropy": entropy}


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def run_video(model, source, out_dir, on_progress: Callable[[VideoProgress], None] | None = None,
              **kwargs) -> VideoResult:
    """``process_video`` to the end (``on_progress`` sees every step); returns the result."""
    for step in process_video(model, source, out_dir, **kwargs):
        if on_progress is not None:
            on_progress(step)
        if step.result is not None:
            return step.result
    raise VideoError(f"{Path(source).name}: nothing was processed")
