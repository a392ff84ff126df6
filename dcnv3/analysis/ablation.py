"""Ablations: does the model rely on a deformable layer's offsets or weights?

Why one module (over 400 lines): the reruns, the matching of their detections against the model's
own and the report are one analysis with one result type.

For each deformable layer (DCNv3, DCNv4, DCNv2 alike) the model is rerun with that layer's offsets
forced to the regular grid, and separately with its modulation weights forced uniform (each group's
mean: ``dcnv3.ops.sampling_hooks.SamplingOverride``), then with every layer at once; the detections of
each run are compared with the model's own.

Data flow, like the probe's (one expensive step, cheap queries):

* ``run_ablation(model, image, ...)`` -> ``AblationRun``: one ``dcnv3.analysis.probe.probe`` forward for the
  model as it is and one per ``Variant``, each inside ``override_sampling`` on the probe's own
  inference copy, so the letterbox, forward and NMS are the probe's; it keeps only each run's
  ``RawPredictions`` (the head output before NMS);
* ``AblationRun.compare(conf, iou)`` -> ``ImageAblation``: ultralytics' NMS at those thresholds on
  every run's cached predictions, then ``match_detections`` of each variant against the baseline:
  per variant ``VariantResult`` (kept, lost, gained, mean IoU of matched boxes, mean score change);
* ``ablate(...)`` is both for one image; ``ablate_folder(...)`` sums a set of images per variant
  (``FolderAblation``).

Matching rule (``match_detections``): boxes of the same class whose IoU (torchvision's
``box_iou``) is at least ``match_iou`` (0.5) are candidate pairs; pairs are taken greedily, highest
IoU first (ties: lower baseline index, then lower variant index), each box in at most one pair.
A baseline box left unpaired is *lost*, a variant box left unpaired is *gained*, a pair is *kept*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from dcnv3.analysis.probe import Detections, RawPredictions, inference_model, probe
from dcnv3.ops.capture import deformable_modules
from dcnv3.ops.sampling_hooks import override_sampling

__all__ = [
    "KINDS",
    "ALL_LAYERS",
    "MATCH_IOU",
    "Variant",
    "default_variants",
    "Matching",
    "match_detections",
    "VariantResult",
    "ImageAblation",
    "AblationRun",
    "run_ablation",
    "ablate",
    "VariantSummary",
    "FolderAblation",
    "summarise",
    "ablate_folder",
]

# What a variant does to its layers: kind -> (offsets to the regular grid, uniform weights).
KINDS = {"grid": (True, False), "uniform": (False, True)}
KIND_LABELS = {"grid": "offsets -> regular grid", "uniform": "weights -> uniform"}
ALL_LAYERS = "all layers"  # the label of a variant that overrides every deformable layer
MATCH_IOU = 0.5  # a variant's box is the same detection as a baseline box at IoU >= this, same class


@dataclass(frozen=True)
class Variant:
    """One rerun: the deformable layers ``layers`` (qualified names, as the probe's
    ``LayerRecord.name``) sample as ``kind`` (a key of ``KINDS``) says.

    ``name``: "<layer or 'all layers'> · <kind>", unique within ``default_variants``."""

    layers: tuple[str, ...]
    kind: str
    all_layers: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown ablation kind {self.kind!r}; kinds: {', '.join(KINDS)}")
        if not self.layers:
            raise ValueError("a variant needs at least one layer")

    @property
    def target(self) -> str:
        """The layer's name, or "all layers"."""
        return ALL_LAYERS if self.all_layers else ", ".join(self.layers)

    @property
    def name(self) -> str:
        return f"{self.target} · {self.kind}"


def default_variants(layer_names: list[str], kinds=tuple(KINDS)) -> list[Variant]:
    """Every layer alone, kind by kind, then all layers at once per kind: for 5 layers and both
    kinds, 5 grid, 5 uniform, all-grid, all-uniform (12 variants)."""
    variants = [Variant((name,), kind) for kind in kinds for name in layer_names]
    if len(layer_names) > 1:
        variants += [Variant(tuple(layer_names), kind, all_layers=True) for kind in kinds]
    return variants


@dataclass
class Matching:
    """Which detections of ``after`` are those of ``before``.

    ``pairs`` (K, 2) int64: (index in before, index in after) of each kept detection, in the order
    they were taken (highest IoU first); ``ious`` (K,) float32 their IoU; ``lost`` indices of
    ``before`` left unpaired; ``gained`` indices of ``after`` left unpaired (both ascending)."""

    pairs: np.ndarray
    ious: np.ndarray
    lost: np.ndarray
    gained: np.ndarray


