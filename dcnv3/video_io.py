"""Browser-playable video files: H.264 in MP4 through the ffmpeg that ships in imageio-ffmpeg.

OpenCV's pip wheels cannot write H.264, and their mp4v does not play in browsers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["write_h264"]


def write_h264(frames: Iterable[np.ndarray], path: str | Path, fps: float, crf: int = 28) -> Path:
    """Encode BGR uint8 frames (H, W, 3), all of one size, to an H.264 MP4 (yuv420p, faststart).

    Odd sizes are padded by one pixel (H.264 4:2:0 needs even sizes). ``crf``: 18 near
    lossless ... 28 small files; returns the path.
    """
    import imageio_ffmpeg

    path = Path(path)
    writer = None
    try:
        for frame in frames:
            frame = np.asarray(frame)
            if writer is None:
                height, width = frame.shape[:2]
                writer = imageio_ffmpeg.write_frames(
                    str(path), (width + width % 2, height + height % 2), fps=fps, codec="libx264",
                    pix_fmt_in="rgb24", pix_fmt_out="yuv420p", macro_block_size=2,
                    output_params=["-crf", str(crf), "-preset", "medium", "-movflags", "+faststart"])
                writer.send(None)  # start the encoder
            rgb = np.ascontiguousarray(frame[..., ::-1])
            if rgb.shape[0] % 2 or rgb.shape[1] % 2:
                rgb = np.pad(rgb, ((0, rgb.shape[0] % 2), (0, rgb.shape[1] % 2), (0, 0)), mode="edge")
            writer.send(rgb)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError("no frames to write")
    return path
