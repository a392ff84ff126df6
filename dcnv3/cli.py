"""``python -m dcnv3``: train, validate, predict, inspect, ablate, health, analyze, export and generate data.

Why one module (over 400 lines): one argparse tree; each subcommand is a short function that calls
the package.

Every command takes ``--help``. Checkpoints are always loaded through ``dcnv3.yolo.loading.load_model`` (no
code from the file runs); bad input ends with a one-line ``error:`` message and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

MAX_QUERIED_DETECTIONS = 8  # sampling points of more boxes than this stop being legible


def _overrides(pairs: list[str]) -> dict:
    """``key=value`` strings -> ultralytics arguments (values parsed as YAML scalars)."""
    import yaml

    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        result[key] = yaml.safe_load(value)
    return result


def health_stop(names: list[str] | None):
    """``--health-stop [FLAG ...]`` -> the trainer's ``health_stop_on_flag``: absent False, bare
    True (any flag), else the names (checked by ``dcnv3.training.monitor.stop_rule``)."""
    if names is None:
        return False
    return names or True


def cmd_train(args) -> None:
    from dcnv3.training.trainer import train

    model = train(
        args.model,
        args.data,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        workers=args.workers,
        project=str(Path(args.project).resolve()),
        name=args.name,
        seed=args.seed,
        exist_ok=True,
        offset_lr_scale=args.offset_lr_scale,
        offset_weight_decay=not args.offset_no_decay,
        health_stop_on_flag=health_stop(args.health_stop),
        **_overrides(args.set),
    )
    monitor = getattr(model.trainer, "health_monitor", None)
    if monitor is not None and monitor.stopped_at is not None:
        print(f"stopped by the health monitor after epoch {monitor.stopped_at} (see health.csv)")
    print(f"best checkpoint: {model.trainer.best}")


def cmd_val(args) -> None:
    from dcnv3.yolo.loading import load_model

    model = load_model(args.model)
    metrics = model.val(
        data=args.data,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        plots=False,
        verbose=args.verbose,
        **_overrides(args.set),
    )
    print(f"mAP50 {metrics.box.map50:.4f}  mAP50-95 {metrics.box.map:.4f}")
    for index, class_id in enumerate(metrics.box.ap_class_index):
        print(
            f"  {metrics.names[int(class_id)]:<16} AP50 {metrics.box.ap50[index]:.4f}  "
            f"AP50-95 {metrics.box.ap[index]:.4f}"
        )


def cmd_predict(args) -> None:
    from dcnv3.yolo.loading import load_model

    model = load_model(args.model)
    results = model.predict(
        args.source,
        imgsz=args.imgsz,
        conf=args.conf,
        iou=args.iou,
        save=True,
        project=str(Path(args.out).resolve().parent),
        name=Path(args.out).name,
        exist_ok=True,
        verbose=False,
    )
    for result in results:
        print(f"{Path(result.path).name}: {len(result.boxes)} detections")
    print(f"saved to {args.out}")


def inspect_image(model, image_path: Path, out_dir: Path, imgsz: int, conf: float, iou: float) -> list[dict]:
    """Probe one image, write its overlay PNG and raw NPZ; return one statistics row per layer."""
    import cv2
    import numpy as np

    from dcnv3.analysis.probe import prepare_image, probe
    from dcnv3.draw.overlay import draw_cell, draw_detections
    from dcnv3.record import stats
    from dcnv3.record.geometry import box_centre

    image = prepare_image(image_path)
    result = probe(model, image, imgsz=imgsz, conf=conf, iou=iou)
    overlay = draw_detections(image, result.detections)
    queries = []  # (layer, cell): the top detections' centres in their scale-matched layers
    for box in result.detections.boxes[:MAX_QUERIED_DETECTIONS]:
        layer = result.layer_for_box(box)
        cell = result.cell_at(layer, *box_centre(box)) if layer else None
        if cell is not None:
            queries.append((layer, cell))
    if not queries and result.layers:  # nothing detected: the image centre in the default layer
        layer = result.default_layer()
        cell = result.cell_at(layer, image.shape[1] / 2, image.shape[0] / 2)
        if cell is not None:
            queries.append((layer, cell))
    for layer, cell in queries:
        overlay = draw_cell(overlay, result, layer, cell, in_place=True)  # overlay: our own copy
    stem = image_path.stem
    cv2.imwrite(str(out_dir / f"{stem}_overlay.png"), overlay)
    np.savez_compressed(out_dir / f"{stem}_probe.npz", **result.as_arrays())
    rows = []
    for layer in result.layers:
        row = {
            "image": image_path.name,
            "layer": layer.name,
            "stage": layer.stage,
            "stride": layer.stride,
            "grid": f"{layer.grid[0]}x{layer.grid[1]}",
            "groups": layer.groups,
            "kernel": layer.kernel,
            "detections": len(result.detections),
        }
        row.update(stats.layer_summary(layer, result.letterbox))
        rows.append(row)
    return rows


def inspect_video(model, args) -> None:
    """Process a video as the app's Video tab does: ``<stem>_deformable.mp4`` and ``<stem>_stats.csv``."""
    from dcnv3.video import pipeline as video

    limits = video.VideoLimits(max_frames=args.max_frames, max_seconds=args.max_seconds, max_side=args.max_side)

    def report(step):
        if step.done % 25 == 0 or step.result is not None:
            print(f"frame {step.frame}: {step.done}/{step.total}", flush=True)

    result = video.run_video(
        model,
        args.source,
        args.out,
        on_progress=report,
        layer=args.layer,
        mode=args.mode,
        stride=args.stride,
        imgsz=args.imgsz,
        conf=args.conf,
        iou=args.iou,
        tracker=args.tracker,
        limits=limits,
    )
    for note in result.notes:
        print(f"note: {note}")
    print(
        f"{result.processed_frames} frames in {result.seconds:.1f} s "
        f"({result.processed_frames / max(result.seconds, 1e-9):.1f} fps), "
        f"{len({r['track_id'] for r in result.rows})} tracks"
    )
    print(f"wrote {result.video_path} and {result.csv_path}")


