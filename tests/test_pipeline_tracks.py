"""Tracks: shared keypoints, one-to-one matches, file layout, sub-pixel recovery measured."""
from itertools import combinations

import h5py
import numpy as np

from roma_sfm.pipelines import match, tracks
from bench_loader import load as load_benchmark
from roma_sfm.pipelines import h5io
from synthetic import HomographyMatcher, make_homography_scene, transfer


def test_subpixel_recovery_beats_cell_centres():
    res = load_benchmark("subpixel").measure_subpixel(cell_size=8.0, num_images=3, num_samples=8000)
    assert res["flow"]["mean"] < 0.35 * res["none"]["mean"], res
    assert res["mean"]["mean"] <= res["none"]["mean"] * 1.05
    noisy = load_benchmark("subpixel").measure_subpixel(cell_size=4.0, num_images=4, num_samples=8000, noise=0.3, seed=1)
    assert noisy["flow"]["mean"] < noisy["none"]["mean"], noisy


def test_sparse_matches_keep_exact_positions():
    """Sparse keypoints reused across pairs (SIFT-like) are recovered exactly by refine='mean'/'flow'."""
    rng = np.random.default_rng(0)
    pts = {n: rng.random((300, 2)) * [400, 300] for n in "abc"}
    pm = {(a, b): (pts[a][:200].astype(np.float32), pts[b][:200].astype(np.float32), np.ones(200, np.float32))
          for a, b in [("a", "b"), ("a", "c"), ("b", "c")]}
    kps, _, m = tracks.build_tracks(pm, {n: (400, 300) for n in "abc"}, cell_size=2.0, refine="flow",
                                    affine_cell=tracks.confs["sparse"]["affine_cell"])
    for (a, b), (idx, _) in m.items():
        assert len(idx) > 190
        # matched keypoints are the original points of the same index
        d = np.linalg.norm(kps[a][idx[:, 0]][:, None] - pts[a][None, :200], axis=2).argmin(1)
        e = np.linalg.norm(kps[b][idx[:, 1]][:, None] - pts[b][None, :200], axis=2).argmin(1)
        assert (d == e).mean() > 0.98
        err = np.linalg.norm(kps[a][idx[:, 0]] - pts[a][d], axis=1)
        assert np.percentile(err, 95) < 1e-3  # a few cells hold two points: those are merged


def test_flow_takes_the_linear_part_from_the_coarse_cell_across_zoom():
    """Views 1.8x and 0.6x apart, dense samples (one to three per cell per pair): the linear part of the
    per-cell maps comes from the coarse cells, so the keypoints land where the map puts them; leaning
    on the identity (``affine_cell=0``) leaves them more than a pixel off (median)."""
    rng = np.random.default_rng(3)
    size = (480, 360)
    maps = {"a": np.eye(3), "b": np.array([[1.8 * np.cos(0.3), -1.8 * np.sin(0.3), -90], [1.8 * np.sin(0.3), 1.8 * np.cos(0.3), -160], [0, 0, 1]]),
            "c": np.array([[0.6, 0.1, 120], [-0.05, 0.7, 60], [0, 0, 1]])}  # world (= a) -> image

    def to(n, xy_a):  # a's pixels -> n's pixels
        return xy_a @ maps[n][:2, :2].T + maps[n][:2, 2]

    pm = {}
    for x, y in [("a", "b"), ("a", "c"), ("b", "c")]:
        pts = rng.random((60000, 2)) * size  # in x, kept where y sees them
        world = (pts - maps[x][:2, 2]) @ np.linalg.inv(maps[x][:2, :2]).T
        q = to(y, world)
        ok = (q >= 0).all(1) & (q < size).all(1)
        ok &= np.arange(len(ok)) < np.flatnonzero(ok)[min(9999, ok.sum() - 1)] + 1  # ~10000 samples
        pm[(x, y)] = (pts[ok].astype(np.float32), q[ok].astype(np.float32), np.ones(ok.sum(), np.float32))
    errs = {}
    for affine_cell in (0.0, 16.0):
        kps, _, m = tracks.build_tracks(pm, {n: size for n in maps}, cell_size=4.0, affine_cell=affine_cell)
        e = []
        for (x, y), (idx, _) in m.items():
            world = (kps[x][idx[:, 0]] - maps[x][:2, 2]) @ np.linalg.inv(maps[x][:2, :2]).T
            e.append(np.linalg.norm(to(y, world) - kps[y][idx[:, 1]], axis=1))
        errs[affine_cell] = float(np.median(np.concatenate(e)))
    assert errs[16.0] < 0.05 and errs[16.0] < 0.3 * errs[0.0], errs


