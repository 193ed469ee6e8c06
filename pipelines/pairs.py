"""Step 1: which image pairs to match. Writes ``pairs.txt`` (``name0 name1`` per line).

Retrieval without a pretrained network: VLAD (Jegou et al. 2010) over RootSIFT with a vocabulary
learned by k-means on the set itself, intra-normalized + power-normalized (Arandjelovic & Zisserman
2013). The ``encoder`` hook replaces the local-feature extractor (e.g. a matcher's encoder): it takes
an (H, W, 3) uint8 image and returns either local descriptors (n, D) (aggregated with VLAD) or a
global descriptor (D,) used as is.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import cv2
import numpy as np

from ..io import ImageReadError, read_image
from .utils import logger, read_pairs, scan_images, write_pairs

Pair = tuple[str, str]
Encoder = Callable[[np.ndarray], np.ndarray]

confs = {
    "exhaustive": {"mode": "exhaustive"},
    "sequential": {"mode": "sequential", "window": 5, "quadratic": True},
    "retrieval": {
        "mode": "retrieval",
        "num_matched": 10,
        "resize_max": 640,  # retrieval needs no detail: faster SIFT, scale-normalized vocabularies
        "num_features": 1000,
        "vocab_size": 64,  # k-means words learned on the set itself; recall: benchmarks/retrieval.py
        "seed": 0,
    },
    # auto: every pair up to this many images, else retrieval, by the matcher's kind. A dense pair costs
    # ~20x a SIFT pair and dense tracks need fewer pairs, so dense matchers take retrieval as soon as it
    # lists fewer pairs (the 10 most similar of 11 images are all of them); docs/benchmarks.md,
    # "Retrieval pairs for RoMa"
    "auto": {"mode": "auto", "max_exhaustive": {"sparse": 30, "dense": 11}},
}
MODES = ("auto", "exhaustive", "sequential", "retrieval")  # besides a pairs file


def auto_limit(kind: str) -> int:
    """The most images ``auto`` pairs exhaustively for a matcher of ``kind`` ('sparse' or 'dense')."""
    limits = confs["auto"]["max_exhaustive"]
    if kind not in limits:
        raise ValueError(f"matcher kind must be one of {', '.join(limits)}, not {kind!r}")
    return limits[kind]


def check_mode(value: str) -> str:
    """``value`` when it is one of :data:`MODES` or an existing pairs file, else ValueError."""
    if value not in MODES and not Path(value).is_file():
        raise ValueError(f"'{value}' is neither one of {', '.join(MODES)} nor an existing pairs file")
    return value


def _dedup(pairs: Iterable[Pair]) -> list[Pair]:
    """Drop self pairs and duplicates of unordered pairs, keep the first order seen."""
    seen, out = set(), []
    for a, b in pairs:
        if a == b:
            continue
        key = (a, b) if a < b else (b, a)
        if key not in seen:
            seen.add(key)
            out.append((a, b))
    return out


def pairs_exhaustive(names: Sequence[str]) -> list[Pair]:
    """All N (N - 1) / 2 unordered pairs."""
    return list(combinations(names, 2))


def pairs_sequential(names: Sequence[str], window: int = confs["sequential"]["window"],
                     quadratic: bool = confs["sequential"]["quadratic"]) -> list[Pair]:
    """Each image with its ``window`` successors, plus successors at 2^k (k >= log2(window)+1) when
    ``quadratic`` (COLMAP's quadratic overlap) so that loops over long sequences still close."""
    pairs = []
    n = len(names)
    for i in range(n):
        for d in range(1, window + 1):
            if i + d < n:
                pairs.append((names[i], names[i + d]))
        if quadratic:
            k = int(np.floor(np.log2(max(window, 1)))) + 1
            while i + 2 ** k < n:
                pairs.append((names[i], names[i + 2 ** k]))
                k += 1
    return _dedup(pairs)


def _rootsift(desc: np.ndarray) -> np.ndarray:
    """(n, 128) SIFT -> RootSIFT (L1 normalize, sqrt): Hellinger kernel, better for retrieval."""
    desc = desc / (np.abs(desc).sum(1, keepdims=True) + 1e-8)
    return np.sqrt(desc).astype(np.float32)


def _local_sift(image: np.ndarray, resize_max: int, num_features: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (n, 128) RootSIFT descriptors at <= resize_max px."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    scale = resize_max / max(gray.shape)
    if scale < 1:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    _, desc = cv2.SIFT_create(nfeatures=num_features).detectAndCompute(gray, None)
    if desc is None:
        return np.zeros((0, 128), np.float32)
    return _rootsift(desc)


def vlad(desc: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(n, D) local descriptors, (k, D) centers -> (k * D,) intra + power + L2 normalized VLAD."""
    k, d = centers.shape
    out = np.zeros((k, d), np.float32)
    if len(desc):
        dist = ((desc[:, None, :] - centers[None]) ** 2).sum(-1)
        assign = dist.argmin(1)
        np.add.at(out, assign, desc - centers[assign])
    out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-8  # intra-normalization: burstiness
    out = np.sign(out) * np.sqrt(np.abs(out))
    out = out.reshape(-1)
    return out / (np.linalg.norm(out) + 1e-8)


def global_descriptors(paths: Sequence[Path], encoder: Optional[Encoder] = None,
                       conf: Optional[dict] = None) -> np.ndarray:
    """One global descriptor per image: (N, D) float32, L2-normalized rows.

    Unreadable images get a zero descriptor (they are never retrieved).
    """
    conf = {**confs["retrieval"], **(conf or {})}
    locals_: list[Optional[np.ndarray]] = []
    for p in paths:
        try:
            img = read_image(p)
        except ImageReadError as e:
            logger.warning("retrieval: %s", e)
            locals_.append(None)
            continue
        locals_.append(encoder(img) if encoder is not None else _local_sift(img, conf["resize_max"], conf["num_features"]))
    dims = {d.shape[-1] for d in locals_ if d is not None}
    if not dims:
        return np.zeros((len(paths), 1), np.float32)
    if all(d is None or d.ndim == 1 for d in locals_):  # the encoder gave global descriptors
        D = dims.pop()
        G = np.stack([d if d is not None else np.zeros(D, np.float32) for d in locals_]).astype(np.float32)
        return G / (np.linalg.norm(G, axis=1, keepdims=True) + 1e-8)
    # vocabulary from the set itself (no external training data): k-means on a subsample
    rng = np.random.default_rng(conf["seed"])
    pool = np.concatenate([d for d in locals_ if d is not None and len(d)])
    if len(pool) > 50000:
        pool = pool[rng.choice(len(pool), 50000, replace=False)]
    k = int(min(conf["vocab_size"], max(1, len(pool) // 4)))
    cv2.setRNGSeed(conf["seed"])
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-4)
    _, _, centers = cv2.kmeans(pool.astype(np.float32), k, None, crit, 2, cv2.KMEANS_PP_CENTERS)
    D = centers.size
    return np.stack([vlad(d, centers) if d is not None else np.zeros(D, np.float32) for d in locals_])


def pairs_retrieval(names: Sequence[str], descriptors: np.ndarray,
                    num_matched: int = confs["retrieval"]["num_matched"]) -> list[Pair]:
    """Top-``num_matched`` most similar images per image (cosine), unordered pairs deduplicated.

    descriptors: (N, D) L2-normalized, row i for names[i].
    """
    n = len(names)
    if n < 2:
        return []
    sim = descriptors @ descriptors.T
    np.fill_diagonal(sim, -np.inf)
    k = min(num_matched, n - 1)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    pairs = [(names[i], names[j]) if i < j else (names[j], names[i]) for i in range(n) for j in top[i]]
    return _dedup(pairs)


def pairs_from_file(path: Path, names: Optional[Sequence[str]] = None) -> list[Pair]:
    """Pairs listed in a file; those naming images not in ``names`` are dropped with a warning."""
    pairs = _dedup(read_pairs(path))
    if names is not None:
        known = set(names)
        kept = [p for p in pairs if p[0] in known and p[1] in known]
        if len(kept) < len(pairs):
            logger.warning("%d pairs of %s name unknown or unreadable images; dropped", len(pairs) - len(kept), path)
        pairs = kept
    return pairs


def retrieval_recall(pred_pairs: Iterable[Pair], gt_pairs: Iterable[Pair]) -> float:
    """Fraction of ground-truth (unordered) pairs that ``pred_pairs`` contains (1.0 if no GT)."""
    pred = {tuple(sorted(p)) for p in pred_pairs}
    gt = {tuple(sorted(p)) for p in gt_pairs}
    return len(gt & pred) / len(gt) if gt else 1.0


def main(images: Path, output: Path, mode: str = "auto", image_list: Optional[Sequence[str]] = None,
         pairs_file: Optional[Path] = None, window: int = confs["sequential"]["window"],
         quadratic: bool = confs["sequential"]["quadratic"], num_matched: int = confs["retrieval"]["num_matched"],
         max_exhaustive: Optional[int] = None, encoder: Optional[Encoder] = None, kind: str = "sparse"
         ) -> list[Pair]:
    """Compute pairs of ``images`` (a folder) and write them to ``output`` (pairs.txt).

    mode: 'exhaustive' | 'sequential' | 'retrieval' | 'file' (needs pairs_file) | 'auto'
    (exhaustive for <= max_exhaustive images, else retrieval; None: the limit of ``confs['auto']`` for
    the ``kind`` of matcher the pairs are for, 'sparse' or 'dense'). A path given as ``mode`` means 'file'.
    ``image_list``: names relative to ``images`` (default: every readable image, sorted).
    """
    images = Path(images)
    if image_list is None:
        image_list = scan_images(images, decode=False).names
    names = sorted(image_list)
    if mode not in confs and mode != "file" and Path(mode).is_file():
        mode, pairs_file = "file", Path(mode)
    if mode == "auto":
        if max_exhaustive is None:
            max_exhaustive = auto_limit(kind)
        mode = "exhaustive" if len(names) <= max_exhaustive else "retrieval"
        logger.info("pairs: auto -> %s (%d images)", mode, len(names))
    if mode == "exhaustive":
        pairs = pairs_exhaustive(names)
    elif mode == "sequential":
        pairs = pairs_sequential(names, window, quadratic)
    elif mode == "retrieval":
        desc = global_descriptors([images / n for n in names], encoder)
        pairs = pairs_retrieval(names, desc, num_matched)
    elif mode == "file":
        if pairs_file is None:
            raise ValueError("mode='file' needs pairs_file")
        pairs = pairs_from_file(pairs_file, names)
    else:
        raise ValueError(f"unknown pairs mode '{mode}': use one of {sorted(confs) + ['file']}")
    write_pairs(pairs, output)
    logger.info("pairs: %d pairs of %d images -> %s", len(pairs), len(names), output)
    return pairs
