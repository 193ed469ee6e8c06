"""SfM benchmark on the Strecha scenes: our pipeline vs COLMAP-SIFT and GLOMAP-SIFT, in the same run.

For each scene of ``--data`` (``<scene>/images``, ``<scene>/poses_gt.txt``) and each ``--variants``
(``original``; ``uncal`` and ``wrong-exif``, made at run time by ``uncalibrated.py`` under
``--outputs/variants``: every image cropped and rescaled, no EXIF or a wrong EXIF focal) it runs
``roma_sfm.pipelines.reconstruct.main`` with each ``--matcher`` and the ``--peers``: pycolmap's
extract_features + match_exhaustive on one SIFT database, then ``incremental_mapping`` (COLMAP-SIFT)
and ``global_mapping`` (GLOMAP-SIFT) on it, all with COLMAP's defaults. Every model is scored with
``roma_sfm.pipelines.evaluate.evaluate_reconstruction`` (relative-pose AUC over all image pairs,
unregistered images count as failures); one markdown table per scene and variant. A peer's time is
its share of the SIFT extraction + matching plus its own mapping.

``--mixed``: all ``--scenes`` in one folder (``<scene>/<image>``); no AUC, but the time and every
model each method builds, with the scenes its images come from.

Usage:
    python benchmarks/sfm.py --scenes strecha-fountain-P11 --variants uncal --matcher sift
    python benchmarks/sfm.py --matcher sift roma --readme   # writes between the markers
                                                                       # <!-- sfm-table --> ... <!-- /sfm-table -->
    python benchmarks/sfm.py --mixed --matcher sift                     # the six scenes in one folder
    python benchmarks/sfm.py --matcher sift,roma     # SIFT, and RoMa for the pairs it cannot verify
The data are EVALUATION ONLY (see ../shared/data/README.md); outputs go to ``--outputs``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import pycolmap

from roma_sfm.pipelines import evaluate, export, reconstruct
from roma_sfm.pipelines.mapping import rank_models

from common import with_resolution
from readme import TARGET, write_table
from uncalibrated import DEFAULT_VARIANTS, VARIANTS, make_variant

SCENES = ["strecha-fountain-P11", "strecha-Herz-Jesus-P8", "strecha-entry-P10", "strecha-castle-P19",
          "strecha-Herz-Jesus-P25", "strecha-castle-P30"]
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scenes"
PEERS = {"colmap": ("COLMAP SIFT", "IncrementalPipelineOptions", "incremental_mapping"),
         "glomap": ("GLOMAP SIFT", "GlobalPipelineOptions", "global_mapping")}
COLUMNS = ["method", "registered", "AUC@3", "AUC@5", "AUC@10", "pairs kept / verified", "points", "track len",
           "reproj err (px)", "time (s)"]


def run_ours(images: Path, gt: Optional[Path], out: Path, matcher: str, num_threads: int, **kwargs) -> dict:
    """Our pipeline on ``images`` (scored against ``gt`` unless None); ``models``: every model's images."""
    t0 = time.perf_counter()
    first, _, fallback = matcher.partition(",")  # 'sift,roma': SIFT, then RoMa on the pairs it cannot verify
    rep = reconstruct.main(images, out, matcher=with_resolution(first), gt_poses=gt, overwrite=True,
                           progress=False, num_threads=num_threads,
                           fallback=with_resolution(fallback) if fallback else None, **kwargs)
    ev = rep.get("evaluation") or (evaluate.evaluate_reconstruction(None, gt) if gt is not None else None)
    ver = rep.get("verification", {})
    n_pairs = rep.get("match", {}).get("pairs_matched", 0) + rep.get("match", {}).get("pairs_resumed", 0)
    kept = n_pairs - len(rep.get("tracks", {}).get("pairs_rejected", []))
    return {"method": f"ours ({matcher})", **_row(ev, rep), "time": time.perf_counter() - t0,
            "pairs": f"{kept} / {ver.get('verified', 0)} of {n_pairs}", "steps": rep.get("times", {}),
            "models": [m["registered"] for m in rep.get("models", [])],
            "fallback": {k: v for k, v in rep.get("fallback", {}).items() if k != "dropped"}}


