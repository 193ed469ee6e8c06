"""Step 3: per-pair dense matches -> per-image keypoints shared by all pairs (+ index matches).

Why: a dense matcher gives each pair its own sub-pixel points, but SfM needs one keypoint per image
shared by every pair that sees it. Points are quantized onto a grid of ``cell_size`` px (a cell =
a keypoint; the ``max_keypoints`` cells with most score mass are kept) and each pair keeps a
one-to-one set of cell matches (greedy by score mass).

Sub-pixel recovery (``refine``), because cell centres alone cost ~cell_size / sqrt(6) px of
transfer error per match:
- ``"none"``: cell centres.
- ``"mean"``: score-weighted mean of every raw point that fell into the cell (over all pairs, so the
  position is one per image). Exact for sparse matchers (SIFT: one keypoint per cell), no help for
  uniformly sampled dense matches.
- ``"flow"`` (default): starts from "mean", then enforces the matches themselves: for every cell
  match (a, b) a local affine map A->B is fitted (weighted least squares) to the raw matches of that
  pair whose A point lies in cell a, and B->A likewise for cell b; a few damped Jacobi sweeps move
  each keypoint to the average of the positions its matches predict (with a weak pull to the "mean"
  position and a clamp to its cell). Consistent across pairs because there is one position per
  keypoint. A cell holds one to three raw points of a pair, too few for the map's linear part, so
  that part leans on the pair's affine map over a coarser cell of ``affine_cell`` px (tens of
  points). Leaning on the identity instead (a translation) puts keypoints a pixel or more off where
  two views differ in scale (tests/test_pipeline_tracks.py), and tenths of a pixel on real scenes.

The files it writes (``features.h5``, ``matches_idx.h5``) and their crash safety: :mod:`.h5io`.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pycolmap

from .h5io import consolidate, iter_pair_matches, matches_kind, read_features, read_index_matches, write_features, write_index_matches
from .utils import h5_in_memory, logger

Pair = tuple[str, str]

# min_pair_score of "dense": calibrated for the shipped roma-tiny by benchmarks/pair_gate.py (README);
# the score is pair_score(): mean certainty x epipolar inlier share
MAX_KEYPOINTS = 16384
confs = {
    "dense": {"cell_size": 4.0, "max_keypoints": MAX_KEYPOINTS, "refine": "flow", "min_pair_score": 0.07,
              "affine_cell": 16.0},
    "sparse": {"cell_size": 2.0, "max_keypoints": MAX_KEYPOINTS, "refine": "flow", "min_pair_score": 0.0,
               "affine_cell": 0.0},
}
DEFAULTS = confs["dense"]


def settings(kind: str, cell_size: Optional[float] = None, min_pair_score: Optional[float] = None
             ) -> tuple[float, float]:
    """(cell_size, min_pair_score): the values given, else ``confs[kind]`` (``match.matches_kind``)."""
    conf = confs[kind]
    return (conf["cell_size"] if cell_size is None else cell_size,
            conf["min_pair_score"] if min_pair_score is None else min_pair_score)


@dataclass
class TrackStats:
    num_images: int = 0
    num_pairs: int = 0
    mean_keypoints: float = 0.0
    mean_matches: float = 0.0
    seconds: float = 0.0
    rejected: list = field(default_factory=list)  # [(name0, name1, pair score)] below min_pair_score

    def empty_message(self, min_pair_score: float) -> str:
        """Why no image got keypoints (for a run that ends here)."""
        if self.rejected:
            return (f"every matched pair was left out: pair score (mean certainty x epipolar inlier share) "
                    f"below --min-pair-score {min_pair_score:g} in all {len(self.rejected)} pairs "
                    f"(do the images overlap?)")
        return "no matches between any two images"


def pair_score(kp0: np.ndarray, kp1: np.ndarray, scores: np.ndarray, size0: tuple[int, int],
               size1: tuple[int, int], max_error: float = 1.3e-3, max_points: int = 1000, seed: int = 0) -> float:
    """The pair gate's statistic: mean certainty x the share of matches that fit one epipolar geometry.

    kp0, kp1: (M, 2) pixels, scores: (M,), sizes (W, H). The certainty alone does not separate views
    that share nothing from wide baselines (a dense matcher is moderately sure of a smooth wrong warp
    on look-alike facades); such a warp is not epipolar-consistent at the matcher's accuracy, so
    fewer of its matches fit a fundamental matrix (pycolmap LO-RANSAC, Sampson error below
    ``max_error`` x the longer image side: 1 px at 768 px). ``max_points`` evenly spaced matches and
    at most 1000 trials are enough for a share (a 30 % inlier mix is found) and keep it cheap per
    pair; COLMAP's 10000 trials take long on a pair that fits nothing.
    """
    if len(scores) < 8:
        return 0.0
    sel = np.linspace(0, len(scores) - 1, min(len(scores), max_points)).astype(int)
    opts = pycolmap.RANSACOptions()
    opts.max_error = max_error * max(*size0, *size1)
    opts.random_seed = seed
    opts.num_threads = 1
    opts.max_num_trials = 1000
    res = pycolmap.estimate_fundamental_matrix(kp0[sel].astype(np.float64), kp1[sel].astype(np.float64), opts)
    inliers = 0.0 if res is None else float(np.mean(res["inlier_mask"]))
    return float(scores.mean()) * inliers


def _cells(xy: np.ndarray, size: tuple[int, int], cell: float) -> np.ndarray:
    """(N, 2) pixel positions -> (N,) int64 cell ids on a grid of ``cell`` px over an image (W, H)."""
    ncols = int(np.ceil(size[0] / cell))
    nrows = int(np.ceil(size[1] / cell))
    cx = np.clip(np.floor(xy[:, 0] / cell), 0, ncols - 1).astype(np.int64)
    cy = np.clip(np.floor(xy[:, 1] / cell), 0, nrows - 1).astype(np.int64)
    return cy * ncols + cx


def _cell_centres(ids: np.ndarray, size: tuple[int, int], cell: float) -> np.ndarray:
    ncols = int(np.ceil(size[0] / cell))
    return np.stack([(ids % ncols + 0.5) * cell, (ids // ncols + 0.5) * cell], -1)


def _local_affine(groups: np.ndarray, p: np.ndarray, q: np.ndarray, w: np.ndarray, n: int,
                  reg: float, prior: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted LS affine q ~ M (p - pm) + qm per group id in [0, n).

    Returns pm (n, 2), qm (n, 2), M (n, 2, 2). ``reg`` (px^2) ridge-regularizes the covariance
    towards M = ``prior`` (n, 2, 2) (default: I), so that groups with one or collinear points fall
    back to the prior's linear part.
    """
    sw = np.bincount(groups, w, n) + 1e-12
    pm = np.stack([np.bincount(groups, w * p[:, i], n) for i in range(2)], -1) / sw[:, None]
    qm = np.stack([np.bincount(groups, w * q[:, i], n) for i in range(2)], -1) / sw[:, None]
    dp, dq = p - pm[groups], q - qm[groups]
    Cpp = np.zeros((n, 2, 2))
    Cqp = np.zeros((n, 2, 2))
    for i in range(2):
        for j in range(2):
            Cpp[:, i, j] = np.bincount(groups, w * dp[:, i] * dp[:, j], n)
            Cqp[:, i, j] = np.bincount(groups, w * dq[:, i] * dp[:, j], n)
    eye = np.eye(2)[None] * (reg * sw)[:, None, None]
    M = (Cqp + (eye if prior is None else prior @ eye)) @ np.linalg.inv(Cpp + eye)
    return pm, qm, M