def match_detections(before: Detections, after: Detections, match_iou: float = MATCH_IOU) -> Matching:
    """Greedy one-to-one matching by IoU (module docstring): same class and IoU >= ``match_iou``."""
    n_before, n_after = len(before), len(after)
    pairs: list[tuple[int, int]] = []
    ious: list[float] = []
    if n_before and n_after:
        iou = box_iou(
            torch.as_tensor(before.boxes, dtype=torch.float64), torch.as_tensor(after.boxes, dtype=torch.float64)
        ).numpy()
        same_class = before.classes[:, None] == after.classes[None, :]
        rows, cols = np.nonzero(same_class & (iou >= match_iou))
        # Highest IoU first; lexsort's last key is the primary one, and a stable sort keeps the
        # (row, col) order np.nonzero gives for equal IoUs.
        order = np.lexsort((cols, rows, -iou[rows, cols]))
        used_before, used_after = np.zeros(n_before, bool), np.zeros(n_after, bool)
        for row, col in zip(rows[order], cols[order]):
            if not used_before[row] and not used_after[col]:
                used_before[row] = used_after[col] = True
                pairs.append((int(row), int(col)))
                ious.append(float(iou[row, col]))
    paired_before = {row for row, _ in pairs}
    paired_after = {col for _, col in pairs}
    return Matching(
        np.array(pairs, dtype=np.int64).reshape(-1, 2),
        np.array(ious, dtype=np.float32),
        np.array([i for i in range(n_before) if i not in paired_before], dtype=np.int64),
        np.array([j for j in range(n_after) if j not in paired_after], dtype=np.int64),
    )


@dataclass
class VariantResult:
    """How one variant's detections differ from the baseline's on one image.

    ``detections``: the variant's, in original-image pixels; ``matching``: against the baseline's;
    ``score_changes`` (K,) float32: variant score - baseline score of each kept pair, in
    ``matching.pairs`` order. ``kept`` / ``lost`` / ``gained``: counts (kept + lost = baseline
    detections, kept + gained = the variant's); ``mean_iou``: mean IoU of the kept pairs;
    ``mean_score_change``: mean of ``score_changes`` (NaN for both when nothing was kept).
    """

    variant: Variant
    detections: Detections
    matching: Matching
    score_changes: np.ndarray

    @classmethod
    def against(
        cls, variant: Variant, baseline: Detections, detections: Detections, match_iou: float = MATCH_IOU
    ) -> VariantResult:
        """The variant's detections matched against the baseline's (``match_detections``)."""
        matching = match_detections(baseline, detections, match_iou)
        changes = detections.scores[matching.pairs[:, 1]] - baseline.scores[matching.pairs[:, 0]]
        return cls(variant, detections, matching, changes.astype(np.float32))

    @property
    def kept(self) -> int:
        return len(self.matching.pairs)

    @property
    def lost(self) -> int:
        return len(self.matching.lost)

    @property
    def gained(self) -> int:
        return len(self.matching.gained)

    @property
    def mean_iou(self) -> float:
        return float(self.matching.ious.mean()) if self.kept else math.nan

    @property
    def mean_score_change(self) -> float:
        return float(self.score_changes.mean()) if self.kept else math.nan


