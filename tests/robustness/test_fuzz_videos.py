"""Fuzzed videos: truncated MP4s (moov at the end: unreadable; faststart: plays until the cut), a
header only, zero frames, one frame, a variable frame rate, rotation metadata. Each is processed or
refused with a one-line reason, in the package and through /video, and the server keeps serving.

The files are made here with the ffmpeg that imageio-ffmpeg ships (lavfi test sources, offline).
"""

import subprocess
from pathlib import Path

import pytest
from app_server import served_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from serving import ROOT

from dcnv3.yolo.loading import load_model
from viz_app.state.analyser import Analyser
from viz_app.state.models import ModelRegistry

video = pytest.importorskip("dcnv3.video.pipeline")
DEMO = ROOT / "assets" / "demo_shapes.mp4"
MODEL = ROOT / "assets" / "models" / "dcnv3-yolov8n.pt"
FRAMES = 3

# name -> ("ok", (width, height) of the processed frames, processed frames) or ("refused", message)
CASES = {
    "one_frame.mp4": ("ok", (160, 120), 1),
    "variable_rate.mp4": ("ok", (160, 120), FRAMES),
    "rotated_90.mp4": ("ok", (120, 160), FRAMES),  # the display rotation is applied: portrait
    "truncated_faststart.mp4": ("ok", (480, 320), FRAMES),  # the frames before the cut still play
    "zero_frames.mp4": ("refused", "zero_frames.mp4: the file holds no video stream"),
    "truncated_moov_at_end.mp4": ("refused", "truncated_moov_at_end.mp4: not a video, or a corrupt file"),
    "header_only.mp4": ("refused", "header_only.mp4: the video has zero frames"),
    "empty.mp4": ("refused", "empty.mp4: an empty file"),
}


def ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-nostdin", *args], check=True, timeout=120
    )


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzzed_videos")
    source = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=10"]
    h264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    ffmpeg(*source, "-t", "3", *h264, str(folder / "base.mp4"))  # moov at the end (no faststart)
    ffmpeg(*source, "-frames:v", "1", *h264, str(folder / "one_frame.mp4"))
    ffmpeg(*source, "-frames:v", "0", *h264, str(folder / "zero_frames.mp4"))
    # 30 fps for a second, then every third frame: timestamps 1/30 s apart, then 1/10 s apart
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=160x120:rate=30",
        "-t",
        "3",
        "-vf",
        "select='lt(n,30)+not(mod(n,3))'",
        "-fps_mode",
        "vfr",
        *h264,
        str(folder / "variable_rate.mp4"),
    )
    ffmpeg("-display_rotation", "90", "-i", str(folder / "base.mp4"), "-c", "copy", str(folder / "rotated_90.mp4"))
    base, demo = (folder / "base.mp4").read_bytes(), DEMO.read_bytes()
    (folder / "truncated_moov_at_end.mp4").write_bytes(base[: len(base) // 2])
    (folder / "truncated_faststart.mp4").write_bytes(demo[: len(demo) // 2])
    (folder / "header_only.mp4").write_bytes(demo[:3000])
    (folder / "empty.mp4").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_package_processes_or_refuses_in_one_line(videos, model, tmp_path, name):
    kind, *expected = CASES[name]
    limits = video.VideoLimits(max_frames=FRAMES)
    if kind == "refused":
        with pytest.raises(ValueError, match=expected[0]) as error:
            video.run_video(model, videos / name, tmp_path, limits=limits)
        assert "\n" not in str(error.value)
        return
    result = video.run_video(model, videos / name, tmp_path, limits=limits)
    stats = result.stats_json(include_rows=False)
    assert (stats["output"]["width"], stats["output"]["height"]) == expected[0]
    assert stats["output"]["frames"] == expected[1]
    assert result.video_path.is_file() and result.video_path.stat().st_size > 0


def test_variable_frame_rate_keeps_frames_in_order(videos, model, tmp_path):
    result = video.run_video(model, videos / "variable_rate.mp4", tmp_path, limits=video.VideoLimits(max_frames=40))
    assert result.frame_indices == sorted(result.frame_indices) and len(set(result.frame_indices)) == 40


@pytest.fixture(scope="module")
def server():
    registry = ModelRegistry()
    with served_app(registry, Analyser(registry)) as url:
        yield Client(url, verbose=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_server_answers_each_and_keeps_serving(server, videos, name):
    kind, *expected = CASES[name]
    if kind == "refused":
        with pytest.raises(AppError, match=expected[0]):
            server.predict(handle_file(str(videos / name)), "", "auto", FRAMES, api_name="/video")
    else:
        path, stats = server.predict(handle_file(str(videos / name)), "", "auto", FRAMES, api_name="/video")
        assert Path(path).stat().st_size > 0 and stats["output"]["frames"] == expected[1]
    _, payload = server.predict(
        handle_file(str(ROOT / "assets" / "examples" / "shapes_0.jpg")), "", 0.25, 0.7, api_name="/detect"
    )
    assert payload["image_size"] == [416, 416]
