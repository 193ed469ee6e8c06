"""Internet photos of a landmark: two-view relative pose against a COLMAP-SIFT pseudo ground truth.

    python benchmarks/landmark.py [--matcher roma sift-opencv ...] [--images DIR] [--write-readme]

The Strecha scenes come from one calibrated camera; tourists' photos do not (mixed cameras and
sizes, no EXIF, people in front, sky, big scale and light changes). The shared data hold one such
set, ``demo/sacre-coeur`` (10 photos, EVALUATION ONLY), without ground truth. This benchmark makes
one: COLMAP's SIFT extraction (a camera per image, SIMPLE_RADIAL), exhaustive matching and
incremental mapping with pycolmap's defaults, kept only if every image registers. It then scores
every pair of images that share at least ``--min-covisible`` 3-D points with ``pose.py``'s protocol
(essential matrix RANSAC, pose error = max(rotation, translation angle), AUC@5/10/20).

The pseudo ground truth is SIFT's own reconstruction, bundle-adjusted over all views, so it leans
towards SIFT; read it as a proxy, not a truth. Matches are undistorted by its cameras before scoring.
The ground truth is cached in ``--work`` as ``NAME/poses_gt.txt`` beside a link to the images (NAME:
the image folder's name), so ``benchmarks/sfm.py --data WORK --scenes NAME --variants original``
can map the same photos against it.
The pairs are also scored apart by how much the two photos differ in the scale of what they
share (``content_scale``: the median ratio of focal length over depth across their common 3-D
points, as one factor >= 1): below ``--scale-split`` and at or above it, the failure mode of
RoMa-tiny on these photos.
Table markers: ``landmark-table``.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Callable

import numpy as np
import pycolmap

from common import DATA, add_common_args, fmt, run_matchers, set_threads
from pose import TABLE_HEADER, THRESHOLDS, evaluate, table_row
from readme import publish
from sfm import sift_database

from roma_sfm.io import IMAGE_EXTENSIONS
from roma_sfm.pipelines.evaluate import pose_auc
from roma_sfm.pipelines.mapping import rank_models


def cache_key(images: Path) -> dict:
    """What the cached pseudo ground truth depends on: pycolmap's version and the images (names, sizes)."""
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    return {"pycolmap": pycolmap.__version__, "images": [[p.name, p.stat().st_size] for p in files]}


def build_pseudo_gt(images: Path, work: Path, num_threads: int = 2) -> pycolmap.Reconstruction:
    """COLMAP-SIFT reconstruction of ``images`` (cached in ``work/NAME/pseudo_gt``, NAME the folder's
    name, and built again when :func:`cache_key` changes); raises if an image is left out."""
    cache = work / images.name / "pseudo_gt"
    model_dir = cache / "model"
    key = cache_key(images)
    key_file = cache / "key.json"
    fresh = key_file.is_file() and json.loads(key_file.read_text()) == key
    if not (fresh and (model_dir / "images.bin").is_file()):
        cache.mkdir(parents=True, exist_ok=True)
        key_file.unlink(missing_ok=True)
        db = cache / "database.db"
        db.unlink(missing_ok=True)
        sift_database(images, db, num_threads, pycolmap.CameraMode.PER_IMAGE)
        opts = pycolmap.IncrementalPipelineOptions()
        opts.num_threads = num_threads
        opts.random_seed = 0
        (cache / "mapping").mkdir(exist_ok=True)
        models = rank_models(pycolmap.incremental_mapping(db, images, cache / "mapping", opts).values())
        if not models:
            raise RuntimeError(f"COLMAP-SIFT found no model in {images}")
        model_dir.mkdir(exist_ok=True)
        models[0].write(model_dir)
        key_file.write_text(json.dumps(key))
    rec = pycolmap.Reconstruction(model_dir)
    n_images = len(key["images"])
    if rec.num_reg_images() < n_images:
        raise RuntimeError(f"the pseudo ground truth registers {rec.num_reg_images()} of {n_images} images; "
                           "it must register all of them")
    return rec


