"""matches.h5: layout, coordinate convention, resume, and survival of kill -9 mid-matching."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import h5py
import numpy as np
import pytest

from roma_sfm.pipelines import match
from roma_sfm.pipelines import h5io
from roma_sfm.pipelines import matchers
from synthetic import HomographyMatcher, LabelledSift, make_homography_scene, transfer


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("homog")
    Hs = make_homography_scene(root / "images", num_images=4, size=(200, 150), seed=3)
    return root, Hs


def test_layout_and_convention(scene, tmp_path):
    root, Hs = scene
    pairs = [("000.png", "001.png"), ("001.png", "002.png")]
    m = HomographyMatcher(Hs, (200, 150))
    st = match.main(pairs, root / "images", tmp_path / "m.h5", m, num_samples=500, progress=False)
    assert st.num_matched == 2 and st.num_failed == 0
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert f.attrs["coordinates"] == h5io.COORDINATES
        g = f["000.png/001.png"]  # hloc key <name0>/<name1>, a nested group
        assert g["keypoints0"].dtype == np.float32 and g["keypoints0"].shape[1] == 2
        assert g["scores"].shape == (len(g["keypoints0"]),)
        assert tuple(g.attrs["size0"]) == (200, 150) and int(g.attrs["complete"]) == 1
    k0, k1, _ = h5io.read_matches(tmp_path / "m.h5", "000.png", "001.png")
    np.testing.assert_allclose(transfer(Hs["000.png"], Hs["001.png"], k0), k1, atol=1e-3)
    r1, r0, _ = h5io.read_matches(tmp_path / "m.h5", "001.png", "000.png")  # reversed lookup swaps
    np.testing.assert_array_equal(r0, k0)
    assert not Path(str(tmp_path / "m.h5") + ".journal").exists()


def test_names_with_subfolders(tmp_path):
    from roma_sfm.pipelines.utils import names_to_pair

    assert names_to_pair("a/x.jpg", "b/y.jpg") == "a-x.jpg/b-y.jpg"


def test_sift_matcher_colmap_convention(scene):
    """SIFT keypoints are shifted by +0.5 to COLMAP's convention: matches follow the true H."""
    root, Hs = scene
    res = matchers.SiftMatcher().match(root / "images" / "000.png", root / "images" / "001.png")
    k0, k1, s = res.sample(10000)
    assert len(k0) > 50 and res.size_A == (200, 150)
    err = np.linalg.norm(transfer(Hs["000.png"], Hs["001.png"], k0.astype(float)) - k1, axis=1)
    assert np.median(err) < 0.5


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shortlist_finds_the_exact_neighbours(dtype):
    """Either candidate product (bfloat16 where the CPU has bf16 kernels) gives the exact 2 nearest rows."""
    import torch

    from roma_sfm.pipelines.matchers.sift import candidate_dtype, shortlist

    g = torch.Generator().manual_seed(1)
    Y = torch.nn.functional.normalize(torch.randn(500, 128, generator=g), dim=1)
    a, b = torch.randperm(500, generator=g)[:300], torch.randperm(500, generator=g)[:300]
    b = torch.where(a == b, (b + 1) % 500, b)  # each row lies near Y[a], then Y[b], far from the rest
    X = 0.65 * Y[a] + 0.35 * Y[b] + 0.01 * torch.randn(300, 128, generator=g)
    d2, idx = shortlist(X, Y, 2, chunk=128, dtype=getattr(torch, dtype))
    true = torch.cdist(X.double(), Y.double()).square()
    ref_d2, ref_idx = true.topk(2, 1, largest=False)
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(d2.double(), ref_d2, rtol=1e-4, atol=1e-4)
    assert candidate_dtype() in (torch.float32, torch.bfloat16)


@pytest.mark.parametrize("conf", ["sift", "sift-opencv", "sift-colmap"])
def test_sift_keypoints_follow_upscaling(scene, conf):
    """Every SIFT backend gives COLMAP-convention keypoints: in an image upscaled 2x (cv2.resize keeps
    the corners), a keypoint at x is found at 2x. OpenCV's keypoints need 0.25 px, not 0.5, to get there."""
    import cv2
    from scipy.spatial import cKDTree

    root, _ = scene
    img = cv2.imread(str(root / "images" / "000.png"))
    big = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    m = matchers.get_matcher(conf)
    k1, d1, size1 = m.extract(img)
    k2, _, size2 = m.extract(big)
    assert k1.dtype == np.float32 and d1.shape == (len(k1), 128) and size2 == (2 * size1[0], 2 * size1[1])
    dist, idx = cKDTree(k2).query(2 * k1)
    near = dist < 1.5
    assert near.sum() > 30
    offset = np.median(k2[idx[near]] - 2 * k1[near], axis=0)
    assert np.all(np.abs(offset) < 0.08), offset


