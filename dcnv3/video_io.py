"""Browser-playable video files: H.264 in MP4 through the ffmpeg that ships in imageio-ffmpeg.

OpenCV's pip wheels cannot write H.264, and their mp4v does not play in browsers.
``H264Writer`` streams frames into one ffmpeg process as they come (nothing is held in memory);
``write_h264`` encodes an iterable of frames with it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["H264Writer", "write_h264"]


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
                str(self.path), (width + width % 2, height + height % 2), fps=self.fps, codec="libx264",
                pix_fmt_in="bgr24", pix_fmt_out="yuv420p", macro_block_size=2, ffmpeg_log_level="error",
                # One encoder thread: the model's forward runs beside it on the same cores (in
                # bench_video its thread pool gained nothing measurable over one thread).
                output_params=["-crf", str(self.crf), "-preset", self.preset, "-threads", "1",
                               "-movflags", "+faststart"])
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

    def __enter__(self) -> "H264Writer":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        elif self._encoder is not None:  # an error upstream: stop ffmpeg, keep the first error
            try:
                self._encoder.close()
            except Exception:  # noqa: BLE001 - the original error matters, not ffmpeg's
                pass
            self._encoder = None


def write_h264(frames: Iterable[np.ndarray], path: str | Path, fps: float, crf: int = 28,
               preset: str = "medium") -> Path:
    """Encode BGR uint8 frames (H, W, 3), all of one size, to an H.264 MP4; returns the path.

    See ``H264Writer`` for ``crf`` and ``preset``.
    """
    with H264Writer(path, fps, crf, preset) as writer:
        for frame in frames:
            writer.write(frame)
        if writer.frames == 0:
            raise ValueError("no frames to write")
    return Path(path)
