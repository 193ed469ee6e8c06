"""The roma-sfm command line: a thin Typer app over roma_sfm and roma_sfm.pipelines.

Commands: ``reconstruct`` (all steps), the steps alone (``pairs``, ``match``, ``map``, ``export``),
``eval``, ``viz`` (one pair's matches, warp and certainty), ``models`` and ``train``. Every step
reads and writes files, so each can be re-run alone.
Exit codes: 0 success, 1 the run failed (message printed), 2 usage error.
"""
from __future__ import annotations

import json
import math
import re
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
import typer.exceptions
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from roma_sfm.pipelines import evaluate, export, fallback as fallback_, mapping, match, matchers, pairs as pairs_
from roma_sfm.pipelines import reconstruct as reconstruct_
from roma_sfm.pipelines.utils import jsonable

DEFAULTS = reconstruct_.ReconstructConfig()  # every option's default comes from the steps' confs

app = typer.Typer(help="Dense RoMa matching and structure-from-motion with pycolmap.", no_args_is_help=True,
                  add_completion=False)
console = Console()

class Mapper(str, Enum):
    incremental = "incremental"
    global_ = "global"


class Calibrate(str, Enum):
    compare = "compare"
    always = "always"
    never = "never"


class PrincipalPoint(str, Enum):
    centre = "centre"
    refine = "refine"
    sift = "sift"


class CameraMode(str, Enum):
    auto = "auto"
    single = "single"
    per_folder = "per_folder"
    per_image = "per_image"


def _version(value: bool):
    if value:
        from roma_sfm import __version__

        console.print(f"roma-sfm {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")):
    """Dense RoMa matching and structure-from-motion with pycolmap."""


@app.command()
def models():
    """List the model presets and whether their weights are available here."""
    from roma_sfm.presets import DEFAULT_PRESET, PRESETS
    from roma_sfm.weights import weights_status

    table = Table(title="roma-sfm models")
    for col in ("preset", "default", "coarse encoder", "resolution", "weights available", "where"):
        table.add_column(col)
    for row in weights_status():
        cfg = PRESETS[row["preset"]]
        res = f"{cfg.coarse_res[0]}x{cfg.coarse_res[1]}" + (f" + {cfg.upsample_res[0]}" if cfg.upsample_res else "")
        table.add_row(row["preset"], "yes" if row["preset"] == DEFAULT_PRESET else "", cfg.coarse_encoder, res,
                      "[green]yes[/]" if row["available"] else "[red]no[/]", row["weights"])
    console.print(table)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                "help_option_names": []})
def train(ctx: typer.Context):
    """Train a matcher (all options of `python -m roma_sfm.train.trainer`; `roma-sfm train --help`).

    Checkpoints every N steps and on Ctrl-C; the same command again resumes exactly.
    """
    from roma_sfm.lock import OutputLocked
    from roma_sfm.train.trainer import main as train_main

    try:
        code = train_main(list(ctx.args))
    except (OutputLocked, ValueError) as e:  # another training writes into --out-dir; no training photos given
        _fail(str(e))
    raise typer.Exit(code or 0)


# ------------------------------------------------------------------------------------------------
# shared helpers (argument handling and printing only; the work is done by roma_sfm.pipelines)
# ------------------------------------------------------------------------------------------------
def default_output(images: Path) -> Path:
    """``./outputs/<scene>``: <scene> is the images folder's name, or its parent's if it is called
    ``images`` (``sample_scenes/corner/images`` -> ``outputs/corner``)."""
    images = Path(images).resolve()
    name = images.parent.name if images.name.lower() == "images" and images.parent.name else images.name
    return Path("outputs") / (name or "scene")


def _fail(message: str, code: int = 1):
    console.print(f"[bold red]error:[/] {escape(str(message))}")
    raise typer.Exit(code)


