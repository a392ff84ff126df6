"""The models the app offers, by name, and loading them: ``ModelRegistry``.

Names: the bundled checkpoints (``assets/models/*.pt``), every ``.pt`` of a models folder, an
explicit ``--model`` path, uploaded checkpoints (size-limited) and, for every model YAML that
``dcnv3.yolo`` ships (``MODEL_YAMLS``), an untrained model at scale n built from it (zero offsets,
uniform weights), so a new family's YAML appears here without a change to the app. Loading goes
through ``dcnv3.yolo.loading.load_model`` (no code from the file runs); loaded models are kept in an
``LRUCache``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from dcnv3 import yolo as dcnv3_yolo
from dcnv3.bundled import bundled_path
from dcnv3.yolo.checkpoints import CheckpointError
from dcnv3.yolo.loading import MAX_CHECKPOINT_BYTES, deformable_layer_names, load_model
from viz_app.state.cache import LRUCache

__all__ = [
    "ModelRegistry",
    "LoadedModel",
    "untrained_models",
    "BUNDLED_DIR",
    "DEFAULT_BUNDLED",
    "UNTRAINED_NAME",
    "UNTRAINED_NOTICE",
    "NO_DCNV3_NOTICE",
    "MAX_UPLOAD_BYTES",
    "UPLOAD_PREFIX",
]

BUNDLED_DIR = bundled_path("models")
DEFAULT_BUNDLED = "dcnv3-yolov8n.pt"
UNTRAINED_SUFFIX = " (untrained)"
UNTRAINED_NAME = "dcnv3-yolov8n" + UNTRAINED_SUFFIX  # the default when no checkpoint is found
UNTRAINED_NOTICE = "untrained model: offsets are zero (every point sits on the regular grid)"
NO_DCNV3_NOTICE = "this detector has no deformable layer (DCNv2, DCNv3 or DCNv4): only its detections are shown"
MAX_UPLOAD_BYTES = 400 * 2**20  # far above any YOLOv8-x checkpoint (~140 MB)
UPLOAD_PREFIX = "upload: "


def untrained_models() -> dict[str, str]:
    """{dropdown name: model YAML} of the untrained models: one per shipped YAML, at scale n
    (``dcnv3-yolov8.yaml`` -> ``"dcnv3-yolov8n (untrained)"``: ``dcnv3-yolov8n.yaml``, the file
    name carrying the scale as ultralytics reads it). ``UNTRAINED_NAME`` comes first."""
    stems = sorted(Path(name).stem for name in dcnv3_yolo.MODEL_YAMLS)
    choices = {f"{stem}n{UNTRAINED_SUFFIX}": f"{stem}n.yaml" for stem in stems}
    first = {UNTRAINED_NAME: choices.pop(UNTRAINED_NAME)} if UNTRAINED_NAME in choices else {}
    return {**first, **choices}


@dataclass
class LoadedModel:
    """A loaded detector and what the UI should say about it."""

    name: str
    yolo: object  # ultralytics YOLO
    deformable_layers: list[str]
    untrained: bool = False

    @property
    def notices(self) -> list[str]:
        notes = []
        if self.untrained:
            notes.append(UNTRAINED_NOTICE)
        if not self.deformable_layers:
            notes.append(NO_DCNV3_NOTICE)
        return notes


class ModelRegistry:
    """Model names -> checkpoint sources, and an LRU of loaded models.

    Names: a bundled checkpoint is its file name (``dcnv3-yolov8n.pt``); a file in the models
    folder is its path relative to that folder; ``--model PATH`` is its file name; an upload is
    ``"upload: <file name>"``; the untrained models are the keys of ``untrained_models()``.
    """

    def __init__(
        self,
        models_dir: str | Path | None = None,
        model: str | Path | None = None,
        bundled_dir: str | Path = BUNDLED_DIR,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        cache_size: int = 3,
    ):
        self.models_dir = Path(models_dir).resolve() if models_dir else None
        self.bundled_dir = Path(bundled_dir).resolve()
        self.max_upload_bytes = max_upload_bytes
        self.cache_size = cache_size
        self._extra: dict[str, Path] = {}  # --model and uploads, in the order they were added
        self._explicit_default: str | None = None
        self.untrained = untrained_models()
        self._loaded: LRUCache[tuple, LoadedModel] = LRUCache(cache_size)
        self._lock = threading.RLock()  # names change and models load one at a time
        if model is not None:
            path = Path(model).resolve()
            if not path.is_file():
                raise CheckpointError(f"{model}: no such file")
            self._explicit_default = self._add_extra(path.name, path)

    # -- names ---------------------------------------------------------------------------------
    def _scan(self) -> dict[str, Path]:
        """Bundled and models-folder checkpoints, rescanned on every call (files may land later)."""
        found: dict[str, Path] = {}
        if self.bundled_dir.is_dir():
            for path in sorted(self.bundled_dir.glob("*.pt")):
                found[path.name] = path.resolve()
        if self.models_dir and self.models_dir.is_dir() and self.models_dir != self.bundled_dir:
            for path in sorted(self.models_dir.rglob("*.pt")):
                name = path.relative_to(self.models_dir).as_posix()
                found[f"models/{name}" if name in found else name] = path.resolve()
        return found

    def _add_extra(self, name: str, path: Path) -> str:
        """Register ``path`` under ``name`` (or ``name (2)``, ... if taken); a file the registry
        already lists keeps its name."""
        with self._lock:
            known = {**self._scan(), **self._extra}
            for existing, existing_path in known.items():
                if existing_path == path:
                    return existing
            unique, n = name, 2
            while unique in known or unique in self.untrained:
                unique, n = f"{name} ({n})", n + 1
            self._extra[unique] = path
            return unique

    def names(self) -> list[str]:
        """Every model the UI offers: default first, then bundled, folder, uploads, untrained."""
        names = list(dict.fromkeys([*self._scan(), *self._extra, *self.untrained]))
        default = self.default_name()
        return [default] + [n for n in names if n != default]

    def default_name(self) -> str:
        """``--model`` if given, else the bundled DCNv3 model, else the first models-folder
        checkpoint, else the untrained DCNv3-YOLOv8n."""
        if self._explicit_default:
            return self._explicit_default
        scanned = self._scan()
        if DEFAULT_BUNDLED in scanned:
            return DEFAULT_BUNDLED
        folder = [n for n, p in scanned.items() if self.models_dir and _inside(p, self.models_dir)]
        return folder[0] if folder else UNTRAINED_NAME

    def resolve(self, name: str) -> Path | None:
        """The checkpoint file of a model name (None for an untrained model).

        Besides registry names, a path inside the models folder (relative to it, or absolute) is
        accepted, for API callers. Anything else raises ValueError naming the choices.
        """
        if name in self.untrained:
            return None
        known = {**self._scan(), **self._extra}
        if name in known:
            return known[name]
        for folder in filter(None, (self.models_dir, self.bundled_dir)):
            candidate = Path(name) if Path(name).is_absolute() else folder / name
            candidate = candidate.resolve()
            if _inside(candidate, folder) and candidate.is_file():
                return candidate
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(self.names())}"
            + (f", or a .pt file inside {self.models_dir}" if self.models_dir else "")
        )

    # -- loading -------------------------------------------------------------------------------
    def load(self, name: str) -> LoadedModel:
        """The loaded model for a name (LRU-cached). Raises ValueError / CheckpointError
        with a one-line message for unknown names and unusable checkpoints."""
        path = self.resolve(name)
        if path is not None and not path.is_file():  # e.g. an upload removed after --keep-files-minutes
            raise CheckpointError(
                f"{name}: the checkpoint file is gone (uploads are kept for a limited time); load it again"
            )
        stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path else None
        key = (name, str(path), stamp)
        cached = self._loaded.get(key)
        if cached is not None:
            return cached

        def load() -> LoadedModel:
            if path is None:
                yolo = _untrained_model(self.untrained[name])
                return LoadedModel(name, yolo, deformable_layer_names(yolo), untrained=True)
            limit = self.max_upload_bytes if name.startswith(UPLOAD_PREFIX) else MAX_CHECKPOINT_BYTES
            yolo = load_model(path, max_bytes=limit)
            return LoadedModel(name, yolo, list(yolo.deformable_layers))

        with self._lock:  # a model another request is loading is loaded once
            return self._loaded.get_or_compute(key, load)

    def add_upload(self, path: str | Path) -> str:
        """Register an uploaded checkpoint after loading it safely; returns its new name.

        Raises CheckpointError (UnsafeCheckpointError for hostile pickles) with a message
        that says what is wrong; a refused file is not registered.
        """
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path.name}: no such file")
        # The size limit is load_model's (checked once, before anything is read); the server
        # refuses larger uploads before they are stored (app.py's max_file_size).
        yolo = load_model(path, max_bytes=self.max_upload_bytes)  # raises before registering
        name = self._add_extra(UPLOAD_PREFIX + path.name, path.resolve())
        stamp = (path.stat().st_mtime_ns, path.stat().st_size)
        self._loaded.put((name, str(path.resolve()), stamp), LoadedModel(name, yolo, list(yolo.deformable_layers)))
        return name


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _untrained_model(yaml: str):
    """A freshly initialised model from a shipped YAML (zero offsets, uniform weights), the same
    every time."""
    import torch
    from ultralytics import YOLO

    dcnv3_yolo.register()  # YOLO() resolves the DCNv3 blocks and finds the shipped YAML
    with torch.random.fork_rng():  # do not disturb the caller's random state
        torch.manual_seed(0)
        model = YOLO(yaml)
    model.model.float().eval()
    return model
