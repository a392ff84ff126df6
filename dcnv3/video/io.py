"""Video files in and out: OpenCV decoding with clear refusals, and browser-playable H.264 output.

Reading: ``open_video`` checks a file (its first frame is decoded) and describes it, or raises
``VideoError`` with a one-line reason found by asking ffmpeg (corrupt, audio only, no video
stream, an unsupported codec, zero frames); ``iter_frames`` streams every ``stride``-th frame;
``read_frame`` seeks one; ``fit_frame`` downscales to a long side.

Writing: OpenCV's pip wheels cannot write H.264, and their mp4v does not play in browsers.
``H264Writer`` streams frames into one ffmpeg process (the one imageio-ffmpeg ships) as they come
(nothing is held in memory); ``write_h264`` encodes an iterable of frames with it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "VideoError",
    "VideoLimits",
    "VideoInfo",
    "open_video",
    "iter_frames",
    "read_frame",
    "fit_frame",
    "H264Writer",
    "write_h264",
]


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


# -- reading ------------------------------------------------------------------------------------------
def _ffmpeg_report(path: Path) -> str:
    """ffmpeg's own description of a file (``ffmpeg -i``; stderr), used only to explain why
    OpenCV could not read it. imageio-ffmpeg ships ffmpeg but not ffprobe."""
    import imageio_ffmpeg

    try:
        result = subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=30,
        )
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
        return (
            f"{name}: unsupported video codec {fourcc.group(1) if fourcc else codec}; convert it to "
            f"H.264 MP4 (e.g. ffmpeg -i in -c:v libx264 out.mp4)"
        )
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


def iter_frames(
    path: str | Path,
    stride: int = 1,
    max_frames: int | None = None,
    max_seconds: float | None = None,
    fps: float | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
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
    return fit_frame(frame, max_side)[0] if max_side else frame


def fit_frame(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """(frame downscaled so its long side is at most ``max_side``, processed px per source px)."""
    longest = max(frame.shape[:2])
    if longest <= max_side:
        return frame, 1.0
    factor = max_side / longest
    size = (max(2, round(frame.shape[1] * factor)), max(2, round(frame.shape[0] * factor)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA), size[0] / frame.shape[1]


# -- writing ------------------------------------------------------------------------------------------


class H264Writer:
    """Stream BGR uint8 frames (H, W, 3), all of one size, into an H.264 MP4 (yuv420p, faststart).

    The encoder starts on the first frame, whose size fixes the video's; odd sizes are padded by
    one pixel (H.264 4:2:0 needs even sizes). ``crf``: 18 near lossless ... 28 small files;
    ``preset``: x264's speed/size trade-off ("ultrafast" ... "medium" ... "veryslow").
    Use as a context manager, or call ``close``; ``frames`` counts what was written.
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 28, preset: str = "medium"):
        self.path, self.fps, self.crf, self.preset = Path(path), float(fps), int(crf), str(preset)
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height) of the frames given
        self._encoder = None

    def write(self, frame: np.ndarray) -> None:
        import imageio_ffmpeg

        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}")
        height, width = frame.shape[:2]
        if self._encoder is None:
            self.size = (width, height)
            self._encoder = imageio_ffmpeg.write_frames(
                str(self.path),
                (width + width % 2, height + height % 2),
                fps=self.fps,
                codec="libx264",
                pix_fmt_in="bgr24",
                pix_fmt_out="yuv420p",
                macro_block_size=2,
                ffmpeg_log_level="error",
                # One encoder thread: the model's forward runs beside it on the same cores (in
                # bench_video its thread pool gained nothing measurable over one thread).
                output_params=[
                    "-crf",
                    str(self.crf),
                    "-preset",
                    self.preset,
                    "-threads",
                    "1",
                    "-movflags",
                    "+faststart",
                ],
            )
            self._encoder.send(None)  # start the encoder
        elif (width, height) != self.size:
            raise ValueError(f"frame size {width} x {height} differs from the video's {self.size[0]} x {self.size[1]}")
        frame = np.ascontiguousarray(frame)  # ffmpeg takes BGR as it is (no channel flip here)
        if height % 2 or width % 2:
            frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        self._encoder.send(frame)
        self.frames += 1

    def close(self) -> Path:
        """Finish the file (waits for ffmpeg); raises ValueError if no frame was written."""
        encoder, self._encoder = self._encoder, None
        if encoder is not None:
            encoder.close()
        if self.frames == 0:
            raise ValueError("no frames to write")
        return self.path

    def __enter__(self) -> H264Writer:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        elif self._encoder is not None:  # an error upstream: stop ffmpeg, keep the first error
            try:
                self._encoder.close()
            except Exception:
                pass
            self._encoder = None


def write_h264(
    frames: Iterable[np.ndarray], path: str | Path, fps: float, crf: int = 28, preset: str = "medium"
) -> Path:
    """Encode BGR uint8 frames (H, W, 3), all of one size, to an H.264 MP4; returns the path.

    See ``H264Writer`` for ``crf`` and ``preset``.
    """
    with H264Writer(path, fps, crf, preset) as writer:
        for frame in frames:
            writer.write(frame)
        if writer.frames == 0:
            raise ValueError("no frames to write")
    return Path(path)
