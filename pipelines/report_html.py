"""``OUT/report.html``: one offline page to look at a run (written by every export).

The page holds, in one file that opens from disk without a network: the 3-D view of the points
(their colours) and of the cameras as frusta, to rotate, zoom and click (a click on a camera shows
its image name and thumbnail); the summary and the seconds of every step; the registered, not
registered and skipped images; the match plots of the export; and for RoMa runs, RoMa's warp and
certainty for those pairs (the matcher is run again on them, at the resolution and with the
weights stored in matches.h5, see ``figures.matcher_of``).

Size: plotly.js (from the plotly package, embedded whole) plus at most
``MAX_VIEW_POINTS`` points (a random subset of the model's; coordinates as base64 float32), at most
``MAX_THUMBNAILS`` image thumbnails and the pictures as JPEG.
"""
from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from ..io import ImageReadError, list_images, read_image
from . import figures
from .h5io import matches_kind
from .matchers import matcher_name
from ..io import atomic_output
from .utils import logger
from ..presets import DEVICE

MAX_VIEW_POINTS = 20000  # points in the 3-D view (a random subset above it, so the page stays small)
MAX_THUMBNAILS = 48  # image thumbnails in the page (the other images are listed by name)
THUMB_SIZE = 160  # px, longer side of a thumbnail
NUM_WARP_PAIRS = 3  # RoMa runs: pairs whose warp and certainty are drawn (the first match plots')
FRUSTUM_DEPTH = 0.06  # frustum depth as a share of the scene's extent


def _jpeg_uri(rgb: np.ndarray, quality: int = 80) -> str:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def _shrink(rgb: np.ndarray, longest: int) -> np.ndarray:
    s = longest / max(rgb.shape[:2])
    if s >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s))),
                      interpolation=cv2.INTER_AREA)


def _thumbnail(path: Path) -> Optional[str]:
    """A small JPEG data URI of an image file (decoded at reduced size where the format allows)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.draft("RGB", (2 * THUMB_SIZE, 2 * THUMB_SIZE))  # JPEG: decode at 1/2 .. 1/8 size
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((THUMB_SIZE, THUMB_SIZE))
            return _jpeg_uri(np.asarray(im), 70)
    except Exception:
        return None


def _typed(values: np.ndarray) -> dict:
    """A float32 array in plotly.js's base64 typed-array form (4 bytes a number instead of ~10)."""
    return {"dtype": "f4", "bdata": base64.b64encode(np.ascontiguousarray(values, np.float32).tobytes()).decode()}


def _cameras(reconstruction: Any) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]]:
    """(name, R cam_from_world, centre, K, (W, H)) of every registered image, sorted by name."""
    out = []
    for im in reconstruction.images.values():
        if not im.has_pose:
            continue
        pose = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        R = np.asarray(pose.rotation.matrix())
        cam = reconstruction.cameras[im.camera_id]
        out.append((im.name, R, -R.T @ np.asarray(pose.translation), np.asarray(cam.calibration_matrix()),
                    (int(cam.width), int(cam.height))))
    return sorted(out, key=lambda c: c[0])


