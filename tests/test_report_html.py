"""report.html (offline, one file, a 3-D view that draws in a real browser), readable match plots,
RoMa's warp and certainty pictures and `roma-sfm viz`."""
import base64
import html
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from roma_sfm.cli.main import app
from roma_sfm.matcher import MatchResult
from roma_sfm.pipelines import figures, mapping, match, reconstruct, report_html
from roma_sfm.pipelines import matchers

from browser import chromium, open_page

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "sample_scenes" / "corner" / "images"


@pytest.fixture(scope="module")
def corner(tmp_path_factory):
    """The sample scene reconstructed with SIFT, as `roma-sfm reconstruct` does it."""
    out = tmp_path_factory.mktemp("report") / "corner"
    rep = reconstruct.main(IMAGES, out, matcher="sift", progress=False, num_threads=1)
    assert rep["status"] == "ok", rep["message"]
    return out, rep


def test_report_is_one_offline_file(corner):
    out, rep = corner
    text = (out / "report.html").read_text(encoding="utf-8")
    fetched = re.findall(r"<(?:script|link|img|iframe)[^>]+(?:src|href)=['\"]?(?!data:)[^'\" >]+", text)
    assert fetched == []  # nothing loaded from elsewhere: plotly.js and every picture are inside
    assert text.count("Plotly.newPlot(") == 1 and "plotly.js v" in text
    assert len(text) < 8 * 2**20  # plotly.js (~4.8 MB) + the points and pictures of a small scene
    for name in rep["registered"]:
        assert f"<figcaption>{name}</figcaption>" in text
    assert "registered 8 of 8 images" in text and "Seconds per step" in text
    assert text.count("<a href='matches/") == len(rep["match_plots"]) == 3
    assert "RoMa warp" not in text  # SIFT: nothing to warp


def test_scene_figure_caps_the_points(corner):
    import pycolmap

    rec = pycolmap.Reconstruction(str(corner[0] / "sparse" / "0"))
    fig = report_html.scene_figure(rec, max_points=100)
    points, frusta, centres = fig["data"]
    xs = np.frombuffer(base64.b64decode(points["x"]["bdata"]), np.float32)
    assert fig["points_total"] == rec.num_points3D() > 100 and fig["points_shown"] == len(xs) == 100
    assert len(points["marker"]["color"]) == 100
    assert sorted(centres["customdata"]) == sorted(im.name for im in rec.images.values())
    assert {n for n in frusta["customdata"] if n} == set(centres["customdata"])  # a click on a frustum names it
    full = report_html.scene_figure(rec)
    assert full["points_shown"] <= report_html.MAX_VIEW_POINTS and full["points_shown"] > 0.9 * rec.num_points3D()


def _runs(mask: np.ndarray) -> int:
    """Number of runs of True in a 1-D mask (one per drawn line crossing it)."""
    return int(np.count_nonzero(mask[1:] & ~mask[:-1]) + mask[0])


def test_match_plot_draws_a_few_lines_in_two_colours(tmp_path):
    # 190 matches on rows 3 px apart (a horizontal line each): count the lines crossing one column
    gray = np.full((600, 600, 3), 128, np.uint8)
    n = 190
    k = np.stack([np.full(n, 300.5), np.arange(n) * 3 + 20.5], 1)
    inliers = np.arange(n) % 3 != 0  # 2/3 inliers
    canvas = figures.plot_matches(gray, gray, k, k, inliers, tmp_path / "m.png", height=600)
    col = canvas[:, 450].astype(int)  # right of the legend, between the line ends
    green = _runs(np.all(np.abs(col - figures.INLIER_RGB) < 60, 1))
    red = _runs(np.all(np.abs(col - figures.OUTLIER_RGB) < 60, 1))
    assert green + red == figures.MAX_DRAWN
    assert 80 < green < 120 and 30 < red < 70  # ~2/3 and ~1/3 of them
    assert cv2.imread(str(tmp_path / "m.png")).shape == canvas.shape
    none = figures.plot_matches(gray, gray, k, k, np.zeros(n, bool), height=600)[:, 450].astype(int)
    assert _runs(np.all(np.abs(none - figures.INLIER_RGB) < 60, 1)) == 0


