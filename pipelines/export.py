"""Step 5: write the results: COLMAP model (binary + text), points.ply, report.json, previews, report.html.

Layout of ``outputs``: ``sparse/0/{cameras,images,points3D,rigs,frames}.{bin,txt}``, ``points.ply``
(the largest model; a run that made several has ``sparse/1``, ``points_1.ply``, ... too, largest
first), ``report.json``, ``preview.png`` (cameras and points from above, "up" = mean camera up
vector), ``matches/<name0>__<name1>.png`` (``figures.plot_pairs``), ``report.html`` (the page to
look at it all, ``report_html``). The models, the PLYs and the preview are written under temporary
names and renamed into place, so a run killed while exporting leaves the earlier files or the new ones.
"""
from __future__ import annotations

import json
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import pycolmap

from . import evaluate, figures, report_html
from ..io import atomic_output
from .utils import jsonable, logger, replace_dir

MATCH_PLOTS = 3  # pairs whose matches are drawn into matches/


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "pycolmap": getattr(pycolmap, "__version__", "?"),
           "colmap": str(getattr(pycolmap, "COLMAP_version", "?")), "numpy": np.__version__, "opencv": cv2.__version__}
    for pkg in ("roma-sfm", "torch", "h5py"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_model(reconstruction: pycolmap.Reconstruction, sparse_dir: Path) -> None:
    """Binary and text model in ``sparse_dir``, which it replaces whole (never a mix of two models)."""
    sparse_dir = Path(sparse_dir)
    tmp = sparse_dir.with_name(sparse_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    reconstruction.write_binary(str(tmp))
    reconstruction.write_text(str(tmp))
    replace_dir(tmp, sparse_dir)


def ply_name(index: int) -> str:
    """PLY of model ``index`` (0 = the largest): points.ply, points_1.ply, points_2.ply, ..."""
    return "points.ply" if index == 0 else f"points_{index}.ply"


def camera_focals(reconstruction: pycolmap.Reconstruction,
                  priors: Optional[dict[int, tuple[float, bool]]] = None) -> list[dict]:
    """Each camera with registered images: its estimated focal length (px) against its prior.

    ``priors``: {camera id: (focal px, from EXIF?)} as the mapper started (``mapping.read_focal_priors``);
    a camera without one gets None (e.g. a model read from disk). ``ratio`` = estimated / prior.
    ``principal_point_offset``: (x, y) px from the image centre (non-zero once refined).
    """
    rows = []
    for cam_id, cam in sorted(reconstruction.cameras.items()):
        names = sorted(im.name for im in reconstruction.images.values() if im.has_pose and im.camera_id == cam_id)
        if not names:
            continue
        focal = float(cam.mean_focal_length())
        prior = (priors or {}).get(int(cam_id))
        rows.append({"camera_id": int(cam_id), "model": cam.model.name, "size": [int(cam.width), int(cam.height)],
                     "images": names, "focal": focal, "prior_focal": prior[0] if prior else None,
                     "prior": ("exif" if prior[1] else "default") if prior else None,
                     "ratio": focal / prior[0] if prior and prior[0] > 0 else None,
                     "principal_point_offset": [float(cam.principal_point_x - cam.width / 2),
                                                float(cam.principal_point_y - cam.height / 2)]})
    return rows


def write_models(models: Sequence[pycolmap.Reconstruction], outputs: Path, prune: bool = False) -> list[dict]:
    """Model i (largest first) to ``outputs/sparse/i`` and ``outputs/<ply_name(i)>``; ``prune``
    removes the numbered models and PLYs of an earlier run beyond these (left alone otherwise: an
    export of one model keeps the others of its run). One row per model: ``index``, ``path``,
    ``ply`` and :func:`model_stats`."""
    outputs = Path(outputs)
    rows = []
    for i, rec in enumerate(models):
        write_model(rec, outputs / "sparse" / str(i))
        with atomic_output(outputs / ply_name(i)) as tmp:
            rec.export_PLY(str(tmp))
        rows.append({"index": i, "path": str(outputs / "sparse" / str(i)), "ply": str(outputs / ply_name(i)),
                     **model_stats(rec)})
    if prune:
        for old in (outputs / "sparse").glob("[0-9]*"):
            if old.name.isdigit() and int(old.name) >= len(models) and old.is_dir():
                shutil.rmtree(old)
        for old in outputs.glob("points_[0-9]*.ply"):
            if old.stem[len("points_"):].isdigit() and int(old.stem[len("points_"):]) >= max(1, len(models)):
                old.unlink()
    return rows


def model_stats(reconstruction: Optional[pycolmap.Reconstruction]) -> dict:
    if reconstruction is None or reconstruction.num_reg_images() == 0:
        return {"images_registered": 0, "registered": [], "points": 0, "mean_track_length": 0.0,
                "mean_reprojection_error": None, "mean_observations_per_image": 0.0}
    return {
        "images_registered": reconstruction.num_reg_images(),
        "registered": sorted(im.name for im in reconstruction.images.values() if im.has_pose),
        "points": reconstruction.num_points3D(),
        "mean_track_length": float(reconstruction.compute_mean_track_length()),
        "mean_reprojection_error": float(reconstruction.compute_mean_reprojection_error()),
        "mean_observations_per_image": float(reconstruction.compute_mean_observations_per_reg_image()),
    }


def _poses(reconstruction: pycolmap.Reconstruction):
    for im in reconstruction.images.values():
        if im.has_pose:
            pose = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
            R = np.asarray(pose.rotation.matrix())
            yield im, R, -R.T @ np.asarray(pose.translation)


def plot_top_view(reconstruction: pycolmap.Reconstruction, path: Path, size: int = 800) -> None:
    """Points (their colours) and cameras (red, with viewing direction) seen from above."""
    cams = list(_poses(reconstruction))
    canvas = np.full((size, size, 3), 255, np.uint8)
    if not cams:
        cv2.putText(canvas, "no registered image", (20, size // 2), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 0, 255), 2)
        cv2.imwrite(str(path), canvas)
        return
    up = -np.mean([R[1] for _, R, _ in cams], 0)  # camera y points down in the image
    # photos are taken upright (no roll): every camera x axis is horizontal, so gravity is the
    # direction most orthogonal to all of them (ill-posed when all cameras share one yaw)
    xs = np.array([R[0] for _, R, _ in cams])
    if len(cams) >= 3:
        _, sv, vt = np.linalg.svd(xs, full_matrices=False)
        if sv[2] < 0.5 * sv[1]:
            up = vt[2] * np.sign(vt[2] @ up + 1e-12)
    up /= np.linalg.norm(up) + 1e-12
    C = np.array([c for _, _, c in cams])
    pts = np.array([p.xyz for p in reconstruction.points3D.values()]).reshape(-1, 3)
    cols = np.array([p.color for p in reconstruction.points3D.values()], np.uint8).reshape(-1, 3)
    e1 = np.cross(up, [1.0, 0, 0]) if abs(up[0]) < 0.9 else np.cross(up, [0, 1.0, 0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    proj = lambda X: np.stack([X @ e1, X @ e2], -1)  # noqa: E731
    P2, C2 = proj(pts), proj(C)
    ref = np.concatenate([P2, C2]) if len(P2) else C2
    lo = np.minimum(np.percentile(ref, 2, axis=0), C2.min(0)) if len(P2) else C2.min(0)
    hi = np.maximum(np.percentile(ref, 98, axis=0), C2.max(0)) if len(P2) else C2.max(0)
    extent = max(float((hi - lo).max()), 1e-6)
    scale = (size - 60) / extent
    to_px = lambda X2: ((X2 - (lo + hi) / 2) * scale + size / 2).astype(int)  # noqa: E731
    if len(P2):
        order = np.argsort(pts @ up)  # higher points drawn last
        for (x, y), c in zip(to_px(P2[order]), cols[order]):
            if 0 <= x < size and 0 <= y < size:
                cv2.circle(canvas, (int(x), int(y)), 1, (int(c[2]), int(c[1]), int(c[0])), -1)
    for (im, R, c), (x, y) in zip(cams, to_px(C2)):
        d = proj(R[2][None])[0]
        d = d / (np.linalg.norm(d) + 1e-12) * 18
        tip = (int(x + d[0]), int(y + d[1]))
        side = np.array([-d[1], d[0]]) * 0.5
        tri = np.array([[x, y], [tip[0] + side[0], tip[1] + side[1]], [tip[0] - side[0], tip[1] - side[1]]], np.int32)
        cv2.polylines(canvas, [tri], True, (0, 0, 220), 2, cv2.LINE_AA)
    cv2.putText(canvas, f"{len(cams)} cameras, {len(pts)} points (top view)", (10, 25), cv2.FONT_HERSHEY_SIMPLEX,
                0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), canvas)


def write_report(report: dict, outputs: Path) -> Path:
    """Write ``outputs/report.json`` atomically (tmp + rename); returns its path."""
    outputs = Path(outputs)
    outputs.mkdir(parents=True, exist_ok=True)
    with atomic_output(outputs / "report.json", outputs / "report.json.tmp") as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=jsonable))
    logger.info("export: %s", outputs / "report.json")
    return outputs / "report.json"


def main(reconstruction: Optional[pycolmap.Reconstruction], outputs: Path, images: Path, report: dict,
         features: Optional[Path] = None, matches_idx: Optional[Path] = None, num_match_plots: int = MATCH_PLOTS,
         write_json: bool = True, more_models: Sequence[pycolmap.Reconstruction] = (),
         focal_priors: Optional[dict[int, tuple[float, bool]]] = None) -> dict:
    """Write model, PLY, previews and ``report.json`` (``report`` is extended with model stats).

    ``reconstruction`` is the largest model (sparse/0, points.ply, the preview and the top-level
    stats); ``more_models``, smaller ones, go to sparse/1, sparse/2, ... and points_1.ply, ...
    ``report['models']`` has a row per model, ``report['cameras']`` each camera's focal length
    against ``focal_priors`` (:func:`camera_focals`, with the model's index).
    ``write_json=False``: everything but report.json (the caller writes it with :func:`write_report`).
    """
    outputs = Path(outputs)
    outputs.mkdir(parents=True, exist_ok=True)
    report = {**report, **model_stats(reconstruction), "versions": versions()}
    if reconstruction is not None and reconstruction.num_reg_images() > 0:
        models = [reconstruction, *more_models]
        report["models"] = write_models(models, outputs)
        report["cameras"] = [{"model_index": i, **row} for i, rec in enumerate(models)
                             for row in camera_focals(rec, focal_priors)]
        with atomic_output(outputs / "preview.png") as tmp:
            plot_top_view(reconstruction, tmp)
        report["model"] = str(outputs / "sparse" / "0")
    if features is not None and matches_idx is not None and Path(matches_idx).exists() and num_match_plots > 0:
        try:
            report["match_plots"] = figures.plot_pairs(images, features, matches_idx, outputs / "matches",
                                                       num_match_plots, database=outputs / "sfm" / "database.db")
        except Exception as e:  # plots are a convenience: never fail a reconstruction for them
            logger.warning("export: match plots failed: %s", e)
    report_html.write(report, outputs, images, reconstruction)  # the view of all the above: last
    if write_json:
        write_report(report, outputs)
    return report


def export_model(model: Path, images: Path, outputs: Path, poses_gt: Union[str, Path, None] = "auto",
                 num_match_plots: int = MATCH_PLOTS) -> dict:
    """Export the COLMAP model folder ``model`` as :func:`main` does, scored against ``poses_gt``
    (see ``evaluate.poses_gt_file``) when there is one; match plots when ``outputs`` holds
    features.h5 and matches_idx.h5. Returns the report ('failed' when no image is registered)."""
    rec = pycolmap.Reconstruction(str(model))
    n = rec.num_reg_images()
    report: dict = {"status": "ok" if n else "failed",
                    "message": f"registered {n} images" if n else f"no registered image in '{model}'",
                    "images": str(images), "outputs": str(outputs), "source_model": str(model)}
    gt = evaluate.poses_gt_file(poses_gt, images)
    if gt is not None:
        report["evaluation"] = {**evaluate.evaluate_reconstruction(rec, gt), "poses_gt": str(gt)}
    files = {"features": outputs / "features.h5", "matches_idx": outputs / "matches_idx.h5"}
    if not all(p.is_file() for p in files.values()):
        files = {}
    return main(rec, outputs, images, report, num_match_plots=num_match_plots, **files)