def intrinsics(camera: pycolmap.Camera) -> np.ndarray:
    """3x3 K with pixel centres at integers (the pairs files' convention; COLMAP's are at +0.5)."""
    K = np.array(camera.calibration_matrix(), np.float64)
    K[:2, 2] -= 0.5
    return K


def world_to_camera(image: pycolmap.Image) -> np.ndarray:
    """4x4 world-to-camera matrix of a registered image."""
    T = np.eye(4)
    T[:3] = image.cam_from_world().matrix()
    return T


def undistort(camera: pycolmap.Camera, kpts: np.ndarray) -> np.ndarray:
    """(N, 2) pixels (COLMAP convention) of ``camera`` -> where its pinhole part alone would see them."""
    if len(kpts) == 0:
        return np.asarray(kpts, np.float64).reshape(0, 2)
    K = np.asarray(camera.calibration_matrix(), np.float64)
    return camera.cam_from_img(np.asarray(kpts, np.float64)) * np.diag(K)[None, :2] + K[None, :2, 2]


def undistorting(match_fn: Callable[[Path, Path], tuple[np.ndarray, np.ndarray]], rec: pycolmap.Reconstruction
                 ) -> Callable[[Path, Path], tuple[np.ndarray, np.ndarray]]:
    """``match_fn`` with its keypoints undistorted by the pseudo ground truth's cameras, so that
    ``intrinsics`` applies to them."""
    cameras = {im.name: rec.cameras[im.camera_id] for im in rec.images.values()}

    def fn(path0: Path, path1: Path) -> tuple[np.ndarray, np.ndarray]:
        k0, k1 = match_fn(path0, path1)
        return undistort(cameras[path0.name], k0), undistort(cameras[path1.name], k1)
    return fn


def covisible(rec: pycolmap.Reconstruction) -> dict[tuple[int, int], list[int]]:
    """Ids of the 3-D points seen by both images of each pair of image ids (i < j)."""
    common: dict[tuple[int, int], list[int]] = {}
    for point_id, point in rec.points3D.items():
        ids = sorted({el.image_id for el in point.track.elements})
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                common.setdefault((ids[a], ids[b]), []).append(point_id)
    return common


def content_scale(f0: float, z0: np.ndarray, f1: float, z1: np.ndarray) -> float:
    """How many times larger one view shows the points both see than the other (>= 1).

    f0, f1: focal lengths (px); z0, z1: (N,) depths of the same N points in each camera. A point
    of size d spans f d / z pixels, so the ratio of the two views is (f0 / z0) / (f1 / z1); its
    median over the points, folded so that 2x and 1/2x read alike.
    """
    r = float(np.median((f0 / np.asarray(z0, np.float64)) / (f1 / np.asarray(z1, np.float64))))
    return max(r, 1 / r)


def pair_scale(rec: pycolmap.Reconstruction, a: int, b: int, points: list[int]) -> float:
    """:func:`content_scale` of the registered images ``a`` and ``b`` over the 3-D points ``points``."""
    X = np.array([rec.points3D[i].xyz for i in points], np.float64).reshape(-1, 3)
    f, z = [], []
    for im in (rec.images[a], rec.images[b]):
        T = world_to_camera(im)
        f.append(rec.cameras[im.camera_id].mean_focal_length())
        z.append(X @ T[2, :3] + T[2, 3])
    return content_scale(f[0], z[0], f[1], z[1])


def split_rows(results: dict[str, dict], scales: list[float], split: float) -> list[str]:
    """A table of AUC@5/10/20 per matcher on the pairs below ``split`` and at or above it."""
    near = np.asarray(scales) < split
    lines = [f"| matcher | AUC@5 / 10 / 20, pairs < {split:g}x apart ({int(near.sum())}) "
             f"| pairs >= {split:g}x apart ({int((~near).sum())}) |", "|---|---|---|"]
    for name, r in results.items():
        errors = np.asarray(r["errors"], np.float64)
        cells = [" / ".join(fmt(a) for a in pose_auc(list(errors[sel]), THRESHOLDS)) if sel.any() else "-"
                 for sel in (near, ~near)]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return lines


