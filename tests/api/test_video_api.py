"""The /video endpoint through gradio_client: the processed H.264 video and its statistics JSON;
bad files and settings come back as one-line errors. The app runs in this process on a loopback port."""

from pathlib import Path

import cv2
import pytest
from app_server import served_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from repo_paths import ROOT

from viz_app.state.analyser import Analyser
from viz_app.state.models import ModelRegistry

DEMO = ROOT / "assets" / "demo_shapes.mp4"


@pytest.fixture(scope="module")
def client():
    registry = ModelRegistry()  # the bundled models; default dcnv3-yolov8n.pt
    with served_app(registry, Analyser(registry)) as url:
        yield Client(url, verbose=False)


def test_video_endpoint_returns_playable_video_and_statistics(client):
    path, stats = client.predict(handle_file(str(DEMO)), "dcnv3-yolov8n.pt", "auto", 8, api_name="/video")
    capture = cv2.VideoCapture(path)
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert Path(path).suffix == ".mp4" and frames == 8
    assert stats["output"] == {
        "frames": 8,
        "fps": 15.0,
        "duration_s": pytest.approx(8 / 15),
        "width": 480,
        "height": 320,
    }
    assert stats["model"] == "dcnv3-yolov8n.pt" and stats["layer"] == "auto" and len(stats["deformable_layers"]) == 5
    assert stats["rows"] and {"track_id", "size_px", "effective_dilation", "weight_entropy"} <= set(stats["rows"][0])
    assert {t["track_id"] for t in stats["tracks"]} == {r["track_id"] for r in stats["rows"]}


def test_video_endpoint_fixed_layer(client):
    _, stats = client.predict(handle_file(str(DEMO)), "dcnv3-yolov8n.pt", "model.8.m.0.cv2.dcnv3", 3, api_name="/video")
    assert {r["layer"] for r in stats["rows"]} == {"model.8.m.0.cv2.dcnv3"}


@pytest.mark.parametrize(
    "make, args, message",
    [
        (
            lambda p: p.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(3000)),
            ("dcnv3-yolov8n.pt", "auto", 5),
            "corrupt",
        ),
        (None, ("dcnv3-yolov8n.pt", "model.99.nope", 5), "unknown layer"),
        (None, ("nope.pt", "auto", 5), "unknown model"),
        (None, ("dcnv3-yolov8n.pt", "auto", 0), "max_frames must lie in 1..600"),
    ],
)
def test_video_endpoint_refusals(client, tmp_path, make, args, message):
    source = DEMO
    if make is not None:
        source = tmp_path / "bad.mp4"
        make(source)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(source)), *args, api_name="/video")
