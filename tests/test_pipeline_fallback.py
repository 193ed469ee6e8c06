"""The dense fallback: SIFT's model first, a dense matcher on the pairs it did not verify, checked
against that model's epipolar geometry, then the model again."""
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import pytest

from roma_sfm.pipelines import fallback, h5io, mapping, reconstruct
from synthetic import LabelledSift

SCENE = Path(__file__).resolve().parents[1] / "sample_scenes" / "corner"
# pairs whose SIFT matches are cut below the verification's minimum: every pair of 0007 (so the
# skeleton cannot register it) and two pairs of images it does register
BLIND = {frozenset(("0007.jpg", f"000{i}.jpg")) for i in range(7)} | {frozenset(("0002.jpg", "0003.jpg")),
                                                                      frozenset(("0004.jpg", "0005.jpg"))}
SCRAMBLED = frozenset(("0004.jpg", "0005.jpg"))  # the fallback's matches of this pair are shuffled


def _pair(a, b) -> frozenset:
    return frozenset((Path(a).name, Path(b).name))


class BlindSift(LabelledSift):
    """SIFT that keeps 5 matches (fewer than verification needs) on the ``BLIND`` pairs."""

    def __init__(self):
        super().__init__("sparse", "blind-sift")

    def match(self, a, b):
        res = self.inner.match(a, b)
        if _pair(a, b) in BLIND:
            res = replace(res, kpts_A=res.kpts_A[:5], kpts_B=res.kpts_B[:5], scores=res.scores[:5])
        return res


class DenseSift(LabelledSift):
    """SIFT labelled dense (the fallback), with the matches of ``SCRAMBLED`` shuffled: a look-alike pair."""

    def __init__(self):
        super().__init__("dense", "dense-sift")
        self.calls = []

    def match(self, a, b):
        self.calls.append(_pair(a, b))
        res = self.inner.match(a, b)
        if _pair(a, b) == SCRAMBLED:
            res = replace(res, kpts_B=res.kpts_B[np.random.default_rng(0).permutation(len(res.kpts_B))])
        return res


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fallback")
    dense = DenseSift()
    report = reconstruct.main(SCENE / "images", out, matcher=BlindSift(), fallback=dense, progress=False,
                              num_threads=1)
    return out, report, dense


def test_the_fallback_matches_only_what_sift_did_not_verify(run):
    out, report, dense = run
    fb = report["fallback"]
    assert report["status"] == "ok", report["message"]
    assert set(dense.calls) >= BLIND and len(dense.calls) == fb["pairs"] < 28  # not every pair
    stored = {frozenset(p) for p in h5io.list_pairs(out / fallback.MATCHES_NAME)}
    assert stored == set(dense.calls)
    # 0007 is in no skeleton model: its pairs pass the pair gate unchecked; the other two are checked
    assert fb["checked"] == fb["pairs"] - 7
    assert [frozenset(d[:2]) for d in fb["dropped"]] == [SCRAMBLED] and "skeleton" in fb["dropped"][0][2]
    assert fb["kept"] == fb["pairs"] - 1 and fb["resumed"] == fb["skipped"] == 0
    assert {"skeleton mapping", "fallback", "mapping"} <= set(report["times"])


def test_the_merged_matches_are_mapped_and_register_every_image(run):
    out, report, _ = run
    merged = out / fallback.MERGED_NAME
    assert report["fallback"]["file"] == str(merged) and h5io.matches_kind(merged) == "sparse"
    assert h5io.stored_meta(merged)["matcher"] == "blind-sift+dense-sift"
    pairs = {frozenset(p) for p in h5io.list_pairs(merged)}
    assert len(pairs) == 28 and len(h5io.list_pairs(merged)) == 28  # one group a pair
    k0, _, _ = h5io.read_matches(merged, "0002.jpg", "0003.jpg")
    d0, _, _ = h5io.read_matches(out / fallback.MATCHES_NAME, "0002.jpg", "0003.jpg")
    assert 15 <= len(k0) <= len(d0)  # the dense matches that fit the skeleton, not SIFT's five
    k0, _, _ = h5io.read_matches(merged, "0004.jpg", "0005.jpg")
    assert len(k0) == 5  # dropped: SIFT's own matches stay
    # a kept pair weighs as a verified SIFT pair: at most their mean inliers, the most certain
    cap = report["fallback"]["max_matches"]
    k0, _, s = h5io.read_matches(merged, "0006.jpg", "0007.jpg")
    d0, _, ds = h5io.read_matches(out / fallback.MATCHES_NAME, "0006.jpg", "0007.jpg")
    assert 15 < cap == len(k0) < len(d0) and s.min() >= np.sort(ds)[-cap]
    assert report["images_registered"] == 8 and report["evaluation"]["auc@5"] > 80
    assert report["config"]["fallback"] == "dense-sift"


