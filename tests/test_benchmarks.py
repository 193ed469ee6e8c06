"""Two-view benchmarks (benchmarks/pose.py, benchmarks/planar.py): scoring on constructed inputs,
and a smoke run of each script on 2 real pairs when ../shared/data is present."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from bench_loader import load as load_benchmark

pose = load_benchmark("pose")
homography = load_benchmark("planar")
common = load_benchmark("common")
DATA = common.DATA
PAIRS = DATA / "pairs" / "strecha_gap3.txt"
HOMOG = DATA / "homography"
needs_pairs = pytest.mark.skipif(not PAIRS.is_file(), reason=f"shared evaluation data not found at {PAIRS}")
needs_homog = pytest.mark.skipif(not any(HOMOG.glob("*_vpts.mat")) if HOMOG.is_dir() else True,
                                 reason=f"shared homography data not found at {HOMOG}")


# ---------------------------------------------------------------------------------------------- pose
def _rot(axis, deg):
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    return cv2.Rodrigues(axis * np.deg2rad(deg))[0]


def _synthetic_pair(rng, T_true, K, n=300):
    """Matches in COLMAP convention (+0.5) of random 3D points seen by cam0 (identity) and cam1 (T_true)."""
    X = np.c_[rng.uniform(-2, 2, n), rng.uniform(-1.5, 1.5, n), rng.uniform(4, 8, n)]
    X1 = X @ T_true[:3, :3].T + T_true[:3, 3]

    def proj(P):
        p = P @ K.T
        return p[:, :2] / p[:, 2:]
    return proj(X) + 0.5, proj(X1) + 0.5


def test_pose_auc_of_known_errors():
    # SuperGlue's AUC: recall curve through (0, 0), linear to the first error, steps after
    assert np.allclose(pose.pose_auc([3.0], (5, 10, 20)), [70.0, 85.0, 92.5])
    assert np.allclose(pose.pose_auc([3.0] * 4, (5,)), [(3 * 0.25 / 2 + 2) / 5 * 100])  # ramp to 1/4, then 1
    assert np.allclose(pose.pose_auc([3.0, np.inf], (5,)), [35.0])  # a failure halves the recall
    assert np.allclose(pose.pose_auc([0.0] * 3, (5, 10, 20)), [100.0] * 3)


def test_pair_pose_error_exact_and_known_offset():
    rng = np.random.default_rng(0)
    K = np.array([[690.0, 0, 380.0], [0, 690.0, 251.0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = _rot([0.1, 1.0, 0.05], 8.0)
    T[:3, 3] = [-1.0, 0.05, 0.2]
    k0, k1 = _synthetic_pair(rng, T, K)
    pair = {"name0": "a", "name1": "b", "rot0": 0, "rot1": 0, "K0": K, "K1": K, "T_0to1": T}
    cv2.setRNGSeed(0)
    assert pose.pair_pose_error(pair, k0, k1) < 0.05
    # GT off by a 3 deg rotation about an axis perpendicular to t: rotation and t-angle errors are both 3 deg
    axis = np.cross(T[:3, 3], [0, 0, 1.0])
    D = _rot(axis, 3.0)
    T_gt = np.eye(4)
    T_gt[:3, :3], T_gt[:3, 3] = D @ T[:3, :3], D @ T[:3, 3]
    err = pose.pair_pose_error({**pair, "T_0to1": T_gt}, k0, k1)
    assert err == pytest.approx(3.0, abs=0.05)
    assert np.allclose(pose.pose_auc([err], pose.THRESHOLDS), [70.0, 85.0, 92.5], atol=0.5)
    assert pose.pair_pose_error(pair, k0[:4], k1[:4]) == np.inf  # too few matches: failure


def test_pose_survives_an_opencv_ransac_assertion(monkeypatch):
    """OpenCV 5.1's RANSAC essential matrix asserts on some point sets: the estimate falls back to USAC."""
    from roma_sfm.pipelines import evaluate

    rng = np.random.default_rng(3)
    K = np.array([[700.0, 0, 384.0], [0, 700.0, 256.0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = _rot([0.2, 1.0, 0.0], 6.0), [-1.0, 0.1, 0.1]
    k0, k1 = _synthetic_pair(rng, T, K)
    real, methods = cv2.findEssentialMat, []

    def flaky(*args, method=cv2.RANSAC, **kw):
        methods.append(method)
        if method == cv2.RANSAC:
            raise cv2.error("solvePoly assertion")
        return real(*args, method=method, **kw)
    monkeypatch.setattr(evaluate.cv2, "findEssentialMat", flaky)
    pair = {"name0": "a", "name1": "b", "rot0": 0, "rot1": 0, "K0": K, "K1": K, "T_0to1": T}
    assert pose.pair_pose_error(pair, k0, k1) < 0.1
    assert methods == [cv2.RANSAC, cv2.USAC_DEFAULT]


# ---------------------------------------------------------------------------------------------- homography
def test_transfer_error_and_summary():
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 500, (10, 2))
    assert homography.transfer_error(np.eye(3), pts, pts) == 0.0
    H = np.array([[1, 0, 3.0], [0, 1, 4.0], [0, 0, 1]])  # B -> A: shift by (3, 4)
    assert homography.transfer_error(H, pts + [3, 4], pts) == pytest.approx(0.0, abs=1e-9)
    assert homography.transfer_error(H, pts, pts) == pytest.approx(5.0)
    assert homography.transfer_error(None, pts, pts) == np.inf
    s = homography.summarize([1.0, 4.0, 7.0, np.inf])
    assert (s["<3px"], s["<5px"], s["<10px"]) == (25.0, 50.0, 75.0) and s["median"] == 5.5


def test_estimate_homography_from_colmap_convention_matches():
    rng = np.random.default_rng(2)
    H = np.array([[0.9, 0.05, 40.0], [-0.1, 1.1, 12.0], [1e-4, -5e-5, 1.0]])  # B -> A, 0-based
    kB = rng.uniform(0, 600, (400, 2))
    p = np.c_[kB, np.ones(len(kB))] @ H.T
    kA = p[:, :2] / p[:, 2:]
    kA[:80] = rng.uniform(0, 600, (80, 2))  # 20 % outliers
    val_B = rng.uniform(50, 550, (8, 2))
    q = np.c_[val_B, np.ones(8)] @ H.T
    val_A = q[:, :2] / q[:, 2:]
    H_est = homography.estimate_homography(kA + 0.5, kB + 0.5)  # matchers give COLMAP pixels
    assert homography.transfer_error(H_est, val_A, val_B) < 1e-3
    assert homography.estimate_homography(kA[:3] + 0.5, kB[:3] + 0.5) is None
    # the 80 replaced points are outliers unless they land within 3 px by chance
    share = homography.gt_inlier_share(H, kA + 0.5, kB + 0.5)
    assert 0.8 <= share < 0.81
    assert homography.gt_inlier_share(H, kA + 1.5, kB + 0.5, px=0.5) < 0.01  # 1 px off everywhere
    assert np.isnan(homography.gt_inlier_share(None, kA, kB))


@needs_homog
def test_gt_homographies_fit_validation_points():
    pairs = homography.list_pairs(HOMOG)
    assert len(pairs) == 16
    for p in pairs:
        assert p.image_A.is_file() and p.image_B.is_file() and len(p.pts_A) >= 4
        assert homography.transfer_error(p.H_gt, p.pts_A, p.pts_B) < 1e-6, p.name


# ---------------------------------------------------------------------------------------------- smoke runs
@needs_pairs
def test_pose_main_smoke(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- pose-table -->\nold\n<!-- /pose-table -->\nrest\n")
    out = pose.main(["--limit", "2", "--matcher", "sift", str(tmp_path / "missing.safetensors"), "--quiet",
                     "--threads", "1", "--write-readme", "--readme", str(readme)])
    r = out["results"]["sift"]
    assert r["pairs"] == 2 and r["failed"] == 0 and r["auc@20"] > 50
    assert "| missing.safetensors | not run" in out["table"]
    text = readme.read_text()
    assert "| sift | 2 |" in text and "old" not in text and text.endswith("rest\n")


def test_homography_draws_match_once_and_score_every_seed():
    """--draws: one match per pair, one sample and RANSAC per seed; the shares are over (pair, draw)."""
    rng = np.random.default_rng(3)
    H = np.array([[1.1, 0.02, 15.0], [-0.03, 0.95, 8.0], [5e-5, 0.0, 1.0]])  # B -> A, 0-based
    kB = rng.uniform(0, 500, (300, 2))
    q = np.c_[kB, np.ones(len(kB))] @ H.T
    kA = q[:, :2] / q[:, 2:]
    val_B = rng.uniform(50, 450, (6, 2))
    v = np.c_[val_B, np.ones(6)] @ H.T
    pairs = [homography.HomographyPair(n, Path("a.png"), Path("b.png"), v[:, :2] / v[:, 2:], val_B, H) for n in "pq"]

    class Fake:  # seed 10 draws the true matches, any other seed three matches (no H)
        calls = 0

        def draws(self, a, b, seeds):
            self.calls += 1
            return [(kA + 0.5, kB + 0.5) if s == 10 else (kA[:3] + 0.5, kB[:3] + 0.5) for s in seeds]

    fake = Fake()
    r = homography.evaluate(fake, pairs, seed=10, draws=2)
    assert fake.calls == 2 and r["draws"] == 2
    assert all(e[0] < 1e-3 and np.isinf(e[1]) for e in r["errors"].values())
    assert r["<3px"] == pytest.approx(50.0) and r["failed"] == pytest.approx(1.0)  # 2 of 4 trials, per draw


@needs_homog
def test_homography_main_smoke():
    out = homography.main(["--names", "adam", "city", "--matcher", "sift", "--quiet", "--threads", "1"])
    r = out["results"]["sift"]
    assert r["pairs"] == 2 and set(r["errors"]) == {"adam", "city"}
    assert r["draws"] == homography.DRAWS and all(len(e) == r["draws"] for e in r["errors"].values())
    assert all(np.isfinite(e).all() for e in r["errors"].values())
    assert all(0 < s <= 1 for s in r["gt_inlier_share"].values())  # SIFT solves both pairs
    assert "| sift | 2 |" in out["table"]


# ----------------------------------------------------------------------------------------- pair gate
def test_pair_gate_rule_sits_in_the_middle_of_the_gap():
    gate = load_benchmark("pair_gate")
    rng = np.random.default_rng(0)
    pos, neg = rng.uniform(0.2, 0.6, 200), rng.uniform(0.0, 0.05, 200)
    t = gate.choose(pos, neg)
    lo, hi = np.quantile(neg, gate.NEG_Q), np.quantile(pos, gate.POS_Q)
    assert lo < t < hi and abs(np.log(t / lo) - np.log(hi / t)) < 0.25  # equally far from both, in log
    assert (neg < t).mean() >= gate.NEG_Q and (pos >= t).mean() >= 1 - gate.POS_Q
    # negatives that score like the positives: no gap, the best balanced accuracy wins
    t2 = gate.choose(np.full(10, 0.3), np.r_[np.zeros(50), np.full(50, 0.5)])
    assert 0.0 < t2 <= 0.3


def test_matcher_spec_takes_the_cli_resolution():
    # 'roma@COARSE[:FINE]' loads the matcher as `--resolution COARSE[:FINE]` would
    from roma_sfm.pipelines.matchers import MatcherSpecError

    one = common.build_matcher("roma-tiny@224:none", "cpu")
    assert one.coarse_res == (224, 224) and one.upsample_res is None
    two = common.build_matcher("roma-tiny@224:336", "cpu")
    assert two.coarse_res == (224, 224) and two.upsample_res == (336, 336)
    assert common.label("roma@448:none") == "roma@448:none"
    assert common.with_resolution("sift") == "sift"  # no @: the spec goes to the pipeline as is
    # '~ZOOM' as `--zoom ZOOM`, alone or after a resolution
    assert common.build_matcher("roma-tiny~1.5", "cpu").zoom == 1.5
    z = common.build_matcher("roma-tiny@224:none~0", "cpu")
    assert z.zoom == 0 and z.coarse_res == (224, 224)
    # '+PRECISION' as `--precision PRECISION`, last
    assert common.build_matcher("roma-tiny+bf16", "cpu").precision == "bf16"
    p = common.build_matcher("roma-tiny@224:none~0+bf16", "cpu")
    assert (p.precision, p.zoom, p.upsample_res) == ("bf16", 0, None)
    assert common.build_matcher("roma-tiny~0", "cpu").precision == "fp32"
    with pytest.raises(MatcherSpecError):
        common.build_matcher("roma-tiny@225", "cpu")
    with pytest.raises(MatcherSpecError, match="precision"):
        common.build_matcher("roma-tiny+fp8", "cpu")


# --------------------------------------------------------------------------------------------- remap
def test_remap_ground_truth_epipolar_error_is_zero_on_true_matches_and_grows_with_an_offset():
    """benchmarks/remap.py measures index matches in COLMAP pixels against GT cameras (pixel centres
    at integers): true projections score ~0, and a 2 px shift across the epipolar lines in one image
    scores about 2 / sqrt(2) (the Sampson distance spreads the error over both images)."""
    remap = load_benchmark("remap")
    evaluate = remap.evaluate
    rng = np.random.default_rng(4)
    K = np.array([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]])
    R, t = _rot([0, 1, 0.2], 12), np.array([-1.0, 0.1, 0.2])
    x0, x1 = _synthetic_pair(rng, np.r_[np.c_[R, t], [[0, 0, 0, 1]]], K)
    c0, c1 = evaluate.GTCamera(K, np.eye(3), np.zeros(3)), evaluate.GTCamera(K, R, t)
    F = remap.gt_fundamental(c0, c1)
    assert np.sqrt(remap.mapping.sampson_errors(F, x0, x1)).max() < 1e-6
    line = np.c_[x0, np.ones(len(x0))] @ F.T  # epipolar lines in image 1
    normal = line[:, :2] / np.linalg.norm(line[:, :2], axis=1, keepdims=True)
    d = np.sqrt(remap.mapping.sampson_errors(F, x0, x1 + 2.0 * normal))
    assert np.allclose(np.median(d), 2.0 / np.sqrt(2), atol=0.2)


def test_remap_builds_tracks_with_the_pipelines_settings_of_the_matches_kind():
    """Sparse and dense matches get their own cell size and pair gate (as reconstruct does), and an
    option's values override them; remapping SIFT matches with the dense cell once skewed probes."""
    remap = load_benchmark("remap")
    tracks = remap.tracks
    sparse, dense = remap.tracks_kwargs("sparse", {}), remap.tracks_kwargs("dense", {})
    for kind, kwargs in (("sparse", sparse), ("dense", dense)):
        assert kwargs == {k: tracks.confs[kind][k] for k in ("cell_size", "min_pair_score")}
    assert sparse["cell_size"] != dense["cell_size"]
    assert remap.tracks_kwargs("sparse", {"cell_size": 0.5, "refine": "mean"}) == {
        "cell_size": 0.5, "min_pair_score": tracks.confs["sparse"]["min_pair_score"], "refine": "mean"}
    # principal points: refined on shared cameras for sparse runs, as reconstruct does; centred for dense
    assert remap.refined_principal_points("sparse") == remap.principal_points.DEFAULTS["min_images"] > 0
    assert remap.refined_principal_points("dense") == 0
