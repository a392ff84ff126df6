"""DCNv3 on YOLO11 and YOLO26 (``dcnv3-yolo11.yaml``, ``dcnv3-yolo26.yaml``).

Every scale builds as its stock twin does, with C3k2_DCNv3 at P3-P5 of the backbone; at scale n
the models train on the shapes data (CLI, a child process), then validate, predict, probe, export
to ONNX (checked in onnxruntime) and load back with ``dcnv3.yolo.loading.load_model``, as best.pt, as
last.pt and as a checkpoint saved mid-training (the network under ``ema``).
"""

import copy
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from child_process import run_python
from ultralytics import YOLO
from ultralytics.nn import tasks
from ultralytics.nn.modules.block import Bottleneck, C3k, C3k2

from dcnv3 import dcnv3_modules
from dcnv3.analysis.probe import probe
from dcnv3.yolo import MODEL_FAMILIES, model_yaml
from dcnv3.yolo.blocks.dcnv3 import Bottleneck_DCNv3, C3k2_DCNv3, C3k_DCNv3
from dcnv3.yolo.loading import load_model

FAMILIES = ("yolo11", "yolo26")
DCNV3_LAYERS = {4: 8, 6: 16, 8: 32}  # backbone index: stride of the block's input
TWIN_OF = {Bottleneck: Bottleneck_DCNv3, C3k: C3k_DCNv3}
IMGSZ = 64


def parsed_layers(yaml_name: str) -> torch.nn.Sequential:
    """The layers parse_model builds for a model YAML name (the scale read from the name, as
    ``YOLO(name)`` does), on the meta device: shapes and parameter counts without memory or
    initialisation, so even scale x is cheap."""
    with torch.device("meta"):
        cfg = tasks.yaml_model_load(yaml_name)
        layers, _ = tasks.parse_model(copy.deepcopy(cfg), ch=3, verbose=False)
    return layers


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_families_are_shipped_and_named():
    assert set(FAMILIES) <= set(MODEL_FAMILIES)
    assert model_yaml("m", family="yolo26") == "dcnv3-yolo26m.yaml"
    with pytest.raises(ValueError, match="family"):
        model_yaml("n", family="yolov5")
    with pytest.raises(ValueError, match="yolov8 only"):
        model_yaml("n", neck=True, family="yolo11")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_scale_parses_like_its_stock_twin(family, report):
    """ultralytics' own scaling applies to C3k2_DCNv3 as to C3k2: width, repeats, and the C3k
    inner blocks at m/l/x (c3k=True there even where the YAML says False, as stock does). Every
    other layer is identical to stock's, parameter for parameter, which also proves the channels
    flowing between layers match (each layer's weights are sized by its input)."""
    for scale in "nsmlx":
        ours, stock = parsed_layers(model_yaml(scale, family=family)), parsed_layers(f"{family}{scale}.yaml")
        assert len(ours) == len(stock)
        for index, (layer, twin) in enumerate(zip(ours, stock)):
            if index in DCNV3_LAYERS:
                assert type(layer) is C3k2_DCNv3 and type(twin) is C3k2
                assert [type(block) for block in layer.m] == [TWIN_OF[type(block)] for block in twin.m]
                assert layer.cv1.conv.weight.shape == twin.cv1.conv.weight.shape
                assert layer.cv2.conv.weight.shape == twin.cv2.conv.weight.shape
            else:
                assert type(layer) is type(twin) and layer.np == twin.np, f"layer {index}"
        inner = {type(block) for index in DCNV3_LAYERS for block in ours[index].m}
        assert inner == ({C3k_DCNv3} if scale in "mlx" else {Bottleneck_DCNv3, C3k_DCNv3})
        layers = dcnv3_modules(ours)
        assert all(module.group >= 2 and module.channels // module.group <= 16 for _, module in layers)
        report(
            f"dcnv3-{family}{scale}: {parameter_count(ours):,} parameters ({len(layers)} DCNv3 layers, "
            f"groups {sorted({m.group for _, m in layers})}); {family}{scale}: {parameter_count(stock):,}"
        )


def layer_output_shapes(model, size: int = IMGSZ) -> list:
    shapes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape) if torch.is_tensor(out) else None))
        for m in model.model[:-1]
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return shapes


