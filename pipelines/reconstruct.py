"""All steps chained: images -> pairs -> matches -> tracks -> COLMAP mapping -> export (+ evaluation).

Public API (what the CLI wraps)
-------------------------------
``main(images: Path, outputs: Path, matcher: str | object = "sift", pairs: str = "auto",
       pairs_file: Path | None = None, num_matched: int = 10, window: int = 5,
       num_samples: int = 10000, cell_size: float | None = None, max_keypoints: int = 16384,
       refine: str = "flow", min_pair_score: float | None = None, mapper: str = "incremental",
       camera_mode: str = "auto", device: str = "auto", gt_poses: Path | str | None = "auto",
       overwrite: bool = False, num_threads: int = -1, batch_size: int = 1, progress: bool = True,
       verbose: bool = False, seed: int = 0, ray: str | None = None, ray_workers: int | None = None,
       max_rotation_error: float = 30.0) -> dict``

- ``matcher``: 'sift' | 'roma' | a RoMa preset name | a checkpoint path | any object with
  ``.match(a, b)`` (see ``match.get_matcher``). ``report['config']['matcher']`` is the string given,
  or the object's ``name``; ``coarse_res``, ``upsample_res``, ``symmetric`` are added when the
  matcher has them.
- ``pairs``: 'auto' | 'exhaustive' | 'sequential' | 'retrieval' | 'file' (with ``pairs_file``) or
  a path to a pairs file.
- ``batch_size``: pairs per forward pass for matchers with ``match_many`` (RoMa).
- ``ray``: match on a Ray cluster ('local' or an address; see ``match.main``); the same matches as
  in one process. Large collections: ``pairs='retrieval'`` and ``mapper='global'``.
- ``cell_size``, ``min_pair_score``: quantization of tracks in px and the ``tracks.pair_score``
  (mean certainty x epipolar inlier share) below which a pair is left out; None = ``tracks.confs``
  of the matches' kind (sparse for sift, dense for RoMa; ``match.matches_kind`` of matches.h5).
  Left-out pairs are listed in ``report['tracks']['pairs_rejected']``. The mapper gets
  ``mapping.mapper_options`` of that kind.
- ``max_rotation_error``: the mapping step's view-graph check (deg, 0 = off); the verified pairs it
  leaves out are in ``report['verification']['rotation_outliers']``.
- ``gt_poses``: a ``poses_gt.txt`` to score the model with; 'auto' uses ``<images>/../poses_gt.txt``
  when it exists (as for ``sample_scenes/corner``).
- Resumable: ``matches.h5`` is reused pair by pair unless ``overwrite`` (and only when it was made
  with the same matcher signature, see ``match.main``); the other steps are cheap and always re-run:
  their outputs from an earlier run (``STALE_OUTPUTS``) are removed at the start, so that what is
  in ``outputs`` always belongs to the ``report.json`` next to it, even when the run fails.
- ``report['times']``: seconds of every step (scan, pairs, match, tracks, mapping, export) and
  ``total`` (export included); report.json is written last.
- One writer per ``outputs``: while a run writes it, another process's run into it raises
  ``roma_sfm.lock.OutputLocked`` (naming the pid) before touching anything.
- Never raises for bad inputs (unreadable images, empty folder, a single image, images that do not
  overlap): ``report['status']`` is 'ok' or 'failed' with ``report['message']``, skipped files are in
  ``report['images_skipped']`` ({name: reason}), and ``outputs/report.json`` is always written.

Outputs: ``pairs.txt``, ``matches.h5``, ``features.h5``, ``matches_idx.h5``, ``sfm/database.db``,
``sfm/models/*``, ``sparse/0`` (bin + txt), ``points.ply``, ``preview.png``, ``matches/*.png``,
``report.json``, ``report.html``. When the images form several models (of at least
``mapping.confs``' min_model_size images), each is exported, largest first: ``sparse/1``,
``points_1.ply``, ...; ``report['models']`` has a row per model (the top-level stats and
``evaluation`` are the largest's), and ``report['images_unregistered']`` the images in no model.
``report['cameras']``: each camera's estimated focal length against its prior (EXIF, or
``mapping.DEFAULT_FOCAL_FACTOR`` x the longer side).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Optional, Union

import pycolmap

from . import evaluate as evaluate_
from . import export, mapping, match, tracks
from . import pairs as pairs_
from ..lock import writes_into
from .utils import Timer, logger, scan_images


# outputs of the steps after matching, removed when a run starts (matches.h5 and its journal stay:
# they are resumable; pairs.txt is rewritten and may be the pairs file given)
STALE_OUTPUTS = ("report.json", "report.html", "sparse/[0-9]*", "points.ply", "points_[0-9]*.ply", "preview.png",
                 "features.h5", "matches_idx.h5", "sfm/database.db", "sfm/models", "matches/*.png")


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


def _matcher_config(matcher: Any) -> dict:
    """``matcher`` (the string given, or the object's name) and its resolution when it has one."""
    cfg: dict = {"matcher": str(matcher) if isinstance(matcher, (str, Path)) else match.matcher_name(matcher)}
    if not isinstance(matcher, (str, Path)):
        cfg.update({k: match._jsonable(getattr(matcher, k)) for k in ("coarse_res", "upsample_res", "symmetric")
                    if hasattr(matcher, k)})
    return cfg


def _set_colmap_verbosity(verbose: bool) -> None:
    try:
        pycolmap.logging.minloglevel = 0 if verbose else 1  # 1: warnings and errors only
    except Exception:
        pass


@writes_into(lambda images, outputs, *args, **kwargs: outputs)
def main(images: Path, outputs: Path, matcher: Any = "sift", pairs: str = "auto", pairs_file: Optional[Path] = None,
         num_matched: int = 10, window: int = 5, num_samples: int = 10000, cell_size: Optional[float] = None,
         max_keypoints: int = 16384, refine: str = "flow", min_pair_score: Optional[float] = None,
         mapper: str = "incremental", camera_mode: str = "auto",
         device: str = "auto", gt_poses: Union[Path, str, None] = "auto", overwrite: bool = False,
         num_threads: int = -1, batch_size: int = 1, progress: bool = True, verbose: bool = False,
         seed: int = 0, ray: Optional[str] = None, ray_workers: Optional[int] = None,
         max_rotation_error: float = 30.0) -> dict:
    """Reconstruct ``images`` into ``outputs``; returns the report also written to report.json."""
    images, outputs = Path(images), Path(outputs)
    outputs.mkdir(parents=True, exist_ok=True)
    _set_colmap_verbosity(verbose)
    times: dict[str, float] = {}
    t_start = time.perf_counter()
    clear_stale_outputs(outputs, images)
    report: dict = {"status": "failed", "message": "", "images": str(images), "outputs": str(outputs),
                    "config": {**_matcher_config(matcher), "pairs": str(pairs), "num_matched": num_matched,
                               "num_samples": num_samples, "cell_size": cell_size, "max_keypoints": max_keypoints,
                               "refine": refine, "min_pair_score": min_pair_score, "mapper": mapper,
                               "camera_mode": camera_mode, "max_rotation_error": max_rotation_error,
                               "seed": seed},
                    "images_given": 0, "images_skipped": {}, "times": times}

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

    # 1) pairs
    with Timer(times, "pairs"):
        pair_list = pairs_.main(images, outputs / "pairs.txt", mode=str(pairs), image_list=scan.names,
                                pairs_file=pairs_file, window=window, num_matched=num_matched)
    report["num_pairs"] = len(pair_list)
    if not pair_list:
        return finish("no image pair to match")

    # 2) matching (resumable)
    matcher_obj = match.get_matcher(matcher, device=device)
    report["config"].update({k: v for k, v in _matcher_config(matcher_obj).items() if k != "matcher"})
    try:
        with Timer(times, "match"):
            ms = match.main(pair_list, images, outputs / "matches.h5", matcher_obj, num_samples=num_samples,
                            seed=seed, batch_size=batch_size, overwrite=overwrite, progress=progress,
                            skipped_images=scan.skipped, ray=ray, ray_workers=ray_workers)
    except ValueError as e:  # e.g. resuming into a matches.h5 of another matcher
        return finish(str(e))
    report["images_skipped"].update(ms.skipped_images)
    kind = match.matches_kind(outputs / "matches.h5")
    report["match"] = {"pairs_matched": ms.num_matched, "pairs_resumed": ms.num_resumed, "pairs_failed": ms.num_failed,
                       "kind": kind}

    # 3) tracks
    cell_size, min_pair_score = tracks.settings(kind, cell_size, min_pair_score)
    mapper_options = mapping.mapper_options[kind][mapper]
    report["config"].update(cell_size=cell_size, min_pair_score=min_pair_score, mapper_options=mapper_options)
    with Timer(times, "tracks"):
        ts = tracks.main(outputs / "matches.h5", outputs / "features.h5", outputs / "matches_idx.h5", cell_size,
                         max_keypoints, refine, pairs=pair_list, min_pair_score=min_pair_score)
    report["tracks"] = {"mean_keypoints": ts.mean_keypoints, "mean_matches": ts.mean_matches,
                        "pairs_rejected": [[a, b, round(s, 4)] for a, b, s in ts.rejected]}
    files = {"features": outputs / "features.h5", "matches_idx": outputs / "matches_idx.h5"}
    if ts.num_images == 0:
        return finish(ts.empty_message(min_pair_score), **files)

    # 4) mapping
    with Timer(times, "mapping"):
        res = mapping.main(outputs / "sfm", images, outputs / "features.h5", outputs / "matches_idx.h5",
                           camera_mode=camera_mode, mapper=mapper, num_threads=num_threads, seed=seed,
                           options=mapper_options, max_rotation_error=max_rotation_error)
    times.update({f"mapping/{k}": v for k, v in res.seconds.items()})
    report["verification"] = {"pairs": res.verification.num_pairs, "verified": res.verification.num_verified,
                              "mean_inliers": res.verification.mean_inliers, "configs": res.verification.configs,
                              "rotation_outliers": [[a, b, round(r, 1)] for a, b, r in res.verification.rotation_outliers]}
    rec = res.reconstruction
    registered = {im.name for r in res.models for im in r.images.values() if im.has_pose}
    report["images_unregistered"] = sorted(set(scan.names) - registered)  # in no model

    # 5) evaluation against ground truth, if any
    gt = images.parent / "poses_gt.txt" if gt_poses == "auto" else gt_poses
    if gt is not None and Path(gt).is_file():
        report["evaluation"] = evaluate_.evaluate_reconstruction(rec, Path(gt))
        report["evaluation"]["poses_gt"] = str(gt)
    if rec is None or rec.num_reg_images() == 0:
        msg = ("no two images could be geometrically verified (do the images overlap?)"
               if res.verification.num_verified == 0 else "the mapper could not build a model")
        return finish(msg, **files)
    sizes = " + ".join(str(r.num_reg_images()) for r in res.models)
    return finish(f"registered {sizes} of {len(scan.names)} images"
                  + (f" in {len(res.models)} models" if len(res.models) > 1 else ""), res, ok=True, **files)
