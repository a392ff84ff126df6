"""The cached model run: image + model name + settings -> ``Analysis`` (the image, the model's
notices and its ``dcnv3.analysis.probe.Probe``).

``Analyser`` runs the probe once per (image hash, model name, imgsz) and keeps the last few runs in
an ``LRUCache``, so the UI and the HTTP API never rerun the model for an image they have already
seen. Detections are a query on the cached forward (segment-anything's predictor pattern):
``Analysis.at_thresholds(conf, iou)`` runs NMS on the probe's raw predictions (``Probe.detect``),
so a confidence or IoU change never runs the model. Its ``images`` (``viz_app.state.images.ImageCache``)
keep the decoded files, so a request that names a file again (every API call names its image) does
not decode it again either. Its ``model_lock`` is held around every forward
the app makes on a registry
model (probe, video batches, the Learn toy): a DCNv3 layer hands what it computed to every
capture open on it, so two forwards of one model at once would mix their records.

Coordinates: ``Analysis.image.bgr`` is the "processed" image (``viz_app.state.images``); every probe
coordinate is in its continuous pixels.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

from dcnv3.analysis.probe import Probe, probe
from dcnv3.yolo.loading import train_imgsz
from viz_app.state.cache import LRUCache
from viz_app.state.images import ImageCache, LoadedImage
from viz_app.state.models import ModelRegistry

__all__ = ["Analysis", "Analyser", "checked_thresholds", "MIN_IMGSZ", "MAX_IMGSZ", "DEFAULT_CONF", "DEFAULT_IOU"]

MIN_IMGSZ, MAX_IMGSZ = 32, 1920  # network input sizes the app accepts (memory stays bounded)
DEFAULT_CONF, DEFAULT_IOU = 0.25, 0.7  # ultralytics' predict defaults, the app's sliders' start


@dataclass
class Analysis:
    """One model run on one image, with its detections at (``conf``, ``iou``): what every view
    renders from (never reruns the model).

    ``seconds``: the time of the model run; ``key``: what identifies it for caches of what is
    rendered from it (the image's content hash, the model, imgsz, conf, iou).
    """

    image: LoadedImage
    model_name: str
    model_notices: list[str]
    probe: Probe
    imgsz: int
    conf: float
    iou: float
    seconds: float

    @property
    def notices(self) -> list[str]:
        return [*self.model_notices, *self.image.notes]

    @property
    def key(self) -> tuple:
        return (self.image.key, self.model_name, self.imgsz, self.conf, self.iou)

    def at_thresholds(self, conf: float, iou: float) -> Analysis:
        """The same run with its detections at other thresholds: ultralytics' NMS on the probe's
        cached raw predictions (``Probe.detect``, about a millisecond), no forward. The DCNv3
        records are shared, not copied. Raises ValueError for thresholds outside [0, 1]."""
        conf, iou = checked_thresholds(conf, iou)
        if (conf, iou) == (self.conf, self.iou):
            return self
        max_det = self.probe.thresholds[2] if self.probe.thresholds else 300
        probe = replace(self.probe, detections=self.probe.detect(conf, iou, max_det), thresholds=(conf, iou, max_det))
        return replace(self, probe=probe, conf=conf, iou=iou)


def checked_thresholds(conf: float, iou: float) -> tuple[float, float]:
    """(conf, iou) rounded to 4 decimals (the sliders' steps are coarser); ValueError outside [0, 1]."""
    if not 0 <= conf <= 1 or not 0 <= iou <= 1:
        raise ValueError(f"conf and iou must lie in [0, 1], got conf={conf}, iou={iou}")
    return round(float(conf), 4), round(float(iou), 4)


class Analyser:
    """Runs the probe once per (image hash, model name, imgsz); an LRU keeps the runs, and each
    request's detections are a query on the cached run (``Analysis.at_thresholds``)."""

    def __init__(self, registry: ModelRegistry, cache_size: int = 4):
        self.registry = registry
        self.model_lock = threading.Lock()  # one forward at a time: captures stay apart, memory bounded
        self.runs = 0  # how many times a model actually ran (tests check the cache with it)
        self._analyses: LRUCache[tuple, Analysis] = LRUCache(cache_size)
        # Decoded files, looked up before the runs (whose key is the image's content hash).
        self.images = ImageCache()

    def input_size(self, model_name: str, imgsz: int | None = None) -> int:
        """``imgsz``, or when it is None / 0 the size the model was trained at
        (``dcnv3.yolo.loading.train_imgsz``: the checkpoint's own ``imgsz``, else 640)."""
        if imgsz:
            size = int(imgsz)
            if not MIN_IMGSZ <= size <= MAX_IMGSZ:
                raise ValueError(f"network input size must lie in [{MIN_IMGSZ}, {MAX_IMGSZ}], got {size}")
            return size
        return train_imgsz(self.registry.load(model_name).yolo)

    def analyse(
        self,
        source,
        model_name: str,
        conf: float = DEFAULT_CONF,
        iou: float = DEFAULT_IOU,
        imgsz: int | None = None,
        image: LoadedImage | None = None,
    ) -> Analysis:
        """Load the image (unless given; ``images``, cached) and the model, and probe, or take the cached run; its
        detections at ``conf`` / ``iou``. ``imgsz``: network input size; None (default) takes the
        model's training size.

        Raises ValueError (bad image, unknown model, size or thresholds out of range) or
        CheckpointError.
        """
        conf, iou = checked_thresholds(conf, iou)
        image = image or self.images.load(source)
        imgsz = self.input_size(model_name, imgsz)
        key = (image.key, model_name, imgsz)
        cached = self._analyses.get(key)
        if cached is None:

            def run() -> Analysis:
                model = self.registry.load(model_name)
                start = time.perf_counter()
                result = probe(model.yolo, image.bgr, imgsz=imgsz, conf=DEFAULT_CONF, iou=DEFAULT_IOU)
                self.runs += 1
                return Analysis(
                    image,
                    model_name,
                    model.notices,
                    result,
                    int(imgsz),
                    DEFAULT_CONF,
                    DEFAULT_IOU,
                    time.perf_counter() - start,
                )

            with self.model_lock:  # another request may have run it meanwhile: the cache looks again
                cached = self._analyses.get_or_compute(key, run)
        return cached.at_thresholds(conf, iou)
