"""Checkpoints of the extra_modules family's C2f_DCNv2 and C2f_DCNv2_Dynamic (YOLOv8) and
C3k2_DCNv2 and C3k2_DCNv2_Dynamic (YOLO11) load by structure and compute what the family's own
code computed (fixtures: tests/data/forks/dcnv2, built by
tests/forks/make_dcnv2_fixtures.py, see the README there).

Bounds, shared by every fork fixture test (/work/shared/fixtures/README.md):
- boxes (pred rows 0-3, px): 0.1. fp32 summation order alone (another CPU's convolution kernels)
  moves them by up to ~0.03 px; zeroing the offsets or swapping (dx, dy) moves them 126-377 px.
- class scores (rows 4+): 1e-3 (fp32 against fp64: <= 8.3e-5 on these weights).
- offset head outputs (offsets, mask logits): 2e-3 + 2e-3 |x| elementwise.
- /sampling points against deform_conv2d's own sampling: 0.5 px in the original image (a point
  drawn half a pixel away is drawn in the same pixel or the next).
"""

import math
import shutil
import textwrap

import numpy as np
import pytest
import torch
from child_process import run_python
from gradio_client import Client, handle_file
from repo_paths import ROOT
from torchvision.ops import deform_conv2d

pytestmark = pytest.mark.server

FIXTURES = ROOT / "tests" / "data" / "forks" / "dcnv2"
LAYERS = ["model.4.m.0.cv2", "model.4.m.1.cv2", "model.6.m.0.cv2", "model.6.m.1.cv2", "model.8.m.0.cv2"]
# YOLO11: one Bottleneck_DCNV2 at P3, a C3k_DCNv2 of two at P4 and P5 (c3k, as yolo11n has).
LAYERS_V11 = [
    "model.4.m.0.cv2",
    "model.6.m.0.m.0.cv2",
    "model.6.m.0.m.1.cv2",
    "model.8.m.0.m.0.cv2",
    "model.8.m.0.m.1.cv2",
]
LAYOUTS = {
    "extra_dcnv2_v8": ("C2f_DCNv2", LAYERS),
    "extra_dcnv2_dynamic_v8": ("C2f_DCNv2_Dynamic", LAYERS),
    "extra_dcnv2_v11": ("C3k2_DCNv2", LAYERS_V11),
    "extra_dcnv2_dynamic_v11": ("C3k2_DCNv2_Dynamic", LAYERS_V11),
}
BUS = ROOT / "assets" / "examples" / "bus.jpg"
BOX_PX, SCORE, LAYER_ABS, LAYER_REL, SAMPLING_PX = 0.1, 1e-3, 2e-3, 2e-3, 0.5


def test_fixtures_reproduce_the_family_as_best_and_last_in_a_clean_process(report):
    out = run_python(
        "-c",
        textwrap.dedent(f"""
        import sys, cv2, torch
        import dcnv3
        from dcnv3.yolo.loading import load_model
        from dcnv3.analysis.probe import probe
        from ultralytics.data.augment import LetterBox

        image = cv2.imread({str(BUS)!r})
        x = torch.from_numpy(LetterBox((640, 640), auto=True, stride=32)(image=image)[..., ::-1].copy())
        x = x.permute(2, 0, 1)[None].float() / 255

        def excess(actual, reference, absolute, relative):
            assert actual.shape == reference.shape, (actual.shape, reference.shape)
            return ((actual - reference).abs() / (absolute + relative * reference.abs())).max().item()

        for layout, (container, layer_names) in {LAYOUTS!r}.items():
            expected = torch.load(f"{FIXTURES}/{{layout}}_expected.pt", weights_only=True)
            assert list(x.shape) == expected["input_shape"]
            assert abs(x.double().sum().item() - expected["input_sum"]) < 1e-3
            for kind in ("best", "last"):
                model = load_model(f"{FIXTURES}/{{layout}}_{{kind}}.pt")
                assert not any(m.startswith("ultralytics.nn.extra_modules") for m in sys.modules)
                net = model.model.float().eval()
                assert [type(net.model[i]).__name__ for i in (4, 6, 8)] == [container] * 3
                with torch.no_grad(), dcnv3.capture(net) as layers:
                    pred = net(x)[0]
                boxes = (pred[:, :4] - expected["pred"][:, :4]).abs().max().item()
                scores = (pred[:, 4:] - expected["pred"][:, 4:]).abs().max().item()
                assert boxes <= {BOX_PX} and scores <= {SCORE}, (layout, kind, boxes, scores)
                names = sorted({{key.rsplit(".", 1)[0] for key in expected["layers"]}})
                assert sorted(layers) == names == sorted(layer_names), (sorted(layers), names)
                worst = max(excess(layers[key.rsplit(".", 1)[0]].raw[key.rsplit(".", 1)[1]], value,
                                   {LAYER_ABS}, {LAYER_REL}) for key, value in expected["layers"].items())
                assert worst <= 1, (layout, kind, worst)
                records = probe(model, {str(BUS)!r}).layers
                assert [r.name for r in records] == layer_names
                assert {{r.weight_kind for r in records}} == {{"sigmoid"}}
                assert all((r.kernel, r.groups, r.points, r.pad) == (3, 1, 9, 1) for r in records)
                print(layout, kind, f"boxes {{boxes:.2e}} px scores {{scores:.2e}} layers {{worst:.2e}} of the bound")
        print("ok")
        """),
    )
    assert out.strip().endswith("ok"), out
    for line in out.splitlines():
        if line.startswith("extra_dcnv2"):
            report(f"DCNv2 fork fixture {line}")