def sift_database(images: Path, db: Path, num_threads: int,
                  camera_mode: pycolmap.CameraMode = pycolmap.CameraMode.AUTO) -> None:
    """COLMAP's SIFT extraction and exhaustive matching of ``images`` into ``db``, with its defaults."""
    ext = pycolmap.FeatureExtractionOptions()
    ext.num_threads = num_threads
    pycolmap.extract_features(db, images, camera_mode=camera_mode, extraction_options=ext, device=pycolmap.Device.cpu)
    mopt = pycolmap.FeatureMatchingOptions()
    mopt.num_threads = num_threads
    pycolmap.match_exhaustive(db, matching_options=mopt, device=pycolmap.Device.cpu)


def run_peers(images: Path, gt: Optional[Path], out: Path, num_threads: int, peers=("colmap", "glomap")
              ) -> list[dict]:
    """COLMAP's SIFT extraction + exhaustive matching once (defaults: 8192 features), then each peer's
    mapper on that database (``PEERS``). Rows as ``run_ours``; ``models``: every model, largest first."""
    t0 = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    db = out / "database.db"
    sift_database(images, db, num_threads)
    t_features = time.perf_counter() - t0
    with pycolmap.Database.open(db) as d:
        n_img, n_verified = d.num_images(), d.num_verified_image_pairs()
    pairs = f"- / {n_verified} of {n_img * (n_img - 1) // 2}"
    rows = []
    for peer in peers:
        label, options_cls, entry = PEERS[peer]
        t1 = time.perf_counter()
        opts = getattr(pycolmap, options_cls)()
        opts.min_model_size = 3
        opts.num_threads = num_threads
        opts.random_seed = 0
        (out / peer).mkdir()
        models = rank_models(getattr(pycolmap, entry)(db, images, out / peer, opts).values())
        rec = models[0] if models else None
        ev = evaluate.evaluate_reconstruction(rec, gt) if gt is not None else None
        rows.append({"method": label, **_row(ev, export.model_stats(rec)), "pairs": pairs,
                     "time": t_features + time.perf_counter() - t1, "time_features": t_features,
                     "models": [export.model_stats(r)["registered"] for r in models]})
    return rows


def _row(ev: Optional[dict], stats: dict) -> dict:
    ev = ev or {"registered": stats.get("images_registered", 0), "images": "-", "auc@3": float("nan"),
                "auc@5": float("nan"), "auc@10": float("nan")}
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


def mixed_table(rows: list[dict]) -> str:
    """Every model of each method on the mixed folder: its images by scene."""
    lines = ["**all scenes in one folder**", "", "| method | models: images (by scene) | registered | time (s) |",
             "|---|---|---|---|"]
    for r in rows:
        parts = []
        for names in r["models"]:
            by_scene = Counter(Path(n).parts[0] for n in names)
            parts.append(f"{len(names)} (" + ", ".join(f"{k} {v}" for k, v in sorted(by_scene.items())) + ")")
        lines.append(f"| {r['method']} | {'; '.join(parts) or '-'} | {sum(len(m) for m in r['models'])} "
                     f"| {r['time']:.0f} |")
    return "\n".join(lines) + "\n"


def row_name(scene: str, variant: str) -> str:
    """The key of a scene/variant in the rows (and the --json dump): the scene, or scene-variant."""
    return scene if variant == "original" else f"{scene}-{variant}"


def title(name: str) -> str:
    """A row key as a table title: 'scene (variant)' for the variants."""
    for variant in sorted(VARIANTS, key=len, reverse=True):  # "uncal-offcentre" before "uncal"
        if name.endswith(f"-{variant}"):
            return f"{name[:-len(variant) - 1]} ({variant})"
    return name


def peer_rows(rows: list[dict]) -> tuple[Optional[dict], Optional[dict]]:
    """The better peer's row (highest AUC@3) and COLMAP-SIFT's among a run's ``rows`` (None if absent)."""
    peers = [r for r in rows if not r["method"].startswith("ours")]
    best = max(peers, key=lambda r: r["auc@3"]) if peers else None
    return best, next((r for r in peers if r["method"].startswith("COLMAP")), None)


