"""Shared helpers of the pipeline steps: image scanning, pair names, pairs files, timing.

Public API
----------
- ``scan_images(images: Path, image_list: list[str] | None = None) -> ImageScan``
- ``names_to_pair(name0: str, name1: str) -> str``  (hloc key: ``<name0>/<name1>``, ``/`` in names -> ``-``)
- ``read_pairs(path: Path) -> list[tuple[str, str]]``, ``write_pairs(pairs, path) -> None``
- ``Timer`` (context manager that records seconds per step into a dict)
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ..io import ImageReadError, image_size, list_images, read_image

logger = logging.getLogger("roma_sfm.pipelines")
if not logger.handlers:
    _h = logging.StreamHandler()
    _h.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", "%H:%M:%S"))
    logger.addHandler(_h)
    logger.setLevel(logging.INFO)
    logger.propagate = False


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
    return scan


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's pair key: a nested h5 group ``<name0>/<name1>`` with '/' inside names replaced by '-'."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """``name0 name1`` per line (extra fields ignored, '#' comments allowed)."""
    pairs = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{path}: malformed pair line '{line}'")
        pairs.append((parts[0], parts[1]))
    return pairs


def write_pairs(pairs: Iterable[tuple[str, str]], path: Path) -> None:
    """Atomic write (tmp + rename) so a killed run never leaves half a pairs file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    os.replace(tmp, path)


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