def test_match_plots_use_colmaps_verification(corner):
    from roma_sfm.pipelines.tracks import read_index_matches

    out, _ = corner
    pairs = read_index_matches(out / "matches_idx.h5")
    (a, b), idx = max(pairs.items(), key=lambda kv: len(kv[1]))
    kept = figures.verified_inliers(out / "sfm" / "database.db", a, b, idx)
    assert kept is not None and 0.5 < kept.mean() <= 1
    swapped = figures.verified_inliers(out / "sfm" / "database.db", b, a, idx[:, ::-1])
    assert np.array_equal(kept, swapped)
    assert figures.verified_inliers(out / "sfm" / "database.db", a, "missing.jpg", idx) is None


def test_fundamental_inliers_find_the_outliers():
    rng = np.random.default_rng(0)
    X = rng.uniform([-2, -2, 4], [2, 2, 8], (300, 3))
    K = np.array([[300, 0, 200], [0, 300, 150], [0, 0, 1.0]])
    R, _ = cv2.Rodrigues(np.array([0.0, 0.2, 0.05]))
    x0 = (X @ K.T)[:, :2] / X[:, 2:]
    Xc = X @ R.T + [0.5, 0, 0]
    x1 = (Xc @ K.T)[:, :2] / Xc[:, 2:]
    bad = np.arange(300) < 60
    x1[bad] = rng.uniform(0, 400, (60, 2))
    ok = figures.fundamental_inliers(x0, x1, (400, 300))
    assert ok[~bad].mean() > 0.95 and ok[bad].mean() < 0.1


def test_warp_images_sample_b_in_a_frame():
    h, w = 60, 80
    ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / h, 1 - 1 / h, h), torch.linspace(-1 + 1 / w, 1 - 1 / w, w),
                            indexing="ij")
    grid = torch.stack([xs, ys], -1)
    b = np.zeros((120, 160, 3), np.uint8)
    b[:, 80:] = (0, 0, 255)  # right half blue
    a = np.zeros((120, 160, 3), np.uint8)
    same = MatchResult(torch.cat([grid, grid], -1), torch.ones(h, w), (160, 120), (160, 120))
    warp, cert = figures.warp_images(same, a, b, height=120)
    assert warp.shape == cert.shape == (120, 160, 3)
    assert warp[:, :70, 2].max() < 40 and warp[:, 90:, 2].min() > 200  # B as it is: identity warp
    mirrored = MatchResult(torch.cat([grid, grid * torch.tensor([-1.0, 1])], -1), torch.ones(h, w), (160, 120),
                           (160, 120))
    warp, _ = figures.warp_images(mirrored, a, b, height=120)
    assert warp[:, :70, 2].min() > 200 and warp[:, 90:, 2].max() < 40  # B mirrored into A's frame
    unsure = MatchResult(torch.cat([grid, grid], -1), torch.zeros(h, w), (160, 120), (160, 120))
    warp, cert = figures.warp_images(unsure, a, b, height=120)
    assert warp.min() > 250 and cert.max() < 20  # no certainty: white warp, black certainty


