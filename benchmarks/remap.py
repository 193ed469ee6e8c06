"""Tracks + mapping again on the matches of earlier ``benchmarks/sfm.py`` runs, over mapper seeds.

Why: a change to the tracks or mapping step must be judged on the same matches, and one mapping of
an uncalibrated variant is a lottery (the mapper's seed alone moves AUC@3 by tens of points), so
every option set is mapped with several seeds and the runs are compared pair-wise. Matching is not
repeated, so a comparison costs tens of seconds a run instead of minutes. Tracks and mapping take the
pipeline's settings for the matches' kind (cell size, pair gate, RANSAC thresholds, principal points),
except that a dense run's shared cameras keep centred principal points (their SIFT pass is not redone).

For each ``<outputs>/<matcher dir>/<run>/matches.h5`` (the layout ``benchmarks/sfm.py --outputs``
writes; the images and ground truth come from ``<outputs>/variants/<run>`` or ``--data/<run>``) and
each ``--option`` (a label and a JSON dict of ``tracks.main`` keyword arguments, and under
``"mapping"`` those of ``mapping.main``), it reports the
median epipolar error of the index matches under the ground-truth cameras (Sampson distance, px)
and AUC@3 deg, the mean and spread over ``--seeds``.

Usage:
    python benchmarks/sfm.py --matcher roma --no-colmap --variants original uncal --outputs /tmp/sfm
    python benchmarks/remap.py /tmp/sfm --option 'before={"affine_cell": 0}' --option 'after={}'
The data are EVALUATION ONLY (see ../shared/data/README.md).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from roma_sfm.pipelines import evaluate, mapping, principal_points, tracks
from roma_sfm.pipelines.h5io import matches_kind, read_features, read_index_matches

from readme import publish
from sfm import DEFAULT_DATA


def locate(run: Path, data: Path) -> tuple[Path, Path]:
    """(images, poses_gt.txt) of a benchmark run folder."""
    variant = run.parents[1] / "variants" / run.name
    scene = variant if variant.is_dir() else data / run.name
    return scene / "images", scene / "poses_gt.txt"


def gt_fundamental(c0: evaluate.GTCamera, c1: evaluate.GTCamera) -> np.ndarray:
    """F (x1^T F x0 = 0) in COLMAP pixels (centres at +0.5) from ground-truth cameras."""
    R = c1.R @ c0.R.T
    t = c1.t - R @ c0.t
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    shift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])  # COLMAP pixels -> the GT's
    return shift.T @ np.linalg.inv(c1.K).T @ tx @ R @ np.linalg.inv(c0.K) @ shift


def epipolar_median(features: Path, matches_idx: Path, gt: dict[str, evaluate.GTCamera]) -> float:
    kps, errs = read_features(features), []
    for (a, b), idx in read_index_matches(matches_idx).items():
        if len(idx):
            F = gt_fundamental(gt[Path(a).name], gt[Path(b).name])
            errs.append(np.sqrt(mapping.sampson_errors(F, kps[a][idx[:, 0]].astype(np.float64),
                                                       kps[b][idx[:, 1]].astype(np.float64))))
    return float(np.median(np.concatenate(errs))) if errs else float("nan")


def tracks_kwargs(kind: str, options: dict) -> dict:
    """``tracks.main`` keyword arguments: the pipeline's cell size and pair gate for the matches'
    kind (sparse and dense differ), then the option's own."""
    cell_size, min_pair_score = tracks.settings(kind)
    return {"cell_size": cell_size, "min_pair_score": min_pair_score, **options}


def refined_principal_points(kind: str) -> int:
    """``principal_point_min_images`` of ``mapping.main`` as reconstruct sets it for the matches' kind:
    sparse runs refine the principal points of cameras shared by enough images in a final bundle
    adjustment; dense runs' "sift" mode needs a SIFT pass that remapping leaves out (0: centred)."""
    refine = principal_points.mode_for(kind) == "refine"
    return principal_points.DEFAULTS["min_images"] if refine else 0


def remap(run: Path, images: Path, poses_gt: Path, options: dict, seed: int, num_threads: int) -> tuple[float, float]:
    """(epipolar median px, AUC@3) of one option set and mapper seed on a run's matches."""
    kind = matches_kind(run / "matches.h5")
    options = dict(options)
    map_options = {"options": mapping.mapper_options[kind], "num_threads": num_threads, "seed": seed,
                   "principal_point_min_images": refined_principal_points(kind),
                   **mapping.verification_options[kind], **options.pop("mapping", {})}
    work = Path(tempfile.mkdtemp(prefix="remap-"))
    try:
        tracks.main(run / "matches.h5", work / "features.h5", work / "matches_idx.h5", **tracks_kwargs(kind, options))
        epi = epipolar_median(work / "features.h5", work / "matches_idx.h5", evaluate.read_poses_gt(poses_gt))
        res = mapping.main(work / "sfm", images, work / "features.h5", work / "matches_idx.h5", **map_options)
        return epi, evaluate.evaluate_reconstruction(res.reconstruction, poses_gt)["auc@3"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outputs", type=Path, nargs="+", help="--outputs folders of benchmarks/sfm.py")
    ap.add_argument("--matcher-dir", default="ours-roma", help="the runs' folder under each output")
    ap.add_argument("--option", action="append", required=True, help="LABEL=JSON of tracks.main kwargs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--num-threads", type=int, default=2)
    ap.add_argument("--readme", type=Path, nargs="?", const=Path("docs/benchmarks.md"))
    ap.add_argument("--marker", default="remap-table", help="the table's marker in --readme")
    args = ap.parse_args()
    options = dict((label, json.loads(text)) for label, text in (o.split("=", 1) for o in args.option))
    runs = sorted(r.parent for out in args.outputs for r in (out / args.matcher_dir).glob("*/matches.h5"))
    lines = ["| run | " + " | ".join(f"{k}: epipolar median (px) | {k}: AUC@3 mean ± std" for k in options) + " |",
             "|---|" + "---|---|" * len(options)]
    aucs = {k: [] for k in options}
    for run in runs:
        images, poses_gt = locate(run, args.data)
        cells = []
        for label, opts in options.items():
            res = [remap(run, images, poses_gt, opts, s, args.num_threads) for s in args.seeds]
            a = np.array([r[1] for r in res])
            aucs[label].append(a.mean())
            cells += [f"{res[0][0]:.3f}", f"{a.mean():.1f} ± {a.std():.1f}"]
        lines.append(f"| {run.parents[1].name}/{run.name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    means = {k: np.array(v) for k, v in aucs.items()}
    lines.append("| mean | " + " | ".join(f"| {v.mean():.2f}" for v in means.values()) + " |")
    first = next(iter(means))
    rng = np.random.default_rng(0)
    for label, v in means.items():
        if label != first and len(v):
            d = v - means[first]
            boot = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(10000)]
            lines.append(f"\n{label} - {first}: {d.mean():+.2f} AUC@3 (paired bootstrap 95 %: "
                         f"{np.percentile(boot, 2.5):+.1f} to {np.percentile(boot, 97.5):+.1f}), better on "
                         f"{int((d > 0).sum())} of {len(d)} runs; mapper seeds {' '.join(map(str, args.seeds))}.")
    publish(args.marker, lines, args.readme)


if __name__ == "__main__":
    main()