def write_ground_truth(rec: pycolmap.Reconstruction, images: Path, work: Path, min_covisible: int) -> list[dict]:
    """Pairs (``read_pairs_gt`` dicts, names relative to ``work``); writes ``work/NAME/poses_gt.txt``."""
    scene = work / images.name
    scene.mkdir(parents=True, exist_ok=True)
    link = scene / "images"
    if not link.exists():
        link.symlink_to(images.resolve(), target_is_directory=True)
    lines, pairs = [], []
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        K = intrinsics(rec.cameras[image.camera_id])
        q = image.cam_from_world().rotation.quat  # x, y, z, w
        t = image.cam_from_world().translation
        lines.append(" ".join([image.name, *(f"{v:.6f}" for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2], q[3], q[0],
                                                                     q[1], q[2], *t))]))
    (scene / "poses_gt.txt").write_text("\n".join(lines) + "\n")
    for (a, b), points in sorted(covisible(rec).items(), key=lambda kv: (rec.images[kv[0][0]].name,
                                                                         rec.images[kv[0][1]].name)):
        if len(points) < min_covisible:
            continue
        ia, ib = rec.images[a], rec.images[b]
        if ia.name > ib.name:
            ia, ib = ib, ia
        pairs.append({"name0": f"{images.name}/images/{ia.name}", "name1": f"{images.name}/images/{ib.name}", "rot0": 0, "rot1": 0,
                      "K0": intrinsics(rec.cameras[ia.camera_id]), "K1": intrinsics(rec.cameras[ib.camera_id]),
                      "T_0to1": world_to_camera(ib) @ np.linalg.inv(world_to_camera(ia)),
                      "scale": pair_scale(rec, a, b, points)})
    return pairs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--images", type=Path, default=DATA / "demo" / "sacre-coeur")
    ap.add_argument("--work", type=Path, default=Path("/tmp/roma-sfm-landmark"),
                    help="cache of the pseudo ground truth")
    ap.add_argument("--min-covisible", type=int, default=20, help="3-D points two images must share to be a pair")
    ap.add_argument("--ransac-px", type=float, default=0.5)
    ap.add_argument("--scale-split", type=float, default=1.5,
                    help="second table: pairs below / at or above this change of scale")
    args = ap.parse_args(argv)
    if not args.images.is_dir():
        ap.error(f"image folder not found: {args.images} (the shared evaluation data, see ../shared/data/README.md)")
    set_threads(args.threads)
    rec = build_pseudo_gt(args.images, args.work, args.threads)
    pairs = write_ground_truth(rec, args.images, args.work, args.min_covisible)[:args.limit]
    models = "/".join(sorted({cam.model.name for cam in rec.cameras.values()}))
    dist = max((abs(cam.params[i]) for cam in rec.cameras.values() for i in cam.extra_params_idxs()), default=0.0)

    lines = list(TABLE_HEADER)
    results = run_matchers(
        args, lines, lambda timed, log: evaluate(undistorting(timed, rec), pairs, args.work, args.ransac_px, args.seed, log),
        table_row)
    lines += ["", f"Relative pose on the {len(pairs)} pairs of `{args.images.name}` ({rec.num_reg_images()} photos) "
              f"that share >= {args.min_covisible} points of a COLMAP-SIFT pseudo ground truth (mean reprojection "
              f"error {rec.compute_mean_reprojection_error():.2f} px; matches undistorted by its {models} "
              f"cameras, distortion parameters up to {dist:.3f} in magnitude): essential matrix RANSAC at "
              f"{args.ransac_px:g} px, AUC in %. Dense matchers: "
              f"{args.num_samples} balanced samples. `python benchmarks/landmark.py` on {args.threads} CPU threads "
              f"({platform.processor() or platform.machine()}); s / pair = matching only.", ""]
    lines += split_rows(results, [p["scale"] for p in pairs], args.scale_split)
    lines += ["", "The same pairs split by how much the two photos differ in the scale of what they share "
              "(pseudo ground truth: focal length over depth of their common points)."]
    table = publish("landmark-table", lines, args.readme if args.write_readme else None)
    return {"table": table, "results": results}


if __name__ == "__main__":
    main()
