"""dcnv3.video.pipeline: frames streamed through one probe each and ultralytics' tracker, per-track statistics,
a browser-playable H.264 output, limits, clear refusals of unusable files, no files left behind;
the CLI's video path. Kept short with max_frames / frame stride (the bundled model at 320 px)."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from repo_paths import ROOT

from dcnv3.analysis.probe import probe
from dcnv3.video import pipeline as video
from dcnv3.yolo.loading import load_model

DEMO = ROOT / "assets" / "demo_shapes.mp4"
MODEL = ROOT / "assets" / "models" / "dcnv3-yolov8n.pt"
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL)


def ffmpeg_report(path) -> str:
    return subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr


def decoded_frames(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


@pytest.fixture(scope="module")
def demo_run(model, tmp_path_factory):
    """20 frames of the demo video, every layer's scale-matched statistics, sampling-points overlay."""
    return video.run_video(model, DEMO, tmp_path_factory.mktemp("demo"), limits=video.VideoLimits(max_frames=20))


def test_output_is_h264_and_decodes_to_the_processed_frames(demo_run):
    assert demo_run.processed_frames == 20 and demo_run.frame_indices == list(range(20))
    report = ffmpeg_report(demo_run.video_path)
    assert "Video: h264" in report and "yuv420p" in report
    frames = decoded_frames(demo_run.video_path)
    assert len(frames) == 20 and frames[0].shape == (320, 480, 3)
    assert math.isclose(demo_run.output_fps, 15.0) and math.isclose(demo_run.output_duration, 20 / 15)
    # The overlay is drawn on the frames: they differ from the source where boxes and points are.
    source = next(frame for _, frame in video.iter_frames(DEMO, max_frames=1))
    assert np.abs(frames[0].astype(int) - source.astype(int)).mean() > 1.0