def cmd_inspect(args) -> None:
    from dcnv3.analysis.health import IMAGE_SUFFIXES, image_paths
    from dcnv3.yolo.loading import load_model, train_imgsz

    model = load_model(args.model)
    if Path(args.source).is_file() and Path(args.source).suffix.lower() not in IMAGE_SUFFIXES:
        return inspect_video(model, args)  # any other file is taken for a video (and refused if it is not one)
    args.imgsz = args.imgsz or train_imgsz(model)  # as the app: the size the model was trained at
    if not model.deformable_layers:
        print(f"note: {Path(args.model).name} has no deformable layer; writing detections only")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for image_path in image_paths(args.source, required=False):
        try:
            rows += inspect_image(model, image_path, out_dir, args.imgsz, args.conf, args.iou)
            print(f"{image_path.name}: done")
        except ValueError as error:  # one unreadable image does not stop the folder
            print(f"{image_path.name}: skipped ({error})", file=sys.stderr)
    if rows:
        with open(out_dir / "layer_stats.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f"wrote {out_dir}")


def cmd_ablate(args) -> None:
    """Every deformable layer's offsets on the regular grid, then its weights uniform, then all layers
    (``dcnv3.analysis.ablation``), over an image or a folder: a table per variant, optionally JSON."""
    import json
    import math

    from dcnv3.analysis.ablation import ablate_folder
    from dcnv3.analysis.health import image_paths
    from dcnv3.yolo.loading import load_model, train_imgsz

    model = load_model(args.model)
    imgsz = args.imgsz or train_imgsz(model)  # as inspect and the app: the size the model was trained at
    images = image_paths(args.source, required=False)
    if not images:
        raise ValueError(f"{args.source}: no images in it")
    print(
        f"{Path(args.model).name} at imgsz {imgsz}, conf {args.conf}, iou {args.iou}; detections matched "
        f"by IoU >= {args.match_iou} within a class (greedy, highest IoU first)"
    )

    def progress(name, result):
        print(f"{name}: {len(result.baseline)} detections, {len(result.results)} variants", flush=True)

    result = ablate_folder(
        model, images, imgsz=imgsz, conf=args.conf, iou=args.iou, match_iou=args.match_iou, on_image=progress
    )
    rows = result.rows()
    width = max(len(row["variant"]) for row in rows)
    print(f"{'variant':<{width}}  baseline  kept  lost  gained  mean IoU  mean score change  images changed")
    for row in rows:
        mean_iou = "-" if math.isnan(row["mean_iou"]) else f"{row['mean_iou']:.3f}"
        change = "-" if math.isnan(row["mean_score_change"]) else f"{row['mean_score_change']:+.3f}"
        print(
            f"{row['variant']:<{width}}  {row['baseline']:>8}  {row['kept']:>4}  {row['lost']:>4}  "
            f"{row['gained']:>6}  {mean_iou:>8}  {change:>17}  {row['images_changed']:>6} of {row['images']}"
        )
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"model": Path(args.model).name, "imgsz": imgsz, **result.as_dict()}, indent=1))
        print(f"wrote {out}")


