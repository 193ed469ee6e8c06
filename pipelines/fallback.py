"""Step 3c: a dense matcher for the pairs that the sparse matcher could not verify.

Why: where SIFT verifies a pair, its keypoints are the more precise, and dense matches added to
such pairs, or put in their place, made the models worse; a dense matcher earns its place on the
pairs SIFT cannot verify at all (low texture, wide baselines, strong changes of scale or light),
where it is the only source of matches (docs/design/fallback.md).

So the sparse matches are mapped first. The pairs of the run that this model, the *skeleton*, did
not verify are matched by the dense matcher (resumable, ``MATCHES_NAME``). Where both images of such
a pair are registered in one skeleton model, that model tells whether they can overlap at all (a
pair that cannot is not matched), and their epipolar geometry is known: only the dense matches
within ``max_epipolar_error`` px of it (Sampson distance) are kept, and a pair with fewer
than ``min_epipolar_share`` of its matches kept shows other content that only looks alike, and is
left out. The other pairs must pass the dense pair gate (``tracks.pair_score``). A kept pair keeps
its most certain matches, as many as a verified sparse pair has. ``MERGED_NAME`` then holds the
sparse matches with the kept dense pairs in place of theirs; it is a sparse matches file
(settings, principal points) and ``roma-sfm map`` maps it like any other.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import h5py
import numpy as np
import pycolmap

from . import match, tracks
from .mapping import essential_matrix, sampson_errors
from .h5io import COORDINATES, FORMAT, consolidate, iter_pair_matches, stored_meta, write_pair_group
from .matchers import get_matcher, matcher_kind, matcher_name
from ..io import atomic_output
from ..presets import DEVICE
from .utils import logger

# max_epipolar_error: px for images up to reference_size px on their longer side, proportionally more
# above (a dense matcher's precision is set by its working resolution, not by the photo's)
# min_overlap: a pair of images registered in one skeleton model is matched only when that model puts at
# least this share of one image's points in front of the other camera and inside its frame
confs = {
    "default": {"max_epipolar_error": 2.0, "reference_size": 1000, "min_epipolar_share": 0.2, "min_overlap": 0.1},
}
DEFAULTS = confs["default"]
MATCHES_NAME = "matches_fallback.h5"  # the dense matches of the pairs the sparse matcher did not verify
MERGED_NAME = "matches_merged.h5"  # the sparse matches with the kept dense pairs in place of theirs

Pair = tuple[str, str]


@dataclass
class FallbackStats:
    """What :func:`main` did with the pairs the skeleton did not verify."""

    matcher: str = ""
    num_pairs: int = 0  # pairs of the run the skeleton did not verify, matched by the dense matcher
    num_skipped: int = 0  # of those, not matched: the skeleton sees too little overlap
    num_resumed: int = 0  # of those, already in MATCHES_NAME from an earlier run
    num_checked: int = 0  # of those, with both images in one skeleton model (epipolar check)
    num_kept: int = 0  # pairs whose dense matches went into the merged file
    mean_share: float = 0.0  # checked pairs: mean share of matches that fit the skeleton's geometry
    max_matches: Optional[int] = None  # matches kept a pair at most
    dropped: tuple = ()  # [(name0, name1, reason)]
    seconds: float = 0.0


def kinds_error(matcher: Any, fallback: Any) -> Optional[str]:
    """Why ``fallback`` cannot follow ``matcher`` (specs or loaded matchers), or None: the first must be
    sparse (its model is the skeleton) and the fallback dense."""
    if (matcher_kind(matcher), matcher_kind(fallback)) == ("sparse", "dense"):
        return None
    return (f"the fallback must be a dense matcher (e.g. roma) after a sparse one (e.g. sift); got "
            f"{matcher_name(matcher)} and {matcher_name(fallback)}")


def fundamental_matrix(rec: pycolmap.Reconstruction, image0: pycolmap.Image, image1: pycolmap.Image
                       ) -> np.ndarray:
    """F (3, 3) of two registered images of ``rec`` in pixels (x1^T F x0 = 0; pinhole part of the cameras)."""
    K0 = rec.cameras[image0.camera_id].calibration_matrix()
    K1 = rec.cameras[image1.camera_id].calibration_matrix()
    return np.linalg.inv(K1).T @ essential_matrix(image0, image1) @ np.linalg.inv(K0)


def predicted_overlap(rec: pycolmap.Reconstruction, image0: pycolmap.Image, image1: pycolmap.Image) -> float:
    """Share of the 3-D points that ``image0`` observes which lie in front of ``image1``'s camera and
    project inside its frame, the larger of both directions (occlusion is ignored: an upper bound)."""
    def seen(a: pycolmap.Image, b: pycolmap.Image) -> float:
        ids = [p.point3D_id for p in a.points2D if p.has_point3D()]
        if not ids:
            return 0.0
        xyz = np.array([rec.points3D[i].xyz for i in ids])
        X = np.c_[xyz, np.ones(len(xyz))] @ b.cam_from_world().matrix().T
        X = X[X[:, 2] > 0]
        if len(X) == 0:
            return 0.0
        cam = rec.cameras[b.camera_id]
        uv = np.asarray(cam.img_from_cam(X), np.float64).reshape(-1, 2)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
        return float(inside.sum()) / len(ids)

    return max(seen(image0, image1), seen(image1, image0))


def registered_in(models: Sequence[pycolmap.Reconstruction]) -> dict[str, tuple[int, pycolmap.Image]]:
    """{image name: (model index, image)} of every registered image (a larger model wins a name)."""
    out: dict[str, tuple[int, pycolmap.Image]] = {}
    for k, rec in enumerate(models):
        for im in rec.images.values():
            if im.has_pose:
                out.setdefault(im.name, (k, im))
    return out


def unverified_pairs(pairs: Iterable[Pair], verified: Iterable[Pair]) -> list[Pair]:
    """``pairs`` (in their order, each once whatever its orientation) that are not in ``verified``."""
    done = {frozenset(p) for p in verified}
    out, seen = [], set()
    for a, b in pairs:
        key = frozenset((a, b))
        if a != b and key not in done and key not in seen:
            seen.add(key)
            out.append((a, b))
    return out


def write_merged(sparse: Path, dense: dict[Pair, dict], output: Path, name: str, signature: dict) -> None:
    """``output``: every pair of the matches file ``sparse``, those in ``dense`` replaced by its items
    ({'kpts0', 'kpts1', 'scores', 'size0', 'size1'}); a sparse matches file, written atomically."""
    replaced = {frozenset(p) for p in dense}
    with atomic_output(output) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["coordinates"] = COORDINATES
            f.attrs["format"] = FORMAT
            f.attrs["matcher"] = name
            f.attrs["kind"] = "sparse"
            f.attrs["matcher_signature"] = json.dumps(signature, sort_keys=True)
            for a, b, k0, k1, scores, s0, s1 in iter_pair_matches(sparse):
                if frozenset((a, b)) not in replaced:
                    write_pair_group(f, {"name0": a, "name1": b, "kpts0": k0, "kpts1": k1, "scores": scores,
                                         "size0": s0, "size1": s1})
            for (a, b), item in dense.items():
                write_pair_group(f, {"name0": a, "name1": b, **item})


def main(images: Path, outputs: Path, pairs: Iterable[Pair], verified: Iterable[Pair],
         models: Sequence[pycolmap.Reconstruction], matcher: Any = "roma", sparse_matches: Optional[Path] = None,
         max_epipolar_error: float = DEFAULTS["max_epipolar_error"],
         reference_size: int = DEFAULTS["reference_size"], min_overlap: float = DEFAULTS["min_overlap"],
         min_epipolar_share: float = DEFAULTS["min_epipolar_share"], min_pair_score: Optional[float] = None,
         max_matches: Optional[int] = None,
         num_samples: int = match.DEFAULTS["num_samples"], seed: int = match.DEFAULTS["seed"],
         batch_size: int = match.DEFAULTS["batch_size"], overwrite: bool = False, device: str = DEVICE,
         progress: bool = True, skipped_images: Optional[dict[str, str]] = None) -> FallbackStats:
    """Dense-match the ``pairs`` not in ``verified`` and write ``outputs``/MERGED_NAME.

    ``sparse_matches`` (default ``outputs``/matches.h5) holds the sparse matches that made the skeleton
    ``models`` (largest first) and verified ``verified``. ``min_pair_score``: the gate of pairs the
    skeleton cannot check (default: the dense kind's, ``tracks.confs``). ``max_matches``: a kept pair
    keeps at most this many of its matches, the most certain (reconstruct passes the skeleton's mean
    inliers per verified pair, so that a fallback pair weighs in bundle adjustment as a SIFT pair
    does: thousands of dense matches on one pair pulled its two images off, docs/design/fallback.md).
    ``MERGED_NAME`` is written only when a pair is kept.
    """
    t0 = time.perf_counter()
    outputs = Path(outputs)
    sparse_matches = Path(sparse_matches) if sparse_matches is not None else outputs / "matches.h5"
    if matcher_kind(matcher) != "dense":
        raise ValueError(f"the fallback matcher must be a dense one (e.g. roma), not {matcher_name(matcher)!r}")
    stats = FallbackStats(matcher=matcher_name(matcher), max_matches=max_matches)
    todo = unverified_pairs(pairs, verified)
    stats.num_pairs = len(todo)
    if not todo:
        stats.seconds = time.perf_counter() - t0
        return stats
    where = registered_in(models)
    dropped, shares, to_match = [], [], []
    for a, b in todo:
        (ma, ia), (mb, ib) = where.get(a, (-1, None)), where.get(b, (-2, None))  # unregistered: never equal
        if ma == mb and (overlap := predicted_overlap(models[ma], ia, ib)) < min_overlap:
            dropped.append((a, b, f"the skeleton puts {overlap:.0%} of one image's points in the other's view"))
        else:
            to_match.append((a, b))
    todo, stats.num_skipped = to_match, len(dropped)
    if not todo:
        stats.dropped, stats.seconds = tuple(dropped), time.perf_counter() - t0
        return stats
    matcher = get_matcher(matcher, device=device)  # loaded only when a pair needs it
    stats.matcher = matcher_name(matcher)
    logger.info("fallback: %d pairs the sparse matches did not verify go to %s (%d left out: no overlap)",
                len(todo), stats.matcher, stats.num_skipped)
    dense_file = outputs / MATCHES_NAME
    ms = match.main(todo, images, dense_file, matcher, num_samples=num_samples, seed=seed, batch_size=batch_size,
                    overwrite=overwrite, device=device, progress=progress, skipped_images=skipped_images)
    stats.num_resumed = ms.num_resumed
    gate = tracks.settings("dense", min_pair_score=min_pair_score)[1]
    wanted = {frozenset(p) for p in todo}
    kept: dict[Pair, dict] = {}
    for a, b, k0, k1, scores, s0, s1 in iter_pair_matches(dense_file):
        if frozenset((a, b)) not in wanted or len(k0) == 0:
            continue
        (ma, ia), (mb, ib) = where.get(a, (-1, None)), where.get(b, (-2, None))  # unregistered: never equal
        if ma == mb:  # both in one skeleton model: its epipolar geometry decides
            stats.num_checked += 1
            tolerance = max_epipolar_error * max(1.0, max(*s0, *s1) / reference_size)
            F = fundamental_matrix(models[ma], ia, ib)
            fits = sampson_errors(F, k0.astype(np.float64), k1.astype(np.float64)) < tolerance**2
            shares.append(float(fits.mean()))
            if fits.mean() < min_epipolar_share:
                dropped.append((a, b, f"{fits.mean():.0%} of the matches fit the skeleton's geometry"))
                continue
            k0, k1, scores = k0[fits], k1[fits], scores[fits]
        else:
            score = tracks.pair_score(k0, k1, scores, s0, s1)
            if score < gate:
                dropped.append((a, b, f"pair score {score:.3f} < {gate:g}"))
                continue
        if max_matches is not None and len(scores) > max_matches:
            best = np.sort(np.argsort(-scores, kind="stable")[:max_matches])
            k0, k1, scores = k0[best], k1[best], scores[best]
        kept[(a, b)] = {"kpts0": k0, "kpts1": k1, "scores": scores, "size0": s0, "size1": s1}
    stats.num_kept, stats.dropped = len(kept), tuple(dropped)
    stats.mean_share = float(np.mean(shares)) if shares else 0.0
    if kept:
        consolidate(sparse_matches)
        sparse_meta = stored_meta(sparse_matches)
        signature = {"sparse": sparse_meta.get("matcher_signature", {}),
                     "dense": stored_meta(dense_file).get("matcher_signature", {}),
                     "max_epipolar_error": max_epipolar_error, "reference_size": reference_size,
                     "min_epipolar_share": min_epipolar_share, "max_matches": max_matches}
        write_merged(sparse_matches, kept, outputs / MERGED_NAME,
                     f"{sparse_meta.get('matcher', 'sparse')}+{stats.matcher}", signature)
    stats.seconds = time.perf_counter() - t0
    logger.info("fallback: %d of %d pairs kept (%d checked against the skeleton) in %.1f s", stats.num_kept,
                stats.num_pairs, stats.num_checked, stats.seconds)
    return stats
