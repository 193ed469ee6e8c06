"""SIFT as a :class:`~.base.Matcher`: SIFT features, nearest-neighbour ratio test and mutual check.

The classical baseline, and the matcher used when the shipped RoMa weights are not recommended.
``confs`` holds its settings: ``sift`` is OpenCV's detector with COLMAP's choices (RootSIFT,
contrast threshold 0.02 = OpenCV 0.04 / 3 layers ~ COLMAP's peak threshold x 2), ``sift-opencv``
OpenCV's own defaults, ``sift-colmap`` COLMAP's own extractor (through pycolmap) with its
defaults. Every setting matches the descriptors the same way (:func:`ratio_matches`).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from ...io import as_rgb
from ...presets import BALANCED, NUM_SAMPLES

confs = {
    "sift": {"max_features": 8000, "ratio": 0.8, "mutual": True, "rootsift": True, "contrast_threshold": 0.02,
             "extractor": "opencv"},
    "sift-opencv": {"max_features": 8000, "ratio": 0.8, "mutual": True, "rootsift": False,
                    "contrast_threshold": 0.04, "extractor": "opencv"},
    # COLMAP's defaults: 8192 features, peak threshold 0.02 / 3 layers, L1-root normalisation
    "sift-colmap": {"max_features": 8192, "ratio": 0.8, "mutual": True, "rootsift": True,
                    "contrast_threshold": 0.02, "extractor": "colmap"},
}
EXTRACTORS = ("opencv", "colmap")
OPENCV_OFFSET = 0.25  # OpenCV keypoint -> COLMAP convention (see detect)
DEFAULTS = confs["sift"]
FEATURE_CACHE_SIZE = 64  # images whose features are kept (LRU)


@dataclass
class SparseMatches:
    """Match result of a sparse matcher with the same duck interface as a dense RoMa result."""

    kpts_A: np.ndarray  # (M, 2) float32, COLMAP convention
    kpts_B: np.ndarray  # (M, 2) float32
    scores: np.ndarray  # (M,) float32 in [0, 1]
    size_A: tuple[int, int]  # (W, H)
    size_B: tuple[int, int]

    def sample(self, num: int = NUM_SAMPLES, balanced: bool = BALANCED, seed: int = 0):
        """All matches (the ``num`` best if there are more): (kpts_A, kpts_B, scores)."""
        idx = np.argsort(-self.scores, kind="stable")[:num]
        return self.kpts_A[idx], self.kpts_B[idx], self.scores[idx]

    def lookup(self, kpts_A: np.ndarray):
        raise NotImplementedError("a sparse matcher has no dense warp to re-query")


@lru_cache(maxsize=None)
def candidate_dtype() -> "torch.dtype":
    """The dtype of :func:`shortlist`'s candidate product on this machine: bfloat16 or float32.

    bfloat16 is several times faster than float32 where oneDNN has bf16 kernels for the CPU, and
    several times slower where it has none (e.g. AVX2-only CPUs). Decided by the CPU, not by a
    timing, so that one machine always gives the same matches.
    """
    import torch

    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        bf16 = False
    return torch.bfloat16 if bf16 else torch.float32


def shortlist(X: "torch.Tensor", Y: "torch.Tensor", k: int, chunk: int = 1024,
              dtype: "torch.dtype | None" = None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The k nearest rows of Y (L2) for every row of X: squared distances (n, k), ascending, and indices.

    X (n, D), Y (m, D) float32. Candidates come from a product in ``dtype`` (default:
    :func:`candidate_dtype`; bfloat16's ~3 significant digits only reorder near ties), then ``2k``
    of them are re-ranked with exact float32 distances, so the result is exact unless a true
    neighbour ranks below ``2k`` in bfloat16.
    """
    import torch

    dtype = candidate_dtype() if dtype is None else dtype
    short = min(2 * k, len(Y))
    Yc = Y.to(dtype)
    bias = -(Y * Y).sum(1)[None].to(dtype)  # score 2 x.y - |y|^2: largest for the nearest y
    with torch.inference_mode():
        cand = torch.cat([((2 * X[s:s + chunk]).to(dtype) @ Yc.T).add_(bias).topk(short, 1)[1]
                          for s in range(0, len(X), chunk)])
        d2 = (X[:, None, :] - Y[cand]).square_().sum(-1)
        d2, order = d2.sort(1)
    return d2[:, :k], cand.gather(1, order[:, :k])