@dataclass
class ImageAblation:
    """Every variant against the baseline on one image, at one set of thresholds.

    ``baseline``: the model's own detections (original-image pixels); ``results``: one
    ``VariantResult`` per variant, in run order; ``imgsz``, ``conf``, ``iou``, ``match_iou``:
    what they were computed at; ``image_shape``: (H, W) of the image.
    """

    image_shape: tuple[int, int]
    baseline: Detections
    results: list[VariantResult]
    imgsz: int
    conf: float
    iou: float
    match_iou: float

    def result(self, name: str) -> VariantResult:
        """The result of the variant called ``name`` (``Variant.name``)."""
        for result in self.results:
            if result.variant.name == name:
                return result
        raise KeyError(f"no variant {name!r}; variants: {[r.variant.name for r in self.results]}")

    def rows(self) -> list[dict]:
        """One row per variant: variant, layer, kind, baseline (its detections), detections (the
        variant's), kept, lost, gained, mean_iou,
        mean_score_change (NaN where nothing was kept)."""
        return [
            {
                "variant": r.variant.name,
                "layer": r.variant.target,
                "kind": r.variant.kind,
                "baseline": len(self.baseline),
                "detections": len(r.detections),
                "kept": r.kept,
                "lost": r.lost,
                "gained": r.gained,
                "mean_iou": r.mean_iou,
                "mean_score_change": r.mean_score_change,
            }
            for r in self.results
        ]

    def as_dict(self, pixel_scale=(1.0, 1.0)) -> dict:
        """JSON-ready: the settings, the baseline and per variant its row (``rows``), its boxes, the
        kept pairs (indices into ``baseline`` and the variant's ``detections``, their IoU) and the
        indices of the lost baseline boxes (``lost_baseline``) and gained variant boxes (``gained_variant``).

        ``pixel_scale``: (sx, sy) of the image the probe saw per original-image pixel (the app
        downscales huge images); boxes are divided by it, so they are in original-image pixels.
        """
        sx, sy = pixel_scale
        unscale = np.array([sx, sy, sx, sy], dtype=np.float64)

        def boxes(detections: Detections) -> list[dict]:
            return [
                {
                    "box_xyxy": [round(float(v), 2) for v in detections.boxes[i] / unscale],
                    "class": int(detections.classes[i]),
                    "name": str(detections.names.get(int(detections.classes[i]), detections.classes[i])),
                    "score": round(float(detections.scores[i]), 4),
                }
                for i in range(len(detections))
            ]

        variants = []
        for row, result in zip(self.rows(), self.results):
            matching = result.matching
            variants.append(
                {
                    **{k: _json_number(v) for k, v in row.items()},
                    "layers": list(result.variant.layers),
                    "detections": boxes(result.detections),
                    "kept_pairs": [
                        {"baseline": int(a), "variant": int(b), "iou": round(float(iou), 4)}
                        for (a, b), iou in zip(matching.pairs, matching.ious)
                    ],
                    "lost_baseline": matching.lost.tolist(),
                    "gained_variant": matching.gained.tolist(),
                }
            )
        return {
            "imgsz": self.imgsz,
            "conf": self.conf,
            "iou": self.iou,
            "match_iou": self.match_iou,
            "matching": "greedy by IoU, same class, IoU >= match_iou (dcnv3.analysis.ablation.match_detections)",
            "coordinates": "original-image pixels, xyxy",
            "baseline": boxes(self.baseline),
            "variants": variants,
        }