def test_sift_colmap_backend(scene):
    """COLMAP's extractor through pycolmap: unit descriptors, matches that follow the true H, picklable."""
    import pickle

    root, Hs = scene
    m = matchers.get_matcher("sift-colmap")
    assert m.settings["extractor"] == "colmap" and "extractor=colmap" in m.name
    _, desc, _ = m.extract(root / "images" / "000.png")
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-4)
    res = pickle.loads(pickle.dumps(m)).match(root / "images" / "000.png", root / "images" / "001.png")
    err = np.linalg.norm(transfer(Hs["000.png"], Hs["001.png"], res.kpts_A.astype(float)) - res.kpts_B, axis=1)
    assert len(err) > 50 and np.median(err) < 0.5
    with pytest.raises(ValueError, match="extractor"):
        matchers.SiftMatcher(extractor="vlfeat")


def test_resume(scene, tmp_path):
    root, Hs = scene
    pairs = list(combinations(sorted(Hs), 2))
    m = HomographyMatcher(Hs, (200, 150))
    match.main(pairs[:2], root / "images", tmp_path / "m.h5", m, num_samples=100, progress=False)
    st = match.main(pairs, root / "images", tmp_path / "m.h5", m, num_samples=100, progress=False)
    assert st.num_resumed == 2 and st.num_matched == len(pairs) - 2
    assert len(h5io.list_pairs(tmp_path / "m.h5")) == len(pairs)


KILL_SCRIPT = """
import sys, numpy as np
from pathlib import Path
from itertools import combinations
from roma_sfm.pipelines import h5io, match
from synthetic import HomographyMatcher, random_homographies
h5io.MERGE_MIN_INTERVAL = 0.0  # merge into the h5 after every pair: kills land inside h5 writes
names = [f"{i:03d}.png" for i in range(12)]
Hs = random_homographies(names, (200, 150), seed=1)
m = HomographyMatcher(Hs, (200, 150), delay=0.05)  # >= 3.3 s of pairs: both kills land mid-run
pairs = list(combinations(names, 2))
match.main(pairs, Path(sys.argv[1]), Path(sys.argv[2]), m, num_samples=20000, progress=False,
           skipped_images={})
"""

# the kill script imports benchmarks/synthetic.py
BENCH_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "benchmarks")}


def test_kill9_leaves_readable_file(tmp_path):
    from synthetic import random_homographies

    names = [f"{i:03d}.png" for i in range(12)]
    out = tmp_path / "m.h5"
    killed_with = []
    for delay in (0.8, 1.3):  # two kills at different moments, each resumed by the next run
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=BENCH_ENV)
        t0 = time.time()
        while not out.exists() and time.time() - t0 < 30:
            time.sleep(0.02)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_with.append(len(h5io.list_pairs(out)))
        # the file opens and every listed group is complete
        with h5py.File(out, "r") as f:
            assert f.attrs["coordinates"] == h5io.COORDINATES
        for a, b in h5io.list_pairs(out):
            k0, k1, s = h5io.read_matches(out, a, b)
            assert len(k0) == len(k1) == len(s) > 0
    assert killed_with[-1] < 66, "the run finished before it was killed; the test proves nothing"
    # resume: the journal is merged, nothing is recomputed, all pairs end up in the file
    Hs = random_homographies(names, (200, 150), seed=1)
    pairs = list(combinations(names, 2))
    st = match.main(pairs, tmp_path, out, HomographyMatcher(Hs, (200, 150)), num_samples=20000, progress=False,
                    skipped_images={})
    assert st.num_resumed >= killed_with[-1] and st.num_resumed + st.num_matched == len(pairs)
    assert len(h5io.list_pairs(out)) == len(pairs)


