"""Synthetic planar scenes with known homographies, and a fake dense matcher for them.

Test and benchmark support (not part of the library): the tests load it with ``tests/bench_loader.py``,
``subpixel.py`` measures with it. ``HomographyMatcher`` is a small example of the matcher interface
of ``roma_sfm.pipelines.matchers.base``:

- ``matcher.match(a, b) -> result`` (paths or arrays), ``matcher.match_many(pairs, batch_size)``
- ``result.sample(num=10000, balanced=True, seed=0) -> (kpts_A (N,2), kpts_B (N,2), scores (N,))``
- ``result.lookup(kpts_A (N,2)) -> (kpts_B (N,2), scores (N,))``, ``result.size_A``, ``result.size_B``
  (W, H); all pixels in the COLMAP convention (corner at 0, pixel centres at +0.5).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np


def random_texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Multi-scale colour noise with blobs: plenty of texture for SIFT and for dense matching."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    for cells, amp in [(4, 0.5), (16, 0.4), (48, 0.3)]:
        small = rng.random((cells, max(1, cells * width // height), 3)).astype(np.float32)
        img += amp * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    img = ((img - img.min()) / (np.ptp(img) + 1e-6) * 200 + 25).astype(np.uint8)
    for _ in range(max(20, height * width // 1500)):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), int(rng.integers(3, 15)), c, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(3, 20)), y + int(rng.integers(3, 20))), c, -1)
    return img


def random_homographies(names: Sequence[str], size: tuple[int, int], seed: int = 0,
                        strength: float = 1.0) -> dict[str, np.ndarray]:
    """Mild random homographies (reference -> image) in COLMAP pixel coordinates; the first is I."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = {}
    for i, n in enumerate(names):
        if i == 0:
            out[n] = np.eye(3)
            continue
        src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        dst = (src + rng.uniform(-0.08, 0.08, (4, 2)) * [w, h] * strength).astype(np.float32)
        out[n] = cv2.getPerspectiveTransform(src, dst).astype(np.float64)
    return out


def transfer(H_a: np.ndarray, H_b: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Points of image a -> image b, both related to the reference by x_img = H x_ref."""
    M = H_b @ np.linalg.inv(H_a)
    p = np.c_[xy, np.ones(len(xy))] @ M.T
    return p[:, :2] / p[:, 2:]


def _warp(ref: np.ndarray, H: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # H acts on COLMAP coordinates (+0.5); OpenCV's warp uses pixel centres at integers
    S = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    Hcv = np.linalg.inv(S) @ H @ S
    return cv2.warpPerspective(ref, Hcv, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def make_homography_scene(folder: Path, num_images: int = 3, size: tuple[int, int] = (320, 240),
                          seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``num_images`` PNG warps of one texture into ``folder``; returns {name: H (ref -> image)}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    ref = random_texture(h, w, seed)
    names = [f"{i:03d}.png" for i in range(num_images)]
    Hs = random_homographies(names, size, seed)
    for n in names:
        cv2.imwrite(str(folder / n), cv2.cvtColor(_warp(ref, Hs[n], size), cv2.COLOR_RGB2BGR))
    return Hs


class HomographyResult:
    """Dense 'warp' of a homography pair: sampling and lookup as RoMa's result does."""

    def __init__(self, H_a: np.ndarray, H_b: np.ndarray, size_A: tuple[int, int], size_B: tuple[int, int],
                 noise: float = 0.0):
        self.H_a, self.H_b, self.size_A, self.size_B, self.noise = H_a, H_b, tuple(size_A), tuple(size_B), noise

    def lookup(self, kpts_A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kb = transfer(self.H_a, self.H_b, np.asarray(kpts_A, np.float64))
        inside = (kb[:, 0] >= 0) & (kb[:, 0] < self.size_B[0]) & (kb[:, 1] >= 0) & (kb[:, 1] < self.size_B[1])
        return kb.astype(np.float32), inside.astype(np.float32)

    def sample(self, num: int = 10000, balanced: bool = True, seed: int = 0):
        rng = np.random.default_rng(seed)
        ka = rng.random((num, 2)) * self.size_A
        kb, s = self.lookup(ka)
        keep = s > 0
        kb = kb[keep] + (rng.normal(0, self.noise, (keep.sum(), 2)) if self.noise else 0)
        return ka[keep].astype(np.float32), kb.astype(np.float32), s[keep]


class HomographyMatcher:
    """A fake dense matcher that knows the true homographies (keyed by file name)."""

    def __init__(self, homographies: dict[str, np.ndarray], sizes: dict[str, tuple[int, int]] | tuple[int, int],
                 noise: float = 0.0, delay: float = 0.0):
        self.H = homographies
        self.sizes = sizes if isinstance(sizes, dict) else {n: tuple(sizes) for n in homographies}
        self.noise, self.delay = noise, delay

    def match(self, a, b) -> HomographyResult:
        na, nb = Path(a).name, Path(b).name
        if self.delay:
            time.sleep(self.delay)
        return HomographyResult(self.H[na], self.H[nb], self.sizes[na], self.sizes[nb], self.noise)

    def match_many(self, pairs: Iterable[tuple], batch_size: int = 1):
        for a, b in pairs:
            yield self.match(a, b)


class LabelledSift:
    """SIFT's matches under another matcher name and ``kind`` ('sparse' | 'dense'): how the pipeline
    treats a matcher it does not know (the matches' kind picks the tracks, gate and principal point)."""

    def __init__(self, kind: str = "sparse", name: str = "wrapped-sift"):
        from roma_sfm.pipelines.matchers import SiftMatcher

        self.kind, self.name, self.inner = kind, name, SiftMatcher()

    def match(self, a, b):
        return self.inner.match(a, b)
