"""The /ablate endpoint through gradio_client: its numbers are dcnv3.analysis.ablation's in-process, boxes in
original-image pixels, the reruns cached per image / model / size (a threshold change reruns
nothing), refusals. The app runs in this process on a free loopback port (see test_app_api.py)."""

import cv2
import pytest
from app_server import served_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from repo_paths import EXAMPLES

from dcnv3.analysis.ablation import ablate
from viz_app.state.context import AppContext
from viz_app.state.models import ModelRegistry

SHAPES = EXAMPLES / "shapes_0.jpg"  # 416 x 416; the bundled model runs at its training size, 320


@pytest.fixture(scope="module")
def app():
    context = AppContext.create(ModelRegistry())
    with served_app(context) as url:
        yield Client(url, verbose=False), context


def call(client, variant="", conf=0.25, iou=0.7, model="dcnv3-yolov8n.pt"):
    return client.predict(handle_file(str(SHAPES)), model, 0, conf, iou, variant, api_name="/ablate")


def test_ablate_matches_the_library_and_is_cached(app, bundled_dcnv3):
    client, context = app
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/ablate"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == [
        "image_path",
        "model_name",
        "imgsz",
        "conf",
        "iou",
        "variant",
    ]
    picture, payload = call(client)
    expected = ablate(bundled_dcnv3, SHAPES, imgsz=320)
    assert payload["model"] == "dcnv3-yolov8n.pt" and payload["imgsz"] == 320
    rows = {row["variant"]: row for row in payload["variants"]}
    assert list(rows) == [result.variant.name for result in expected.results]
    for result in expected.results:
        row = rows[result.variant.name]
        assert (row["kept"], row["lost"], row["gained"]) == (result.kept, result.lost, result.gained)
        assert row["mean_iou"] == pytest.approx(result.mean_iou, abs=1e-4)
        assert row["mean_score_change"] == pytest.approx(result.mean_score_change, abs=1e-4)
    for box, expected_box in zip(payload["baseline"], expected.baseline.boxes):
        assert box["box_xyxy"] == pytest.approx(expected_box.tolist(), abs=0.01)  # 416 px file: not downscaled
    # With nothing lost anywhere on this image, the variant drawn by default is the one that gained a box.
    assert payload["shown_variant"] == "model.4.m.0.cv2.dcnv3 · grid" and rows[payload["shown_variant"]]["gained"] == 1
    image = cv2.imread(picture)
    assert image.shape[1] == 832 and image.shape[0] > 832  # the display scale (x2) and the legend on top
    assert context.ablations.computed == 1

    _, strict = call(client, variant="all layers · grid", conf=0.5)  # other thresholds: NMS on cached reruns
    assert context.ablations.computed == 1 and strict["shown_variant"] == "all layers · grid"
    assert strict["conf"] == 0.5 and len(strict["baseline"]) <= len(payload["baseline"])


def test_ablate_refusals(app):
    client, _ = app
    with pytest.raises(AppError, match="unknown variant 'sideways'"):
        call(client, variant="sideways")
    with pytest.raises(AppError, match="has no deformable layer"):
        call(client, model="yolov8n.pt")
    with pytest.raises(AppError, match="unknown model"):
        call(client, model="nope.pt")
