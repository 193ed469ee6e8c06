"""Shared helpers of the pipeline steps: image scanning, pair names, pairs files, timing.

Names that ``scan_images`` skips besides unreadable files (each with its reason): images smaller than
``MIN_IMAGE_SIDE`` px a side (nothing to match), and names that would share a pair key with another
(``a-img.jpg`` and ``a/img.jpg`` both become ``a-img.jpg`` in ``names_to_pair``): the first in sorted
order is kept, so one pair group of matches.h5 never holds the matches of two different pairs.
Pairs files quote names with spaces (``"my photo.jpg" b.jpg``, shell-style).
"""
from __future__ import annotations

import io
import logging
import math
import os
import shlex
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional

import numpy as np

from ..io import ImageReadError, atomic_output, image_size, list_images, read_image

if TYPE_CHECKING:
    import h5py

logger = logging.getLogger("roma_sfm.pipelines")
if not logger.handlers:
    _h = logging.StreamHandler()
    _h.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", "%H:%M:%S"))
    logger.addHandler(_h)
    logger.setLevel(logging.INFO)
    logger.propagate = False

# a side shorter than this has nothing to match (SIFT's first octave alone needs ~16 px)
MIN_IMAGE_SIDE = 16


@dataclass
class ImageScan:
    """Images of a folder split into readable ones and skipped ones (with the reason)."""

    root: Path
    names: list[str] = field(default_factory=list)  # relative to root, '/' separated, sorted
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (W, H) after EXIF rotation
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason


def scan_images(images: Path, image_list: Optional[Iterable[str]] = None, decode: bool = True) -> ImageScan:
    """List the images of ``images`` and check that each one can be read.

    ``decode=True`` decodes every image once (a truncated JPEG only fails when decoded); the cost
    is small next to matching. Unreadable files are logged and listed in ``skipped``, never raised.
    Files without an image extension are ignored by :func:`roma_sfm.io.list_images` unless they are
    named in ``image_list``; then they are reported as skipped too.
    """
    images = Path(images)
    scan = ImageScan(root=images)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder '{images}' does not exist or is not a folder")
    if image_list is None:
        paths = list_images(images)
        # report non-image files that a user may have expected to be used
        known = {p.resolve() for p in paths}
        for p in sorted(images.rglob("*")):
            if p.is_file() and p.resolve() not in known and not p.name.startswith("."):
                scan.skipped[p.relative_to(images).as_posix()] = "not an image file extension"
    else:
        paths = [images / n for n in image_list]
    for p in paths:
        name = p.relative_to(images).as_posix()
        try:
            if decode:
                h, w = read_image(p).shape[:2]
            else:
                w, h = image_size(p)
            scan.sizes[name] = (int(w), int(h))
            scan.names.append(name)
        except ImageReadError as e:
            logger.warning("skipping %s: %s", name, e.reason)
            scan.skipped[name] = e.reason
    scan.names.sort()
    keys: dict[str, str] = {}
    for name in list(scan.names):
        w, h = scan.sizes[name]
        key = name.replace("/", "-")  # how names_to_pair writes the name into a pair key
        if min(w, h) < MIN_IMAGE_SIDE:
            reason = f"image too small to match ({w}x{h} px; at least {MIN_IMAGE_SIDE} px a side)"
        elif key in keys:
            reason = (f"its name collides with '{keys[key]}' in the pair keys of matches.h5 ('/' in names "
                      f"becomes '-': both are '{key}'); rename one of them")
        else:
            keys[key] = name
            continue
        logger.warning("skipping %s: %s", name, reason)
        scan.skipped[name] = reason
        scan.names.remove(name)
        del scan.sizes[name]
    return scan


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's pair key: a nested h5 group ``<name0>/<name1>`` with '/' inside names replaced by '-'."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def iter_pairs(path: Path) -> Iterator[tuple[str, str]]:
    """``name0 name1`` per line (extra fields ignored, '#' comments allowed), read lazily so that a
    pairs file of any length costs no memory."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = _split(line)
            if len(parts) < 2:
                raise ValueError(f"{path}: malformed pair line '{line}'")
            yield parts[0], parts[1]


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """All pairs of a pairs file (see :func:`iter_pairs`)."""
    return list(iter_pairs(path))


def write_pairs(pairs: Iterable[tuple[str, str]], path: Path) -> None:
    """Atomic write (tmp + rename) so a killed run never leaves half a pairs file."""
    with atomic_output(path, Path(path).with_name(Path(path).name + ".tmp")) as tmp:
        tmp.write_text("".join(f"{_quote(a)} {_quote(b)}\n" for a, b in pairs), encoding="utf-8")


def _split(line: str) -> list[str]:
    """Fields of a pairs line: shell-style when it holds quotes (names with spaces, see :func:`_quote`);
    a lone apostrophe in an unquoted name (files from before quoting) falls back to a plain split."""
    if '"' in line or "'" in line:
        try:
            return shlex.split(line)
        except ValueError:
            pass
    return line.split()


def _quote(name: str) -> str:
    """Shell-style quotes only where a plain split would cut the name (spaces, quotes)."""
    return shlex.quote(name) if any(c.isspace() or c in "'\"" for c in name) else name


@contextmanager
def h5_in_memory(path: Path) -> Iterator["h5py.File"]:
    """``with h5_in_memory(p) as f:`` fill the HDF5 file ``f``; it is built in memory and written to
    ``p`` at the end through :func:`atomic_output`. Why: HDF5 does not recover from a failed write
    (disk full, file size limit): the file handle stays broken and h5py crashes the interpreter at
    exit (SIGSEGV). Plain file I/O fails with an OSError instead, and the earlier ``p`` stays."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        yield f
    try:
        with atomic_output(path) as tmp:
            tmp.write_bytes(buf.getbuffer())
    except OSError as e:
        raise OSError(e.errno, f"could not write {path} ({e.strerror}); the earlier file is unchanged") from e


def replace_dir(src: Path, dst: Path) -> None:
    """Put the finished folder ``src`` in the place of ``dst`` (two renames: ``dst`` is missing only
    between them, never half written)."""
    src, dst = Path(src), Path(dst)
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def jsonable(o: Any, strict: bool = False) -> Any:
    """A JSON-able copy of ``o``: dicts and sequences copied, numpy values as Python ones, anything
    else (paths, objects) as its string. ``strict``: non-finite floats become None (strict JSON)."""
    if isinstance(o, dict):
        return {k: jsonable(v, strict) for k, v in o.items()}
    if isinstance(o, (tuple, list)):
        return [jsonable(v, strict) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist(), strict)
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and strict and not math.isfinite(o):
        return None
    if o is None or isinstance(o, (bool, int, float, str)):
        return o
    return str(o)


class Timer:
    """``with Timer(times, 'match'):`` adds the elapsed seconds to ``times['match']``."""

    def __init__(self, times: dict, name: str):
        self.times, self.name = times, name

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.times[self.name] = self.times.get(self.name, 0.0) + time.perf_counter() - self.t0
        return False