def test_unreadable_image_is_skipped(scene, tmp_path):
    root, Hs = scene
    img = tmp_path / "images"
    shutil.copytree(root / "images", img)
    (img / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    pairs = [("000.png", "bad.png"), ("000.png", "001.png")]
    st = match.main(pairs, img, tmp_path / "m.h5", matchers.SiftMatcher(), progress=False)
    assert st.num_matched == 1 and st.num_failed == 1 and "bad.png" in st.skipped_images
    assert h5io.list_pairs(tmp_path / "m.h5") == [("000.png", "001.png")]


def test_refuses_to_mix_matchers(scene, tmp_path):
    root, Hs = scene
    pairs = [("000.png", "001.png")]
    match.main(pairs, root / "images", tmp_path / "m.h5", HomographyMatcher(Hs, (200, 150)), progress=False)
    with pytest.raises(ValueError, match="another matcher"):
        match.main(pairs, root / "images", tmp_path / "m.h5", "sift", progress=False)
    st = match.main(pairs, root / "images", tmp_path / "m.h5", "sift", overwrite=True, progress=False)
    assert st.num_matched == 1


def test_resume_refuses_other_settings(scene, tmp_path):
    """The file records a matcher signature: same matcher, other sampling -> no silent mixing."""
    root, Hs = scene
    pairs = [("000.png", "001.png")]
    m = HomographyMatcher(Hs, (200, 150))
    match.main(pairs, root / "images", tmp_path / "m.h5", m, num_samples=100, progress=False)
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert json.loads(f.attrs["matcher_signature"])["num_samples"] == 100
    with pytest.raises(ValueError, match="num_samples: 100 before, 200 now"):
        match.main(pairs, root / "images", tmp_path / "m.h5", m, num_samples=200, progress=False)
    with pytest.raises(ValueError, match="seed"):
        match.main(pairs, root / "images", tmp_path / "m.h5", m, num_samples=100, seed=1, progress=False)
    st = match.main(pairs, root / "images", tmp_path / "m.h5", m, num_samples=100, progress=False)
    assert st.num_resumed == 1  # same settings: resumed
    st = match.main(pairs, root / "images", tmp_path / "m.h5", m, num_samples=200, overwrite=True, progress=False)
    assert st.num_matched == 1
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert json.loads(f.attrs["matcher_signature"])["num_samples"] == 200


def test_resume_refuses_other_roma_resolution_or_weights(scene, tmp_path):
    """Same preset name, other coarse_res or other weights (another checkpoint) -> refused."""
    from conftest import micro_config
    from roma_sfm import random_matcher

    root, _ = scene
    pairs = [("000.png", "001.png")]
    out = tmp_path / "m.h5"
    a = random_matcher(micro_config(), device="cpu", seed=0)
    match.main(pairs, root / "images", out, a, num_samples=50, progress=False)
    with h5py.File(out, "r") as f:
        assert f.attrs["matcher"] == "micro" and f.attrs["kind"] == "dense"
        sig = json.loads(f.attrs["matcher_signature"])
    assert sig["coarse_res"] == [56, 70] and sig["symmetric"] is False and len(sig["weights"]) == 16
    other_res = random_matcher(micro_config(), device="cpu", seed=0, coarse_res=(70, 84))
    with pytest.raises(ValueError, match=r"coarse_res: \[56, 70\] before, \[70, 84\] now"):
        match.main(pairs, root / "images", out, other_res, num_samples=50, progress=False)
    other_weights = random_matcher(micro_config(), device="cpu", seed=1)
    assert other_weights.name == a.name
    with pytest.raises(ValueError, match="weights"):
        match.main(pairs, root / "images", out, other_weights, num_samples=50, progress=False)
    same = random_matcher(micro_config(), device="cpu", seed=0)
    assert match.main(pairs, root / "images", out, same, num_samples=50, progress=False).num_resumed == 1


def test_signature_of_a_journal_only_file_is_checked(scene, tmp_path):
    """A run killed before its first merge leaves only a journal: its entries carry the signature."""
    root, Hs = scene
    out = tmp_path / "m.h5"
    m = HomographyMatcher(Hs, (200, 150))
    w = h5io.JournalWriter(out, "HomographyMatcher", min_interval=1e9,
                             signature=matchers.matcher_signature(m, num_samples=100), kind="dense")
    w.add({"name0": "000.png", "name1": "001.png", "kpts0": np.zeros((3, 2), np.float32),
           "kpts1": np.zeros((3, 2), np.float32), "scores": np.ones(3, np.float32),
           "size0": np.array([200, 150]), "size1": np.array([200, 150])})
    assert not out.exists()
    with pytest.raises(ValueError, match="num_samples"):
        match.main([("000.png", "001.png")], root / "images", out, m, num_samples=200, progress=False)
    assert h5io.consolidate(out) == 1  # alone (as tracks does): the attrs come from the journal
    assert h5io.matches_kind(out) == "dense"
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["matcher_signature"])["num_samples"] == 100


def test_matches_kind(scene, tmp_path):
    root, Hs = scene
    pairs = [("000.png", "001.png")]
    match.main(pairs, root / "images", tmp_path / "sift.h5", "sift", progress=False)
    match.main(pairs, root / "images", tmp_path / "dense.h5", HomographyMatcher(Hs, (200, 150)), progress=False)
    assert h5io.matches_kind(tmp_path / "sift.h5") == "sparse"
    assert h5io.matches_kind(tmp_path / "dense.h5") == "dense"

    # any keypoint matcher says so with kind = "sparse"
    match.main(pairs, root / "images", tmp_path / "wrapped.h5", LabelledSift("sparse", "my-keypoints"),
               progress=False)
    assert h5io.matches_kind(tmp_path / "wrapped.h5") == "sparse"
    # files written before the attribute existed: told by the matcher name
    for name, kind in (("sift(max_features=8000)", "sparse"), ("roma-tiny", "dense")):
        with h5py.File(tmp_path / "old.h5", "w") as f:
            f.attrs["matcher"] = name
        assert h5io.matches_kind(tmp_path / "old.h5") == kind
    with pytest.raises(FileNotFoundError):
        h5io.matches_kind(tmp_path / "missing.h5")
