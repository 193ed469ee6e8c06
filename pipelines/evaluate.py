"""Scoring: a reconstruction against ground-truth cameras, and a matches.h5 against GT pairs.

Ground-truth cameras (``poses_gt.txt``): ``name fx fy cx cy qw qx qy qz tx ty tz`` per line,
world-to-camera x_cam = R(q) x_world + t, pixel centres at integers. A model is scored by the
relative-pose AUC over all pairs of GT images (error = max(rotation error, angle between the
translation directions); a pair with an unregistered image has infinite error). Matches are scored
per GT pair (the 38-field SuperGlue/LoFTR format) by an essential-matrix RANSAC, the same AUC.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import cv2
import numpy as np
import pycolmap

from .h5io import read_matches
from .utils import logger


@dataclass
class GTCamera:
    K: np.ndarray  # (3, 3), pixel centres at integers
    R: np.ndarray  # (3, 3) world-to-camera
    t: np.ndarray  # (3,)


def qvec_to_rotmat(q: Sequence[float]) -> np.ndarray:
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def read_poses_gt(path: Path) -> dict[str, GTCamera]:
    out = {}
    for line in Path(path).read_text().splitlines():
        p = line.split()
        if len(p) != 12 or line.startswith("#"):
            continue
        fx, fy, cx, cy = map(float, p[1:5])
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]])
        out[p[0]] = GTCamera(K, qvec_to_rotmat([float(v) for v in p[5:9]]), np.array([float(v) for v in p[9:12]]))
    return out


def pose_auc(errors: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Area under the cumulative error curve up to each threshold, in percent (SuperGlue's)."""
    errors = np.sort(np.asarray(errors, np.float64))
    recall = (np.arange(len(errors)) + 1) / max(len(errors), 1)
    errors = np.r_[0.0, errors]
    recall = np.r_[0.0, recall]
    aucs = []
    for t in thresholds:
        last = np.searchsorted(errors, t)
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errors[:last], t]
        aucs.append(float(np.trapezoid(r, x=e) / t * 100) if hasattr(np, "trapezoid") else float(np.trapz(r, x=e) / t * 100))
    return aucs


