"""Health of deformable layers: per-layer numbers and calibrated flags, for one probe or a set of images.

Every number is an image-wide mean over a ``LayerRecord``'s cells and groups, and every flag is
measured against what the same layer's own geometry gives on the same image with zero offsets and
uniform weights (the *reference*: the regular K x K grid, every point weighing the same), so a flag
means "this layer does something its plain-grid self would not", never "this number is large":

* **collapsed** (the offsets learned nothing): mean |offset| below ``collapsed_offset`` (0.1) of
  the grid's point spacing (``dilation * offset_scale`` cells). The reference has 0.
* **exploding**: the samples leave the image beyond what the grid does, or move far against the
  receptive field. ``outside_excess`` = (off-image share - the grid's off-image share) / (1 - the
  grid's share): the part of the samples the grid keeps inside that the offsets push out (0 for
  the reference, 1 if all leave); flagged above ``exploding_excess`` (0.5), or when mean |offset|
  exceeds ``exploding_offset`` (5) point spacings (the 3x3 grid reaches 1 spacing from its centre).
  A small P5 grid puts many of the grid's own samples off the image near the border; an absolute
  share (the old 30 %) flagged healthy P5 layers for exactly that.
* **saturated** (the weights use about one point): the weights' effective number of points
  ``P ** entropy`` (normalised entropy of each group's |m| / sum |m|, ``dcnv3.record.stats``) below
  ``saturated_points`` (1.5); the reference has P. A sigmoid (DCNv2) also saturates per point:
  flagged when more than ``binary_share`` (0.9) of its weights lie within 0.01 of 0 or 1, where the
  sigmoid's slope is below 0.01 and the mask stops learning.
* **vanished** (sigmoid and free kinds): the weights are all about 0 (mean |m| below
  ``vanished_sigmoid`` 0.01, or ``vanished_free`` 1e-3 for DCNv4's free scalars) although the
  offsets moved: the layer outputs about nothing. A softmax cannot vanish.
* **untrained** (free kind): offsets and scalars all about 0 together: DCNv4's initial state, not a
  collapse (its ``offset_mask`` starts at zero); reported instead of *collapsed* and *vanished*.
* **same groups**: mean pairwise cosine similarity of the groups' offset fields above
  ``same_groups_cosine`` (0.95), only with G >= 2 and at least two moving groups: the groups are
  redundant. The reference (zero offsets) has no direction and no value.

The thresholds were set on the bundled DCNv3-YOLOv8n and the fork fixtures (healthy) and on copies
of them broken on purpose (``tests/analysis/test_health_calibration.py``, docs/health.md). The healthy
extremes seen there: mean |offset| >= 0.89 spacings (9x the collapsed threshold), outside excess
<= 0.26, effective points >= 2.3 of 9 (extra_v11's P5; the bundled model >= 4.5), group cosine
<= 0.76.

``layer_health(record, letterbox)`` -> ``LayerHealth`` for one layer of one image;
``probe_health(probe)`` for every layer of a probe; ``health(model, source)`` (also
``dcnv3.health``) probes a set of images and returns a ``HealthReport``: per image and per layer
the numbers and flags, and per layer their means over the images with the flags those means raise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcnv3.record import stats

__all__ = [
    "THRESHOLDS",
    "FLAG_NAMES",
    "LayerHealth",
    "HealthReport",
    "layer_health",
    "probe_health",
    "evaluate",
    "aggregate",
    "health",
    "image_files",
    "image_paths",
    "IMAGE_SUFFIXES",
    "NEAR_BOUND",
]

THRESHOLDS = {
    "collapsed_offset": 0.1,  # point spacings: mean |offset| below = collapsed to the grid
    "exploding_excess": 0.5,  # share of the grid's in-image samples pushed off the image
    "exploding_offset": 5.0,  # point spacings: mean |offset| above = exploding
    "saturated_points": 1.5,  # effective points P ** entropy below = saturated on one point
    "binary_share": 0.9,  # sigmoid: share of weights within 0.01 of 0 or 1 above = saturated
    "vanished_sigmoid": 0.01,  # sigmoid: mean weight below = vanished
    "vanished_free": 1e-3,  # free (DCNv4): mean |m| below = vanished (or untrained with zero offsets)
    "same_groups_cosine": 0.95,  # mean pairwise cosine of the groups' offset fields above = same
}
# The flags by key, with the plain-language name the UI and the CLI print.
FLAG_NAMES = {
    "collapsed": "collapsed to the grid",
    "exploding": "exploding off the image",
    "saturated": "weights saturated",
    "vanished": "weights vanished",
    "untrained": "untrained",
    "same_groups": "groups learned the same thing",
}
# The image files the CLI, the health report and the health monitor read (``image_files``).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
NEAR_BOUND = 0.01  # a sigmoid within this of 0 or 1 has slope < 0.01: it no longer learns


@dataclass
class LayerHealth:
    """One layer's numbers (image-wide means over cells and groups, or their means over images)
    and the flags they raise: ``flags`` {key of ``FLAG_NAMES``: the sentence saying why}, empty
    when healthy.

    Offsets are in feature cells of the layer's input and in *point spacings* (``spacing`` =
    dilation * offset_scale cells, the distance between neighbouring points of the regular grid).
    ``*_reference`` fields are the same layer with zero offsets on the same image.
    """

    name: str
    stage: str
    weight_kind: str
    stride: int
    groups: int
    kernel: int
    points: int
    grid: tuple[int, int]
    spacing: float  # cells between neighbouring grid points
    mean_offset: float  # cells
    outside_share: float  # 0..1, samples off the image
    outside_share_reference: float  # 0..1, the regular grid's samples off the image
    entropy: float  # 0..1, normalised entropy of |m| / sum |m| per group
    effective_dilation: float  # cells; the reference's is ``spacing``
    mean_abs_weight: float  # mean |m| over points, cells and groups
    binary_share: float | None  # sigmoid: share of weights within 0.01 of 0 or 1; None otherwise
    group_similarity: float | None  # None when G < 2 or fewer than two groups moved
    images: int = 1  # how many images the numbers are means over
    flags: dict[str, str] = field(default_factory=dict)

    @property
    def offset_ratio(self) -> float:
        """Mean |offset| in point spacings (0 = the regular grid)."""
        return self.mean_offset / self.spacing

    @property
    def outside_excess(self) -> float:
        """Share of the samples the regular grid keeps inside that the offsets push off the image."""
        inside = 1.0 - self.outside_share_reference
        return (self.outside_share - self.outside_share_reference) / inside if inside > 1e-9 else 0.0

    @property
    def effective_points(self) -> float:
        """P ** entropy: how many of the P points effectively carry the weight (P when uniform)."""
        return float(self.points**self.entropy)

    def as_dict(self) -> dict:
        """The JSON form (the ``dcnv3 health`` schema, docs/cli.md): every field and derived number."""
        values = dataclasses.asdict(self)
        values["grid"] = list(self.grid)
        values.update(
            offset_ratio=self.offset_ratio, outside_excess=self.outside_excess, effective_points=self.effective_points
        )
        return values


def evaluate(numbers: LayerHealth) -> dict[str, str]:
    """The flags ``numbers`` raise (see the module docstring): {flag key: why}."""
    t = THRESHOLDS
    kind = numbers.weight_kind
    flags = {}
    still = numbers.offset_ratio < t["collapsed_offset"]
    vanish_limit = {"sigmoid": t["vanished_sigmoid"], "free": t["vanished_free"]}.get(kind)
    vanished = vanish_limit is not None and numbers.mean_abs_weight < vanish_limit
    if kind == "free" and still and vanished:
        flags["untrained"] = (
            f"untrained: offsets ({numbers.offset_ratio:.3f} spacings) and weights "
            f"(mean |m| {numbers.mean_abs_weight:.2g}) all about 0, DCNv4's initial state"
        )
        return flags  # nothing else can be said of a layer that has not started
    if still:
        flags["collapsed"] = (
            f"collapsed to the grid: mean |offset| {numbers.offset_ratio:.3f} point spacings "
            f"< {t['collapsed_offset']:g}, the layer acts like a plain convolution"
        )
    reasons = []
    if numbers.outside_excess > t["exploding_excess"]:
        reasons.append(
            f"{numbers.outside_excess:.0%} of the samples the grid keeps inside pushed off the image "
            f"> {t['exploding_excess']:.0%} ({numbers.outside_share:.0%} off vs the grid's "
            f"{numbers.outside_share_reference:.0%})"
        )
    if numbers.offset_ratio > t["exploding_offset"]:
        reasons.append(f"mean |offset| {numbers.offset_ratio:.1f} point spacings > {t['exploding_offset']:g}")
    if reasons:
        flags["exploding"] = f"exploding off the image: {'; '.join(reasons)}"
    if vanished:
        flags["vanished"] = (
            f"weights vanished: mean |m| {numbers.mean_abs_weight:.2g} < {vanish_limit:g} "
            "while the offsets move, the layer outputs about nothing"
        )
    reasons = []
    if numbers.effective_points < t["saturated_points"]:
        reasons.append(
            f"on one point: {numbers.effective_points:.2f} of {numbers.points} points carry the "
            f"weight < {t['saturated_points']:g}"
        )
    if not vanished and numbers.binary_share is not None and numbers.binary_share > t["binary_share"]:
        reasons.append(
            f"at 0 or 1: {numbers.binary_share:.0%} of the sigmoid weights within {NEAR_BOUND} "
            f"of a bound > {t['binary_share']:.0%}"
        )
    if reasons:
        flags["saturated"] = f"weights saturated {'; '.join(reasons)}"
    if numbers.group_similarity is not None and numbers.group_similarity > t["same_groups_cosine"]:
        flags["same_groups"] = (
            f"groups learned the same thing: cosine {numbers.group_similarity:.3f} > "
            f"{t['same_groups_cosine']:g}, fewer groups would do"
        )
    return flags


def layer_health(layer, letterbox) -> LayerHealth:
    """Numbers and flags of one ``LayerRecord`` on its image (``letterbox`` places the border)."""
    reference = dataclasses.replace(layer, offsets=np.zeros_like(layer.offsets))
    weights = layer.weights.astype(np.float64)
    binary = None
    if layer.weight_kind == "sigmoid":
        binary = float(((weights < NEAR_BOUND) | (weights > 1.0 - NEAR_BOUND)).mean())
    numbers = LayerHealth(
        name=layer.name,
        stage=layer.stage,
        weight_kind=layer.weight_kind,
        stride=int(layer.stride),
        groups=int(layer.groups),
        kernel=int(layer.kernel),
        points=int(layer.points),
        grid=tuple(layer.grid),
        spacing=float(layer.dilation * layer.offset_scale),
        mean_offset=float(stats.offset_magnitude(layer).mean()),
        outside_share=float(stats.outside_share(layer, letterbox).mean()),
        outside_share_reference=float(stats.outside_share(reference, letterbox).mean()),
        entropy=float(stats.weight_entropy(layer).mean()),
        effective_dilation=float(stats.effective_dilation(layer).mean()),
        mean_abs_weight=float(np.abs(weights).mean()),
        binary_share=binary,
        group_similarity=stats.group_similarity(layer),
    )
    numbers.flags = evaluate(numbers)
    return numbers


def probe_health(probe) -> list[LayerHealth]:
    """``layer_health`` of every layer of a ``dcnv3.analysis.probe.Probe``, in forward order."""
    return [layer_health(record, probe.letterbox) for record in probe.layers]


_MEAN_FIELDS = (
    "mean_offset",
    "outside_share",
    "outside_share_reference",
    "entropy",
    "effective_dilation",
    "mean_abs_weight",
    "binary_share",
    "group_similarity",
)


def aggregate(per_image: list[LayerHealth]) -> LayerHealth:
    """One layer's ``LayerHealth`` over several images: each number's mean over the images (over
    those that have it, for the optional ones), and the flags these means raise."""
    first = per_image[0]
    means = {}
    for name in _MEAN_FIELDS:
        values = [getattr(h, name) for h in per_image if getattr(h, name) is not None]
        means[name] = float(np.mean(values)) if values else None
    combined = dataclasses.replace(first, images=len(per_image), flags={}, **means)
    combined.flags = evaluate(combined)
    return combined


@dataclass
class HealthReport:
    """Health of a model's deformable layers over a set of images.

    ``per_image``: [(image name, [LayerHealth per layer])]; ``layers``: per layer, the means over
    the images and the flags they raise (``aggregate``); ``skipped``: [(image name, reason)].
    """

    model: str
    imgsz: int
    per_image: list[tuple[str, list[LayerHealth]]]
    layers: list[LayerHealth]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """Whether any layer's means over the images raise a flag (``dcnv3 health`` exits 1)."""
        return any(layer.flags for layer in self.layers)

    def flagged_images(self, layer_name: str) -> int:
        """On how many images this layer raised a flag of its own."""
        return sum(1 for _, layers in self.per_image for h in layers if h.name == layer_name and h.flags)

    def as_dict(self) -> dict:
        """The ``dcnv3 health --json`` document (its schema: docs/cli.md)."""
        return {
            "schema": "deformlens.health/1",
            "model": self.model,
            "imgsz": self.imgsz,
            "thresholds": dict(THRESHOLDS),
            "healthy": not self.flagged,
            "images": [name for name, _ in self.per_image],
            "skipped": [{"image": name, "reason": reason} for name, reason in self.skipped],
            "layers": [{**layer.as_dict(), "flagged_images": self.flagged_images(layer.name)} for layer in self.layers],
            "per_image": [{"image": name, "layers": [h.as_dict() for h in layers]} for name, layers in self.per_image],
        }


