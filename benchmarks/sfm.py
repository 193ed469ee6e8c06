"""SfM benchmark on the Strecha scenes: our pipeline vs COLMAP's SIFT pipeline, in the same run.

For each scene of ``--data`` (``<scene>/images``, ``<scene>/poses_gt.txt``) it runs
``roma_sfm.pipelines.reconstruct.main`` with each ``--matcher`` and (unless ``--no-colmap``)
pycolmap's extract_features + match_exhaustive + incremental_mapping, then scores every model with
``roma_sfm.pipelines.evaluate.evaluate_reconstruction`` (relative-pose AUC over all image pairs,
unregistered images count as failures) and prints one markdown table per scene.

Usage:
    python benchmarks/sfm.py --scenes strecha-fountain-P11 strecha-Herz-Jesus-P8 --matcher sift
    python benchmarks/sfm.py --matcher sift roma --readme README.md   # writes between the markers
                                                                       # <!-- sfm-table --> ... <!-- /sfm-table -->
The data are EVALUATION ONLY (see ../shared/data/README.md); outputs go to ``--outputs``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pycolmap

from roma_sfm.pipelines import evaluate, export, reconstruct

sys.path.insert(0, str(Path(__file__).parent))
from _readme import write_table  # noqa: E402

SCENES = ["strecha-fountain-P11", "strecha-Herz-Jesus-P8", "strecha-entry-P10", "strecha-castle-P19",
          "strecha-Herz-Jesus-P25", "strecha-castle-P30"]
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scenes"
COLUMNS = ["method", "registered", "AUC@3", "AUC@5", "AUC@10", "pairs kept / verified", "points", "track len",
           "reproj err (px)", "time (s)"]


def run_ours(images: Path, gt: Path, out: Path, matcher: str, num_threads: int, **kwargs) -> dict:
    t0 = time.perf_counter()
    rep = reconstruct.main(images, out, matcher=matcher, gt_poses=gt, overwrite=True, progress=False,
                           num_threads=num_threads, **kwargs)
    ev = rep.get("evaluation") or evaluate.evaluate_reconstruction(None, gt)
    ver = rep.get("verification", {})
    n_pairs = rep.get("match", {}).get("pairs_matched", 0) + rep.get("match", {}).get("pairs_resumed", 0)
    kept = n_pairs - len(rep.get("tracks", {}).get("pairs_rejected", []))
    return {"method": f"ours ({matcher})", **_row(ev, rep), "time": time.perf_counter() - t0,
            "pairs": f"{kept} / {ver.get('verified', 0)} of {n_pairs}"}


def run_colmap(images: Path, gt: Path, out: Path, num_threads: int) -> dict:
    """COLMAP's SIFT pipeline with its defaults (8192 features, exhaustive matching, incremental)."""
    t0 = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    (out / "models").mkdir(parents=True)
    db = out / "database.db"
    ext = pycolmap.FeatureExtractionOptions()
    ext.num_threads = num_threads
    pycolmap.extract_features(db, images, camera_mode=pycolmap.CameraMode.AUTO, extraction_options=ext,
                              device=pycolmap.Device.cpu)
    mopt = pycolmap.FeatureMatchingOptions()
    mopt.num_threads = num_threads
    pycolmap.match_exhaustive(db, matching_options=mopt, device=pycolmap.Device.cpu)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.min_model_size = 3
    opts.num_threads = num_threads
    opts.random_seed = 0
    models = pycolmap.incremental_mapping(db, images, out / "models", opts)
    with pycolmap.Database.open(db) as d:
        n_img, n_verified = d.num_images(), d.num_verified_image_pairs()
    pairs = f"- / {n_verified} of {n_img * (n_img - 1) // 2}"
    rec = max(models.values(), key=lambda r: r.num_reg_images()) if models else None
    ev = evaluate.evaluate_reconstruction(rec, gt)
    return {"method": "COLMAP SIFT", **_row(ev, export.model_stats(rec)), "time": time.perf_counter() - t0,
            "pairs": pairs}


def _row(ev: dict, stats: dict) -> dict:
    return {"registered": f"{ev['registered']}/{ev['images']}", "auc@3": ev["auc@3"], "auc@5": ev["auc@5"],
            "auc@10": ev["auc@10"], "points": stats.get("points", 0),
            "track_len": stats.get("mean_track_length", 0.0), "reproj": stats.get("mean_reprojection_error")}


def table(scene: str, rows: list[dict]) -> str:
    lines = [f"**{scene}**", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        reproj = f"{r['reproj']:.2f}" if r["reproj"] is not None else "-"
        lines.append(f"| {r['method']} | {r['registered']} | {r['auc@3']:.1f} | {r['auc@5']:.1f} | {r['auc@10']:.1f} "
                     f"| {r.get('pairs', '-')} | {r['points']} | {r['track_len']:.2f} | {reproj} | {r['time']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="SfM benchmark: ours vs COLMAP SIFT on Strecha scenes")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--scenes", nargs="+", default=SCENES)
    parser.add_argument("--matcher", nargs="+", default=["sift"], help="sift | roma | preset | checkpoint")
    parser.add_argument("--no-colmap", action="store_true")
    parser.add_argument("--outputs", type=Path, default=Path("/tmp/roma-sfm-bench"))
    parser.add_argument("--num-threads", type=int, default=1, help="keep it low on shared machines")
    parser.add_argument("--pairs", default="auto")
    parser.add_argument("--readme", type=Path, default=None, help="write the tables into this README")
    parser.add_argument("--json", type=Path, default=None, help="also dump the rows as JSON")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder {args.data} not found: nothing to benchmark", file=sys.stderr)
        return 1
    pycolmap.logging.minloglevel = 2
    texts, all_rows = [], {}
    for scene in args.scenes:
        images, gt = args.data / scene / "images", args.data / scene / "poses_gt.txt"
        if not images.is_dir() or not gt.is_file():
            print(f"skipping {scene}: no images/ or poses_gt.txt", file=sys.stderr)
            continue
        rows = [run_ours(images, gt, args.outputs / f"ours-{Path(m).name}" / scene, m, args.num_threads, pairs=args.pairs)
                for m in args.matcher]
        if not args.no_colmap:
            rows.append(run_colmap(images, gt, args.outputs / "colmap" / scene, args.num_threads))
        text = table(scene, rows)
        print(text, flush=True)
        texts.append(text)
        all_rows[scene] = rows
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=2))
    if args.readme and texts:
        note = (f"Measured with `python benchmarks/sfm.py --matcher {' '.join(args.matcher)} --num-threads "
                f"{args.num_threads}`: time is wall seconds end to end (pairs, matching, tracks, mapping) on "
                f"{args.num_threads} thread(s) of this 2-core machine.")
        write_table("sfm-table", "\n".join(texts) + "\n" + note, args.readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
