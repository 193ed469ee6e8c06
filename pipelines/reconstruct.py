"""All steps chained: images -> pairs -> matches -> tracks -> COLMAP mapping -> export (+ evaluation).

:class:`ReconstructConfig` gathers every setting; its defaults are the steps' own (``confs`` of
each step), so the CLI and the library start from the same values. :func:`main` never raises for
bad inputs (unreadable images, one image, images that do not overlap): ``report['status']`` says
'ok' or 'failed' with a message, and ``outputs/report.json`` is always written, last. Matching
resumes from ``matches.h5``; the later steps always re-run, and what an earlier run left of their
outputs (:data:`STALE_OUTPUTS`) is removed first, so the files in ``outputs`` always belong to the
report next to them. :func:`map_matches` (tracks + mapping) is shared with ``roma-sfm map``.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Union

from . import evaluate as evaluate_
from . import export, fallback as fallback_, mapping, match, tracks
from . import pairs as pairs_
from . import principal_points as principal_points_
from ..lock import writes_into
from .h5io import list_pairs, matches_kind
from .matchers import get_matcher, matcher_config, matcher_kind
from .utils import Timer, logger, scan_images
from ..presets import DEVICE


@dataclass
class ReconstructConfig:
    """Every setting of a reconstruction; each default is the step's own."""

    matcher: Any = "sift"  # 'sift' | 'roma' | a preset | a checkpoint | an object with .match (matchers.get_matcher)
    # a dense matcher for the pairs the (sparse) matcher's model did not verify (fallback.py); None: none
    fallback: Any = None
    pairs: str = "auto"  # a mode of pairs.MODES, 'file' (with pairs_file) or a pairs file
    pairs_file: Optional[Path] = None
    num_matched: int = pairs_.confs["retrieval"]["num_matched"]
    window: int = pairs_.confs["sequential"]["window"]
    num_samples: int = match.DEFAULTS["num_samples"]
    batch_size: int = match.DEFAULTS["batch_size"]
    cell_size: Optional[float] = None  # None: tracks.confs of the matches' kind
    max_keypoints: int = tracks.MAX_KEYPOINTS
    refine: str = tracks.DEFAULTS["refine"]
    min_pair_score: Optional[float] = None  # None: tracks.confs of the matches' kind
    mapper: str = mapping.DEFAULTS["mapper"]
    calibrate: str = mapping.DEFAULTS["calibrate"]
    camera_mode: str = mapping.DEFAULTS["camera_mode"]
    num_threads: int = mapping.DEFAULTS["num_threads"]
    max_rotation_error: float = mapping.DEFAULTS["max_rotation_error"]
    restarts: int = mapping.DEFAULTS["restarts"]
    principal_point: Optional[str] = None  # a principal_points.MODES; None: the default of the matches' kind
    principal_point_min_images: int = principal_points_.DEFAULTS["min_images"]
    seed: int = match.DEFAULTS["seed"]
    device: str = DEVICE
    gt_poses: Union[Path, str, None] = "auto"  # see evaluate.poses_gt_file
    overwrite: bool = False  # match every pair again instead of resuming
    progress: bool = True
    verbose: bool = False
    ray: Optional[str] = None  # match on Ray ('local' or an address)
    ray_workers: Optional[int] = None


# where the SIFT pass of principal point mode "sift" writes
PRINCIPAL_POINTS_DIR = "principal_points"
# outputs of the steps after matching, removed when a run starts (matches.h5 files and their journals
# stay: they are resumable; pairs.txt is rewritten and may be the pairs file given)
STALE_OUTPUTS = ("report.json", "report.html", "sparse/[0-9]*", "points.ply", "points_[0-9]*.ply", "preview.png",
                 "features.h5", "matches_idx.h5", "sfm/database.db", "sfm/models", "matches/*.png",
                 fallback_.MERGED_NAME,
                 *(f"{PRINCIPAL_POINTS_DIR}/{p}" for p in ("features.h5", "matches_idx.h5", "sfm",
                                                          principal_points_.FILE_NAME)))