@pytest.mark.parametrize("family", FAMILIES)
def test_scale_n_builds_and_runs_like_stock(family):
    ours, stock = YOLO(model_yaml("n", family=family)).model, YOLO(f"{family}n.yaml").model
    assert layer_output_shapes(ours) == layer_output_shapes(stock)
    head, stock_head = ours.model[-1], stock.model[-1]
    # YOLO26's dual head (one-to-one branch, reg_max 1), YOLO11's single one, both non-legacy.
    assert (getattr(head, "one2one_cv2", None) is not None) == (family == "yolo26")
    assert parameter_count(head) == parameter_count(stock_head) and head.reg_max == stock_head.reg_max
    assert parameter_count(ours) == parameter_count(parsed_layers(model_yaml("n", family=family)))


# Training at scale n on the shapes data, then everything a user does with the checkpoint.


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, tiny_shapes_data, tmp_path_factory) -> tuple[str, Path]:
    """(family, weights folder) after 2 epochs at 64 px on 16 images (about 20 s on 2 cores).

    Without warm-up and with the nominal batch equal to the batch, each of the 4 iterations is
    an optimizer step at the full learning rate: with ultralytics' defaults (warm-up from lr 0,
    gradients accumulated up to 64 images) so short a run makes a single step, at lr 0, and the
    offsets would stay at their zero init."""
    family = request.param
    runs = tmp_path_factory.mktemp(f"runs-{family}")
    log = run_python(
        "-m",
        "dcnv3",
        "train",
        "--model",
        model_yaml("n", family=family),
        "--data",
        tiny_shapes_data,
        "--epochs",
        "2",
        "--imgsz",
        IMGSZ,
        "--batch",
        "8",
        "--workers",
        "0",
        "--project",
        runs,
        "--name",
        family,
        "--set",
        "plots=False",
        "--set",
        "warmup_epochs=0",
        "--set",
        "nbs=8",
    )
    weights = runs / family / "weights"
    assert (weights / "best.pt").is_file() and (weights / "last.pt").is_file(), log[-2000:]
    return family, weights


def mid_training_copy(last: Path, target: Path) -> Path:
    """``last.pt`` as ultralytics writes it while training runs: ``model`` None, the network
    under ``ema`` (our own file, so the test may unpickle it normally)."""
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    torch.save({**checkpoint, "ema": checkpoint["model"], "model": None}, target)
    return target


def sorted_scores(scores) -> np.ndarray:
    return np.sort(np.asarray(scores, np.float32))[::-1]


