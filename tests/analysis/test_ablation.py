"""dcnv3.analysis.ablation: the matching rule on made-up boxes; a model with zero offsets and uniform weights
is unchanged by either override; on the bundled model every number matches an independent rerun
(a fresh copy with that layer's DCNv3 ``offset`` (or ``mask``) Linear zeroed, run by YOLO.predict,
matched here with plain numpy); the folder summary; the CLI's table and JSON."""

import json
import math

import numpy as np
import pytest
from child_process import cli
from repo_paths import BUNDLED_DCNV3, BUNDLED_PLAIN, EXAMPLES

from dcnv3.analysis.ablation import (
    ALL_LAYERS,
    Variant,
    ablate,
    ablate_folder,
    default_variants,
    match_detections,
    run_ablation,
)
from dcnv3.analysis.probe import Detections
from dcnv3.yolo.loading import load_model

SHAPES = EXAMPLES / "shapes_0.jpg"  # the bundled model finds 2 shapes in it at its training size, 320
IMGSZ = 320


def detections(boxes, classes, scores=None) -> Detections:
    boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.full(len(boxes), 0.5, np.float32) if scores is None else np.array(scores, np.float32)
    return Detections(boxes, scores, np.array(classes, dtype=np.int64), {0: "a", 1: "b"})


def test_matching_is_greedy_by_iou_within_a_class():
    before = detections(
        [[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]], [0, 0, 0, 1], [0.9, 0.8, 0.7, 0.6]
    )
    # after[0] overlaps both before[0] and before[1] (identical boxes, IoU 0.8): the tie goes to the lower
    # baseline index; after[1] is before[2] shifted (IoU 64/136); after[2] has before[3]'s box but another
    # class; after[3] is new.
    after = detections(
        [[0, 0, 10, 8], [52, 52, 62, 62], [100, 100, 110, 110], [200, 200, 210, 210]],
        [0, 0, 0, 0],
        [0.95, 0.5, 0.6, 0.3],
    )
    matching = match_detections(before, after, match_iou=0.4)
    assert matching.pairs.tolist() == [[0, 0], [2, 1]]
    assert matching.ious == pytest.approx([0.8, 64 / 136])
    assert matching.lost.tolist() == [1, 3] and matching.gained.tolist() == [2, 3]
    # At the default 0.5 the shifted box (IoU 0.47) no longer counts as the same detection.
    assert match_detections(before, after).pairs.tolist() == [[0, 0]]
    empty = match_detections(before, detections([], []))
    assert empty.pairs.shape == (0, 2) and empty.lost.tolist() == [0, 1, 2, 3] and empty.gained.size == 0


def test_default_variants_cover_each_layer_each_kind_then_all():
    variants = default_variants(["a", "b"])
    assert [v.name for v in variants] == [
        "a · grid",
        "b · grid",
        "a · uniform",
        "b · uniform",
        f"{ALL_LAYERS} · grid",
        f"{ALL_LAYERS} · uniform",
    ]
    with pytest.raises(ValueError, match="unknown ablation kind"):
        Variant(("a",), "sideways")


def test_zero_offsets_and_uniform_weights_are_unchanged_by_either_override(untrained_dcnv3):
    """The untrained YAML's DCNv3 layers start at zero offsets and uniform softmax weights, so forcing
    either changes no number the head outputs, and every detection is kept exactly."""
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    run = run_ablation(untrained_dcnv3, image, imgsz=128)
    assert len(run.variants) == 2 * 5 + 2
    for raw in run.predictions:
        np.testing.assert_array_equal(raw.values, run.baseline.values)
    result = run.compare(conf=0.0, iou=0.7)  # an untrained head scores everything near 1e-4
    assert len(result.baseline) > 10
    for variant in result.results:
        assert (variant.kept, variant.lost, variant.gained) == (len(result.baseline), 0, 0)
        assert variant.mean_iou == pytest.approx(1.0) and variant.mean_score_change == 0.0