def cmd_health(args) -> None:
    """Every deformable layer's numbers and calibrated flags over an image or a folder
    (``dcnv3.analysis.health.health``); exits 1 when a layer is flagged, so a pipeline can gate on it."""
    import json

    from dcnv3.analysis.health import FLAG_NAMES, health

    report = health(args.model, args.source, imgsz=args.imgsz)
    for name, reason in report.skipped:
        print(f"{name}: skipped ({reason})", file=sys.stderr)
    print(
        f"{Path(args.model).name} at imgsz {report.imgsz}, {len(report.per_image)} images; numbers are means "
        "over the images, each flag measured against the layer's own regular grid on the same image"
    )
    width = max(len(layer.name) for layer in report.layers)
    print(f"{'layer':<{width}}  kind     |offset| spacings  off image (grid)  points  dilation  group cos  flags")
    for layer in report.layers:
        cosine = "-" if layer.group_similarity is None else f"{layer.group_similarity:.3f}"
        flags = ", ".join(FLAG_NAMES[key] for key in layer.flags) or "OK"
        flagged = report.flagged_images(layer.name)
        print(
            f"{layer.name:<{width}}  {layer.weight_kind:<7}  {layer.offset_ratio:>17.3f}  "
            f"{layer.outside_share:>8.3f} ({layer.outside_share_reference:.3f})  "
            f"{layer.effective_points:>4.1f}/{layer.points}  {layer.effective_dilation:>8.3f}  {cosine:>9}  {flags}"
            + (f"  [{flagged} of {len(report.per_image)} images flagged alone]" if flagged else "")
        )
        for reason in layer.flags.values():
            print(f"    {reason}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.as_dict(), indent=1))
        print(f"wrote {out}")
    print(
        "healthy"
        if not report.flagged
        else "flagged: " + ", ".join(layer.name for layer in report.layers if layer.flags)
    )
    if report.flagged:
        raise SystemExit(1)


def cmd_export(args) -> None:
    import numpy as np
    import torch

    from dcnv3.yolo.loading import load_model

    model = load_model(args.model)
    exported = model.export(format="onnx", imgsz=args.imgsz, opset=args.opset, simplify=True, dynamic=False)
    print(f"exported {exported}")
    if args.no_check:
        return
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})[:1]
    with torch.no_grad():
        expected = model.model(x)
    expected = (expected[0] if isinstance(expected, (list, tuple)) else expected).numpy()
    difference = float(np.abs(actual - expected).max())
    scale = float(np.abs(expected).max())
    print(f"onnxruntime vs PyTorch: max |diff| {difference:.4g} (output range {scale:.4g})")
    if difference > 1e-3 * max(scale, 1.0):
        raise SystemExit(f"error: the exported model does not match PyTorch (max diff {difference})")


def cmd_analyze(args) -> None:
    import json

    from dcnv3.analysis.dataset import analyze_dataset, format_table
    from dcnv3.yolo.loading import load_model

    model = load_model(args.model)
    if not model.deformable_layers:
        raise ValueError(f"{Path(args.model).name} has no deformable layer to analyze")
    rows = analyze_dataset(model, args.data, split=args.split, imgsz=args.imgsz, max_images=args.max_images)
    table = format_table(rows)
    print(
        "Effective dilation (mean ± std, feature cells; regular grid = 1) at object centres by "
        "size and on background; layer-wide mean |offset| (cells) and normalised entropy:"
    )
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "analysis.md").write_text(table + "\n")
        (out / "analysis.json").write_text(json.dumps(rows, indent=1))
        print(f"wrote {out / 'analysis.md'} and {out / 'analysis.json'}")


