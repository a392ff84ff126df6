"""The /erf endpoint through gradio_client: the bundled DCNv3 model beside its plain twin, caching,
refusals. The app runs in this process on a free loopback port (see test_app_api.py)."""

import cv2
import pytest
from app_server import served_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from repo_paths import ROOT

from viz_app.state.context import AppContext
from viz_app.state.models import ModelRegistry

SHAPES = ROOT / "assets" / "examples" / "shapes_0.jpg"  # 416 x 416: a triangle top left, a cross bottom right


@pytest.fixture(scope="module")
def app():
    context = AppContext.create(ModelRegistry())
    with served_app(context) as url:
        yield Client(url, verbose=False), context


def erf(client, layer="model.8.m.0.cv2.dcnv3", x=317.0, y=370.0, compare="auto", model="dcnv3-yolov8n.pt"):
    return client.predict(handle_file(str(SHAPES)), model, layer, x, y, compare, api_name="/erf")


def test_erf_dcnv3_beside_its_plain_twin(app):
    client, context = app
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/erf"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == [
        "image_path",
        "model_name",
        "layer",
        "x",
        "y",
        "compare_model",
    ]
    picture, payload = erf(client)
    first, second = payload["models"]
    assert (first["model"], second["model"]) == ("dcnv3-yolov8n.pt", "yolov8n.pt")
    for entry in (first, second):
        assert entry["kind"] == "cell" and entry["module"] == "model.8.m.0.cv2" and entry["stride"] == 32
        # The bundled models run at their training size, 320: (317, 370) on the 416 px image (ratio
        # 320 / 416) is network input (243.8, 284.6) -> P5 cell (row 8, col 7).
        assert entry["cell"] == [8, 7]
        assert 0 < entry["areas_px2"]["50%"] < entry["areas_px2"]["90%"] < 416 * 416
    assert payload["area_ratio_50"] == pytest.approx(first["areas_px2"]["50%"] / second["areas_px2"]["50%"], rel=1e-3)
    image = cv2.imread(picture)
    assert image.shape[1] > 2 * 600 and image.shape[0] > 600  # two panels side by side

    computed = context.fields.computed
    assert erf(client)[1] == payload  # same request: served from the cache
    assert context.fields.computed == computed

    _, alone = erf(client, compare="")
    assert [m["model"] for m in alone["models"]] == ["dcnv3-yolov8n.pt"] and "area_ratio_50" not in alone
    assert alone["models"][0]["areas_px2"] == first["areas_px2"]


def test_erf_refusals(app):
    client, _ = app
    with pytest.raises(AppError, match=r"no layer 'model\.99'"):
        erf(client, layer="model.99")
    with pytest.raises(AppError, match="outside the 416 x 416 image"):
        erf(client, x=500.0)
    with pytest.raises(AppError, match="unknown model"):
        erf(client, compare="nope.pt")
    with pytest.raises(AppError, match="no plain twin"):
        erf(client, model="yolov8n.pt", layer="model.6")