def test_files_and_transfer_error(tmp_path):
    Hs = make_homography_scene(tmp_path / "images", num_images=3, size=(240, 180), seed=5)
    m = HomographyMatcher(Hs, (240, 180))
    pairs = list(combinations(sorted(Hs), 2))
    match.main(pairs, tmp_path / "images", tmp_path / "m.h5", m, num_samples=5000, progress=False)
    errs = {}
    for refine in ("none", "flow"):
        st = tracks.main(tmp_path / "m.h5", tmp_path / "f.h5", tmp_path / "mi.h5", cell_size=6.0, refine=refine)
        assert st.num_images == 3 and st.num_pairs == 3
        errs[refine] = tracks.transfer_error(tmp_path / "f.h5", tmp_path / "mi.h5",
                                             lambda a, b, xy: transfer(Hs[a], Hs[b], xy))["mean"]
    assert errs["flow"] < 0.5 * errs["none"], errs
    with h5py.File(tmp_path / "f.h5", "r") as f, h5py.File(tmp_path / "mi.h5", "r") as g:
        assert f["000.png/keypoints"].dtype == np.float32 and tuple(f["000.png"].attrs["image_size"]) == (240, 180)
        grp = g["000.png/001.png"]
        m0, idx = grp["matches0"][()], grp["matches"][()]
        assert len(m0) == len(f["000.png/keypoints"]) and (m0[idx[:, 0]] == idx[:, 1]).all()
        # one-to-one
        assert len(np.unique(idx[:, 0])) == len(idx) and len(np.unique(idx[:, 1])) == len(idx)


def test_max_keypoints():
    rng = np.random.default_rng(0)
    p = (rng.random((5000, 2)) * [300, 200]).astype(np.float32)
    kps, _, _ = tracks.build_tracks({("a", "b"): (p, p + 1, np.ones(5000, np.float32))},
                                    {"a": (300, 200), "b": (300, 200)}, cell_size=2.0, max_keypoints=500)
    assert len(kps["a"]) == 500 and len(kps["b"]) == 500


def test_pair_score_is_certainty_times_epipolar_inliers():
    """Matches of one rigid view change keep their mean certainty; a smooth but wrong warp (the
    matcher's guess between views that share nothing) fits no epipolar geometry and scores ~0."""
    rng = np.random.default_rng(0)
    X = np.c_[rng.uniform(-2, 2, (3000, 2)), rng.uniform(4, 8, 3000)]  # points in front of both cameras
    K = np.array([[500.0, 0, 384], [0, 500, 256], [0, 0, 1]])
    a, th = np.array([0.3, 0, 0]), np.radians(8)
    R = np.array([[np.cos(th), 0, np.sin(th)], [0, 1, 0], [-np.sin(th), 0, np.cos(th)]])

    def project(P):
        x = P @ K.T
        return (x[:, :2] / x[:, 2:]).astype(np.float32)

    k0, k1 = project(X), project(X @ R.T + a)
    certainty = rng.uniform(0.4, 0.8, 3000).astype(np.float32)
    good = tracks.pair_score(k0, k1 + rng.normal(0, 0.2, k1.shape).astype(np.float32), certainty, (768, 512), (768, 512))
    assert abs(good - certainty.mean()) < 0.03, good
    # the same keypoints sent through a smooth random field of 20-px swirls: no one F explains them
    swirl = k0 + 20 * np.stack((np.sin(k0[:, 1] / 40), np.cos(k0[:, 0] / 35)), 1).astype(np.float32)
    wrong = tracks.pair_score(k0, swirl, certainty, (768, 512), (768, 512))
    assert wrong < 0.3 * good, (wrong, good)
    assert tracks.pair_score(k0[:5], k1[:5], certainty[:5], (768, 512), (768, 512)) == 0.0  # too few to tell


def test_pairs_below_the_pair_score_are_left_out(tmp_path):
    """A pair whose matches the matcher itself doubts (views that share nothing) adds no keypoints."""
    rng = np.random.default_rng(0)
    p = (rng.random((2000, 2)) * [300, 200]).astype(np.float32)
    pm = {("a", "b"): (p, p + 1, np.full(2000, 0.8, np.float32)),
          ("a", "c"): (p, p[::-1].copy(), np.full(2000, 0.1, np.float32))}
    with h5py.File(tmp_path / "m.h5", "w") as f:
        for (a, b), (k0, k1, sc) in pm.items():
            g = f.create_group(f"{a}/{b}")
            g.create_dataset("keypoints0", data=k0), g.create_dataset("keypoints1", data=k1)
            g.create_dataset("scores", data=sc)
            g.attrs.update(size0=(300, 200), size1=(300, 200), name0=a, name1=b, complete=1)
    args = (tmp_path / "m.h5", tmp_path / "f.h5", tmp_path / "mi.h5", 4.0)
    kept = tracks.main(*args, min_pair_score=0.3)
    assert kept.num_pairs == 1 and kept.num_images == 2
    assert [(a, b) for a, b, _ in kept.rejected] == [("a", "c")] and kept.rejected[0][2] < 0.1
    assert "c" not in h5io.read_features(tmp_path / "f.h5")
    both = tracks.main(*args)  # no gate by default for a hand-made file: both pairs stay
    assert both.num_pairs == 2 and not both.rejected
    none = tracks.main(*args, min_pair_score=0.9)  # every pair left out: empty files, no crash
    assert none.num_images == 0 and len(none.rejected) == 2