def clear_stale_outputs(outputs: Path, images: Optional[Path] = None) -> list[str]:
    """Remove what an earlier run left of ``STALE_OUTPUTS`` in ``outputs`` (never anything inside
    ``images``, should the image folder be or sit in ``outputs``); returns what was removed."""
    outputs = Path(outputs)
    keep = Path(images).resolve() if images is not None else None
    removed = []
    for pattern in STALE_OUTPUTS:
        for p in sorted(outputs.glob(pattern)):
            if keep is not None and (p.resolve() == keep or keep in p.resolve().parents):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.relative_to(outputs).as_posix())
    plots = outputs / "matches"
    if plots.is_dir() and not any(plots.iterdir()):
        plots.rmdir()
    if removed:
        logger.info("reconstruct: removed the outputs of an earlier run: %s", ", ".join(removed))
    return removed


@dataclass
class MapOutcome:
    """What :func:`map_matches` did: the settings it chose by the matches' kind, and each step's result."""

    kind: str
    cell_size: float
    min_pair_score: float
    mapper_options: dict  # {mapper name: overrides}
    principal_point: str  # how the principal points of shared cameras were found (principal_points.MODES)
    tracks: tracks.TrackStats
    mapping: Optional[mapping.MappingResult] = None
    principal_points: Optional[principal_points_.PrincipalPoints] = None  # mode "sift": what the SIFT pass measured
    times: dict = field(default_factory=dict)
    verification: dict = field(default_factory=dict)  # the RANSAC thresholds of this kind (mapping.verification_options)

    @property
    def failure(self) -> Optional[str]:
        """Why no model came out, or None."""
        if self.tracks.num_images == 0:
            return self.tracks.empty_message(self.min_pair_score)
        rec = self.mapping.reconstruction
        if rec is None or rec.num_reg_images() == 0:
            return ("no two images could be geometrically verified (do the images overlap?)"
                    if self.mapping.verification.num_verified == 0 else "the mapper could not build a model")
        return None


def map_matches(images: Path, outputs: Path, matches: Path, config: ReconstructConfig,
                pairs: Optional[list[tuple[str, str]]] = None) -> MapOutcome:
    """Steps 3-4: ``matches`` -> ``outputs``/features.h5, matches_idx.h5 -> ``outputs``/sfm (database, models).

    Cell size, pair gate and mapper options follow the matches' kind unless ``config`` sets them.
    Mapping is skipped when no image got keypoints.
    """
    kind = matches_kind(matches)
    cell_size, min_pair_score = tracks.settings(kind, config.cell_size, config.min_pair_score)
    options = mapping.mapper_options[kind]
    pp_mode = principal_points_.mode_for(kind, config.principal_point)  # a bad mode fails before the tracks
    times: dict[str, float] = {}
    features, matches_idx = outputs / "features.h5", outputs / "matches_idx.h5"
    with Timer(times, "tracks"):
        ts = tracks.main(matches, features, matches_idx, cell_size, config.max_keypoints, config.refine, pairs=pairs,
                         min_pair_score=min_pair_score)
    verification = {**{k: mapping.DEFAULTS[k] for k in ("ransac_max_error", "ransac_max_error_ratio",
                                                        "calibration_max_error", "check_focals")},
                    **mapping.verification_options[kind]}
    out = MapOutcome(kind, cell_size, min_pair_score, options, pp_mode, ts, times=times, verification=verification)
    if ts.num_images == 0:
        return out
    fixed = None
    if out.principal_point == "sift" and config.principal_point_min_images > 0:
        with Timer(times, "principal points (SIFT)"):
            out.principal_points = principal_points_.main(
                images, outputs / PRINCIPAL_POINTS_DIR, pairs if pairs is not None else list_pairs(matches), features,
                camera_mode=config.camera_mode, min_images=config.principal_point_min_images, mapper=config.mapper,
                calibrate=config.calibrate, num_threads=config.num_threads, seed=config.seed,
                max_rotation_error=config.max_rotation_error, overwrite=config.overwrite, progress=config.progress)
        fixed = out.principal_points.points
    with Timer(times, "mapping"):
        out.mapping = mapping.main(outputs / "sfm", images, features, matches_idx, **verification,
                                   camera_mode=config.camera_mode,
                                   mapper=config.mapper, num_threads=config.num_threads, seed=config.seed,
                                   options=options, max_rotation_error=config.max_rotation_error,
                                   calibrate=config.calibrate, principal_points=fixed, restarts=config.restarts,
                                   principal_point_min_images=(config.principal_point_min_images
                                                               if out.principal_point == "refine" else 0))
    times.update({f"mapping/{k}": v for k, v in out.mapping.seconds.items()})
    return out