def summary_table(all_rows: dict[str, list[dict]]) -> str:
    """One line per scene/variant and our method: AUC@3 against the better peer, all registered?,
    and the time against COLMAP-SIFT's (the issue's targets). Empty when no row has peers."""
    lines = ["**ours against the better peer**", "",
             "| scene | method | registered | AUC@3 | better peer | AUC@3 | margin | time / COLMAP's |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rows in all_rows.items():
        best, colmap = peer_rows(rows)
        if name == "mixed" or best is None:
            continue
        for r in rows:
            if r["method"].startswith("ours"):
                ratio = f"{r['time'] / colmap['time']:.1f}x" if colmap else "-"
                lines.append(f"| {title(name)} | {r['method']} | {r['registered']} | {r['auc@3']:.1f} | {best['method']} "
                             f"| {best['auc@3']:.1f} | {r['auc@3'] - best['auc@3']:+.1f} | {ratio} |")
    return "\n".join(lines) + "\n" if len(lines) > 4 else ""


def columns_table(columns: dict[str, dict[str, list[dict]]]) -> str:
    """Our methods side by side, one column pair per label: AUC@3 and time over COLMAP-SIFT's, then
    the better peer **of that column's own run** (peers move between runs). Bold: at or above it
    with every image registered. Rows: the union of the columns' scene/variant names."""
    names = list(dict.fromkeys(n for rows in columns.values() for n in rows if n != "mixed"))
    head = "".join(f" ours ({label}) | its better peer |" for label in columns)
    lines = ["| scene | variant |" + head, "|---|---|" + "---|---|" * len(columns)]
    for name in names:
        scene, _, variant = title(name).partition(" (")
        cells = []
        for rows in columns.values():
            ours = next((r for r in rows.get(name, []) if r["method"].startswith("ours")), None)
            best, colmap = peer_rows(rows.get(name, []))
            if ours is None or best is None:
                cells += ["-", "-"]
                continue
            done, total = ours["registered"].split("/")
            above = done == total and round(ours["auc@3"], 1) >= round(best["auc@3"], 1)
            auc = f"**{ours['auc@3']:.1f}**" if above else f"{ours['auc@3']:.1f}"
            if done != total:
                auc += f" ({ours['registered']})"
            ratio = f", {ours['time'] / colmap['time']:.1f}x" if colmap else ""
            cells += [auc + ratio, f"{best['auc@3']:.1f} ({best['method'].split()[0]})"]
        lines.append(f"| {scene} | {variant.rstrip(')') or 'original'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def link_mixed(data: Path, scenes: list[str], out: Path) -> Path:
    """``out/images/<scene>/<image>``: symbolic links to the images of every scene; returns the folder."""
    images = out / "images"
    shutil.rmtree(images, ignore_errors=True)
    for scene in scenes:
        (images / scene).mkdir(parents=True)
        for p in sorted((data / scene / "images").iterdir()):
            os.symlink(p.resolve(), images / scene / p.name)
    return images


def scene_folders(data: Path, scene: str, variants: list[str], out: Path, seed: int) -> dict[str, Path]:
    """{variant: folder with images/ and poses_gt.txt}; the uncalibrated ones are made now."""
    folders = {}
    for v in variants:
        folders[v] = data / scene if v == "original" else make_variant(data / scene, out / "variants", v, seed)
    return folders


def run(args) -> tuple[dict[str, list[dict]], list[str]]:
    """Run ours (and the peers) on every scene/variant of ``args`` (or the mixed folder): the rows by
    name, and each one's table (printed as it is made)."""
    peers = [] if args.no_colmap else args.peers
    pycolmap.logging.minloglevel = 2
    texts, all_rows = [], {}
    if args.mixed:
        images = link_mixed(args.data, args.scenes, args.outputs / "mixed")
        rows = [run_ours(images, None, args.outputs / "mixed" / f"ours-{Path(m).name}", m, args.num_threads,
                         pairs=args.pairs) for m in args.matcher]
        if peers:
            rows += run_peers(images, None, args.outputs / "mixed" / "peers", args.num_threads, peers)
        texts.append(mixed_table(rows))
        print(texts[-1], flush=True)
        all_rows["mixed"] = rows
    for scene in [] if args.mixed else args.scenes:
        if not (args.data / scene / "images").is_dir() or not (args.data / scene / "poses_gt.txt").is_file():
            print(f"skipping {scene}: no images/ or poses_gt.txt", file=sys.stderr)
            continue
        for variant, folder in scene_folders(args.data, scene, args.variants, args.outputs, args.seed).items():
            images, gt = folder / "images", folder / "poses_gt.txt"
            name = row_name(scene, variant)
            rows = [run_ours(images, gt, args.outputs / f"ours-{Path(m).name}" / name, m, args.num_threads,
                             pairs=args.pairs) for m in args.matcher]
            if peers:
                rows += run_peers(images, gt, args.outputs / "peers" / name, args.num_threads, peers)
            texts.append(table(title(name), rows))
            print(texts[-1], flush=True)
            all_rows[name] = rows
    return all_rows, texts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="SfM benchmark: ours vs COLMAP-SIFT and GLOMAP-SIFT on Strecha")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--scenes", nargs="+", default=SCENES)
    parser.add_argument("--variants", nargs="+", default=["original", *DEFAULT_VARIANTS],
                        choices=["original", *VARIANTS], help="original images, and uncalibrated.py's variants")
    parser.add_argument("--matcher", nargs="+", default=["sift"],
                        help="sift | roma | preset | checkpoint; RoMa may end in @RES and ~ZOOM, e.g. roma@448:none~0; "
                             "A,B: A with B as the fallback (sift,roma)")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS),
                        help="SIFT pipelines run on one pycolmap database (none: only ours)")
    parser.add_argument("--no-colmap", action="store_true", help="no peers (same as --peers with no value)")
    parser.add_argument("--mixed", action="store_true", help="all --scenes in one folder instead, one run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the uncalibrated variants")
    parser.add_argument("--outputs", type=Path, default=Path("/tmp/roma-sfm-bench"))
    parser.add_argument("--num-threads", type=int, default=1, help="keep it low on shared machines")
    parser.add_argument("--pairs", default="auto")
    parser.add_argument("--readme", type=Path, nargs="?", const=TARGET, default=None,
                    help="write the table(s) into this file (alone: docs/benchmarks.md)")
    parser.add_argument("--json", type=Path, default=None, help="also dump the rows as JSON")
    parser.add_argument("--table", default="sfm-table", help="the markers in --readme to write between")
    parser.add_argument("--from-json", type=Path, nargs="+", default=None,
                        help="run nothing: tables from these --json dumps (later files replace rows of earlier ones)")
    parser.add_argument("--column", nargs="+", action="append", default=None, metavar=("LABEL", "JSON"),
                        help="run nothing: one column of a side-by-side table, from these --json dumps (repeatable)")
    args = parser.parse_args(argv)
    if args.column:
        columns = {}
        for label, *paths in args.column:
            columns[label] = {}
            for path in paths:
                columns[label].update(json.loads(Path(path).read_text()))
        text = columns_table(columns)
        print(text, flush=True)
        if args.readme:
            runs = " ".join(f"--column {shlex.join([label, *(Path(p).name for p in paths)])}"
                            for label, *paths in args.column)
            write_table(args.table, text + f"\nTable from `python benchmarks/sfm.py {runs}`.", args.readme)
        return 0
    if args.from_json:
        all_rows = {}
        for path in args.from_json:
            all_rows.update(json.loads(path.read_text()))
        texts = [mixed_table(rows) if name == "mixed" else table(title(name), rows) for name, rows in all_rows.items()]
        print("\n".join(texts), flush=True)
        note = (f"Tables from `python benchmarks/sfm.py --from-json {' '.join(p.name for p in args.from_json)}`, "
                "dumps of runs with `--json`: time is wall seconds end to end (pairs, matching, tracks, mapping).")
    else:
        if not args.data.is_dir():
            print(f"data folder {args.data} not found: nothing to benchmark", file=sys.stderr)
            return 1
        all_rows, texts = run(args)
        note = (f"Measured with `python benchmarks/sfm.py --matcher {' '.join(args.matcher)} --variants "
                f"{' '.join(args.variants)} --num-threads {args.num_threads}`: time is wall seconds end to end "
                f"(pairs, matching, tracks, mapping) on {args.num_threads} thread(s) of this 2-core machine.")
        if args.json:
            args.json.write_text(json.dumps(all_rows, indent=2))
    summary = summary_table(all_rows)
    if summary:
        texts.insert(0, summary)
        print(summary, flush=True)
    if args.readme and texts:
        write_table(args.table, "\n".join(texts) + "\n" + note, args.readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