@pytest.mark.training
def test_trained_model_loads_validates_predicts_and_probes(trained, tiny_shapes_data, tmp_path, report):
    family, weights = trained
    expected_layers = [name for name, _ in dcnv3_modules(YOLO(model_yaml("n", family=family)).model)]
    assert len(expected_layers) == 5
    loaded = {
        name: load_model(path)
        for name, path in [
            ("best.pt", weights / "best.pt"),
            ("last.pt", weights / "last.pt"),
            ("mid-training last.pt", mid_training_copy(weights / "last.pt", tmp_path / "running.pt")),
        ]
    }
    for name, model in loaded.items():
        assert model.deformable_layers == expected_layers, name
        assert type(model.model.model[4]) is C3k2_DCNv3, name
    model = loaded["best.pt"]

    metrics = model.val(
        data=str(tiny_shapes_data),
        imgsz=IMGSZ,
        batch=8,
        workers=0,
        plots=False,
        project=str(tmp_path),
        name="val",
        verbose=False,
    )
    assert 0.0 <= metrics.box.map50 <= 1.0 and np.isfinite(metrics.fitness)

    image = cv2.imread(str(sorted((tiny_shapes_data.parent / "images" / "val").glob("*.jpg"))[0]))
    result = model.predict(image, imgsz=IMGSZ, conf=0.001, verbose=False)[0]
    probed = probe(model, image, imgsz=IMGSZ, conf=0.001)
    # The probe runs ultralytics' own pre- and post-processing: the same detections as predict.
    assert len(probed.detections) == len(result.boxes) > 0
    np.testing.assert_allclose(sorted_scores(probed.detections.scores), sorted_scores(result.boxes.conf), atol=1e-4)
    assert [layer.name for layer in probed.layers] == expected_layers
    modules = dict(dcnv3_modules(model.model))
    for layer in probed.layers:
        index = int(layer.name.split(".")[1])
        stride = DCNV3_LAYERS[index]
        assert layer.stride == stride and layer.stage == f"P{stride.bit_length() - 1}/{stride} backbone"
        assert layer.grid == tuple(side // layer.stride for side in probed.letterbox.input_shape)
        assert layer.offsets.shape == (*layer.grid, modules[layer.name].group, 9, 2)
        np.testing.assert_allclose(layer.weights.sum(-1), 1.0, atol=1e-5)
    # The offset projections start at zero; two epochs of gradient must have moved them.
    moved = max(float(np.abs(layer.offsets).max()) for layer in probed.layers)
    assert moved > 1e-4

    if family == "yolo26":  # the one-to-one head, NMS-free, as predict(nms=False) uses it
        one_to_one = load_model(weights / "best.pt")
        probed = probe(one_to_one, image, imgsz=IMGSZ, conf=0.001, nms=False)
        result = one_to_one.predict(image, imgsz=IMGSZ, conf=0.001, nms=False, verbose=False)[0]
        assert len(probed.detections) == len(result.boxes) > 0 and len(probed.layers) == 5
        np.testing.assert_allclose(sorted_scores(probed.detections.scores), sorted_scores(result.boxes.conf), atol=1e-4)
    report(
        f"dcnv3-{family}n: trained 2 epochs on 16 shapes images at {IMGSZ} px; best.pt, last.pt and a "
        f"mid-training last.pt load with {len(expected_layers)} DCNv3 layers; max |offset| {moved:.3g} cells; "
        f"val mAP50 {metrics.box.map50:.3f}"
    )


def topk_rows_difference(rows: np.ndarray, candidates: np.ndarray, expected_rows: np.ndarray) -> float:
    """How far the ONNX one-to-one head's top-k ``rows`` (k, 6: x1, y1, x2, y2, score, class) are
    from PyTorch's. Row by row comparison is wrong here: after 2 epochs many (anchor, class) scores
    are nearly equal, and a rounding difference swaps which of two tied candidates is kept (a
    class id off by 1 in an earlier CI run). So each row is checked against PyTorch's candidates
    (anchors, 4 + nc) before the top-k: some anchor must have its box and, for its class, its
    score; and the k scores, sorted, must be PyTorch's k scores (ties do not change those)."""
    boxes, scores = candidates[:, :4], candidates[:, 4:]
    row_distance = 0.0
    for row in rows:
        box_gap = np.abs(boxes - row[:4]).max(-1)  # (anchors,)
        score_gap = np.abs(scores[:, int(round(row[5]))] - row[4])
        row_distance = max(row_distance, float(np.maximum(box_gap, score_gap).min()))
    score_distance = float(np.abs(np.sort(rows[:, 4]) - np.sort(expected_rows[:, 4])).max())
    return max(row_distance, score_distance)


@pytest.mark.training
def test_trained_model_exports_to_onnx_matching_torch(trained, tmp_path, report):
    ort = pytest.importorskip("onnxruntime")
    family, weights = trained
    checkpoint = shutil.copyfile(weights / "best.pt", tmp_path / f"dcnv3-{family}n.pt")
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    heads = [False, True] if family == "yolo26" else [False]  # YOLO26: also its NMS-free head
    for one_to_one in heads:
        model = load_model(checkpoint)
        exported = model.export(
            format="onnx",
            imgsz=IMGSZ,
            opset=17,
            simplify=False,
            dynamic=False,
            nms=False if one_to_one else None,
            verbose=False,
        )
        session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
        (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})[:1]
        model.model.end2end = one_to_one
        head = model.model.model[-1]
        candidates = []  # the one-to-one head's decoded (1, anchors, 4 + nc) before its top-k
        head.postprocess = lambda preds, keep=head.postprocess, seen=candidates: seen.append(preds) or keep(preds)
        with torch.no_grad():
            expected = model.model.eval()(x)
        expected = (expected[0] if isinstance(expected, (list, tuple)) else expected).numpy()
        assert actual.shape == expected.shape
        if one_to_one:
            difference = topk_rows_difference(actual[0], candidates[0][0].numpy(), expected[0])
        else:
            difference = float(np.abs(actual - expected).max())
        scale = float(np.abs(expected).max())
        assert difference <= 1e-3 * max(scale, 1.0)
        report(
            f"dcnv3-{family}n ONNX{' (one-to-one head)' if one_to_one else ''}: output {actual.shape}, "
            f"onnxruntime vs PyTorch max |diff| {difference:.2g} (range {scale:.3g})"
        )