def test_tracks_statistics_and_csv(demo_run):
    rows = demo_run.rows
    assert rows and demo_run.layer == video.AUTO_LAYER
    longest = max(video.track_summary(rows), key=lambda t: t["frames"])
    assert longest["frames"] >= 15  # one object kept its id through (nearly) all 20 frames
    layers = {name: int(stride) for name, stride in ((r["layer"], r["stride"]) for r in rows)}
    for row in rows:
        assert 0 <= row["weight_entropy"] <= 1 and row["effective_dilation"] > 0 and row["offset_magnitude"] >= 0
        assert row["size_px"] == pytest.approx(math.sqrt((row["x2"] - row["x1"]) * (row["y2"] - row["y1"])), abs=0.02)
    assert all(stride in (8, 16, 32) for stride in layers.values())
    with open(demo_run.csv_path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == video.CSV_COLUMNS and len(table) == len(rows)
    assert float(table[0]["effective_dilation"]) == pytest.approx(rows[0]["effective_dilation"])
    payload = demo_run.stats_json()
    assert payload["output"]["frames"] == 20 and len(payload["rows"]) == len(rows)
    assert {t["track_id"] for t in payload["tracks"]} == {r["track_id"] for r in rows}


def test_cell_statistics_match_the_probe(model, demo_run):
    """The row of a track equals the Probe's own statistics at the cell under its box centre."""
    frame = video.read_frame(DEMO, 5)
    result = probe(model, frame, imgsz=demo_run.imgsz)
    row = next(r for r in demo_run.rows if r["frame"] == 5)
    record = result.layer(row["layer"])
    cell = result.cell_at(record, (row["x1"] + row["x2"]) / 2, (row["y1"] + row["y2"]) / 2)
    assert row["effective_dilation"] == pytest.approx(result.effective_dilation(record)[cell].mean(), abs=1e-4)
    assert row["weight_entropy"] == pytest.approx(result.weight_entropy(record)[cell].mean(), abs=1e-4)
    assert row["offset_magnitude"] == pytest.approx(result.offset_magnitude(record)[cell].mean(), abs=1e-4)


@pytest.mark.parametrize("batch", [1, 4])
def test_frames_are_streamed_in_batched_forwards(model, tmp_path, monkeypatch, batch):
    """The first progress step comes after one batched probe (at most ``batch`` frames read
    ahead), every frame is probed once, and ultralytics' own predict / track never run."""
    calls = []
    real_probe = video.probe_batch
    monkeypatch.setattr(
        video, "probe_batch", lambda m, frames, **k: calls.append(len(frames)) or real_probe(m, frames, **k)
    )
    monkeypatch.setattr(type(model), "predict", lambda *a, **k: pytest.fail("predict ran"))
    monkeypatch.setattr(type(model), "track", lambda *a, **k: pytest.fail("track ran"))
    steps = video.process_video(
        model, DEMO, tmp_path, stride=4, mode="grid", batch=batch, limits=video.VideoLimits(max_frames=6)
    )
    first = next(steps)
    assert calls == [batch] and first.done == 1 and first.total == 6 and first.preview is not None
    final = list(steps)[-1].result
    assert sum(calls) == final.processed_frames == 6 and final.frame_indices == [0, 4, 8, 12, 16, 20]
    assert calls == ([1] * 6 if batch == 1 else [4, 2])


def test_stride_duration_and_resolution_limits(model, tmp_path):
    limits = video.VideoLimits(max_frames=100, max_seconds=1.0, max_side=240)
    result = video.run_video(model, DEMO, tmp_path, stride=3, mode="field", limits=limits)
    assert result.frame_indices == [0, 3, 6, 9, 12]  # frames before 1 s at 15 fps, every third
    assert result.output_fps == 5.0 and result.output_size == (240, 160)
    assert any("first 1 s" in n for n in result.notes) and any("downscaled" in n for n in result.notes)
    assert decoded_frames(result.video_path)[0].shape == (160, 240, 3)
    # Boxes are reported in source pixels, not in the downscaled frame's.
    assert max(r["x2"] for r in result.rows) > 240
    capped = video.run_video(model, DEMO, tmp_path / "capped", stride=5, limits=video.VideoLimits(max_frames=3))
    assert capped.processed_frames == 3 and any("frame limit" in n for n in capped.notes)


def _write_unsupported_codec(path: Path) -> None:
    """The demo MP4 with its codec tag changed to an unknown FourCC: a valid container, a video
    stream no decoder knows."""
    path.write_bytes(DEMO.read_bytes().replace(b"avc1", b"zzzz"))


def _write_zero_frames(path: Path) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    writer.release()  # the AVI has its header and a video stream, but no frame


def _write_audio_only(path: Path) -> None:
    subprocess.run(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=1",
            str(path),
        ],
        check=True,
    )


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("corrupt.mp4", lambda p: p.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000)), "corrupt"),
        ("notes.txt", lambda p: p.write_text("not a video"), "not a video"),
        ("empty.mp4", lambda p: p.write_bytes(b""), "empty file"),
        ("zero.avi", _write_zero_frames, "zero frames"),
        ("sine.m4a", _write_audio_only, "audio-only"),
        ("unknown.mp4", _write_unsupported_codec, "unsupported video codec zzzz"),
    ],
)
def test_unusable_files_are_refused_with_a_clear_message(model, tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    out = tmp_path / "out"
    with pytest.raises(video.VideoError, match=message) as error:
        list(video.process_video(model, path, out))
    assert "\n" not in str(error.value) and str(error.value).startswith(name)
    assert not out.exists() or not any(out.iterdir())


def test_missing_and_oversized_files(model, tmp_path):
    with pytest.raises(video.VideoError, match="no such file"):
        video.open_video(tmp_path / "missing.mp4")
    with pytest.raises(video.VideoError, match="over the 0 MiB limit"):
        video.open_video(DEMO, video.VideoLimits(max_bytes=1000))
    with pytest.raises(ValueError, match="unknown layer"):
        list(video.process_video(model, DEMO, tmp_path, layer="model.99.nope"))
    with pytest.raises(ValueError, match="unknown overlay mode"):
        list(video.process_video(model, DEMO, tmp_path, mode="sparkles"))


def test_truncated_file_ends_early_with_a_note(model, tmp_path):
    data = DEMO.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 4])  # faststart: the index survives, most frames do not
    result = video.run_video(model, truncated, tmp_path / "out", stride=15)
    assert 0 < result.frame_indices[-1] < 170
    assert any("truncated" in n for n in result.notes)


def test_no_partial_files_after_an_error_or_an_early_stop(model, tmp_path, monkeypatch):
    steps = video.process_video(model, DEMO, tmp_path / "stopped", limits=video.VideoLimits(max_frames=50))
    next(steps)
    next(steps)
    steps.close()  # the consumer stops (the UI's Stop, a closed page)
    assert not list((tmp_path / "stopped").iterdir())

    real_probe, calls = video.probe_batch, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real_probe(*args, **kwargs)

    monkeypatch.setattr(video, "probe_batch", failing)
    with pytest.raises(RuntimeError, match="boom"):
        video.run_video(model, DEMO, tmp_path / "failed")
    assert not list((tmp_path / "failed").iterdir())


