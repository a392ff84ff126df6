"""Checkpoints saved by the package before its modules moved still load and compute the same.

The fixtures in tests/data/legacy (made by tests/legacy/make_legacy_checkpoints.py with the
package at commit 675efe1; see the README there) are best.pt and mid-training last.pt files of
DCNv3 on YOLOv8 / YOLO11 / YOLO26, DCNv2 and DCNv4, trained by the package's own trainer. They
pickle the class paths of that commit (``dcnv3.blocks.C2f_DCNv3``, ``dcnv3.module.DCNv3``, ...),
which is what every checkpoint users hold references. Each is loaded with ``load_model`` from the
current tree in a fresh interpreter (nothing imported by other tests helps it) and must reproduce
what the package computed then. The bounds are those of every fixture test
(../shared/fixtures/README.md); their reasons are beside them below.
"""

import io
import json
import pickletools
import textwrap
import zipfile

import pytest
import torch
from child_process import run_python
from repo_paths import DATA, ROOT

LEGACY = DATA / "legacy"
IMAGE = LEGACY / "input.png"
# The frozen expectation, independent of the expected files: each fixture's pickle references
# these modules of the package as it was at 675efe1 (and no other dcnv3.* module). A refactor must
# keep every (module, name) of the expected files importable, or alias it, for these to load.
OLD_MODULES = {
    "dcnv3-yolov8": {"dcnv3.blocks", "dcnv3.module"},
    "dcnv3-yolo11": {"dcnv3.blocks", "dcnv3.module"},
    "dcnv3-yolo26": {"dcnv3.blocks", "dcnv3.module"},
    "dcnv2-yolo11": {"dcnv3.blocks_dcnv2"},
    "dcnv4-yolo11": {"dcnv3.blocks_dcnv4", "dcnv3.dcnv4"},
}
# best.pt as strip_optimizer leaves it; last.pt as BaseTrainer.save_model writes it mid-training.
FORMS = ["best", "last"]

# Box coordinates (raw rows 0-3, network-input pixels): fp32 summation order alone (another
# CPU's convolution kernels, another formulation of the deformable sum) moves them by up to
# ~0.03 px; a wrong reading of a layer moves them by far more. Detections' boxes are corners
# (centre -+ size / 2) in image pixels: each corner may move by 1.5 x the bound, divided by the
# letterbox ratio.
BOX_PX = 0.1
# Class scores (raw rows 4+, in [0, 1]) and detection scores: measured differences ~1e-4 at most.
SCORE = 1e-3
# Offsets, modulation weights, and the outputs of every deformable module and of every layer
# holding one, elementwise |diff| <= LAYER_ABS + LAYER_REL * |expected|: values of about unit
# scale, where fp32 rounding and summation order stay near 1e-5; one layer sampling its regular
# grid instead (offsets zeroed) moves them by 9-44x the bound (measured by the generator, see
# the README).
LAYER_ABS, LAYER_REL = 2e-3, 2e-3
# The letterboxed input must be the very input the expectations were computed from (LetterBox and
# cv2's resize of a PNG are deterministic): sum over ~61k values in [0, 1].
INPUT_SUM = 1e-3


def pickle_contents(path) -> tuple[set[tuple[str, str]], set[str]]:
    """(every (module, name) the pickle of a torch.save zip references (GLOBAL / STACK_GLOBAL),
    every string in it), read opcode by opcode: nothing is imported or run."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    found, strings = set(), []
    for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
        if opcode.name == "GLOBAL":
            found.add(tuple(arg.split(" ", 1)))
        elif opcode.name in {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE"}:
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
    return found, set(strings)


def expected(name: str) -> dict:
    return torch.load(LEGACY / f"{name}_expected.pt", weights_only=True)


@pytest.mark.parametrize("name", list(OLD_MODULES))
def test_fixture_pickles_the_old_class_paths(name):
    """The files still reference the pre-refactor modules: were they regenerated with moved
    classes, the load test below would no longer prove anything about users' checkpoints."""
    recorded = expected(name)
    assert recorded["commit"] == "675efe1"
    assert recorded["forms"] == FORMS
    for form in recorded["forms"]:
        found, strings = pickle_contents(LEGACY / f"{name}_{form}.pt")
        ours = {g for g in found if g[0].split(".")[0] == "dcnv3"}
        assert ours == {tuple(g) for g in recorded["globals"][form]}, (name, form)
        assert {module for module, _ in ours} == OLD_MODULES[name], (name, form)
        # best.pt holds no optimizer state; the mid-training last.pt holds SGD's momentum buffers.
        assert ("momentum_buffer" in strings) == (form == "last"), (name, form)