def image_files(folder, recursive: bool = False, suffixes=IMAGE_SUFFIXES) -> list[Path]:
    """The images in a folder, sorted by path: the files whose suffix (any case) is one of
    ``suffixes`` (lower case, with the dot), in the folder itself or, ``recursive``, in it and
    every folder below. The one folder walker of the package (the CLI, the health report, the
    trainer's health monitor and the dataset analysis list images with it)."""
    folder = Path(folder)
    entries = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in entries if p.suffix.lower() in suffixes)


def image_paths(source, required: bool = True) -> list[Path]:
    """An image file, or a folder's images (sorted) -> their paths; ValueError if there are none
    (for a folder without images only when ``required``) or ``source`` does not exist."""
    source = Path(source)
    if source.is_dir():
        paths = image_files(source)
        if not paths and required:
            raise ValueError(f"{source}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return paths
    if source.is_file():
        return [source]
    raise ValueError(f"{source}: no such file or folder")


def health(model, source, imgsz: int | None = None) -> HealthReport:
    """Probe ``source`` with ``model`` and report every deformable layer's health.

    Args:
        model: a checkpoint path (loaded with ``dcnv3.yolo.loading.load_model``: nothing in it runs) or a
            loaded ultralytics ``YOLO``.
        source: an image path, a folder of images, or a list of paths and BGR uint8 arrays.
        imgsz: network input size; None: the size the model was trained at (as the app and
            ``dcnv3 inspect``), else 640.

    Returns:
        A ``HealthReport``; ``report.flagged`` says whether any layer is flagged. Raises ValueError
        when the model has no deformable layer or no image could be read.
    """
    from dcnv3.analysis.probe import prepare_image, probe
    from dcnv3.yolo.loading import load_model, train_imgsz

    label = str(model) if isinstance(model, (str, Path)) else type(model).__name__
    if isinstance(model, (str, Path)):
        model = load_model(model)
    imgsz = int(imgsz or train_imgsz(model))
    items = image_paths(source) if isinstance(source, (str, Path)) else list(source)
    per_image, skipped = [], []
    for index, item in enumerate(items):
        name = Path(item).name if isinstance(item, (str, Path)) else f"image {index}"
        try:
            result = probe(model, prepare_image(item), imgsz=imgsz)
        except ValueError as error:  # one unreadable image does not stop the set
            skipped.append((name, str(error)))
            continue
        if not result.layers:
            raise ValueError(f"{label} has no deformable layer (DCNv2, DCNv3 or DCNv4) to check")
        per_image.append((name, probe_health(result)))
    if not per_image:
        raise ValueError(f"no readable image in {source}: " + "; ".join(f"{n}: {r}" for n, r in skipped))
    names = [h.name for h in per_image[0][1]]
    layers = [aggregate([next(h for h in layers if h.name == name) for _, layers in per_image]) for name in names]
    return HealthReport(label, imgsz, per_image, layers, skipped)