def run_fallback(images: Path, outputs: Path, pair_list: list[tuple[str, str]], skeleton: MapOutcome,
                 config: ReconstructConfig, skipped_images: dict[str, str]) -> tuple[MapOutcome, dict]:
    """Step 3c after the sparse matches' ``skeleton``: the fallback matcher on the pairs it did not
    verify (:mod:`.fallback`), then tracks and mapping of the merged matches when a pair was kept.

    Returns the outcome to report (the skeleton's when nothing was kept, or when the fallback fails:
    its error is reported, or raised with ``config.verbose``: the finished skeleton is not lost) and the
    report's ``fallback`` entry.
    """
    res = skeleton.mapping
    try:
        with Timer(skeleton.times, "fallback"):
            fb = fallback_.main(images, outputs, pair_list, res.verification.verified_pairs if res else [],
                                res.models if res else [], config.fallback,
                                max_matches=(max(1, round(res.verification.mean_inliers))
                                             if res and res.verification.num_verified else None),
                                num_samples=config.num_samples, seed=config.seed, batch_size=config.batch_size,
                                overwrite=config.overwrite, device=config.device, progress=config.progress,
                                skipped_images=skipped_images)
    except Exception as e:  # bad weights, another matcher's fallback file, out of memory: an extra step's failure
        if config.verbose:
            raise
        logger.warning("fallback: %s: %s; the model of the sparse matches alone is kept", type(e).__name__, e)
        return skeleton, {"error": f"{type(e).__name__}: {e}"}
    entry = {"matcher": fb.matcher, "pairs": fb.num_pairs, "skipped": fb.num_skipped, "resumed": fb.num_resumed,
             "checked": fb.num_checked, "max_matches": fb.max_matches, "kept": fb.num_kept,
             "mean_share": round(fb.mean_share, 4), "dropped": [list(d) for d in fb.dropped]}
    if not fb.num_kept:
        return skeleton, entry
    entry["file"] = str(outputs / fallback_.MERGED_NAME)
    out = map_matches(images, outputs, outputs / fallback_.MERGED_NAME, config, pairs=pair_list)
    out.times = {**{f"skeleton {k}": v for k, v in skeleton.times.items() if k != "fallback"},
                 "fallback": skeleton.times["fallback"], **out.times}
    return out, entry


def _report_config(config: ReconstructConfig) -> dict:
    """The settings recorded in report.json (in this order)."""
    keys = ("num_matched", "num_samples", "cell_size", "max_keypoints", "refine", "min_pair_score", "mapper",
            "calibrate", "camera_mode", "max_rotation_error", "principal_point", "principal_point_min_images",
            "seed")
    values = asdict(config)
    return {**matcher_config(config.matcher), "pairs": str(config.pairs), **{k: values[k] for k in keys}}


