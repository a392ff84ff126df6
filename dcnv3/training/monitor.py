"""Offsets over training: a callback for ultralytics' trainer that, after every epoch, probes a fixed
handful of validation images and appends each deformable layer's health to ``health.csv`` and
``health.json`` in the run folder; optionally it stops the run when a layer is flagged.

``DeformableDetectionTrainer`` (``dcnv3.training``) registers one; with a stock trainer::

    from dcnv3.training.monitor import HealthMonitor
    model = YOLO("dcnv3-yolov8n.yaml")
    model.add_callback("on_fit_epoch_end", HealthMonitor(stop_on_flag=True))
    model.train(data=..., epochs=...)

What one epoch's entry holds, per layer: the means over the images of ``dcnv3.analysis.health``'s
numbers (mean |offset| in cells and in point spacings, normalised entropy and effective points,
effective dilation, off-image share and the regular grid's, group cosine) and the flags those
means raise. The model probed is the one ultralytics saves (the EMA), in eval mode on a copy, at
the run's ``imgsz``. ``epoch`` counts from 1 as ultralytics' results.csv does; a checkpoint saved
with ``save_period`` as ``epoch{k}.pt`` holds the model after epoch k + 1.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from dcnv3.analysis import health as layer_health
from dcnv3.analysis.health import image_files

__all__ = ["HealthMonitor", "stop_rule", "CSV_NAME", "JSON_NAME", "CSV_FIELDS", "validation_images", "read_health"]

CSV_NAME = "health.csv"
JSON_NAME = "health.json"
CSV_FIELDS = (
    "epoch",
    "layer",
    "stage",
    "weight_kind",
    "groups",
    "mean_offset",
    "offset_ratio",
    "entropy",
    "effective_points",
    "effective_dilation",
    "outside_share",
    "outside_share_reference",
    "outside_excess",
    "mean_abs_weight",
    "group_similarity",
    "flags",
)


class _Detector:
    """What ``dcnv3.analysis.probe.probe`` reads of a YOLO (``model``, ``names``), around a trainer's network."""

    def __init__(self, network, names):
        self.model = network
        self.names = names


def validation_images(data: dict, count: int) -> list[Path]:
    """The first ``count`` images (sorted by path) of a dataset dict's ``val`` split (a folder, a
    list of folders, or a .txt list of image paths, as ultralytics accepts): a fixed handful."""
    entries = data.get("val") or data.get("test") or []
    entries = entries if isinstance(entries, (list, tuple)) else [entries]
    found = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found += image_files(path, recursive=True)
        elif path.suffix == ".txt" and path.is_file():
            base = Path(data.get("path", path.parent))
            for line in path.read_text().splitlines():
                if line.strip():
                    item = Path(line.strip())
                    found.append(item if item.is_absolute() else base / item)
        elif path.is_file():
            found.append(path)
    return sorted(found)[:count]


def stop_rule(stop_on_flag) -> bool | frozenset[str]:
    """``HealthMonitor``'s ``stop_on_flag`` checked and normalised: False / True as given, flag
    names (any iterable) as a frozenset of keys of ``dcnv3.analysis.health.FLAG_NAMES``. Raises
    ValueError for an unknown name, so a run is refused before it starts, not after an epoch."""
    if isinstance(stop_on_flag, bool):
        return stop_on_flag
    names = frozenset([stop_on_flag] if isinstance(stop_on_flag, str) else stop_on_flag)
    unknown = sorted(names - set(layer_health.FLAG_NAMES))
    if unknown:
        raise ValueError(
            f"stop on flag: unknown flag(s) {', '.join(unknown)}; flags: {', '.join(layer_health.FLAG_NAMES)}"
        )
    return names or False