def _coarse_affine(p: np.ndarray, q: np.ndarray, w: np.ndarray, at: np.ndarray, size: tuple[int, int],
                   cell: float, reg: float, max_zoom: float = 4.0) -> np.ndarray:
    """The affine map's linear part (K, 2, 2) at the points ``at`` (K, 2), fitted per ``cell``-px cell
    to the matches p -> q (N, 2) with weights w (N,). A cell whose fit zooms lengths by more than
    ``max_zoom`` (or less than its inverse: a mix of two motions, or outliers) gives the identity."""
    ncols, nrows = int(np.ceil(size[0] / cell)), int(np.ceil(size[1] / cell))
    _, _, M = _local_affine(_cells(p, size, cell), p, q, w, ncols * nrows, reg)
    det = np.abs(np.linalg.det(M))
    M[~((det > max_zoom ** -2) & (det < max_zoom ** 2))] = np.eye(2)
    return M[_cells(at, size, cell)]


def build_tracks(pair_matches: dict[Pair, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 sizes: dict[str, tuple[int, int]], cell_size: float = DEFAULTS["cell_size"],
                 max_keypoints: int = DEFAULTS["max_keypoints"], refine: str = DEFAULTS["refine"], iterations: int = 50,
                 prior_weight: float = 0.01, affine_cell: float = DEFAULTS["affine_cell"]):
    """Quantize the raw matches of every pair onto per-image keypoints (see module docstring).

    pair_matches: (name0, name1) -> (kpts0 (N,2), kpts1 (N,2), scores (N,)) in pixels.
    Returns keypoints {name: (K,2) float32}, keypoint scores {name: (K,)}, and
    matches {(name0, name1): (idx (M,2) int32, scores (M,) float32)}.
    """
    if refine not in ("none", "mean", "flow"):
        raise ValueError(f"refine must be 'none', 'mean' or 'flow', not {refine!r}")
    pairs = list(pair_matches)
    # 1) per image: every raw point of every pair it is in
    occ: dict[str, list[tuple[int, int]]] = {}  # name -> [(pair index, side)]
    for pi, (a, b) in enumerate(pairs):
        occ.setdefault(a, []).append((pi, 0))
        occ.setdefault(b, []).append((pi, 1))
    raw_kp: dict[tuple[int, int], np.ndarray] = {}  # (pair, side) -> keypoint index per raw match
    keypoints, kp_scores, kp_mean = {}, {}, {}
    for name, occs in occ.items():
        size = sizes[name]
        xy = np.concatenate([pair_matches[pairs[pi]][side] for pi, side in occs]).astype(np.float64)
        sc = np.concatenate([pair_matches[pairs[pi]][2] for pi, _ in occs]).astype(np.float64)
        sc = np.maximum(sc, 1e-6)
        ids = _cells(xy, size, cell_size)
        uniq, inv = np.unique(ids, return_inverse=True)
        mass = np.bincount(inv, sc, len(uniq))
        keep = np.argsort(-mass, kind="stable")[:max_keypoints]
        keep.sort()  # keypoints in raster order of their cells
        kp_of_uniq = np.full(len(uniq), -1, np.int64)
        kp_of_uniq[keep] = np.arange(len(keep))
        mean = np.stack([np.bincount(inv, sc * xy[:, i], len(uniq)) for i in range(2)], -1) / mass[:, None]
        count = np.bincount(inv, minlength=len(uniq))
        centres = _cell_centres(uniq[keep], size, cell_size)
        kp_mean[name] = mean[keep]
        keypoints[name] = centres if refine == "none" else mean[keep]
        kp_scores[name] = (mass[keep] / count[keep]).astype(np.float32)
        kp_all = kp_of_uniq[inv]
        start = 0
        for pi, side in occs:
            n = len(pair_matches[pairs[pi]][2])
            raw_kp[(pi, side)] = kp_all[start:start + n]
            start += n
    # 2) per pair: one-to-one cell matches, greedy by score mass
    matches: dict[Pair, tuple[np.ndarray, np.ndarray]] = {}
    for pi, (a, b) in enumerate(pairs):
        i0, i1 = raw_kp[(pi, 0)], raw_kp[(pi, 1)]
        sc = np.maximum(pair_matches[(a, b)][2].astype(np.float64), 1e-6)
        valid = (i0 >= 0) & (i1 >= 0)
        if not valid.any():
            matches[(a, b)] = (np.zeros((0, 2), np.int32), np.zeros(0, np.float32))
            continue
        key = i0[valid] * len(keypoints[b]) + i1[valid]
        uk, inv = np.unique(key, return_inverse=True)
        mass = np.bincount(inv, sc[valid], len(uk))
        mean_score = mass / np.bincount(inv, minlength=len(uk))
        order = np.argsort(-mass, kind="stable")
        m0, m1 = uk[order] // len(keypoints[b]), uk[order] % len(keypoints[b])
        first0 = np.unique(m0, return_index=True)[1]
        sel = np.zeros(len(order), bool)
        sel[first0] = True
        first1 = np.unique(np.where(sel, m1, -1 - np.arange(len(m1))), return_index=True)[1]
        sel2 = np.zeros(len(order), bool)
        sel2[first1] = True
        sel &= sel2
        idx = np.stack([m0[sel], m1[sel]], -1).astype(np.int32)
        matches[(a, b)] = (idx, mean_score[order][sel].astype(np.float32))
    # 3) sub-pixel refinement by match consistency
    if refine == "flow" and pairs:
        keypoints = _refine_flow(pairs, pair_matches, raw_kp, keypoints, kp_mean, matches, sizes, cell_size,
                                 iterations, prior_weight, affine_cell)
    return ({n: k.astype(np.float32) for n, k in keypoints.items()}, kp_scores, matches)


def _refine_flow(pairs, pair_matches, raw_kp, keypoints, prior, matches, sizes, cell, iterations, prior_weight,
                 affine_cell):
    """Damped Jacobi on  sum_e |x_b - f_e(x_a)|^2 + |x_a - g_e(x_b)|^2 + w0 sum_k |x_k - prior_k|^2."""
    names = list(keypoints)
    offset = dict(zip(names, np.cumsum([0] + [len(keypoints[n]) for n in names[:-1]])))
    X = np.concatenate([keypoints[n] for n in names]).astype(np.float64)
    P = np.concatenate([prior[n] for n in names]).astype(np.float64)
    lo = np.concatenate([np.floor(prior[n] / cell) * cell for n in names]) - 0.5 * cell
    hi = lo + 2.0 * cell
    reg = cell ** 2 / 12.0 * 0.1  # a tenth of the spread of uniform points in a cell
    src, dst, A, t = [], [], [], []  # prediction x_dst = A (x_src - ps) + qs  stored as A x_src + t
    for pi, (a, b) in enumerate(pairs):
        idx, _ = matches[(a, b)]
        if not len(idx):
            continue
        k0, k1, sc = (np.asarray(v, np.float64) for v in pair_matches[(a, b)])
        sc = np.maximum(sc, 1e-6)
        for sa, sb, pa, pb, ia, s_idx, d_idx in ((a, b, k0, k1, raw_kp[(pi, 0)], idx[:, 0], idx[:, 1]),
                                                 (b, a, k1, k0, raw_kp[(pi, 1)], idx[:, 1], idx[:, 0])):
            # affine fit per source keypoint over this pair's raw matches whose source point is in its cell
            ok = ia >= 0
            prior_M = _coarse_affine(pa, pb, sc, keypoints[sa], sizes[sa], affine_cell, reg) if affine_cell > 0 else None
            pm, qm, M = _local_affine(ia[ok], pa[ok], pb[ok], sc[ok], len(keypoints[sa]), reg, prior=prior_M)
            Ms = M[s_idx]
            src.append(s_idx + offset[sa])
            dst.append(d_idx + offset[sb])
            A.append(Ms)
            t.append(qm[s_idx] - np.einsum("nij,nj->ni", Ms, pm[s_idx]))
    if not src:
        return keypoints
    src, dst = np.concatenate(src), np.concatenate(dst)
    A, t = np.concatenate(A), np.concatenate(t)
    deg = np.bincount(dst, minlength=len(X)).astype(np.float64)
    for _ in range(iterations):
        pred = np.einsum("nij,nj->ni", A, X[src]) + t
        acc = np.stack([np.bincount(dst, pred[:, i], len(X)) for i in range(2)], -1)
        # damping: the current position counts as much as all predictions together
        X = (deg[:, None] * X + acc + prior_weight * P) / (2 * deg[:, None] + prior_weight)
        X = np.clip(X, lo, hi)
    return {n: X[offset[n]:offset[n] + len(keypoints[n])] for n in names}


def transfer_error(features: Path, matches_idx: Path,
                   transfer: Callable[[str, str, np.ndarray], np.ndarray]) -> dict[str, float]:
    """Error of the index matches under a ground-truth transfer (e.g. a homography).

    transfer(name0, name1, xy0 (N,2)) -> xy1 (N,2) true positions in name1 (COLMAP convention).
    Returns mean / median / rmse in px over all matches of all pairs.
    """
    kps = read_features(features)
    errs = []
    for (a, b), idx in read_index_matches(matches_idx).items():
        if len(idx):
            errs.append(np.linalg.norm(transfer(a, b, kps[a][idx[:, 0]].astype(np.float64)) - kps[b][idx[:, 1]], axis=1))
    e = np.concatenate(errs) if errs else np.zeros(0)
    return {"mean": float(e.mean()) if len(e) else float("nan"), "median": float(np.median(e)) if len(e) else float("nan"),
            "rmse": float(np.sqrt((e ** 2).mean())) if len(e) else float("nan"), "num": int(len(e))}


def main(matches: Path, features: Path, matches_idx: Path, cell_size: float = DEFAULTS["cell_size"],
         max_keypoints: int = DEFAULTS["max_keypoints"], refine: str = DEFAULTS["refine"], pairs: Optional[Sequence[Pair]] = None, min_pair_score: float = 0.0,
         affine_cell: Optional[float] = None) -> TrackStats:
    """Read matches.h5, build shared keypoints, write features.h5 and matches_idx.h5 (atomically).

    ``min_pair_score``: a pair whose ``pair_score`` (mean certainty x epipolar inlier share) is below
    it is left out (it adds no keypoints and no matches). A dense matcher samples its matches even
    between views that share nothing, and such pairs pass COLMAP's looser verification on smooth
    wrong warps. ``affine_cell`` (None: the value of the matches' kind in ``confs``): see the module
    docstring.
    """
    t0 = time.perf_counter()
    matches = Path(matches)
    consolidate(matches)  # pick up pairs a killed match run left in the journal
    if affine_cell is None:
        affine_cell = confs[matches_kind(matches)]["affine_cell"]
    wanted = None if pairs is None else {tuple(sorted(p)) for p in pairs}
    pair_matches, sizes, rejected = {}, {}, []
    for a, b, k0, k1, scores, s0, s1 in iter_pair_matches(matches):
        if wanted is not None and tuple(sorted((a, b))) not in wanted:
            continue
        if min_pair_score > 0:
            score = pair_score(k0, k1, scores, s0, s1)
            if score < min_pair_score:
                rejected.append((a, b, score))
                continue
        pair_matches[(a, b)] = (k0, k1, scores)
        sizes[a], sizes[b] = s0, s1
    kps, kp_scores, idx_matches = build_tracks(pair_matches, sizes, cell_size, max_keypoints, refine,
                                               affine_cell=affine_cell)
    run_id = uuid.uuid4().hex
    with h5_in_memory(matches_idx) as f:
        write_index_matches(f, kps, idx_matches, run_id)
    with h5_in_memory(features) as f:
        write_features(f, kps, kp_scores, sizes, cell_size, refine, run_id)
    stats = TrackStats(num_images=len(kps), num_pairs=len(idx_matches),
                       mean_keypoints=float(np.mean([len(k) for k in kps.values()])) if kps else 0.0,
                       mean_matches=float(np.mean([len(m[0]) for m in idx_matches.values()])) if idx_matches else 0.0,
                       seconds=time.perf_counter() - t0, rejected=rejected)
    if rejected:
        logger.info("tracks: %d pairs below the pair score %.2f left out", len(rejected), min_pair_score)
    logger.info("tracks: %d images, %.0f keypoints/image, %.0f matches/pair (cell %.1f px, refine=%s) in %.1f s",
                stats.num_images, stats.mean_keypoints, stats.mean_matches, cell_size, refine, stats.seconds)
    return stats
