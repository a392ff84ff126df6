"""Which model runs, on what image, and running it only once per (image, model, settings).

* ``ModelRegistry``: the models the app offers, by name: bundled checkpoints (``assets/models/*.pt``),
  a models folder, an explicit ``--model`` path, uploaded checkpoints (size-limited) and an untrained
  DCNv3-YOLOv8n built from its YAML. Loading goes through ``dcnv3.loading.load_model`` (no code from the
  file runs) and loaded models are kept in a small LRU.
* ``load_image``: any image file or array -> the BGR uint8 array the model sees, downscaled so the
  longest side is at most ``MAX_IMAGE_SIDE`` (memory stays bounded; the scale is recorded).
* ``Analyser``: image + model name + settings -> ``Analysis`` (the image, the model's notices and the
  cached ``dcnv3.probe.Probe``), memoised in an LRU keyed by (image hash, model, imgsz, conf, iou), so the
  UI and the HTTP API never rerun the model for an image they have already seen.

Coordinates: ``Analysis.image.bgr`` is the "processed" image. Every probe coordinate is in its
continuous pixels (pixel i spans [i, i+1)); ``LoadedImage.scale`` = processed px per original px
(1.0 unless the file was larger than ``MAX_IMAGE_SIDE``).
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcnv3.checkpoints import CheckpointError
from dcnv3 import yolo as dcnv3_yolo
from dcnv3.loading import MAX_CHECKPOINT_BYTES, dcnv3_layer_names, load_model, train_imgsz
from dcnv3.probe import Probe, probe

__all__ = ["ModelRegistry", "LoadedModel", "LoadedImage", "Analysis", "Analyser", "load_image",
           "BUNDLED_DIR", "DEFAULT_BUNDLED", "UNTRAINED_NAME", "UNTRAINED_NOTICE", "NO_DCNV3_NOTICE",
           "MAX_UPLOAD_BYTES", "MAX_IMAGE_SIDE", "MAX_IMAGE_PIXELS"]

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"
DEFAULT_BUNDLED = "dcnv3-yolov8n.pt"
UNTRAINED_NAME = "dcnv3-yolov8n (untrained)"
UNTRAINED_YAML = "dcnv3-yolov8n.yaml"
UNTRAINED_NOTICE = "untrained model: offsets are zero (every point sits on the regular grid)"
NO_DCNV3_NOTICE = "this detector has no DCNv3 layer: only its detections are shown"
MAX_UPLOAD_BYTES = 400 * 2**20  # far above any YOLOv8-x checkpoint (~140 MB)
MAX_IMAGE_SIDE = 4096  # larger images are downscaled before probing
MAX_IMAGE_PIXELS = 400_000_000  # refuse to decode more than this (a 20000 x 20000 image)
UPLOAD_PREFIX = "upload: "
MIN_IMGSZ, MAX_IMGSZ = 32, 1920  # network input sizes the app accepts (memory stays bounded)




@dataclass
class LoadedModel:
    """A loaded detector and what the UI should say about it."""
    name: str
    yolo: object  # ultralytics YOLO
    dcnv3_layers: list[str]
    untrained: bool = False

    @property
    def notices(self) -> list[str]:
        notes = []
        if self.untrained:
            notes.append(UNTRAINED_NOTICE)
        if not self.dcnv3_layers:
            notes.append(NO_DCNV3_NOTICE)
        return notes


class ModelRegistry:
    """Model names -> checkpoint sources, and an LRU of loaded models.

    Names: a bundled checkpoint is its file name (``dcnv3-yolov8n.pt``); a file in the models
    folder is its path relative to that folder; ``--model PATH`` is its file name; an upload is
    ``"upload: <file name>"``; the untrained model is ``UNTRAINED_NAME``.
    """

    def __init__(self, models_dir: str | Path | None = None, model: str | Path | None = None,
                 bundled_dir: str | Path = BUNDLED_DIR, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 cache_size: int = 3):
        self.models_dir = Path(models_dir).resolve() if models_dir else None
        self.bundled_dir = Path(bundled_dir).resolve()
        self.max_upload_bytes = max_upload_bytes
        self.cache_size = cache_size
        self._extra: dict[str, Path] = {}  # --model and uploads, in the order they were added
        self._explicit_default: str | None = None
        self._loaded: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.RLock()
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
            while unique in known or unique == UNTRAINED_NAME:
                unique, n = f"{name} ({n})", n + 1
            self._extra[unique] = path
            return unique

    def names(self) -> list[str]:
        """Every model the UI offers: default first, then bundled, folder, uploads, untrained."""
        names = list(dict.fromkeys([*self._scan(), *self._extra, UNTRAINED_NAME]))
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
        """The checkpoint file of a model name (None for the untrained model).

        Besides registry names, a path inside the models folder (relative to it, or absolute) is
        accepted, for API callers. Anything else raises ValueError naming the choices.
        """
        if name == UNTRAINED_NAME:
            return None
        known = {**self._scan(), **self._extra}
        if name in known:
            return known[name]
        for folder in filter(None, (self.models_dir, self.bundled_dir)):
            candidate = Path(name) if Path(name).is_absolute() else folder / name
            candidate = candidate.resolve()
            if _inside(candidate, folder) and candidate.is_file():
                return candidate
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(self.names())}"
                         + (f", or a .pt file inside {self.models_dir}" if self.models_dir else ""))

    # -- loading -------------------------------------------------------------------------------
    def load(self, name: str) -> LoadedModel:
        """The loaded model for a name (LRU-cached). Raises ValueError / CheckpointError
        with a one-line message for unknown names and unusable checkpoints."""
        path = self.resolve(name)
        if path is not None and not path.is_file():  # e.g. an upload removed after --keep-files-minutes
            raise CheckpointError(f"{name}: the checkpoint file is gone (uploads are kept for a limited "
                                  f"time); load it again")
        stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path else None
        key = (name, str(path), stamp)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            if path is None:
                loaded = LoadedModel(name, _untrained_model(), [], untrained=True)
                loaded.dcnv3_layers = dcnv3_layer_names(loaded.yolo)
            else:
                limit = self.max_upload_bytes if name.startswith(UPLOAD_PREFIX) else MAX_CHECKPOINT_BYTES
                yolo = load_model(path, max_bytes=limit)
                loaded = LoadedModel(name, yolo, list(yolo.dcnv3_layers))
            self._loaded[key] = loaded
            while len(self._loaded) > self.cache_size:
                self._loaded.popitem(last=False)
            return loaded

    def add_upload(self, path: str | Path) -> str:
        """Register an uploaded checkpoint after loading it safely; returns its new name.

        Raises CheckpointError (UnsafeCheckpointError for hostile pickles) with a message
        that says what is wrong; a refused file is not registered.
        """
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path.name}: no such file")
        size = path.stat().st_size
        if size > self.max_upload_bytes:
            raise CheckpointError(f"{path.name}: {size / 2**20:.0f} MiB, over the "
                                  f"{self.max_upload_bytes / 2**20:.0f} MiB upload limit")
        yolo = load_model(path, max_bytes=self.max_upload_bytes)  # raises before registering
        name = self._add_extra(UPLOAD_PREFIX + path.name, path.resolve())
        stamp = (path.stat().st_mtime_ns, path.stat().st_size)
        with self._lock:
            self._loaded[(name, str(path.resolve()), stamp)] = LoadedModel(name, yolo, list(yolo.dcnv3_layers))
        return name


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _untrained_model():
    """A freshly initialised DCNv3-YOLOv8n (zero offsets, uniform weights), the same every time."""
    import torch
    from ultralytics import YOLO

    dcnv3_yolo.register()  # YOLO() resolves the DCNv3 blocks and finds the shipped YAML
    with torch.random.fork_rng():  # do not disturb the caller's random state
        torch.manual_seed(0)
        model = YOLO(UNTRAINED_YAML)
    model.model.float().eval()
    return model


# -- images ----------------------------------------------------------------------------------------
@dataclass
class LoadedImage:
    """The image the model sees: ``bgr`` (H, W, 3) uint8, at most ``MAX_IMAGE_SIDE`` on its long side.

    ``original_shape``: (H, W) of the file; ``scale``: (sx, sy) processed px per original px
    ((1, 1) unless downscaled; resizing maps pixel edges to edges, so continuous coordinates
    simply scale); ``key``: content hash for the probe cache; ``name``: file stem for exports.
    """
    bgr: np.ndarray
    original_shape: tuple[int, int]
    scale: tuple[float, float]
    key: str
    name: str = "image"
    notes: list[str] = field(default_factory=list)

    @property
    def downscaled(self) -> bool:
        return self.scale != (1.0, 1.0)

    def to_processed(self, x: float, y: float) -> tuple[float, float]:
        """Original-image continuous pixel coordinates -> processed-image ones."""
        return x * self.scale[0], y * self.scale[1]

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) processed-image coordinates (x, y) -> original-image coordinates."""
        return np.asarray(xy, dtype=np.float64) / np.asarray(self.scale)