@contextmanager
def _guard(verbose: bool):
    """Around pipeline calls: an unexpected exception becomes a message and exit code 1 (with
    --verbose the traceback is shown instead)."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.exceptions.TyperException):  # usage errors, exits
        raise
    except Exception as e:
        from roma_sfm.lock import OutputLocked

        if isinstance(e, OutputLocked):  # another run writes the output: its message says all
            _fail(str(e))
        if verbose:
            raise
        _fail(f"{type(e).__name__}: {e}")


def _resolve_matcher(spec: Optional[str], resolution: Optional[str], device: str,
                     zoom: Optional[float] = None, precision: Optional[str] = None,
                     photometric: Optional[bool] = None) -> Any:
    """The --matcher value for the pipeline (``matchers.resolve``), its notes printed."""
    try:
        resolved = matchers.resolve(spec, resolution, device, zoom, precision, photometric)
    except matchers.MatcherSpecError as e:
        raise typer.BadParameter(str(e), param_hint=e.option) from None
    for note in resolved.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    return resolved.matcher


def _check_pairs(value: str, option: str = "--pairs") -> str:
    try:
        return pairs_.check_mode(value)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=option) from None


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"
    return str(v)


def _kv_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    for k, v in rows:
        table.add_row(escape(k), escape(v))
    return table


def _verified(verified: int, pairs: int, mean_inliers: float, rotation_outliers: int) -> str:
    text = f"{verified} of {pairs} ({mean_inliers:.0f} inliers/pair)"
    return text + (f"; {rotation_outliers} more left out by the view-graph check" if rotation_outliers else "")


FOCAL_ROWS = 8  # cameras listed in the summary; report.json has them all


def _focal_rows(cameras: list[dict]) -> list[tuple[str, str]]:
    """One summary row per camera: estimated focal length against its prior (EXIF or default guess)."""
    rows = []
    multi = len({c.get("model_index", 0) for c in cameras}) > 1
    for c in cameras[:FOCAL_ROWS]:
        who = c["images"][0] if len(c["images"]) == 1 else f"{len(c['images'])} images"
        where = f"model {c['model_index']}, " if multi else ""
        prior = (f" / {c['prior_focal']:.0f} {c['prior']} ({c['ratio']:.2f}x)" if c.get("prior_focal") else "")
        size = f"{c['size'][0]}x{c['size'][1]}"
        dx, dy = c.get("principal_point_offset") or (0.0, 0.0)
        centre = f"; principal point {dx:+.1f}, {dy:+.1f} from the centre" if max(abs(dx), abs(dy)) >= 0.05 else ""
        rows.append((f"  camera {c['camera_id']}", f"{where}{who}, {size}: {c['focal']:.0f}{prior}{centre}"))
    if len(cameras) > FOCAL_ROWS:
        rows.append(("  ...", f"{len(cameras) - FOCAL_ROWS} more cameras in report.json"))
    return [("focal px: estimated / prior", "")] + rows if rows else []


def _print_report(report: dict, title: str) -> None:
    """Summary table of a report as written by ``pipelines.export.main``."""
    out = Path(report.get("outputs", "."))
    rows = [("status", f"{report.get('status')}: {report.get('message', '')}")]
    models = report.get("models") or []
    registered = " + ".join(str(m["images_registered"]) for m in models) or str(report.get("images_registered", 0))
    if "images_given" in report:
        rows.append(("images given / skipped / registered",
                     f"{report['images_given']} / {len(report.get('images_skipped', {}))} / {registered}"))
    else:
        rows.append(("images registered", str(report.get("images_registered", 0))))
    for name, reason in sorted(report.get("images_skipped", {}).items()):
        rows.append(("  skipped", f"{name}: {reason}"))
    if report.get("images_unregistered"):
        rows.append(("  not registered", ", ".join(report["images_unregistered"])))
    if "match" in report:
        m = report["match"]
        rows.append(("pairs matched / resumed / failed",
                     f"{m['pairs_matched']} / {m['pairs_resumed']} / {m['pairs_failed']}"))
    if "verification" in report:
        v = report["verification"]
        rows.append(("pairs verified", _verified(v["verified"], v["pairs"], v["mean_inliers"],
                                                 len(v.get("rotation_outliers", [])))))
    if len(models) > 1:
        for m in models:
            rows.append((f"model {m['index']}", f"{m['images_registered']} images, {m['points']} points: {m['path']}"))
    if "principal_points" in report:
        pp = report["principal_points"]
        rows.append(("principal points from SIFT", f"{pp['measured']} of {pp['images']} images of shared cameras"))
    if "fallback" in report:
        fb = report["fallback"]
        rows.append(("fallback", f"failed, the sparse model is kept: {fb['error']}") if "error" in fb else
                    (f"fallback ({fb['matcher']})", f"{fb['kept']} of {fb['pairs']} pairs the sparse model did not "
                     f"verify kept ({fb['skipped']} not matched: no overlap in it; {fb['checked']} checked against "
                     "its geometry)"))
    tries = (report.get("calibration") or {}).get("restarts") or []
    if len(tries) > 1:  # the first mapping explained too little of the matches (mapping.map_restarts)
        rows.append(("mapping tries", ", ".join(f"seed {t['seed']}: {t['images']} images, {t['support']} matches "
                                                f"explained" for t in tries)))
    rows += _focal_rows(report.get("cameras") or [])
    if report.get("images_registered"):
        rows += [("3D points" + (" (model 0)" if len(models) > 1 else ""), str(report.get("points", 0))),
                 ("mean track length", _fmt(report.get("mean_track_length"))),
                 ("mean reprojection error (px)", _fmt(report.get("mean_reprojection_error"), 3))]
    ev = report.get("evaluation")
    if ev:
        aucs = [k for k in ev if k.startswith("auc@")]
        rows.append((f"AUC@{'/'.join(k[4:] for k in aucs)} deg", " / ".join(f"{ev[k]:.1f}" for k in aucs)
                     + f"  ({ev['registered']} of {ev['images']} GT images registered)"))
        rows.append(("ground truth", str(ev.get("poses_gt", ""))))
    times = report.get("times") or {}
    steps = [k for k in ("scan", "pairs", "match", "skeleton mapping", "fallback", "tracks", "principal points (SIFT)",
                         "mapping", "export")
             if k in times]
    if steps:
        rows.append(("time (s)", ", ".join(f"{k} {times[k]:.1f}" for k in steps)
                     + (f"; total {times['total']:.1f}" if "total" in times else "")))
    files = [("model (COLMAP)", report.get("model")), ("points", out / "points.ply"),
             ("preview", out / "preview.png"), ("report", out / "report.json"),
             ("report (open in a browser)", out / "report.html")]
    for label, path in files:
        if path is not None and Path(path).exists():
            rows.append((label, str(path)))
    console.print(_kv_table(title, rows))


# ------------------------------------------------------------------------------------------------
# options shared by several commands
# ------------------------------------------------------------------------------------------------
IMAGES_ARG = typer.Argument(..., exists=True, file_okay=False, dir_okay=True, show_default=False,
                            help="Folder of images (searched recursively; names are relative to it).")
MATCHES_FILE_OPT = typer.Option(None, "--matches", show_default=False, dir_okay=False,
                                help="matches.h5 of `roma-sfm match` (default: OUTPUT/matches.h5).")
OUTPUT_DIR_OPT = typer.Option(None, "-o", "--output", file_okay=False, show_default=False,
                              help="Output folder (default: ./outputs/<scene>).")
MATCHER_HELP = ("'roma' (the shipped model), a preset name (roma-tiny, roma-outdoor, roma-indoor; "
                "`roma-sfm models`), a checkpoint file (.safetensors or public .pth), or 'sift' "
                "('sift-opencv' for OpenCV's SIFT defaults, 'sift-colmap' for COLMAP's extractor). Default: "
                "roma once the shipped weights' metadata recommends them (MODEL_CARD.md), else sift (with a "
                "notice saying why).")
FALLBACK_HELP = ("A RoMa model (as --matcher) for the pairs that the SIFT matches cannot verify: the SIFT model is "
                 "built first, those pairs are matched densely, checked against its epipolar geometry, and the "
                 "model is built again with them. --resolution, --zoom and --precision then apply to it.")
PRINCIPAL_POINT_HELP = ("The principal point of each camera that --principal-point-min-images images share: "
                        "centre (kept at the image centre, as COLMAP and GLOMAP do), refine (freed in a final bundle "
                        "adjustment), or sift (measured by a SIFT reconstruction of those images, then kept fixed: "
                        "RoMa's dense matches cannot refine it themselves). Default: refine for SIFT matches, "
                        "sift for RoMa's.")
PRINCIPAL_POINT_MIN_IMAGES_HELP = "Images that must share a camera for its principal point to be estimated (0: never)."
MAPPER_HELP = ("global (GLOMAP, after estimating the focal lengths from the view graph) or incremental "
               "(COLMAP's).")
CALIBRATE_HELP = ("Global mapper: start from focal lengths estimated from the view graph ('always'), from EXIF "
                  "or 1.2 x the image size ('never'), or map from both and keep the model that registers more "
                  "images or explains clearly more matches ('compare'; the second mapping runs only when the first "
                  "leaves over 5 % of what the pairs' own geometries explain unexplained).")
RESOLUTION_HELP = ("RoMa resolution COARSE[:FINE], each N or HxW in multiples of 14: the coarse pass, then the "
                   "refiners again at FINE ('none': one pass). Default: the preset's, 448:672 for roma-tiny, "
                   "560:864 for the paper models.")
ZOOM_HELP = ("RoMa: match a pair again on the part both images show when one shows it at least this many "
             "times larger than the other (0: never). Default: roma_sfm.presets.ZOOM.")
AUTO_PAIRS_HELP = ("auto (every pair up to {sparse} images for SIFT, {dense} for RoMa, else retrieval)"
                   .format(**pairs_.confs["auto"]["max_exhaustive"]))
PRECISION_HELP = ("RoMa arithmetic: auto (autocast on CUDA, float32 on CPU), fp32, or bf16 (bfloat16 also on CPU: "
                  "faster on CPUs with bf16 units, slightly less accurate; docs/benchmarks.md).")
PHOTOMETRIC_HELP = ("RoMa: move each sampled match to where the image patches fit best (Lucas-Kanade on the "
                    "images, sub-pixel; docs/benchmarks.md). On by default; --no-photometric keeps the raw warp.")
DEVICE_HELP = "Torch device for RoMa: auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ..."
NUM_SAMPLES_HELP = "Matches sampled per pair from RoMa's dense warp (SIFT keeps at most this many)."
RAY_HELP = ("Match on a Ray cluster: `--ray` alone starts a local one, `--ray HOST:PORT` (or `auto`) joins a "
            "running one (needs `pip install roma-sfm\\[ray]`; images and OUTPUT on a file system all workers see).")
RAY_ADDRESS = re.compile(r"^(local|auto|ray://.*|\[?[\w.:-]*\]?:\d+)$")


def normalise_ray_flag(argv: list[str]) -> list[str]:
    """``--ray`` may come without its ADDRESS (Typer options always take a value): insert 'local'
    after a ``--ray`` that is not followed by something shaped like an address."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(argv) or not RAY_ADDRESS.match(argv[i + 1])):
            out.append("local")
    return out


