"""Build the legacy-checkpoint fixtures in tests/data/legacy/ with the package as it was at a commit.

The package's modules are about to move (``dcnv3.blocks.C2f_DCNv3`` may become
``dcnv3.yolo.blocks.C2f_DCNv3``); checkpoints pickle the class paths of the code that saved
them, so these files, saved by the package before the move, prove that the checkpoints users
hold keep loading and computing the same afterwards (``tests/yolo/test_legacy_checkpoints.py``).

Regenerate (from the repository root; the frozen source is a worktree at the commit the
fixtures were made with, 675efe1, never the working tree)::

    git worktree add /tmp/legacy_src 675efe1
    YOLO_OFFLINE=true GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 \
        .venv/bin/python tests/legacy/make_legacy_checkpoints.py --src /tmp/legacy_src \
        --out tests/data/legacy --work /tmp/legacy_work
    git worktree remove /tmp/legacy_src

(5-12 minutes on 2 shared CPU cores). Every step that runs the package runs in a child process whose
``sys.path`` starts with ``--src`` and whose working directory is ``--src``; each checks that
``dcnv3.__file__`` lies there. The script refuses a ``--src`` with local changes.

1. Data: ``python -m dcnv3 data`` of that package, 64 train and 4 val images at 64 px, seed 7.
2. Training, per fixture: the package's own trainer (``dcnv3.training.configured_trainer``, i.e.
   ``DCNv3DetectionTrainer``, what ``python -m dcnv3 train`` runs, with its health monitor) from
   the package's shipped model YAML at scale n (``YOLO("dcnv3-yolov8n.yaml")`` after
   ``yolo.register()``; ``dcnv3/cfg/<operator>-<family>.yaml``), 10 epochs on the CPU at 64 px,
   batch 8 (80 steps, no warm-up, mosaic off, validation after the last epoch only), SGD (what
   ``optimizer=auto`` picks for any run past 10k iterations; one fp16 momentum buffer per
   parameter in last.pt) at lr0 0.01, with the
   bundled model's offset settings (offset/mask projections at 10x the learning rate, no weight
   decay: ``--offset-lr-scale 10 --offset-no-decay``). Departures from a user's run, each stated
   in the README:
   - width: the n scale's width is narrowed from 0.25 to 0.125 (``WIDTH``; depth and max
     channels as n) in the trainer's ``get_model``, as the project's training demo does
     (assets/training_demo/dcnv3-yolov8n-half.yaml): 0.67-0.84 M parameters, 1.7-2 MB best.pt
     and 3.2-3.9 MB last.pt instead of 2.5-3 M parameters and ~6 / ~12 MB. Same layers, same
     classes, same module arguments except the channel counts; the stored ``model.yaml`` says
     ``scales.n = [.., 0.125, ..]``;
   - perturbation (the ``on_train_epoch_end`` callback of the last epoch, so after the last step
     and before the final save; the same draws in the model and in the EMA that is saved): 80 steps
     leave a head that scores every anchor ~0.002 alike (detections would be a coin toss under
     the test's score bound) and offsets of a few tenths of a cell. A ``torch.Generator`` seeded
     per fixture (``perturb_seed``) adds ``gain / sqrt(fan_in)`` times N(0, 1) to every weight
     tensor of every deformable module's ``sampling_head_parameters()`` (DCNv3 ``offset`` and
     ``mask``, DCNv4 ``offset_mask``, DCNv2 ``conv_offset_mask``; gain ``OFFSET_GAIN``) and to
     the class-score convolution of every level of the Detect head (``cv3[i][-1]``, and
     ``one2one_cv3[i][-1]`` on YOLO26; gain ``HEAD_GAIN``), whose bias is set to ``HEAD_BIAS``.
3. The files ultralytics leaves a user, per fixture:
   - ``<name>_best.pt``: best.pt after training, as ``strip_optimizer`` leaves it (``model`` the
     fp16 EMA network, ``ema``/``optimizer``/``updates`` None, ``epoch`` -1). A finished run's
     last.pt is stripped the same way and holds the same network: that is this file again;
   - ``<name>_last.pt``: last.pt as ``BaseTrainer.save_model`` wrote it at the end of the last
     epoch (copied in the ``on_model_save`` callback, before the final strip), what a user whose
     run was stopped holds: ``model`` None, the fp16 EMA network under ``ema``, ``updates``, the
     full fp16 optimizer state, ``scaler``, ``train_args``, ``train_metrics``, ``train_results``,
     ``git`` (of the checkout ultralytics is installed in). Checked to hold best.pt's network.
4. Expected outputs (``<name>_expected.pt``, plain tensors, loads with ``weights_only=True``),
   computed by that package's ``dcnv3.loading.load_model`` from best.pt and ``dcnv3.probe.probe``
   on ``input.png`` at imgsz ``IMGSZ``: ``raw`` (the probe's raw head output on the letterboxed
   input, (4 + nc, A)); ``pred`` (the unfused fp32 eval ``DetectionModel`` forward of the same
   input); the detections at ``conf`` / ``iou`` (boxes xyxy in image pixels, scores, classes);
   every deformable layer's ``offsets`` and ``weights`` as ``result.layers`` holds them, by name,
   in order; ``outputs``, the outputs of every deformable module and of every top-level layer
   holding one (the package's C2f / C3k2 containers); the input's shape and sum; and, per file,
   the ``dcnv3.*`` globals its pickle references (module, name). ``conf`` is picked so that the
   test's bounds cannot change the detections (``stable_conf``).

``input.png`` (written if absent) is the top 312 rows of assets/examples/shapes_0.jpg halved to
208 x 156 px and stored losslessly, so no JPEG decoder can change it; letterboxed at 160 it is a
160 x 128 input (rect, stride 32) with padding.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import pickletools
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Each fixture is the shipped YAML of that name at scale n. Left out, for the 30 MB budget (each
# fixture is ~5-6 MB with its last.pt): dcnv3-neck-yolov8 (the classes of dcnv3-yolov8, placed in
# the neck too), dcnv2-yolov8 and dcnv4-yolov8 (C2f_DCNv2 / C2f_DCNv4 around the same bottleneck
# and operator classes as the yolo11 fixtures' C3k2 / C3k).
FIXTURES = ("dcnv3-yolov8", "dcnv3-yolo11", "dcnv3-yolo26", "dcnv2-yolo11", "dcnv4-yolo11")
FORMS = ("best", "last")
WIDTH = 0.125  # the n scale's width multiplier, narrowed from 0.25
OFFSET_GAIN, HEAD_GAIN, HEAD_BIAS = 0.5, 10.0, -3.0
OFFSET_LR_SCALE, OFFSET_WEIGHT_DECAY = 10.0, False
IMGSZ, IOU = 160, 0.7
# The test's bounds (../shared/fixtures/README.md), used here to pick a detection threshold no score lies near
# and to report how far a wrong sampling moves the recorded outputs.
BOX_PX, SCORE, LAYER_ABS, LAYER_REL = 0.1, 1e-3, 2e-3, 2e-3
TRAIN = {
    "epochs": 10,
    "imgsz": 64,
    "batch": 8,
    "mosaic": 0.0,
    "close_mosaic": 0,
    "workers": 0,
    "device": "cpu",
    "seed": 0,
    "deterministic": True,
    "optimizer": "SGD",
    "lr0": 0.01,
    "momentum": 0.937,
    "warmup_epochs": 0,
    "nbs": 8,
    "plots": False,
    "amp": False,
}
DATA = {"n_train": 64, "n_val": 4, "seed": 7, "imgsz": 64}
OLD_MODULES = ("dcnv3.blocks", "dcnv3.module", "dcnv3.dcnv4", "dcnv3.blocks_dcnv4", "dcnv3.dcnv2", "dcnv3.blocks_dcnv2")


def perturb_seed(name: str) -> int:
    return zlib.crc32(name.encode())


def pickled_globals(path: Path) -> list[tuple[str, str]]:
    """Every (module, name) a torch.save zip's data.pkl references (GLOBAL / STACK_GLOBAL)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    found, strings = set(), []
    for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
        if opcode.name == "GLOBAL":
            module, name = arg.split(" ", 1)
            found.add((module, name))
        elif opcode.name in {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE"}:
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# Child-process steps: run with the frozen source first on sys.path
# ---------------------------------------------------------------------------------------------


def _frozen_package(src: Path):
    sys.path.insert(0, str(src))
    import dcnv3

    location = Path(dcnv3.__file__).resolve()
    assert location.is_relative_to(src.resolve()), f"dcnv3 imported from {location}, not from {src}"
    return dcnv3


def step_train(src: Path, name: str, data: Path, work: Path, out: Path) -> None:
    _frozen_package(src)
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    from dcnv3 import yolo
    from dcnv3.sampling_hooks import is_deformable
    from dcnv3.training import configured_trainer

    yolo.prepare_runtime()
    yolo.register()

    # The package's DCNv3DetectionTrainer, with the bundled model's offset settings.
    class NarrowTrainer(configured_trainer(OFFSET_LR_SCALE, OFFSET_WEIGHT_DECAY)):
        def get_model(self, cfg=None, weights=None, verbose=True):
            cfg = yaml_model_load(cfg) if not isinstance(cfg, dict) else cfg
            depth, _, max_channels = cfg["scales"][cfg["scale"]]
            cfg["scales"][cfg["scale"]] = [depth, WIDTH, max_channels]
            return super().get_model(cfg=cfg, weights=weights, verbose=verbose)

    def perturb(trainer) -> None:
        """After the last step, before the final save: seeded noise on the offset/mask projections
        and on the class-score convolutions, whose bias becomes HEAD_BIAS; the same in the EMA."""
        if trainer.epoch != trainer.epochs - 1:
            return
        generator = torch.Generator().manual_seed(perturb_seed(name))
        for index, model in enumerate((trainer.model, trainer.ema.ema)):  # the same draws for both
            generator.manual_seed(perturb_seed(name))
            sampling = [p for m in model.modules() if is_deformable(m) for p in m.sampling_head_parameters()]
            head = model.model[-1]
            scores = [branch[-1] for branch in [*head.cv3, *getattr(head, "one2one_cv3", [])]]
            targets = [(p, OFFSET_GAIN) for p in sampling if p.ndim > 1] + [(c.weight, HEAD_GAIN) for c in scores]
            with torch.no_grad():
                for parameter, gain in targets:
                    noise = torch.randn(parameter.shape, generator=generator) * (gain / parameter[0].numel() ** 0.5)
                    parameter.add_(noise.to(parameter))
                for conv in scores:
                    conv.bias.fill_(HEAD_BIAS)
            if index:
                print(f"perturbed {len(targets) - len(scores)} offset/mask and {len(scores)} class-score weights")

    def keep_last(trainer) -> None:
        if trainer.best_fitness == trainer.fitness:  # save_model also wrote best.pt: the same network
            shutil.copyfile(trainer.last, out / f"{name}_last.pt")  # as save_model wrote it, before the strip
            print(f"kept the mid-training last.pt of epoch {trainer.epoch}")

    detector = YOLO(f"{name}n.yaml")
    detector.add_callback("on_train_epoch_end", perturb)
    detector.add_callback("on_model_save", keep_last)
    detector.train(
        data=str(data), trainer=NarrowTrainer, project=str(work), name=name, exist_ok=True, val=False, **TRAIN
    )
    shutil.copyfile(Path(detector.trainer.best), out / f"{name}_best.pt")


def recorded_modules(detection_model) -> list[str]:
    """The qualified names whose outputs are recorded: every deformable module and every top-level
    layer (``model.<i>``) holding one (the package's containers: C2f_DCNv3, C3k2_DCNv4, ...)."""
    import dcnv3

    names = [name for name, _ in dcnv3.deformable_modules(detection_model)]
    layers = sorted({".".join(name.split(".")[:2]) for name in names}, key=lambda n: int(n.split(".")[1]))
    return layers + names


def module_outputs(detection_model, x, names: list[str]) -> tuple[dict, object]:
    """(outputs of the named modules, the model's output) for one eval forward of ``x``."""
    import torch

    modules = dict(detection_model.named_modules())
    outputs, handles = {}, []
    for name in names:
        hook = lambda module, args, output, name=name: outputs.__setitem__(name, output.detach().float().clone())  # noqa: E731
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            pred = detection_model(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, pred[0] if isinstance(pred, (list, tuple)) else pred


def unmatched_detections(actual, expected, conf: float, box_tol: float, score_tol: float) -> int:
    """How many detections (boxes, scores, classes arrays) of either set have no partner in the
    other: one of the same class, every box coordinate within ``box_tol`` and score within
    ``score_tol``. Not one to one: where two candidates' scores are within the bound of each
    other and their boxes overlap, NMS may keep either, and of near-duplicates either partners.
    Detections scoring below ``conf + score_tol`` need none: such a score may fall on either side
    of the threshold within the bound."""
    import numpy as np

    missing = 0
    for (boxes, scores, classes), (ref_boxes, ref_scores, ref_classes) in ((actual, expected), (expected, actual)):
        for box, score, cls in zip(ref_boxes, ref_scores, ref_classes):
            fits = (classes == cls) & (np.abs(boxes - box).max(1) <= box_tol) & (np.abs(scores - score) <= score_tol)
            missing += int(score >= conf + score_tol and not fits.any())
    return missing


def stable_conf(raw, image_shape, ratio: float, iou: float) -> float:
    """A confidence threshold for the recorded detections that the test's bounds cannot upset:
    between 3 and 20 detections score at least SCORE above it, and ``unmatched_detections`` stays
    0 when the raw predictions move by random amounts within the bounds (50 draws). The lowest
    such threshold among the top anchors' scores less SCORE, walking down from the highest."""
    import numpy as np

    best = np.sort(raw.values[4:].max(0))[::-1][:60]
    rng = np.random.default_rng(0)
    chosen = None
    for score in best[2:]:
        conf = float(score - 1.5 * SCORE)
        reference = raw.detections(image_shape, conf, iou)
        sure = int((reference.scores >= conf + SCORE).sum())
        if sure < 3:
            continue
        if sure > 20:
            break
        reference = (reference.boxes, reference.scores, reference.classes)
        for _ in range(50):
            moved = copy.copy(raw)
            moved.values = raw.values + np.concatenate(
                [rng.uniform(-BOX_PX, BOX_PX, raw.values[:4].shape), rng.uniform(-SCORE, SCORE, raw.values[4:].shape)]
            ).astype(np.float32)
            found = moved.detections(image_shape, conf, iou)
            found = (found.boxes, found.scores, found.classes)
            if unmatched_detections(found, reference, conf, 1.5 * BOX_PX / ratio, SCORE):
                break
        else:
            chosen = conf
            continue
        break
    assert chosen is not None, f"no stable detection threshold among the top scores {best}"
    return chosen


def step_expected(src: Path, name: str, out: Path, image: Path, commit: str) -> None:
    dcnv3 = _frozen_package(src)
    import numpy as np
    import torch

    from dcnv3.loading import load_model
    from dcnv3.probe import inference_model, network_input, probe

    forms = list(FORMS)
    model = load_model(out / f"{name}_best.pt")
    last = load_model(out / f"{name}_last.pt").model.state_dict()  # the very network of best.pt
    assert all(torch.equal(v, last[k]) for k, v in model.model.state_dict().items()), name
    x, letterbox, _ = network_input(inference_model(model), image, IMGSZ)
    first = probe(model, image, imgsz=IMGSZ, conf=0.001, iou=IOU)
    conf = stable_conf(first.raw, first.image_shape, letterbox.ratio, IOU)
    result = probe(model, image, imgsz=IMGSZ, conf=conf, iou=IOU)
    names = recorded_modules(model.model)
    outputs, pred = module_outputs(model.model, x, names)
    detections = result.detections
    globals_by_form = {form: pickled_globals(out / f"{name}_{form}.pt") for form in forms}
    ours = {form: [list(g) for g in found if g[0].split(".")[0] == "dcnv3"] for form, found in globals_by_form.items()}
    assert ours["best"] and all(g[0] in OLD_MODULES for g in ours["best"]), ours["best"]
    expected = {
        "name": name,
        "yaml": f"{name}n.yaml",
        "width": WIDTH,
        "commit": commit,
        "forms": forms,
        "imgsz": IMGSZ,
        "conf": conf,
        "iou": IOU,
        "letterbox_ratio": float(letterbox.ratio),
        "input_shape": list(x.shape),
        "input_sum": float(x.double().sum()),
        "raw": torch.from_numpy(np.array(result.raw.values)),
        "end2end": bool(result.raw.end2end),
        "pred": pred[0].float().clone(),
        "boxes": torch.from_numpy(np.array(detections.boxes)),
        "scores": torch.from_numpy(np.array(detections.scores)),
        "classes": torch.from_numpy(np.array(detections.classes)),
        "layer_names": [layer.name for layer in result.layers],
        "weight_kinds": [layer.weight_kind for layer in result.layers],
        "offsets": {layer.name: torch.from_numpy(np.array(layer.offsets)) for layer in result.layers},
        "weights": {layer.name: torch.from_numpy(np.array(layer.weights)) for layer in result.layers},
        "outputs": outputs,
        "globals": ours,
    }
    torch.save(expected, out / f"{name}_expected.pt")

    # What the fixture is sensitive to: each deformable layer in turn sampling its regular grid
    # (offsets zeroed) moves the recorded outputs by this many times the test's bound.
    def excess(actual, reference):
        return float(((actual - reference).abs() / (LAYER_ABS + LAYER_REL * reference.abs())).max())

    weakest = float("inf")
    for _, module in dcnv3.deformable_modules(model.model):
        with dcnv3.override_sampling([module]):
            moved, _ = module_outputs(model.model, x, names)
        weakest = min(weakest, max(excess(moved[n], outputs[n]) for n in names))
    offsets = [float(np.abs(layer.offsets).mean()) for layer in result.layers]
    print(
        json.dumps(
            {
                "name": name,
                "layers": len(result.layers),
                "weight_kinds": sorted({layer.weight_kind for layer in result.layers}),
                "mean_abs_offset_cells": [round(v, 3) for v in offsets],
                "conf": round(conf, 5),
                "detections": len(detections),
                "max_score": round(float(result.raw.values[4:].max()), 4),
                "zeroing_one_layer_moves_outputs_by_at_least_x_bound": round(weakest, 1),
                "dcnv3_globals": sorted({g[0] for g in ours["best"]}),
                "other_modules": sorted({g[0] for g in globals_by_form["best"] if g[0].split(".")[0] != "dcnv3"}),
            }
        )
    )


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def child(src: Path, *args) -> None:
    env = {
        **os.environ,
        "YOLO_OFFLINE": "true",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(src),
    }
    subprocess.run([sys.executable, __file__, "--src", str(src), *map(str, args)], cwd=src, env=env, check=True)


def make_input(path: Path) -> None:
    import cv2

    image = cv2.imread(str(ROOT / "assets" / "examples" / "shapes_0.jpg"))[:312]
    image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    assert cv2.imwrite(str(path), image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="a checkout of the package at the frozen commit")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "legacy")
    parser.add_argument("--work", type=Path, default=Path("/tmp/legacy_work"), help="training runs and data")
    parser.add_argument("--only", nargs="*", default=list(FIXTURES), choices=FIXTURES)
    parser.add_argument("--step", choices=["train", "expected"], help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--commit", help=argparse.SUPPRESS)
    args = parser.parse_args()
    src, out, work = args.src.resolve(), args.out.resolve(), args.work.resolve()
    image = out / "input.png"
    if args.step == "train":
        return step_train(src, args.name, work / "shapes" / "data.yaml", work, out)
    if args.step == "expected":
        return step_expected(src, args.name, out, image, args.commit)

    commit = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain"], capture_output=True, text=True).stdout
    assert not dirty.strip(), f"{src} has local changes: the fixtures must come from a commit\n{dirty}"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if not image.is_file():
        make_input(image)
    if not (work / "shapes" / "data.yaml").is_file():
        data = [f"--{k.replace('_', '-')}={v}" for k, v in DATA.items()]
        subprocess.run(
            [sys.executable, "-m", "dcnv3", "data", "--out", str(work / "shapes"), *data],
            cwd=src,
            env={**os.environ, "PYTHONPATH": str(src), "YOLO_OFFLINE": "true"},
            check=True,
        )
    for name in args.only:
        start = time.time()
        child(src, "--out", out, "--work", work, "--step", "train", "--name", name)
        child(src, "--out", out, "--work", work, "--step", "expected", "--name", name, "--commit", commit)
        sizes = {p.name: p.stat().st_size for p in sorted(out.glob(f"{name}_*.pt"))}
        print(f"{name}: {time.time() - start:.0f} s, {sizes}", flush=True)


if __name__ == "__main__":
    main()