def ratio_matches(da: np.ndarray, db: np.ndarray, ratio: float, mutual: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-neighbour matches that pass the ratio test (and the mutual check): (i, j, ratio) (M,).

    da (n, D), db (m, D) float32, m >= 2. A brute-force matcher (:func:`shortlist` both ways, the
    way back only for the db rows that some kept match points to), with exact distances: faster
    than cv2.BFMatcher, the same matches bar ties.
    """
    import torch

    A, B = (torch.from_numpy(np.ascontiguousarray(x, np.float32)) for x in (da, db))
    d2, nn = shortlist(A, B, 2)
    d = d2.clamp(min=0).sqrt().numpy()
    r = d[:, 0] / np.maximum(d[:, 1], 1e-8)
    i = np.flatnonzero(r < ratio)
    j = nn[:, 0].numpy()[i]
    if mutual and len(i):
        targets, inverse = np.unique(j, return_inverse=True)
        _, back = shortlist(B[torch.from_numpy(targets)], A, 1)
        keep = back[:, 0].numpy()[inverse] == i
        i, j = i[keep], j[keep]
    return i, j, r[i]


def make_extractor(extractor: str, max_features: int, contrast_threshold: float, rootsift: bool) -> Any:
    """The SIFT detector of one backend: an OpenCV ``SIFT`` or a pycolmap ``FeatureExtractor``.

    ``contrast_threshold`` is OpenCV's (spread over 3 layers); COLMAP's peak threshold is the same
    value per layer, and ``rootsift`` chooses its L1-root normalisation (else L2).
    """
    if extractor == "opencv":
        return cv2.SIFT_create(nfeatures=max_features, contrastThreshold=contrast_threshold)
    if extractor == "colmap":
        import pycolmap

        opts = pycolmap.FeatureExtractionOptions()
        opts.num_threads = 1
        opts.sift.max_num_features = max_features
        opts.sift.peak_threshold = contrast_threshold / 3
        opts.sift.normalization = (pycolmap.Normalization.L1_ROOT if rootsift else pycolmap.Normalization.L2)
        return pycolmap.FeatureExtractor.create(opts, device=pycolmap.Device.cpu)
    raise ValueError(f"SIFT extractor {extractor!r} is not one of {', '.join(EXTRACTORS)}")


def detect(detector: Any, extractor: str, gray: np.ndarray, rootsift: bool) -> tuple[np.ndarray, np.ndarray]:
    """gray (H, W) uint8 -> keypoints (n, 2) float32 in the COLMAP convention, descriptors (n, 128) float32."""
    if extractor == "colmap":  # COLMAP's keypoints (its convention) and descriptors (normalised, as uint8)
        kpts, desc = detector.extract_from_uint8_array(np.ascontiguousarray(gray))
        xy = np.array([(k.x, k.y) for k in kpts], np.float32).reshape(-1, 2)
        desc = np.asarray(desc.data, np.float32).reshape(-1, 128)
        return xy, desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-8)
    kps, desc = detector.detectAndCompute(gray, None)
    if desc is None:
        desc = np.zeros((0, 128), np.float32)
    if rootsift and len(desc):
        desc = np.sqrt(desc / (desc.sum(1, keepdims=True) + 1e-8))
    # OpenCV puts pixel centres at integers, COLMAP at +0.5; but its first octave (the image upscaled 2x)
    # maps pixel i back to i / 2 instead of i / 2 - 0.25, so every keypoint lies 0.25 px too far
    xy = np.array([k.pt for k in kps], np.float32).reshape(-1, 2) + OPENCV_OFFSET
    return xy, desc.astype(np.float32)


class SiftMatcher:
    """SIFT + nearest neighbour ratio test + mutual check (the classical baseline).

    Defaults follow COLMAP's SIFT rather than OpenCV's: RootSIFT descriptors and a contrast
    threshold of 0.02 (see ``confs``); ``get_matcher("sift-opencv")`` gives OpenCV's defaults and
    ``get_matcher("sift-colmap")`` COLMAP's own extractor.

    Features are cached per image path (LRU) so that each image is described once per run.
    """

    kind = "sparse"  # keypoint matches (see ``base.matcher_kind``): tracks use a finer cell size

    def __init__(self, max_features: int = DEFAULTS["max_features"], ratio: float = DEFAULTS["ratio"],
                 mutual: bool = DEFAULTS["mutual"], rootsift: bool = DEFAULTS["rootsift"],
                 contrast_threshold: float = DEFAULTS["contrast_threshold"],
                 extractor: str = DEFAULTS["extractor"], cache_size: int = FEATURE_CACHE_SIZE):
        self.max_features, self.ratio, self.mutual, self.rootsift = max_features, ratio, mutual, rootsift
        self.contrast_threshold, self.extractor = float(contrast_threshold), extractor
        self.cache: OrderedDict[str, tuple[np.ndarray, np.ndarray, tuple[int, int]]] = OrderedDict()
        self.cache_size = cache_size
        self.detector = self.make_detector()

    def make_detector(self) -> Any:
        return make_extractor(self.extractor, self.max_features, self.contrast_threshold, self.rootsift)

    def __getstate__(self) -> dict:  # picklable (e.g. for Ray workers): the detectors are not
        return {k: v for k, v in self.__dict__.items() if k not in ("detector", "cache")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.cache = OrderedDict()
        self.detector = self.make_detector()

    @property
    def name(self) -> str:
        return "sift(" + ", ".join(f"{k}={v}" for k, v in self.settings.items()) + ")"

    @property
    def settings(self) -> dict:
        return {"max_features": self.max_features, "ratio": self.ratio, "mutual": self.mutual,
                "rootsift": self.rootsift, "contrast_threshold": self.contrast_threshold,
                "extractor": self.extractor}

    def extract(self, image) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """image (path or array) -> keypoints (n, 2) float32 COLMAP convention, desc (n, 128), (W, H)."""
        key = str(image) if isinstance(image, (str, os.PathLike)) else None
        if key is not None and key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        rgb = as_rgb(image)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        xy, desc = detect(self.detector, self.extractor, gray, self.rootsift)
        out = (xy, desc, (rgb.shape[1], rgb.shape[0]))
        if key is not None:
            self.cache[key] = out
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return out

    def match(self, a, b) -> SparseMatches:
        ka, da, sa = self.extract(a)
        kb, db, sb = self.extract(b)
        empty = SparseMatches(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32),
                              np.zeros((0,), np.float32), sa, sb)
        if len(da) < 2 or len(db) < 2:
            return empty
        i, j, ratio = ratio_matches(da, db, self.ratio, self.mutual)
        return SparseMatches(ka[i], kb[j], (1.0 - ratio).astype(np.float32), sa, sb)

    def match_many(self, pairs: Iterable[tuple[Any, Any]], batch_size: int = 1) -> Iterator[SparseMatches]:
        for a, b in pairs:
            yield self.match(a, b)
