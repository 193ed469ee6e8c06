"""Step 4: COLMAP database + geometric verification + incremental (or global) mapping with pycolmap.

Cameras: ``camera_mode`` 'auto' shares one camera among images of the same folder with the same
size and the same EXIF focal (typical of one device; shared intrinsics make BA better conditioned),
'single' one for all, 'per_folder', 'per_image'.

Geometric verification is done here pair by pair with ``pycolmap.estimate_two_view_geometry`` (so
the counts are known and the config is always set: pycolmap 4.x silently ignores two-view
geometries left UNDEFINED). ``skip_geometric_verification`` writes all matches as inliers with an
explicit UNCALIBRATED config.

Why each pair is verified here, and what bounds its cost: ``docs/design/mapping.md``.

View-graph check (``viewgraph``): after verification, a pair whose relative rotation is more than
``max_rotation_error`` deg from the robust rotation average of all verified pairs is left out of
the two-view geometries (its raw matches stay), so that look-alike views (two walls of one
courtyard) cannot glue the model together; such pairs are in ``VerificationStats.rotation_outliers``.

Writes ``<sfm_dir>/database.db`` and ``<sfm_dir>/models/<i>/`` (every model pycolmap made), and
returns them all, largest first (``MappingResult.models``; ``reconstruction`` is the largest), with
each camera's focal prior (``focal_priors``). The database and models are built under temporary
names and take the place of an earlier run's at the end: a run killed (or failing) at any moment
leaves the earlier database and models as they were, and a finished run leaves none of the earlier
models behind.
Refuses (ValueError) features.h5 and matches_idx.h5 from two different runs of the tracks step.
"""
from __future__ import annotations

import copy
import os
import shutil
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, TypeVar

import cv2
import numpy as np
import pycolmap

from . import viewgraph
from .h5io import check_same_run, read_features, read_image_sizes, read_index_matches
from ..io import atomic_output
from .utils import logger, replace_dir

DEFAULT_FOCAL_FACTOR = 1.2

# Mapper options over COLMAP's defaults, by matches kind and mapper; dotted keys reach nested
# options. Dense tracks carry ~5x SIFT's observations per image, and BA dominates: one refinement
# round instead of 2 (local) / 5 (global), and global BA without redundant points: much faster at
# the same accuracy (docs/design/mapping.md).
mapper_options = {
    "dense": {"incremental": {"ba_local_max_refinements": 1, "ba_global_max_refinements": 1,
                              "mapper.ba_global_ignore_redundant_points3D": True},
              "global": {}},
    "sparse": {"incremental": {}, "global": {}},
}

# Verification over the defaults, by matches kind. Dense matches refined on the photos sit well under
# a pixel from their epipolar lines; the ones COLMAP's 4 px also admits (1-4 px off) bent the
# uncalibrated rows. Their threshold is 1.5 px, or 1.5e-3 of the pair's longer side where that is more
# (photos over 1000 px: the matcher works at a fixed size, so its error in pixels grows with the photo).
# The view-graph calibration then re-estimates their relative poses at 0.5 px instead of 1: at 1 px
# its RANSAC left failed calibrations more often. Measured in docs/design/uncalibrated.md; SIFT keeps
# COLMAP's 4 px and 1 px.
# Dense matches' pairs are few (retrieval, the pair gate), so a right pair that the view-graph check
# wrongly leaves out can be the one strong link between two parts of a scene: they are checked with
# calibrated focals ("check_focals", CHECK_FOCALS). SIFT's exhaustive pairs gained nothing from it.
verification_options = {
    "dense": {"ransac_max_error": 1.5, "ransac_max_error_ratio": 1.5e-3, "calibration_max_error": 0.5,
              "check_focals": "calibrated"},
    "sparse": {},
}

T = TypeVar("T")
R = TypeVar("R")

# the step's defaults (reconstruct and the CLI read them here)
confs = {
    "default": {"mapper": "global", "camera_mode": "auto", "camera_model": "SIMPLE_RADIAL", "min_model_size": 3,
                "min_num_inliers": 15, "ransac_max_error": 4.0, "ransac_max_error_ratio": 0.0,
                "ransac_max_trials": 1000, "max_rotation_error": 30.0,
                "num_threads": -1, "seed": 0, "calibrate": "compare", "restarts": 4,
                "calibration_max_error": 1.0, "check_focals": "start"},
}
DEFAULTS = confs["default"]
MAPPERS = ("incremental", "global")
# before the global mapper: "always" calibrate the focals from the view graph, "never", or
# "compare": map with the calibrated focals and with the start values, keep the better model
CALIBRATION_MODES = ("compare", "always", "never")
# the focal lengths the view-graph check decomposes uncalibrated pairs with, when the global mapper
# calibrates: "calibrated" (check_rotations_calibrated) or "start" (the guesses or EXIF focals)
CHECK_FOCALS = ("calibrated", "start")
# "compare" keeps the start values only if their model registers more images, or as many and is
# supported by this factor more verified inlier matches (epipolar error <= SUPPORT_ERROR px):
# calibration is better on average, the start values are the fallback for view graphs where it is
# ill-posed (docs/design/uncalibrated.md)
START_VALUES_MARGIN = 1.02
SUPPORT_ERROR = 1.0
# ... and maps from the start values only if the calibrated model explains less than this share of
# the verified inlier matches that their own pair's two-view geometry explains at SUPPORT_ERROR
# (nearly all explained: no candidate can be clearly better; relative to the two-view share, so
# that matches less precise than 1 px, as dense ones are, do not trigger it by themselves)
COMPARE_BELOW = 0.95
# map again with the next seed (up to ``restarts`` tries) while the best model explains less than
# this share of it: good models explain 0.95-0.99 of it, a failed view-graph calibration 0.6-0.86
# (docs/design/uncalibrated.md)
RESTART_BELOW = 0.9
CAMERA_MODES = ("auto", "single", "per_folder", "per_image")
# Both mappers keep every principal point at the image centre. A real lens's lies a few pixels off
# it, which bends every pose; a camera shared by enough registered images makes it observable, so a
# final bundle adjustment may refine it there (:func:`refine_principal_points`; :mod:`.principal_points`
# says when, and measures it with SIFT for dense matches).
# A refined point further than this share of the image size from the centre (real lenses: ~1-2 %)
# is taken for a degenerate view set, and the model is kept as mapped.
PRINCIPAL_POINT_MAX_SHIFT = 0.05


