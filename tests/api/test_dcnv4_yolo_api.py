"""The app's /sampling API on the DCNv4 fork layout (tests/data/forks/extra_v11_dcnv4): every
point lies where DCNv4 samples, computed here from the fork's own recorded ``offset_mask``
(not from DeformLens' probe) with DCNv4's sampling formula (``dcnv3.ops.dcnv4`` docstring, as
DCNv4's kernel forms it), to 0.5 px; the weights are the fork's signed scalars, kind "free".

Why 0.5 px holds with room: the fork's and our offsets differ by < 2e-3 cells in fp32 (the
fixture bound), which at stride 32 and the letterbox ratio 0.59 is < 0.11 px; a wrong point order
((dy, dx), rows for columns) or a wrong cell moves points by whole cells (>= 13 px at stride 8).
"""

import math
import shutil

import pytest
import torch
from app_server import served_app
from gradio_client import Client, handle_file
from repo_paths import ROOT

from viz_app.state.analyser import Analyser
from viz_app.state.models import ModelRegistry

FIXTURE = ROOT / "tests" / "data" / "forks" / "extra_v11_dcnv4"
BUS = ROOT / "assets" / "examples" / "bus.jpg"  # the image the fork's forward was recorded on
MODEL = "dcnv4_fork.pt"
# Layer: its input stride in the image. The fixture's 640 px letterbox of the 810 x 1080 bus.jpg
# is 480 x 640 with no padding (ratio 640/1080): its README and input_shape.
LAYERS = {"model.4.m.0.cv2.dcnv4": 8, "model.6.m.0.m.1.cv2.dcnv4": 16, "model.8.m.0.m.0.cv2.dcnv4": 32}
RATIO, KERNEL, PAD, DILATION, OFFSET_SCALE = 640 / 1080, 3, 1, 1, 1.0


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    shutil.copy(FIXTURE / "extra_v11_dcnv4_best.pt", folder / MODEL)
    registry = ModelRegistry(models_dir=folder)
    with served_app(registry, Analyser(registry)) as url:
        yield Client(url, verbose=False)


@pytest.fixture(scope="module")
def expected():
    return torch.load(FIXTURE / "extra_v11_dcnv4_expected.pt", weights_only=True)


@pytest.mark.parametrize(
    "layer,x,y",
    [
        ("model.4.m.0.cv2.dcnv4", 400.5, 500.5),
        ("model.6.m.0.m.1.cv2.dcnv4", 10.2, 1000.7),
        ("model.8.m.0.m.0.cv2.dcnv4", 805.0, 3.0),
    ],
)
def test_sampling_points_are_where_the_forks_dcnv4_samples(client, expected, layer, x, y):
    _, payload = client.predict(handle_file(str(BUS)), MODEL, layer, x, y, api_name="/sampling")
    assert payload["layer"] == layer and payload["weight_kind"] == "free"
    stride = LAYERS[layer]
    row, col = math.floor(y * RATIO / stride), math.floor(x * RATIO / stride)
    assert payload["cell"] == [row, col]
    offset_mask = expected["layers"][layer + ".offset_mask"][0, row, col]  # (C_om,) the fork's row
    groups, points = payload["groups"], KERNEL * KERNEL
    assert groups == 1 and len(payload["points"]) == groups * points
    centre = (DILATION * (KERNEL - 1)) // 2
    for point in payload["points"]:
        g, p = point["group"], point["k"]
        i, j = divmod(p, KERNEL)  # DCNv4's order: p = i*K + j, i walks x, j walks y
        base = g * 3 * points
        dx, dy = offset_mask[base + 2 * p].item(), offset_mask[base + 2 * p + 1].item()
        scalar = offset_mask[base + 2 * points + p].item()
        # DCNv4's kernel: x = w*stride - pad + c + offset_scale*(i*dilation - c + dx) (layer stride 1)
        fx = col - PAD + centre + OFFSET_SCALE * (i * DILATION - centre + dx)
        fy = row - PAD + centre + OFFSET_SCALE * (j * DILATION - centre + dy)
        want_x, want_y = (fx + 0.5) * stride / RATIO, (fy + 0.5) * stride / RATIO
        assert abs(point["x"] - want_x) < 0.5 and abs(point["y"] - want_y) < 0.5, (point, want_x, want_y)
        assert point["weight"] == pytest.approx(scalar, abs=2e-3 + 2e-3 * abs(scalar))
        assert point["negative"] == (point["weight"] < 0)