def run() -> None:
    """Console-script entry point: :data:`app` with ``--ray``'s address made optional."""
    app(args=normalise_ray_flag(sys.argv[1:]), prog_name="roma-sfm")
MIN_PAIR_SCORE_HELP = ("Leave out pairs whose score (mean match certainty x share of matches that fit one "
                       "epipolar geometry) is below this: views that share nothing (default: the value of the "
                       "matches' kind in roma_sfm.pipelines.tracks.confs; 0 = off).")
NUM_THREADS_HELP = "Threads for COLMAP's verification and mapping (-1: all cores)."
MAX_ROTATION_ERROR_HELP = ("View-graph check: a verified pair whose relative rotation is more than this many "
                           "degrees from the robust average over all pairs is left out (look-alike views); 0: off.")
RESTARTS_HELP = ("Map again with the next seed, up to this many tries, while the model explains less than "
                 f"{mapping.RESTART_BELOW:.0%} of the verified matches their own pairs explain (as after a failed "
                 "focal calibration); the best try is kept. 1: map once.")
VERBOSE_HELP = "Show COLMAP's own log, and full tracebacks on errors."
POSES_GT_HELP = ("Ground-truth cameras (`name fx fy cx cy qw qx qy qz tx ty tz`) to score the model with: "
                 "'auto' uses IMAGES/../poses_gt.txt if it exists, 'none' skips.")