@dataclass
class VerificationStats:
    num_pairs: int = 0
    num_verified: int = 0  # pairs with a valid two-view geometry
    mean_inliers: float = 0.0
    configs: dict[str, int] = field(default_factory=dict)
    # [(name0, name1, residual deg)]: verified, but left out by the view-graph check
    rotation_outliers: list = field(default_factory=list)
    verified_pairs: list = field(default_factory=list)  # [(name0, name1)] whose geometry the mapper gets


@dataclass
class MappingResult:
    reconstruction: Optional[pycolmap.Reconstruction]  # the largest model, ``models[0]``
    image_ids: dict[str, int]
    verification: VerificationStats
    num_models: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    # every model pycolmap made, largest first (most registered images, then most points)
    models: list = field(default_factory=list)
    # {camera id: (focal px the mapper started from, True if it came from EXIF)}
    focal_priors: dict[int, tuple[float, bool]] = field(default_factory=dict)
    # how the focals were started: {"mode", "used": "view graph" | "start values", and with "compare"
    # "support": {"view graph": n, "start values": n if it was mapped} (epipolar_support of each
    # candidate's largest model) of "matches" verified inlier matches, "two-view" of which their own
    # pair's geometry explains}
    calibration: dict = field(default_factory=dict)
    # {camera id: (dx, dy) px}: the principal points refine_principal_points moved (in the largest
    # model that refined that camera)
    principal_point_shifts: dict[int, tuple[float, float]] = field(default_factory=dict)


def drop_focal_priors(database: Path) -> None:
    """Mark every camera's focal length as a start value, not a prior (before verification, so
    that pairs are verified as uncalibrated and :func:`calibrate_focals` estimates all focals).

    For the global mapper: a wrong EXIF focal (a cropped or resized photo keeps the EXIF of the
    original) misleads it, and on the benchmark's variants even correct EXIF focals scored lower as
    priors than as start values of the calibration (docs/design/uncalibrated.md).
    """
    with pycolmap.Database.open(database) as db:
        for cam in db.read_all_cameras():
            if cam.has_prior_focal_length:
                cam.has_prior_focal_length = False
                db.update_camera(cam)


def calibrate_focals(database: Path, seed: int = DEFAULTS["seed"],
                     max_error: float = DEFAULTS["calibration_max_error"], reestimate: bool = True) -> bool:
    """Estimate the focal lengths of cameras without a prior from the verified pairs' fundamental
    matrices (GLOMAP's view-graph calibration, which its global mapper expects); with ``reestimate``
    it then re-estimates each pair's relative pose by RANSAC at ``max_error`` px, most of its time
    on dense matches (a caller that only reads the focals leaves it out)."""
    options = pycolmap.ViewGraphCalibrationOptions()
    options.random_seed = seed
    options.relpose_max_error = max_error
    options.reestimate_relative_pose = reestimate
    ok = bool(pycolmap.calibrate_view_graph(database, options))
    logger.info("mapping: view-graph calibration of the focal lengths %s", "done" if ok else "failed")
    return ok


def model_size(rec: pycolmap.Reconstruction) -> tuple[int, int]:
    """How COLMAP ranks models: registered images, then points."""
    return rec.num_reg_images(), rec.num_points3D()


def rank_models(models: Iterable[pycolmap.Reconstruction]) -> list[pycolmap.Reconstruction]:
    """Models largest first (:func:`model_size`), as COLMAP numbers them."""
    return sorted(models, key=model_size, reverse=True)


def refine_principal_points(rec: pycolmap.Reconstruction, min_images: int, max_shift: float = PRINCIPAL_POINT_MAX_SHIFT
                            ) -> tuple[pycolmap.Reconstruction, dict[int, tuple[float, float]]]:
    """The model with the principal point of each camera that ``min_images`` registered images share refined.

    One bundle adjustment of the whole model (Huber loss of 1 px, as the global mapper's own BA;
    tracks of 3+ views) with the principal point free for those cameras; the other cameras'
    intrinsics stay constant. Returns the refined copy and {camera id: (dx, dy) px moved}, or ``rec``
    itself and {} when no camera qualifies or a refined point lands further than ``max_shift`` x the
    image size from the centre.
    """
    counts = Counter(im.camera_id for im in rec.images.values() if im.has_pose)
    shared = {cid for cid, n in counts.items() if n >= min_images > 0}
    if not shared:
        return rec, {}
    work = pycolmap.Reconstruction(rec)
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_principal_point, opts.print_summary, opts.min_track_length = True, False, 3
    opts.ceres.loss_function_type, opts.ceres.loss_function_scale = pycolmap.LossFunctionType.HUBER, 1.0
    config = pycolmap.BundleAdjustmentConfig()
    for image_id, im in work.images.items():
        if im.has_pose:
            config.add_image(image_id)
    for cid in counts.keys() - shared:
        config.set_constant_cam_intrinsics(cid)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)  # else the normal equations are singular
    pycolmap.create_default_bundle_adjuster(opts, config, work).solve()
    moved = {}
    for cid in shared:
        cam, old = work.cameras[cid], rec.cameras[cid]
        dx, dy = cam.principal_point_x - old.principal_point_x, cam.principal_point_y - old.principal_point_y
        if (abs(cam.principal_point_x - cam.width / 2) > max_shift * cam.width
                or abs(cam.principal_point_y - cam.height / 2) > max_shift * cam.height):
            logger.warning("mapping: the principal point of camera %d moved %.0f, %.0f px, too far from the "
                           "centre: kept the model as mapped", cid, dx, dy)
            return rec, {}
        moved[cid] = (dx, dy)
    return work, moved