def cmd_assets(args) -> None:
    """The demo video and example images in assets/, made by the dataset generator."""
    import cv2
    from ultralytics.utils import ASSETS

    from dcnv3.data import render_scene, video_frames
    from dcnv3.data.generator import image_rng
    from dcnv3.video.io import write_h264

    out = Path(args.out)
    (out / "examples").mkdir(parents=True, exist_ok=True)
    video = write_h264(
        (frame for frame, _, _ in video_frames(seed=args.video_seed, size=(480, 320), seconds=12, fps=15)),
        out / "demo_shapes.mp4",
        fps=15,
    )
    print(f"{video}: {video.stat().st_size / 1e6:.2f} MB")
    for index in range(4):
        image, _, _ = render_scene(image_rng(args.seed, "examples", index), size=416)
        cv2.imwrite(str(out / "examples" / f"shapes_{index}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    for name in ("bus.jpg", "zidane.jpg"):
        photo = cv2.imread(str(ASSETS / name))
        if photo is not None:
            cv2.imwrite(str(out / "examples" / name), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
    print(f"wrote {out / 'examples'}")


def cmd_data(args) -> None:
    from dcnv3.data import write_dataset

    try:
        path = write_dataset(
            args.out, n_train=args.n_train, n_val=args.n_val, seed=args.seed, imgsz=args.imgsz, overwrite=args.overwrite
        )
    except FileExistsError as error:
        raise ValueError(f"{error} (pass --overwrite to replace it)") from None
    print(f"dataset written: {path}")


def build_parser() -> argparse.ArgumentParser:
    from dcnv3.yolo import MODEL_FAMILIES

    parser = argparse.ArgumentParser(prog="python -m dcnv3", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub, thresholds=False):
        sub.add_argument("--model", required=True, help="checkpoint (.pt)")
        sub.add_argument(
            "--imgsz",
            type=int,
            default=640,
            help="inference size (default 640; inspect: the size the checkpoint was trained at)",
        )
        if thresholds:
            sub.add_argument("--conf", type=float, default=0.25, help="confidence threshold")
            sub.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold")

    sub = commands.add_parser("train", help="train a DCNv3-YOLO (or any YOLO YAML / checkpoint)")
    sub.add_argument(
        "--model",
        default="dcnv3-yolov8n.yaml",
        help=f"model YAML (dcnv3-{{{','.join(MODEL_FAMILIES)}}}{{n,s,m,l,x}}.yaml, "
        "dcnv3-neck-yolov8n.yaml, yolov8n.yaml) or a .pt to fine-tune",
    )
    sub.add_argument("--data", required=True, help="dataset YAML")
    sub.add_argument("--epochs", type=int, default=100)
    sub.add_argument("--imgsz", type=int, default=640)
    sub.add_argument("--batch", type=int, default=16)
    sub.add_argument("--device", default="", help="'' (auto), cpu, 0, 0,1 (multi-GPU DDP)")
    sub.add_argument("--workers", type=int, default=2)
    sub.add_argument("--project", default="runs/dcnv3", help="output folder (relative to the current directory)")
    sub.add_argument("--name", default="train")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument(
        "--offset-lr-scale",
        type=float,
        default=1.0,
        help="learning-rate multiplier for the DCNv3 offset and mask projections",
    )
    sub.add_argument(
        "--offset-no-decay", action="store_true", help="no weight decay on the DCNv3 offset and mask projections"
    )
    sub.add_argument(
        "--health-stop",
        nargs="*",
        metavar="FLAG",
        default=None,
        help="stop after an epoch in which a deformable layer is flagged (health.csv); "
        "bare: any flag, else only these (collapsed, exploding, saturated, ...)",
    )
    sub.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="any other ultralytics train argument")
    sub.set_defaults(func=cmd_train)

    sub = commands.add_parser("val", help="validate a checkpoint on a dataset (mAP, AP per class)")
    common(sub)
    sub.add_argument("--data", required=True, help="dataset YAML")
    sub.add_argument("--batch", type=int, default=16)
    sub.add_argument("--device", default="")
    sub.add_argument("--verbose", action="store_true")
    sub.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="any other ultralytics val argument")
    sub.set_defaults(func=cmd_val)

    sub = commands.add_parser("predict", help="detect objects in images or videos, save annotated copies")
    common(sub, thresholds=True)
    sub.add_argument("--source", required=True, help="image, video or folder")
    sub.add_argument("--out", default="runs/dcnv3/predict", help="output folder")
    sub.set_defaults(func=cmd_predict)

    sub = commands.add_parser(
        "inspect",
        help="probe the deformable layers over an image or a folder: per-layer statistics CSV, overlay PNGs, raw NPZ",
    )
    common(sub, thresholds=True)
    sub.add_argument(
        "--source",
        required=True,
        help="image, folder of images, or a video (then: an H.264 MP4 with overlays and a per-track statistics CSV)",
    )
    sub.add_argument("--out", default="runs/dcnv3/inspect", help="output folder")
    from dcnv3.video import pipeline as video  # its modes, trackers and limits are the options' choices and defaults

    limits = video.VideoLimits()
    video_options = sub.add_argument_group("video")
    video_options.add_argument(
        "--layer",
        default=video.AUTO_LAYER,
        help="deformable layer name, or auto: per object, the layer whose stride matches its size",
    )
    video_options.add_argument(
        "--mode",
        default="samples",
        choices=list(video.MODES),
        help="overlay: sampling points at tracked objects, at a fixed grid, or a field map",
    )
    video_options.add_argument("--stride", type=int, default=1, help="process every n-th frame")
    video_options.add_argument("--max-frames", type=int, default=limits.max_frames, help="processed frames at most")
    video_options.add_argument(
        "--max-seconds", type=float, default=limits.max_seconds, help="of the video, from its start"
    )
    video_options.add_argument("--max-side", type=int, default=limits.max_side, help="longer frames are downscaled")
    video_options.add_argument("--tracker", default=video.TRACKERS[0], choices=list(video.TRACKERS))
    sub.set_defaults(imgsz=None)  # images and videos: the checkpoint's training size, else 640
    sub.set_defaults(func=cmd_inspect)

    sub = commands.add_parser(
        "ablate",
        help="does the model use its deformation? rerun it with each deformable "
        "layer's offsets on the regular grid, or its weights uniform, then "
        "all layers: detections kept, lost and gained",
    )
    common(sub, thresholds=True)
    sub.add_argument("--source", required=True, help="image or folder of images")
    sub.add_argument(
        "--match-iou",
        type=float,
        default=0.5,
        help="a rerun's box is the same detection at this IoU or more, same class",
    )
    sub.add_argument("--json", default=None, help="write the per-variant summary and per-image results here")
    sub.set_defaults(imgsz=None)  # the checkpoint's training size, else 640
    sub.set_defaults(func=cmd_ablate)

    sub = commands.add_parser(
        "health",
        help="per-layer health of the deformable layers over an image or a "
        "folder, flags calibrated against each layer's regular grid: "
        "exit 0 healthy, 1 a layer flagged, 2 bad input",
    )
    common(sub)
    sub.add_argument("--source", required=True, help="image or folder of images")
    sub.add_argument("--json", default=None, help="write the report here (schema deformlens.health/1, docs/cli.md)")
    sub.set_defaults(imgsz=None)  # the checkpoint's training size, else 640
    sub.set_defaults(func=cmd_health)

    sub = commands.add_parser(
        "export",
        help="export to ONNX through ultralytics' exporter and check the result in onnxruntime against PyTorch",
    )
    common(sub)
    sub.add_argument("--opset", type=int, default=17)
    sub.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    sub.set_defaults(func=cmd_export)

    sub = commands.add_parser(
        "analyze",
        help="effective dilation by object size (DCNv1 Table 2), mean "
        "|offset| and weight entropy per deformable layer over a dataset",
    )
    common(sub)
    sub.add_argument("--data", required=True, help="dataset YAML with ground-truth labels")
    sub.add_argument("--split", default="val")
    sub.add_argument("--max-images", type=int, default=None)
    sub.add_argument("--out", default=None, help="folder for analysis.md and analysis.json")
    sub.set_defaults(func=cmd_analyze)

    sub = commands.add_parser("assets", help="write the demo video (H.264 MP4) and example images")
    sub.add_argument("--out", default="assets")
    sub.add_argument("--seed", type=int, default=0, help="seed of the example images")
    sub.add_argument("--video-seed", type=int, default=1, help="seed of the demo video (1: a photo background)")
    sub.set_defaults(func=cmd_assets)

    sub = commands.add_parser("data", help="generate the synthetic shapes detection dataset (YOLO format)")
    sub.add_argument("--out", required=True, help="output folder (gets images/, labels/, data.yaml)")
    sub.add_argument("--n-train", type=int, default=1500)
    sub.add_argument("--n-val", type=int, default=300)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--imgsz", type=int, default=320)
    sub.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    sub.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("YOLO_OFFLINE", "true")  # before anything imports ultralytics
    args = build_parser().parse_args(argv)
    from dcnv3 import yolo
    from dcnv3.yolo.checkpoints import CheckpointError

    yolo.prepare_runtime()  # offline, plot fonts, every core: this process is ours
    yolo.register()
    yolo.keep_freed_memory()  # every forward reuses the last one's memory instead of faulting it in

    try:
        args.func(args)
    except (CheckpointError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