def _gt(value: str) -> Any:
    try:
        return evaluate.parse_poses_gt(value)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--poses-gt") from None


# ------------------------------------------------------------------------------------------------
# reconstruct: all steps
# ------------------------------------------------------------------------------------------------
@app.command()
def reconstruct(
    images: Path = IMAGES_ARG,
    output: Optional[Path] = typer.Option(None, "-o", "--output", file_okay=False, show_default=False,
                                          help="Output folder (default: ./outputs/<scene>, <scene> = the images "
                                               "folder's name, or its parent's if it is called 'images')."),
    matcher: Optional[str] = typer.Option(None, "--matcher", "-m", show_default=False, help=MATCHER_HELP),
    pairs: str = typer.Option(DEFAULTS.pairs, "--pairs", help=f"Which pairs to match: {AUTO_PAIRS_HELP}, "
                              "exhaustive, sequential, retrieval, or a pairs file (`name0 name1` per line)."),
    num_matched: int = typer.Option(DEFAULTS.num_matched, "--num-matched", min=1, help="Retrieval: pairs per image."),
    resolution: Optional[str] = typer.Option(None, "--resolution", show_default=False, help=RESOLUTION_HELP),
    zoom: Optional[float] = typer.Option(None, "--zoom", min=0.0, show_default=False, help=ZOOM_HELP),
    precision: Optional[str] = typer.Option(None, "--precision", show_default=False, help=PRECISION_HELP),
    photometric: Optional[bool] = typer.Option(None, "--photometric/--no-photometric", show_default=False,
                                               help=PHOTOMETRIC_HELP),
    device: str = typer.Option(DEFAULTS.device, "--device", help=DEVICE_HELP),
    mapper: Mapper = typer.Option(Mapper(DEFAULTS.mapper), "--mapper", help=MAPPER_HELP),
    calibrate: Calibrate = typer.Option(Calibrate(DEFAULTS.calibrate), "--calibrate", help=CALIBRATE_HELP),
    max_keypoints: int = typer.Option(DEFAULTS.max_keypoints, "--max-keypoints", min=1,
                                      help="Keypoints kept per image when matches are merged into tracks."),
    cell_size: Optional[float] = typer.Option(None, "--cell-size", min=0.5, show_default=False,
                                              help="Track grid in px: matches in one cell of an image share one "
                                                   "keypoint (default: 2 for sift, 4 for RoMa)."),
    min_pair_score: Optional[float] = typer.Option(None, "--min-pair-score", min=0.0, max=1.0, show_default=False,
                                                   help=MIN_PAIR_SCORE_HELP),
    num_samples: int = typer.Option(DEFAULTS.num_samples, "--num-samples", min=1, help=NUM_SAMPLES_HELP),
    batch_size: int = typer.Option(DEFAULTS.batch_size, "--batch-size", min=1, help="RoMa: pairs per forward pass."),
    camera_mode: CameraMode = typer.Option(CameraMode(DEFAULTS.camera_mode), "--camera-mode",
                                           help="Camera sharing: auto (same folder, size and EXIF focal), single, "
                                                "per_folder, per_image."),
    poses_gt: str = typer.Option(DEFAULTS.gt_poses, "--poses-gt", help=POSES_GT_HELP),
    num_threads: int = typer.Option(DEFAULTS.num_threads, "--num-threads", help=NUM_THREADS_HELP),
    max_rotation_error: float = typer.Option(DEFAULTS.max_rotation_error, "--max-rotation-error", min=0.0,
                                             help=MAX_ROTATION_ERROR_HELP),
    restarts: int = typer.Option(DEFAULTS.restarts, "--restarts", min=1, help=RESTARTS_HELP),
    principal_point: Optional[PrincipalPoint] = typer.Option(None, "--principal-point", show_default=False,
                                                             help=PRINCIPAL_POINT_HELP),
    principal_point_min_images: int = typer.Option(DEFAULTS.principal_point_min_images, "--principal-point-min-images",
                                                   min=0, help=PRINCIPAL_POINT_MIN_IMAGES_HELP),
    fallback: Optional[str] = typer.Option(None, "--fallback", show_default=False, metavar="MATCHER",
                                           help=FALLBACK_HELP),
    ray: Optional[str] = typer.Option(None, "--ray", show_default=False, metavar="[ADDRESS]", help=RAY_HELP),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", min=1, show_default=False,
                                              help="Ray: number of workers (default: one per CPU of the cluster)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Match every pair again instead of resuming from "
                                   "OUT/matches.h5 (the other steps always re-run)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
):
    """Reconstruct a folder of images: pairs -> matches -> tracks -> COLMAP mapping -> export.

    Writes OUT/sparse/0 (COLMAP binary + text), points.ply, preview.png, report.json and report.html.

    report.html is the page to look at the result (3-D view, summary, match pictures); it works offline.

    Matching resumes where a previous run into the same OUT stopped (see --overwrite).

    Exit code 0 on success, 1 if the reconstruction failed (report.json says why), 2 on usage errors.
    """
    out = output or default_output(images)
    _check_pairs(pairs)
    gt = _gt(poses_gt)
    if fallback is not None and (error := fallback_.kinds_error(matcher or "sift", fallback)) is not None:
        raise typer.BadParameter(error, param_hint="--fallback")
    with _guard(verbose):
        if fallback is None:
            m, fb = _resolve_matcher(matcher, resolution, device, zoom, precision, photometric), None
        else:  # --resolution, --zoom, --precision and --photometric are the fallback's
            m, fb = (_resolve_matcher(matcher or "sift", None, device),
                     _resolve_matcher(fallback, resolution, device, zoom, precision, photometric))
        console.print(f"reconstructing [bold]{escape(str(images))}[/] -> [bold]{escape(str(out))}[/] "
                      f"(matcher: {escape(matchers.matcher_name(m))}"
                      + (f", fallback: {escape(matchers.matcher_name(fb))})" if fb is not None else ")"))
        config = reconstruct_.ReconstructConfig(
            matcher=m, pairs=pairs, num_matched=num_matched, num_samples=num_samples, cell_size=cell_size,
            max_keypoints=max_keypoints, min_pair_score=min_pair_score, mapper=mapper.value,
            calibrate=calibrate.value, camera_mode=camera_mode.value, device=device, gt_poses=gt, overwrite=overwrite, num_threads=num_threads,
            batch_size=batch_size, verbose=verbose, ray=ray, ray_workers=ray_workers,
            max_rotation_error=max_rotation_error, principal_point_min_images=principal_point_min_images,
            principal_point=principal_point.value if principal_point else None, fallback=fb, restarts=restarts)
        report = reconstruct_.main(images, out, config)
    _print_report(report, "roma-sfm reconstruct")
    if report["status"] != "ok":
        _fail(report["message"])