def read_focal_priors(database: Path) -> dict[int, tuple[float, bool]]:
    """{camera id: (focal px as written by ``create_database``, from EXIF?)}: the mapper's start."""
    with pycolmap.Database.open(database) as db:
        return {int(c.camera_id): (float(c.mean_focal_length()), bool(c.has_prior_focal_length))
                for c in db.read_all_cameras()}


def camera_from_exif(path: Path, size: tuple[int, int]) -> tuple[float, bool]:
    """Focal length in px of an image of (W, H) = ``size``: from EXIF (35 mm equivalent, or focal
    length + COLMAP's sensor database) if present, else ``DEFAULT_FOCAL_FACTOR * max(W, H)``."""
    w, h = size
    try:
        cam = pycolmap.infer_camera_from_image(Path(path))
        f = float(cam.mean_focal_length())
        if cam.has_prior_focal_length and f > 0:
            # COLMAP may read the file without EXIF rotation: rescale by the longer side, which is invariant
            return f * max(w, h) / max(cam.width, cam.height), True
    except Exception:  # unreadable for COLMAP (e.g. 16-bit); our reader decoded it, so use the default
        pass
    return DEFAULT_FOCAL_FACTOR * max(w, h), False


def camera_keys(sizes: dict[str, tuple[int, int]], images: Path, camera_mode: str = DEFAULTS["camera_mode"]
                ) -> dict[str, tuple[tuple, float, bool]]:
    """{image name: (camera key, focal px, from EXIF?)} for images of (W, H) ``sizes``: the images of
    one key share a camera (``camera_mode``), which starts from the focal of its first image by name."""
    out: dict[str, tuple[tuple, float, bool]] = {}
    first_size: dict[tuple, tuple[int, int]] = {}
    for name in sorted(sizes):
        w, h = sizes[name]
        focal, prior = camera_from_exif(Path(images) / name, (w, h))
        folder = str(Path(name).parent)
        key = {"single": ("all",), "per_folder": (folder,), "per_image": (name,),
               "auto": (folder, w, h, round(focal, 1) if prior else None)}.get(camera_mode)
        if key is None:
            raise ValueError(f"camera_mode must be auto|single|per_folder|per_image, not {camera_mode!r}")
        if first_size.setdefault(key, (w, h)) != (w, h):  # a shared camera needs one size
            key = key + (w, h)
        out[name] = (key, focal, prior)
    return out


def create_database(database: Path, images: Path, features: Path, camera_mode: str = DEFAULTS["camera_mode"],
                    camera_model: str = DEFAULTS["camera_model"],
                    principal_points: Optional[dict[str, tuple[float, float]]] = None) -> dict[str, int]:
    """Create ``database`` with cameras, one trivial rig + frame per camera/image, and keypoints.

    Returns {image name: image id}. Keypoints in features.h5 are already in COLMAP convention.
    ``principal_points``: {image name: (cx, cy) px}: the camera of such an image starts there, not at
    the image centre (the mappers keep it; :mod:`.principal_points` measures it).
    """
    database = Path(database)
    database.unlink(missing_ok=True)
    kps = read_features(features)
    sizes = read_image_sizes(features)
    keys = camera_keys(sizes, images, camera_mode)
    points = {keys[n][0]: pp for n, pp in (principal_points or {}).items() if n in keys}
    image_ids: dict[str, int] = {}
    with pycolmap.Database.open(database) as db:
        cams: dict[tuple, int] = {}
        rig_of_cam: dict[int, int] = {}
        for name in sorted(kps):
            (key, focal, prior), (w, h) = keys[name], sizes[name]
            if key not in cams:
                cam = pycolmap.Camera.create_from_model_name(0, camera_model, focal, w, h)
                cam.has_prior_focal_length = prior
                if key in points:
                    cam.principal_point_x, cam.principal_point_y = (float(v) for v in points[key])
                cam_id = db.write_camera(cam)
                rig = pycolmap.Rig()
                rig.add_ref_sensor(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, cam_id))
                rig_of_cam[cam_id] = db.write_rig(rig)
                cams[key] = cam_id
            cam_id = cams[key]
            image_id = db.write_image(pycolmap.Image(name=name, camera_id=cam_id))
            frame = pycolmap.Frame()
            frame.rig_id = rig_of_cam[cam_id]
            frame.add_data_id(pycolmap.data_t(pycolmap.sensor_t(pycolmap.SensorType.CAMERA, cam_id), image_id))
            db.write_frame(frame)
            db.write_keypoints(image_id, np.asarray(kps[name], np.float32).reshape(-1, 2))
            image_ids[name] = image_id
    logger.info("mapping: database with %d images, %d cameras%s", len(image_ids), len(cams),
                f" ({len(points)} with a principal point given)" if points else "")
    return image_ids


def _resolve_threads(num_threads: int) -> int:
    return max(1, os.cpu_count() or 1) if num_threads is None or num_threads <= 0 else int(num_threads)


