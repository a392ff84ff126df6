"""Image decoding for the app: any image file or array -> ``LoadedImage``, the BGR uint8 array
the model sees, downscaled so its longest side is at most ``MAX_IMAGE_SIDE`` (memory stays
bounded; the scale is recorded), with the notes the UI shows about it.

Files are decoded with Pillow (EXIF orientation applied, large JPEGs decoded reduced); grayscale,
16-bit, palette and alpha images become BGR; anything that is not a readable image raises
ValueError with a one-line reason. Coordinates: ``LoadedImage.bgr`` is the "processed" image;
``LoadedImage.scale`` = processed px per original px (1.0 unless the file was larger than
``MAX_IMAGE_SIDE``), continuous pixels (pixel i spans [i, i+1)).

``ImageCache`` keeps the last few ``LoadedImage`` of files, so a request for an image the app has
already seen (every HTTP API call names its image again) neither decodes nor, for the same file,
hashes it again: see its docstring for what identifies a file.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from viz_app.state.cache import LRUCache

__all__ = ["LoadedImage", "load_image", "ImageCache", "MAX_IMAGE_SIDE", "MAX_IMAGE_PIXELS", "IMAGE_CACHE_SIZE"]

MAX_IMAGE_SIDE = 4096  # larger images are downscaled before probing
MAX_IMAGE_PIXELS = 400_000_000  # refuse to decode more than this (a 20000 x 20000 image)
IMAGE_CACHE_SIZE = 8  # decoded images kept by ``ImageCache`` (a 4096 px image is ~50 MB)


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
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or path.stem
        data = _read_file(path)
        return _decoded(path, data, _file_digest(data), max_side, name)
    if source is None:
        raise ValueError("no image: upload an image first")
    array = np.asarray(source)
    hasher = hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16)
    hasher.update(repr((array.shape, array.dtype.str)).encode())
    return _prepared(array, tuple(array.shape[:2]), 1, hasher.hexdigest(), max_side, name)


def _read_file(path: Path) -> bytes:
    """The file's bytes; ValueError (one line) for a missing or empty file."""
    if not path.is_file():
        raise ValueError(f"{path.name}: no such file")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"{path.name}: the file is empty")
    return data


def _file_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _decoded(path: Path, data: bytes, digest: str, max_side: int, name: str | None) -> LoadedImage:
    """Decode a file's bytes (read once: the digest and the decoder share them)."""
    array, original_shape, frames = _decode_file(path, max_side, data)
    return _prepared(array, original_shape, frames, digest, max_side, name or path.stem)


