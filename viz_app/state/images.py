"""Image decoding for the app: any image file or array -> ``LoadedImage``, the BGR uint8 array
the model sees, downscaled so its longest side is at most ``MAX_IMAGE_SIDE`` (memory stays
bounded; the scale is recorded), with the notes the UI shows about it.

Files are decoded with Pillow (EXIF orientation applied, large JPEGs decoded reduced); grayscale,
16-bit, palette and alpha images become BGR; anything that is not a readable image raises
ValueError with a one-line reason. Coordinates: ``LoadedImage.bgr`` is the "processed" image;
``LoadedImage.scale`` = processed px per original px (1.0 unless the file was larger than
``MAX_IMAGE_SIDE``), continuous pixels (pixel i spans [i, i+1)).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["LoadedImage", "load_image", "MAX_IMAGE_SIDE", "MAX_IMAGE_PIXELS"]

MAX_IMAGE_SIDE = 4096  # larger images are downscaled before probing
MAX_IMAGE_PIXELS = 400_000_000  # refuse to decode more than this (a 20000 x 20000 image)


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

    from dcnv3.analysis.probe import prepare_image

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