@writes_into(lambda images, outputs, *args, **kwargs: outputs)
def main(images: Path, outputs: Path, config: Optional[ReconstructConfig] = None, **settings) -> dict:
    """Reconstruct ``images`` into ``outputs``; returns the report also written to report.json.

    ``settings`` override fields of ``config`` (e.g. ``main(images, out, matcher="roma")``).
    """
    config = replace(config or ReconstructConfig(), **settings)
    images, outputs = Path(images), Path(outputs)
    outputs.mkdir(parents=True, exist_ok=True)
    mapping.set_colmap_verbosity(config.verbose)
    times: dict[str, float] = {}
    t_start = time.perf_counter()
    clear_stale_outputs(outputs, images)
    report: dict = {"status": "failed", "message": "", "images": str(images), "outputs": str(outputs),
                    "config": _report_config(config), "images_given": 0, "images_skipped": {}, "times": times}

    def finish(message: str, res: Optional[mapping.MappingResult] = None, ok: bool = False, **files) -> dict:
        report["status"] = "ok" if ok else "failed"
        report["message"] = message
        if not ok:
            logger.error("reconstruct: %s", message)
        models = res.models if res is not None else []
        with Timer(times, "export"):
            out = export.main(models[0] if models else None, outputs, images, report, write_json=False,
                              more_models=models[1:], focal_priors=res.focal_priors if res else None, **files)
        times["total"] = time.perf_counter() - t_start  # after the export, which it includes
        out["times"] = times
        export.write_report(out, outputs)  # last: it holds every step's time
        return out

    # 0) images
    with Timer(times, "scan"):
        try:
            scan = scan_images(images)
        except FileNotFoundError as e:
            return finish(str(e))
    report["images_given"] = len(scan.names) + len(scan.skipped)
    report["images_skipped"] = dict(scan.skipped)
    if len(scan.names) == 0:
        return finish(f"no readable image in '{images}'" + (f" ({len(scan.skipped)} skipped)" if scan.skipped else ""))
    if len(scan.names) == 1:
        return finish(f"only one readable image in '{images}': need at least 2")

    # 1) pairs (auto's choice depends on the matcher's kind)
    matcher_obj = get_matcher(config.matcher, device=config.device)
    report["config"].update({k: v for k, v in matcher_config(matcher_obj).items() if k != "matcher"})
    if config.fallback is not None:  # loaded by the fallback step, only when a pair needs it
        report["config"]["fallback"] = matcher_config(config.fallback)["matcher"]
        if (error := fallback_.kinds_error(matcher_obj, config.fallback)) is not None:
            return finish(error)
    with Timer(times, "pairs"):
        pair_list = pairs_.main(images, outputs / "pairs.txt", mode=str(config.pairs), image_list=scan.names,
                                pairs_file=config.pairs_file, window=config.window, num_matched=config.num_matched,
                                kind=matcher_kind(matcher_obj))
    report["num_pairs"] = len(pair_list)
    if not pair_list:
        return finish("no image pair to match")

    # 2) matching (resumable)
    try:
        with Timer(times, "match"):
            ms = match.main(pair_list, images, outputs / "matches.h5", matcher_obj, num_samples=config.num_samples,
                            seed=config.seed, batch_size=config.batch_size, overwrite=config.overwrite,
                            progress=config.progress, skipped_images=scan.skipped, ray=config.ray,
                            ray_workers=config.ray_workers)
    except ValueError as e:  # e.g. resuming into a matches.h5 of another matcher
        return finish(str(e))
    report["images_skipped"].update(ms.skipped_images)
    kind = matches_kind(outputs / "matches.h5")
    report["match"] = {"pairs_matched": ms.num_matched, "pairs_resumed": ms.num_resumed, "pairs_failed": ms.num_failed,
                       "kind": kind}

    # 3-4) tracks and mapping (with a fallback: of the sparse matches first, the skeleton)
    mo = map_matches(images, outputs, outputs / "matches.h5", config, pairs=pair_list)
    if config.fallback is not None:
        mo, report["fallback"] = run_fallback(images, outputs, pair_list, mo, config, report["images_skipped"])
    report["config"].update(cell_size=mo.cell_size, min_pair_score=mo.min_pair_score,
                            principal_point=mo.principal_point,
                            mapper_options=mo.mapper_options.get(config.mapper, {}))
    times.update(mo.times)
    ts = mo.tracks
    report["tracks"] = {"mean_keypoints": ts.mean_keypoints, "mean_matches": ts.mean_matches,
                        "pairs_rejected": [[a, b, round(s, 4)] for a, b, s in ts.rejected]}
    files = {"features": outputs / "features.h5", "matches_idx": outputs / "matches_idx.h5"}
    if mo.mapping is None:
        return finish(mo.failure, **files)
    res, ver = mo.mapping, mo.mapping.verification
    report["verification"] = {**mo.verification, "pairs": ver.num_pairs, "verified": ver.num_verified,
                              "mean_inliers": ver.mean_inliers,
                              "configs": ver.configs,
                              "rotation_outliers": [[a, b, round(r, 1)] for a, b, r in ver.rotation_outliers]}
    report["calibration"] = res.calibration
    if mo.principal_points is not None:
        pp = mo.principal_points
        report["principal_points"] = {"images": pp.num_images, "measured": pp.num_registered}
        if pp.num_images:
            report["principal_points"]["file"] = str(outputs / PRINCIPAL_POINTS_DIR / principal_points_.FILE_NAME)
    rec = res.reconstruction
    registered = {im.name for r in res.models for im in r.images.values() if im.has_pose}
    report["images_unregistered"] = sorted(set(scan.names) - registered)  # in no model

    # 5) evaluation against ground truth, if any
    gt = evaluate_.poses_gt_file(config.gt_poses, images)
    if gt is not None:
        report["evaluation"] = evaluate_.evaluate_reconstruction(rec, gt)
        report["evaluation"]["poses_gt"] = str(gt)
    if mo.failure:
        return finish(mo.failure, **files)
    sizes = " + ".join(str(r.num_reg_images()) for r in res.models)
    return finish(f"registered {sizes} of {len(scan.names)} images"
                  + (f" in {len(res.models)} models" if len(res.models) > 1 else ""), res, ok=True, **files)