CHILD = """
    import json
    import numpy as np, torch
    import dcnv3
    from dcnv3.yolo.loading import load_model
    from dcnv3.analysis.probe import inference_model, network_input, probe

    assert dcnv3.__file__.startswith(ROOT), dcnv3.__file__  # the current tree

    def excess(actual, reference):  # largest |diff| / bound (<= 1 passes)
        assert actual.shape == reference.shape, (actual.shape, reference.shape)
        return ((actual - reference).abs() / (LAYER_ABS + LAYER_REL * reference.abs())).max().item()

    def raw_diffs(actual, reference):  # (boxes px, scores)
        assert actual.shape == reference.shape, (actual.shape, reference.shape)
        diff = (actual - reference).abs()
        return diff[:4].max().item(), diff[4:].max().item()

    def container_outputs(detection_model, x, names):
        modules, outputs = dict(detection_model.named_modules()), {}
        handles = [modules[n].register_forward_hook(lambda m, a, out, n=n: outputs.__setitem__(n, out.float()))
                   for n in names]
        with torch.no_grad():
            pred = detection_model(x)
        for handle in handles:
            handle.remove()
        return outputs, pred[0] if isinstance(pred, (list, tuple)) else pred

    # Detections of either set with no partner in the other: one of the same class, box within
    # box_tol, score within SCORE. Not one to one: where two candidates' scores are within the
    # bound of each other and their boxes overlap, NMS may keep either. One scoring below
    # conf + SCORE needs none: such a score may fall on either side of the threshold.
    def unmatched(found, ref, conf, box_tol):
        missing = 0
        for a, b in ((found, ref), (ref, found)):
            for box, score, cls in zip(b["boxes"], b["scores"], b["classes"]):
                fits = ((a["classes"] == cls) & (np.abs(a["boxes"] - box).max(1) <= box_tol)
                        & (np.abs(a["scores"] - score) <= SCORE))
                missing += int(score >= conf + SCORE and not fits.any())
        return missing

    for name, forms in FIXTURES:
        ref = torch.load(f"{LEGACY}/{name}_expected.pt", weights_only=True)
        for form in forms:
            model = load_model(f"{LEGACY}/{name}_{form}.pt")
            names = [n for n, _ in dcnv3.deformable_modules(model.model)]
            assert names == ref["layer_names"], (name, form, names)
            result = probe(model, IMAGE, imgsz=ref["imgsz"], conf=ref["conf"], iou=ref["iou"])
            x, letterbox, _ = network_input(inference_model(model), IMAGE, ref["imgsz"])
            assert list(x.shape) == ref["input_shape"], (list(x.shape), ref["input_shape"])
            assert abs(x.double().sum().item() - ref["input_sum"]) <= INPUT_SUM
            assert result.raw.end2end == ref["end2end"]
            raw_box, raw_score = raw_diffs(torch.from_numpy(result.raw.values), ref["raw"])
            outputs, pred = container_outputs(model.model, x, list(ref["outputs"]))
            pred_box, pred_score = raw_diffs(pred[0], ref["pred"])
            layers = result.layers
            assert [layer.name for layer in layers] == ref["layer_names"]
            assert [layer.weight_kind for layer in layers] == ref["weight_kinds"]
            offsets = [(torch.from_numpy(layer.offsets), ref["offsets"][layer.name]) for layer in layers]
            weights = [(torch.from_numpy(layer.weights), ref["weights"][layer.name]) for layer in layers]
            modules = [(outputs[n], ref["outputs"][n]) for n in ref["outputs"]]
            d = result.detections
            found = {"boxes": d.boxes, "scores": d.scores, "classes": d.classes}
            reference = {k: ref[k].numpy() for k in ("boxes", "scores", "classes")}
            print(json.dumps({
                "name": name, "form": form, "raw_box_px": raw_box, "raw_score": raw_score,
                "pred_box_px": pred_box, "pred_score": pred_score,
                "offsets_x_bound": max(excess(a, b) for a, b in offsets),
                "weights_x_bound": max(excess(a, b) for a, b in weights),
                "outputs_x_bound": max(excess(a, b) for a, b in modules),
                "max_offset_diff": max((a - b).abs().max().item() for a, b in offsets),
                "max_weight_diff": max((a - b).abs().max().item() for a, b in weights),
                "max_output_diff": max((a - b).abs().max().item() for a, b in modules),
                "detections": len(d), "expected_detections": len(ref["boxes"]),
                "unmatched_detections": unmatched(found, reference, ref["conf"], 1.5 * BOX_PX / letterbox.ratio),
            }))
"""


def test_legacy_checkpoints_load_and_reproduce_in_a_clean_process(report):
    fixtures = [(name, FORMS) for name in OLD_MODULES]
    constants = {
        "ROOT": str(ROOT),
        "LEGACY": str(LEGACY),
        "IMAGE": str(IMAGE),
        "FIXTURES": fixtures,
        "BOX_PX": BOX_PX,
        "SCORE": SCORE,
        "LAYER_ABS": LAYER_ABS,
        "LAYER_REL": LAYER_REL,
        "INPUT_SUM": INPUT_SUM,
    }
    header = "".join(f"{key} = {value!r}\n" for key, value in constants.items())
    out = run_python("-c", header + textwrap.dedent(CHILD), cwd=ROOT, timeout=600)
    print(out)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["name"], r["form"]) for r in rows] == [(n, f) for n, forms in fixtures for f in forms], out[-3000:]
    for r in rows:
        where = f"{r['name']} {r['form']}: {r}"
        assert r["raw_box_px"] <= BOX_PX and r["pred_box_px"] <= BOX_PX, where
        assert r["raw_score"] <= SCORE and r["pred_score"] <= SCORE, where
        assert r["offsets_x_bound"] <= 1 and r["weights_x_bound"] <= 1, where
        assert r["outputs_x_bound"] <= 1, where
        assert r["unmatched_detections"] == 0, where
    worst = {key: max(r[key] for r in rows) for key in ("raw_box_px", "raw_score", "max_offset_diff")}
    report(
        f"legacy checkpoints (675efe1): {len(rows)} files of {len(fixtures)} networks load and reproduce; "
        f"worst boxes {worst['raw_box_px']:.2g} px, scores {worst['raw_score']:.2g}, "
        f"offsets {worst['max_offset_diff']:.2g} cells"
    )