def scene_figure(reconstruction: Any, max_points: int = MAX_VIEW_POINTS, seed: int = 0) -> dict:
    """The 3-D view: points (a random subset of at most ``max_points``, far outliers left out) and
    cameras as frusta, in a frame whose z is the mean camera up vector (photos are taken upright),
    seen from behind the cameras. Returns {"data", "layout", "points_shown", "points_total"}."""
    cams = _cameras(reconstruction)
    xyz = np.array([p.xyz for p in reconstruction.points3D.values()], np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in reconstruction.points3D.values()], np.uint8).reshape(-1, 3)
    total = len(xyz)
    centres = np.array([c[2] for c in cams]).reshape(-1, 3)
    ref = np.concatenate([xyz, centres]) if len(xyz) else centres
    lo, hi = np.percentile(ref, 2, axis=0), np.percentile(ref, 98, axis=0)
    margin = (hi - lo) * 0.5
    keep = np.all((xyz >= lo - margin) & (xyz <= hi + margin), axis=1) if len(xyz) else np.zeros(0, bool)
    idx = np.flatnonzero(keep)
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    xyz, rgb = xyz[idx], rgb[idx]

    up = -np.mean([c[1][1] for c in cams], 0) if cams else np.array([0.0, 0.0, 1.0])
    up /= np.linalg.norm(up) + 1e-12
    e1 = np.cross(up, [1.0, 0, 0]) if abs(up[0]) < 0.9 else np.cross(up, [0, 1.0, 0])
    e1 /= np.linalg.norm(e1)
    basis = np.stack([e1, np.cross(up, e1), up])  # rows: the new x, y, z (right-handed)
    origin = np.median(ref, axis=0) if len(ref) else np.zeros(3)
    to_view = lambda X: (np.asarray(X) - origin) @ basis.T  # noqa: E731
    extent = float(np.max(hi - lo)) if len(ref) else 1.0
    depth = FRUSTUM_DEPTH * max(extent, 1e-6)

    lines: list[list[Optional[float]]] = [[], [], []]
    names: list[Optional[str]] = []
    for name, R, C, K, (w, h) in cams:
        corners = np.linalg.solve(K, np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], float).T).T
        corners = corners / corners[:, 2:] * depth
        pts = to_view(np.vstack([C, C + corners @ R]))  # camera -> world: R^T x, as row vectors x @ R
        top = to_view(C + (np.array([w / 2, -0.15 * h, 1.0]) @ np.linalg.inv(K).T) * depth @ R)
        path = [0, 1, 2, 3, 4, 1, 0, 2, 0, 3, 0, 4]
        seq = [pts[i] for i in path] + [pts[1], top, pts[2]]  # the small triangle marks the image top
        for p in seq:
            for k in range(3):
                lines[k].append(round(float(p[k]), 5))
            names.append(name)
        for k in range(3):
            lines[k].append(None)
        names.append(None)
    pv, cv = to_view(xyz), to_view(centres)
    data = [
        {"type": "scatter3d", "mode": "markers", "name": f"points ({len(xyz)} of {total})",
         "x": _typed(pv[:, 0]), "y": _typed(pv[:, 1]), "z": _typed(pv[:, 2]), "hoverinfo": "skip",
         "marker": {"size": 3, "color": ["#%02x%02x%02x" % tuple(int(v) for v in c) for c in rgb]}},
        {"type": "scatter3d", "mode": "lines", "name": f"cameras ({len(cams)})", "x": lines[0], "y": lines[1],
         "z": lines[2], "customdata": names, "hovertemplate": "%{customdata}<extra></extra>",
         "line": {"color": "#d62728", "width": 3}},
        {"type": "scatter3d", "mode": "markers", "name": "camera centres", "showlegend": False,
         "x": _typed(cv[:, 0]), "y": _typed(cv[:, 1]), "z": _typed(cv[:, 2]), "customdata": [c[0] for c in cams],
         "hovertemplate": "%{customdata}<extra></extra>", "marker": {"size": 4, "color": "#d62728"}},
    ]
    look = np.mean([c[1][2] for c in cams], 0) @ basis.T if cams else np.array([1.0, 1.0, -0.5])
    horiz = np.array([look[0], look[1], 0.0])
    horiz = horiz / (np.linalg.norm(horiz) + 1e-12)
    eye = -1.5 * horiz + np.array([0, 0, 0.75])
    axis = {"visible": False}
    layout = {"margin": {"l": 0, "r": 0, "t": 0, "b": 0}, "height": 600, "paper_bgcolor": "#ffffff",
              "legend": {"x": 0.01, "y": 0.99, "bgcolor": "rgba(255,255,255,0.7)"}, "uirevision": "keep",
              "scene": {"xaxis": axis, "yaxis": axis, "zaxis": axis, "aspectmode": "data", "bgcolor": "#ffffff",
                        "camera": {"up": {"x": 0, "y": 0, "z": 1},
                                   "eye": {"x": float(eye[0]), "y": float(eye[1]), "z": float(eye[2])}}}}
    return {"data": data, "layout": layout, "points_shown": int(len(xyz)), "points_total": int(total)}


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def summary_rows(report: dict) -> list[tuple[str, str]]:
    """The run at a glance: (label, value) rows from a report as export writes it."""
    rows = [("status", f"{report.get('status')}: {report.get('message', '')}")]
    cfg = report.get("config") or {}
    if cfg.get("matcher"):
        rows.append(("matcher", str(cfg["matcher"])))
    if "images_given" in report:
        rows.append(("images given / skipped / registered", f"{report['images_given']} / "
                     f"{len(report.get('images_skipped', {}))} / {report.get('images_registered', 0)}"))
    else:
        rows.append(("images registered", str(report.get("images_registered", 0))))
    if "match" in report:
        m = report["match"]
        rows.append(("pairs matched / resumed / failed", f"{m['pairs_matched']} / {m['pairs_resumed']} / "
                                                         f"{m['pairs_failed']}"))
    if "verification" in report:
        v = report["verification"]
        rows.append(("pairs verified", f"{v['verified']} of {v['pairs']} ({v['mean_inliers']:.0f} inliers/pair)"))
    if report.get("images_registered"):
        rows += [("3D points", str(report.get("points", 0))),
                 ("mean track length", _fmt(report.get("mean_track_length"))),
                 ("mean reprojection error (px)", _fmt(report.get("mean_reprojection_error"), 3))]
    if len(report.get("models") or []) > 1:
        rows.append(("models", ", ".join(f"sparse/{m['index']}: {m['images_registered']} images"
                                         for m in report["models"])))
    ev = report.get("evaluation")
    if ev:
        aucs = [k for k in ev if k.startswith("auc@")]
        rows.append((f"AUC@{'/'.join(k[4:] for k in aucs)} deg vs ground truth",
                     " / ".join(f"{ev[k]:.1f}" for k in aucs) + f" ({ev['registered']} of {ev['images']} GT images)"))
    return rows