def _iou(a, b) -> float:
    """IoU of two xyxy boxes, written out (the independent reference of torchvision's box_iou)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _reference(baseline, variant, threshold=0.5):
    """(kept, lost, gained, mean IoU, mean score change) by a plain greedy loop over all pairs."""
    candidates = sorted(
        (
            (_iou(a, b), i, j)
            for i, (a, ca) in enumerate(zip(baseline[0], baseline[2]))
            for j, (b, cb) in enumerate(zip(variant[0], variant[2]))
            if ca == cb and _iou(a, b) >= threshold
        ),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    pairs, used_i, used_j = [], set(), set()
    for iou, i, j in candidates:
        if i not in used_i and j not in used_j:
            pairs.append((iou, i, j))
            used_i.add(i)
            used_j.add(j)
    kept = len(pairs)
    mean_iou = sum(p[0] for p in pairs) / kept if kept else math.nan
    change = sum(variant[1][j] - baseline[1][i] for _, i, j in pairs) / kept if kept else math.nan
    return kept, len(baseline[0]) - kept, len(variant[0]) - kept, mean_iou, change


def _predict(model):
    result = model.predict(str(SHAPES), imgsz=IMGSZ, conf=0.25, iou=0.7, verbose=False)[0]
    return (
        result.boxes.xyxy.numpy().tolist(),
        result.boxes.conf.numpy().tolist(),
        result.boxes.cls.numpy().astype(int).tolist(),
    )


@pytest.fixture(scope="module")
def bundled_result(bundled_dcnv3):
    names = ["model.4.m.0.cv2.dcnv3", "model.6.m.0.cv2.dcnv3"]
    variants = [
        Variant((names[0],), "grid"),
        Variant((names[1],), "uniform"),
        Variant(tuple(name for name, _ in _deformable_layers(bundled_dcnv3)), "grid", all_layers=True),
    ]
    return ablate(bundled_dcnv3, SHAPES, imgsz=IMGSZ, variants=variants)


def _deformable_layers(model):
    from dcnv3 import dcnv3_modules

    return dcnv3_modules(model.model)


def test_bundled_numbers_match_a_rerun_with_the_projections_zeroed(bundled_dcnv3, bundled_result, report):
    """Offsets to the grid = the layer's ``offset`` Linear zeroed; uniform weights of a softmax =
    its ``mask`` Linear zeroed (all logits equal). Each rerun is a fresh copy run by YOLO.predict."""
    baseline = _predict(bundled_dcnv3)
    np.testing.assert_allclose(bundled_result.baseline.boxes, baseline[0], atol=1e-3)
    assert len(baseline[0]) == 2
    for result in bundled_result.results:
        changed = load_model(BUNDLED_DCNV3)  # a copy of its own (a used YOLO holds a predictor's lock)
        modules = dict(changed.model.named_modules())
        for name in result.variant.layers:
            head = modules[name].offset if result.variant.kind == "grid" else modules[name].mask
            head.weight.data.zero_()
            head.bias.data.zero_()
        kept, lost, gained, mean_iou, change = _reference(baseline, _predict(changed))
        assert (result.kept, result.lost, result.gained) == (kept, lost, gained), result.variant.name
        assert result.mean_iou == pytest.approx(mean_iou, abs=1e-4)
        assert result.mean_score_change == pytest.approx(change, abs=1e-4)
        report(
            f"ablation, bundled DCNv3 on shapes_0 at {IMGSZ}: {result.variant.name}: kept {kept} lost {lost} "
            f"gained {gained}, mean IoU {mean_iou:.3f}, mean score change {change:+.3f}"
        )
    # The numbers are not all trivially unchanged: every layer on the grid costs confidence.
    assert bundled_result.result(f"{ALL_LAYERS} · grid").mean_score_change < -0.1


def test_folder_summary_sums_the_images(bundled_dcnv3, bundled_result, tmp_path):
    variants = [result.variant for result in bundled_result.results[:1]]
    folder = ablate_folder(bundled_dcnv3, [SHAPES, EXAMPLES / "shapes_1.jpg"], imgsz=IMGSZ, variants=variants)
    (summary,) = folder.summaries
    first, second = folder.images["shapes_0.jpg"].results[0], folder.images["shapes_1.jpg"].results[0]
    assert summary.images == 2
    assert (summary.kept, summary.lost, summary.gained) == (
        first.kept + second.kept,
        first.lost + second.lost,
        first.gained + second.gained,
    )
    ious = np.concatenate([first.matching.ious, second.matching.ious])
    assert summary.mean_iou == pytest.approx(float(ious.mean()))
    assert first.kept == bundled_result.results[0].kept  # the same image gives the same numbers
    assert json.loads(json.dumps(folder.as_dict()))["variants"][0]["kept"] == summary.kept


def test_cli_ablate_prints_the_table_and_writes_json(bundled_result, tmp_path):
    out = tmp_path / "ablation.json"
    result = cli("ablate", "--model", BUNDLED_DCNV3, "--source", SHAPES, "--json", out)
    assert "all layers · grid" in result.stdout and f"imgsz {IMGSZ}" in result.stdout  # the training size
    payload = json.loads(out.read_text())
    rows = {row["variant"]: row for row in payload["variants"]}
    assert len(rows) == 2 * 5 + 2
    for expected in bundled_result.results:
        row = rows[expected.variant.name]
        assert (row["kept"], row["lost"], row["gained"]) == (expected.kept, expected.lost, expected.gained)
        assert row["mean_iou"] == pytest.approx(expected.mean_iou, abs=1e-4)
    image = payload["images"]["shapes_0.jpg"]
    assert len(image["baseline"]) == 2 and image["match_iou"] == 0.5
    refused = cli("ablate", "--model", BUNDLED_PLAIN, "--source", SHAPES, check=False)
    assert refused.returncode == 2 and "no deformable" in refused.stderr
