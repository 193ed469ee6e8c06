"""Recall of the pairs step's retrieval against ground-truth covisible pairs (Strecha scenes).

The pairs step decides which image pairs are matched at all: a pair it leaves out is lost for good,
whatever the matcher. ``--mode retrieval`` (and ``auto`` above 30 images) keeps the top-k images
per image by a VLAD global descriptor (``roma_sfm.pipelines.pairs``). This script measures which
share of the pairs that really see the same scene part it keeps.

Ground truth (covisibility as in hloc): COLMAP SIFT features of every image (``pycolmap``,
``--max-features``), exhaustive matching verified with the ground-truth intrinsics, and
``pycolmap.triangulate_points`` into a model that holds the ground-truth cameras and poses
(``poses_gt.txt``; K there has pixel centres at integers, COLMAP's at +0.5), kept fixed. Two images
form a GT pair when at least ``--min-points`` triangulated 3D points are seen by both; a second,
stricter count uses ``--strict-points``.

Reported, in one table per GT definition: per scene the images, the GT pairs (of all pairs), and
for retrieval top-k (k = 5, 10, and 20 for scenes with more than 20 images; top-k with
k >= images - 1 is every pair) the recall, the recall of the oracle top-k and the number of pairs.
The oracle lists each image with the k images that share most points with it: about the most a
top-k list can reach (not a strict bound, as other lists may overlap less), which matters where
nearly every pair is covisible. As a reference, the same for ``sequential`` pairs
(``pairs_sequential``, default window 5 + quadratic overlap: the Strecha images are numbered along
the camera path, the most favourable case for it). A last row pools all scenes.

Retrieval is computed as ``pairs.main(images, output, mode="retrieval", num_matched=k)`` does
(``global_descriptors`` once, then ``pairs_retrieval`` per k; the test file checks the two agree).

    python benchmarks/retrieval.py [--scenes strecha-fountain-P11 ...] [--min-points 50]
                                   [--strict-points 500] [--num-threads 1] [--readme [FILE]]

The data are EVALUATION ONLY (see ../shared/data/README.md): read in place; the temporary COLMAP
database lives in a temporary folder (``--work-dir`` keeps it). Table markers: ``retrieval-table``.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from command import command_line
from readme import TARGET, write_table
from common import DATA

SCENES = ["strecha-fountain-P11", "strecha-Herz-Jesus-P8", "strecha-entry-P10", "strecha-castle-P19",
          "strecha-Herz-Jesus-P25", "strecha-castle-P30"]
TOP_K = (5, 10, 20)
MIN_IMAGES_FOR_20 = 21  # top-20 only where a scene has more than 20 images

Pair = tuple[str, str]


def _key(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


def covisibility_counts(visibility: Iterable[Iterable[str]]) -> Counter:
    """Per unordered image pair, the number of 3D points both see.

    ``visibility``: for each 3D point, the names of the images observing it (repeats ignored).
    """
    counts: Counter = Counter()
    for names in visibility:
        for a, b in combinations(sorted(set(names)), 2):
            counts[(a, b)] += 1
    return counts


def covisible_pairs(counts: Counter, min_points: int) -> set[Pair]:
    """The pairs sharing at least ``min_points`` 3D points."""
    return {p for p, n in counts.items() if n >= min_points}


def point_visibility(reconstruction) -> list[list[str]]:
    """For each 3D point of a pycolmap.Reconstruction, the names of the images of its track."""
    names = {i: im.name for i, im in reconstruction.images.items()}
    return [[names[el.image_id] for el in p.track.elements] for p in reconstruction.points3D.values()]


def colmap_camera(K: np.ndarray, width: int, height: int, camera_id: int):
    """A PINHOLE pycolmap.Camera from a K with pixel centres at integers (COLMAP's are at +0.5)."""
    import pycolmap

    cam = pycolmap.Camera(model="PINHOLE", width=int(width), height=int(height), camera_id=int(camera_id),
                          params=[K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5])
    cam.has_prior_focal_length = True  # calibrated two-view geometry in the verification
    return cam


def reference_model(images: Path, poses_gt: Path, work_dir: Path, max_features: int = 8192,
                    num_threads: int = 1):
    """SIFT + exhaustive matching into ``work_dir/database.db``, then points triangulated with the
    ground-truth cameras held fixed. Returns (pycolmap.Reconstruction, image names)."""
    import pycolmap

    from roma_sfm.pipelines.evaluate import read_poses_gt

    gt = read_poses_gt(poses_gt)
    names = sorted(n for n in gt if (images / n).is_file())
    db = work_dir / "database.db"
    db.unlink(missing_ok=True)
    ext = pycolmap.FeatureExtractionOptions()
    ext.num_threads = num_threads
    ext.sift.max_num_features = max_features
    pycolmap.extract_features(db, images, image_names=names, camera_mode=pycolmap.CameraMode.PER_IMAGE,
                              extraction_options=ext, device=pycolmap.Device.cpu)
    rec = pycolmap.Reconstruction()
    with pycolmap.Database.open(db) as d:  # the GT intrinsics replace the guessed ones before matching
        for im in d.read_all_images():
            c = d.read_camera(im.camera_id)
            cam = colmap_camera(gt[im.name].K, c.width, c.height, c.camera_id)
            d.update_camera(cam)
            rec.add_camera_with_trivial_rig(cam)
            pose = pycolmap.Rigid3d(pycolmap.Rotation3d(gt[im.name].R), gt[im.name].t)
            rec.add_image_with_trivial_frame(pycolmap.Image(name=im.name, camera_id=im.camera_id,
                                                            image_id=im.image_id), pose)
    mopt = pycolmap.FeatureMatchingOptions()
    mopt.num_threads = num_threads
    pycolmap.match_exhaustive(db, matching_options=mopt, device=pycolmap.Device.cpu)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = num_threads
    out = work_dir / "triangulated"
    out.mkdir(parents=True, exist_ok=True)
    return pycolmap.triangulate_points(rec, db, images, out, options=opts), names


def recall_hits(pred: Iterable[Pair], gt: set[Pair]) -> int:
    """How many GT pairs ``pred`` contains (order within a pair ignored)."""
    return len({_key(*p) for p in pred} & gt)


def oracle_pairs(names: Sequence[str], counts: Counter, k: int) -> list[Pair]:
    """Per image its ``k`` images sharing most 3D points (ties by name), unordered pairs deduplicated:
    the best a top-k retrieval could list, the ceiling its recall is read against (not a strict bound:
    lists of other images may overlap less)."""
    out: dict[Pair, None] = {}
    for a in names:
        others = sorted((b for b in names if b != a), key=lambda b: (-counts.get(_key(a, b), 0), b))
        for b in others[:k]:
            out.setdefault(_key(a, b))
    return list(out)


@dataclass
class SceneResult:
    scene: str
    images: int
    gt: dict[str, int]  # definition ('loose' / 'strict') -> number of GT pairs
    methods: dict[str, dict] = field(default_factory=dict)  # name -> {"pairs": n, "hits": {definition: n}}
    points: int = 0
    seconds: float = 0.0


def score_methods(names: Sequence[str], descriptors: np.ndarray, counts: Counter, gt: dict[str, set[Pair]],
                  top_k: Sequence[int] = TOP_K, min_images_for_20: int = MIN_IMAGES_FOR_20) -> dict[str, dict]:
    """Pairs and GT hits (per definition) of retrieval top-k, of the covisibility oracle top-k and of
    sequential pairs. ``descriptors``: (N, D) global descriptors, row i for names[i]."""
    from roma_sfm.pipelines import pairs as P

    methods: dict[str, list[Pair]] = {}
    for k in top_k:
        if k < 20 or len(names) >= min_images_for_20:
            methods[f"top-{k}"] = P.pairs_retrieval(names, descriptors, k)
            methods[f"oracle-{k}"] = oracle_pairs(names, counts, k)
    methods["sequential"] = P.pairs_sequential(names)
    return {m: {"pairs": len(p), "hits": {d: recall_hits(p, g) for d, g in gt.items()}} for m, p in methods.items()}


def evaluate_scene(scene_dir: Path, min_points: int, strict_points: int, max_features: int, num_threads: int,
                   work_dir: Path) -> SceneResult:
    from roma_sfm.pipelines import pairs as P

    t0 = time.perf_counter()
    images = scene_dir / "images"
    rec, names = reference_model(images, scene_dir / "poses_gt.txt", work_dir, max_features, num_threads)
    counts = covisibility_counts(point_visibility(rec))
    gt = {"loose": covisible_pairs(counts, min_points), "strict": covisible_pairs(counts, strict_points)}
    desc = P.global_descriptors([images / n for n in names])
    res = SceneResult(scene_dir.name, len(names), {d: len(g) for d, g in gt.items()},
                      score_methods(names, desc, counts, gt), rec.num_points3D())
    res.seconds = time.perf_counter() - t0
    return res


def pooled(results: Sequence[SceneResult]) -> SceneResult:
    """One row over all scenes: GT pairs, pairs and hits summed (a method missing in a scene: not pooled)."""
    common = [m for m in results[0].methods if all(m in r.methods for r in results)]
    defs = list(results[0].gt)
    out = SceneResult("all", sum(r.images for r in results), {d: sum(r.gt[d] for r in results) for d in defs},
                      points=sum(r.points for r in results), seconds=sum(r.seconds for r in results))
    for m in common:
        out.methods[m] = {"pairs": sum(r.methods[m]["pairs"] for r in results),
                          "hits": {d: sum(r.methods[m]["hits"][d] for r in results) for d in defs}}
    return out


def _pct(hits: int, gt: int) -> str:
    return f"{100 * hits / gt:.0f} %" if gt else "-"


def _cell(r: SceneResult, method: str, definition: str) -> str:
    """'recall (oracle recall), pairs' for retrieval, 'recall, pairs' for the others."""
    if method not in r.methods:
        return "-"
    m, gt = r.methods[method], r.gt[definition]
    text = _pct(m["hits"][definition], gt)
    oracle = r.methods.get(method.replace("top-", "oracle-")) if method.startswith("top-") else None
    if oracle is not None:
        text += f" (oracle {_pct(oracle['hits'][definition], gt)})"
    return f"{text}, {m['pairs']}"


def table_lines(results: Sequence[SceneResult], definition: str, title: str) -> list[str]:
    methods = [f"top-{k}" for k in TOP_K] + ["sequential"]
    head = [title, "images", "GT pairs (of all)", *(f"retrieval {m}" for m in methods[:-1]), "sequential"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in list(results) + ([pooled(results)] if len(results) > 1 else []):
        n_all = sum(x.images * (x.images - 1) // 2 for x in (results if r.scene == "all" else [r]))
        name = "**all**" if r.scene == "all" else r.scene
        lines.append(f"| {name} | {r.images} | {r.gt[definition]} of {n_all} | "
                     + " | ".join(_cell(r, m, definition) for m in methods) + " |")
    return lines


def format_table(results: Sequence[SceneResult], min_points: int, strict_points: int, max_features: int,
                 num_threads: int, command: str) -> str:
    lines = (table_lines(results, "loose", f"GT: >= {min_points} shared points") + [""]
             + table_lines(results, "strict", f"GT: >= {strict_points} shared points"))
    total = sum(r.seconds for r in results)
    lines += ["", f"Recall of the pairs step against ground-truth covisible pairs (GT = image pairs sharing at "
              f"least {min_points}, in the second table {strict_points}, triangulated points): a cell is the share "
              f"of GT pairs a method lists, then how many pairs it lists. In brackets: the recall of the oracle "
              f"top-k (for each image the k images sharing most points): about the most a top-k list can reach "
              f"(not a strict bound: other lists may overlap less). GT model: "
              f"COLMAP SIFT ({max_features} features), exhaustive matching verified with the GT intrinsics, "
              f"`pycolmap.triangulate_points` with the GT cameras and poses fixed. Retrieval = `roma-sfm pairs "
              f"--mode retrieval --num-matched k` (VLAD over RootSIFT, vocabulary from the scene itself); top-k "
              f"with k >= images - 1 lists every pair; top-20 only for scenes with more than 20 images (not "
              f"pooled). Sequential = `--mode sequential` (window 5 + quadratic overlap) on the images in name "
              f"order, which follows the camera path here. `{command}` on {num_threads} thread(s) "
              f"({platform.processor() or platform.machine()}), {total:.0f} s in all."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    import cv2
    import pycolmap

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA / "scenes")
    ap.add_argument("--scenes", nargs="+", default=SCENES)
    ap.add_argument("--min-points", type=int, default=50, help="3D points two images share to be a GT pair")
    ap.add_argument("--strict-points", type=int, default=500, help="the same, for the stricter definition")
    ap.add_argument("--max-features", type=int, default=8192, help="SIFT features per image for the GT model")
    ap.add_argument("--num-threads", type=int, default=1)
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the COLMAP databases here (default: temporary)")
    ap.add_argument("--readme", type=Path, nargs="?", const=TARGET, default=None,
                    help="write the table(s) into this file (alone: docs/benchmarks.md)")
    args = ap.parse_args(argv)
    missing = [s for s in args.scenes if not (args.data / s / "poses_gt.txt").is_file()]
    if missing:
        ap.error(f"scenes not found in {args.data}: {', '.join(missing)} (the shared evaluation data, "
                 f"see ../shared/data/README.md)")
    pycolmap.logging.minloglevel = 2
    cv2.setNumThreads(max(1, args.num_threads))
    tmp = None if args.work_dir else tempfile.mkdtemp(prefix="roma-sfm-retrieval-")
    results = []
    try:
        for s in args.scenes:
            work = (args.work_dir or Path(tmp)) / s
            work.mkdir(parents=True, exist_ok=True)
            r = evaluate_scene(args.data / s, args.min_points, args.strict_points, args.max_features,
                               args.num_threads, work)
            print(f"{s}: {r.images} images, {r.points} points, GT pairs {r.gt}, "
                  f"{ {m: v['hits'] for m, v in r.methods.items()} }, {r.seconds:.0f} s", file=sys.stderr, flush=True)
            results.append(r)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    table = format_table(results, args.min_points, args.strict_points, args.max_features, args.num_threads,
                         command_line("retrieval.py", ap, args))
    print(table)
    if args.readme:
        write_table("retrieval-table", table, args.readme)
    return {"table": table, "results": results}


if __name__ == "__main__":
    main()