def sampled_by_deform_conv2d(layer, layer_input: torch.Tensor, row: int, col: int) -> np.ndarray:
    """(K*K, 2) feature-index (x, y) where deform_conv2d samples the K*K points of cell (row, col),
    measured: the x and y index ramps and a constant 1 sampled with the layer's own offsets and
    masks through a one-hot weight per (point, channel), divided by the mask. Bilinear sampling
    returns a ramp's coordinate exactly where all four neighbours are inside the map, which is where
    the constant samples to 1 (NaN for the other points). Row q = ky*K + kx."""
    with torch.no_grad():
        offset, mask, _ = layer.offset_and_mask(layer_input)
    h, w = layer_input.shape[-2:]
    k = layer.kernel_size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    weight = torch.zeros(3 * k * k, 3, k, k, dtype=torch.float64)
    for q in range(k * k):
        ky, kx = divmod(q, k)
        for c in range(3):
            weight[3 * q + c, c, ky, kx] = 1.0
    out = deform_conv2d(
        torch.stack([xs, ys, torch.ones_like(xs)])[None],
        offset.double(),
        weight,
        stride=layer.stride,
        padding=layer.pad,
        dilation=layer.dilation,
        mask=mask.double(),
    )
    sampled = (out[0, :, row, col].reshape(k * k, 3) / mask[0, :, row, col, None].double()).numpy()
    points = sampled[:, :2].copy()
    points[np.abs(sampled[:, 2] - 1) > 1e-9] = np.nan  # a neighbour outside the map: not a coordinate
    return points


@pytest.mark.parametrize(
    "layer_name,x,y",
    [("model.4.m.0.cv2", 400.5, 500.5), ("model.6.m.1.cv2", 250.0, 620.25), ("model.8.m.0.cv2", 600.0, 300.0)],
)
def test_sampling_api_agrees_with_deform_conv2d(dcnv2_app, layer_name, x, y):
    client, reference = dcnv2_app
    _, payload = client.predict(handle_file(str(BUS)), "extra_dcnv2_v8_best.pt", layer_name, x, y, api_name="/sampling")
    probe_record = next(r for r in reference["probe"].layers if r.name == layer_name)
    layer, layer_input = reference["layers"][layer_name]
    letterbox = reference["probe"].letterbox
    stride = probe_record.stride
    row, col = payload["cell"]
    # The clicked point's cell, independently: stride-1 layer with centred padding.
    assert [row, col] == [
        math.floor((y * letterbox.ratio + letterbox.pad[1]) / stride),
        math.floor((x * letterbox.ratio + letterbox.pad[0]) / stride),
    ]
    measured = sampled_by_deform_conv2d(layer, layer_input, row, col)
    k = layer.kernel_size
    points = payload["points"]
    assert len(points) == k * k and {p["group"] for p in points} == {0}
    compared = 0
    for point in points:
        kx, ky = divmod(point["k"], k)  # record order p = kx*K + ky
        fx, fy = measured[ky * k + kx]
        if np.isnan(fx):
            continue
        image_x = ((fx + 0.5) * stride - letterbox.pad[0]) / letterbox.ratio
        image_y = ((fy + 0.5) * stride - letterbox.pad[1]) / letterbox.ratio
        assert abs(point["x"] - image_x) < SAMPLING_PX and abs(point["y"] - image_y) < SAMPLING_PX, (
            point,
            image_x,
            image_y,
        )
        compared += 1
    assert compared >= k * k - 2
    # Sigmoid weights: each in (0, 1), no sum constraint; and they are the mask deform_conv2d used.
    with torch.no_grad():
        _, mask, _ = layer.offset_and_mask(layer_input)
    for point in points:
        kx, ky = divmod(point["k"], k)
        assert point["weight"] == pytest.approx(mask[0, ky * k + kx, row, col].item(), abs=1e-4)


@pytest.fixture(scope="module")
def dcnv2_app(tmp_path_factory):
    import cv2
    from app_server import served_app
    from ultralytics.data.augment import LetterBox

    from dcnv3.analysis.probe import probe
    from dcnv3.yolo.loading import load_model
    from viz_app.state.analyser import Analyser
    from viz_app.state.models import ModelRegistry

    folder = tmp_path_factory.mktemp("dcnv2_models")
    shutil.copy(FIXTURES / "extra_dcnv2_v8_best.pt", folder / "extra_dcnv2_v8_best.pt")
    model = load_model(folder / "extra_dcnv2_v8_best.pt")
    reference_probe = probe(model, str(BUS))
    # Each DCNv2's own input in the same forward (the probe's letterbox), for deform_conv2d itself.
    image = cv2.imread(str(BUS))
    x = torch.from_numpy(LetterBox((640, 640), auto=True, stride=32)(image=image)[..., ::-1].copy())
    x = x.permute(2, 0, 1)[None].float() / 255
    assert tuple(x.shape[2:]) == tuple(reference_probe.letterbox.input_shape)
    net = model.model.float().eval()
    inputs, hooks = {}, []
    for name in LAYERS:
        module = net.get_submodule(name)
        hooks.append(
            module.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, (m, args[0])))
        )
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    registry = ModelRegistry(models_dir=folder)
    with served_app(registry, Analyser(registry)) as url:
        yield Client(url, verbose=False), {"probe": reference_probe, "layers": inputs}