def _ordered_map(fn: Callable[[T], R], items: Iterable[T], num_threads: int) -> Iterator[R]:
    """``map(fn, items)`` on ``num_threads`` threads, in order, with a bounded number in flight."""
    if num_threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(num_threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * num_threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def import_matches(database: Path, image_ids: dict[str, int], matches_idx: Path,
                   min_num_inliers: int = DEFAULTS["min_num_inliers"],
                   ransac_max_error: float = DEFAULTS["ransac_max_error"], skip_geometric_verification: bool = False,
                   seed: int = DEFAULTS["seed"], num_threads: int = 1,
                   ransac_max_trials: int = DEFAULTS["ransac_max_trials"],
                   max_rotation_error: float = DEFAULTS["max_rotation_error"],
                   ransac_max_error_ratio: float = DEFAULTS["ransac_max_error_ratio"]) -> VerificationStats:
    """Write raw matches and verified two-view geometries of every pair into ``database``.

    Pairs with fewer than ``min_num_inliers`` matches cannot be verified and skip RANSAC (counted as
    DEGENERATE, as COLMAP would); the others are verified on ``num_threads`` threads (<= 0: all
    cores) with the same result as on one, by COLMAP's RANSAC capped at ``ransac_max_trials`` (<= 0:
    COLMAP's cap, 10000, which only pairs with a low inlier ratio reach, at ~10x the cost, for hardly
    any more inliers: docs/design/mapping.md). A verified pair whose relative rotation is more than
    ``max_rotation_error`` deg from the robust average over all pairs (``viewgraph``; 0 disables)
    keeps its matches but not its geometry, and is listed in ``rotation_outliers``. A pair's RANSAC
    threshold is ``ransac_max_error`` px, or ``ransac_max_error_ratio`` x its longer image side where
    that is more.
    """
    matches = read_index_matches(matches_idx)
    stats = VerificationStats(num_pairs=len(matches))
    opts = pycolmap.TwoViewGeometryOptions()
    opts.min_num_inliers = min_num_inliers
    opts.ransac.max_error = ransac_max_error
    opts.ransac.random_seed = seed
    if ransac_max_trials > 0:
        opts.ransac.max_num_trials = ransac_max_trials
    inliers = []
    degenerate = pycolmap.TwoViewGeometryConfiguration.DEGENERATE
    with pycolmap.Database.open(database) as db:
        kps = {n: np.ascontiguousarray(db.read_keypoints(i)[:, :2], np.float64) for n, i in image_ids.items()}
        cams = {n: db.read_camera(db.read_image(i).camera_id) for n, i in image_ids.items()}
        todo = [((a, b), np.asarray(idx, np.uint32).reshape(-1, 2)) for (a, b), idx in matches.items()
                if a in image_ids and b in image_ids and len(idx) > 0]

        def verify(item):
            (a, b), idx = item
            if skip_geometric_verification:
                tvg = pycolmap.TwoViewGeometry()
                tvg.inlier_matches = idx
                tvg.config = pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED  # never UNDEFINED
            elif len(idx) < min_num_inliers:  # cannot pass: skip RANSAC
                tvg = pycolmap.TwoViewGeometry()
                tvg.config = degenerate
            else:
                pair_opts = opts
                longer = max(cams[a].width, cams[a].height, cams[b].width, cams[b].height)
                if ransac_max_error_ratio * longer > ransac_max_error:
                    pair_opts = copy.deepcopy(opts)
                    pair_opts.ransac.max_error = ransac_max_error_ratio * longer
                tvg = pycolmap.estimate_two_view_geometry(cams[a], kps[a], cams[b], kps[b], idx, pair_opts)
            return tvg

        threads = 1 if skip_geometric_verification else _resolve_threads(num_threads)
        verified = []
        for ((a, b), idx), tvg in zip(todo, _ordered_map(verify, todo, threads)):
            db.write_matches(image_ids[a], image_ids[b], idx)
            cfg = pycolmap.TwoViewGeometryConfiguration(int(tvg.config)).name
            stats.configs[cfg] = stats.configs.get(cfg, 0) + 1
            if cfg not in ("UNDEFINED", "DEGENERATE") and len(tvg.inlier_matches) >= min_num_inliers:
                verified.append((a, b, tvg))
        outliers = np.zeros(len(verified), bool)
        if max_rotation_error > 0 and not skip_geometric_verification:
            outliers = _rotation_outliers(verified, kps, cams, max_rotation_error, stats)
        for (a, b, tvg), bad in zip(verified, outliers):
            if not bad:
                db.write_two_view_geometry(image_ids[a], image_ids[b], tvg)
                stats.num_verified += 1
                stats.verified_pairs.append((a, b))
                inliers.append(len(tvg.inlier_matches))
    stats.mean_inliers = float(np.mean(inliers)) if inliers else 0.0
    logger.info("mapping: %d of %d pairs verified, %.0f inliers/pair, configs %s", stats.num_verified,
                stats.num_pairs, stats.mean_inliers, stats.configs)
    return stats


def relative_rotation(tvg, cam0: pycolmap.Camera, cam1: pycolmap.Camera, pts0: np.ndarray, pts1: np.ndarray
                      ) -> Optional[np.ndarray]:
    """cam1_from_cam0 rotation (3, 3) of a verified pair from its essential matrix, or None.

    pts0, pts1: (M, 2) pixels of the inlier matches. E is the pair's own (CALIBRATED, PLANAR) or
    K1^T F K0 (UNCALIBRATED: the cameras' focal guesses); OpenCV's recoverPose picks the
    decomposition with the most points in front of both cameras. Pure-rotation configurations
    (PANORAMIC, PLANAR_OR_PANORAMIC) have no usable E and give None. (pycolmap's
    estimate_two_view_geometry_pose is not used: on PLANAR pairs it returned different rotations
    for the same geometry from one call to the next.)
    """
    C = pycolmap.TwoViewGeometryConfiguration
    config = C(int(tvg.config))
    if config in (C.CALIBRATED, C.PLANAR):
        E = np.asarray(tvg.E, np.float64)
    elif config == C.UNCALIBRATED:
        E = cam1.calibration_matrix().T @ np.asarray(tvg.F, np.float64) @ cam0.calibration_matrix()
    else:
        return None
    x0 = np.ascontiguousarray(cam0.cam_from_img(pts0), np.float64)
    x1 = np.ascontiguousarray(cam1.cam_from_img(pts1), np.float64)
    if len(x0) < 5 or not np.isfinite(E).all() or not np.abs(E).sum():
        return None
    n, R, _, _ = cv2.recoverPose(E, x0, x1, np.eye(3))
    return R if n >= 5 else None


def _rotation_outliers(verified: list, kps: dict, cams: dict, max_error: float, stats: VerificationStats,
                       log: bool = True) -> np.ndarray:
    """(V,) bool over ``verified`` [(name0, name1, TwoViewGeometry)]: the view-graph check.

    A pair without a rotation (:func:`relative_rotation`) takes no part and is kept. Outliers go to
    ``stats.rotation_outliers``."""
    names = sorted({n for a, b, _ in verified for n in (a, b)})
    node = {n: k for k, n in enumerate(names)}
    use, edges, rots, weights = [], [], [], []
    for v, (a, b, tvg) in enumerate(verified):
        m = tvg.inlier_matches
        R = relative_rotation(tvg, cams[a], cams[b], kps[a][m[:, 0]], kps[b][m[:, 1]])
        if R is not None:
            use.append(v)
            edges.append((node[a], node[b]))
            rots.append(R)
            weights.append(len(m))
    outliers = np.zeros(len(verified), bool)
    if not use:
        return outliers
    _, res = viewgraph.average_rotations(len(names), np.array(edges), np.array(rots), np.array(weights, float))
    for v, r in zip(use, res):
        if r > max_error:
            outliers[v] = True
            a, b, _ = verified[v]
            stats.rotation_outliers.append((a, b, float(r)))
    if stats.rotation_outliers and log:
        logger.info("mapping: %d verified pairs left out, their rotation is > %g deg off the view graph's",
                    len(stats.rotation_outliers), max_error)
    return outliers


def check_rotations_calibrated(database: Path, image_ids: dict[str, int], stats: VerificationStats,
                               max_error: float, seed: int = DEFAULTS["seed"],
                               calibration_max_error: float = DEFAULTS["calibration_max_error"]) -> None:
    """The view-graph check (:func:`_rotation_outliers`) on the verified pairs in ``database``, with
    each camera's focal length from a view-graph calibration (:func:`calibrate_focals`, on a copy
    without the pairs that a first check with the start values leaves out) instead of its start
    value; the outliers lose their two-view geometry and ``stats`` is updated.

    Why: an uncalibrated pair's rotation comes from K1^T F K0, and a focal guess 20-30 % off (a cropped
    photo without EXIF) bends it by tens of degrees, so the check with the guesses left out right pairs,
    some of them the only strong link between two parts of a scene. If the calibration fails the
    start values are used, as before.
    """
    with pycolmap.Database.open(database) as db:
        kps = {n: np.ascontiguousarray(db.read_keypoints(i)[:, :2], np.float64) for n, i in image_ids.items()}
        start = {n: db.read_camera(db.read_image(i).camera_id) for n, i in image_ids.items()}
        verified = [(a, b, db.read_two_view_geometry(image_ids[a], image_ids[b])) for a, b in stats.verified_pairs]
    # 1. the check with the start values, so that look-alike pairs cannot mislead the calibration
    first = _rotation_outliers(verified, kps, start, max_error, VerificationStats(), log=False)
    copy_db = database.with_name(database.name + ".check")
    shutil.copyfile(database, copy_db)
    try:
        with pycolmap.Database.open(copy_db) as db:
            for (a, b, _), bad in zip(verified, first):
                if bad:
                    db.delete_two_view_geometry(image_ids[a], image_ids[b])
        focals = {}
        if calibrate_focals(copy_db, seed, calibration_max_error, reestimate=False):
            with pycolmap.Database.open(copy_db) as db:
                focals = {cam.camera_id: cam.focal_length for cam in db.read_all_cameras()}
    finally:
        copy_db.unlink(missing_ok=True)
    # 2. every verified pair again, with the calibrated focals (copies: the database keeps its start values)
    cams = {}
    for n, cam in start.items():
        cam = copy.deepcopy(cam)
        if cam.camera_id in focals:
            cam.focal_length = focals[cam.camera_id]
        cams[n] = cam
    outliers = _rotation_outliers(verified, kps, cams, max_error, stats)
    with pycolmap.Database.open(database) as db:
        for (a, b, _), bad in zip(verified, outliers):
            if bad:
                db.delete_two_view_geometry(image_ids[a], image_ids[b])
    kept = [(a, b, len(tvg.inlier_matches)) for (a, b, tvg), bad in zip(verified, outliers) if not bad]
    stats.verified_pairs = [(a, b) for a, b, _ in kept]
    stats.num_verified = len(kept)
    stats.mean_inliers = float(np.mean([n for _, _, n in kept])) if kept else 0.0


def set_colmap_verbosity(verbose: bool) -> None:
    """COLMAP's own log: everything when ``verbose``, else warnings and errors only."""
    try:
        pycolmap.logging.minloglevel = 0 if verbose else 1
    except Exception:
        pass


def set_options(opts, overrides: dict) -> None:
    """Set ``{"a.b": value}`` on a pycolmap options object; an unknown name is a clear error."""
    for key, value in overrides.items():
        *path, name = key.split(".")
        target = opts
        for p in path:
            target = getattr(target, p, None)
        if target is None or not hasattr(target, name):
            raise ValueError(f"{type(opts).__name__} has no option '{key}'")
        setattr(target, name, value)


def verified_inliers(database: Path) -> tuple[list[tuple[str, str, np.ndarray]], dict[str, np.ndarray]]:
    """The verified pairs of ``database``: [(name0, name1, inlier match indices (k, 2))] and the
    keypoints {name: (n, 2) float64 pixels}."""
    with pycolmap.Database.open(database) as db:
        names = {im.image_id: im.name for im in db.read_all_images()}
        kps = {n: np.asarray(db.read_keypoints(i)[:, :2], np.float64) for i, n in names.items()}
        pairs = []
        for pid, tvg in zip(*db.read_two_view_geometries()):
            a, b = pycolmap.pair_id_to_image_pair(pid)
            if len(tvg.inlier_matches):
                pairs.append((names[a], names[b], np.asarray(tvg.inlier_matches)))
    return pairs, kps


def sampson_errors(F: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Squared Sampson distances (n,) of matches x0 <-> x1 (n, 2) under ``F`` (x1^T F x0 = 0)."""
    x0h, x1h = np.c_[x0, np.ones(len(x0))], np.c_[x1, np.ones(len(x1))]
    Fx, Ftx = x0h @ F.T, x1h @ F
    den = Fx[:, 0] ** 2 + Fx[:, 1] ** 2 + Ftx[:, 0] ** 2 + Ftx[:, 1] ** 2
    return np.sum(x1h * Fx, 1) ** 2 / np.maximum(den, 1e-300)


def two_view_support(database: Path, max_error: float = SUPPORT_ERROR) -> int:
    """How many verified inlier matches their own pair's two-view geometry explains: Sampson error
    under the pair's F <= ``max_error`` px, or, for pairs verified by a homography alone, transfer
    error under H. The most any one model of all cameras could explain, up to the matches'
    precision."""
    total = 0
    with pycolmap.Database.open(database) as db:
        kps = {im.image_id: np.asarray(db.read_keypoints(im.image_id)[:, :2], np.float64)
               for im in db.read_all_images()}
        for pid, tvg in zip(*db.read_two_view_geometries()):
            m = np.asarray(tvg.inlier_matches)
            if not len(m):
                continue
            a, b = pycolmap.pair_id_to_image_pair(pid)
            x0, x1 = kps[a][m[:, 0]], kps[b][m[:, 1]]
            if tvg.F is not None:
                total += int((sampson_errors(np.asarray(tvg.F), x0, x1) <= max_error**2).sum())
            elif tvg.H is not None:
                y = np.c_[x0, np.ones(len(x0))] @ np.asarray(tvg.H).T
                err = np.linalg.norm(y[:, :2] / y[:, 2:] - x1, axis=1)
                total += int((err <= max_error).sum())
            else:
                total += len(m)
    return total


def essential_matrix(image0: pycolmap.Image, image1: pycolmap.Image) -> np.ndarray:
    """E (3, 3) of two posed images, unit baseline: x1^T E x0 = 0 in normalised camera coordinates."""
    rel = image1.cam_from_world() * image0.cam_from_world().inverse()
    t = np.asarray(rel.translation, np.float64)
    t = t / max(np.linalg.norm(t), 1e-12)
    return np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ rel.rotation.matrix()


def epipolar_support(rec: pycolmap.Reconstruction, pairs: list, kps: dict, max_error: float = SUPPORT_ERROR
                     ) -> int:
    """How many of ``pairs``' matches (:func:`verified_inliers`) the model's poses and cameras
    explain: Sampson error of the model's essential matrix <= ``max_error`` px (in normalised
    coordinates times the pair's mean focal). A measure two models of the same matches share,
    unlike their own observations (each keeps what its own view graph and BA let through)."""
    posed = {im.name: im for im in rec.images.values() if im.has_pose}
    total = 0
    for a, b, m in pairs:
        if a not in posed or b not in posed:
            continue
        ia, ib = posed[a], posed[b]
        ca, cb = rec.cameras[ia.camera_id], rec.cameras[ib.camera_id]
        E = essential_matrix(ia, ib)
        xa, xb = ca.cam_from_img(kps[a][m[:, 0]]), cb.cam_from_img(kps[b][m[:, 1]])
        f = 0.5 * (ca.mean_focal_length() + cb.mean_focal_length())
        total += int((sampson_errors(E, xa, xb) <= (max_error / f) ** 2).sum())
    return total


def prefer_start_values(calibrated: list, start: list, support: Callable[[pycolmap.Reconstruction], int],
                        margin: float = START_VALUES_MARGIN) -> bool:
    """Between two candidate model lists (largest first), whether the start-value one wins: more
    registered images in its largest model, or as many and ``margin`` x the ``support``
    (:func:`epipolar_support`); ties keep the calibrated one."""
    if not start:
        return False
    if not calibrated:
        return True
    a, b = calibrated[0], start[0]
    if a.num_reg_images() != b.num_reg_images():
        return b.num_reg_images() > a.num_reg_images()
    return support(b) > margin * support(a)


def compare_start_values(models: dict, run: Callable, database: Path, start_db: Path, images: Path,
                         start_tmp: Path, models_tmp: Path, opts, seed: int, calibration: dict,
                         evidence: tuple[list, dict, int]) -> dict:
    """calibrate="compare", after the mapping from calibrated focals (``models``, in ``database`` /
    ``models_tmp``): map ``start_db`` (the database before calibration) into ``start_tmp`` too,
    unless the calibrated model explains ``COMPARE_BELOW`` of what the pairs' own geometries explain
    (:func:`two_view_support`); if :func:`prefer_start_values`, its database and models take the
    others' place. ``evidence``: (pairs, keypoints) of :func:`verified_inliers` and the
    :func:`two_view_support` of the database as verified. Returns the models kept and fills
    ``calibration`` ("used", "matches", "two-view", "support")."""
    pairs, kps, two_view = evidence
    total = int(sum(len(m) for _, _, m in pairs))
    ranked_calib = rank_models(models.values())
    support = {"view graph": epipolar_support(ranked_calib[0], pairs, kps) if ranked_calib else 0}
    calibration.update(matches=total, support=support)
    calibration["two-view"] = two_view
    if support["view graph"] < COMPARE_BELOW * calibration["two-view"]:
        start_tmp.mkdir()
        pycolmap.set_random_seed(seed)
        alt = run(start_db, images, start_tmp, opts)
        ranked_start = rank_models(alt.values())
        support["start values"] = epipolar_support(ranked_start[0], pairs, kps) if ranked_start else 0
        by_model = {id(r[0]): support[k] for k, r in (("view graph", ranked_calib), ("start values", ranked_start))
                    if r}
        if prefer_start_values(ranked_calib, ranked_start, lambda rec: by_model[id(rec)]):
            calibration["used"] = "start values"
            os.replace(start_db, database)
            replace_dir(start_tmp, models_tmp)
            models = alt
    logger.info("mapping: focals from the %s (support %s of %d verified matches, %d explained by their own pair)",
                calibration["used"], support, total, calibration["two-view"])
    return models


def map_candidate(database: Path, images: Path, models_dir: Path, run: Callable, opts, seed: int,
                  calibrate: Optional[str], evidence: tuple[list, dict, int],
                  calibration_max_error: float = DEFAULTS["calibration_max_error"]) -> tuple[dict, dict]:
    """One mapping of ``database`` into ``models_dir`` with ``seed``; ``calibrate`` (None: keep the
    database's focals) and ``calibration_max_error`` as in :func:`main`, ``evidence`` as in
    :func:`compare_start_values`. Returns (models, calibration record)."""
    calibration: dict = {}
    start_db = database.with_name(database.name + ".start")
    start_tmp = models_dir.with_name(models_dir.name + ".start")
    try:
        if calibrate:
            calibration = {"mode": calibrate, "used": "view graph"}
            if calibrate == "compare":
                shutil.copyfile(database, start_db)
            calibrate_focals(database, seed, calibration_max_error)
        pycolmap.set_random_seed(seed)
        opts.random_seed = seed
        models = run(database, images, models_dir, opts)
        if calibrate == "compare":
            models = compare_start_values(models, run, database, start_db, images, start_tmp, models_dir,
                                          opts, seed, calibration, evidence)
    finally:
        start_db.unlink(missing_ok=True)
        shutil.rmtree(start_tmp, ignore_errors=True)
    return models, calibration


def map_restarts(database: Path, images: Path, models_dir: Path, run: Callable, opts, seed: int, restarts: int,
                 calibrate: Optional[str], calibration_max_error: float = DEFAULTS["calibration_max_error"]
                 ) -> tuple[dict, dict]:
    """:func:`map_candidate`, again with seeds ``seed + 1``, ... (up to ``restarts`` tries in all, each
    from the verified database as it is now) while the best candidate's largest model explains less
    than ``RESTART_BELOW`` of what the pairs' own two-view geometries explain
    (:func:`epipolar_support` against :func:`two_view_support`). Keeps the candidate that registers
    the most images, then has the most support. Why: the view-graph calibration re-estimates every
    relative pose by RANSAC, and some seeds leave focals and poses that no later step repairs; such a
    model explains far fewer matches than a good one (docs/design/uncalibrated.md). The kept
    candidate's database and models end in ``database`` and ``models_dir``; the calibration record
    gets "restarts": [{seed, used, images, support}] and "two-view"."""
    base_db = database.with_name(database.name + ".verified")
    cand_db = database.with_name(database.name + ".candidate")
    cand_dir = models_dir.with_name(models_dir.name + ".candidate")
    pairs, kps = verified_inliers(database)  # as verified, before any calibration changes it
    two_view = two_view_support(database)
    if restarts > 1:  # later tries start from the database as verified
        shutil.copyfile(database, base_db)
    best: tuple = (-1, -1)  # (images, support) of the kept candidate
    models, calibration, tried = {}, {}, []
    try:
        for i in range(max(restarts, 1)):
            if i and best[1] >= RESTART_BELOW * two_view:
                break
            db, out = (database, models_dir) if i == 0 else (cand_db, cand_dir)
            if i:
                shutil.copyfile(base_db, cand_db)
                shutil.rmtree(cand_dir, ignore_errors=True)
                cand_dir.mkdir()
            cand, cal = map_candidate(db, images, out, run, opts, seed + i, calibrate, (pairs, kps, two_view),
                                      calibration_max_error)
            ranked = rank_models(cand.values())
            known = cal.get("support", {}).get(cal.get("used"))  # compare's count for the model it kept
            if known is None and ranked:
                known = epipolar_support(ranked[0], pairs, kps)
            score = (ranked[0].num_reg_images(), known) if ranked else (0, 0)
            tried.append({"seed": seed + i, "used": cal.get("used"), "images": score[0], "support": score[1]})
            if score > best:
                if i:
                    os.replace(cand_db, database)
                    replace_dir(cand_dir, models_dir)
                best, models, calibration = score, cand, cal
    finally:
        for f in (base_db, cand_db):
            f.unlink(missing_ok=True)
        shutil.rmtree(cand_dir, ignore_errors=True)
    calibration.update(restarts=tried, **{"two-view": two_view})
    if len(tried) > 1:
        logger.info("mapping: %d tries (images/support of %d two-view: %s), kept %d images/%d", len(tried),
                    two_view, ", ".join(f"{t['images']}/{t['support']}" for t in tried), *best)
    return models, calibration


def main(sfm_dir: Path, images: Path, features: Path, matches_idx: Path, camera_mode: str = DEFAULTS["camera_mode"],
         mapper: str = DEFAULTS["mapper"], camera_model: str = DEFAULTS["camera_model"],
         min_model_size: int = DEFAULTS["min_model_size"], min_num_inliers: int = DEFAULTS["min_num_inliers"],
         ransac_max_error: float = DEFAULTS["ransac_max_error"],
         ransac_max_error_ratio: float = DEFAULTS["ransac_max_error_ratio"],
         ransac_max_trials: int = DEFAULTS["ransac_max_trials"], skip_geometric_verification: bool = False,
         num_threads: int = DEFAULTS["num_threads"], seed: int = DEFAULTS["seed"], options: Optional[dict] = None,
         max_rotation_error: float = DEFAULTS["max_rotation_error"], calibrate: str = DEFAULTS["calibrate"],
         principal_point_min_images: int = 0, restarts: int = DEFAULTS["restarts"],
         calibration_max_error: float = DEFAULTS["calibration_max_error"],
         principal_points: Optional[dict[str, tuple[float, float]]] = None,
         check_focals: str = DEFAULTS["check_focals"]) -> MappingResult:
    """Database, verification and mapping; returns the largest model (None if nothing registered).

    ``num_threads`` (<= 0: all cores) is used by the verification and by the mapper. ``mapper``:
    global (GLOMAP: rotation averaging, then global positioning) or incremental (COLMAP's). ``options``: {mapper name: option
    overrides}, dotted keys for nested ones (e.g. ``mapper_options["dense"]``); the overrides of
    the mapper that runs are applied. ``calibrate`` (``CALIBRATION_MODES``, global mapper only):
    estimate the focal lengths from the view graph, EXIF focals as start values
    (:func:`drop_focal_priors`, :func:`calibrate_focals`); "compare" may also map from the start
    values and keep those (:func:`compare_start_values`); the calibration re-estimates the pairs'
    relative poses at ``calibration_max_error`` px. A model that explains too few of the verified
    matches is mapped again with the next seeds, up to ``restarts`` tries (:func:`map_restarts`).
    Then every model of ``min_model_size``
    images gets the principal points of its cameras of ``principal_point_min_images`` images refined
    (:func:`refine_principal_points`; 0, the mappers' own behaviour: never; reconstruct decides by
    :mod:`.principal_points`' mode). ``principal_points``: {image name: (cx,
    cy)} the cameras of those images keep instead of the image centre (:func:`create_database`).
    ``check_focals`` (``CHECK_FOCALS``): the focals of the view-graph check when calibrating.
    """
    sfm_dir = Path(sfm_dir)
    sfm_dir.mkdir(parents=True, exist_ok=True)
    # the two mappers take the same options; pick the pair (options class, entry point) by name
    mappers = {"incremental": ("IncrementalPipelineOptions", "incremental_mapping"),
               "global": ("GlobalPipelineOptions", "global_mapping")}
    if mapper not in MAPPERS:
        raise ValueError(f"mapper must be one of {'|'.join(MAPPERS)}, not {mapper!r}")
    if check_focals not in CHECK_FOCALS:
        raise ValueError(f"check_focals must be one of {'|'.join(CHECK_FOCALS)}, not {check_focals!r}")
    if calibrate not in CALIBRATION_MODES:
        raise ValueError(f"calibrate must be one of {'|'.join(CALIBRATION_MODES)}, not {calibrate!r}")
    check_same_run(features, matches_idx)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    models_tmp = sfm_dir / "models.tmp"
    for left in sfm_dir.glob("models.tmp*"):  # what a killed run left (models, candidates)
        shutil.rmtree(left, ignore_errors=True)
    for left in sfm_dir.glob("database.tmp.db.*"):
        left.unlink()
    models_tmp.mkdir()
    calibration: dict = {}
    shifts: dict[int, tuple[float, float]] = {}
    with atomic_output(sfm_dir / "database.db") as database:
        database.unlink(missing_ok=True)
        image_ids = create_database(database, images, features, camera_mode, camera_model, principal_points)
        priors = read_focal_priors(database)  # before any calibration changes them
        options_cls, entry = mappers[mapper]
        if not hasattr(pycolmap, entry):
            raise RuntimeError(f"pycolmap {pycolmap.__version__} has no {entry}")
        calibrating = mapper == "global" and calibrate != "never"
        if calibrating:
            drop_focal_priors(database)
        # calibrating: the view-graph check waits for calibrated focals (check_rotations_calibrated)
        check_later = (calibrating and check_focals == "calibrated" and max_rotation_error > 0
                       and not skip_geometric_verification)
        ver = import_matches(database, image_ids, matches_idx, min_num_inliers, ransac_max_error,
                             skip_geometric_verification, seed, num_threads=num_threads,
                             ransac_max_trials=ransac_max_trials,
                             max_rotation_error=0.0 if check_later else max_rotation_error,
                             ransac_max_error_ratio=ransac_max_error_ratio)
        if check_later and ver.num_verified:
            check_rotations_calibrated(database, image_ids, ver, max_rotation_error, seed, calibration_max_error)
        times["verification"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        models: dict = {}
        if ver.num_verified == 0:
            logger.warning("mapping: no verified image pair; nothing to reconstruct")
        else:
            opts = getattr(pycolmap, options_cls)()
            opts.min_model_size = min_model_size
            opts.min_num_matches = min_num_inliers
            opts.num_threads = num_threads
            opts.random_seed = seed
            set_options(opts, (options or {}).get(mapper, {}))
            run = getattr(pycolmap, entry)
            models, calibration = map_restarts(database, images, models_tmp, run, opts, seed, restarts,
                                               calibrate if calibrating else None, calibration_max_error)
            times["mapping"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for key in sorted(models, key=lambda k: model_size(models[k]), reverse=True):
                rec = models[key]
                if rec.num_reg_images() >= min_model_size:
                    refined, moved = refine_principal_points(rec, principal_point_min_images)
                    if moved:
                        for cid, shift in moved.items():  # a camera in two models: the larger's
                            shifts.setdefault(cid, shift)
                        models[key] = refined
                        refined.write(str(models_tmp / str(key)))
                        logger.info("mapping: model %s: principal point refined, moved %s px", key,
                                    ", ".join(f"camera {c}: {dx:+.1f}, {dy:+.1f}" for c, (dx, dy) in moved.items()))
            times["principal points"] = time.perf_counter() - t0
    replace_dir(models_tmp, sfm_dir / "models")  # models of an earlier run must not outlive it
    if ver.num_verified == 0:
        return MappingResult(None, image_ids, ver, 0, times, focal_priors=priors, calibration=calibration)
    if not models:
        logger.warning("mapping: pycolmap built no model")
        return MappingResult(None, image_ids, ver, 0, times, focal_priors=priors, calibration=calibration)
    ranked = rank_models(models.values())
    ranked = [r for r in ranked if r.num_reg_images() >= min_model_size] or ranked[:1]
    best = ranked[0]
    logger.info("mapping: %d model(s) of %s images; the largest has %d/%d images, %d points", len(ranked),
                "+".join(str(r.num_reg_images()) for r in ranked), best.num_reg_images(), len(image_ids),
                best.num_points3D())
    return MappingResult(best, image_ids, ver, len(ranked), times, ranked, priors, calibration, shifts)