def _angle(R: np.ndarray) -> float:
    return float(np.rad2deg(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


def _t_angle(t0: np.ndarray, t1: np.ndarray) -> float:
    n = np.linalg.norm(t0) * np.linalg.norm(t1)
    if n < 1e-12:
        return 0.0 if np.linalg.norm(t0) < 1e-12 and np.linalg.norm(t1) < 1e-12 else 180.0
    return float(np.rad2deg(np.arccos(np.clip(t0 @ t1 / n, -1.0, 1.0))))


def relative_pose_error(R_gt: np.ndarray, t_gt: np.ndarray, R: np.ndarray, t: np.ndarray,
                        fold_sign: bool = False) -> tuple[float, float]:
    """(rotation error, translation-direction error) in degrees between relative poses."""
    et = _t_angle(t_gt, t)
    if fold_sign:  # an essential matrix fixes t only up to sign
        et = min(et, 180.0 - et)
    return _angle(R_gt.T @ R), et


def evaluate_reconstruction(reconstruction: Union[pycolmap.Reconstruction, Path, str, None], poses_gt: Path,
                            thresholds: Sequence[float] = (3, 5, 10)) -> dict:
    """Relative-pose AUC of a model over every pair of GT images (see module docstring)."""
    gt = read_poses_gt(poses_gt)
    est: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if isinstance(reconstruction, (str, Path)):
        reconstruction = pycolmap.Reconstruction(str(reconstruction))
    if reconstruction is not None:
        for image in reconstruction.images.values():
            if not image.has_pose:
                continue
            name = Path(image.name).name if image.name not in gt else image.name
            pose = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
            est[name] = (np.asarray(pose.rotation.matrix()), np.asarray(pose.translation))
    names = sorted(gt)
    errors, err_R, err_t = [], [], []
    for a, b in combinations(names, 2):
        if a not in est or b not in est:
            errors.append(np.inf)
            continue
        Rg = gt[b].R @ gt[a].R.T
        tg = gt[b].t - Rg @ gt[a].t
        Re = est[b][0] @ est[a][0].T
        te = est[b][1] - Re @ est[a][1]
        eR, et = relative_pose_error(Rg, tg, Re, te)
        err_R.append(eR)
        err_t.append(et)
        errors.append(max(eR, et))
    aucs = pose_auc(errors, thresholds)
    out = {"images": len(names), "registered": sum(n in est for n in names),
           **{f"auc@{t:g}": a for t, a in zip(thresholds, aucs)},
           "median_rot_err": float(np.median(err_R)) if err_R else float("inf"),
           "median_t_err": float(np.median(err_t)) if err_t else float("inf")}
    return out


def model_folder(path: Path) -> Path:
    """A COLMAP model folder: ``path`` itself, or ``path/sparse/0`` for an output folder."""
    path = Path(path)
    if not any((path / f).is_file() for f in ("cameras.bin", "cameras.txt")) and (path / "sparse" / "0").is_dir():
        return path / "sparse" / "0"
    return path


def parse_poses_gt(value: str) -> Union[str, Path, None]:
    """A ``--poses-gt`` value: 'none' -> None, 'auto' as is, else an existing file (ValueError otherwise)."""
    if value.lower() == "none":
        return None
    if value != "auto" and not Path(value).is_file():
        raise ValueError(f"'{value}' is not a file (or 'auto' / 'none')")
    return value if value == "auto" else Path(value)


def poses_gt_file(value: Union[str, Path, None], images: Path) -> Optional[Path]:
    """The ground-truth file to score a model of ``images`` with: 'auto' means
    ``<images>/../poses_gt.txt`` (as in ``sample_scenes/corner``); None when there is no such file."""
    gt = Path(images).parent / "poses_gt.txt" if value == "auto" else value
    return Path(gt) if gt is not None and Path(gt).is_file() else None


def strip_to_images(path: str) -> str:
    """'strecha-x/images/0000.jpg' -> '0000.jpg': names in a matches.h5 are relative to images/."""
    return path.split("images/", 1)[1] if "images/" in path else path


def read_pairs_gt(path: Path) -> list[dict]:
    """38-field lines: path0 path1 rot0 rot1 K0(9) K1(9) T_0to1(16) (x_cam1 = T_0to1 x_cam0)."""
    out = []
    for line in Path(path).read_text().splitlines():
        p = line.split()
        if len(p) < 38:
            continue
        v = np.array(p[2:], np.float64)
        out.append({"name0": p[0], "name1": p[1], "rot0": int(v[0]), "rot1": int(v[1]),
                    "K0": v[2:11].reshape(3, 3), "K1": v[11:20].reshape(3, 3), "T_0to1": v[20:36].reshape(4, 4)})
    return out


def estimate_relative_pose(k0: np.ndarray, k1: np.ndarray, K0: np.ndarray, K1: np.ndarray, ransac_px: float = 0.5,
                           conf: float = 0.99999) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """OpenCV essential matrix (RANSAC on normalized coordinates, threshold ransac_px / mean focal)
    + cheirality: (R, t, inlier mask) or None. k0, k1: (N, 2) with pixel centres at integers."""
    if len(k0) < 5:
        return None
    f = np.mean([K0[0, 0], K1[0, 0], K0[1, 1], K1[1, 1]])
    n0 = (k0 - K0[[0, 1], [2, 2]][None]) / K0[[0, 1], [0, 1]][None]
    n1 = (k1 - K1[[0, 1], [2, 2]][None]) / K1[[0, 1], [0, 1]][None]
    def solve(method: int):
        return cv2.findEssentialMat(n0, n1, np.eye(3), threshold=ransac_px / f, prob=conf, method=method)
    try:
        E, mask = solve(cv2.RANSAC)
    except cv2.error:  # OpenCV 5.1's 5-point RANSAC asserts in solvePoly on some point sets, whatever the
        E, mask = solve(cv2.USAC_DEFAULT)  # seed (11 % of SIFT's Strecha pairs); its USAC solves them
    if E is None:
        return None
    best = None
    for Ei in np.split(E, len(E) // 3):  # findEssentialMat may return several stacked solutions
        n, R, t, _ = cv2.recoverPose(Ei, n0, n1, np.eye(3), 1e9, mask=mask)
        if best is None or n > best[0]:
            best = (n, R, t[:, 0], mask.ravel() > 0)
    return best[1:]


def evaluate_matches(matches: Union[Path, Callable[[str, str], tuple]], pairs_gt: Path,
                     thresholds: Sequence[float] = (5, 10, 20), ransac_px: float = 0.5,
                     name_fn: Callable[[str], str] = strip_to_images, seed: int = 0) -> dict:
    """Relative-pose AUC from the matches of each GT pair.

    ``matches``: a matches.h5 (COLMAP convention, converted here to the pixel-centre-at-integer
    convention of the GT intrinsics) or a function (path0, path1) -> (kpts0, kpts1, scores) in
    COLMAP convention. A pair missing from the matches counts as a failure (infinite error).
    """
    cv2.setRNGSeed(seed)
    errors, missing = [], 0
    for p in read_pairs_gt(pairs_gt):
        try:
            if callable(matches):
                k0, k1, _ = matches(p["name0"], p["name1"])
            else:
                k0, k1, _ = read_matches(matches, name_fn(p["name0"]), name_fn(p["name1"]))
        except KeyError:
            missing += 1
            errors.append(np.inf)
            continue
        k0 = np.asarray(k0, np.float64) - 0.5
        k1 = np.asarray(k1, np.float64) - 0.5
        est = estimate_relative_pose(k0, k1, p["K0"], p["K1"], ransac_px)
        if est is None:
            errors.append(np.inf)
            continue
        R, t, _ = est
        eR, et = relative_pose_error(p["T_0to1"][:3, :3], p["T_0to1"][:3, 3], R, t, fold_sign=True)
        errors.append(max(eR, et))
    if missing:
        logger.warning("evaluate: %d GT pairs have no matches (counted as failures)", missing)
    aucs = pose_auc(errors, thresholds)
    return {"pairs": len(errors), "missing": missing, **{f"auc@{t:g}": a for t, a in zip(thresholds, aucs)}}