def _prepared(array, original_shape, frames: int, digest: str, max_side: int, name: str | None) -> LoadedImage:
    """A decoded array (dcnv3's conventions) -> ``LoadedImage``: BGR, at most ``max_side``, notes."""
    import cv2

    from dcnv3.analysis.probe import prepare_image

    bgr = prepare_image(array)
    if max(bgr.shape[:2]) > max_side:  # arrays (files are reduced while decoding)
        factor = max_side / max(bgr.shape[:2])
        size = (max(1, round(bgr.shape[1] * factor)), max(1, round(bgr.shape[0] * factor)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    scale = (bgr.shape[1] / original_shape[1], bgr.shape[0] / original_shape[0])
    notes = []
    if scale != (1.0, 1.0):
        notes.append(
            f"the image ({original_shape[1]} x {original_shape[0]} px) was downscaled to "
            f"{bgr.shape[1]} x {bgr.shape[0]} px before probing (longest side at most "
            f"{max_side} px); the views show and measure the downscaled image"
        )
    if frames > 1:
        notes.append(f"an animated image ({frames} frames): its first frame is analysed")
    if min(original_shape) < 8:
        notes.append(
            f"a tiny image ({original_shape[1]} x {original_shape[0]} px): the network sees "
            f"it upsampled, so expect no meaningful detections"
        )
    return LoadedImage(bgr, tuple(map(int, original_shape)), tuple(map(float, scale)), digest, name or "image", notes)


class ImageCache:
    """``load_image`` of files, remembering the last ``capacity`` results (thread-safe).

    Two keys, so that what the cache holds is never decoded again and, for an unchanged file,
    never read or hashed again either:

    * the file's identity, (resolved path, device, inode, size, mtime_ns, ctime_ns): the same
      file, unchanged since it was loaded, is answered without opening it (as git's index does);
    * the content hash (blake2b of the bytes): a new file with known content (gradio saves every
      upload, e.g. each ``gradio_client`` call's copy of its image, as a fresh file) is read and
      hashed, but not decoded; its ``LoadedImage`` is the cached one under the new file's name.

    The arrays are shared between the results (``LoadedImage.bgr`` is never written to: every
    view draws on a copy). Arrays (not files) are loaded as ``load_image`` does, uncached.
    ``decodes`` counts the files actually decoded (tests read it).
    """

    def __init__(self, capacity: int = IMAGE_CACHE_SIZE):
        self.decodes = 0
        self._by_file: LRUCache[tuple, LoadedImage] = LRUCache(capacity)
        self._by_content: LRUCache[tuple, LoadedImage] = LRUCache(capacity)

    def load(self, source, max_side: int = MAX_IMAGE_SIDE) -> LoadedImage:
        """``load_image(source, max_side)``, from the cache when it holds the file or its content."""
        if not isinstance(source, (str, Path)):
            return load_image(source, max_side)
        path = Path(source)
        try:
            resolved, info = path.resolve(), path.stat()
        except (OSError, RuntimeError):  # missing, a loop of links: load_image says what is wrong
            return load_image(path, max_side)
        identity = (str(resolved), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        file_key = (identity, max_side)
        cached = self._by_file.get(file_key)
        if cached is not None:
            return _named(cached, path.stem)
        data = _read_file(path)
        digest = _file_digest(data)
        loaded = self._by_content.get((digest, max_side))
        if loaded is None:
            loaded = _decoded(path, data, digest, max_side, None)
            self.decodes += 1
            self._by_content.put((digest, max_side), loaded)
        self._by_file.put(file_key, loaded)
        return _named(loaded, path.stem)


def _named(image: LoadedImage, name: str) -> LoadedImage:
    """``image`` under another file's name (same arrays, its own list of notes)."""
    return replace(image, name=name or "image", notes=list(image.notes))


def _decode_file(path: Path, max_side: int, data: bytes | None = None) -> tuple[np.ndarray, tuple[int, int], int]:
    """Decode an image file with Pillow, already reduced to ``max_side`` (large JPEGs are decoded
    at 1/2, 1/4 or 1/8 size, so memory stays bounded). Returns (array in dcnv3's conventions:
    BGR, BGRA, gray or 16-bit; the file's (H, W) after EXIF orientation; its number of frames,
    of which only the first is decoded). ``data``: the file's bytes, when already read (``path``
    then only names the file in messages)."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our own limit below
            try:
                image = Image.open(io.BytesIO(data) if data is not None else path)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise _ImageRefused(
                    f"{path.name}: {width} x {height} px is too large to decode "
                    f"(limit {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels)"
                )
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
    except Exception as error:
        # OSError, SyntaxError, EOFError, but also IndexError, struct.error or ValueError
        raise ValueError(f"{path.name}: a corrupt or truncated image ({type(error).__name__}: {error})") from None
    return array, ((width, height) if rotated else (height, width)), frames


class _ImageRefused(ValueError):
    """A readable image that DeformLens declines (its message is final)."""


def _frame_count(image) -> int:
    """Frames in an animated file; 1 when counting them fails (counting seeks through a possibly
    truncated file, and the first frame may still decode)."""
    try:
        return max(1, int(getattr(image, "n_frames", 1)))
    except Exception:
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