def load_image(source, max_side: int = MAX_IMAGE_SIDE, name: str | None = None) -> LoadedImage:
    """A path or an array -> ``LoadedImage``. Arrays are BGR (OpenCV's order, as in ``dcnv3``).

    Grayscale, 16-bit, palette and alpha images become BGR; EXIF orientation is applied to files.
    Raises ValueError with a one-line reason for anything that is not a (readable) image.
    """
    import cv2

    from dcnv3.probe import prepare_image

    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or path.stem
        if not path.is_file():
            raise ValueError(f"{path.name}: no such file")
        if path.stat().st_size == 0:
            raise ValueError(f"{path.name}: the file is empty")
        array, original_shape, frames = _decode_file(path, max_side)
        digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    elif source is None:
        raise ValueError("no image: upload an image first")
    else:
        frames = 1
        array = np.asarray(source)
        original_shape = tuple(array.shape[:2])
        hasher = hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16)
        hasher.update(repr((array.shape, array.dtype.str)).encode())
        digest = hasher.hexdigest()
    bgr = prepare_image(array)
    if max(bgr.shape[:2]) > max_side:  # arrays (files are reduced while decoding)
        factor = max_side / max(bgr.shape[:2])
        size = (max(1, round(bgr.shape[1] * factor)), max(1, round(bgr.shape[0] * factor)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    scale = (bgr.shape[1] / original_shape[1], bgr.shape[0] / original_shape[0])
    notes = []
    if scale != (1.0, 1.0):
        notes.append(f"the image ({original_shape[1]} x {original_shape[0]} px) was downscaled to "
                     f"{bgr.shape[1]} x {bgr.shape[0]} px before probing (longest side at most "
                     f"{max_side} px); the views show and measure the downscaled image")
    if frames > 1:
        notes.append(f"an animated image ({frames} frames): its first frame is analysed")
    if min(original_shape) < 8:
        notes.append(f"a tiny image ({original_shape[1]} x {original_shape[0]} px): the network sees "
                     f"it upsampled, so expect no meaningful detections")
    return LoadedImage(bgr, tuple(map(int, original_shape)), tuple(map(float, scale)), digest,
                       name or "image", notes)


def _decode_file(path: Path, max_side: int) -> tuple[np.ndarray, tuple[int, int], int]:
    """Decode an image file with Pillow, already reduced to ``max_side`` (large JPEGs are decoded
    at 1/2, 1/4 or 1/8 size, so memory stays bounded). Returns (array in dcnv3's conventions:
    BGR, BGRA, gray or 16-bit; the file's (H, W) after EXIF orientation; its number of frames,
    of which only the first is decoded)."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our own limit below
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise _ImageRefused(f"{path.name}: {width} x {height} px is too large to decode "
                                 f"(limit {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels)")
            frames = _frame_count(image)
            rotated = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF turns it by 90 degrees
            if max(width, height) > max_side:
                image.draft("RGB", (max_side, max_side))  # JPEG only; other formats ignore it
            image.load()
            image = ImageOps.exif_transpose(image)
            if max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            array = _to_array(image)
    except _ImageRefused:
        raise
    except UnidentifiedImageError:
        raise ValueError(f"{path.name}: not an image (the file is not in an image format)") from None
    except MemoryError:
        raise ValueError(f"{path.name}: too large to decode in the memory available") from None
    except Exception as error:  # noqa: BLE001 - Pillow's decoders fail on broken files with
        # OSError, SyntaxError, EOFError, but also IndexError, struct.error or ValueError
        raise ValueError(f"{path.name}: a corrupt or truncated image ({type(error).__name__}: "
                         f"{error})") from None
    return array, ((width, height) if rotated else (height, width)), frames


class _ImageRefused(ValueError):
    """A readable image that DeformLens declines (its message is final)."""


def _frame_count(image) -> int:
    """Frames in an animated file; 1 when counting them fails (counting seeks through a possibly
    truncated file, and the first frame may still decode)."""
    try:
        return max(1, int(getattr(image, "n_frames", 1)))
    except Exception:  # noqa: BLE001 - see _decode_file: broken files fail in many ways
        return 1


def _to_array(image) -> np.ndarray:
    """A Pillow image -> numpy in dcnv3's conventions (BGR / BGRA / gray / 16-bit)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image).astype(np.uint16)
    if mode == "I":
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    if mode == "F":
        array = np.asarray(image, dtype=np.float32)
        span = float(array.max() - array.min()) or 1.0
        return ((array - array.min()) / span * 255).astype(np.uint8)
    if mode == "L":
        return np.asarray(image)
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info)
    image = image.convert("RGBA" if has_alpha else "RGB")
    array = np.asarray(image)
    return array[..., [2, 1, 0, 3]] if has_alpha else array[..., ::-1]


# -- the cached model run ---------------------------------------------------------------------------
@dataclass
class Analysis:
    """One model run on one image: what every view renders from (never reruns the model)."""
    image: LoadedImage
    model_name: str
    model_notices: list[str]
    probe: Probe
    imgsz: int
    conf: float
    iou: float
    seconds: float  # time of the model run

    @property
    def notices(self) -> list[str]:
        return [*self.model_notices, *self.image.notes]


class Analyser:
    """Runs the probe once per (image hash, model name, imgsz, conf, iou); an LRU keeps results."""

    def __init__(self, registry: ModelRegistry, cache_size: int = 4):
        self.registry = registry
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, Analysis] = OrderedDict()
        self._lock = threading.Lock()  # one model run at a time keeps memory bounded
        self.runs = 0  # how many times a model actually ran (tests check the cache with it)

    def input_size(self, model_name: str, imgsz: int | None = None) -> int:
        """``imgsz``, or when it is None / 0 the size the model was trained at
        (``dcnv3.loading.train_imgsz``: the checkpoint's own ``imgsz``, else 640)."""
        if imgsz:
            size = int(imgsz)
            if not MIN_IMGSZ <= size <= MAX_IMGSZ:
                raise ValueError(f"network input size must lie in [{MIN_IMGSZ}, {MAX_IMGSZ}], got {size}")
            return size
        return train_imgsz(self.registry.load(model_name).yolo)

    def analyse(self, source, model_name: str, conf: float = 0.25, iou: float = 0.7,
                imgsz: int | None = None, image: LoadedImage | None = None) -> Analysis:
        """Load the image (unless given) and the model, and probe, or return the cached result.
        ``imgsz``: network input size; None (default) takes the model's training size.

        Raises ValueError (bad image, unknown model, size out of range) or CheckpointError.
        """
        if not 0 <= conf <= 1 or not 0 <= iou <= 1:
            raise ValueError(f"conf and iou must lie in [0, 1], got conf={conf}, iou={iou}")
        image = image or load_image(source)
        imgsz = self.input_size(model_name, imgsz)
        key = (image.key, model_name, imgsz, round(float(conf), 4), round(float(iou), 4))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            model = self.registry.load(model_name)
            start = time.perf_counter()
            result = probe(model.yolo, image.bgr, imgsz=imgsz, conf=conf, iou=iou)
            analysis = Analysis(image, model_name, model.notices, result, int(imgsz), float(conf),
                                float(iou), time.perf_counter() - start)
            self.runs += 1
            self._cache[key] = analysis
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return analysis

    def analyse_any_threshold(self, source, model_name: str, imgsz: int | None = None) -> Analysis:
        """A cached analysis of this image and model at any conf/iou (the DCNv3 layers do not
        depend on them), else a fresh run at the defaults. Used by the sampling API."""
        image = load_image(source)
        imgsz = self.input_size(model_name, imgsz)
        with self._lock:
            for key in reversed(self._cache):
                if key[:3] == (image.key, model_name, imgsz):
                    return self._cache[key]
        return self.analyse(None, model_name, imgsz=imgsz, image=image)