# ------------------------------------------------------------------------------------------------
# the steps alone
# ------------------------------------------------------------------------------------------------
@app.command("pairs")
def pairs_cmd(
    images: Path = IMAGES_ARG,
    output: Optional[Path] = typer.Option(None, "-o", "--output", dir_okay=False, show_default=False,
                                          help="Pairs file to write (default: ./outputs/<scene>/pairs.txt)."),
    mode: str = typer.Option(DEFAULTS.pairs, "--mode", help=f"{AUTO_PAIRS_HELP}, exhaustive, sequential, "
                             "retrieval, or a pairs file to filter to the readable images of IMAGES."),
    matcher: Optional[str] = typer.Option(None, "--matcher", "-m", show_default=False,
                                          help="The matcher the pairs are for (as in `reconstruct`): auto's "
                                               "limit depends on its kind."),
    num_matched: int = typer.Option(DEFAULTS.num_matched, "--num-matched", min=1, help="Retrieval: pairs per image."),
    window: int = typer.Option(DEFAULTS.window, "--window", min=1,
                               help="Sequential: successors matched per image (plus "
                               "quadratic overlap)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
):
    """Choose the image pairs to match and write them as `name0 name1` lines."""
    _check_pairs(mode, "--mode")
    try:
        kind = matchers.matcher_kind(matchers.resolve(matcher).matcher)
    except matchers.MatcherSpecError as e:
        raise typer.BadParameter(str(e), param_hint=e.option) from None
    out = output or default_output(images) / "pairs.txt"
    with _guard(verbose):
        pair_list = pairs_.main(images, out, mode=mode, window=window, num_matched=num_matched, kind=kind)
    if not pair_list:
        _fail(f"no image pair in '{images}' (need at least 2 images)")
    console.print(f"{len(pair_list)} pairs of {len({n for p in pair_list for n in p})} images -> "
                  f"[bold]{escape(str(out))}[/]")


@app.command("match")
def match_cmd(
    images: Path = IMAGES_ARG,
    pairs: Optional[Path] = typer.Option(None, "--pairs", exists=True, dir_okay=False, show_default=False,
                                         help="Pairs file (`name0 name1` per line, names relative to IMAGES). "
                                              "Default: pairs of mode auto, written to pairs.txt next to OUTPUT."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", dir_okay=False, show_default=False,
                                          help="matches.h5 to write (default: ./outputs/<scene>/matches.h5)."),
    matcher: Optional[str] = typer.Option(None, "--matcher", "-m", show_default=False, help=MATCHER_HELP),
    resolution: Optional[str] = typer.Option(None, "--resolution", show_default=False, help=RESOLUTION_HELP),
    zoom: Optional[float] = typer.Option(None, "--zoom", min=0.0, show_default=False, help=ZOOM_HELP),
    precision: Optional[str] = typer.Option(None, "--precision", show_default=False, help=PRECISION_HELP),
    photometric: Optional[bool] = typer.Option(None, "--photometric/--no-photometric", show_default=False,
                                               help=PHOTOMETRIC_HELP),
    device: str = typer.Option(DEFAULTS.device, "--device", help=DEVICE_HELP),
    num_samples: int = typer.Option(DEFAULTS.num_samples, "--num-samples", min=1, help=NUM_SAMPLES_HELP),
    batch_size: int = typer.Option(DEFAULTS.batch_size, "--batch-size", min=1, help="RoMa: pairs per forward pass."),
    retrieval: Optional[int] = typer.Option(None, "--retrieval", min=1, show_default=False,
                                            help="Instead of --pairs: match every image with its K most similar "
                                                 "images (global descriptors; pairs written next to OUTPUT)."),
    workers: int = typer.Option(match.DEFAULTS["num_workers"], "--workers", min=1,
                                help="Threads decoding images ahead of the model."),
    cache_mb: float = typer.Option(match.DEFAULTS["cache_mb"], "--cache-mb", min=0,
                                   help="RoMa: memory for per-image encoder features reused across pairs."),
    ray: Optional[str] = typer.Option(None, "--ray", show_default=False, metavar="[ADDRESS]", help=RAY_HELP),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers", min=1, show_default=False,
                                              help="Ray: number of workers (default: one per CPU of the cluster)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, show_default=False,
                                          help="Torch threads of the matcher (of each Ray worker; default: all "
                                               "cores, on Ray the cluster's CPUs / workers). Matches are "
                                               "reproducible bit for bit at equal --threads."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start OUTPUT afresh instead of resuming the pairs "
                                   "already in it."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
):
    """Match image pairs into matches.h5 (hloc dense layout; resumable, crash safe)."""
    from roma_sfm.lock import output_lock

    out = output or default_output(images) / "matches.h5"
    with _guard(verbose), output_lock(out.parent):
        m = matchers.get_matcher(_resolve_matcher(matcher, resolution, device, zoom, precision, photometric),
                                 device=device)  # load errors first
        if pairs is not None and retrieval is not None:
            _fail("give --pairs or --retrieval, not both", code=2)
        if pairs is None:
            mode = "auto" if retrieval is None else "retrieval"
            pairs = out.parent / "pairs.txt"
            n = len(pairs_.main(images, pairs, mode=mode, kind=matchers.matcher_kind(m),
                                **({"num_matched": retrieval} if retrieval else {})))
            console.print(f"{n} pairs ({mode}) -> {escape(str(pairs))}")
        try:  # the pairs file is streamed, never held in memory
            stats = match.main(pairs, images, out, m, num_samples=num_samples, batch_size=batch_size,
                               overwrite=overwrite, device=device, num_workers=workers, cache_mb=cache_mb,
                               ray=ray, ray_workers=ray_workers, threads=threads)
        except ValueError as e:  # e.g. OUTPUT holds matches of another matcher
            _fail(f"{e} (CLI: --overwrite)")
    rows = [("pairs", str(stats.num_pairs)),
            ("matched / resumed / failed", f"{stats.num_matched} / {stats.num_resumed} / {stats.num_failed}")]
    rows += [("  skipped", f"{k}: {v}") for k, v in sorted(stats.skipped_images.items())]
    rows += [("time (s)", f"{stats.seconds:.1f}"), ("matches", str(out))]
    console.print(_kv_table("roma-sfm match", rows))
    if stats.num_pairs == 0 or stats.num_matched + stats.num_resumed == 0:
        _fail("no pair was matched")


@app.command("map")
def map_cmd(
    images: Path = IMAGES_ARG,
    matches: Optional[Path] = MATCHES_FILE_OPT,
    output: Optional[Path] = OUTPUT_DIR_OPT,
    cell_size: Optional[float] = typer.Option(None, "--cell-size", min=0.5, show_default=False,
                                              help="Track grid in px (default: 2 if matches.h5 holds SIFT "
                                                   "matches, else 4)."),
    min_pair_score: Optional[float] = typer.Option(None, "--min-pair-score", min=0.0, max=1.0, show_default=False,
                                                   help=MIN_PAIR_SCORE_HELP),
    max_keypoints: int = typer.Option(DEFAULTS.max_keypoints, "--max-keypoints", min=1,
                                      help="Keypoints kept per image."),
    mapper: Mapper = typer.Option(Mapper(DEFAULTS.mapper), "--mapper", help=MAPPER_HELP),
    calibrate: Calibrate = typer.Option(Calibrate(DEFAULTS.calibrate), "--calibrate", help=CALIBRATE_HELP),
    camera_mode: CameraMode = typer.Option(CameraMode(DEFAULTS.camera_mode), "--camera-mode",
                                           help="Camera sharing: auto, single, per_folder, per_image."),
    num_threads: int = typer.Option(DEFAULTS.num_threads, "--num-threads", help=NUM_THREADS_HELP),
    max_rotation_error: float = typer.Option(DEFAULTS.max_rotation_error, "--max-rotation-error", min=0.0,
                                             help=MAX_ROTATION_ERROR_HELP),
    restarts: int = typer.Option(DEFAULTS.restarts, "--restarts", min=1, help=RESTARTS_HELP),
    principal_point: Optional[PrincipalPoint] = typer.Option(None, "--principal-point", show_default=False,
                                                             help=PRINCIPAL_POINT_HELP),
    principal_point_min_images: int = typer.Option(DEFAULTS.principal_point_min_images, "--principal-point-min-images",
                                                   min=0, help=PRINCIPAL_POINT_MIN_IMAGES_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
):
    """Map matches.h5 into a COLMAP model (tracks, database, verification, mapping).

    Writes OUTPUT/features.h5, matches_idx.h5, sfm/ (database.db, models/) and sparse/0, sparse/1, ...
    (every model, largest first).
    """
    from roma_sfm.lock import output_lock

    out = output or default_output(images)
    matches = matches or out / "matches.h5"
    if not matches.is_file():
        raise typer.BadParameter(f"'{matches}' does not exist (run `roma-sfm match` first)", param_hint="--matches")
    config = reconstruct_.ReconstructConfig(cell_size=cell_size, min_pair_score=min_pair_score,
                                            max_keypoints=max_keypoints, mapper=mapper.value,
                                            calibrate=calibrate.value, camera_mode=camera_mode.value, num_threads=num_threads,
                                            max_rotation_error=max_rotation_error, restarts=restarts,
                                            principal_point_min_images=principal_point_min_images,
                                            principal_point=principal_point.value if principal_point else None)
    mapping.set_colmap_verbosity(verbose)
    with _guard(verbose), output_lock(out):
        mo = reconstruct_.map_matches(images, out, matches, config)
        ts, res = mo.tracks, mo.mapping
        if res is None:
            _fail(f"{mo.failure} in '{matches}'")
        ver = res.verification
        rows = [("images with matches", str(ts.num_images)),
                ("keypoints / image, matches / pair", f"{ts.mean_keypoints:.0f}, {ts.mean_matches:.0f} "
                                                      f"(cell {mo.cell_size:g} px)"),
                ("pairs verified", _verified(ver.num_verified, ver.num_pairs, ver.mean_inliers,
                                             len(ver.rotation_outliers))),
                ("models", " + ".join(str(r.num_reg_images()) for r in res.models) + " images"
                 if res.models else "0")]
        if mo.principal_points is not None:
            pp = mo.principal_points
            rows.append(("principal points from SIFT", f"{pp.num_registered} of {pp.num_images} images of shared "
                                                       f"cameras ({pp.seconds:.1f} s)"))
        if mo.failure:
            console.print(_kv_table("roma-sfm map", rows))
            _fail(mo.failure)
        export.write_models(res.models, out, prune=True)
        stats = export.model_stats(res.reconstruction)
    rows += [("images registered", f"{stats['images_registered']} of {len(res.image_ids)}"),
             ("3D points", str(stats["points"])), ("mean track length", _fmt(stats["mean_track_length"])),
             ("mean reprojection error (px)", _fmt(stats["mean_reprojection_error"], 3)),
             ("time (s)", ", ".join(f"{k} {v:.1f}" for k, v in {"tracks": ts.seconds, **res.seconds}.items())),
             ("model (COLMAP)", str(out / "sparse" / "0")), ("database", str(out / "sfm" / "database.db"))]
    console.print(_kv_table("roma-sfm map", rows))


@app.command("export")
def export_cmd(
    images: Path = IMAGES_ARG,
    model: Optional[Path] = typer.Option(None, "--model", file_okay=False, show_default=False,
                                         help="COLMAP model folder to export (default: OUTPUT/sparse/0)."),
    output: Optional[Path] = OUTPUT_DIR_OPT,
    poses_gt: str = typer.Option(DEFAULTS.gt_poses, "--poses-gt", help=POSES_GT_HELP),
    match_plots: int = typer.Option(export.MATCH_PLOTS, "--match-plots", min=0,
                                    help="Plot the matches of this many pairs into OUTPUT/matches/ (needs "
                                         "OUTPUT/features.h5 and matches_idx.h5)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
):
    """Export a COLMAP model: OUTPUT/sparse/0, points.ply, preview.png, report.json, report.html.

    Scores the model when ground-truth cameras are found (--poses-gt).
    """
    from roma_sfm.lock import output_lock

    out = output or default_output(images)
    model = model or out / "sparse" / "0"
    if not model.is_dir():
        raise typer.BadParameter(f"'{model}' is not a folder (run `roma-sfm map` first)", param_hint="--model")
    gt = _gt(poses_gt)
    with _guard(verbose), output_lock(out):
        report = export.export_model(model, images, out, gt, num_match_plots=match_plots)
    _print_report(report, "roma-sfm export")
    if report["status"] != "ok":
        _fail(report["message"])


# ------------------------------------------------------------------------------------------------
# viz: one pair
# ------------------------------------------------------------------------------------------------
@app.command()
def viz(
    image_a: Path = typer.Argument(..., exists=True, dir_okay=False, show_default=False, help="Image A."),
    image_b: Path = typer.Argument(..., exists=True, dir_okay=False, show_default=False, help="Image B."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", dir_okay=False, show_default=False,
                                          help="PNG to write (default: ./viz_<A>__<B>.png)."),
    matcher: str = typer.Option("roma", "--matcher", "-m", help="A RoMa model: 'roma' (the shipped one), a preset "
                                "name or a checkpoint file."),
    resolution: Optional[str] = typer.Option(None, "--resolution", show_default=False, help=RESOLUTION_HELP),
    zoom: Optional[float] = typer.Option(None, "--zoom", min=0.0, show_default=False, help=ZOOM_HELP),
    precision: Optional[str] = typer.Option(None, "--precision", show_default=False, help=PRECISION_HELP),
    device: str = typer.Option(DEFAULTS.device, "--device", help=DEVICE_HELP),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", min=8, show_default=False,
                                              help="Matches sampled from the warp (default: "
                                                   "roma_sfm.pipelines.figures.NUM_SAMPLES)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
):
    """Draw one pair as in the RoMa paper: the matches, RoMa's warp (B sampled into A's frame) and certainty.

    The match plot draws a random subset of the matches: inliers and outliers of a fundamental matrix.
    """
    from roma_sfm.pipelines import figures  # draws with OpenCV: loaded only here

    if matcher.lower().startswith("sift"):
        raise typer.BadParameter("viz draws RoMa's dense warp: give a RoMa model", param_hint="--matcher")
    out = output or Path(f"viz_{image_a.stem}__{image_b.stem}.png")
    with _guard(verbose):
        fig = figures.pair_figure(_resolve_matcher(matcher, resolution, device, zoom, precision), image_a, image_b, out, device=device,
                                  **({"num_samples": num_samples} if num_samples else {}))
    console.print(_kv_table("roma-sfm viz", [
        ("matches sampled", str(fig.matches)),
        ("inliers / outliers (fundamental matrix)", f"{fig.inliers} / {fig.matches - fig.inliers}"),
        ("picture", str(out))]))


# ------------------------------------------------------------------------------------------------
# eval
# ------------------------------------------------------------------------------------------------
@app.command("eval")
def eval_cmd(
    model: Optional[Path] = typer.Option(None, "--model", exists=True, file_okay=False, show_default=False,
                                         help="COLMAP model folder to score (an output folder holding sparse/0 "
                                              "works too); needs --poses-gt."),
    poses_gt: Optional[Path] = typer.Option(None, "--poses-gt", exists=True, dir_okay=False, show_default=False,
                                            help="GT cameras, `name fx fy cx cy qw qx qy qz tx ty tz` per line."),
    matches: Optional[Path] = typer.Option(None, "--matches", exists=True, dir_okay=False, show_default=False,
                                           help="matches.h5 to score; needs --pairs-gt."),
    pairs_gt: Optional[Path] = typer.Option(None, "--pairs-gt", exists=True, dir_okay=False, show_default=False,
                                            help="GT pairs in the 38-field SuperGlue/LoFTR format."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", exists=True, file_okay=False,
                                             show_default=False,
                                             help="The folder the paths in --pairs-gt are relative to, when "
                                                  "matches.h5 was made from it (`roma-sfm match DIR --pairs "
                                                  "PAIRS_GT`): names are then the GT paths as written. Without "
                                                  "it each path is cut to the part after 'images/' (matches.h5 "
                                                  "of one scene's images folder)."),
    json_file: Optional[Path] = typer.Option(None, "--json", dir_okay=False, show_default=False,
                                             help="Also write the numbers to this JSON file."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
):
    """Score a reconstruction (--model, --poses-gt) and/or matches (--matches, --pairs-gt).

    Model: registered images and relative-pose AUC@3/5/10 deg over all pairs of GT images.

    Matches: essential-matrix RANSAC per GT pair, relative-pose AUC@5/10/20 deg.
    """
    if model is None and matches is None:
        raise typer.BadParameter("give --model with --poses-gt, and/or --matches with --pairs-gt")
    if model is not None and poses_gt is None:
        raise typer.BadParameter("--model needs --poses-gt", param_hint="--poses-gt")
    if matches is not None and pairs_gt is None:
        raise typer.BadParameter("--matches needs --pairs-gt", param_hint="--pairs-gt")
    results: dict = {}
    with _guard(verbose):
        if model is not None:
            model = evaluate.model_folder(model)
            ev = evaluate.evaluate_reconstruction(model, poses_gt)
            results["reconstruction"] = {"model": str(model), "poses_gt": str(poses_gt), **ev}
            rows = [("model", str(model)), ("registered", f"{ev['registered']} of {ev['images']} GT images")]
            rows += [(f"AUC@{k[4:]} deg", f"{v:.1f}") for k, v in ev.items() if k.startswith("auc@")]
            rows += [("median rotation / translation error (deg)",
                      f"{_fmt(ev['median_rot_err'])} / {_fmt(ev['median_t_err'])}")]
            console.print(_kv_table("reconstruction vs GT cameras", rows))
        if matches is not None:
            name_fn = (lambda p: p) if data_root is not None else evaluate.strip_to_images
            ev = evaluate.evaluate_matches(matches, pairs_gt, name_fn=name_fn)
            results["matches"] = {"matches": str(matches), "pairs_gt": str(pairs_gt), **ev}
            rows = [("matches", str(matches)), ("GT pairs", f"{ev['pairs']} ({ev['missing']} without matches)")]
            rows += [(f"AUC@{k[4:]} deg", f"{v:.1f}") for k, v in ev.items() if k.startswith("auc@")]
            console.print(_kv_table("matches vs GT pairs (relative pose)", rows))
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(jsonable(results, strict=True), indent=2))
        console.print(f"-> {escape(str(json_file))}")


if __name__ == "__main__":
    run()
