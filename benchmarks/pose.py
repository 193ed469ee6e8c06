"""Two-view relative-pose benchmark: AUC@5/10/20 deg on the Strecha pairs (SuperGlue protocol).

    python benchmarks/pose.py [--matcher roma sift sift-opencv ...] [--num-samples 5000]
                              [--limit N] [--write-readme]

For each pair of ``--pairs`` (default ``../shared/data/pairs/strecha_gap3.txt``, 273 pairs,
38-field SuperGlue/LoFTR format, image paths relative to ``--scenes``): match, then essential
matrix RANSAC at 0.5 px (on coordinates normalised by the intrinsics, threshold 0.5 / mean focal)
+ cheirality (``roma_sfm.pipelines.evaluate.estimate_relative_pose``; OpenCV's USAC estimator on
the point sets where OpenCV 5.1's RANSAC asserts); pose error = max(rotation
error, angle between translation directions, sign folded); AUC of the recall curve up to 5/10/20
deg (SuperGlue's ``pose_auc``). A pair without a pose counts as a failure (infinite error). Dense
matchers are sampled (``--num-samples``, balanced sampling); sparse ones give all their matches.
Seconds per pair = matching (image reading + matching + sampling; SIFT features are cached per
image, so each image is described once). Reference for OpenCV SIFT (data README): 73.9 / 84.9 / 91.0.

The data are EVALUATION ONLY (see ../shared/data/README.md). Table markers: ``pose-table``.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from readme import publish
from common import DATA, add_common_args, fmt, run_matchers, set_threads

from roma_sfm.pipelines.evaluate import (estimate_relative_pose, pose_auc, read_pairs_gt,
                                         relative_pose_error)

THRESHOLDS = (5, 10, 20)
REFERENCE = {"sift-opencv": (73.9, 84.9, 91.0)}  # data README, OpenCV SIFT 8000 / ratio 0.8 / 0.5 px


TABLE_HEADER = ("| matcher | pairs | AUC@5 | AUC@10 | AUC@20 | failed | matches (median) | s / pair |",
                "|---|---|---|---|---|---|---|---|")


def table_row(name: str, r: dict) -> str:
    """One matcher's row of the pose table (``evaluate``'s metrics plus seconds per pair)."""
    return (f"| {name} | {r['pairs']} | {fmt(r['auc@5'])} | {fmt(r['auc@10'])} | {fmt(r['auc@20'])} "
            f"| {r['failed']} | {r['median_matches']:.0f} | {fmt(r['seconds_per_pair'], 2)} |")


def pair_pose_error(pair: dict, k0: np.ndarray, k1: np.ndarray, ransac_px: float = 0.5) -> float:
    """Pose error (deg) of one GT pair from matches in COLMAP convention (pixel centres at +0.5);
    the GT intrinsics put pixel centres at integers, hence the -0.5. inf if no pose is found."""
    k0 = np.asarray(k0, np.float64).reshape(-1, 2) - 0.5
    k1 = np.asarray(k1, np.float64).reshape(-1, 2) - 0.5
    est = estimate_relative_pose(k0, k1, pair["K0"], pair["K1"], ransac_px)
    if est is None:
        return float("inf")
    R, t, _ = est
    eR, et = relative_pose_error(pair["T_0to1"][:3, :3], pair["T_0to1"][:3, 3], R, t, fold_sign=True)
    return max(eR, et)


def evaluate(match_fn: Callable[[Path, Path], tuple[np.ndarray, np.ndarray]], pairs: Sequence[dict], scenes: Path,
             ransac_px: float = 0.5, seed: int = 0, log: Optional[Callable[[str], None]] = None) -> dict:
    """AUC over ``pairs`` (dicts of ``read_pairs_gt``) with ``match_fn(path0, path1) -> (k0, k1)``."""
    cv2.setRNGSeed(seed)
    errors, n_matches = [], []
    for i, p in enumerate(pairs):
        if p["rot0"] or p["rot1"]:
            raise ValueError(f"pair {p['name0']} {p['name1']}: rotated pairs are not supported")
        k0, k1 = match_fn(scenes / p["name0"], scenes / p["name1"])
        err = pair_pose_error(p, k0, k1, ransac_px)
        errors.append(err)
        n_matches.append(len(k0))
        if log:
            log(f"  [{i + 1}/{len(pairs)}] {p['name0']} {p['name1']}: {len(k0)} matches, error {err:.2f} deg")
    aucs = pose_auc(errors, THRESHOLDS)
    return {"pairs": len(errors), "failed": int(np.sum(~np.isfinite(errors))), "errors": errors,
            **{f"auc@{t}": a for t, a in zip(THRESHOLDS, aucs)},
            "median_matches": float(np.median(n_matches)) if n_matches else 0.0}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--pairs", type=Path, default=DATA / "pairs" / "strecha_gap3.txt")
    ap.add_argument("--scenes", type=Path, default=DATA / "scenes")
    ap.add_argument("--ransac-px", type=float, default=0.5)
    args = ap.parse_args(argv)
    if not args.pairs.is_file():
        ap.error(f"pairs file not found: {args.pairs} (the shared evaluation data, see ../shared/data/README.md)")
    set_threads(args.threads)
    pairs = read_pairs_gt(args.pairs)
    total = len(pairs)
    pairs = pairs[:args.limit]

    lines = list(TABLE_HEADER)
    results = run_matchers(
        args, lines, lambda timed, log: evaluate(timed, pairs, args.scenes, args.ransac_px, args.seed, log),
        table_row)
    ref = ", ".join(f"{k}: {' / '.join(f'{v:.1f}' for v in vals)}" for k, vals in REFERENCE.items())
    subset = f"the first {len(pairs)}" if args.limit and len(pairs) < total else f"all {len(pairs)}"
    lines += ["", f"Relative pose on {subset} pairs of `{args.pairs.name}` (Strecha, 768x512): essential matrix RANSAC "
              f"at {args.ransac_px:g} px, error = max(rotation, translation angle), AUC in %. Dense matchers: "
              f"{args.num_samples} balanced samples. Reference (data README, OpenCV SIFT 8000 / ratio 0.8) {ref}. "
              f"`python benchmarks/pose.py` on {args.threads} CPU threads "
              f"({platform.processor() or platform.machine()}); s / pair = matching only."]
    table = publish("pose-table", lines, args.readme if args.write_readme else None)
    return {"table": table, "results": results}


if __name__ == "__main__":
    main()
