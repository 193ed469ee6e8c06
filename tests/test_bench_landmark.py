"""benchmarks/landmark.py: the pseudo ground truth's pairs agree with its own observations."""
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from bench_loader import load as load_benchmark

from roma_sfm.pipelines.evaluate import read_poses_gt

landmark = load_benchmark("landmark")
IMAGES = landmark.DATA / "demo" / "sacre-coeur"


def skew(t: np.ndarray) -> np.ndarray:
    return np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])


@pytest.mark.skipif(not IMAGES.is_dir(), reason=f"shared evaluation data absent: {IMAGES}")
def test_pairs_fit_the_pseudo_ground_truths_observations(tmp_path: Path):
    rec = landmark.build_pseudo_gt(IMAGES, tmp_path, num_threads=2)
    pairs = landmark.write_ground_truth(rec, IMAGES, tmp_path, min_covisible=20)
    assert len(pairs) >= 20
    assert all(p["scale"] >= 1.0 for p in pairs) and max(p["scale"] for p in pairs) > 1.5  # photos 2x apart exist
    by_name = {im.name: im for im in rec.images.values()}
    poses = read_poses_gt(tmp_path / IMAGES.name / "poses_gt.txt")
    assert set(poses) == set(by_name)
    for pair in pairs[:10]:
        im0, im1 = by_name[Path(pair["name0"]).name], by_name[Path(pair["name1"]).name]
        assert np.allclose(poses[im0.name].K, pair["K0"]) and np.allclose(poses[im1.name].K, pair["K1"])
        shared = {}
        for im, side in ((im0, 0), (im1, 1)):
            for p2d in im.points2D:
                if p2d.has_point3D():
                    shared.setdefault(p2d.point3D_id, [None, None])[side] = p2d.xy
        obs = np.array([v for v in shared.values() if v[0] is not None and v[1] is not None], np.float64)
        assert len(obs) >= 20
        cams = [rec.cameras[im0.camera_id], rec.cameras[im1.camera_id]]
        # the pairs' convention: undistorted, pixel centres at integers
        x0, x1 = (landmark.undistort(cams[i], obs[:, i]) - 0.5 for i in (0, 1))
        T = pair["T_0to1"]
        F = np.linalg.inv(pair["K1"]).T @ skew(T[:3, 3]) @ T[:3, :3] @ np.linalg.inv(pair["K0"])
        h0, h1 = np.c_[x0, np.ones(len(x0))], np.c_[x1, np.ones(len(x1))]
        line = h0 @ F.T
        dist = np.abs(np.sum(h1 * line, 1)) / np.linalg.norm(line[:, :2], axis=1)
        assert np.median(dist) < 1.0, pair["name0"]
    # COLMAP's radial model puts a point at (1 + k r^2) times its pinhole radius: undistorting a corner
    # moves it towards the principal point when k > 0, away when k < 0, and leaves the point itself
    for cam in rec.cameras.values():
        pp = cam.params[1:3]
        assert np.allclose(landmark.undistort(cam, pp[None]), pp[None], atol=1e-6)
        moved = np.linalg.norm(landmark.undistort(cam, np.zeros((1, 2))) - pp) - np.linalg.norm(pp)
        assert np.sign(moved) == -np.sign(cam.params[3]) or abs(cam.params[3]) < 1e-4


def test_content_scale_is_the_ratio_of_focal_over_depth_folded():
    z = np.array([2.0, 3.0, 4.0])
    # the same points twice as far in a camera of the same focal: half the size there
    assert landmark.content_scale(1000.0, z, 1000.0, 2 * z) == pytest.approx(2.0)
    assert landmark.content_scale(1000.0, 2 * z, 1000.0, z) == pytest.approx(2.0)
    # a longer focal at the same depth shows them larger by the focal ratio
    assert landmark.content_scale(500.0, z, 1500.0, z) == pytest.approx(3.0)
    assert landmark.content_scale(800.0, z, 800.0, z) == pytest.approx(1.0)


def test_intrinsics_and_undistort_keep_fx_and_fy_apart():
    """A camera model with fx != fy: K carries both, and undistorting a distortion-free camera is
    the identity (the pinhole part is re-applied with each axis's own focal)."""
    cam = pycolmap.Camera(model="PINHOLE", width=640, height=480, params=[500.0, 700.0, 320.0, 240.0])
    K = landmark.intrinsics(cam)
    assert np.allclose(K, [[500, 0, 319.5], [0, 700, 239.5], [0, 0, 1]])
    pts = np.array([[10.0, 20.0], [600.0, 400.0], [320.0, 240.0]])
    assert np.allclose(landmark.undistort(cam, pts), pts, atol=1e-6)


def test_split_rows_scores_each_side_of_the_split():
    results = {"m": {"errors": [0.0, 0.0, 90.0, 90.0]}}
    lines = landmark.split_rows(results, [1.0, 1.2, 2.0, 3.0], 1.5)
    assert "(2)" in lines[0] and lines[2].startswith("| m |")
    near, far = lines[2].split("|")[2:4]
    assert near.strip() == "100.0 / 100.0 / 100.0" and far.strip() == "0.0 / 0.0 / 0.0"


def test_pseudo_gt_cache_is_rebuilt_when_its_key_changes(tmp_path: Path, monkeypatch):
    """A cached model is reused while pycolmap and the images are the same, rebuilt otherwise."""
    import json

    images = tmp_path / "photos"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (images / name).write_bytes(b"x" * 10)

    class Rebuilt(Exception):
        pass

    def no_colmap(*args, **kwargs):
        raise Rebuilt

    monkeypatch.setattr(landmark, "sift_database", no_colmap)
    cache = tmp_path / "work" / "photos" / "pseudo_gt"
    (cache / "model").mkdir(parents=True)
    pycolmap.Reconstruction().write(cache / "model")  # an empty model: reused, it registers 0 of 2
    (cache / "key.json").write_text(json.dumps(landmark.cache_key(images)))
    with pytest.raises(RuntimeError, match="registers 0 of 2"):
        landmark.build_pseudo_gt(images, tmp_path / "work")
    stale = dict(landmark.cache_key(images), pycolmap="0.0.0")
    (cache / "key.json").write_text(json.dumps(stale))
    with pytest.raises(Rebuilt):
        landmark.build_pseudo_gt(images, tmp_path / "work")
    assert not (cache / "key.json").exists()  # a failed rebuild leaves no key: the next run rebuilds
    before = landmark.cache_key(images)
    (images / "b.jpg").write_bytes(b"y" * 11)  # a changed image changes the key
    assert landmark.cache_key(images) != before
