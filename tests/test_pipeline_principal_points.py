"""Principal points of shared cameras: the SIFT pass for dense matches, and the database's cameras."""
import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest

from roma_sfm.pipelines import h5io, mapping, principal_points, reconstruct
from synthetic import LabelledSift  # SIFT's matches labelled dense: treated as RoMa's

SCENE = Path(__file__).resolve().parents[1] / "sample_scenes" / "corner"


def _sizes():
    sizes = {f"a/{i}.jpg": (480, 360) for i in range(5)}
    sizes.update({f"a/big{i}.jpg": (640, 480) for i in range(2)})
    sizes.update({f"b/{i}.jpg": (480, 360) for i in range(5)})
    return sizes


def test_shared_camera_images_group_as_the_database_does(tmp_path):
    sizes = _sizes()  # no such files: no EXIF, every focal the default guess
    auto = principal_points.shared_camera_images(sizes, tmp_path, "auto", min_images=5)
    assert auto == sorted(n for n in sizes if "big" not in n)  # folder a at 480x360, folder b
    assert principal_points.shared_camera_images(sizes, tmp_path, "auto", min_images=6) == []
    assert principal_points.shared_camera_images(sizes, tmp_path, "per_image", min_images=1) == sorted(sizes)
    assert principal_points.shared_camera_images(sizes, tmp_path, "per_image", min_images=2) == []
    # one camera per size when "single" meets two sizes
    single = principal_points.shared_camera_images(sizes, tmp_path, "single", min_images=10)
    assert single == sorted(n for n in sizes if "big" not in n)
    assert principal_points.shared_camera_images(sizes, tmp_path, "auto", min_images=0) == []


def test_database_cameras_start_at_the_given_principal_point(tmp_path):
    sizes = _sizes()
    kps = {n: np.random.default_rng(i).uniform(0, 300, (20, 2)).astype(np.float32) for i, n in enumerate(sizes)}
    features = tmp_path / "features.h5"
    with h5py.File(features, "w") as f:
        h5io.write_features(f, kps, {n: np.ones(20, np.float32) for n in kps}, sizes, 2.0, "none", "run")
    assert h5io.read_image_sizes(features) == sizes
    ids = mapping.create_database(tmp_path / "db.db", tmp_path, features, "auto",
                                  principal_points={"a/3.jpg": (243.5, 177.25), "nowhere.jpg": (1.0, 2.0)})
    with pycolmap.Database.open(tmp_path / "db.db") as db:
        cams = {im.name: db.read_camera(im.camera_id) for im in db.read_all_images()}
    assert set(ids) == set(sizes) and len({c.camera_id for c in cams.values()}) == 3
    for name, cam in cams.items():
        expected = (243.5, 177.25) if name.startswith("a/") and "big" not in name else (cam.width / 2, cam.height / 2)
        assert (cam.principal_point_x, cam.principal_point_y) == pytest.approx(expected), name


def test_mode_by_kind_and_bad_mode():
    assert principal_points.mode_for("sparse") == "refine" and principal_points.mode_for("dense") == "sift"
    assert principal_points.mode_for("dense", "centre") == "centre"
    with pytest.raises(ValueError, match="centre"):
        principal_points.mode_for("dense", "middle")


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense-pp")
    report = reconstruct.main(SCENE / "images", out, matcher=LabelledSift("dense", "dense-sift"), progress=False, num_threads=1,
                              min_pair_score=0.0)
    return out, report


def _camera(path: Path) -> pycolmap.Camera:
    (cam,) = pycolmap.Reconstruction(str(path)).cameras.values()
    return cam


def test_dense_matches_take_the_principal_point_from_a_sift_pass(dense_run):
    out, report = dense_run
    assert report["status"] == "ok" and report["images_registered"] == 8, report["message"]
    assert report["config"]["principal_point"] == "sift" and "principal points (SIFT)" in report["times"]
    assert report["principal_points"]["images"] == report["principal_points"]["measured"] == 8
    measured = principal_points.read(report["principal_points"]["file"])
    assert sorted(measured) == sorted(p.name for p in (SCENE / "images").iterdir())
    (pp,) = set(measured.values())  # one camera
    assert (out / "principal_points" / "matches.h5").is_file()
    assert h5io.matches_kind(out / "principal_points" / "matches.h5") == "sparse"
    # the dense model kept the point the SIFT model refined: off the exact centre, near the true one
    cam = _camera(out / "sparse" / "0")
    assert (cam.principal_point_x, cam.principal_point_y) == pytest.approx(pp, abs=1e-9)
    assert 0 < max(abs(pp[0] - 240.0), abs(pp[1] - 180.0)) < 1.0
    (row,) = report["cameras"]
    assert row["principal_point_offset"] == pytest.approx([pp[0] - 240.0, pp[1] - 180.0])
    assert report["evaluation"]["auc@5"] > 80


@pytest.mark.parametrize("setting, sift_pass", [({"principal_point": "centre"}, False),
                                                ({"camera_mode": "per_image"}, True),
                                                ({"principal_point_min_images": 0}, False)])
def test_no_sift_pass_or_no_shared_camera_keeps_the_centre(dense_run, tmp_path, setting, sift_pass):
    out, _ = dense_run
    config = replace(reconstruct.ReconstructConfig(min_pair_score=0.0, num_threads=1, progress=False), **setting)
    mo = reconstruct.map_matches(SCENE / "images", tmp_path, out / "matches.h5", config)
    assert mo.failure is None and mo.mapping.principal_point_shifts == {}
    assert (mo.principal_points is not None) == sift_pass
    if sift_pass:  # a camera per image: no camera is shared, nothing to measure, no SIFT matching
        assert mo.principal_points.num_images == 0 and not (tmp_path / "principal_points").exists()
    for cam in mo.mapping.reconstruction.cameras.values():
        assert (cam.principal_point_x, cam.principal_point_y) == (240.0, 180.0)


def test_roma_sfm_map_runs_the_sift_pass_on_the_stored_pairs(dense_run, tmp_path):
    """Without a pairs list (``roma-sfm map``) the pass takes the matches file's pairs; a second run
    resumes its SIFT matches."""
    out, report = dense_run
    config = reconstruct.ReconstructConfig(min_pair_score=0.0, num_threads=1, progress=False)
    mo = reconstruct.map_matches(SCENE / "images", tmp_path, out / "matches.h5", config)
    assert mo.principal_points.num_images == 8 and mo.principal_points.num_registered == 8
    sift = tmp_path / "principal_points" / "matches.h5"
    assert len(h5io.list_pairs(sift)) == report["num_pairs"]
    stamp = sift.stat().st_mtime_ns
    again = reconstruct.map_matches(SCENE / "images", tmp_path, out / "matches.h5", config)
    assert sift.stat().st_mtime_ns == stamp  # nothing left to match
    assert again.principal_points.points == mo.principal_points.points
    saved = json.loads((tmp_path / "principal_points" / principal_points.FILE_NAME).read_text())
    assert {n: tuple(v) for n, v in saved.items()} == again.principal_points.points
