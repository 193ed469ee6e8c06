"""Image reading that survives what users actually have on disk.

EXIF orientation is applied (so pixel coordinates refer to the image as it is displayed, like
COLMAP's undistorted images), grayscale / RGBA / palette / 16-bit / CMYK are converted to 8-bit RGB,
and every failure raises :class:`ImageReadError` naming the file.

Size policy: images of more than :data:`MAX_PIXELS` (150 MP) are refused from their header, before
any pixel is decoded, with a reason that says so ("image too large ..."): a 20000x20000 scan would
take 1.2 GB as RGB (and as much again for each conversion) while every matcher here works at a few
megapixels. Raise ``roma_sfm.io.MAX_PIXELS`` to read larger files (above Pillow's own
decompression-bomb limit, ``PIL.Image.MAX_IMAGE_PIXELS`` must be raised too).
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Union[str, os.PathLike, np.ndarray, Image.Image]

# the normalisation every RoMa model takes its images in (the encoders' ImageNet statistics)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

# 150 MP: above the largest camera sensors (151 MP medium format), below Pillow's decompression-bomb
# error (2 x PIL.Image.MAX_IMAGE_PIXELS = 179 MP), so that our message, not Pillow's, is what users see
MAX_PIXELS = 150_000_000


class ImageReadError(ValueError):
    """An image could not be read; ``path`` names it."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image '{path}': {reason}")


def _too_large(path, pixels: int, size: str = "") -> ImageReadError:
    what = f"{size} = {pixels / 1e6:.0f} MP" if size else f"{pixels / 1e6:.0f} MP"
    return ImageReadError(path, f"image too large ({what}; the limit is roma_sfm.io.MAX_PIXELS = "
                                f"{MAX_PIXELS / 1e6:.0f} MP, decoding it would take {3 * pixels / 1e9:.1f} GB)")


def _bomb_reason(path, e: Exception) -> ImageReadError:
    """Pillow refused to open the file before we could read its size: its message holds the pixel count."""
    m = re.search(r"\((\d+) pixels\)", str(e))
    return _too_large(path, int(m.group(1))) if m else ImageReadError(path, f"image too large ({e})")


def _check_size(path, w: int, h: int) -> None:
    if w * h > MAX_PIXELS:
        raise _too_large(path, w * h, f"{w}x{h}")


def _to_uint8_rgb(arr: np.ndarray) -> np.ndarray:
    """(H,W), (H,W,1), (H,W,3), (H,W,4) of any integer/float dtype -> (H,W,3) uint8."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"unsupported array shape {arr.shape}")
    if arr.shape[2] == 2:  # gray + alpha
        arr = arr[..., :1]
    if arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.uint16:
        return np.ascontiguousarray((arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8))
    if np.issubdtype(arr.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(arr)) <= 1.0 + 1e-6 else 1.0
        return np.ascontiguousarray(np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8))
    if np.issubdtype(arr.dtype, np.integer):
        hi = float(arr.max()) if arr.size else 255.0
        div = 257.0 if hi > 255 else 1.0
        return np.ascontiguousarray(np.clip(arr / div, 0, 255).astype(np.uint8))
    if arr.dtype == bool:
        return np.ascontiguousarray(arr.astype(np.uint8) * 255)
    raise ValueError(f"unsupported dtype {arr.dtype}")


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return _to_uint8_rgb(np.asarray(im).astype(np.uint16 if im.mode.startswith("I;16") else np.int64))
    if im.mode == "F":
        return _to_uint8_rgb(np.asarray(im, dtype=np.float32))
    if im.mode != "RGB":
        im = im.convert("RGB")  # L, LA, P, RGBA, CMYK, YCbCr, 1
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def read_image(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, EXIF orientation applied.

    Raises :class:`ImageReadError` (naming ``path``) for missing, empty, corrupt, truncated or
    non-image files.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a directory")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            _check_size(path, im.width, im.height)  # from the header: nothing decoded yet
            im.load()  # forces full decode so truncated files fail here
            im = ImageOps.exif_transpose(im)
            arr = _pil_to_rgb(im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise _bomb_reason(path, e) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"not a readable image ({type(e).__name__}: {e})") from e
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError(path, "image has no pixels")
    return arr


def image_size(path: Union[str, os.PathLike]) -> tuple[int, int]:
    """(width, height) after EXIF orientation, without decoding the pixels; refuses images above
    :data:`MAX_PIXELS` as :func:`read_image` does."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Image.DecompressionBombError as e:
        raise _bomb_reason(path, e) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"not a readable image ({type(e).__name__}: {e})") from e
    _check_size(path, w, h)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def as_rgb(image: ImageLike) -> np.ndarray:
    """Paths, PIL images and arrays -> (H, W, 3) uint8 RGB."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        return _to_uint8_rgb(image)
    if hasattr(image, "detach"):  # a torch tensor (H,W,C) or (C,H,W)
        arr = image.detach().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)
        return _to_uint8_rgb(arr)
    raise TypeError(f"unsupported image type {type(image).__name__}")


def list_images(folder: Union[str, os.PathLike]) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted, by extension."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


@contextmanager
def atomic_output(path: Path, tmp: Optional[Path] = None) -> Iterator[Path]:
    """``with atomic_output(p) as tmp:`` write ``tmp``; on success it is renamed over ``p``
    (os.replace), on an exception it is removed. A kill at any moment leaves the old file or the new
    one, never a torn one. ``tmp`` (default ``x.tmp.h5`` next to ``x.h5``) keeps the suffix for
    writers that go by it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tmp) if tmp is not None else path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