def test_roma_run_report_has_warp_pictures(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in (0, 1, 2):
        Image.open(IMAGES / f"{i:04d}.jpg").resize((240, 180)).save(images / f"{i}.jpg")
    m = matchers.get_matcher("roma", coarse_res=(112, 112), upsample_res=None)
    rep = reconstruct.main(images, tmp_path / "out", matcher=m, num_samples=2000, progress=False, num_threads=1,
                           gt_poses=None)
    assert len(rep.get("match_plots", [])) == 3
    # dense matches get the tighter verification of their kind, and the report says so
    assert rep["verification"]["ransac_max_error"] == mapping.verification_options["dense"]["ransac_max_error"] < 4
    assert rep["verification"]["calibration_max_error"] == 0.5 < mapping.DEFAULTS["calibration_max_error"]
    again = figures.matcher_of(tmp_path / "out" / "matches.h5")  # what the page used to draw them
    assert again is not None and again.coarse_res == (112, 112) and again.upsample_res is None
    assert again.weights_id == m.weights_id
    text = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    section = text[text.index("RoMa warp and certainty"):]
    assert section.count("<img src='data:image/jpeg") == 3 and "A = 0.jpg, B = 1.jpg" in section


def test_viz_command_draws_a_pair(tmp_path):
    out = tmp_path / "pair.png"
    res = CliRunner().invoke(app, ["viz", str(IMAGES / "0000.jpg"), str(IMAGES / "0002.jpg"), "-o", str(out),
                                   "--resolution", "224:none", "--num-samples", "1000"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    n_in, n_out = (int(v) for v in re.search(r"(\d+) / (\d+)", res.output.split("fundamental matrix")[1]).groups())
    assert n_in + n_out == 1000 and n_in > 500
    pic = cv2.imread(str(out))
    assert pic.shape[0] > 2 * 360 and pic.shape[1] >= 3 * 480 * 360 // 360  # match plot above A | warp | certainty
    res = CliRunner().invoke(app, ["viz", str(IMAGES / "0000.jpg"), str(IMAGES / "0002.jpg"), "-m", "sift"])
    assert res.exit_code == 2


def test_failed_run_page_says_why(tmp_path):
    (tmp_path / "images").mkdir()
    rep = reconstruct.main(tmp_path / "images", tmp_path / "out", progress=False)
    text = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert rep["status"] == "failed" and html.escape(rep["message"]) in text and "Plotly.newPlot" not in text


# ------------------------------------------------------------------------------------------------
# in a real browser (Debian's chromium; skipped where there is none)
# ------------------------------------------------------------------------------------------------
needs_browser = pytest.mark.skipif(chromium() is None, reason="no Chromium here: `apt-get install chromium` "
                                   "(or set ROMA_SFM_CHROMIUM) to open report.html in a headless browser")


@needs_browser
def test_browser_sees_console_errors(tmp_path):
    """The check below can fail: a page with an error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('broken'); undefinedFunction();</script></body></html>")
    page = open_page(bad, chromium(), settle=0.2)
    try:
        assert any("broken" in e for e in page.errors) and any("undefinedFunction" in e for e in page.errors)
    finally:
        page.close()


@needs_browser
def test_report_opens_in_headless_chromium(corner, tmp_path):
    out, rep = corner
    page = open_page(out / "report.html", chromium())
    try:
        assert page.errors == [], page.errors
        assert page.js("document.querySelectorAll('#view3d canvas').length") >= 1
        box = json.loads(page.js("JSON.stringify(document.getElementById('view3d').getBoundingClientRect())"))
        shot = page.screenshot(tmp_path / "view3d.png", {k: box[k] for k in ("x", "y", "width", "height")})
        name = rep["registered"][3]
        picked = page.js(f"document.getElementById('view3d').emit('plotly_click', {{points: [{{customdata: "
                         f"'{name}'}}]}}); document.getElementById('picked-name').textContent")
        assert picked == name  # a click on a camera shows its image name
    finally:
        page.close()
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)[70:]  # below the legend and the tool bar
    assert rgb.shape[0] > 400
    drawn = np.any(rgb < 235, axis=2)
    cameras = (rgb[..., 0] > 150) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
    assert drawn.mean() > 0.01, "the 3-D view is blank"
    assert cameras.sum() > 200 and (drawn & ~cameras).sum() > 1000  # frusta and points both drawn
