"""End to end on the project's own sample scene with the SIFT matcher: every image registered."""
import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from roma_sfm.pipelines import evaluate, mapping, reconstruct

SCENE = Path(__file__).resolve().parents[1] / "sample_scenes" / "corner"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("corner")
    report = reconstruct.main(SCENE / "images", out, matcher="sift", progress=False, num_threads=1)
    return out, report


def test_sample_scene_registers_all(run):
    out, report = run
    assert report["status"] == "ok", report["message"]
    assert report["images_registered"] == 8 and report["images_unregistered"] == []
    ev = report["evaluation"]  # poses_gt.txt next to images/ is found automatically
    assert ev["registered"] == 8 and ev["auc@5"] > 80, ev
    assert report["mean_reprojection_error"] < 1.0 and report["mean_track_length"] > 2.5
    assert set(report["times"]) >= {"pairs", "match", "tracks", "mapping", "total"}


def test_outputs_written(run):
    out, report = run
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["images_registered"] == 8 and "pycolmap" in on_disk["versions"]
    for f in ("cameras.bin", "images.bin", "points3D.bin", "cameras.txt", "images.txt", "points3D.txt"):
        assert (out / "sparse" / "0" / f).is_file(), f
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert rec.num_reg_images() == 8
    assert (out / "points.ply").stat().st_size > 0 and (out / "preview.png").is_file()
    assert len(list((out / "matches").glob("*.png"))) >= 1
    # EXIF 35 mm focal of the sample scene was used as the prior (GT 443.76 px)
    cam = next(iter(rec.cameras.values()))
    assert abs(cam.mean_focal_length() - 443.76) < 0.05 * 443.76


def test_no_undefined_two_view_geometries(run):
    out, _ = run
    with pycolmap.Database.open(out / "sfm" / "database.db") as db:
        tvgs = db.read_two_view_geometries()
        configs = [int(t.config) for t in (tvgs[1] if isinstance(tvgs, tuple) else [v for _, v in tvgs])]
    assert configs and int(pycolmap.TwoViewGeometryConfiguration.UNDEFINED) not in configs


def test_evaluate_is_perfect_on_ground_truth():
    gt = evaluate.read_poses_gt(SCENE / "poses_gt.txt")
    # relative poses equal to the GT up to scale have zero error
    errs = []
    names = sorted(gt)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = gt[names[i]], gt[names[j]]
            Rg = b.R @ a.R.T
            tg = b.t - Rg @ a.t
            errs.append(max(evaluate.relative_pose_error(Rg, tg, Rg, 3 * tg)))
    assert max(errs) < 1e-4  # degrees; arccos near 1 is imprecise
    assert evaluate.pose_auc([0.0] * 5, [5])[0] == pytest.approx(100.0)
    assert evaluate.pose_auc([np.inf] * 5, [5])[0] == 0.0
    assert evaluate.evaluate_reconstruction(None, SCENE / "poses_gt.txt")["auc@10"] == 0.0


def test_global_mapper_option(run, tmp_path):
    out, _ = run
    if not hasattr(pycolmap, "global_mapping"):
        pytest.skip("pycolmap without global_mapping")
    res = mapping.main(tmp_path / "sfm", SCENE / "images", out / "features.h5", out / "matches_idx.h5",
                       mapper="global", num_threads=1)
    assert res.reconstruction is not None and res.reconstruction.num_reg_images() >= 6