def _json_number(value):
    """NaN (nothing kept) -> None: JSON has no NaN."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


@dataclass
class AblationRun:
    """The forwards of one image: the baseline's and each variant's raw predictions (before NMS),
    so that any thresholds are a cheap query (``compare``), as ``Probe.detect`` is.

    ``baseline``: ``RawPredictions`` of the model as it is; ``variants`` / ``predictions``: one
    ``RawPredictions`` per ``Variant``; ``layers``: the deformable layers' names in forward order;
    ``image_shape``: (H, W) of the image; ``imgsz``: the network input size asked for;
    ``max_det``: as ``YOLO.predict``."""

    image_shape: tuple[int, int]
    layers: list[str]
    baseline: RawPredictions
    variants: list[Variant]
    predictions: list[RawPredictions]
    imgsz: int
    max_det: int = 300

    def compare(self, conf: float = 0.25, iou: float = 0.7, match_iou: float = MATCH_IOU) -> ImageAblation:
        """Detections of every run at (conf, iou) (ultralytics' NMS, as ``YOLO.predict``) and each
        variant matched against the baseline (``match_detections``)."""
        baseline = self.baseline.detections(self.image_shape, conf, iou, self.max_det)
        results = []
        for variant, raw in zip(self.variants, self.predictions):
            detections = raw.detections(self.image_shape, conf, iou, self.max_det)
            results.append(VariantResult.against(variant, baseline, detections, match_iou))
        return ImageAblation(self.image_shape, baseline, results, self.imgsz, float(conf), float(iou), float(match_iou))


def run_ablation(
    model, image, imgsz: int = 640, variants: list[Variant] | None = None, max_det: int = 300, nms: bool | None = None
) -> AblationRun:
    """One probe forward of ``model`` on ``image`` as it is and one per variant.

    Args:
        model: an ultralytics ``YOLO`` with deformable layers (``dcnv3.yolo.loading.load_model``).
        image: path, or BGR uint8 (H, W, 3) array (as ``dcnv3.analysis.probe.probe``).
        imgsz, max_det, nms: as ``dcnv3.analysis.probe.probe``.
        variants: default ``default_variants`` of every deformable layer.

    The overrides go on the modules of the probe's inference copy (``inference_model``), the one
    the probe runs. The caller keeps other forwards of the same model out meanwhile (the app
    holds its ``model_lock``): an override is visible to every forward of that copy.
    Raises ValueError for a model without deformable layers or an unknown layer name.
    """
    runner = inference_model(model, one_to_one=nms is False)
    modules = dict(deformable_modules(runner))
    if not modules:
        raise ValueError("the model has no deformable (DCNv3, DCNv4 or DCNv2) layer to ablate")
    names = list(modules)
    variants = default_variants(names) if variants is None else list(variants)
    for variant in variants:
        unknown = [name for name in variant.layers if name not in modules]
        if unknown:
            raise ValueError(f"no deformable layer named {unknown[0]!r}; layers: {', '.join(names)}")

    def forward():
        return probe(model, image, imgsz=imgsz, max_det=max_det, nms=nms)

    baseline = forward()
    predictions = []
    for variant in variants:
        offsets_to_grid, uniform_weights = KINDS[variant.kind]
        with override_sampling([modules[name] for name in variant.layers], offsets_to_grid, uniform_weights):
            predictions.append(forward().raw)
    return AblationRun(baseline.image_shape, names, baseline.raw, variants, predictions, int(imgsz), int(max_det))


def ablate(
    model,
    image,
    imgsz: int = 640,
    conf: float = 0.25,
    iou: float = 0.7,
    match_iou: float = MATCH_IOU,
    variants: list[Variant] | None = None,
    max_det: int = 300,
    nms: bool | None = None,
) -> ImageAblation:
    """``run_ablation(...).compare(conf, iou, match_iou)``: every variant against the baseline on one image."""
    return run_ablation(model, image, imgsz, variants, max_det, nms).compare(conf, iou, match_iou)


@dataclass
class VariantSummary:
    """One variant over a set of images: counts summed over the images; ``mean_iou`` and
    ``mean_score_change`` over every kept pair of every image (NaN when none was kept);
    ``images_changed``: images where anything was lost or gained."""

    variant: Variant
    images: int
    baseline: int
    kept: int
    lost: int
    gained: int
    mean_iou: float
    mean_score_change: float
    images_changed: int

    def row(self) -> dict:
        return {
            "variant": self.variant.name,
            "layer": self.variant.target,
            "kind": self.variant.kind,
            "images": self.images,
            "baseline": self.baseline,
            "kept": self.kept,
            "lost": self.lost,
            "gained": self.gained,
            "mean_iou": self.mean_iou,
            "mean_score_change": self.mean_score_change,
            "images_changed": self.images_changed,
        }


@dataclass
class FolderAblation:
    """``ablate_folder``'s result: ``summaries`` one per variant; ``images`` the per-image results
    keyed by the image's name (path or index as given)."""

    summaries: list[VariantSummary]
    images: dict[str, ImageAblation] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [summary.row() for summary in self.summaries]

    def as_dict(self) -> dict:
        """JSON-ready: per variant its summary row, and every image's ``ImageAblation.as_dict``."""
        return {
            "variants": [{k: _json_number(v) for k, v in row.items()} for row in self.rows()],
            "images": {name: result.as_dict() for name, result in self.images.items()},
        }


def summarise(images: dict[str, ImageAblation]) -> FolderAblation:
    """Per-variant sums over images that were all run with the same variants."""
    results = list(images.values())
    summaries = []
    for index, first in enumerate(results[0].results if results else []):
        per_image = [(image, image.results[index]) for image in results]
        ious = np.concatenate([r.matching.ious for _, r in per_image])
        changes = np.concatenate([r.score_changes for _, r in per_image])
        summaries.append(
            VariantSummary(
                first.variant,
                len(per_image),
                sum(len(image.baseline) for image, _ in per_image),
                sum(r.kept for _, r in per_image),
                sum(r.lost for _, r in per_image),
                sum(r.gained for _, r in per_image),
                float(ious.mean()) if len(ious) else math.nan,
                float(changes.mean()) if len(changes) else math.nan,
                sum(1 for _, r in per_image if r.lost or r.gained),
            )
        )
    return FolderAblation(summaries, images)


def ablate_folder(
    model,
    images,
    imgsz: int = 640,
    conf: float = 0.25,
    iou: float = 0.7,
    match_iou: float = MATCH_IOU,
    variants: list[Variant] | None = None,
    max_det: int = 300,
    nms: bool | None = None,
    on_image=None,
) -> FolderAblation:
    """``ablate`` of each image (paths or arrays), summed per variant (``VariantSummary``).

    ``on_image(name, ImageAblation)`` is called after each image (the CLI prints progress).
    Images are keyed by their path's name (or their index for arrays)."""
    done: dict[str, ImageAblation] = {}
    for index, image in enumerate(images):
        name = Path(image).name if isinstance(image, (str, Path)) else str(index)
        result = ablate(model, image, imgsz, conf, iou, match_iou, variants, max_det, nms)
        done[name] = result
        if on_image is not None:
            on_image(name, result)
    return summarise(done)