def test_botsort_tracker_and_fixed_layer(model, tmp_path):
    deepest = model.deformable_layers[-1]
    result = video.run_video(
        model, DEMO, tmp_path, layer=deepest, tracker="botsort", stride=2, limits=video.VideoLimits(max_frames=8)
    )
    assert result.rows and {r["layer"] for r in result.rows} == {deepest}
    assert {r["stride"] for r in result.rows} == {32}
    with pytest.raises(ValueError, match="unknown tracker"):
        video.make_tracker("sort9000")


def test_dilation_follows_size_on_the_demo_video(model, tmp_path, report):
    """The acceptance measurement: the correlation, over time, between a growing shape's size and
    the effective dilation of the deepest DCNv3 layer at its centre (reported, not asserted: it
    is a property of the trained model, not of this code)."""
    deepest = model.deformable_layers[-1]
    result = video.run_video(model, DEMO, tmp_path, layer=deepest, stride=3, limits=video.VideoLimits(max_frames=60))
    summary = [t for t in video.track_summary(result.rows) if t["frames"] >= 20]
    assert summary
    growing = max(summary, key=lambda t: t["size_max_px"] / t["size_min_px"])
    assert growing["size_max_px"] > 1.5 * growing["size_min_px"]  # the demo has a shape that grows
    r = growing["size_dilation_r"]
    assert r is not None and -1 <= r <= 1
    report(
        f"video: r(size, effective dilation of {deepest}) over track #{growing['track_id']} "
        f"({growing['name']}, {growing['frames']} frames, {growing['size_min_px']:.0f}-{growing['size_max_px']:.0f} px)"
        f" = {r:+.3f}; all tracks >= 20 frames: "
        + ", ".join(
            f"#{t['track_id']} {t['name']} {t['size_dilation_r']:+.2f}"
            for t in summary
            if t["size_dilation_r"] is not None
        )
    )


def test_cli_inspect_writes_the_video_and_csv(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcnv3",
            "inspect",
            "--model",
            str(MODEL),
            "--source",
            str(DEMO),
            "--out",
            str(tmp_path),
            "--max-frames",
            "6",
            "--stride",
            "3",
            "--mode",
            "grid",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "YOLO_OFFLINE": "true"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p.name for p in tmp_path.iterdir()} == {"demo_shapes_deformable.mp4", "demo_shapes_stats.csv"}
    assert len(decoded_frames(tmp_path / "demo_shapes_deformable.mp4")) == 6
    with open(tmp_path / "demo_shapes_stats.csv", newline="") as handle:
        assert list(csv.DictReader(handle).fieldnames) == video.CSV_COLUMNS
    audio = tmp_path / "sine.m4a"
    _write_audio_only(audio)
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcnv3",
            "inspect",
            "--model",
            str(MODEL),
            "--source",
            str(audio),
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "YOLO_OFFLINE": "true"},
        timeout=300,
    )
    assert refused.returncode == 2 and refused.stderr.strip() == "error: sine.m4a: an audio-only file (no video stream)"


def test_time_series_figure_and_track_table(demo_run):
    from viz_app.views import video_render

    figure = video_render.time_series_figure(demo_run.rows)
    long_tracks = [t for t in video.track_summary(demo_run.rows) if t["frames"] >= 3]
    assert len(figure.data) == 4 * min(len(long_tracks), 10)
    assert [figure.layout[f"yaxis{a}"].title.text for a in ("", "2", "3", "4")] == [t for _, t in video_render.SERIES]
    assert all(
        0 <= figure.layout[f"yaxis{a}"].domain[0] < figure.layout[f"yaxis{a}"].domain[1] <= 1
        for a in ("", "2", "3", "4")
    )
    table = video_render.track_table(demo_run.rows)
    assert len(table) == len({r["track_id"] for r in demo_run.rows}) and "eff. dilation" in table[0]
    empty = video_render.time_series_figure([])
    assert not empty.data and "no track" in empty.layout.annotations[0].text


def test_h264_writer_keeps_bgr_colours(tmp_path):
    """Frames go to ffmpeg as BGR: a red and a blue frame decode as red and blue, odd sizes padded."""
    from dcnv3.video.io import write_h264

    red, blue = np.zeros((33, 47, 3), np.uint8), np.zeros((33, 47, 3), np.uint8)
    red[..., 2], blue[..., 0] = 255, 255
    path = write_h264([red, red, blue, blue], tmp_path / "colours.mp4", fps=4, crf=18)
    capture = cv2.VideoCapture(str(path))
    decoded = [capture.read()[1] for _ in range(4)]
    capture.release()
    assert decoded[0].shape[:2] == (34, 48)
    assert decoded[0][16, 20, 2] > 230 and decoded[0][16, 20, 0] < 25
    assert decoded[3][16, 20, 0] > 230 and decoded[3][16, 20, 2] < 25