def test_sampson_distance_of_the_models_own_observations(run):
    out = run[0]
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    ims = {im.name: im for im in rec.images.values()}
    a, b = ims["0001.jpg"], ims["0002.jpg"]
    pa = {p.point3D_id: np.asarray(p.xy) for p in a.points2D if p.has_point3D()}
    pb = {p.point3D_id: np.asarray(p.xy) for p in b.points2D if p.has_point3D()}
    common = sorted(set(pa) & set(pb))
    k0, k1 = np.array([pa[i] for i in common]), np.array([pb[i] for i in common])
    F = fallback.fundamental_matrix(rec, a, b)
    d = np.sqrt(mapping.sampson_errors(F, k0, k1))
    assert len(common) > 50 and np.median(d) < 1.0
    assert np.median(np.sqrt(mapping.sampson_errors(F, k0, k1[::-1]))) > 5.0
    assert np.allclose(np.sqrt(mapping.sampson_errors(F.T, k1, k0)), d)  # the same geometry seen from b


def test_predicted_overlap_follows_the_cameras(run):
    rec = pycolmap.Reconstruction(str(run[0] / "sparse" / "0"))
    ims = {im.name: im for im in rec.images.values()}
    near = fallback.predicted_overlap(rec, ims["0000.jpg"], ims["0001.jpg"])
    far = fallback.predicted_overlap(rec, ims["0000.jpg"], ims["0007.jpg"])
    assert 0.5 < near <= 1.0 and far < near
    assert fallback.predicted_overlap(rec, ims["0003.jpg"], ims["0003.jpg"]) > 0.99


def test_pairs_the_skeleton_sees_apart_are_not_matched(run, tmp_path):
    out, report, _ = run
    skeleton = reconstruct.map_matches(SCENE / "images", tmp_path, out / "matches.h5",
                                       reconstruct.ReconstructConfig(num_threads=1, progress=False)).mapping
    dense = DenseSift()
    stats = fallback.main(SCENE / "images", tmp_path, h5io.list_pairs(out / "matches.h5"),
                          skeleton.verification.verified_pairs, skeleton.models, dense, progress=False,
                          min_overlap=1.01)  # no pair can reach it
    assert stats.num_pairs == report["fallback"]["pairs"] and stats.num_skipped == stats.num_pairs - 7
    assert set(dense.calls) == {p for p in BLIND if "0007.jpg" in p}  # only the pairs it cannot see
    assert all("view" in reason for *_, reason in stats.dropped[:stats.num_skipped])


def test_a_second_run_resumes_the_fallback_matches(run, tmp_path):
    out, report, _ = run
    for name in ("matches.h5", fallback.MATCHES_NAME):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    dense = DenseSift()
    again = reconstruct.main(SCENE / "images", tmp_path, matcher=BlindSift(), fallback=dense, progress=False,
                             num_threads=1)
    assert again["fallback"]["resumed"] == again["fallback"]["pairs"] == report["fallback"]["pairs"]
    assert dense.calls == [] and again["images_registered"] == 8


def test_no_fallback_pair_when_sift_verifies_everything(tmp_path):
    dense = DenseSift()
    report = reconstruct.main(SCENE / "images", tmp_path, fallback=dense, progress=False, num_threads=1)
    assert report["status"] == "ok" and report["fallback"]["pairs"] == 0 and dense.calls == []
    assert not (tmp_path / fallback.MERGED_NAME).exists() and "skeleton mapping" not in report["times"]


def test_a_failing_fallback_keeps_the_sparse_model(tmp_path):
    report = reconstruct.main(SCENE / "images", tmp_path, matcher=BlindSift(), fallback=tmp_path / "none.safetensors",
                              progress=False, num_threads=1)
    assert report["status"] == "ok" and "none.safetensors" in report["fallback"]["error"]
    assert report["images_registered"] == 7 and "0007.jpg" in report["images_unregistered"]  # SIFT's model
    assert (tmp_path / "sparse" / "0").is_dir() and not (tmp_path / fallback.MERGED_NAME).exists()


def test_the_fallback_must_be_dense_after_a_sparse_matcher(tmp_path):
    report = reconstruct.main(SCENE / "images", tmp_path, fallback="sift", progress=False)
    assert report["status"] == "failed" and "dense" in report["message"]
    assert not (tmp_path / "matches.h5").exists()


def test_unverified_pairs_keep_order_and_ignore_orientation():
    pairs = [("a", "b"), ("b", "c"), ("c", "b"), ("a", "a"), ("d", "a"), ("c", "d")]
    assert fallback.unverified_pairs(pairs, [("b", "a"), ("c", "d")]) == [("b", "c"), ("d", "a")]


def test_a_fallback_that_cannot_follow_the_matcher_fails_before_any_step(tmp_path):
    """Two sparse matchers: reconstruct fails with the reason before it writes pairs or matches."""
    images = Path(__file__).resolve().parents[1] / "sample_scenes" / "corner" / "images"
    rep = reconstruct.main(images, tmp_path / "out", matcher="sift", fallback="sift", progress=False)
    assert rep["status"] == "failed" and "fallback must be a dense matcher" in rep["message"]
    assert not (tmp_path / "out" / "pairs.txt").exists() and not (tmp_path / "out" / "matches.h5").exists()