def _script_json(value: Any) -> str:
    """JSON to put inside a <script> element (an image name holding '</script>' cannot end it)."""
    return json.dumps(value).replace("</", "<\\/")


def _table(rows: Sequence[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows) \
        + "</table>"


def _image_lists(report: dict, images: Optional[Path]) -> tuple[list[str], list[str], dict[str, str]]:
    """(registered, not registered, skipped {name: reason}); for an export without a scan the
    images of the folder that are in no model count as not registered."""
    registered = list(report.get("registered", []))
    if "images_unregistered" in report:
        unregistered = list(report["images_unregistered"])
    elif images is not None and Path(images).is_dir():
        names = [p.relative_to(images).as_posix() for p in list_images(images)]
        unregistered = sorted(set(names) - set(registered))
    else:
        unregistered = []
    return registered, unregistered, dict(report.get("images_skipped", {}))


def _gallery(names: Sequence[str], thumbnails: dict[str, str]) -> str:
    cells = []
    for n in names:
        img = f'<img src="{thumbnails[n]}" alt="">' if n in thumbnails else ""
        cells.append(f'<figure>{img}<figcaption>{html.escape(n)}</figcaption></figure>')
    return '<div class="gallery">' + "".join(cells) + "</div>" if cells else "<p>none</p>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:12px 20px;
color:#222}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
.ok{color:#1a7f37}.failed{color:#cf222e}
table{border-collapse:collapse;font-size:.92em}th,td{text-align:left;padding:3px 10px;border-bottom:1px solid #eee;
vertical-align:top}th{font-weight:600;white-space:nowrap}
.row{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
#view-wrap{display:flex;gap:12px}#view3d{flex:1;min-width:0;border:1px solid #ddd;height:600px}
#picked{width:190px;font-size:.9em}#picked img{max-width:180px;display:block;margin-top:6px}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.gallery figure{margin:0;width:%dpx;font-size:.8em;word-break:break-all}
.gallery img{max-width:100%%;max-height:%dpx;display:block}
.pictures img{max-width:100%%;display:block;margin:6px 0 14px}.note{color:#666;font-size:.9em}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}.thumbs img{width:640px;max-width:100%%;display:block}
""" % (THUMB_SIZE, THUMB_SIZE)

CLICK_JS = """
var view = document.getElementById('view3d');
view.on('plotly_click', function (ev) {
  var name = ev.points && ev.points.length ? ev.points[0].customdata : null;
  if (!name) { return; }
  document.getElementById('picked-name').textContent = name;
  var img = document.getElementById('picked-img');
  if (THUMBNAILS[name]) { img.src = THUMBNAILS[name]; img.style.display = 'block'; }
  else { img.style.display = 'none'; }
});
"""


def html_page(report: dict, figure: Optional[dict] = None, thumbnails: Optional[dict[str, str]] = None,
              match_pictures: Sequence[tuple[str, str]] = (), warp_pictures: Sequence[tuple[str, str]] = (),
              images: Optional[Path] = None, warp_note: str = "") -> str:
    """The whole page as one string. ``match_pictures`` / ``warp_pictures``: (caption, data URI)."""
    from plotly.offline import get_plotlyjs

    thumbnails = thumbnails or {}
    status = str(report.get("status", "?"))
    title = f"roma-sfm: {Path(str(report.get('outputs', ''))).name or 'report'}"
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class='{'ok' if status == 'ok' else 'failed'}'><b>{html.escape(status)}"
             f"</b>: {html.escape(str(report.get('message', '')))}</p>",
             f"<p class='note'>images: {html.escape(str(report.get('images', '')))} &middot; written "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p>"]
    if figure is not None:
        parts.append("<h2>3-D view</h2><p class='note'>Drag to rotate, scroll to zoom, click a camera to see its "
                     f"image. Points: {figure['points_shown']} of {figure['points_total']} shown (a random subset of "
                     f"at most {MAX_VIEW_POINTS}, far outliers left out, to keep this file small).</p>"
                     "<div id='view-wrap'><div id='view3d'></div><div id='picked'><b>camera</b>"
                     "<div id='picked-name'>(click one)</div><img id='picked-img' alt='' style='display:none'>"
                     "</div></div>")
    else:
        parts.append("<h2>3-D view</h2><p>no model: nothing registered</p>")
    times = {k: v for k, v in (report.get("times") or {}).items() if isinstance(v, (int, float))}
    parts.append("<div class='row'><div><h2>Summary</h2>" + _table(summary_rows(report)) + "</div>")
    if times:
        parts.append("<div><h2>Seconds per step</h2>" + _table([(k, f"{v:.2f}") for k, v in times.items()])
                     + "</div>")
    parts.append("</div>")
    registered, unregistered, skipped = _image_lists(report, images)
    parts.append(f"<h2>Registered images ({len(registered)})</h2>" + _gallery(registered, thumbnails))
    parts.append(f"<h2>Not registered ({len(unregistered)})</h2>" + _gallery(unregistered, thumbnails))
    if skipped:
        parts.append(f"<h2>Skipped ({len(skipped)})</h2>" + _table(sorted(skipped.items())))
    if match_pictures:
        parts.append("<h2>Matches</h2><p class='note'>The pairs with most matches; a random subset of at most "
                     f"{figures.MAX_DRAWN} matches is drawn, the legend counts all (click for the full picture)."
                     "</p><div class='thumbs'>"
                     + "".join(f"<a href='{html.escape(href)}'><img src='{uri}' alt='{html.escape(href)}'></a>"
                               for href, uri in match_pictures) + "</div>")
    if warp_pictures or warp_note:
        parts.append("<h2>RoMa warp and certainty</h2><p class='note'>Image B sampled into A's frame through the "
                     "dense warp (faded to white where RoMa is uncertain), and the certainty. "
                     + html.escape(warp_note) + "</p><div class='pictures'>"
                     + "".join(f"<p>{html.escape(c)}</p><img src='{uri}' alt=''>" for c, uri in warp_pictures)
                     + "</div>")
    versions = report.get("versions") or {}
    if versions:
        parts.append("<p class='note'>" + html.escape(", ".join(f"{k} {v}" for k, v in versions.items())) + "</p>")
    parts.append(f"<script>var THUMBNAILS = {_script_json(thumbnails)};</script>")
    if figure is not None:
        parts.append(f"<script>{get_plotlyjs()}</script>")
        parts.append("<script>Plotly.newPlot('view3d', " + _script_json(figure["data"]) + ", "
                     + _script_json(figure["layout"]) + ", {responsive: true, displaylogo: false})"
                     + ".then(function () {" + CLICK_JS + "});</script>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _pairs_of_plots(outputs: Path, num: int) -> list[tuple[str, str]]:
    """The first ``num`` pairs the export plotted (the pairs with most matches in matches_idx.h5)."""
    from .h5io import read_index_matches

    idx = Path(outputs) / "matches_idx.h5"
    if not idx.is_file():
        return []
    return figures.top_pairs(read_index_matches(idx), num)


def _warp_pictures(report: dict, outputs: Path, images: Path, device: str) -> tuple[list[tuple[str, str]], str]:
    """RoMa's warp and certainty of the plotted pairs, and a note when they cannot be drawn."""
    matches = Path(outputs) / "matches.h5"
    pairs = _pairs_of_plots(outputs, min(NUM_WARP_PAIRS, len(report.get("match_plots", []))))
    if not matches.is_file() or not pairs:
        return [], ""
    hint = (report.get("config") or {}).get("matcher")
    matcher = figures.matcher_of(matches, hint=str(hint) if hint else None, device=device)
    if matcher is None:
        return [], ("" if matches_kind(matches) == "sparse" else
                    "Not drawn: the RoMa weights that made matches.h5 are not available here.")
    out = []
    for a, b in pairs:
        try:
            ia, ib = read_image(Path(images) / a), read_image(Path(images) / b)
        except ImageReadError:
            continue
        row = figures.warp_row(matcher.match(ia, ib), ia, ib, height=240)
        out.append((f"A = {a}, B = {b}", _jpeg_uri(row, 82)))
    return out, f"Drawn by {matcher_name(matcher)} when this page was written."


def write(report: dict, outputs: Path, images: Optional[Path] = None, reconstruction: Any = None,
          device: str = DEVICE) -> Optional[Path]:
    """Write ``outputs/report.html`` (see the module docstring); returns its path, or None when it
    failed (logged; a page of an earlier run is removed)."""
    outputs = Path(outputs)
    path = outputs / "report.html"
    try:
        t0 = time.perf_counter()
        registered = reconstruction is not None and reconstruction.num_reg_images() > 0
        figure = scene_figure(reconstruction) if registered else None
        reg, unreg, _ = _image_lists(report, images)
        thumbnails = {}
        if images is not None:
            for name in (reg + unreg)[:MAX_THUMBNAILS]:
                uri = _thumbnail(Path(images) / name)
                if uri is not None:
                    thumbnails[name] = uri
        match_pictures = []
        for name in report.get("match_plots", []):
            rgb = cv2.imread(str(outputs / "matches" / name), cv2.IMREAD_COLOR)
            if rgb is not None:
                match_pictures.append((f"matches/{name}", _jpeg_uri(_shrink(rgb[..., ::-1], 960), 80)))
        warps, note = _warp_pictures(report, outputs, images, device) if images is not None else ([], "")
        text = html_page(report, figure, thumbnails, match_pictures, warps, images, note)
        with atomic_output(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        logger.info("export: %s (%.1f MB, %.1f s)", path, len(text) / 2**20, time.perf_counter() - t0)
        return path
    except Exception as e:  # the page is a convenience: never fail a run for it
        logger.warning("export: report.html failed: %s: %s", type(e).__name__, e)
        path.unlink(missing_ok=True)
        return None
