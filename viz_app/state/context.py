"""The app context: everything the tabs share, made once per app and handed to each tab's
``build(ctx)`` (no tab imports ``ui``, and no module keeps app state in globals).

``AppContext.create(registry)`` builds the parts that are not given: the ``Analyser`` (cached
model runs and the model lock), the ``FileStore`` (where views, exports and videos are written),
the receptive-field cache (shared by the Image tab's view, the Compare tab and ``/erf``), the
detections-canvas cache of the Image tab, and the Learn tab's toy-scene pieces and dilation sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from viz_app.state.analyser import Analyser
from viz_app.state.cache import LRUCache
from viz_app.state.files import FileStore
from viz_app.state.models import ModelRegistry
from viz_app.views.ablation_view import AblationCache
from viz_app.views.lesson_view import sweep_cache
from viz_app.views.receptive import FieldCache
from viz_app.views.toy import ToyScenes

__all__ = ["AppContext", "CANVAS_CACHE_SIZE", "HOVER_PROBES"]

CANVAS_CACHE_SIZE = 16  # detections canvases (a few MB each at the display size)
HOVER_PROBES = 16  # runs whose layers browsers' hovers may still fetch (probes shared, not copied)


@dataclass
class AppContext:
    """``registry``: the models offered; ``analyser``: the cached model runs (``model_lock``
    serialises forwards); ``files``: this app's output folder; ``fields``: computed receptive
    fields; ``canvases``: the Image tab's detections canvases, keyed by (``Analysis.key``,
    highlighted detection) -> (canvas BGR (H, W, 3) uint8, (sx, sy) canvas px per image px);
    ``ablations``: the Ablation view's and /ablate's reruns per image, model and input size;
    ``hover_probes``: the probes the Sampling view's hover may fetch layer arrays of, by
    ``viz_app.views.hover.hover_token`` (it fetches the detections canvases from ``canvases``);
    ``toy_scenes``: the Learn tab's scene backgrounds and
    shapes (``viz_app.views.toy.ToyScenes``);
    ``sweeps``: the Learn tab's dilation-by-size curves (``viz_app.views.lesson_view.dilation_sweep``)."""

    registry: ModelRegistry
    analyser: Analyser
    files: FileStore
    fields: FieldCache
    canvases: LRUCache[tuple, tuple[np.ndarray, tuple[float, float]]]
    ablations: AblationCache = field(default_factory=AblationCache)
    hover_probes: LRUCache[str, object] = field(default_factory=lambda: LRUCache(HOVER_PROBES))
    toy_scenes: ToyScenes = field(default_factory=ToyScenes)
    sweeps: LRUCache[tuple, tuple[np.ndarray, np.ndarray]] = field(default_factory=sweep_cache)

    @classmethod
    def create(
        cls, registry: ModelRegistry, analyser: Analyser | None = None, files: FileStore | None = None
    ) -> AppContext:
        return cls(
            registry, analyser or Analyser(registry), files or FileStore(), FieldCache(), LRUCache(CANVAS_CACHE_SIZE)
        )