class HealthMonitor:
    """``on_fit_epoch_end`` callback: one health entry per epoch in the trainer's ``save_dir``.

    Args:
        images: image paths to probe every epoch; None: the first ``count`` of the validation split.
        count: how many validation images when ``images`` is None.
        imgsz: probe size; None: the run's ``imgsz``.
        stop_on_flag: False (default) only records; True stops training after an epoch in which
            any layer is flagged; a set of flag keys (``dcnv3.analysis.health.FLAG_NAMES``, e.g.
            {"exploding", "vanished"}) stops only on those. The trainer finishes as on early
            stopping (last.pt, best.pt, final validation).
    """

    def __init__(self, images=None, count: int = 4, imgsz: int | None = None, stop_on_flag=False):
        self.images = None if images is None else [Path(p) for p in images]
        self.count = int(count)
        self.imgsz = imgsz
        self.stop_on_flag = stop_rule(stop_on_flag)
        self.entries: list[dict] = []  # what health.json holds, one dict per epoch
        self.stopped_at: int | None = None
        self._trainer: int | None = None  # id of the trainer the entries belong to
        self._after_stop = False  # the trainer's loop has ended (its stop was set at our last call)

    def _stops(self, flags: set[str]) -> bool:
        if not self.stop_on_flag or not flags:
            return False
        return self.stop_on_flag is True or bool(flags & self.stop_on_flag)

    def __call__(self, trainer) -> None:
        from ultralytics.utils import RANK

        if RANK not in (-1, 0):
            return  # one process writes (DDP)
        if self._trainer != id(trainer):  # a new run (the same monitor may serve several)
            self._trainer, self._after_stop, self.entries, self.stopped_at = id(trainer), False, [], None
        if self._after_stop:
            # The loop ended at the last call (last epoch, early stop, ours); ultralytics calls the
            # callback once more after validating best.pt, with its epoch + 1: not a trained epoch.
            return
        try:
            self._record_epoch(trainer, int(trainer.epoch) + 1)
        finally:
            self._after_stop = bool(trainer.stop)

    def _record_epoch(self, trainer, epoch: int) -> None:
        from ultralytics.utils import LOGGER
        from ultralytics.utils.torch_utils import unwrap_model

        if self.images is None:
            self.images = validation_images(trainer.data, self.count)
        if not self.images:
            LOGGER.warning("health monitor: no validation images to probe")
            return
        network = trainer.ema.ema if getattr(trainer, "ema", None) else unwrap_model(trainer.model)
        detector = _Detector(network, dict(trainer.data.get("names", {})))
        imgsz = int(self.imgsz or trainer.args.imgsz)
        try:
            report = layer_health.health(detector, self.images, imgsz=imgsz)
        except ValueError as error:  # no deformable layer, no readable image: training goes on
            LOGGER.warning(f"health monitor: {error}")
            return
        self.record(Path(trainer.save_dir), epoch, report)
        flags = {key for layer in report.layers for key in layer.flags}
        if flags:
            LOGGER.info(
                f"health monitor, epoch {epoch}: "
                + "; ".join(f"{layer.name}: {', '.join(layer.flags)}" for layer in report.layers if layer.flags)
            )
        if self._stops(flags):
            LOGGER.warning(f"health monitor: stopping after epoch {epoch} on {', '.join(sorted(flags))}")
            self.stopped_at = epoch
            trainer.stop = True

    def record(self, save_dir: Path, epoch: int, report) -> None:
        """Append one epoch's layers to health.csv and rewrite health.json with every epoch so far."""
        save_dir.mkdir(parents=True, exist_ok=True)
        path = save_dir / CSV_NAME
        new = not path.exists() or not self.entries
        with open(path, "w" if new else "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            if new:
                writer.writeheader()
            for layer in report.layers:
                values = layer.as_dict()
                row = {name: values.get(name) for name in CSV_FIELDS}
                row.update(
                    epoch=epoch,
                    layer=layer.name,
                    flags=";".join(layer.flags),
                    group_similarity="" if layer.group_similarity is None else layer.group_similarity,
                )
                writer.writerow(row)
        self.entries.append(
            {
                "epoch": epoch,
                "imgsz": report.imgsz,
                "images": [n for n, _ in report.per_image],
                "layers": [layer.as_dict() for layer in report.layers],
            }
        )
        (save_dir / JSON_NAME).write_text(
            json.dumps(
                {
                    "schema": "deformlens.training_health/1",
                    "thresholds": dict(layer_health.THRESHOLDS),
                    "epochs": self.entries,
                },
                indent=1,
            )
        )


def read_health(run_dir) -> list[dict]:
    """A run folder's health.csv as rows (numbers as floats, ``epoch`` int, ``flags`` a list of
    keys); [] when the run has none."""
    path = Path(run_dir) / CSV_NAME
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed = {
                "epoch": int(row["epoch"]),
                "layer": row["layer"],
                "stage": row["stage"],
                "weight_kind": row["weight_kind"],
                "flags": [f for f in row["flags"].split(";") if f],
            }
            for name in CSV_FIELDS:
                if name not in parsed:
                    parsed[name] = float(row[name]) if row[name] not in ("", None) else None
            rows.append(parsed)
    return rows
